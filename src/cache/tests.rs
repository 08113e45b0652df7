//! Behaviour of the cache under the paused clock, with scripted sources.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::error::ErrorKind;
use crate::source::BoxFuture;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A source that counts calls, waits `delay`, then answers from `script` (the last entry
/// repeats).
struct Scripted {
    calls: AtomicUsize,
    delay: Duration,
    lifetime: Duration,
    fail_first: usize,
}

impl TokenSource for Arc<Scripted> {
    fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if n < self.fail_first {
                return Err(Error::new(ErrorKind::Transport, "scripted failure"));
            }
            Token::bearer(format!("token-{n}"), Some(self.lifetime))
        })
    }
}

fn scripted(delay_ms: u64, lifetime_s: u64, fail_first: usize) -> Arc<Scripted> {
    Arc::new(Scripted {
        calls: AtomicUsize::new(0),
        delay: Duration::from_millis(delay_ms),
        lifetime: Duration::from_secs(lifetime_s),
        fail_first,
    })
}

#[tokio::test(start_paused = true)]
async fn concurrent_cold_start_makes_one_request() {
    let source = scripted(100, 3600, 0);
    let cache = TokenCache::new(source.clone());
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.wait_for_header().await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "Bearer token-0");
    }
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_serves_old_token_and_refreshes_once() {
    let source = scripted(100, 100, 0);
    let cache = TokenCache::builder(source.clone())
        .refresh_jitter(0.0)
        .build();
    assert_eq!(cache.wait_for_header().await.unwrap(), "Bearer token-0");
    // Margin: max(30 s, 10 s) capped at 50 s = 30 s: refresh point at 70 s.
    tokio::time::advance(Duration::from_secs(69)).await;
    assert_eq!(
        cache.usable_header(&mut cache.reader()).unwrap(),
        "Bearer token-0"
    );
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    for _ in 0..100 {
        // Served without waiting while the refresh runs.
        assert_eq!(
            cache.usable_header(&mut cache.reader()).unwrap(),
            "Bearer token-0"
        );
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        cache.usable_header(&mut cache.reader()).unwrap(),
        "Bearer token-1"
    );
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn expired_token_is_never_served() {
    let source = scripted(0, 10, 0);
    let cache = TokenCache::builder(source.clone())
        .refresh_jitter(0.0)
        .build();
    cache.wait_for_header().await.unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(cache.usable_header(&mut cache.reader()).is_none());
    assert_eq!(cache.wait_for_header().await.unwrap(), "Bearer token-1");
}

#[tokio::test(start_paused = true)]
async fn failure_backs_off_and_fails_fast() {
    let source = scripted(0, 3600, 2);
    let cache = TokenCache::builder(source.clone())
        .backoff_base(Duration::from_secs(1))
        .build();
    let err = cache.wait_for_header().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport);
    let err = cache.wait_for_header().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BackingOff);
    assert!(err.retry_after().unwrap() <= Duration::from_secs(1));
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        cache.wait_for_header().await.unwrap_err().kind(),
        ErrorKind::Transport
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(cache.wait_for_header().await.unwrap(), "Bearer token-2");
    assert_eq!(source.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_left_unpolled_never_returns_an_expired_token() {
    let source = scripted(100, 10, 0);
    let cache = TokenCache::builder(source.clone())
        .refresh_jitter(0.0)
        .build();
    let mut waiter = Box::pin(cache.wait_for_header());
    let polled_once = tokio::time::timeout(Duration::from_millis(1), &mut waiter).await;
    assert!(polled_once.is_err(), "still waiting for the refresh");
    assert_eq!(cache.wait_for_header().await.unwrap(), "Bearer token-0");
    // The waiter is polled again only after that token expired.
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(waiter.await.unwrap(), "Bearer token-1");
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn dropped_waiter_does_not_cancel_refresh() {
    let source = scripted(1000, 3600, 0);
    let cache = TokenCache::new(source.clone());
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.wait_for_header().await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    assert_eq!(cache.wait_for_header().await.unwrap(), "Bearer token-0");
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn invalidate_drops_only_the_current_token_and_is_rate_limited() {
    let source = scripted(0, 3600, 0);
    let cache = TokenCache::new(source.clone());
    let first = cache.token().await.unwrap();
    assert!(cache.invalidate(&first));
    let second = cache.token().await.unwrap();
    assert_eq!(second.header(), "Bearer token-1");
    // A stale rejection of the old token does not drop the new one.
    assert!(!cache.invalidate(&first));
    // Rejections of the new token within the interval are ignored.
    assert!(!cache.invalidate(&second));
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(cache.invalidate(&second));
    assert_eq!(cache.wait_for_header().await.unwrap(), "Bearer token-2");
    assert_eq!(source.calls.load(Ordering::SeqCst), 3);
}

/// A source whose tokens are already expired when they arrive.
struct Expired(AtomicUsize);

impl TokenSource for Arc<Expired> {
    fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(async move {
            self.0.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Token::bearer("stale", Some(Duration::ZERO))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn an_already_expired_token_is_an_error_and_starts_no_second_flight() {
    let source = Arc::new(Expired(AtomicUsize::new(0)));
    let cache = TokenCache::new(source.clone());
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.wait_for_header().await })
        })
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err.kind(),
                ErrorKind::InvalidTokenResponse | ErrorKind::BackingOff
            ),
            "{err}"
        );
    }
    assert_eq!(source.0.load(Ordering::SeqCst), 1);
}

