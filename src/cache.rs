//! The shared token cache: one current token, read lock-free; at most one refresh at a time;
//! refresh ahead of expiry; backoff after failures.
//!
//! # How a request meets the cache
//!
//! * **Fresh token** (before its jittered refresh point): one lock-free `ArcSwap` load, one clock
//!   read and a clone of the prebuilt header value. No allocation, lock or await.
//! * **Refresh-ahead window** (after the refresh point, before expiry): same as fresh, and the
//!   first such request starts one background refresh. Nobody waits for it.
//! * **No valid token** (cold start, expired, invalidated): the request waits for the single
//!   in-flight refresh, starting it if needed. Every waiter gets the same result or error.
//! * **Backing off** (the last refresh failed, no valid token, the next attempt is not due): the
//!   request fails at once with [`ErrorKind::BackingOff`], carrying the last error and when the
//!   next attempt is due — unless [`TokenCacheBuilder::max_backoff_wait`] lets it wait for that
//!   attempt.
//!
//! # Failure behaviour
//!
//! A failed refresh is followed by exponential backoff with jitter (100 ms base, ×2, capped at
//! 30 s by default; each wait is a random point in the upper half of its step, so it is at least
//! half the step); an answer carrying `Retry-After` or Okta's `X-Rate-Limit-Reset` sets a
//! floor, capped by [`TokenCacheBuilder::max_retry_after`]. However many requests arrive, the
//! source sees at most one attempt per backoff step. A failed refresh never replaces a token
//! that is still valid: it keeps being served until it expires.
//!
//! # Token lifetimes
//!
//! The lifetime is taken from the token as the source gives it (for
//! [`ClientCredentials`](crate::ClientCredentials): `expires_in`, else the JWT `exp` claim, else
//! the configured default). Lifetimes over [`TokenCacheBuilder::max_lifetime`] (one year by
//! default) are clamped to it. The refresh margin is the larger of 30 s and 10 % of the lifetime,
//! capped at half of it, and the refresh point is moved earlier by a random part of up to half the
//! margin so that replicas started together do not refresh together. A token is never handed out
//! at or after its computed expiry.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind};
use crate::source::TokenSource;
use crate::token::Token;

/// Names of the metrics recorded with the `metrics` feature, through the `metrics` facade.
#[cfg(feature = "metrics")]
pub mod metric {
    /// Counter: token requests (calls of the token source), label `outcome` = `success` |
    /// `failure`.
    pub const TOKEN_REQUESTS: &str = "tower_client_credentials_token_requests_total";
    /// Histogram: duration of a token request in seconds, failures included.
    pub const REFRESH_DURATION: &str = "tower_client_credentials_refresh_duration_seconds";
    /// Counter: callers that found no valid token and waited for a refresh.
    pub const WAITERS: &str = "tower_client_credentials_refresh_waiters_total";
    /// Counter: refreshes started ahead of expiry.
    pub const REFRESH_AHEAD: &str = "tower_client_credentials_refresh_ahead_total";
    /// Counter: requests served with a token in its refresh-ahead window (past its refresh
    /// point). A rising count with no new token means refreshes are failing.
    pub const SERVED_DURING_REFRESH_AHEAD: &str =
        "tower_client_credentials_served_during_refresh_ahead_total";
    /// Gauge: Unix time (seconds) at which the current token expires; the remaining lifetime
    /// is this minus the current time.
    pub const TOKEN_EXPIRY: &str = "tower_client_credentials_token_expiry_timestamp_seconds";
    /// Gauge: lifetime in seconds of the current token when it was received.
    pub const TOKEN_LIFETIME: &str = "tower_client_credentials_token_lifetime_seconds";
}

use crate::time::{clamp_to_century as bounded, ONE_YEAR};

const DEFAULT_MIN_MARGIN: Duration = Duration::from_secs(30);

