//! Failure behaviour of the token cache against the crate's authorization server, under tokio's
//! paused clock: backoff, `Retry-After`, bounded load during an outage, serving a still-valid
//! token, background refresh, lifetimes, invalidation, jitter and tracing.
//!
//! The server is reached in-process (`AuthServer::in_process_client`): the same server logic,
//! without a socket, so that the paused clock is deterministic.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use secrecy::ExposeSecret;
use tokio::time::{advance, sleep, Instant};
use tower::{service_fn, Service, ServiceExt};
use tower_client_credentials::testing::{AuthServer, Behavior};
use tower_client_credentials::{BearerAuthLayer, Error, ErrorKind, TokenCache, TokenCacheBuilder};

mod common;
use common::{default_client, in_process_credentials, settle};

fn cache(
    auth: &AuthServer,
    configure: impl FnOnce(TokenCacheBuilder) -> TokenCacheBuilder,
) -> TokenCache {
    configure(TokenCache::builder(in_process_credentials(auth))).build()
}

/// After one failure that asked for a wait: still backing off when `before` has passed, a token
/// once `after` more has, and only the one new request sent.
async fn assert_waits(cache: &TokenCache, auth: &AuthServer, before: Duration, after: Duration) {
    advance(before).await;
    assert_eq!(
        cache.token().await.unwrap_err().kind(),
        ErrorKind::BackingOff
    );
    advance(after).await;
    cache.token().await.unwrap();
    assert_eq!(auth.token_requests(), 2);
}

