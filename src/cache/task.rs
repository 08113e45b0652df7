//! The refresh task: one call of the token source, run as a task of its own so that no
//! caller's cancellation cancels it; its outcome goes to every waiter, also when the task is
//! dropped before it finishes.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{metrics, Shared};
use crate::error::{Error, ErrorKind};
use crate::token::Token;

/// What a refresh gives every waiter: the new token, or the error.
pub(super) type Outcome = Result<Arc<Token>, Error>;

/// One refresh, as a task of its own. Dropped without finishing (its runtime shut down, a panic
/// in the source), it still releases the refresh and tells every waiter.
pub(super) struct RefreshTask {
    shared: Arc<Shared>,
    sender: watch::Sender<Option<Outcome>>,
    refresh_id: u64,
    /// The source's credentials changed since the failures that started the last backoff.
    credentials_changed: bool,
    finished: bool,
}

impl RefreshTask {
    pub(super) fn new(
        shared: Arc<Shared>,
        sender: watch::Sender<Option<Outcome>>,
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
        self.sender.send_replace(Some(outcome));
    }
}

impl Drop for RefreshTask {
    fn drop(&mut self) {
        if !self.finished {
            let outcome = self.shared.finish(self.refresh_id, Err(aborted()));
            self.sender.send_replace(Some(outcome));
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
