//! The cache's side of a shared store: read first; take the lease and re-read in one atomic
//! step; fetch, write, release; wait for another process's result (woken by the store when it
//! can); fall back to fetching alone when the store fails.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{record, Record, Slot, StoreKey, Stored, TokenStore, OUTAGE_PAUSE};
use crate::error::{BoxError, Error};
use crate::source::{BoxFuture, TokenSource};
use crate::token::Token;

/// The longest a waiter goes without reading the store again: changes that nobody announces (a
/// dead holder's lease running out) are seen within this, and so is everything with a store
/// that does not announce changes at all (the default `TokenStore::changed` sleeps).
const MAX_POLL: Duration = Duration::from_millis(200);

/// How long a rejected token's removal is retried while the store is paused or failing (a
/// token rejected by the API is in the store at most until its own time-to-live ends anyway).
const MAX_REMOVAL_RETRY: Duration = Duration::from_secs(600);

/// Whether the fleet's backoff (the failure entry in the store) holds a fetch up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FleetBackoff {
    /// It does, until it runs out.
    Respected,
    /// It does not: the source's credentials changed since the failures that started it (a
    /// rotated secret), so the new ones are tried at once, and a failure starts a clean count.
    EndedByNewCredentials,
}

/// Where a token came from (for logs and the cache's status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Another process fetched it; read from the store.
    Store,
    /// Fetched by this process (holding the lease, or alone because the store failed).
    Source,
}

/// The fleet's consecutive failures, as the failure entry counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FailureCount {
    /// All of them: the transient backoff grows with these.
    pub(crate) failures: u32,
    /// The permanent ones among them: the permanent backoff grows with these only.
    pub(crate) permanent: u32,
}

/// The cache's side of a shared store: reads, leases, waits, writes, falls back. One per
/// [`TokenCache`](crate::TokenCache) built with a store.
pub(crate) struct Coordinator {
    store: Arc<dyn TokenStore>,
    /// The credential set's key as last seen (at build, then as the source gives it before each
    /// fetch: it follows a rotated secret). What an invalidation removes the token from.
    key: Mutex<StoreKey>,
    /// This cache's lease owner id: random, so that two caches (in one process or not) never
    /// take each other's lease for their own.
    owner: String,
    /// Half the cache's refresh timeout: the longest a refresh waits for another process.
    wait_limit: Duration,
    /// Set while the store is failing: one warning per outage, not per request.
    down: AtomicBool,
    /// Until when the store is left alone after a failure.
    pub(super) paused_until: Mutex<Option<Instant>>,
    /// Fingerprint of the last token a 401 rejected: not to be read back from the store.
    rejected: Mutex<Option<String>>,
    /// A rejected token not yet removed from the store (the store was paused or failed).
    pending_removal: Mutex<Option<(StoreKey, String)>>,
    /// Whether the last token this cache got came from the store.
    from_store: AtomicBool,
}

/// Why the coordination gave up on the store for this refresh.
struct Unavailable {
    /// The lease attempt under this key got no answer in time: it may have taken the lease
    /// after all, which must not be left to run out (other processes would wait for it).
    lease_maybe_taken: Option<StoreKey>,
}

const UNAVAILABLE: Unavailable = Unavailable {
    lease_maybe_taken: None,
};

/// What the entries read from the store say.
enum Found {
    /// A token to adopt, or the fleet's failure to report without a token request.
    Done(Result<(Token, Origin), Error>),
    /// Neither: fetch (holding the lease), counting on from these failures.
    Nothing(FailureCount),
}

impl Coordinator {
    pub(crate) fn new(
        store: Arc<dyn TokenStore>,
        key: StoreKey,
        refresh_timeout: Duration,
    ) -> Self {
        Coordinator {
            store,
            key: Mutex::new(key),
            owner: owner_id(),
            wait_limit: refresh_timeout / 2,
            down: AtomicBool::new(false),
            paused_until: Mutex::new(None),
            rejected: Mutex::new(None),
            pending_removal: Mutex::new(None),
            from_store: AtomicBool::new(false),
        }
    }

