//! Pub/sub wake-ups of the Redis store: one subscription connection, and who waits where.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Notify;

use super::sentinel::Target;
use super::RedisStore;

impl RedisStore {
    /// Makes sure `channel` is subscribed to; `false` when it cannot be (no pub/sub here, or
    /// Redis does not answer), in which case the caller polls.
    pub(super) async fn subscribe(&self, channel: &str) -> bool {
        if matches!(self.inner.target, Target::Cluster(_)) {
            return false;
        }
        let limit = self.inner.operation_timeout;
        let mut subscriber = self.inner.notifier.subscriber.lock().await;
        if subscriber.as_ref().is_some_and(|s| !s.alive()) {
            *subscriber = None;
        }
        if subscriber.is_none() {
            let connected = tokio::time::timeout(limit, async {
                match &self.inner.target {
                    Target::Single(client) => client.get_async_pubsub().await,
                    // The master the Sentinels name now; after a failover the old master's
                    // subscription ends, and the next wait subscribes on the new one.
                    Target::Sentinel(sentinel) => sentinel.master().await?.get_async_pubsub().await,
                    Target::Cluster(_) => unreachable!("returned above"),
                }
            })
            .await;
            match connected {
                Ok(Ok(pubsub)) => {
                    *subscriber = Some(Subscriber::start(pubsub, &self.inner.notifier.waiters));
                }
                Ok(Err(error)) => {
                    tracing::debug!(error = %self.failed(error), "no pub/sub connection; waiting by polling");
                    return false;
                }
                Err(_) => return false,
            }
        }
        let Some(subscriber) = subscriber.as_mut() else {
            return false;
        };
        if subscriber.channels.contains(channel) {
            return true;
        }
        match tokio::time::timeout(limit, subscriber.sink.subscribe(channel)).await {
            Ok(Ok(())) => {
                subscriber.channels.insert(channel.to_owned());
                true
            }
            _ => false,
        }
    }
}

/// One pub/sub connection per store, shared by its waiters, and who waits on which channel.
#[derive(Default)]
pub(super) struct Notifier {
    subscriber: tokio::sync::Mutex<Option<Subscriber>>,
    waiters: Arc<std::sync::Mutex<HashMap<String, Arc<Notify>>>>,
}

impl Notifier {
    pub(super) fn waiter(&self, channel: &str) -> Arc<Notify> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        waiters.entry(channel.to_owned()).or_default().clone()
    }
}

/// The subscription connection: its sink (to subscribe to more channels) and the task that
/// wakes waiters on each message. Dropped with the store; a connection that broke is replaced
/// at the next wait (its channels subscribed to again).
struct Subscriber {
    sink: redis::aio::PubSubSink,
    channels: HashSet<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    fn start(
        pubsub: redis::aio::PubSub,
        waiters: &Arc<std::sync::Mutex<HashMap<String, Arc<Notify>>>>,
    ) -> Self {
        let (sink, mut stream) = pubsub.split();
        let waiters = Arc::downgrade(waiters);
        let task = tokio::spawn(async move {
            use futures_core::Stream;
            while let Some(message) =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut stream).poll_next(cx)).await
            {
                let Some(waiters) = waiters.upgrade() else {
                    return;
                };
                let notify = waiters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(message.get_channel_name())
                    .cloned();
                if let Some(notify) = notify {
                    notify.notify_waiters();
                }
            }
        });
        Subscriber {
            sink,
            channels: HashSet::new(),
            task,
        }
    }

    fn alive(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}
