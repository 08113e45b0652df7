//! The coordination against in-process stores: a working one, one that fails, one that hangs,
//! one whose clock and timing the test controls. (Several OS processes against a real Redis:
//! `tests/store_redis.rs`.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::*;
use crate::error::Error;
use crate::source::TokenSource;
use crate::token::Token;
use crate::{ErrorKind, OAuthError, TokenCache};

type Hook = Box<dyn FnOnce(&Memory) + Send>;

/// A store in memory, shared by the caches of one test as Redis is by processes. Its clock is
/// the (paused, in most tests) tokio clock plus `clock_ahead`: what it says a record's age is.
#[derive(Default)]
struct Memory {
    /// name -> (record, saved at, expires at), by the store's clock.
    entries: Mutex<HashMap<String, (Record, Instant, Instant)>>,
    calls: AtomicUsize,
    mode: Mutex<Mode>,
    /// How far the store's clock has run ahead of the processes' since the test began.
    clock_ahead: Mutex<Duration>,
    /// Wakes `changed` waiters on every write, as Redis pub/sub does; off: `changed` polls.
    notifies: AtomicBool,
    notify: Notify,
    changed_calls: AtomicUsize,
    /// The lease is taken, but the answer comes this late (a script run after the caller's
    /// time limit).
    slow_acquire: Mutex<Option<Duration>>,
    /// Runs once, right after the next `load` has read its answer.
    after_load: Mutex<Option<Hook>>,
}

impl fmt::Debug for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Memory")
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum Mode {
    #[default]
    Working,
    Failing,
    Hanging,
}

impl Memory {
    fn notifying() -> Arc<Self> {
        let memory = Memory::default();
        memory.notifies.store(true, Ordering::SeqCst);
        Arc::new(memory)
    }

    fn name(key: &StoreKey, what: &str) -> String {
        format!("{key}:{what}")
    }

    fn now(&self) -> Instant {
        Instant::now() + *lock_unpoisoned(&self.clock_ahead)
    }

    fn get(&self, name: &str) -> Option<Record> {
        let entries = lock_unpoisoned(&self.entries);
        let (record, saved, until) = entries.get(name)?;
        let now = self.now();
        (now < *until).then(|| record.clone().with_age(now - *saved))
    }

    fn put(&self, name: String, record: Record, ttl: Duration) {
        let now = self.now();
        lock_unpoisoned(&self.entries).insert(name, (record, now, now + ttl));
        self.notify.notify_waiters();
    }