    /// Whether the store answered the last operation.
    pub(crate) fn reachable(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// Whether the last token came from the store rather than a token request of our own.
    pub(crate) fn last_token_from_store(&self) -> bool {
        self.from_store.load(Ordering::Relaxed)
    }

    /// A new token for the cache, replacing `current` (if any): from the store, or from
    /// `source` while holding the lease, or from `source` alone when the store fails.
    ///
    /// The cache's policy comes in as two functions, so that the store judges exactly as the
    /// cache does: `worth_adopting(token)` is how much longer a token not fetched here is worth
    /// taking (zero: not at all; also how long a token written stays in the store), and
    /// `backoff(count, error)` the cache's backoff after the fleet's `count` failures, the
    /// last one `error` (the failure entry lasts that long). `fleet_backoff` says whether a
    /// running fleet backoff still holds this fetch up.
    pub(crate) async fn fetch(
        self: &Arc<Self>,
        source: &dyn TokenSource,
        current: Option<Arc<Token>>,
        fleet_backoff: FleetBackoff,
        backoff: impl Fn(FailureCount, &Error) -> Duration,
        worth_adopting: impl Fn(&Token) -> Duration,
    ) -> Result<Token, Error> {
        let result = match self
            .coordinated(source, current, fleet_backoff, &backoff, &worth_adopting)
            .await
        {
            Ok(result) => result,
            Err(unavailable) => {
                let result = source.fetch_token().await;
                if let Some(key) = unavailable.lease_maybe_taken {
                    let token = result.as_ref().ok().map(|t| (t.clone(), worth_adopting(t)));
                    self.clean_up_late_lease(key, token);
                }
                result.map(|t| (t, Origin::Source))
            }
        };
        result.map(|(token, origin)| {
            self.from_store
                .store(origin == Origin::Store, Ordering::Relaxed);
            if origin == Origin::Store {
                tracing::info!("access token read from the shared token store");
            }
            token
        })
    }

    async fn coordinated(
        &self,
        source: &dyn TokenSource,
        current: Option<Arc<Token>>,
        fleet_backoff: FleetBackoff,
        backoff: &impl Fn(FailureCount, &Error) -> Duration,
        worth_adopting: &impl Fn(&Token) -> Duration,
    ) -> Result<Result<(Token, Origin), Error>, Unavailable> {
        if self.paused() {
            return Err(UNAVAILABLE);
        }
        // The key as the credentials are now (a rotated secret has a key of its own). Bounded:
        // a source that cannot say in time is fetched from alone.
        let key = match tokio::time::timeout(self.wait_limit, source.current_store_key()).await {
            Ok(Some(key)) => key,
            _ => return Err(UNAVAILABLE),
        };
        *lock(&self.key) = key.clone();
        // A rejection the store missed while it was paused: removed before anything is read.
        self.remove_rejected_once().await?;
        let judge = Judge {
            key: &key,
            replaced: current.as_deref().map(record::fingerprint),
            rejected: lock(&self.rejected).clone(),
            new_credentials: fleet_backoff == FleetBackoff::EndedByNewCredentials,
            worth_adopting,
        };
        let deadline = Instant::now() + self.wait_limit;
        // A plain read first: most often another process's token is there, and reading it
        // takes no lease.
        if let Found::Done(result) = judge.found(self.op(self.store.load(&key)).await?) {
            return Ok(result);
        }
        let ttl = self.store.lease_ttl();
        let mut poll = Duration::from_millis(10);
        let previous = loop {
            // Read again and take the lease in one atomic step: a token or failure written
            // since the read above (or since the last wake-up) is seen, never fetched twice.
            let attempt = self
                .op(self.store.acquire_lease(&key, &self.owner, ttl))
                .await
                .map_err(|_| Unavailable {
                    lease_maybe_taken: Some(key.clone()),
                })?;
            match judge.found(attempt.stored) {
                Found::Nothing(previous) if attempt.acquired => break previous,
                Found::Nothing(_) => {}
                Found::Done(result) => {
                    if attempt.acquired {
                        let _ = self.op(self.store.release_lease(&key, &self.owner)).await;
                    }
                    return Ok(result);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    waited_ms = self.wait_limit.as_millis() as u64,
                    "another process has held the token store's lease for too long; requesting \
                     a token without it"
                );
                return Err(UNAVAILABLE);
            }
            // Woken by the store when the holder writes or releases; otherwise read again
            // after a jittered, growing interval, so that waiters spread out.
            let wait = poll
                .mul_f64(0.5 + fastrand::f64() / 2.0)
                .min(deadline - now);
            self.wait_for_change(&key, wait).await;
            poll = (poll * 2).min(MAX_POLL);
        };
        Ok(self
            .fetch_holding_lease(&key, source, previous, backoff, worth_adopting)
            .await)
    }

    /// Waits for `TokenStore::changed`, at most `wait` (and the operation limit on top, for a
    /// store that overruns it). A store that fails to wait makes this a plain sleep.
    async fn wait_for_change(&self, key: &StoreKey, wait: Duration) {
        let started = Instant::now();
        let limit = wait.saturating_add(self.store.operation_timeout());
        match tokio::time::timeout(limit, self.store.changed(key, wait)).await {
            Ok(Ok(())) => {}
            _ => tokio::time::sleep_until(started + wait).await,
        }
    }

    async fn fetch_holding_lease(
        &self,
        key: &StoreKey,
        source: &dyn TokenSource,
        previous: FailureCount,
        backoff: &impl Fn(FailureCount, &Error) -> Duration,
        worth_adopting: &impl Fn(&Token) -> Duration,
    ) -> Result<(Token, Origin), Error> {
        let result = self.renewing_lease(key, source.fetch_token()).await;
        match &result {
            Ok(token) => {
                let _ = self.write_token(key, token, worth_adopting(token)).await;
            }
            Err(error) => {
                let count = FailureCount {
                    failures: previous.failures.saturating_add(1),
                    permanent: previous
                        .permanent
                        .saturating_add(u32::from(!error.is_transient())),
                };
                let delay = backoff(count, error);
                let failure =
                    record::FailureRecord::new(error, count.failures, count.permanent, delay);
                // Kept past the backoff, so that the next failure knows how many came before
                // and backs off longer.
                let keep = delay.saturating_mul(2).max(Duration::from_secs(60));
                let record = Record::new(record::FAILURE_FINGERPRINT, failure.encode());
                let _ = self
                    .op(self.store.save(key, Slot::Failure, record, keep))
                    .await;
            }
        }
        let _ = self.op(self.store.release_lease(key, &self.owner)).await;
        result.map(|token| {
            *lock(&self.rejected) = None;
            (token, Origin::Source)
        })
    }

    /// Writes `token` to stay in the store for `ttl` (the time it is worth adopting: gone
    /// before anyone would refuse it), then clears the fleet's failure.
    async fn write_token(
        &self,
        key: &StoreKey,
        token: &Token,
        ttl: Duration,
    ) -> Result<(), Unavailable> {
        // A token whose binding is not the key's would be refused by every reader.
        if ttl.is_zero() || !record::binding_matches(token, key) {
            return Ok(());
        }
        let record = Record::new(record::fingerprint(token), record::encode_token(token));
        self.op(self.store.save(key, Slot::Token, record, ttl))
            .await?;
        let _ = self
            .op(self
                .store
                .remove_if(key, Slot::Failure, record::FAILURE_FINGERPRINT))
            .await;
        Ok(())
    }

    /// The lease attempt under `key` timed out, and may have taken the lease after all: in the
    /// background, the token fetched alone is written (so the processes waiting for the lease
    /// get it) and the lease released. One bounded attempt each; the lease runs out by itself
    /// if the store is really gone.
    fn clean_up_late_lease(self: &Arc<Self>, key: StoreKey, token: Option<(Token, Duration)>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            if let Some((token, ttl)) = token {
                let _ = this.write_token(&key, &token, ttl).await;
            }
            let _ = this.op(this.store.release_lease(&key, &this.owner)).await;
        });
    }

    /// Runs the token request, renewing the lease every third of its time-to-live so that a
    /// slow token endpoint does not let a second process in.
    async fn renewing_lease(
        &self,
        key: &StoreKey,
        fetch: BoxFuture<'_, Result<Token, Error>>,
    ) -> Result<Token, Error> {
        let ttl = self.store.lease_ttl();
        let mut fetch = fetch;
        loop {
            match tokio::time::timeout(ttl / 3, &mut fetch).await {
                Ok(result) => return result,
                Err(_) => {
                    let renewed = self.op(self.store.renew_lease(key, &self.owner, ttl)).await;
                    if !matches!(renewed, Ok(true)) {
                        tracing::debug!(
                            "could not renew the token store's lease; another process may take over"
                        );
                    }
                }
            }
        }
    }

    /// Called when a 401 made the cache drop `token`: removes it from the store too, if it is
    /// still the stored one, and never reads it back. While the store is paused or failing,
    /// the removal is retried once it answers again (in the background, for as long as the
    /// token could still be in the store, at most [`MAX_REMOVAL_RETRY`]), and it is done before
    /// this cache's next read of the store in any case.
    pub(crate) fn invalidated(self: &Arc<Self>, token: &Token) {
        let fingerprint = record::fingerprint(token);
        *lock(&self.rejected) = Some(fingerprint.clone());
        let key = lock(&self.key).clone();
        *lock(&self.pending_removal) = Some((key, fingerprint.clone()));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let give_up_at = Instant::now()
            + token
                .remaining_lifetime()
                .unwrap_or(MAX_REMOVAL_RETRY)
                .min(MAX_REMOVAL_RETRY);
        let this = self.clone();
        runtime.spawn(async move {
            loop {
                let paused = *lock(&this.paused_until);
                if let Some(until) = paused.filter(|until| *until > Instant::now()) {
                    if until >= give_up_at {
                        return;
                    }
                    tokio::time::sleep_until(until).await;
                }
                let pending = lock(&this.pending_removal).clone();
                match pending {
                    Some((_, pending)) if pending == fingerprint => {}
                    // Done meanwhile, or a newer rejection took over.
                    _ => return,
                }
                if this.remove_rejected_once().await.is_ok() || Instant::now() >= give_up_at {
                    return;
                }
            }
        });
    }

    /// Removes the pending rejected token, if any (compare-and-delete on its fingerprint).
    async fn remove_rejected_once(&self) -> Result<(), Unavailable> {
        let Some((key, fingerprint)) = lock(&self.pending_removal).clone() else {
            return Ok(());
        };
        let removed = self
            .op(self.store.remove_if(&key, Slot::Token, &fingerprint))
            .await?;
        {
            let mut pending = lock(&self.pending_removal);
            if pending.as_ref().is_some_and(|(_, p)| *p == fingerprint) {
                *pending = None;
            }
        }
        if removed {
            tracing::info!("rejected access token removed from the shared token store");
        }
        Ok(())
    }

    fn paused(&self) -> bool {
        lock(&self.paused_until).is_some_and(|until| Instant::now() < until)
    }

    /// One store operation within its time limit. A failure starts (or continues) an outage: one
    /// warning, then the store is left alone for [`OUTAGE_PAUSE`].
    async fn op<T>(&self, operation: BoxFuture<'_, Result<T, BoxError>>) -> Result<T, Unavailable> {
        let limit = self.store.operation_timeout();
        let error: BoxError = match tokio::time::timeout(limit, operation).await {
            Ok(Ok(value)) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("the token store answers again; sharing tokens resumes");
                }
                return Ok(value);
            }
            Ok(Err(error)) => error,
            Err(_) => format!("no answer within {} ms", limit.as_millis()).into(),
        };
        *lock(&self.paused_until) = Some(Instant::now() + OUTAGE_PAUSE);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %error,
                "the token store failed; requesting tokens without it until it answers again \
                 (check that the store is reachable)"
            );
        }
        Err(UNAVAILABLE)
    }
}