/// A token shared by every clone of a [`BearerAuthLayer`](crate::BearerAuthLayer) and of the
/// services it makes.
///
/// Clone it to share it (a reference count). Build it with [`TokenCache::builder`] to configure
/// refresh and failure behaviour, or let [`BearerAuthLayer::new`](crate::BearerAuthLayer::new)
/// make one with the defaults.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_client_credentials::{BoxFuture, Error, Token, TokenCache, TokenSource};
///
/// struct Static;
/// impl TokenSource for Static {
///     fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
///         Box::pin(async { Token::bearer("t0k3n", Some(Duration::from_secs(3600))) })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let cache = TokenCache::builder(Static)
///     .max_backoff(Duration::from_secs(10))
///     .build();
/// let token = cache.token().await?;
/// assert!(token.remaining_lifetime().unwrap() > Duration::from_secs(3500));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TokenCache {
    shared: Arc<Shared>,
}

/// Configures a [`TokenCache`]. Every setting has a default suited to OAuth2 token endpoints.
pub struct TokenCacheBuilder {
    source: Arc<dyn TokenSource>,
    config: Config,
}

#[derive(Debug, Clone)]
struct Config {
    refresh_margin: Option<Duration>,
    refresh_jitter: f64,
    default_lifetime: Duration,
    max_lifetime: Duration,
    backoff_base: Duration,
    backoff_factor: u32,
    max_backoff: Duration,
    max_retry_after: Duration,
    max_backoff_wait: Duration,
    refresh_timeout: Duration,
    min_invalidate_interval: Duration,
    background_refresh: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            refresh_margin: None,
            refresh_jitter: 0.5,
            default_lifetime: Duration::from_secs(300),
            max_lifetime: ONE_YEAR,
            backoff_base: Duration::from_millis(100),
            backoff_factor: 2,
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
            max_backoff_wait: Duration::ZERO,
            refresh_timeout: Duration::from_secs(60),
            min_invalidate_interval: Duration::from_secs(5),
            background_refresh: false,
        }
    }
}

struct Shared {
    /// In its own `Arc` so that each service can keep an `arc_swap::Cache` of it ([`Reader`]).
    current: Arc<ArcSwapOption<Current>>,
    source: Arc<dyn TokenSource>,
    config: Config,
    flight: Mutex<Flight>,
}

/// The token being served, with the instants that decide its state.
struct Current {
    token: Arc<Token>,
    refresh_at: Instant,
    expires_at: Instant,
    generation: u64,
}

#[derive(Default)]
struct Flight {
    in_flight: Option<watch::Receiver<Option<Outcome>>>,
    /// Identifies the in-flight refresh (and only it may clear `in_flight`).
    flight_id: u64,
    /// When the in-flight refresh started: one that outlives its time limit by far (its
    /// runtime is no longer driven) is given up on.
    started_at: Option<Instant>,
    /// Consecutive failures since the last success.
    failures: u32,
    /// No refresh may start before this instant (backoff).
    not_before: Option<Instant>,
    last_error: Option<Error>,
    last_invalidation: Option<Instant>,
    next_generation: u64,
}

type Outcome = Result<Arc<Token>, Error>;

impl TokenCache {
    /// A cache over `source` with the default settings.
    pub fn new(source: impl TokenSource) -> Self {
        Self::builder(source).build()
    }

    /// Starts configuring a cache over `source`.
    pub fn builder(source: impl TokenSource) -> TokenCacheBuilder {
        TokenCacheBuilder {
            source: Arc::new(source),
            config: Config::default(),
        }
    }

    /// The `Authorization` header value of a token that is valid now, if one is cached.
    ///
    /// This is the per-request hot path: a lock-free load, a monotonic clock read (vDSO, no
    /// syscall) and a reference-count bump of the prebuilt header. No allocation, lock or await.
    /// In the refresh-ahead window it also starts the one background refresh (cold path).
    #[inline(always)]
    pub(crate) fn valid_header(&self) -> Option<HeaderValue> {
        let current = self.shared.current.load();
        Some(self.valid(current.as_ref()?)?.token.header().clone())
    }

    /// A per-service view of the current token: an `arc_swap::Cache`, whose load is one atomic
    /// pointer comparison with the shared slot (cheaper than a fresh `ArcSwap` load).
    pub(crate) fn reader(&self) -> Reader {
        Reader(arc_swap::Cache::new(self.shared.current.clone()))
    }

    /// [`valid_header`](Self::valid_header) through a service's [`Reader`].
    #[inline(always)]
    pub(crate) fn valid_header_with(&self, reader: &mut Reader) -> Option<HeaderValue> {
        let current = reader.0.load();
        Some(self.valid(current.as_ref()?)?.token.header().clone())
    }