    fn stored(&self, key: &StoreKey) -> Stored {
        Stored::new(
            self.get(&Self::name(key, "token")),
            self.get(&Self::name(key, "failure")),
        )
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

    fn working(&self) -> bool {
        *lock_unpoisoned(&self.mode) == Mode::Working
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

    fn failure(&self, key: &StoreKey) -> Option<(record::FailureRecord, Duration)> {
        self.get(&Self::name(key, "failure"))
            .and_then(|r| record::FailureRecord::decode(&r))
    }
}

impl TokenStore for Arc<Memory> {
    fn load<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Stored, BoxError>> {
        let stored = self.stored(key);
        if let Some(hook) = lock_unpoisoned(&self.after_load).take() {
            hook(self);
        }
        self.answer(move || stored)
    }

    fn save<'a>(
        &'a self,
        key: &'a StoreKey,
        slot: Slot,
        record: Record,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        if self.working() {
            self.put(Memory::name(key, Memory::slot(slot)), record, ttl);
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
        let matches = self.working()
            && self
                .get(&name)
                .is_some_and(|r| r.fingerprint() == fingerprint);
        if matches {
            lock_unpoisoned(&self.entries).remove(&name);
            self.notify.notify_waiters();
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
        let stored = self.stored(key);
        let free = self.working() && self.get(&name).is_none();
        if free {
            let now = self.now();
            lock_unpoisoned(&self.entries)
                .insert(name, (Record::new(owner, Vec::new()), now, now + ttl));
        }
        let answer = self.answer(move || LeaseAttempt::new(free, stored));
        match *lock_unpoisoned(&self.slow_acquire) {
            Some(late) => Box::pin(async move {
                tokio::time::sleep(late).await;
                answer.await
            }),
            None => answer,
        }
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
        if self.working() && self.get(&name).is_some_and(|r| r.fingerprint() == owner) {
            lock_unpoisoned(&self.entries).remove(&name);
            self.notify.notify_waiters();
        }
        self.answer(|| ())
    }

    fn changed<'a>(
        &'a self,
        _key: &'a StoreKey,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        self.changed_calls.fetch_add(1, Ordering::SeqCst);
        let notifies = self.notifies.load(Ordering::SeqCst);
        Box::pin(async move {
            if notifies {
                let _ = tokio::time::timeout(timeout, self.notify.notified()).await;
            } else {
                tokio::time::sleep(timeout).await;
            }
            Ok(())
        })
    }

    fn operation_timeout(&self) -> Duration {
        Duration::from_millis(50)
    }
}

/// Counts token requests; answers with `token-<n>` (or, while `refuse` is set,
/// `invalid_client`; while `unavailable` is set, a 503), bound as `binding` says, after
/// `delay`.
struct Source {
    calls: AtomicUsize,
    refuse: AtomicBool,
    unavailable: AtomicBool,
    lifetime: Option<Duration>,
    delay: Duration,
    /// DPoP key thumbprint: DPoP tokens bound to it, and the store key includes it.
    jkt: Option<String>,
    /// What keys the store key's HMAC (a secret's current value).
    secret: Mutex<String>,
    /// Delivered tokens carry this in `extra`.
    extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for Source {
    fn default() -> Self {
        Source {
            calls: AtomicUsize::new(0),
            refuse: AtomicBool::new(false),
            unavailable: AtomicBool::new(false),
            lifetime: Some(Duration::from_secs(3600)),
            delay: Duration::from_millis(20),
            jkt: None,
            secret: Mutex::new("secret".into()),
            extra: serde_json::Map::new(),
        }
    }
}

impl TokenSource for Arc<Source> {
    fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if self.unavailable.load(Ordering::SeqCst) {
                return Err(Error::new(ErrorKind::TokenEndpoint, "unavailable")
                    .with_status(http::StatusCode::SERVICE_UNAVAILABLE));
            }
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
            let token = match &self.jkt {
                Some(jkt) => Token::dpop(format!("{jkt}-token-{n}"), self.lifetime)?
                    .with_dpop_thumbprint(jkt.clone()),
                None => Token::bearer(format!("token-{n}"), self.lifetime)?,
            };
            Ok(token.with_extra(self.extra.clone()))
        })
    }