/// How one fetch judges what it reads from the store.
struct Judge<'a, W> {
    key: &'a StoreKey,
    /// The token being replaced: not adopted again.
    replaced: Option<String>,
    /// The token a 401 rejected: never adopted.
    rejected: Option<String>,
    /// The fleet's backoff does not hold these credentials up.
    new_credentials: bool,
    worth_adopting: &'a W,
}

impl<W: Fn(&Token) -> Duration> Judge<'_, W> {
    fn found(&self, stored: Stored) -> Found {
        let token = stored
            .token
            .filter(|r| {
                Some(r.fingerprint()) != self.replaced.as_deref()
                    && Some(r.fingerprint()) != self.rejected.as_deref()
            })
            .and_then(|r| record::decode_token(&r))
            .filter(|t| record::binding_matches(t, self.key))
            .filter(|t| !(self.worth_adopting)(t).is_zero());
        if let Some(token) = token {
            return Found::Done(Ok((token, Origin::Store)));
        }
        let failure = stored
            .failure
            .and_then(|r| record::FailureRecord::decode(&r))
            .filter(|_| !self.new_credentials);
        match failure {
            Some((failure, remaining)) if !remaining.is_zero() => {
                Found::Done(Err(failure.to_error(remaining)))
            }
            Some((failure, _)) => Found::Nothing(FailureCount {
                failures: failure.failures,
                permanent: failure.permanent_failures,
            }),
            // New credentials start a clean count: the failures were the old ones'.
            None => Found::Nothing(FailureCount::default()),
        }
    }
}

fn owner_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // Unique enough without the system's random source: the process id and a counter-ish
        // random value from fastrand.
        bytes[..8].copy_from_slice(&u64::from(std::process::id()).to_be_bytes());
        bytes[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    }
    crate::source::store_key::hex(&bytes)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coordinator")
            .field("store", &self.store)
            .field("key", &*lock(&self.key))
            .field("reachable", &self.reachable())
            .finish_non_exhaustive()
    }
}
