//! Waiting for a token when none is usable: the state machine behind [`TokenCache::token`] and a
//! service's `poll_ready` on the cold path, as a named, `Unpin` future ([`TokenWait`]) that a
//! service keeps in a field: no box per waiter.
//!
//! A storm of callers meets one refresh without the cache's mutex: the running refresh is
//! published beside the current token (`Shared::joinable_flight`), and joining it is two atomic
//! loads, a reference count and a waker pushed on its list. The mutex is taken only to start a
//! refresh, to see a backoff, or when the published one may not be joined (settled, given up).
//!
//! Waits are bounded: a waiter polled on another runtime than the refresh task's arms a timer
//! at the refresh's give-up time (that runtime may no longer be driven); a waiter on the task's
//! own runtime needs none, since the task has its own time limit and is driven whenever the
//! waiter is, so the common case registers no timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Sleep;

use super::refresh::{outside_a_runtime, Backoff};
use super::task::{aborted, Flight, Outcome};
use super::{metrics, TokenCache};
use crate::error::{Error, ErrorKind};
use crate::token::Token;

/// How many refreshes whose runtime went away one caller restarts before it gives up: should
/// its own runtime be going away too, each restart would end at once, forever.
const MAX_RESTARTS: u8 = 3;

/// [`TokenWait::slot`] before the waiter registers its waker.
pub(super) const NO_SLOT: u32 = u32::MAX;

/// A wait for a usable token (see the module docs). Made idle; [`poll_token`](Self::poll_token)
/// drives it. Dropping it cancels nothing but this wait.
///
/// Kept small (24 bytes), since a service carries it inline: looking at the cache (no flight,
/// no timer), waiting for a refresh (its flight, and a timer only off its runtime), or backing
/// off (a timer only).
pub(crate) struct TokenWait {
    /// The refresh joined, while waiting for it.
    flight: Option<Arc<Flight>>,
    /// Joined off the refresh task's runtime: its give-up time. Backing off: the next attempt.
    timer: Option<Pin<Box<Sleep>>>,
    /// This waiter's place in the flight's waker list ([`NO_SLOT`] before it registers).
    slot: u32,
    /// Refreshes restarted by this wait after their runtime went away.
    restarts: u8,
    /// The caller has just found no usable token: the first look goes straight to the refresh.
    missed: bool,
}

impl Default for TokenWait {
    fn default() -> Self {
        TokenWait {
            flight: None,
            timer: None,
            slot: NO_SLOT,
            restarts: 0,
            missed: false,
        }
    }
}

impl TokenWait {
    /// A wait for a caller that has just read the cache (through its own reader, which sees the
    /// latest token) and found no usable token: it does not read it again before joining.
    pub(crate) fn after_a_miss() -> Self {
        TokenWait {
            missed: true,
            ..TokenWait::default()
        }
    }

