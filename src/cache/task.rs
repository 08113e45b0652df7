//! The refresh task: one call of the token source, run as a task of its own so that no
//! caller's cancellation cancels it; its outcome goes to every waiter, also when the task is
//! dropped before it finishes. The waiters meet it in a [`Flight`].

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use tokio::time::Instant;

use super::wait::NO_SLOT;
use super::{metrics, Shared};
use crate::coarse_clock::CoarseDeadline;
use crate::error::{Error, ErrorKind};
use crate::token::Token;

/// What a refresh gives every waiter: the new token, or the error.
pub(super) type Outcome = Result<Arc<Token>, Error>;

/// One refresh as its waiters see it: its id, when they give up on it, and its outcome once
/// settled. Published beside the current token (`Shared::flight`) so that a caller joins it with
/// two atomic loads, without the cache's mutex.
///
/// A waiter registers its waker in a plain list (no intrusive node, so the waiting future is
/// `Unpin` and needs no box); settling wakes them all, once. A waiter dropped before that leaves
/// its waker in the list until then: waking a finished task does nothing.
pub(super) struct Flight {
    pub(super) id: u64,
    /// The refresh's time limit plus a grace, from its start: one that outlives it (its runtime
    /// is no longer driven) is given up on, by its waiters and by later callers alike.
    pub(super) give_up_at: Instant,
    /// `give_up_at` for the coarse clock (less a safety margin): a caller joins without the
    /// mutex only before it, which costs a coarse clock read instead of a precise one; after
    /// it (or with tokio's clock paused) callers go through the mutex, which decides precisely.
    joinable_until: CoarseDeadline,
    /// The runtime the refresh task runs on: a waiter polled there needs no timer of its own (the
    /// task has its own time limit and is driven whenever the waiter is).
    pub(super) runtime: tokio::runtime::Id,
    /// `Some(outcome)`, or `None` when the task was dropped before its first poll (its runtime
    /// was shutting down) and could not say more.
    outcome: OnceLock<Option<Outcome>>,
    /// The waiters to wake, in one list per shard (a thread registers in its own shard, so the
    /// runtime's workers do not contend for one lock in a storm); `None` once settled.
    wakers: [Shard; SHARDS],
}

impl Flight {
    pub(super) fn new(id: u64, give_up_at: Instant, runtime: tokio::runtime::Id) -> Self {
        Flight {
            id,
            give_up_at,
            joinable_until: CoarseDeadline::before(give_up_at),
            runtime,
            outcome: OnceLock::new(),
            wakers: std::array::from_fn(|_| Shard(Mutex::new(Some(Vec::new())))),
        }
    }

    /// Whether a caller may join it without the cache's mutex: not settled, and surely before
    /// the time its waiters give up (a settled flight, or one near or past that time, is
    /// handled under the mutex).
    #[inline]
    pub(super) fn is_joinable(&self) -> bool {
        self.outcome.get().is_none() && self.joinable_until.is_ahead()
    }

    /// Whether the task went away without a word (dropped before its first poll).
    pub(super) fn abandoned(&self) -> bool {
        matches!(self.outcome.get(), Some(None))
    }

    /// The outcome once settled; until then registers (or updates) this waiter's waker at
    /// `slot` (its index in the list, [`NO_SLOT`] before the first registration).
    pub(super) fn poll_settled(
        &self,
        slot: &mut u32,
        cx: &mut Context<'_>,
    ) -> Poll<&Option<Outcome>> {
        if let Some(outcome) = self.outcome.get() {
            return Poll::Ready(outcome);
        }
        // A waiter that registered stays in its shard (its slot says which), also if it is
        // polled on another thread later.
        let shard = match *slot {
            NO_SLOT => this_threads_shard(),
            slot => slot as usize % SHARDS,
        };
        let mut wakers = self.wakers[shard]
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(list) = wakers.as_mut() else {
            // Settled since the check above: the outcome is set before the list is taken.
            drop(wakers);
            return Poll::Ready(self.outcome.get().unwrap_or(&None));
        };
        match list.get_mut((*slot as usize) / SHARDS) {
            Some(registered) => {
                if !registered.will_wake(cx.waker()) {
                    *registered = cx.waker().clone();
                }
            }
            None => {
                // Past about 500 million waiters per shard, a waiter re-registers at every poll:
                // harmless.
                *slot = list
                    .len()
                    .checked_mul(SHARDS)
                    .map(|i| i + shard)
                    .and_then(|i| u32::try_from(i).ok())
                    .filter(|i| *i != NO_SLOT)
                    .unwrap_or(NO_SLOT);
                list.push(cx.waker().clone());
            }
        }
        Poll::Pending
    }

