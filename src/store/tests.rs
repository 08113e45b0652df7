//! The coordination against in-process stores: a working one, one that fails, one that hangs.
//! (Several OS processes against a real Redis: `tests/store_redis.rs`.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::time::Instant;

use super::*;
use crate::error::Error;
use crate::source::TokenSource;
use crate::token::Token;
use crate::{ErrorKind, OAuthError, TokenCache};

/// A store in memory, shared by the caches of one test as Redis is by processes.
#[derive(Debug, Default)]
struct Memory {
    entries: Mutex<HashMap<String, (Record, Instant)>>,
    calls: AtomicUsize,
    mode: Mutex<Mode>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum Mode {
    #[default]
    Working,
    Failing,
    Hanging,
}

impl Memory {
    fn name(key: &StoreKey, what: &str) -> String {
        format!("{key}:{what}")
    }

    fn get(&self, name: &str) -> Option<Record> {
        let entries = lock_unpoisoned(&self.entries);
        let (record, until) = entries.get(name)?;
        (Instant::now() < *until).then(|| record.clone())
    }

    fn answer<T: Send + 'static>(
        &self,
        value: impl FnOnce() -> T + Send + 'static,
    ) -> BoxFuture<'static, Result<T, BoxError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mode = *lock_unpoisoned(&self.mode);
        Box::pin(async move {
            match mode {
                Mode::Working => Ok(value()),
                Mode::Failing => Err("connection refused".into()),
                Mode::Hanging => std::future::pending().await,
            }
        })
    }

    fn slot(slot: Slot) -> &'static str {
        match slot {
            Slot::Token => "token",
            Slot::Failure => "failure",
        }
    }

    fn token_fingerprint(&self, key: &StoreKey) -> Option<String> {
        self.get(&Self::name(key, "token"))
            .map(|r| r.fingerprint().to_owned())
    }
}

impl TokenStore for Arc<Memory> {
    fn load<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Stored, BoxError>> {
        let stored = Stored::new(
            self.get(&Memory::name(key, "token")),
            self.get(&Memory::name(key, "failure")),
        );
        self.answer(move || stored)
    }

    fn save<'a>(
        &'a self,
        key: &'a StoreKey,
        slot: Slot,
        record: Record,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        if *lock_unpoisoned(&self.mode) == Mode::Working {
            lock_unpoisoned(&self.entries).insert(
                Memory::name(key, Memory::slot(slot)),
                (record, Instant::now() + ttl),
            );
        }
        self.answer(|| ())
    }

    fn remove_if<'a>(
        &'a self,
        key: &'a StoreKey,
        slot: Slot,
        fingerprint: &'a str,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        let name = Memory::name(key, Memory::slot(slot));
        let matches = self
            .get(&name)
            .is_some_and(|r| r.fingerprint() == fingerprint);
        if matches {
            lock_unpoisoned(&self.entries).remove(&name);
        }
        self.answer(move || matches)
    }

    fn acquire_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<LeaseAttempt, BoxError>> {
        let name = Memory::name(key, "lease");
        let stored = Stored::new(
            self.get(&Memory::name(key, "token")),
            self.get(&Memory::name(key, "failure")),
        );
        let free = self.get(&name).is_none();
        if free {
            lock_unpoisoned(&self.entries)
                .insert(name, (Record::new(owner, Vec::new()), Instant::now() + ttl));
        }
        self.answer(move || LeaseAttempt::new(free, stored))
    }

    fn renew_lease<'a>(
        &'a self,
        _key: &'a StoreKey,
        _owner: &'a str,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        self.answer(|| true)
    }

    fn release_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        let name = Memory::name(key, "lease");
        if self.get(&name).is_some_and(|r| r.fingerprint() == owner) {
            lock_unpoisoned(&self.entries).remove(&name);
        }
        self.answer(|| ())
    }

    fn operation_timeout(&self) -> Duration {
        Duration::from_millis(50)
    }
}

/// Counts token requests; answers with `token-<n>` or, while `refuse` is set, `invalid_client`.
#[derive(Default)]
struct Source {
    calls: AtomicUsize,
    refuse: std::sync::atomic::AtomicBool,
}

impl TokenSource for Arc<Source> {
    fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.refuse.load(Ordering::SeqCst) {
                return Err(Error::new(ErrorKind::TokenEndpoint, "refused").with_oauth(
                    OAuthError {
                        status: http::StatusCode::UNAUTHORIZED,
                        error: "invalid_client".into(),
                        error_description: None,
                        error_uri: None,
                    },
                ));
            }
            Token::bearer(format!("token-{n}"), Some(Duration::from_secs(3600)))
        })
    }

    fn store_key(&self) -> Option<StoreKey> {
        Some(StoreKey::builder("https://idp.example/token", "client").build())
    }
}

fn cache(source: &Arc<Source>, store: &Arc<Memory>) -> TokenCache {
    TokenCache::builder(source.clone())
        .store(store.clone())
        .backoff_base(Duration::from_millis(200))
        // `invalid_client` is permanent: its own backoff, kept as short as the ordinary one here.
        .permanent_backoff_base(Duration::from_millis(200))
        .build()
}

fn key() -> StoreKey {
    Arc::new(Source::default()).store_key().unwrap()
}