#[test]
fn huge_settings_do_not_overflow() {
    let cache = TokenCache::builder(scripted(0, 1, 1))
        .max_backoff(Duration::MAX)
        .backoff_base(Duration::MAX)
        .max_retry_after(Duration::MAX)
        .min_invalidate_interval(Duration::MAX)
        .max_lifetime(Duration::MAX)
        .default_lifetime(Duration::MAX)
        .build();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert!(cache.token().await.is_err());
        assert_eq!(
            cache.token().await.unwrap_err().kind(),
            ErrorKind::BackingOff
        );
    });
    let forever = Token::bearer("t", Some(Duration::MAX)).unwrap();
    assert!(forever.remaining_lifetime().is_some());
    let _ = format!("{forever:?} {cache:?}");
}

#[test]
fn a_refresh_on_a_runtime_no_longer_driven_does_not_wedge_the_cache() {
    let source = scripted(10, 3600, 0);
    let cache = TokenCache::builder(source.clone())
        .refresh_timeout(Duration::from_millis(100))
        .build();
    // Runtime A starts the refresh, then stops being driven with its task parked.
    let a = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let started = a.block_on(async {
        tokio::time::timeout(Duration::from_millis(1), cache.wait_for_header()).await
    });
    assert!(started.is_err(), "still waiting when runtime A stops");
    // Runtime B: its callers give up on that refresh within its limit plus the grace, and
    // the next one starts a refresh of its own.
    let b = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    b.block_on(async {
        let first = cache.wait_for_header().await;
        assert_eq!(first.unwrap_err().kind(), ErrorKind::RefreshAborted);
        assert_eq!(cache.wait_for_header().await.unwrap(), "Bearer token-1");
    });
    drop(a);
}

#[tokio::test(start_paused = true)]
async fn a_poisoned_lock_does_not_turn_off_refresh_ahead() {
    let source = scripted(100, 100, 0);
    let cache = TokenCache::builder(source.clone())
        .refresh_jitter(0.0)
        .build();
    assert_eq!(cache.wait_for_header().await.unwrap(), "Bearer token-0");
    // A panic while the refresh state is locked poisons the mutex.
    let shared = cache.shared.clone();
    let panicked = std::thread::spawn(move || {
        let _state = shared.refresh.lock();
        panic!("poison the refresh state");
    })
    .join();
    assert!(panicked.is_err() && cache.shared.refresh.is_poisoned());
    // Past the refresh point (70 s), a request starts the refresh ahead of expiry.
    tokio::time::advance(Duration::from_secs(71)).await;
    assert_eq!(
        cache.usable_header(&mut cache.reader()).unwrap(),
        "Bearer token-0"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        cache.usable_header(&mut cache.reader()).unwrap(),
        "Bearer token-1"
    );
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap()
}

/// Starts a refresh on a runtime that is then no longer driven; returns that runtime.
fn refresh_left_on_an_undriven_runtime(cache: &TokenCache) -> tokio::runtime::Runtime {
    let runtime = current_thread_runtime();
    let waited = runtime.block_on(async {
        tokio::time::timeout(Duration::from_millis(1), cache.wait_for_header()).await
    });
    assert!(waited.is_err(), "still waiting when the runtime stops");
    runtime
}