    /// `current` if it is valid now; past its refresh point, also starts the one refresh-ahead.
    /// The one place that decides whether a cached token may be used.
    #[inline(always)]
    fn valid<'a>(&self, current: &'a Current) -> Option<&'a Current> {
        let now = Instant::now();
        if now < current.refresh_at {
            return Some(current);
        }
        self.valid_after_refresh_point(current, now)
    }

    #[cold]
    fn valid_after_refresh_point<'a>(
        &self,
        current: &'a Current,
        now: Instant,
    ) -> Option<&'a Current> {
        if now >= current.expires_at {
            return None;
        }
        #[cfg(feature = "metrics")]
        metrics::counter!(metric::SERVED_DURING_REFRESH_AHEAD).increment(1);
        self.shared.refresh_ahead(current.generation);
        Some(current)
    }

    /// A token valid now: the cached one, or the result of the (single, shared) refresh.
    ///
    /// Fails fast with [`ErrorKind::BackingOff`] when the last refresh failed and the next attempt
    /// is not due (see the [module docs](crate::cache)). Must be called within a tokio runtime
    /// when a refresh is needed: the refresh runs as a task of its own, so dropping this future
    /// cancels nothing for the other waiters.
    pub async fn token(&self) -> Result<Token, Error> {
        self.valid_token().await.map(|t| (*t).clone())
    }

    pub(crate) async fn header(&self) -> Result<HeaderValue, Error> {
        self.valid_token().await.map(|t| t.header().clone())
    }

    async fn valid_token(&self) -> Result<Arc<Token>, Error> {
        loop {
            // The guard is dropped here, not held across the awaits below.
            let valid = {
                let current = self.shared.current.load();
                current
                    .as_ref()
                    .and_then(|c| self.valid(c))
                    .map(|c| c.token.clone())
            };
            if let Some(token) = valid {
                return Ok(token);
            }
            let waiting = {
                let mut flight = self.shared.lock_flight();
                // Checked again under the lock: a refresh may have finished since.
                if let Some(token) = self.shared.valid_now() {
                    return Ok(token);
                }
                self.shared.join_or_start(&mut flight)
            };
            match waiting {
                Ok(mut receiver) => {
                    #[cfg(feature = "metrics")]
                    metrics::counter!(metric::WAITERS).increment(1);
                    // Bounded: a refresh whose runtime is no longer driven must not hold its
                    // waiters forever (`live_flight` gives up on it for later callers too).
                    let limit = self
                        .shared
                        .config
                        .refresh_timeout
                        .saturating_add(REFRESH_GRACE);
                    let outcome =
                        match tokio::time::timeout(limit, receiver.wait_for(Option::is_some)).await
                        {
                            Ok(Ok(outcome)) => outcome.clone(),
                            Ok(Err(_)) | Err(_) => None,
                        };
                    return match outcome {
                        // A refresh that ended long ago (a waiter left unpolled for a while)
                        // may have produced a token that has expired since: look again.
                        Some(Ok(token)) if !self.shared.is_unexpired(&token) => continue,
                        Some(outcome) => outcome,
                        None => Err(Error::new(
                            ErrorKind::RefreshAborted,
                            "the refresh task ended or stalled without a result; check that the \
                             tokio runtime that started it is still running and has timers \
                             enabled",
                        )),
                    };
                }
                Err(Backoff::Wait(until)) => {
                    tokio::time::sleep_until(until).await;
                }
                Err(Backoff::Fail(error)) => return Err(error),
            }
        }
    }

    /// The cached token, valid or not, without refreshing.
    pub fn cached(&self) -> Option<Token> {
        self.shared
            .current
            .load()
            .as_ref()
            .map(|c| (*c.token).clone())
    }

    /// Drops `token` if it is still the cached one and starts one refresh for everyone; call it
    /// when the API rejected `token` (HTTP 401).
    ///
    /// A newer token that another caller already fetched is kept. Concurrent invalidations of
    /// the same token coalesce into one refresh, and invalidations are rate-limited
    /// ([`TokenCacheBuilder::min_invalidate_interval`]) so that an API that rejects every token
    /// cannot turn into a flood of token requests. Returns whether the token was dropped.
    pub fn invalidate(&self, token: &Token) -> bool {
        self.invalidate_header(token.header())
    }

    pub(crate) fn invalidate_header(&self, header: &HeaderValue) -> bool {
        let mut flight = self.shared.lock_flight();
        let current = self.shared.current.load();
        let Some(current) = current.as_ref() else {
            return false;
        };
        if current.token.header() != header {
            return false;
        }
        let now = Instant::now();
        if let Some(last) = flight.last_invalidation {
            if last
                .checked_add(self.shared.config.min_invalidate_interval)
                .is_none_or(|until| now < until)
            {
                tracing::debug!(
                    "token rejected again within the minimum invalidation interval; keeping it"
                );
                return false;
            }
        }
        flight.last_invalidation = Some(now);
        self.shared.current.store(None);
        tracing::info!("cached access token invalidated");
        if live_flight(&mut flight, self.shared.config.refresh_timeout).is_none()
            && flight.not_before.is_none_or(|t| t <= now)
        {
            let _ = self.shared.start(&mut flight);
        }
        true
    }

    /// The header of the cached token, valid or not (no refresh triggered).
    pub(crate) fn current_header(&self) -> Option<HeaderValue> {
        self.shared
            .current
            .load()
            .as_ref()
            .map(|c| c.token.header().clone())
    }

    /// Fetches a token now if none is valid, so that the first request does not wait; with
    /// background refresh on, this also starts the refresh schedule.
    pub async fn prefetch(&self) -> Result<(), Error> {
        self.valid_token().await.map(drop)
    }
}