/// The most attempts an outage of `window` can see with the default schedule: one at once, then
/// one after each wait, where wait k is at least half of min(100 ms × 2^(k-1), 30 s).
fn max_attempts(window: Duration) -> usize {
    let mut elapsed = Duration::ZERO;
    let mut attempts = 1;
    for k in 0.. {
        let step = Duration::from_millis(100)
            .saturating_mul(2u32.saturating_pow(k))
            .min(Duration::from_secs(30));
        elapsed += step / 2;
        if elapsed > window {
            break;
        }
        attempts += 1;
    }
    attempts
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_exponentially_up_to_the_cap() {
    let auth = AuthServer::start().await.unwrap();
    auth.set_default_behavior(Some(Behavior::server_error()));
    let cache = cache(&auth, |b| b);
    let start = Instant::now();
    let mut attempt_times = Vec::new();
    while start.elapsed() < Duration::from_secs(120) {
        let before = auth.token_requests();
        let err = cache.token().await.unwrap_err();
        if auth.token_requests() > before {
            assert_eq!(err.kind(), ErrorKind::TokenEndpoint);
            attempt_times.push(start.elapsed());
        } else {
            assert_eq!(err.kind(), ErrorKind::BackingOff);
            assert!(err.retry_after().is_some());
            assert!(err.to_string().contains("next attempt is due in"), "{err}");
        }
        sleep(Duration::from_millis(10)).await;
    }
    for (k, pair) in attempt_times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let step = Duration::from_millis(100)
            .saturating_mul(2u32.pow(k as u32))
            .min(Duration::from_secs(30));
        assert!(gap >= step / 2, "gap {k} was {gap:?}, step {step:?}");
        assert!(
            gap <= step + Duration::from_millis(20),
            "gap {k} was {gap:?}, step {step:?}"
        );
    }
    assert!(attempt_times.len() <= max_attempts(Duration::from_secs(120)));
    assert!(attempt_times.len() >= 9, "{attempt_times:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_a_floor_for_the_next_attempt() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([Behavior::RateLimited(5)]);
    let cache = cache(&auth, |b| b);
    let err = cache.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TokenEndpoint);
    assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(5)));
    assert!(err.is_transient());
    advance(Duration::from_secs(1)).await;
    let err = cache.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BackingOff);
    let remaining = err.retry_after().unwrap();
    assert!(
        remaining > Duration::from_secs(3) && remaining <= Duration::from_secs(4),
        "{remaining:?}"
    );
    advance(Duration::from_secs(4)).await;
    cache.token().await.unwrap();
    assert_eq!(auth.token_requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn service_unavailable_retry_after_is_honoured() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([Behavior::Unavailable(3)]);
    let cache = cache(&auth, |b| b);
    assert_eq!(
        cache.token().await.unwrap_err().status(),
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_waits(
        &cache,
        &auth,
        Duration::from_millis(2900),
        Duration::from_millis(200),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn okta_rate_limit_reset_is_honoured() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([Behavior::OktaRateLimited(10)]);
    let cache = cache(&auth, |b| b);
    let err = cache.token().await.unwrap_err();
    let wait = err.retry_after().unwrap();
    // Whole epoch seconds on the server: between 9 and 10 s from now.
    assert!(
        wait > Duration::from_secs(8) && wait <= Duration::from_secs(10),
        "{wait:?}"
    );
    assert_waits(
        &cache,
        &auth,
        Duration::from_secs(8),
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_capped() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([Behavior::RateLimited(3600)]);
    let cache = cache(&auth, |b| b.max_retry_after(Duration::from_secs(10)));
    cache.token().await.unwrap_err();
    advance(Duration::from_secs(10)).await;
    cache.token().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_surface_at_once_and_are_not_retried_in_a_loop() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([Behavior::invalid_client()]);
    let cache = cache(&auth, |b| {
        b.backoff_base(Duration::from_secs(2))
            .permanent_backoff_base(Duration::from_secs(2))
    });
    let err = cache.token().await.unwrap_err();
    assert_eq!(err.oauth_error().unwrap().error, "invalid_client");
    assert!(!err.is_transient());
    // Callers right after get the same error, typed, with no new request.
    for _ in 0..100 {
        let err = cache.token().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BackingOff);
        let source = err.cause().unwrap().downcast_ref::<Error>().unwrap();
        assert_eq!(source.oauth_error().unwrap().error, "invalid_client");
    }
    assert_eq!(auth.token_requests(), 1);
    advance(Duration::from_secs(2)).await;
    cache.token().await.unwrap();
    assert_eq!(auth.token_requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_wait_budget_lets_callers_wait_for_the_next_attempt() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([Behavior::RateLimited(2)]);
    let cache = cache(&auth, |b| b.max_backoff_wait(Duration::from_secs(5)));
    cache.token().await.unwrap_err();
    let started = Instant::now();
    cache.token().await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(auth.token_requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_callers_during_a_sixty_second_outage() {
    const CALLERS: u64 = 10_000;
    let auth = AuthServer::start().await.unwrap();
    auth.set_default_behavior(Some(Behavior::server_error()));
    let layer = BearerAuthLayer::from_cache(cache(&auth, |b| b))
        .with_header("x-api-key", "k")
        .unwrap();
    let inner =
        service_fn(|_request: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    let client = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(inner);

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CALLERS {
        let mut client = client.clone();
        tasks.spawn(async move {
            // Spread over the outage: one caller every 6 ms.
            sleep(Duration::from_millis(i * 6)).await;
            client.ready().await?.call(Request::new(())).await
        });
    }
    let (mut ok, mut token_endpoint, mut backing_off) = (0, 0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("no caller panics") {
            Ok(_) => ok += 1,
            Err(error) => match error.downcast_ref::<Error>().map(Error::kind) {
                Some(ErrorKind::TokenEndpoint) => token_endpoint += 1,
                Some(ErrorKind::BackingOff) => backing_off += 1,
                other => panic!("untyped or unexpected error: {other:?} {error}"),
            },
        }
    }
    let attempts = auth.token_requests();
    println!(
        "outage: {CALLERS} callers, {attempts} token requests (bound {}), {token_endpoint} got the \
         endpoint's error, {backing_off} failed fast while backing off",
        max_attempts(Duration::from_secs(60))
    );
    assert_eq!(ok, 0);
    assert_eq!(ok + token_endpoint + backing_off, CALLERS as usize);
    assert!(
        attempts <= max_attempts(Duration::from_secs(60)),
        "{attempts}"
    );

    // The endpoint recovers: once the backoff step passes, callers get tokens again.
    auth.set_default_behavior(None);
    advance(Duration::from_secs(31)).await;
    let mut client = client.clone();
    client
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(auth.token_requests(), attempts + 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_ahead_keeps_serving_the_valid_token() {
    let auth = AuthServer::builder()
        .token_lifetime(Duration::from_secs(100))
        .start()
        .await
        .unwrap();
    let cache = cache(&auth, |b| b.refresh_jitter(0.0));
    let first = cache.token().await.unwrap();
    auth.set_default_behavior(Some(Behavior::server_error()));
    // Refresh point: expiry − max(30 s, 10 s) = 70 s. Until expiry every caller gets the token.
    advance(Duration::from_secs(70)).await;
    for _ in 0..29 {
        let token = cache
            .token()
            .await
            .expect("a valid token is served while refreshes fail");
        assert_eq!(
            token.secret().expose_secret(),
            first.secret().expose_secret()
        );
        settle().await;
        advance(Duration::from_secs(1)).await;
    }
    let attempts = auth.token_requests() - 1;
    assert!(
        (1..=max_attempts(Duration::from_secs(30))).contains(&attempts),
        "{attempts}"
    );
    // Expired: never served again.
    advance(Duration::from_secs(1)).await;
    let err = cache.token().await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::TokenEndpoint | ErrorKind::BackingOff),
        "{err}"
    );
    assert!(cache.cached().unwrap().remaining_lifetime() == Some(Duration::ZERO));
    auth.set_default_behavior(None);
    advance(Duration::from_secs(30)).await;
    let fresh = cache.token().await.unwrap();
    assert_ne!(
        fresh.secret().expose_secret(),
        first.secret().expose_secret()
    );
}

#[tokio::test(start_paused = true)]
async fn background_refresh_works_without_traffic_and_stops_with_the_cache() {
    let auth = AuthServer::builder()
        .token_lifetime(Duration::from_secs(100))
        .start()
        .await
        .unwrap();
    let cache = cache(&auth, |b| b.background_refresh(true).refresh_jitter(0.0));
    cache.prefetch().await.unwrap();
    assert_eq!(auth.token_requests(), 1);
    advance(Duration::from_secs(71)).await;
    settle().await;
    assert_eq!(
        auth.token_requests(),
        2,
        "refreshed with no request traffic"
    );
    advance(Duration::from_secs(71)).await;
    settle().await;
    assert_eq!(auth.token_requests(), 3);
    drop(cache);
    for _ in 0..10 {
        advance(Duration::from_secs(100)).await;
        settle().await;
    }
    assert_eq!(
        auth.token_requests(),
        3,
        "no refresh after the last clone is dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn zero_or_negative_expires_in_falls_back_to_the_jwt_exp() {
    let auth = AuthServer::builder()
        .token_lifetime(Duration::from_secs(600))
        .start()
        .await
        .unwrap();
    for value in [
        serde_json::json!(0),
        serde_json::json!(-5),
        serde_json::Value::Null,
    ] {
        auth.push_behavior([Behavior::ExpiresIn(value.clone())]);
        let token = cache(&auth, |b| b).token().await.unwrap();
        let lifetime = token.lifetime().unwrap();
        assert!(
            lifetime > Duration::from_secs(590) && lifetime <= Duration::from_secs(600),
            "{value}: {lifetime:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn without_any_lifetime_the_default_applies() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([Behavior::ExpiresIn(serde_json::Value::Null)]);
    let credentials = default_client(&auth)
        .http_client(auth.in_process_client())
        .expiry_from_jwt(false)
        .build()
        .unwrap();
    let cache = TokenCache::builder(credentials)
        .default_lifetime(Duration::from_secs(60))
        .refresh_jitter(0.0)
        .build();
    cache.token().await.unwrap();
    advance(Duration::from_secs(60)).await;
    cache.token().await.unwrap();
    assert_eq!(auth.token_requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn absurd_lifetimes_are_clamped() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([Behavior::ExpiresIn(serde_json::json!(10u64 * 365 * 86400))]);
    let cache = cache(&auth, |b| {
        b.max_lifetime(Duration::from_secs(3600))
            .refresh_jitter(0.0)
    });
    cache.token().await.unwrap();
    advance(Duration::from_secs(3600)).await;
    cache.token().await.unwrap();
    assert_eq!(
        auth.token_requests(),
        2,
        "a ten-year token is trusted for the max lifetime only"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lifetime_shorter_than_the_margin_refreshes_at_half_life() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([Behavior::ExpiresIn(serde_json::json!(10))]);
    let cache = cache(&auth, |b| b.refresh_jitter(0.0));
    let first = cache.token().await.unwrap();
    advance(Duration::from_millis(4900)).await;
    cache.token().await.unwrap();
    settle().await;
    assert_eq!(auth.token_requests(), 1);
    advance(Duration::from_millis(200)).await;
    let served = cache.token().await.unwrap();
    assert_eq!(
        served.secret().expose_secret(),
        first.secret().expose_secret(),
        "old one served meanwhile"
    );
    settle().await;
    assert_eq!(auth.token_requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_token_is_never_sent_after_its_expiry() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([
        Behavior::ExpiresIn(serde_json::json!(2)),
        Behavior::Delay(Duration::from_secs(5)),
    ]);
    let cache = cache(&auth, |b| b.refresh_jitter(0.0));
    let sent: Arc<Mutex<Vec<(Instant, HeaderValue)>>> = Arc::default();
    let recorder = sent.clone();
    let inner = service_fn(move |request: Request<()>| {
        let recorder = recorder.clone();
        async move {
            let header = request.headers()["authorization"].clone();
            recorder.lock().unwrap().push((Instant::now(), header));
            Ok::<_, Infallible>(Response::new(()))
        }
    });
    let mut client = tower::ServiceBuilder::new()
        .layer(BearerAuthLayer::from_cache(cache.clone()))
        .service(inner);
    let first = cache.token().await.unwrap();
    let expiry = first.expires_at().unwrap();
    for _ in 0..40 {
        client
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        advance(Duration::from_millis(250)).await;
    }
    let first_header = format!("Bearer {}", first.secret().expose_secret());
    for (at, header) in sent.lock().unwrap().iter() {
        if header == first_header.as_str() {
            assert!(
                *at < expiry,
                "the first token was sent at or after its expiry"
            );
        }
    }
    assert_eq!(auth.token_requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_invalidations_cause_one_refresh() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([
        Behavior::Normal,
        Behavior::Delay(Duration::from_millis(100)),
    ]);
    let cache = cache(&auth, |b| b);
    let rejected = cache.token().await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let cache = cache.clone();
        let rejected = rejected.clone();
        tasks.spawn(async move {
            cache.invalidate(&rejected);
            cache
                .token()
                .await
                .map(|t| t.secret().expose_secret().to_string())
        });
    }
    let mut tokens = std::collections::HashSet::new();
    while let Some(result) = tasks.join_next().await {
        tokens.insert(result.unwrap().unwrap());
    }
    assert_eq!(tokens.len(), 1);
    assert!(!tokens.contains(rejected.secret().expose_secret()));
    assert_eq!(auth.token_requests(), 2);
    // A late rejection of the old token does not drop the new one.
    assert!(!cache.invalidate(&rejected));
    cache.token().await.unwrap();
    assert_eq!(auth.token_requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn replicas_do_not_refresh_in_lockstep() {
    let auth = AuthServer::start().await.unwrap();
    let caches: Vec<_> = (0..20).map(|_| cache(&auth, |b| b)).collect();
    for cache in &caches {
        cache.token().await.unwrap();
    }
    // Lifetime 3600 s, margin 360 s, jitter up to 180 s: refreshes fall in [3060 s, 3240 s].
    advance(Duration::from_secs(3050)).await;
    let mut refresh_seconds = std::collections::BTreeSet::new();
    for second in 3050..3250 {
        let before = auth.token_requests();
        for cache in &caches {
            cache.token().await.unwrap();
        }
        settle().await;
        if auth.token_requests() > before {
            refresh_seconds.insert(second);
        }
        advance(Duration::from_secs(1)).await;
    }
    assert_eq!(auth.token_requests(), 40, "each replica refreshed once");
    assert!(
        refresh_seconds.len() >= 8,
        "refreshes at {refresh_seconds:?}"
    );
    assert!(
        refresh_seconds.iter().all(|s| (3059..=3240).contains(s)),
        "{refresh_seconds:?}"
    );
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn tracing_reports_refreshes_and_failures_without_secrets() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([Behavior::server_error()]);
    let cache = cache(&auth, |b| b);
    cache.token().await.unwrap_err();
    advance(Duration::from_secs(1)).await;
    let token = cache.token().await.unwrap();

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("access token refresh started"), "{log}");
    assert!(log.contains("access token refresh failed"), "{log}");
    assert!(log.contains("next_attempt_in_ms"), "{log}");
    assert!(log.contains("access token refreshed"), "{log}");
    assert!(log.contains("lifetime_s=3600"), "{log}");
    assert!(!log.contains(token.secret().expose_secret()), "{log}");
    assert!(!log.contains(AuthServer::CLIENT_SECRET), "{log}");
}

/// The most attempts a permanent failure lasting `window` can cause with the default permanent
/// schedule: one at once, then one after each wait, where wait k is at least half of
/// min(5 s × 2^(k-1), 5 min).
fn max_permanent_attempts(window: Duration) -> usize {
    let mut elapsed = Duration::ZERO;
    let mut attempts = 1;
    for k in 0.. {
        let step = Duration::from_secs(5)
            .saturating_mul(2u32.saturating_pow(k))
            .min(Duration::from_secs(300));
        elapsed += step / 2;
        if elapsed > window {
            break;
        }
        attempts += 1;
    }
    attempts
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_back_off_from_seconds_to_minutes_and_fail_fast_in_between() {
    let auth = AuthServer::start().await.unwrap();
    auth.set_default_behavior(Some(Behavior::invalid_client()));
    let cache = cache(&auth, |b| b);
    let start = Instant::now();
    let mut attempt_times = Vec::new();
    let mut failed_fast = 0;
    while start.elapsed() < Duration::from_secs(600) {
        let before = auth.token_requests();
        let err = cache.token().await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
        if auth.token_requests() > before {
            assert_eq!(err.oauth_error().unwrap().error, "invalid_client");
            attempt_times.push(start.elapsed());
        } else {
            // Fails at once with the stored error as its cause.
            assert_eq!(err.kind(), ErrorKind::BackingOff);
            let cause = err.cause().unwrap().downcast_ref::<Error>().unwrap();
            assert_eq!(cause.oauth_error().unwrap().error, "invalid_client");
            assert!(err.retry_after().unwrap() <= Duration::from_secs(300));
            failed_fast += 1;
        }
        sleep(Duration::from_millis(100)).await;
    }
    // Gaps: at least half of, at most, 5 s, 10 s, 20 s, ... 5 min (plus the polling step).
    for (k, pair) in attempt_times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let step = Duration::from_secs(5)
            .saturating_mul(2u32.pow(k as u32))
            .min(Duration::from_secs(300));
        assert!(gap >= step / 2, "gap {k} was {gap:?}, step {step:?}");
        assert!(
            gap <= step + Duration::from_millis(110),
            "gap {k} was {gap:?}, step {step:?}"
        );
    }
    let bound = max_permanent_attempts(Duration::from_secs(600));
    println!(
        "10 minutes of invalid_client: {} token requests (bound {bound}) at {attempt_times:?}, \
         {failed_fast} calls failed fast",
        attempt_times.len()
    );
    assert!(attempt_times.len() <= bound, "{attempt_times:?}");
    // 0, then at most 5, 15, 35, 75, 155, 315 s: at least 7 attempts in 10 minutes.
    assert!(attempt_times.len() >= 7, "{attempt_times:?}");
    assert_eq!(auth.token_requests(), attempt_times.len());

    // A success resets the schedule.
    auth.set_default_behavior(None);
    advance(Duration::from_secs(300)).await;
    cache.token().await.unwrap();
}
