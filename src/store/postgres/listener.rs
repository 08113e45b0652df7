//! Waiters: the connection that `LISTEN`s for the fleet's changes (NOTIFY) and the wait on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{lock, Inner, PostgresStore, StoreKey};

/// While the listener is not connected, [`TokenStore::changed`] returns after at most this:
/// waiters poll rather than sleep through their whole wait.
const POLL_WITHOUT_LISTENER: Duration = Duration::from_millis(50);
/// Pause between two attempts of the listener to connect.
const LISTENER_RETRY: Duration = Duration::from_secs(1);

/// What the listening connection has heard: a count of notifications per store key, and for
/// each key read, the count and the connection (epoch) at the time of the read.
#[derive(Default)]
pub(super) struct Listener {
    state: Mutex<ListenState>,
    notify: Notify,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

#[derive(Default)]
struct ListenState {
    listening: bool,
    /// Counts the listening connections made: a read made before the current one may have
    /// missed a change while none was listening.
    epoch: u64,
    heard: HashMap<String, u64>,
    read_at: HashMap<String, (u64, u64)>,
}

impl Listener {
    /// Called before reading `key`'s entries: a change heard after this wakes a waiter.
    pub(super) fn read(&self, key: &str) {
        let mut state = lock(&self.state);
        let heard = state.heard.get(key).copied().unwrap_or(0);
        let epoch = state.epoch;
        state.read_at.insert(key.to_owned(), (epoch, heard));
    }

    /// Whether `key` may have changed since it was last read; `None` while not listening.
    fn changed_since_read(&self, key: &str) -> Option<bool> {
        let state = lock(&self.state);
        if !state.listening {
            return None;
        }
        let heard = state.heard.get(key).copied().unwrap_or(0);
        Some(
            state
                .read_at
                .get(key)
                .is_none_or(|read| *read != (state.epoch, heard)),
        )
    }

    fn heard(&self, key: &str) {
        let mut state = lock(&self.state);
        *state.heard.entry(key.to_owned()).or_default() += 1;
        drop(state);
        self.notify.notify_waiters();
    }

    fn set_listening(&self, listening: bool) {
        let mut state = lock(&self.state);
        state.listening = listening;
        if listening {
            state.epoch += 1;
        }
        drop(state);
        // Waiters re-check: polling while not listening, and after a reconnection anything
        // may have changed.
        self.notify.notify_waiters();
    }
}

/// Keeps one connection `LISTEN`ing, reconnecting after a pause when it fails.
async fn listen_forever(
    listener: Arc<Listener>,
    config: Config,
    tls: MakeRustlsConnect,
    limit: Duration,
    listen: String,
) {
    let limit = limit.max(Duration::from_secs(1));
    loop {
        if let Ok(Ok((client, mut connection))) =
            tokio::time::timeout(limit, config.connect(tls.clone())).await
        {
            // Drives the socket (the LISTEN below needs it), counting notifications.
            let heard = listener.clone();
            let mut driver = tokio::spawn(async move {
                while let Some(Ok(message)) =
                    std::future::poll_fn(|cx| connection.poll_message(cx)).await
                {
                    if let AsyncMessage::Notification(n) = message {
                        heard.heard(n.payload());
                    }
                }
            });
            let listening = tokio::time::timeout(limit, client.batch_execute(&listen)).await;
            if matches!(listening, Ok(Ok(()))) {
                listener.set_listening(true);
                // Until the connection ends (the server went away, or it was cut).
                let _ = (&mut driver).await;
                listener.set_listening(false);
            }
            driver.abort();
        }
        tokio::time::sleep(LISTENER_RETRY).await;
    }
}

impl PostgresStore {
    /// Starts the task that `LISTEN`s for the fleet's changes, once.
    pub(super) fn start_listener(&self) {
        let listener = &self.inner.listener;
        let mut task = lock(&listener.task);
        if task.is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (config, tls, limit) = (
            self.inner.config.clone(),
            self.inner.tls.clone(),
            self.inner.operation_timeout,
        );
        let listen = format!("LISTEN \"{}\"", self.inner.table.channel);
        let shared = listener.clone();
        *task = Some(
            runtime
                .spawn(listen_forever(shared, config, tls, limit, listen))
                .abort_handle(),
        );
    }

    /// Resolves when `key`'s entries may have changed since they were last read, or after
    /// `timeout`.
    pub(super) async fn wait_changed(&self, key: &StoreKey, timeout: Duration) {
        self.start_listener();
        let listener = &self.inner.listener;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = listener.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait_until = match listener.changed_since_read(key.as_str()) {
                Some(true) => return,
                Some(false) => deadline,
                None => deadline.min(tokio::time::Instant::now() + POLL_WITHOUT_LISTENER),
            };
            if tokio::time::timeout_at(wait_until, notified).await.is_err() {
                return;
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.listener.task).take() {
            task.abort();
        }
    }
}