/// Extra time, past a refresh's own time limit, before waiters give up on it.
const REFRESH_GRACE: Duration = Duration::from_secs(1);

/// The in-flight refresh, unless its task is gone without a word (dropped before its first
/// poll), or it has outlived its time limit by far (its runtime is no longer driven: a
/// `current_thread` runtime whose `block_on` returned).
fn live_flight(flight: &mut Flight, limit: Duration) -> Option<&watch::Receiver<Option<Outcome>>> {
    let dropped = flight
        .in_flight
        .as_ref()
        .is_some_and(|receiver| receiver.has_changed().is_err());
    let stuck = flight
        .started_at
        .and_then(|started| started.checked_add(limit.saturating_add(REFRESH_GRACE)))
        .is_some_and(|deadline| Instant::now() >= deadline);
    if flight.in_flight.is_some() && (dropped || stuck) {
        flight.in_flight = None;
    }
    flight.in_flight.as_ref()
}

/// See [`TokenCache::reader`].
pub(crate) struct Reader(arc_swap::Cache<Arc<ArcSwapOption<Current>>, Option<Arc<Current>>>);

impl Clone for Reader {
    fn clone(&self) -> Self {
        Reader(self.0.clone())
    }
}

enum Backoff {
    Wait(Instant),
    Fail(Error),
}

impl Shared {
    fn lock_flight(&self) -> MutexGuard<'_, Flight> {
        // A panic while holding this lock cannot leave the state half-updated in a way that
        // matters (every field is a plain value), so a poisoned lock is used as is.
        self.flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `token` is the current token and has not expired.
    fn is_unexpired(&self, token: &Arc<Token>) -> bool {
        self.current.load().as_ref().is_some_and(|current| {
            Arc::ptr_eq(&current.token, token) && Instant::now() < current.expires_at
        })
    }

    fn valid_now(&self) -> Option<Arc<Token>> {
        let current = self.current.load();
        let current = current.as_ref()?;
        (Instant::now() < current.expires_at).then(|| current.token.clone())
    }

    /// Joins the in-flight refresh, or starts one, or says why not.
    fn join_or_start(
        self: &Arc<Self>,
        flight: &mut Flight,
    ) -> Result<watch::Receiver<Option<Outcome>>, Backoff> {
        if let Some(receiver) = live_flight(flight, self.config.refresh_timeout) {
            return Ok(receiver.clone());
        }
        let now = Instant::now();
        if let Some(not_before) = flight.not_before.filter(|t| *t > now) {
            let remaining = not_before - now;
            if remaining <= self.config.max_backoff_wait {
                return Err(Backoff::Wait(not_before));
            }
            return Err(Backoff::Fail(self.backing_off_error(flight, remaining)));
        }
        self.start(flight).map_err(Backoff::Fail)
    }