#[test]
fn a_runtime_shut_down_mid_refresh_is_not_a_failure_and_a_waiter_restarts_the_refresh() {
    let source = scripted(200, 3600, 0);
    let cache = TokenCache::builder(source.clone())
        .backoff_base(Duration::from_secs(10))
        .build();
    let other = multi_thread_runtime();

    // No waiter: the aborted refresh leaves no backoff behind.
    drop(refresh_left_on_an_undriven_runtime(&cache));
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    other.block_on(async {
        assert_eq!(cache.wait_for_header().await.unwrap(), "Bearer token-1");
    });

    // A waiter on the other runtime: it restarts the refresh there.
    assert!(cache.invalidate(&cache.cached().unwrap()));
    let a = current_thread_runtime();
    let waited = a.block_on(async {
        tokio::time::timeout(Duration::from_millis(1), cache.wait_for_header()).await
    });
    assert!(waited.is_err());
    assert_eq!(source.calls.load(Ordering::SeqCst), 3, "invalidate + a");
    let waiter = {
        let cache = cache.clone();
        other.spawn(async move { cache.wait_for_header().await })
    };
    std::thread::sleep(Duration::from_millis(20));
    drop(a);
    let header = other.block_on(waiter).unwrap();
    assert_eq!(header.unwrap(), "Bearer token-3");
    assert_eq!(source.calls.load(Ordering::SeqCst), 4);
}

#[test]
fn a_late_success_of_a_superseded_refresh_does_not_replace_the_newer_token() {
    let source = scripted(10, 3600, 0);
    let cache = TokenCache::builder(source.clone())
        .refresh_timeout(Duration::from_millis(100))
        .build();
    let stalled = refresh_left_on_an_undriven_runtime(&cache);
    let other = multi_thread_runtime();
    other.block_on(async {
        let given_up = cache.wait_for_header().await.unwrap_err();
        assert_eq!(given_up.kind(), ErrorKind::RefreshAborted);
        assert_eq!(cache.wait_for_header().await.unwrap(), "Bearer token-1");
    });
    // The superseded refresh (call 0) finishes late, with a token.
    stalled.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    assert_eq!(cache.cached().unwrap().header(), "Bearer token-1");
}

#[test]
fn a_late_failure_of_a_superseded_refresh_does_not_change_the_state() {
    let source = scripted(10, 3600, 1);
    let cache = TokenCache::builder(source.clone())
        .refresh_timeout(Duration::from_millis(100))
        .backoff_base(Duration::from_secs(10))
        .min_invalidate_interval(Duration::ZERO)
        .build();
    let stalled = refresh_left_on_an_undriven_runtime(&cache);
    let other = multi_thread_runtime();
    other.block_on(async {
        cache.wait_for_header().await.unwrap_err();
        assert_eq!(cache.wait_for_header().await.unwrap(), "Bearer token-1");
    });
    // The superseded refresh (call 0) fails late: no backoff, no failure recorded.
    stalled.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    other.block_on(async {
        assert!(cache.invalidate(&cache.cached().unwrap()));
        assert_eq!(cache.wait_for_header().await.unwrap(), "Bearer token-2");
    });
}

#[test]
fn a_waiters_time_limit_counts_from_the_start_of_the_refresh() {
    let source = scripted(10, 3600, 0);
    let cache = TokenCache::builder(source.clone())
        .refresh_timeout(Duration::from_millis(200))
        .build();
    let started = std::time::Instant::now();
    let _stalled = refresh_left_on_an_undriven_runtime(&cache);
    std::thread::sleep(Duration::from_millis(1000));
    let other = multi_thread_runtime();
    let given_up = other.block_on(cache.wait_for_header()).unwrap_err();
    assert_eq!(given_up.kind(), ErrorKind::RefreshAborted);
    // The refresh's limit (200 ms) and the grace (1 s), from the start of the refresh: about
    // 1.2 s in all; not another 1.2 s from when the waiter joined at 1 s (2.2 s). The bound sits
    // half a second from both, for a loaded machine.
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(1700), "{waited:?}");
}

