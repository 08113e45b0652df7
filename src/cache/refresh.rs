//! The single-flight refresh: at most one call of the token source at a time, run as a task of
//! its own; callers with no usable token wait for it (or fail fast while the cache backs off);
//! the outcome updates the backoff state and the current token.

use std::sync::{Arc, MutexGuard, TryLockError, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::read::Current;
use super::task::{Flight, FlightSender, Outcome, RefreshTask};
use super::{metrics, schedule, Shared, TokenCache};
use crate::error::{Error, ErrorKind};
#[cfg(feature = "store")]
use crate::store::FleetBackoff;
use crate::time::ONE_YEAR;
use crate::token::Token;

/// Extra time, past a refresh's own time limit, before waiters give up on it.
const REFRESH_GRACE: Duration = Duration::from_secs(1);

/// Everything about refreshing that is not the current token: the running refresh, the backoff,
/// the invalidation rate limit. Behind the cache's one mutex, never touched by the hot path.
#[derive(Default)]
pub(super) struct RefreshState {
    /// The running refresh: the only one whose result counts. Also published in
    /// `Shared::flight` for callers that join it without this lock; that copy is cleared when
    /// the refresh finishes, and one given up on here is refused by those callers too
    /// ([`Flight::is_joinable`]).
    running: Option<Arc<Flight>>,
    /// The id of the last refresh started.
    last_flight_id: u64,
    /// Consecutive failures since the last success.
    failures: u32,
    /// Permanent failures among them: they step through their own, longer schedule.
    permanent_failures: u32,
    /// No refresh may start before this instant (backoff).
    not_before: Option<Instant>,
    /// The source's credentials changed while backing off (see `join_or_start`): the next
    /// refresh also ends the fleet's backoff in a shared store, which the old credentials'
    /// failures started.
    credentials_changed: bool,
    last_error: Option<Error>,
    last_invalidation: Option<Instant>,
    next_generation: u64,
}

/// What [`TokenCache::status`] reports of the refresh state.
pub(super) struct RefreshSnapshot {
    pub(super) refreshing: bool,
    pub(super) failures: u32,
    pub(super) last_error: Option<Error>,
    pub(super) not_before: Option<Instant>,
}

impl RefreshState {
    /// The running refresh, unless its task is gone without a word (dropped before its first
    /// poll), or it has outlived its time limit by far (its runtime is no longer driven: a
    /// `current_thread` runtime whose `block_on` returned). A refresh given up on no longer
    /// owns the state: its late result is discarded (see `finish`).
    fn live_refresh(&mut self) -> Option<&Arc<Flight>> {
        let now = Instant::now();
        if self
            .running
            .as_ref()
            .is_some_and(|flight| flight.abandoned() || now >= flight.give_up_at)
        {
            self.running = None;
        }
        self.running.as_ref()
    }

    pub(super) fn snapshot(&mut self) -> RefreshSnapshot {
        RefreshSnapshot {
            refreshing: self.live_refresh().is_some(),
            failures: self.failures,
            last_error: self.last_error.clone(),
            not_before: self.not_before,
        }
    }
}

/// Why no refresh was joined or started.
pub(super) enum Backoff {
    /// Wait until then for the next attempt (within `max_backoff_wait`).
    Wait(Instant),
    /// Fail now with this error.
    Fail(Error),
}

impl TokenCache {
    /// Drops the cached token if its `Authorization` value is `header`, and starts one refresh;
    /// see [`TokenCache::invalidate`].
    pub(crate) fn invalidate_header(&self, header: &http::HeaderValue) -> bool {
        let mut state = self.shared.lock_state();
        let current = self.shared.current.load();
        let Some(current) = current.as_ref() else {
            return false;
        };
        if current.token.header() != header {
            return false;
        }
        let now = Instant::now();
        if let Some(last) = state.last_invalidation {
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
        state.last_invalidation = Some(now);
        self.shared.replace_current(None);
        // The rejected token leaves the shared store too (compare-and-delete).
        #[cfg(feature = "store")]
        if let Some(store) = &self.shared.store {
            store.invalidated(&current.token);
        }
        tracing::info!("cached access token invalidated");
        if state.live_refresh().is_none() && state.not_before.is_none_or(|t| t <= now) {
            let _ = self.shared.start(&mut state);
        }
        true
    }
}

impl Shared {
    /// A new token from the source, or, with a shared store, from the store or from the source
    /// under the store's lease (see [`crate::store`]). `credentials_changed`: the source's
    /// credentials changed since the failures of the backoff, which (in the store, the fleet's
    /// backoff) they no longer hold up.
    pub(super) fn fetch(
        &self,
        credentials_changed: bool,
    ) -> crate::source::BoxFuture<'_, Result<Token, Error>> {
        #[cfg(feature = "store")]
        if let Some(store) = &self.store {
            let current = self.current.load_full().map(|c| c.token.clone());
            // The fleet backs off on the cache's own schedule, the longer one after a permanent
            // failure.
            let fleet_backoff = if credentials_changed {
                FleetBackoff::EndedByNewCredentials
            } else {
                FleetBackoff::Respected
            };
            return Box::pin(store.fetch(
                &*self.source,
                current,
                fleet_backoff,
                // The fleet backs off on the cache's own schedules: the transient one counts
                // every failure, the permanent one only the permanent failures (as `finish`).
                |count, error| {
                    if error.is_transient() {
                        schedule::backoff_delay(
                            &self.config,
                            count.failures,
                            error.retry_after(),
                            fastrand::f64(),
                        )
                    } else {
                        schedule::permanent_backoff_delay(
                            &self.config,
                            count.permanent,
                            error.retry_after(),
                            fastrand::f64(),
                        )
                    }
                },
                // One lifetime policy: a stored token is judged as `finish` will judge it.
                |token| schedule::worth_adopting_for(&self.config, token, Instant::now()),
            ));
        }
        let _ = credentials_changed;
        self.source.fetch_token()
    }

    pub(super) fn lock_state(&self) -> MutexGuard<'_, RefreshState> {
        // A panic while holding this lock cannot leave the state half-updated in a way that
        // matters (every field is a plain value), so a poisoned lock is used as is.
        self.refresh.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running refresh if a caller may join it without the mutex (see [`Flight::is_joinable`]);
    /// `None` sends the caller to [`join_or_start`](Self::join_or_start).
    #[inline]
    pub(super) fn joinable_flight(&self) -> Option<Arc<Flight>> {
        // Checked through a guard first: no shared reference count is touched when there is
        // nothing to join.
        let flight = self.flight.load();
        let flight = flight.as_ref()?;
        flight.is_joinable().then(|| flight.clone())
    }

    /// Joins the running refresh, or starts one, or says why not.
    pub(super) fn join_or_start(
        self: &Arc<Self>,
        state: &mut RefreshState,
    ) -> Result<Arc<Flight>, Backoff> {
        if let Some(flight) = state.live_refresh() {
            return Ok(flight.clone());
        }
        let now = Instant::now();
        if state.not_before.is_some_and(|t| t > now) && self.source.credentials_changed() {
            // The failures were the old credentials' (a rotated secret): the new ones get a
            // clean backoff, starting with this attempt.
            // Both schedules: a permanent failure (`invalid_client`, the usual one before a
            // rotation) backs off on the longer one, which the new secret must end too.
            tracing::info!("the credentials changed; ending the backoff and trying them");
            state.failures = 0;
            state.permanent_failures = 0;
            state.not_before = None;
            state.credentials_changed = true;
        }
        if let Some(not_before) = state.not_before.filter(|t| *t > now) {
            let remaining = not_before - now;
            if remaining <= self.config.max_backoff_wait {
                return Err(Backoff::Wait(not_before));
            }
            return Err(Backoff::Fail(self.backing_off_error(state, remaining)));
        }
        self.start(state).map_err(Backoff::Fail)
    }

    fn backing_off_error(&self, state: &RefreshState, remaining: Duration) -> Error {
        let message = match &state.last_error {
            Some(last) if !last.is_transient() => format!(
                "the last token refresh failed ({last}); waiting will not fix that: check the \
                 client's configuration and registration; the next attempt is due in {} ms",
                remaining.as_millis()
            ),
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
        match &state.last_error {
            Some(last) => error.with_source(last.clone()),
            None => error,
        }
    }

    /// Starts the refresh task. Called with the lock held and no refresh running.
    fn start(self: &Arc<Self>, state: &mut RefreshState) -> Result<Arc<Flight>, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| outside_a_runtime())?;
        state.last_flight_id = state.last_flight_id.wrapping_add(1);
        let refresh_id = state.last_flight_id;
        let limit = self.config.refresh_timeout.saturating_add(REFRESH_GRACE);
        let now = Instant::now();
        let flight = Arc::new(Flight::new(
            refresh_id,
            now.checked_add(limit).unwrap_or(now + ONE_YEAR),
            runtime.id(),
        ));
        let sender = FlightSender::new(flight.clone());
        state.running = Some(flight.clone());
        self.flight.store(Some(flight.clone()));
        let shared = self.clone();
        let credentials_changed = std::mem::take(&mut state.credentials_changed);
        // The task is made at its first poll: a task dropped unpolled (its runtime is shutting
        // down) must not run `RefreshTask`'s `Drop`, which takes the lock we hold. Its dropped
        // sender marks the refresh as abandoned instead (see `live_refresh`), taking no lock but
        // the flight's own.
        runtime.spawn(async move {
            RefreshTask::new(shared, sender, refresh_id, credentials_changed)
                .run()
                .await
        });
        Ok(flight)
    }

    /// Starts a refresh ahead of expiry (cold path of the read path), unless one is running or
    /// the cache is backing off.
    #[cold]
    pub(super) fn refresh_ahead(self: &Arc<Self>, generation: u64) {
        // `try_lock`: a request in the refresh-ahead window must never wait for another. A
        // poisoned lock is used as is (see `lock_state`): were it taken as "busy", refresh
        // ahead would be off for good.
        let mut state = match self.refresh.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        self.refresh_ahead_locked(&mut state, generation);
    }

    fn refresh_ahead_locked(self: &Arc<Self>, state: &mut RefreshState, generation: u64) {
        // Checked again under the lock: the token this caller saw may have been replaced by a
        // refresh that finished in the meantime.
        let now = Instant::now();
        let due = self
            .current
            .load()
            .as_ref()
            .is_some_and(|c| c.generation == generation && now >= c.refresh_at);
        if !due || state.live_refresh().is_some() {
            return;
        }
        if state.not_before.is_some_and(|t| t > now) {
            return;
        }
        metrics::refresh_ahead_started();
        if let Err(error) = self.start(state) {
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
            self.replace_current(Some(Arc::new(Current::new(
                current.token.clone(),
                refresh_at,
                current.expires_at,
                generation,
            ))));
        }
    }

    /// Records the outcome of refresh `refresh_id`: the new token, or the failure and its
    /// backoff. Only the running refresh's outcome counts: one given up on and superseded
    /// changes nothing (it is still handed to its own waiters, who look again).
    pub(super) fn finish(
        self: &Arc<Self>,
        refresh_id: u64,
        result: Result<Token, Error>,
    ) -> Outcome {
        // Decided before the lock is taken, so that the state changes below happen in one
        // critical section (no window in which a second refresh could start).
        let result = result.and_then(|token| {
            let lifetime = schedule::believed_lifetime(&self.config, token.lifetime());
            let (refresh_at, expires_at) = schedule::refresh_and_expiry(
                &self.config,
                token.received_at(),
                lifetime,
                fastrand::f64(),
            );
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
        let mut state = self.lock_state();
        let owns_the_state = state
            .running
            .as_ref()
            .is_some_and(|flight| flight.id == refresh_id);
        if !owns_the_state {
            tracing::debug!("a token refresh that was given up on ended late; result discarded");
            return result.map(|(token, _, _)| Arc::new(token));
        }
        state.running = None;
        self.flight.store(None);
        let now = Instant::now();
        match result {
            Ok((token, refresh_at, expires_at)) => {
                let token = Arc::new(token);
                state.failures = 0;
                state.permanent_failures = 0;
                state.not_before = None;
                state.last_error = None;
                state.next_generation += 1;
                let generation = state.next_generation;
                self.replace_current(Some(Arc::new(Current::new(
                    token.clone(),
                    refresh_at,
                    expires_at,
                    generation,
                ))));
                tracing::info!(
                    lifetime_s = (expires_at - now).as_secs(),
                    refresh_in_s = refresh_at.saturating_duration_since(now).as_secs(),
                    scope = token.scope().unwrap_or(""),
                    "access token refreshed"
                );
                metrics::new_token(expires_at - now);
                if self.config.background_refresh {
                    self.schedule_background(refresh_at, generation);
                }
                Ok(token)
            }
            Err(error) if error.kind() == ErrorKind::RefreshAborted => {
                // Its runtime went away: no evidence about the token endpoint, so no backoff
                // and no failure counted. The next request may start a refresh at once (also
                // ahead of expiry: the refresh point was moved to expiry when this one began).
                tracing::debug!("access token refresh aborted: its runtime went away");
                let generation = self.current.load().as_ref().map(|c| c.generation);
                if let Some(generation) = generation {
                    self.postpone_refresh(generation, Some(now));
                }
                Err(error)
            }
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                let permanent = !error.is_transient();
                let delay = if permanent {
                    state.permanent_failures = state.permanent_failures.saturating_add(1);
                    schedule::permanent_backoff_delay(
                        &self.config,
                        state.permanent_failures,
                        error.retry_after(),
                        fastrand::f64(),
                    )
                } else {
                    schedule::backoff_delay(
                        &self.config,
                        state.failures,
                        error.retry_after(),
                        fastrand::f64(),
                    )
                };
                let next = now.checked_add(delay).unwrap_or(now + ONE_YEAR);
                state.not_before = Some(next);
                state.last_error = Some(error.clone());
                tracing::warn!(
                    error = %error,
                    kind = ?error.kind(),
                    consecutive_failures = state.failures,
                    permanent,
                    next_attempt_in_ms = delay.as_millis() as u64,
                    "access token refresh failed"
                );
                // A token that is still valid keeps being served; its next refresh attempt waits
                // for the backoff.
                let generation = self.current.load().as_ref().map(|c| c.generation);
                if let Some(generation) = generation {
                    self.postpone_refresh(generation, Some(next));
                    if self.config.background_refresh {
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
                let mut state = shared.lock_state();
                shared.refresh_ahead_locked(&mut state, generation);
            }
        });
    }
}

pub(super) fn outside_a_runtime() -> Error {
    Error::config(
        "a token refresh was needed outside a tokio runtime; call the service from within a \
         tokio runtime",
    )
}