    fn backing_off_error(&self, flight: &Flight, remaining: Duration) -> Error {
        let message = match &flight.last_error {
            Some(last) => format!(
                "the last token refresh failed ({last}); the next attempt is due in {} ms",
                remaining.as_millis()
            ),
            None => format!(
                "the token was rejected and a new one may be requested in {} ms",
                remaining.as_millis()
            ),
        };
        let error = Error::new(ErrorKind::BackingOff, message).with_retry_after(Some(remaining));
        match &flight.last_error {
            Some(last) => error.with_source(last.clone()),
            None => error,
        }
    }

    /// Starts the refresh task. Called with the flight lock held and no refresh in flight.
    fn start(
        self: &Arc<Self>,
        flight: &mut Flight,
    ) -> Result<watch::Receiver<Option<Outcome>>, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::config(
                "a token refresh was needed outside a tokio runtime; call the service from \
                 within a tokio runtime",
            )
        })?;
        let (sender, receiver) = watch::channel(None);
        flight.in_flight = Some(receiver.clone());
        flight.flight_id = flight.flight_id.wrapping_add(1);
        flight.started_at = Some(Instant::now());
        let flight_id = flight.flight_id;
        let shared = self.clone();
        // The guard is made at the task's first poll: a task dropped unpolled (its runtime is
        // shutting down) must not run the guard's `Drop`, which takes the flight lock we hold.
        // Its dropped sender marks the flight as dead instead (see `live_flight`).
        runtime.spawn(async move {
            RefreshGuard {
                shared,
                sender,
                flight_id,
                finished: false,
            }
            .run()
            .await
        });
        Ok(receiver)
    }

    /// Cold path of [`TokenCache::valid_header`]: start a refresh ahead of expiry, unless one is
    /// running or the cache is backing off.
    #[cold]
    fn refresh_ahead(self: &Arc<Self>, generation: u64) {
        // `try_lock`: a request in the refresh-ahead window must never wait for another.
        let Ok(mut flight) = self.flight.try_lock() else {
            return;
        };
        self.refresh_ahead_locked(&mut flight, generation);
    }

    fn refresh_ahead_locked(self: &Arc<Self>, flight: &mut Flight, generation: u64) {
        // Checked again under the lock: the token this caller saw may have been replaced by a
        // refresh that finished in the meantime.
        let now = Instant::now();
        let due = self
            .current
            .load()
            .as_ref()
            .is_some_and(|c| c.generation == generation && now >= c.refresh_at);
        if !due || live_flight(flight, self.config.refresh_timeout).is_some() {
            return;
        }
        if flight.not_before.is_some_and(|t| t > now) {
            return;
        }
        #[cfg(feature = "metrics")]
        metrics::counter!(metric::REFRESH_AHEAD).increment(1);
        if let Err(error) = self.start(flight) {
            tracing::warn!(error = %error, "could not start a refresh ahead of expiry");
        }
        // Until it ends (or, with no runtime to run it, until expiry), requests need not come
        // here again: move the refresh point to expiry.
        self.postpone_refresh(generation, None);
    }

    /// Replaces the current token's refresh point (same token), if it is still current.
    fn postpone_refresh(&self, generation: u64, until: Option<Instant>) {
        let current = self.current.load();
        if let Some(current) = current.as_ref().filter(|c| c.generation == generation) {
            let refresh_at = until.map_or(current.expires_at, |u| u.min(current.expires_at));
            self.current.store(Some(Arc::new(Current {
                token: current.token.clone(),
                refresh_at,
                expires_at: current.expires_at,
                generation,
            })));
        }
    }

    fn schedule(&self, token: &Token) -> (Instant, Instant) {
        let received = token.received_at();
        let lifetime = token
            .lifetime()
            .unwrap_or(self.config.default_lifetime)
            .min(self.config.max_lifetime);
        let expires_at = received + lifetime;
        let half = lifetime / 2;
        let margin = self
            .config
            .refresh_margin
            .unwrap_or_else(|| DEFAULT_MIN_MARGIN.max(lifetime / 10))
            .min(half);
        let jitter = margin.mul_f64(self.config.refresh_jitter * fastrand::f64());
        let lead = (margin + jitter).min(half.max(margin));
        (expires_at - lead, expires_at)
    }

    fn backoff_delay(&self, failures: u32, error: &Error) -> Duration {
        let exp = self
            .config
            .backoff_factor
            .checked_pow(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let step = self
            .config
            .backoff_base
            .saturating_mul(exp)
            .min(self.config.max_backoff);
        // Jitter over the upper half of the step ("equal jitter"), not the whole of it ("full
        // jitter"): replicas still spread out, and every step waits at least half its length,
        // which is what bounds the attempts an outage can cause (full jitter allows a run of
        // near-zero waits, so no such bound holds).
        let jittered = step / 2 + (step / 2).mul_f64(fastrand::f64());
        match error.retry_after() {
            Some(server) => jittered.max(server.min(self.config.max_retry_after)),
            None => jittered,
        }
    }

    fn finish(self: &Arc<Self>, flight_id: u64, result: Result<Token, Error>) -> Outcome {
        // Decided before the lock is taken, so that the state changes below happen in one
        // critical section (no window in which a second flight could start).
        let result = result.and_then(|token| {
            let (refresh_at, expires_at) = self.schedule(&token);
            if expires_at <= Instant::now() {
                return Err(Error::new(
                    ErrorKind::InvalidTokenResponse,
                    "the token source returned a token that has already expired (an expires_in \
                     of almost zero, or a JWT whose exp has passed); check the authorization \
                     server's clock and the token's lifetime",
                ));
            }
            Ok((token, refresh_at, expires_at))
        });
        let mut flight = self.lock_flight();
        if flight.flight_id == flight_id {
            flight.in_flight = None;
        }
        let now = Instant::now();
        match result {
            Ok((token, refresh_at, expires_at)) => {
                let token = Arc::new(token);
                flight.failures = 0;
                flight.not_before = None;
                flight.last_error = None;
                flight.next_generation += 1;
                let generation = flight.next_generation;
                self.current.store(Some(Arc::new(Current {
                    token: token.clone(),
                    refresh_at,
                    expires_at,
                    generation,
                })));
                tracing::info!(
                    lifetime_s = (expires_at - now).as_secs(),
                    refresh_in_s = refresh_at.saturating_duration_since(now).as_secs(),
                    scope = token.scope().unwrap_or(""),
                    "access token refreshed"
                );
                #[cfg(feature = "metrics")]
                {
                    // An expiry timestamp rather than a "remaining lifetime" gauge, which would go
                    // stale between refreshes: remaining = expiry − now, at any moment.
                    let lifetime = expires_at - now;
                    let expiry = std::time::SystemTime::now() + lifetime;
                    let epoch = expiry
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    metrics::gauge!(metric::TOKEN_EXPIRY).set(epoch.as_secs_f64());
                    metrics::gauge!(metric::TOKEN_LIFETIME).set(lifetime.as_secs_f64());
                }
                if self.config.background_refresh {
                    self.schedule_background(refresh_at, generation);
                }
                Ok(token)
            }
            Err(error) => {
                flight.failures = flight.failures.saturating_add(1);
                let delay = self.backoff_delay(flight.failures, &error);
                let next = now.checked_add(delay).unwrap_or(now + ONE_YEAR);
                flight.not_before = Some(next);
                flight.last_error = Some(error.clone());
                tracing::warn!(
                    error = %error,
                    kind = ?error.kind(),
                    consecutive_failures = flight.failures,
                    next_attempt_in_ms = delay.as_millis() as u64,
                    "access token refresh failed"
                );
                // A token that is still valid keeps being served; its next refresh attempt waits
                // for the backoff.
                let generation = self.current.load().as_ref().map(|c| c.generation);
                if let Some(generation) = generation {
                    self.postpone_refresh(generation, Some(next));
                }
                if self.config.background_refresh {
                    if let Some(generation) = generation {
                        self.schedule_background(next, generation);
                    }
                }
                Err(error)
            }
        }
    }

    /// A sleeper that starts the refresh at `at` without request traffic. It holds only a weak
    /// reference: when the last clone of the cache is dropped, it ends.
    fn schedule_background(self: &Arc<Self>, at: Instant, generation: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Shared> = Arc::downgrade(self);
        runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Some(shared) = weak.upgrade() {
                // A blocking lock: off the request path, and a `try_lock` lost to a request
                // would end the schedule.
                let mut flight = shared.lock_flight();
                shared.refresh_ahead_locked(&mut flight, generation);
            }
        });
    }
}