    fn store_key(&self) -> Option<StoreKey> {
        let mut key = StoreKey::builder("https://idp.example/token", "client")
            .secret(lock_unpoisoned(&self.secret).as_bytes());
        if let Some(jkt) = &self.jkt {
            key = key.dpop_thumbprint(jkt.clone());
        }
        Some(key.build())
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

/// A coordinator as the cache makes one, with the default policy.
fn coordinator(store: &Arc<Memory>) -> Arc<Coordinator> {
    Arc::new(Coordinator::new(
        Arc::new(store.clone()),
        key(),
        Duration::from_secs(10),
    ))
}

async fn fetch_with(coordinator: &Arc<Coordinator>, source: &Arc<Source>) -> Result<Token, Error> {
    coordinator
        .fetch(
            source,
            None,
            FleetBackoff::Respected,
            |_, _| Duration::ZERO,
            |token| token.remaining_lifetime().unwrap_or_default() / 2,
        )
        .await
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
        let coordinator = coordinator(&store);
        let before = store.calls.load(Ordering::SeqCst);
        assert!(fetch_with(&coordinator, &source).await.is_ok());
        assert!(!coordinator.reachable());
        assert_eq!(store.calls.load(Ordering::SeqCst), before + 1);
        assert!(fetch_with(&coordinator, &source).await.is_ok());
        assert_eq!(
            store.calls.load(Ordering::SeqCst),
            before + 1,
            "paused: not asked"
        );
        // Back: after the pause, sharing resumes.
        *lock_unpoisoned(&store.mode) = Mode::Working;
        *lock_unpoisoned(&coordinator.paused_until) = None;
        assert!(fetch_with(&coordinator, &source).await.is_ok());
        assert!(coordinator.reachable());
        assert!(store.token_fingerprint(&key()).is_some());
    }
}

/// Issue 19 defect 1: a DPoP-bound token comes back from the store as DPoP, bound to the key
/// it was fetched with, and only caches with that key use it.
#[tokio::test(start_paused = true)]
async fn a_bound_token_keeps_its_type_and_is_shared_only_with_the_same_key() {
    let store = Arc::new(Memory::default());
    let with_key = |jkt: &str| {
        Arc::new(Source {
            jkt: Some(jkt.to_owned()),
            ..Source::default()
        })
    };
    let (one, same, other) = (with_key("jkt-1"), with_key("jkt-1"), with_key("jkt-2"));
    let fetched = cache(&one, &store).token().await.unwrap();
    let read = cache(&same, &store).token().await.unwrap();
    assert_eq!(read.header(), fetched.header());
    assert!(read.is_dpop(), "read back as {}", read.token_type());
    assert_eq!(read.dpop_thumbprint(), Some("jkt-1"));
    assert_eq!(same.calls.load(Ordering::SeqCst), 0);
    // Another key: a token of its own.
    let own = cache(&other, &store).token().await.unwrap();
    assert_ne!(own.header(), fetched.header());
    assert_eq!(own.dpop_thumbprint(), Some("jkt-2"));
    assert_eq!(other.calls.load(Ordering::SeqCst), 1);
    // A token bound to another key (or to none) written under jkt-1's key is never used.
    let key = one.store_key().unwrap();
    for forged in [
        Token::dpop("forged", Some(Duration::from_secs(3600)))
            .unwrap()
            .with_dpop_thumbprint("jkt-2".into()),
        Token::dpop("forged", Some(Duration::from_secs(3600))).unwrap(),
        Token::bearer("forged", Some(Duration::from_secs(3600))).unwrap(),
    ] {
        let record = Record::new(record::fingerprint(&forged), record::encode_token(&forged));
        store.put(
            Memory::name(&key, "token"),
            record,
            Duration::from_secs(3000),
        );
        let calls = same.calls.load(Ordering::SeqCst);
        let token = cache(&same, &store).token().await.unwrap();
        assert_ne!(token.header(), forged.header(), "{forged:?}");
        assert_eq!(token.dpop_thumbprint(), Some("jkt-1"));
        assert_eq!(same.calls.load(Ordering::SeqCst), calls + 1);
    }
}

/// Issue 20 defect 9: the fields of the token response the crate does not interpret reach
/// replicas served from the store too.
#[tokio::test(start_paused = true)]
async fn extra_fields_reach_the_replicas() {
    let store = Arc::new(Memory::default());
    let mut extra = serde_json::Map::new();
    extra.insert(
        "issued_token_type".into(),
        "urn:ietf:params:oauth:token-type:jwt".into(),
    );
    let source = Arc::new(Source {
        extra: extra.clone(),
        ..Source::default()
    });
    cache(&source, &store).token().await.unwrap();
    let read = cache(&source, &store).token().await.unwrap();
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    assert_eq!(read.extra(), &extra);
}

/// Issue 19 defect 2: with a `max_lifetime` shorter than the provider's lifetime, a stored
/// token past the cap is not handed over (the cache would refuse it as expired): the cache
/// takes the lease and fetches, also when every replica restarts at once.
#[tokio::test(start_paused = true)]
async fn a_fleet_with_a_max_lifetime_below_the_providers_works_also_after_a_restart() {
    let (source, store) = (Arc::new(Source::default()), Arc::new(Memory::default()));
    let capped = |source: &Arc<Source>| {
        TokenCache::builder(source.clone())
            .store(store.clone())
            .max_lifetime(Duration::from_secs(300))
            .build()
    };
    // A replica without the cap wrote a one-hour token; 400 s later (by the store's clock)
    // the whole fleet, now with `max_lifetime(300 s)`, restarts.
    let first = cache(&source, &store).token().await.unwrap();
    tokio::time::advance(Duration::from_secs(400)).await;
    assert!(store.token_fingerprint(&key()).is_some(), "still stored");
    let restarted = capped(&source).token().await.unwrap();
    assert_ne!(restarted.header(), first.header());
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    // The token it wrote stays only while the cap lets it be adopted; the other replicas take
    // it, with the capped lifetime.
    let other = capped(&source).token().await.unwrap();
    assert_eq!(other.header(), restarted.header());
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    tokio::time::advance(Duration::from_secs(280)).await;
    assert!(
        store.token_fingerprint(&key()).is_none(),
        "gone at the refresh point"
    );
    let later = capped(&source).token().await.unwrap();
    assert_ne!(later.header(), restarted.header());
    assert_eq!(source.calls.load(Ordering::SeqCst), 3);
}

/// Issue 20 defect 1: a stored token's life left is counted by the store's clock (the age it
/// reports), never by a wall-clock time the writer put in the record; and a stored backoff
/// likewise.
#[tokio::test(start_paused = true)]
async fn ages_are_the_stores_not_the_writers() {
    let (source, store) = (Arc::new(Source::default()), Arc::new(Memory::default()));
    let written = cache(&source, &store).token().await.unwrap();
    // The store's clock says the record is 100 s old: adopted, with 3500 s left.
    *lock_unpoisoned(&store.clock_ahead) = Duration::from_secs(100);
    let read = cache(&source, &store).token().await.unwrap();
    assert_eq!(read.header(), written.header());
    assert_eq!(read.remaining_lifetime(), Some(Duration::from_secs(3500)));
    // 3300 s old: 300 s left, under the margin (360 s): not adopted.
    *lock_unpoisoned(&store.clock_ahead) = Duration::from_secs(3300);
    let own = cache(&source, &store).token().await.unwrap();
    assert_ne!(own.header(), written.header());
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    // A failure whose 30 s backoff was written 25 s ago (by the store's clock) holds for 5 s.
    let error = Error::new(ErrorKind::TokenEndpoint, "refused");
    let failure = record::FailureRecord::new(&error, 1, 1, Duration::from_secs(30));
    let name = Memory::name(&key(), "failure");
    store.put(
        name,
        Record::new(record::FAILURE_FINGERPRINT, failure.encode()),
        Duration::from_secs(60),
    );
    lock_unpoisoned(&store.entries).remove(&Memory::name(&key(), "token"));
    *lock_unpoisoned(&store.clock_ahead) += Duration::from_secs(25);
    let err = cache(&source, &store).token().await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(5)));
}