    /// Polls the wait: ready with `take` of a token usable now, or with the error every waiter
    /// of the failed refresh gets (or the backoff's). Must be polled within a tokio runtime
    /// when a refresh is needed; outside one it fails with a configuration error.
    pub(crate) fn poll_token<T>(
        &mut self,
        cache: &TokenCache,
        cx: &mut Context<'_>,
        take: impl FnOnce(&Arc<Token>) -> T,
    ) -> Poll<Result<T, Error>> {
        let shared = &cache.shared;
        // Whether this poll already checked the runtime (when it joined).
        let mut runtime_checked = false;
        loop {
            if let Some(flight) = self.flight.take() {
                let outcome = match flight.poll_settled(&mut self.slot, cx) {
                    Poll::Ready(outcome) => outcome,
                    Poll::Pending => {
                        if self.timer.is_none() && !runtime_checked {
                            // Polled again without a wake-up: it may have moved to another
                            // runtime since it joined, where it needs the timer.
                            let here = tokio::runtime::Handle::try_current().map(|h| h.id());
                            if here.ok() != Some(flight.runtime) {
                                self.timer =
                                    Some(Box::pin(tokio::time::sleep_until(flight.give_up_at)));
                            }
                        }
                        let stalled = self
                            .timer
                            .as_mut()
                            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                        if !stalled {
                            self.flight = Some(flight);
                            return Poll::Pending;
                        }
                        // `live_refresh` gives up on it for later callers too.
                        self.timer = None;
                        self.slot = NO_SLOT;
                        return Poll::Ready(Err(Error::new(
                            ErrorKind::RefreshAborted,
                            "the refresh task stalled without a result; check that the tokio \
                             runtime that started it is still running and has timers enabled",
                        )));
                    }
                };
                self.timer = None;
                self.slot = NO_SLOT;
                match self.judge(cache, outcome) {
                    Judged::Token(token) => return Poll::Ready(Ok(take(token))),
                    Judged::Error(error) => return Poll::Ready(Err(error)),
                    Judged::LookAgain => continue,
                }
            }
            if let Some(backoff) = self.timer.as_mut() {
                if backoff.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.timer = None;
            }
            // Look at the cache: a usable token, a refresh to join or start, or a backoff.
            if !std::mem::take(&mut self.missed) {
                let current = shared.current.load();
                if let Some(current) = current
                    .as_ref()
                    .and_then(|c| cache.usable_starting_refresh_ahead(c))
                {
                    return Poll::Ready(Ok(take(&current.token)));
                }
            }
            let flight = match shared.joinable_flight() {
                Some(flight) => flight,
                None => {
                    let mut state = shared.lock_state();
                    // Checked again under the lock: a refresh may have finished since.
                    if let Some(token) = shared.unexpired_token() {
                        return Poll::Ready(Ok(take(&token)));
                    }
                    match shared.join_or_start(&mut state) {
                        Ok(flight) => flight,
                        Err(Backoff::Wait(until)) => {
                            drop(state);
                            if tokio::runtime::Handle::try_current().is_err() {
                                return Poll::Ready(Err(outside_a_runtime()));
                            }
                            self.timer = Some(Box::pin(tokio::time::sleep_until(until)));
                            continue;
                        }
                        Err(Backoff::Fail(error)) => return Poll::Ready(Err(error)),
                    }
                }
            };
            // Waiting takes a runtime (a refresh started elsewhere may be joined from
            // anywhere), and off the task's own runtime, that runtime's timer.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return Poll::Ready(Err(outside_a_runtime()));
            };
            runtime_checked = true;
            metrics::waiter();
            if runtime.id() != flight.runtime {
                self.timer = Some(Box::pin(tokio::time::sleep_until(flight.give_up_at)));
            }
            self.flight = Some(flight);
        }
    }

    /// What a waiter makes of a refresh's outcome (`None`: the task was dropped before its first
    /// poll, an aborted refresh that could not say so).
    fn judge<'o>(&mut self, cache: &TokenCache, outcome: &'o Option<Outcome>) -> Judged<'o> {
        match outcome {
            // A refresh that ended long ago (a waiter left unpolled for a while) may have
            // produced a token that has expired since, and a superseded one a token that was
            // never cached: look again.
            Some(Ok(token)) if !cache.shared.is_cached_and_unexpired(token) => Judged::LookAgain,
            Some(Ok(token)) => Judged::Token(token),
            // Its runtime went away: that says nothing about the token endpoint, so this caller
            // starts (or joins) the refresh again, here.
            Some(Err(error))
                if error.kind() == ErrorKind::RefreshAborted && self.restarts < MAX_RESTARTS =>
            {
                self.restarts += 1;
                Judged::LookAgain
            }
            None if self.restarts < MAX_RESTARTS => {
                self.restarts += 1;
                Judged::LookAgain
            }
            Some(Err(error)) => Judged::Error(error.clone()),
            None => Judged::Error(aborted()),
        }
    }
}

enum Judged<'o> {
    Token(&'o Arc<Token>),
    Error(Error),
    LookAgain,
}

impl TokenCache {
    /// A token usable now: the cached one, or the result of the (single, shared) refresh.
    pub(super) async fn usable_or_refreshed(&self) -> Result<Arc<Token>, Error> {
        let mut wait = TokenWait::default();
        std::future::poll_fn(|cx| wait.poll_token(self, cx, Arc::clone)).await
    }
}