#[test]
fn joining_a_refresh_outside_a_runtime_is_a_typed_error() {
    let source = scripted(1000, 3600, 0);
    let cache = TokenCache::new(source.clone());
    let _stalled = refresh_left_on_an_undriven_runtime(&cache);
    let mut waiter = std::pin::pin!(cache.wait_for_header());
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match waiter.as_mut().poll(&mut context) {
        std::task::Poll::Ready(Err(error)) => {
            assert_eq!(error.kind(), ErrorKind::Configuration);
            assert!(
                error.to_string().contains("outside a tokio runtime"),
                "{error}"
            );
        }
        other => panic!("expected a typed error at once, got {other:?}"),
    }
}

/// A source that panics on every call.
struct Panicking(AtomicUsize);

impl TokenSource for Arc<Panicking> {
    fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(async move {
            self.0.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("a bug in the token source");
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_source_is_a_failure_that_backs_off_not_an_abort_restarted_at_once() {
    let source = Arc::new(Panicking(AtomicUsize::new(0)));
    let cache = TokenCache::builder(source.clone())
        .backoff_base(Duration::from_secs(1))
        .build();
    let err = cache.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Source);
    assert_eq!(
        cache.token().await.unwrap_err().kind(),
        ErrorKind::BackingOff
    );
    assert_eq!(source.0.load(Ordering::SeqCst), 1);
}

/// A source that answers call `n` with `answer(n)` after 100 ms.
struct Answers<F>(AtomicUsize, F);

impl<F> TokenSource for Arc<Answers<F>>
where
    F: Fn(usize) -> Result<Token, Error> + Send + Sync + 'static,
{
    fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(async move {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            (self.1)(n)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn status_reports_state_expiry_scope_failures_and_never_the_token() {
    let source = Arc::new(Answers(AtomicUsize::new(0), |n| match n {
        0 => Err(Error::new(ErrorKind::Transport, "scripted outage")),
        1 => Ok(
            Token::bearer("s3cr3t-t0k3n", Some(Duration::from_secs(100)))?
                .with_scope("role:app organization:read"),
        ),
        _ => Err(
            Error::new(ErrorKind::TokenEndpoint, "scripted").with_oauth(crate::OAuthError {
                status: http::StatusCode::UNAUTHORIZED,
                error: "invalid_client".into(),
                error_description: None,
                error_uri: None,
            }),
        ),
    }));
    let cache = TokenCache::builder(source.clone())
        .backoff_base(Duration::from_secs(2))
        .refresh_jitter(0.0)
        .build();
    let status = cache.status();
    assert_eq!(status.state, TokenState::Empty);
    assert!(status.expires_at.is_none() && status.last_error.is_none());

    let waiter = tokio::spawn({
        let cache = cache.clone();
        async move { cache.token().await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let status = cache.status();
    assert_eq!(status.state, TokenState::Refreshing);
    assert!(status.refreshing);
    waiter.await.unwrap().unwrap_err();

    let status = cache.status();
    assert_eq!(status.state, TokenState::BackingOff);
    assert_eq!(status.consecutive_failures, 1);
    assert_eq!(
        status.last_error.as_ref().map(Error::kind),
        Some(ErrorKind::Transport)
    );
    assert!(status.next_attempt_in.unwrap() <= Duration::from_secs(2));

    tokio::time::advance(Duration::from_secs(2)).await;
    cache.token().await.unwrap();
    let status = cache.status();
    assert_eq!(status.state, TokenState::Valid);
    assert_eq!(status.remaining_lifetime, Some(Duration::from_secs(100)));
    let wall = status
        .expires_at
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(wall > Duration::from_secs(99) && wall <= Duration::from_secs(100));
    assert_eq!(status.scope.as_deref(), Some("role:app organization:read"));
    assert!(status.last_error.is_none() && status.next_attempt_in.is_none());
    assert!(!status.refreshing && status.consecutive_failures == 0);
    for shown in [format!("{status:?}"), status.to_string()] {
        assert!(!shown.contains("s3cr3t-t0k3n"), "{shown}");
    }
    assert!(status.to_string().starts_with("valid, expires in 100 s"));

    // Past the refresh point (70 s) the refresh ahead fails permanently: still valid.
    tokio::time::advance(Duration::from_secs(71)).await;
    cache.token().await.unwrap();
    assert!(cache.status().refreshing);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let status = cache.status();
    assert_eq!(status.state, TokenState::Valid);
    assert!(!status.last_error.as_ref().unwrap().is_transient());
    // Expired: failed, not backing off.
    tokio::time::advance(Duration::from_secs(30)).await;
    let status = cache.status();
    assert_eq!(status.state, TokenState::Failed);
    assert_eq!(status.remaining_lifetime, Some(Duration::ZERO));
    assert!(status.next_attempt_in.is_some());
    assert!(status
        .to_string()
        .starts_with("failed; last refresh failed: "));
}

/// Issue 22: callers join a running refresh without the cache's mutex (in a storm, 10,000
/// callers queued on it). Fails on the code before: the second caller blocks on the lock.
#[test]
fn a_running_refresh_is_joined_without_the_lock() {
    let source = scripted(300, 3600, 0);
    let cache = TokenCache::new(source.clone());
    let runtime = multi_thread_runtime();
    let first = {
        let cache = cache.clone();
        runtime.spawn(async move { cache.wait_for_header().await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while cache.shared.flight.load().is_none() {
        assert!(std::time::Instant::now() < deadline, "no refresh started");
        std::thread::sleep(Duration::from_millis(1));
    }
    let state = cache.shared.lock_state();
    let (sender, receiver) = std::sync::mpsc::channel();
    let joiner = {
        let (cache, handle) = (cache.clone(), runtime.handle().clone());
        std::thread::spawn(move || {
            let _runtime = handle.enter();
            let mut wait = TokenWait::default();
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            let polled = wait.poll_token(&cache, &mut context, |_| ());
            sender.send(polled.is_pending()).unwrap();
        })
    };
    let joined = receiver.recv_timeout(Duration::from_secs(2));
    drop(state);
    joiner.join().unwrap();
    assert_eq!(joined, Ok(true), "the joiner waited for the lock");
    assert_eq!(runtime.block_on(first).unwrap().unwrap(), "Bearer token-0");
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
}

/// Issue 22: a waiter on the refresh task's own runtime arms no timer (the task bounds itself);
/// one that joined there and is then polled on another runtime, while the first is no longer
/// driven, must still give up at the refresh's give-up time instead of waiting forever.
#[test]
fn a_waiter_moved_off_the_refresh_runtime_still_gives_up_in_time() {
    let source = scripted(10, 3600, 0);
    let cache = TokenCache::builder(source.clone())
        .refresh_timeout(Duration::from_millis(100))
        .build();
    let mut wait = TokenWait::default();
    let a = current_thread_runtime();
    let first = a.block_on(std::future::poll_fn(|cx| {
        std::task::Poll::Ready(wait.poll_token(&cache, cx, |_| ()))
    }));
    assert!(
        first.is_pending(),
        "joined the refresh it started on runtime A"
    );
    // Runtime A is no longer driven: its refresh stalls. The waiter moves to runtime B.
    let b = multi_thread_runtime();
    let started = std::time::Instant::now();
    let ended = b.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|cx| wait.poll_token(&cache, cx, |_| ())),
        )
        .await
    });
    let error = ended
        .expect("the moved waiter gave up in time")
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RefreshAborted);
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(a);
}

/// Issue 22: the waker list of a refresh is sharded per thread; waiters polled on several
/// worker threads, and some moved between threads by a re-poll, are all woken once it settles.
#[test]
fn every_waiter_on_every_worker_is_woken() {
    let source = scripted(50, 3600, 0);
    let cache = TokenCache::new(source.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    let woken = runtime.block_on(async {
        let tasks: Vec<_> = (0..2_000)
            .map(|i| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    let mut wait = TokenWait::default();
                    if i % 3 == 0 {
                        // Registered, then polled again from wherever the task runs next.
                        let first = std::future::poll_fn(|cx| {
                            std::task::Poll::Ready(wait.poll_token(&cache, cx, |_| ()))
                        })
                        .await;
                        if first.is_ready() {
                            return true;
                        }
                        tokio::task::yield_now().await;
                    }
                    std::future::poll_fn(|cx| wait.poll_token(&cache, cx, |_| ()))
                        .await
                        .is_ok()
                })
            })
            .collect();
        let mut woken = 0;
        for task in tasks {
            let done = tokio::time::timeout(Duration::from_secs(10), task).await;
            woken += usize::from(done.expect("a waiter was never woken").unwrap());
        }
        woken
    });
    assert_eq!(woken, 2_000);
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
}