/// Issue 20 defect 2: a waiter that read just before the holder wrote, and finds the lease free
/// after the release, uses the holder's token: the lease is taken and the store re-read in one
/// step.
#[tokio::test(start_paused = true)]
async fn a_token_written_between_the_read_and_the_lease_is_used() {
    let (source, store) = (Arc::new(Source::default()), Arc::new(Memory::default()));
    let written = Token::bearer("from-the-holder", Some(Duration::from_secs(3600))).unwrap();
    let record = Record::new(
        record::fingerprint(&written),
        record::encode_token(&written),
    );
    // The holder writes and releases right after our read.
    *lock_unpoisoned(&store.after_load) = Some(Box::new(move |store: &Memory| {
        store.put(
            Memory::name(&key(), "token"),
            record,
            Duration::from_secs(3000),
        );
    }));
    let token = cache(&source, &store).token().await.unwrap();
    assert_eq!(token.header(), written.header());
    assert_eq!(
        source.calls.load(Ordering::SeqCst),
        0,
        "no second token request"
    );
    assert!(
        store.get(&Memory::name(&key(), "lease")).is_none(),
        "released"
    );
}

/// Issue 20 defect 3: transient failures do not lengthen the fleet's permanent backoff: after
/// nine 503s, one `invalid_client` backs the fleet off as one process alone would (the first
/// permanent step), not for the ninth doubling of it.
#[tokio::test(start_paused = true)]
async fn transient_failures_do_not_lengthen_the_fleets_permanent_backoff() {
    let (source, store) = (Arc::new(Source::default()), Arc::new(Memory::default()));
    let fleet_cache = || {
        TokenCache::builder(source.clone())
            .store(store.clone())
            .backoff_base(Duration::from_millis(100))
            .max_backoff(Duration::from_millis(100))
            .permanent_backoff_base(Duration::from_secs(5))
            .build()
    };
    source.unavailable.store(true, Ordering::SeqCst);
    for _ in 0..9 {
        assert!(fleet_cache().token().await.is_err());
        tokio::time::advance(Duration::from_millis(150)).await;
    }
    let (failure, _) = store.failure(&key()).unwrap();
    assert_eq!((failure.failures, failure.permanent_failures), (9, 0));
    source.unavailable.store(false, Ordering::SeqCst);
    source.refuse.store(true, Ordering::SeqCst);
    let err = fleet_cache().token().await.unwrap_err();
    assert_eq!(err.oauth_error().unwrap().error, "invalid_client");
    let (failure, remaining) = store.failure(&key()).unwrap();
    assert_eq!((failure.failures, failure.permanent_failures), (10, 1));
    assert!(remaining <= Duration::from_secs(5), "{remaining:?}");
    assert_eq!(source.calls.load(Ordering::SeqCst), 10);
}