    /// Sets the outcome (the first call wins) and wakes every waiter.
    fn settle(&self, outcome: Option<Outcome>) {
        let _ = self.outcome.set(outcome);
        for shard in &self.wakers {
            let wakers = shard.0.lock().unwrap_or_else(|e| e.into_inner()).take();
            for waker in wakers.into_iter().flatten() {
                waker.wake();
            }
        }
    }
}

/// Shards of a flight's waker list.
const SHARDS: usize = 8;

/// One shard of the waker list, on cache lines of its own.
#[repr(align(128))]
struct Shard(Mutex<Option<Vec<Waker>>>);

/// The shard this thread registers in: threads are spread over the shards in the order they
/// first wait.
fn this_threads_shard() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

/// The refresh task's end of a [`Flight`]: dropped without an outcome (the task was dropped
/// before its first poll), it settles the flight as abandoned, so no waiter waits on.
pub(super) struct FlightSender(Arc<Flight>);

impl FlightSender {
    pub(super) fn new(flight: Arc<Flight>) -> Self {
        FlightSender(flight)
    }

    fn send(&self, outcome: Outcome) {
        self.0.settle(Some(outcome));
    }
}

impl Drop for FlightSender {
    fn drop(&mut self) {
        // No effect if the task settled it.
        self.0.settle(None);
    }
}

/// One refresh, as a task of its own. Dropped without finishing (its runtime shut down, a panic
/// in the source), it still releases the refresh and tells every waiter.
pub(super) struct RefreshTask {
    shared: Arc<Shared>,
    sender: FlightSender,
    refresh_id: u64,
    /// The source's credentials changed since the failures that started the last backoff.
    credentials_changed: bool,
    finished: bool,
}

impl RefreshTask {
    pub(super) fn new(
        shared: Arc<Shared>,
        sender: FlightSender,
        refresh_id: u64,
        credentials_changed: bool,
    ) -> Self {
        RefreshTask {
            shared,
            sender,
            refresh_id,
            credentials_changed,
            finished: false,
        }
    }

    pub(super) async fn run(mut self) {
        tracing::debug!("access token refresh started");
        let started = Instant::now();
        let timeout = self.shared.config.refresh_timeout;
        let result = match tokio::time::timeout(
            timeout,
            fetch_catching_panics(&self.shared, self.credentials_changed),
        )
        .await
        {
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
        metrics::token_request(result.is_ok(), started.elapsed());
        let outcome = self.shared.finish(self.refresh_id, result);
        self.finished = true;
        self.sender.send(outcome);
    }
}

impl Drop for RefreshTask {
    fn drop(&mut self) {
        if !self.finished {
            let outcome = self.shared.finish(self.refresh_id, Err(aborted()));
            self.sender.send(outcome);
        }
    }
}

/// Calls the token source, turning a panic into an error. Without this, a panicking source
/// would end the task like a runtime shutting down does, which is not taken as a failure: it
/// would be restarted without backoff.
async fn fetch_catching_panics(shared: &Shared, credentials_changed: bool) -> Result<Token, Error> {
    let panicked = || {
        Error::new(
            ErrorKind::Source,
            "the token source panicked; see the panic message in the log",
        )
    };
    let Ok(mut fetch) =
        std::panic::catch_unwind(AssertUnwindSafe(|| shared.fetch(credentials_changed)))
    else {
        return Err(panicked());
    };
    std::future::poll_fn(|cx| {
        // Not polled again after a panic: this returns `Ready`.
        match std::panic::catch_unwind(AssertUnwindSafe(|| fetch.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(_) => Poll::Ready(Err(panicked())),
        }
    })
    .await
}

/// The outcome of a refresh whose task was dropped before it finished.
pub(super) fn aborted() -> Error {
    Error::new(
        ErrorKind::RefreshAborted,
        "the token refresh task was stopped before it finished (its tokio runtime shut down); \
         the next request starts a new one",
    )
}
