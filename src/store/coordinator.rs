//! The cache's side of a shared store: read first, take the lease, fetch, write, release; wait
//! for another process's result; fall back to fetching alone when the store fails.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{key, record, Record, Slot, StoreKey, TokenStore, OUTAGE_PAUSE};
use crate::error::{BoxError, Error};
use crate::source::{BoxFuture, TokenSource};
use crate::token::Token;

/// Whether the fleet's backoff (the failure entry in the store) holds a fetch up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FleetBackoff {
    /// It does, until it runs out.
    Respected,
    /// It does not: the source's credentials changed since the failures that started it (a
    /// rotated secret), so the new ones are tried at once, and a failure starts a clean count.
    EndedByNewCredentials,
}

/// Where a token came from (for logs and, later, the cache's status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Another process fetched it; read from the store.
    Store,
    /// Fetched by this process (holding the lease, or alone because the store failed).
    Source,
}

/// The cache's side of a shared store: reads, leases, waits, writes, falls back. One per
/// [`TokenCache`](crate::TokenCache) built with a store.
pub(crate) struct Coordinator {
    store: Arc<dyn TokenStore>,
    key: StoreKey,
    /// This cache's lease owner id: random, so that two caches (in one process or not) never
    /// take each other's lease for their own.
    owner: String,
    /// Half the cache's refresh timeout: the longest a refresh waits for another process.
    wait_limit: Duration,
    /// Lifetime assumed for a token without one (the cache's `default_lifetime`).
    default_lifetime: Duration,
    /// Set while the store is failing: one warning per outage, not per request.
    down: AtomicBool,
    /// Until when the store is left alone after a failure.
    pub(super) paused_until: Mutex<Option<Instant>>,
    /// Fingerprint of the last token a 401 rejected: not to be read back from the store.
    rejected: Mutex<Option<String>>,
    /// Whether the last token this cache got came from the store.
    from_store: AtomicBool,
}

/// Why the coordination gave up on the store for this refresh.
struct Unavailable;