/// Owns one refresh. Dropped without finishing (its runtime shut down, a panic in the source),
/// it still releases the flight and tells every waiter.
struct RefreshGuard {
    shared: Arc<Shared>,
    sender: watch::Sender<Option<Outcome>>,
    flight_id: u64,
    finished: bool,
}

impl RefreshGuard {
    async fn run(mut self) {
        tracing::debug!("access token refresh started");
        let started = Instant::now();
        let timeout = self.shared.config.refresh_timeout;
        let result = match tokio::time::timeout(timeout, self.shared.source.fetch_token()).await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorKind::Transport,
                format!(
                    "the token source did not answer within {} s; check that the token endpoint \
                     is reachable",
                    timeout.as_secs()
                ),
            )),
        };
        #[cfg(feature = "metrics")]
        {
            let outcome = if result.is_ok() { "success" } else { "failure" };
            metrics::counter!(metric::TOKEN_REQUESTS, "outcome" => outcome).increment(1);
            metrics::histogram!(metric::REFRESH_DURATION).record(started.elapsed().as_secs_f64());
        }
        let _ = started;
        let outcome = self.shared.finish(self.flight_id, result);
        self.finished = true;
        self.sender.send_replace(Some(outcome));
    }
}

impl Drop for RefreshGuard {
    fn drop(&mut self) {
        if !self.finished {
            let error = Error::new(
                ErrorKind::RefreshAborted,
                "the token refresh task was stopped before it finished; check that the tokio \
                 runtime is still running",
            );
            let outcome = self.shared.finish(self.flight_id, Err(error));
            self.sender.send_replace(Some(outcome));
        }
    }
}