/// Issue 20 defect 4: the failure an old secret caused is under the old secret's key: a new
/// secret (a new pod) tries at once instead of waiting the old one's backoff out.
#[tokio::test(start_paused = true)]
async fn a_failure_does_not_outlive_the_secret_that_caused_it() {
    let (source, store) = (Arc::new(Source::default()), Arc::new(Memory::default()));
    source.refuse.store(true, Ordering::SeqCst);
    let long = || {
        TokenCache::builder(source.clone())
            .store(store.clone())
            .permanent_backoff_base(Duration::from_secs(60))
            .build()
    };
    assert!(long().token().await.is_err());
    assert!(long().token().await.is_err());
    assert_eq!(
        source.calls.load(Ordering::SeqCst),
        1,
        "the fleet backs off"
    );
    // Rotated: the new pod reads the new secret, which works.
    *lock_unpoisoned(&source.secret) = "rotated".into();
    source.refuse.store(false, Ordering::SeqCst);
    long().token().await.unwrap();
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);
}

/// Issue 20 defect 6: a lease attempt answered after our time limit may have taken the lease;
/// the token fetched alone is written through and the lease released, so another process does
/// not wait out the lease.
#[tokio::test(start_paused = true)]
async fn a_lease_taken_after_our_timeout_is_not_stranded() {
    let (source, store) = (Arc::new(Source::default()), Arc::new(Memory::default()));
    *lock_unpoisoned(&store.slow_acquire) = Some(Duration::from_millis(80));
    let alone = cache(&source, &store).token().await.unwrap();
    *lock_unpoisoned(&store.slow_acquire) = None;
    // The clean-up runs in the background, once the store's pause is no obstacle to it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        store.get(&Memory::name(&key(), "lease")).is_none(),
        "released"
    );
    let started = Instant::now();
    let other = cache(&source, &store).token().await.unwrap();
    assert_eq!(other.header(), alone.header());
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    assert!(started.elapsed() < Duration::from_millis(100));
}

/// Issue 20 defect 7: a 401 while the store is paused (after a failure) still removes the
/// rejected token, once the store answers: new processes do not adopt it.
#[tokio::test(start_paused = true)]
async fn an_invalidation_during_a_pause_is_done_when_the_store_answers() {
    let (source, store) = (Arc::new(Source::default()), Arc::new(Memory::default()));
    let a = cache(&source, &store);
    let rejected = a.token().await.unwrap();
    // The store fails once: `a` pauses it, and fetches alone meanwhile.
    *lock_unpoisoned(&store.mode) = Mode::Failing;
    assert!(a.invalidate(&rejected));
    let fresh = a.token().await.unwrap();
    assert_ne!(fresh.header(), rejected.header());
    *lock_unpoisoned(&store.mode) = Mode::Working;
    // The old token is still stored; once the pause is over the removal is retried.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_ne!(
        store.token_fingerprint(&key()),
        Some(record::fingerprint(&rejected))
    );
    let newcomer = cache(&source, &store).token().await.unwrap();
    assert_ne!(newcomer.header(), rejected.header());
}

/// Issue 20 defect 8: a stored payload behind another token's fingerprint (an old, rejected
/// token put back behind a new fingerprint) is not used.
#[tokio::test(start_paused = true)]
async fn a_payload_behind_another_fingerprint_is_not_used() {
    let (source, store) = (Arc::new(Source::default()), Arc::new(Memory::default()));
    let a = cache(&source, &store);
    let rejected = a.token().await.unwrap();
    assert!(a.invalidate(&rejected));
    let fresh = a.token().await.unwrap();
    // Someone with write access puts the rejected token back behind the fresh fingerprint.
    let record = Record::new(record::fingerprint(&fresh), record::encode_token(&rejected));
    store.put(
        Memory::name(&key(), "token"),
        record,
        Duration::from_secs(3000),
    );
    let newcomer = cache(&source, &store).token().await.unwrap();
    assert_ne!(newcomer.header(), rejected.header());
}

/// Waiters hear at once: a process waiting for the lease holder's token is woken by the
/// store's announcement of the write, not by its next poll.
#[tokio::test(start_paused = true)]
async fn a_waiter_is_woken_by_the_write_not_by_its_next_poll() {
    let store = Memory::notifying();
    let source = Arc::new(Source {
        delay: Duration::from_millis(1000),
        ..Source::default()
    });
    let holder = cache(&source, &store);
    let holding = tokio::spawn(async move {
        let token = holder.token().await.unwrap();
        (token, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    let waiter = cache(&source, &store);
    let token = waiter.token().await.unwrap();
    let woken = Instant::now();
    let (held, written) = holding.await.unwrap();
    assert_eq!(token.header(), held.header());
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    assert!(store.changed_calls.load(Ordering::SeqCst) > 0);
    // Polling alone would have waited up to 200 ms past the write.
    assert!(
        woken - written < Duration::from_millis(2),
        "{:?}",
        woken - written
    );
}

fn lock_unpoisoned<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