impl Coordinator {
    pub(crate) fn new(
        store: Arc<dyn TokenStore>,
        key: StoreKey,
        refresh_timeout: Duration,
        default_lifetime: Duration,
    ) -> Self {
        Coordinator {
            store,
            key,
            owner: owner_id(),
            wait_limit: refresh_timeout / 2,
            default_lifetime,
            down: AtomicBool::new(false),
            paused_until: Mutex::new(None),
            rejected: Mutex::new(None),
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
    /// `backoff(failures, error)` is the cache's backoff step after `failures` consecutive
    /// failures: the fleet's failure entry lasts that long; `fleet_backoff` says whether a
    /// running one still holds this fetch up.
    pub(crate) async fn fetch(
        &self,
        source: &dyn TokenSource,
        current: Option<Arc<Token>>,
        fleet_backoff: FleetBackoff,
        backoff: impl Fn(u32, &Error) -> Duration,
    ) -> Result<Token, Error> {
        let result = match self
            .coordinated(source, current, fleet_backoff, &backoff)
            .await
        {
            Ok(result) => result,
            Err(Unavailable) => source.fetch_token().await.map(|t| (t, Origin::Source)),
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
        backoff: &impl Fn(u32, &Error) -> Duration,
    ) -> Result<Result<(Token, Origin), Error>, Unavailable> {
        if self.paused() {
            return Err(Unavailable);
        }
        let replaced = current.as_deref().map(record::fingerprint);
        let rejected = lock(&self.rejected).clone();
        let deadline = Instant::now() + self.wait_limit;
        let mut poll = Duration::from_millis(10);
        let previous_failures = loop {
            let stored = self.op(self.store.load(&self.key)).await?;
            if let Some(token) = stored
                .token
                .filter(|r| {
                    Some(r.fingerprint()) != replaced.as_deref()
                        && Some(r.fingerprint()) != rejected.as_deref()
                })
                .and_then(|r| record::decode_token(r.payload()))
                .filter(|t| self.usable(t))
            {
                return Ok(Ok((token, Origin::Store)));
            }
            let failure = stored
                .failure
                .and_then(|r| record::FailureRecord::decode(r.payload()));
            let new_credentials = fleet_backoff == FleetBackoff::EndedByNewCredentials;
            if let Some(failure) = failure.as_ref().filter(|_| !new_credentials) {
                let remaining = failure.remaining();
                if !remaining.is_zero() {
                    return Ok(Err(failure.to_error(remaining)));
                }
            }
            let ttl = self.store.lease_ttl();
            if self
                .op(self.store.acquire_lease(&self.key, &self.owner, ttl))
                .await?
                .acquired
            {
                // New credentials start a clean count: the failures were the old ones'.
                break failure
                    .filter(|_| !new_credentials)
                    .map_or(0, |f| f.failures);
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    waited_ms = self.wait_limit.as_millis() as u64,
                    "another process has held the token store's lease for too long; requesting \
                     a token without it"
                );
                return Err(Unavailable);
            }
            // Bounded polling, jittered so that waiters spread out: 10 ms doubling to 80 ms.
            let nap = poll.mul_f64(0.5 + fastrand::f64() / 2.0);
            tokio::time::sleep(nap.min(deadline.saturating_duration_since(Instant::now()))).await;
            poll = (poll * 2).min(Duration::from_millis(80));
        };
        Ok(self
            .fetch_holding_lease(source, previous_failures, backoff)
            .await)
    }

    async fn fetch_holding_lease(
        &self,
        source: &dyn TokenSource,
        previous_failures: u32,
        backoff: &impl Fn(u32, &Error) -> Duration,
    ) -> Result<(Token, Origin), Error> {
        let result = self.renewing_lease(source.fetch_token()).await;
        match &result {
            Ok(token) => {
                let lifetime = token.lifetime().unwrap_or(self.default_lifetime);
                let remaining = token.remaining_lifetime().unwrap_or(lifetime);
                // Gone from the store a little before it expires, so that nobody reads a token
                // too short-lived to use.
                let ttl = remaining.saturating_sub(min_remaining(lifetime));
                if !ttl.is_zero() {
                    let record =
                        Record::new(record::fingerprint(token), record::encode_token(token));
                    let saved = self
                        .op(self.store.save(&self.key, Slot::Token, record, ttl))
                        .await;
                    if saved.is_ok() {
                        let _ = self
                            .op(self.store.remove_if(
                                &self.key,
                                Slot::Failure,
                                record::FAILURE_FINGERPRINT,
                            ))
                            .await;
                    }
                }
            }
            Err(error) => {
                let failures = previous_failures.saturating_add(1);
                let delay = backoff(failures, error);
                let until = SystemTime::now()
                    .checked_add(delay)
                    .unwrap_or_else(SystemTime::now);
                let failure = record::FailureRecord::new(error, failures, until);
                // Kept past the backoff, so that the next failure knows how many came before
                // and backs off longer.
                let keep = delay.saturating_mul(2).max(Duration::from_secs(60));
                let record = Record::new(record::FAILURE_FINGERPRINT, failure.encode());
                let _ = self
                    .op(self.store.save(&self.key, Slot::Failure, record, keep))
                    .await;
            }
        }
        let _ = self
            .op(self.store.release_lease(&self.key, &self.owner))
            .await;
        result.map(|token| {
            *lock(&self.rejected) = None;
            (token, Origin::Source)
        })
    }

    /// Runs the token request, renewing the lease every third of its time-to-live so that a
    /// slow token endpoint does not let a second process in.
    async fn renewing_lease(
        &self,
        fetch: BoxFuture<'_, Result<Token, Error>>,
    ) -> Result<Token, Error> {
        let ttl = self.store.lease_ttl();
        let mut fetch = fetch;
        loop {
            match tokio::time::timeout(ttl / 3, &mut fetch).await {
                Ok(result) => return result,
                Err(_) => {
                    let renewed = self
                        .op(self.store.renew_lease(&self.key, &self.owner, ttl))
                        .await;
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
    /// still the stored one, and never reads it back.
    pub(crate) fn invalidated(self: &Arc<Self>, token: &Token) {
        let fingerprint = record::fingerprint(token);
        *lock(&self.rejected) = Some(fingerprint.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.paused() {
            return;
        }
        let this = self.clone();
        runtime.spawn(async move {
            let removed = this
                .op(this.store.remove_if(&this.key, Slot::Token, &fingerprint))
                .await;
            if let Ok(true) = removed {
                tracing::info!("rejected access token removed from the shared token store");
            }
        });
    }

    /// Whether a stored token has enough life left to be worth adopting.
    fn usable(&self, token: &Token) -> bool {
        let lifetime = token.lifetime().unwrap_or(self.default_lifetime);
        token
            .remaining_lifetime()
            .unwrap_or(lifetime)
            .gt(&min_remaining(lifetime))
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
        Err(Unavailable)
    }
}

/// Life a stored token must have left to be handed out: a tenth of its lifetime, at most 30 s.
fn min_remaining(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(30))
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
    key::hex(&bytes)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coordinator")
            .field("store", &self.store)
            .field("key", &self.key)
            .field("reachable", &self.reachable())
            .finish_non_exhaustive()
    }
}