impl TokenCacheBuilder {
    /// How long before expiry a token is refreshed. Default: the larger of 30 s and 10 % of the
    /// token's lifetime. Always capped at half the lifetime, so that a short-lived token is used
    /// for at least half of it.
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.config.refresh_margin = Some(bounded(margin));
        self
    }

    /// How far, as a fraction of the margin, the refresh point is moved earlier at random so
    /// that replicas do not refresh in lockstep. Default 0.5; 0 turns jitter off. Clamped to
    /// `0.0..=1.0`.
    pub fn refresh_jitter(mut self, fraction: f64) -> Self {
        self.config.refresh_jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// Lifetime assumed for a token whose source gives none. Default 5 minutes.
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.default_lifetime = bounded(lifetime);
        self
    }

    /// Longest lifetime believed; longer ones are clamped to it. Default one year.
    pub fn max_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.max_lifetime = bounded(lifetime);
        self
    }

    /// First backoff step after a failure. Default 100 ms.
    pub fn backoff_base(mut self, base: Duration) -> Self {
        self.config.backoff_base = bounded(base);
        self
    }

    /// Growth of the backoff step per consecutive failure. Default 2; at least 1.
    pub fn backoff_factor(mut self, factor: u32) -> Self {
        self.config.backoff_factor = factor.max(1);
        self
    }

    /// Largest backoff step. Default 30 s.
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.config.max_backoff = bounded(max);
        self
    }

    /// Longest wait a server's `Retry-After` (or `X-Rate-Limit-Reset`) may impose. Default 5 min.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.config.max_retry_after = bounded(max);
        self
    }

    /// How long a request with no valid token may wait for the next attempt while the cache is
    /// backing off, instead of failing at once with [`ErrorKind::BackingOff`]. Default zero.
    pub fn max_backoff_wait(mut self, wait: Duration) -> Self {
        self.config.max_backoff_wait = bounded(wait);
        self
    }

    /// Time limit for one call of the token source. Default 60 s.
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.config.refresh_timeout = bounded(timeout);
        self
    }

    /// Minimum time between two invalidations that drop a token ([`TokenCache::invalidate`]).
    /// Default 5 s.
    pub fn min_invalidate_interval(mut self, interval: Duration) -> Self {
        self.config.min_invalidate_interval = bounded(interval);
        self
    }

    /// Refresh ahead of expiry even without request traffic, from a task that ends when the
    /// last clone of the cache is dropped. Off by default: without traffic the first request
    /// after a long pause then waits for one token request.
    pub fn background_refresh(mut self, enabled: bool) -> Self {
        self.config.background_refresh = enabled;
        self
    }

    /// Builds the cache. No token is fetched until one is needed (or [`TokenCache::prefetch`]).
    pub fn build(self) -> TokenCache {
        TokenCache {
            shared: Arc::new(Shared {
                current: Arc::new(ArcSwapOption::empty()),
                source: self.source,
                config: self.config,
                flight: Mutex::new(Flight::default()),
            }),
        }
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.shared.current.load();
        f.debug_struct("TokenCache")
            .field("token", &current.as_ref().map(|c| &c.token))
            .field("config", &self.shared.config)
            .finish()
    }
}