#[tokio::test]
async fn a_second_cache_reads_the_stored_token_and_makes_no_token_request() {
    let (source, store) = (Arc::new(Source::default()), Arc::new(Memory::default()));
    let first = cache(&source, &store).token().await.unwrap();
    let second = cache(&source, &store).token().await.unwrap();
    assert_eq!(second.header(), first.header());
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    let stored = store.get(&Memory::name(&key(), "token")).unwrap();
    assert_eq!(stored.fingerprint(), record::fingerprint(&first));
    assert!(
        store.get(&Memory::name(&key(), "lease")).is_none(),
        "released"
    );
}

#[tokio::test]
async fn status_says_where_the_token_came_from_and_whether_the_store_answers() {
    let (source, store) = (Arc::new(Source::default()), Arc::new(Memory::default()));
    let fetching = cache(&source, &store);
    fetching.token().await.unwrap();
    let status = fetching.status();
    assert_eq!(status.from_store, Some(false));
    assert_eq!(status.store_reachable, Some(true));
    let reading = cache(&source, &store);
    reading.token().await.unwrap();
    let status = reading.status();
    assert_eq!(status.from_store, Some(true));
    assert!(
        status.to_string().contains("token from the shared store"),
        "{status}"
    );
    *lock_unpoisoned(&store.mode) = Mode::Failing;
    let alone = cache(&source, &store);
    alone.token().await.unwrap();
    let status = alone.status();
    assert_eq!(status.store_reachable, Some(false));
    assert!(status.to_string().contains("unreachable"), "{status}");
    let without = TokenCache::new(source.clone());
    assert_eq!(without.status().from_store, None);
    assert_eq!(without.status().store_reachable, None);
}

#[tokio::test]
async fn invalidation_removes_only_the_rejected_token_and_never_reads_it_back() {
    let (source, store) = (Arc::new(Source::default()), Arc::new(Memory::default()));
    let (a, b) = (cache(&source, &store), cache(&source, &store));
    let old = a.token().await.unwrap();
    assert_eq!(b.token().await.unwrap().header(), old.header());
    assert!(a.invalidate(&old));
    let new = a.token().await.unwrap();
    assert_ne!(new.header(), old.header());
    assert_eq!(
        store.token_fingerprint(&key()),
        Some(record::fingerprint(&new))
    );
    // `b` learns of the rejection late: the newer stored token stays, and `b` adopts it.
    assert!(b.invalidate(&old));
    assert_eq!(b.token().await.unwrap().header(), new.header());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store.token_fingerprint(&key()),
        Some(record::fingerprint(&new))
    );
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_stored_failure_is_this_caches_error_without_a_token_request() {
    let (source, store) = (Arc::new(Source::default()), Arc::new(Memory::default()));
    source.refuse.store(true, Ordering::SeqCst);
    let first = cache(&source, &store).token().await.unwrap_err();
    assert_eq!(first.oauth_error().unwrap().error, "invalid_client");
    let second = cache(&source, &store).token().await.unwrap_err();
    assert_eq!(second.kind(), ErrorKind::TokenEndpoint);
    assert_eq!(second.oauth_error().unwrap().error, "invalid_client");
    let backoff = second.retry_after().unwrap();
    assert!(backoff > Duration::ZERO && backoff <= Duration::from_millis(200));
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    // After the fleet's backoff, one cache tries again; its success clears the failure.
    source.refuse.store(false, Ordering::SeqCst);
    tokio::time::sleep(backoff + Duration::from_millis(10)).await;
    cache(&source, &store).token().await.unwrap();
    assert!(store.get(&Memory::name(&key(), "failure")).is_none());
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_failing_or_hanging_store_never_fails_a_request() {
    for mode in [Mode::Failing, Mode::Hanging] {
        let (source, store) = (Arc::new(Source::default()), Arc::new(Memory::default()));
        *lock_unpoisoned(&store.mode) = mode;
        let started = Instant::now();
        let a = cache(&source, &store);
        a.token().await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(500), "{mode:?}");
        let calls = store.calls.load(Ordering::SeqCst);
        assert_eq!(calls, 1, "one operation, then fetched alone");
        // Within the pause after a failure the store is left alone.
        let b = cache(&source, &store);
        b.token().await.unwrap();
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
        // The two caches each have their own coordinator, so `b` tried once too.
        assert_eq!(store.calls.load(Ordering::SeqCst), 2);
        let fetched = a.token().await.unwrap();
        assert_eq!(fetched.header(), "Bearer token-0");
        // A coordinator on its own, as the cache makes one.
        let coordinator = Coordinator::new(
            Arc::new(store.clone()),
            key(),
            Duration::from_secs(10),
            Duration::from_secs(300),
        );
        let before = store.calls.load(Ordering::SeqCst);
        assert!(coordinator
            .fetch(&source, None, FleetBackoff::Respected, |_, _| {
                Duration::ZERO
            })
            .await
            .is_ok());
        assert!(!coordinator.reachable());
        assert_eq!(store.calls.load(Ordering::SeqCst), before + 1);
        let again = coordinator
            .fetch(&source, None, FleetBackoff::Respected, |_, _| {
                Duration::ZERO
            })
            .await;
        assert!(again.is_ok());
        assert_eq!(
            store.calls.load(Ordering::SeqCst),
            before + 1,
            "paused: not asked"
        );
        // Back: after the pause, sharing resumes.
        *lock_unpoisoned(&store.mode) = Mode::Working;
        *lock_unpoisoned(&coordinator.paused_until) = None;
        let shared = coordinator
            .fetch(&source, None, FleetBackoff::Respected, |_, _| {
                Duration::ZERO
            })
            .await;
        assert!(shared.is_ok());
        assert!(coordinator.reachable());
        assert!(store.token_fingerprint(&key()).is_some());
    }
}

fn lock_unpoisoned<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