impl fmt::Debug for TokenCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCacheBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
                tokio::spawn(async move { cache.header().await })
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
        assert_eq!(cache.header().await.unwrap(), "Bearer token-0");
        // Margin: max(30 s, 10 s) capped at 50 s = 30 s: refresh point at 70 s.
        tokio::time::advance(Duration::from_secs(69)).await;
        assert_eq!(cache.valid_header().unwrap(), "Bearer token-0");
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..100 {
            // Served without waiting while the refresh runs.
            assert_eq!(cache.valid_header().unwrap(), "Bearer token-0");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(cache.valid_header().unwrap(), "Bearer token-1");
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_token_is_never_served() {
        let source = scripted(0, 10, 0);
        let cache = TokenCache::builder(source.clone())
            .refresh_jitter(0.0)
            .build();
        cache.header().await.unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(cache.valid_header().is_none());
        assert_eq!(cache.header().await.unwrap(), "Bearer token-1");
    }

    #[tokio::test(start_paused = true)]
    async fn failure_backs_off_and_fails_fast() {
        let source = scripted(0, 3600, 2);
        let cache = TokenCache::builder(source.clone())
            .backoff_base(Duration::from_secs(1))
            .build();
        let err = cache.header().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transport);
        let err = cache.header().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BackingOff);
        assert!(err.retry_after().unwrap() <= Duration::from_secs(1));
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            cache.header().await.unwrap_err().kind(),
            ErrorKind::Transport
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.header().await.unwrap(), "Bearer token-2");
        assert_eq!(source.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_left_unpolled_never_returns_an_expired_token() {
        let source = scripted(100, 10, 0);
        let cache = TokenCache::builder(source.clone())
            .refresh_jitter(0.0)
            .build();
        let mut waiter = Box::pin(cache.header());
        let polled_once = tokio::time::timeout(Duration::from_millis(1), &mut waiter).await;
        assert!(polled_once.is_err(), "still waiting for the refresh");
        assert_eq!(cache.header().await.unwrap(), "Bearer token-0");
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
            tokio::spawn(async move { cache.header().await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(cache.header().await.unwrap(), "Bearer token-0");
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
        assert_eq!(cache.header().await.unwrap(), "Bearer token-2");
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
                tokio::spawn(async move { cache.header().await })
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
            tokio::time::timeout(Duration::from_millis(1), cache.header()).await
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
            let first = cache.header().await;
            assert_eq!(first.unwrap_err().kind(), ErrorKind::RefreshAborted);
            assert_eq!(cache.header().await.unwrap(), "Bearer token-1");
        });
        drop(a);
    }

    #[test]
    fn schedule_respects_margin_rules() {
        let cache = TokenCache::builder(scripted(0, 1, 0))
            .refresh_jitter(0.0)
            .build();
        let at = |lifetime: u64| {
            let token = Token::bearer("t", Some(Duration::from_secs(lifetime))).unwrap();
            let (refresh, expires) = cache.shared.schedule(&token);
            (
                (expires - refresh).as_secs(),
                (expires - token.received_at()).as_secs(),
            )
        };
        assert_eq!(at(3600), (360, 3600)); // 10 %
        assert_eq!(at(120), (30, 120)); // 30 s floor
        assert_eq!(at(20), (10, 20)); // capped at half
        assert_eq!(at(100 * 365 * 24 * 3600).1, 365 * 24 * 3600); // clamped to a year
    }
}
