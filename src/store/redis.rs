//! [`RedisStore`]: the [`TokenStore`] on Redis or a Redis Cluster (redis-rs).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use tokio::sync::{Notify, OnceCell};

use super::crypto::Cipher;
use super::{
    LeaseAttempt, Record, Slot, StoreKey, Stored, TokenStore, DEFAULT_LEASE_TTL,
    DEFAULT_OPERATION_TIMEOUT,
};
use crate::error::{BoxError, Error};
use crate::source::BoxFuture;

// Values are `<fingerprint>:<saved at, ms by the server's TIME>:<payload>`. The save time is
// the server's, and so is the "now" every read returns beside the values: a reader computes an
// entry's age from two readings of one clock, never from a replica's wall clock.
//
// Announcements (`PUBLISH`) are best effort (`pcall`): a user whose ACL has no channel
// permission still writes; its waiters poll.

/// Writes an entry stamped with the server's time, and announces it on the key's channel.
/// KEYS: the entry. ARGV: fingerprint, payload, time-to-live (ms), channel.
const SAVE: &str = r"
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. now .. ':' .. ARGV[2], 'PX', ARGV[3])
redis.pcall('PUBLISH', ARGV[4], 'saved')
return 1";

/// Both entries and the server's time. KEYS: token, failure.
const LOAD: &str = r"
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]), now}";

/// Takes the lease if free and reads both entries, atomically. KEYS: token, failure, lease.
/// ARGV: owner, time-to-live (ms).
const ACQUIRE_LEASE: &str = r"
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local taken = 0
if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then
  taken = 1
end
return {taken, redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]), now}";

/// Compare-and-delete on the fingerprint that starts the value, announced on the key's
/// channel. ARGV: `<fingerprint>:`, channel.
const REMOVE_IF: &str = r"
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.pcall('PUBLISH', ARGV[2], 'removed')
  return 1
end
return 0";

/// Redis' single-instance lock recipe: renew and release only by the owner.
const RENEW_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// ARGV: owner, channel.
const RELEASE_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.pcall('PUBLISH', ARGV[2], 'released')
  return 1
end
return 0";

/// A [`TokenStore`] on Redis (or a Redis Cluster, or anything that speaks its protocol, such as
/// Valkey): one token, one token request per expiry and one backoff for a whole fleet.
///
/// Built from a URL without touching the network; it connects on first use and reconnects by
/// itself (redis-rs' `ConnectionManager`, or its cluster client). `redis://` and `rediss://`
/// (TLS through rustls, checked against the system's root certificates) URLs work, with a user
/// name, password and database number in the URL as Redis documents them.
///
/// Every key of one credential set, `tcc:{<key>}:token`, `tcc:{<key>}:failure` and
/// `tcc:{<key>}:lease`, carries the same hash tag, so a Cluster keeps them in one slot (the lease
/// and compare-and-delete scripts need that). Every operation is one Lua script; those that
/// write stamp the value with the server's `TIME`, and those that read return the server's
/// `TIME` beside the values, so ages are measured by Redis' clock alone. Saves, removals and
/// releases are published on the channel `tcc:{<key>}:changed`, to which
/// [`changed`](TokenStore::changed) subscribes (one extra connection per store, made on the
/// first wait); on a Cluster, and while that connection cannot be made (or an ACL without the
/// channel permission `&tcc:*` refuses it), waiters poll. Redis 5 or later (scripts that call
/// `TIME` before writing).
///
/// **Tokens at rest are credentials**: whoever reads the store can use them until they expire.
/// Restrict access to Redis (ACLs, TLS) and set an [`encryption_key`](Self::encryption_key).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_client_credentials::store::RedisStore;
///
/// # fn main() -> Result<(), tower_client_credentials::Error> {
/// # let key = [7u8; 32];
/// let store = RedisStore::new("rediss://:s3cret@redis.internal:6380/0")? // no network yet
///     .encryption_key(key)
///     .lease_ttl(Duration::from_secs(10))
///     .operation_timeout(Duration::from_millis(200));
/// assert!(!format!("{store:?}").contains("s3cret"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    connection: OnceCell<Connection>,
    cipher: Option<Cipher>,
    lease_ttl: Duration,
    operation_timeout: Duration,
    scripts: Scripts,
    /// Wakes this process's waiters when another process writes (see `TokenStore::changed`).
    notifier: Notifier,
    /// For `Debug` and errors: host and port only, never a password.
    shown: String,
}

/// The Lua scripts (each loaded by hash, sent in full once per server).
#[derive(Clone)]
struct Scripts {
    save: Script,
    load: Script,
    acquire_lease: Script,
    remove_if: Script,
    renew_lease: Script,
    release_lease: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            save: Script::new(SAVE),
            load: Script::new(LOAD),
            acquire_lease: Script::new(ACQUIRE_LEASE),
            remove_if: Script::new(REMOVE_IF),
            renew_lease: Script::new(RENEW_LEASE),
            release_lease: Script::new(RELEASE_LEASE),
        }
    }
}

// One per store, inside its `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Target {
    Single(redis::Client),
    Cluster(ClusterClient),
}

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisStore {
    /// A store on the Redis server at `url` (`redis://[[user]:password@]host[:port][/db]`, or
    /// `rediss://` for TLS). Parses the URL; connects lazily, on first use.
    ///
    /// Fails only on a URL that is not a Redis URL; the error never shows the password.
    pub fn new(url: &str) -> Result<Self, Error> {
        let client = redis::Client::open(url).map_err(|e| bad_url(url, e))?;
        Ok(Self::with_target(Target::Single(client), shown(url)))
    }

    /// A store on a Redis Cluster, given the URLs of one or more of its nodes (the others are
    /// discovered). Parses the URLs; connects lazily.
    ///
    /// ```
    /// use tower_client_credentials::store::RedisStore;
    ///
    /// let store = RedisStore::cluster(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])?;
    /// # Ok::<(), tower_client_credentials::Error>(())
    /// ```
    pub fn cluster<I, T>(urls: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let urls: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        let mut infos = Vec::with_capacity(urls.len());
        for url in &urls {
            use redis::IntoConnectionInfo;
            infos.push(
                url.as_str()
                    .into_connection_info()
                    .map_err(|e| bad_url(url, e))?,
            );
        }
        if infos.is_empty() {
            return Err(Error::config(
                "a Redis Cluster store needs the URL of at least one node",
            ));
        }
        let client = ClusterClient::builder(infos)
            .connection_timeout(DEFAULT_OPERATION_TIMEOUT)
            .response_timeout(DEFAULT_OPERATION_TIMEOUT)
            .retries(1)
            .build()
            .map_err(|e| {
                Error::config(format!(
                    "the Redis Cluster URLs are not usable ({}); check them",
                    e.category()
                ))
            })?;
        let shown = urls.iter().map(|u| shown(u)).collect::<Vec<_>>().join(",");
        Ok(Self::with_target(Target::Cluster(client), shown))
    }

    fn with_target(target: Target, shown: String) -> Self {
        RedisStore {
            inner: Arc::new(Inner {
                target,
                connection: OnceCell::new(),
                cipher: None,
                lease_ttl: DEFAULT_LEASE_TTL,
                operation_timeout: DEFAULT_OPERATION_TIMEOUT,
                scripts: Scripts::new(),
                notifier: Notifier::default(),
                shown,
            }),
        }
    }

    /// Encrypts stored tokens with AES-256-GCM under `key`, with the entry's Redis key name as
    /// associated data. Every process of the fleet needs the same key; a value that does not
    /// decrypt (another key, tampered, written unencrypted) is ignored, as if absent.
    pub fn encryption_key(self, key: [u8; 32]) -> Self {
        self.configure(|inner| inner.cipher = Some(Cipher::new(key)))
    }

    /// How long the lease of the process fetching a token lasts unless renewed; a holder that
    /// dies is replaced after this. Default 10 s; at least 100 ms.
    pub fn lease_ttl(self, ttl: Duration) -> Self {
        self.configure(|inner| inner.lease_ttl = ttl.max(Duration::from_millis(100)))
    }

    /// Time limit of every Redis operation (and of connecting); past it the cache fetches on
    /// its own. Default 250 ms; at least 1 ms.
    pub fn operation_timeout(self, timeout: Duration) -> Self {
        self.configure(|inner| inner.operation_timeout = timeout.max(Duration::from_millis(1)))
    }

    /// Settings apply to a store not yet shared (the builder methods are called before
    /// `TokenCacheBuilder::store`); on a clone already shared they are made on a copy.
    fn configure(mut self, change: impl FnOnce(&mut Inner)) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => change(inner),
            None => {
                let mut copy = Inner {
                    target: match &self.inner.target {
                        Target::Single(c) => Target::Single(c.clone()),
                        Target::Cluster(c) => Target::Cluster(c.clone()),
                    },
                    connection: OnceCell::new(),
                    cipher: self.inner.cipher.clone(),
                    lease_ttl: self.inner.lease_ttl,
                    operation_timeout: self.inner.operation_timeout,
                    scripts: self.inner.scripts.clone(),
                    notifier: Notifier::default(),
                    shown: self.inner.shown.clone(),
                };
                change(&mut copy);
                self.inner = Arc::new(copy);
            }
        }
        self
    }

    async fn connection(&self) -> Result<Connection, BoxError> {
        let inner = &self.inner;
        let connection = inner
            .connection
            .get_or_try_init(|| async {
                match &inner.target {
                    Target::Single(client) => {
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(inner.operation_timeout))
                            .set_response_timeout(Some(inner.operation_timeout))
                            .set_number_of_retries(2)
                            .set_min_delay(Duration::from_millis(50))
                            .set_max_delay(Duration::from_secs(1));
                        ConnectionManager::new_lazy_with_config(client.clone(), config)
                            .map(Connection::Single)
                    }
                    Target::Cluster(client) => {
                        client.get_async_connection().await.map(Connection::Cluster)
                    }
                }
            })
            .await
            .map_err(|e| self.failed(e))?;
        Ok(connection.clone())
    }

    fn failed(&self, error: redis::RedisError) -> BoxError {
        // redis-rs errors name the failure, not the URL's password; the host is ours to add.
        format!("Redis at {}: {error}", self.inner.shown).into()
    }

    fn name(&self, key: &StoreKey, slot: &str) -> String {
        format!("tcc:{{{}}}:{slot}", key.as_str())
    }

    /// The pub/sub channel on which every write of `key`'s entries is announced.
    fn channel(&self, key: &StoreKey) -> String {
        self.name(key, "changed")
    }

    /// The payload as stored: sealed for `key`'s `slot` and the record's fingerprint when a
    /// key is configured. `None` only if the system's random source fails.
    fn seal(&self, key: &StoreKey, slot: Slot, record: &Record) -> Option<Vec<u8>> {
        match &self.inner.cipher {
            Some(cipher) => cipher.seal_record(key, slot, record),
            None => Some(record.payload().to_vec()),
        }
    }

    /// The record in a stored value (`<fingerprint>:<saved ms>:<payload>`), aged by the
    /// server's `now_ms`; `None` for anything else (a value an older version wrote, one that
    /// does not decrypt with the configured key, or under its fingerprint).
    fn record(
        &self,
        key: &StoreKey,
        slot: Slot,
        value: Option<Vec<u8>>,
        now_ms: u64,
    ) -> Option<Record> {
        let value = value?;
        let mut parts = value.splitn(3, |b| *b == b':');
        let (fingerprint, saved, payload) = (parts.next()?, parts.next()?, parts.next()?);
        let fingerprint = std::str::from_utf8(fingerprint).ok()?.to_owned();
        let saved: u64 = std::str::from_utf8(saved).ok()?.parse().ok()?;
        let payload = match &self.inner.cipher {
            Some(cipher) => match cipher.open_record(key, slot, &fingerprint, payload) {
                Some(plain) => plain,
                None => {
                    tracing::debug!(
                        slot = slot_name(slot),
                        "ignoring a stored value that does not decrypt with the configured key \
                         under its fingerprint"
                    );
                    return None;
                }
            },
            None => payload.to_vec(),
        };
        let age = Duration::from_millis(now_ms.saturating_sub(saved));
        Some(Record::new(fingerprint, payload).with_age(age))
    }
}

fn slot_name(slot: Slot) -> &'static str {
    match slot {
        Slot::Token => "token",
        Slot::Failure => "failure",
    }
}

fn parse_now(now: &str) -> Result<u64, BoxError> {
    now.parse().map_err(|_| {
        "Redis answered a script with an unexpected time; is it Redis 5 or later?".into()
    })
}

impl TokenStore for RedisStore {
    fn load<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Stored, BoxError>> {
        Box::pin(async move {
            let mut connection = self.connection().await?;
            let (token, failure, now): (Option<Vec<u8>>, Option<Vec<u8>>, String) = self
                .inner
                .scripts
                .load
                .key(self.name(key, "token"))
                .key(self.name(key, "failure"))
                .invoke_async(&mut connection)
                .await
                .map_err(|e| self.failed(e))?;
            let now = parse_now(&now)?;
            Ok(Stored::new(
                self.record(key, Slot::Token, token, now),
                self.record(key, Slot::Failure, failure, now),
            ))
        })
    }

    fn save<'a>(
        &'a self,
        key: &'a StoreKey,
        slot: Slot,
        record: Record,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let payload = self
                .seal(key, slot, &record)
                .ok_or("the system's random source failed; nothing stored")?;
            let mut connection = self.connection().await?;
            self.inner
                .scripts
                .save
                .key(self.name(key, slot_name(slot)))
                .arg(record.fingerprint())
                .arg(payload)
                .arg(millis(ttl))
                .arg(self.channel(key))
                .invoke_async::<i64>(&mut connection)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(())
        })
    }

    fn remove_if<'a>(
        &'a self,
        key: &'a StoreKey,
        slot: Slot,
        fingerprint: &'a str,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        Box::pin(async move {
            let mut connection = self.connection().await?;
            let removed: i64 = self
                .inner
                .scripts
                .remove_if
                .key(self.name(key, slot_name(slot)))
                .arg(format!("{fingerprint}:"))
                .arg(self.channel(key))
                .invoke_async(&mut connection)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(removed == 1)
        })
    }

    fn acquire_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<LeaseAttempt, BoxError>> {
        Box::pin(async move {
            let mut connection = self.connection().await?;
            let (taken, token, failure, now): (i64, Option<Vec<u8>>, Option<Vec<u8>>, String) =
                self.inner
                    .scripts
                    .acquire_lease
                    .key(self.name(key, "token"))
                    .key(self.name(key, "failure"))
                    .key(self.name(key, "lease"))
                    .arg(owner)
                    .arg(millis(ttl))
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|e| self.failed(e))?;
            let now = parse_now(&now)?;
            Ok(LeaseAttempt::new(
                taken == 1,
                Stored::new(
                    self.record(key, Slot::Token, token, now),
                    self.record(key, Slot::Failure, failure, now),
                ),
            ))
        })
    }

    fn renew_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        Box::pin(async move {
            let mut connection = self.connection().await?;
            let renewed: i64 = self
                .inner
                .scripts
                .renew_lease
                .key(self.name(key, "lease"))
                .arg(owner)
                .arg(millis(ttl))
                .invoke_async(&mut connection)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(renewed == 1)
        })
    }

    fn release_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let mut connection = self.connection().await?;
            self.inner
                .scripts
                .release_lease
                .key(self.name(key, "lease"))
                .arg(owner)
                .arg(self.channel(key))
                .invoke_async::<i64>(&mut connection)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(())
        })
    }

    /// Waits for a message on the key's channel (a save, a compare-and-delete or a release by
    /// any process), or `timeout`. The subscription is made once per key, on a connection of
    /// its own, and kept; making it is bounded by one operation limit and comes before the
    /// wait (so the first wait for a key may last that much longer: cutting the subscription
    /// short instead would make a slow link start it again at every short wait). While it
    /// cannot be made (or on a Cluster, whose pub/sub this store does not use), this polls: it
    /// sleeps `timeout`.
    fn changed<'a>(
        &'a self,
        key: &'a StoreKey,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let channel = self.channel(key);
            let notify = self.inner.notifier.waiter(&channel);
            let notified = notify.notified();
            tokio::pin!(notified);
            // Registered before subscribing: a message that arrives meanwhile is not missed.
            notified.as_mut().enable();
            let limit = self.inner.operation_timeout;
            let subscribed = tokio::time::timeout(limit, self.subscribe(&channel)).await;
            if subscribed == Ok(true) {
                let _ = tokio::time::timeout(timeout, notified).await;
            } else {
                tokio::time::sleep(timeout).await;
            }
            Ok(())
        })
    }

    fn lease_ttl(&self) -> Duration {
        self.inner.lease_ttl
    }

    fn operation_timeout(&self) -> Duration {
        self.inner.operation_timeout
    }
}

impl RedisStore {
    /// Makes sure `channel` is subscribed to; `false` when it cannot be (no pub/sub here, or
    /// Redis does not answer), in which case the caller polls.
    async fn subscribe(&self, channel: &str) -> bool {
        let Target::Single(client) = &self.inner.target else {
            return false;
        };
        let limit = self.inner.operation_timeout;
        let mut subscriber = self.inner.notifier.subscriber.lock().await;
        if subscriber.as_ref().is_some_and(|s| !s.alive()) {
            *subscriber = None;
        }
        if subscriber.is_none() {
            let connected = tokio::time::timeout(limit, client.get_async_pubsub()).await;
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
struct Notifier {
    subscriber: tokio::sync::Mutex<Option<Subscriber>>,
    waiters: Arc<std::sync::Mutex<HashMap<String, Arc<Notify>>>>,
}

impl Notifier {
    fn waiter(&self, channel: &str) -> Arc<Notify> {
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

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// `scheme://host:port` of a URL, for messages: never the user name or password.
fn shown(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}")
}

fn bad_url(url: &str, error: redis::RedisError) -> Error {
    Error::config(format!(
        "`{}` is not a usable Redis URL ({}); expected redis://[[user]:password@]host[:port][/db] \
         or rediss://...",
        shown(url),
        error.category()
    ))
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("servers", &self.inner.shown)
            .field("cluster", &matches!(self.inner.target, Target::Cluster(_)))
            .field("encrypted", &self.inner.cipher.is_some())
            .field("lease_ttl", &self.inner.lease_ttl)
            .field("operation_timeout", &self.inner.operation_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_without_network_and_never_show_the_password() {
        for url in [
            "redis://127.0.0.1:1",
            "redis://:hunter2@10.255.255.1:6379/3",
            "redis://user:hunter2@redis.invalid",
            "rediss://:hunter2@redis.invalid:6380",
        ] {
            let store = RedisStore::new(url).unwrap();
            assert!(!format!("{store:?}").contains("hunter2"), "{store:?}");
        }
        let err = RedisStore::new("http://:hunter2@example").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let cluster =
            RedisStore::cluster(["redis://:hunter2@10.0.0.1", "redis://:hunter2@10.0.0.2"])
                .unwrap();
        assert!(!format!("{cluster:?}").contains("hunter2"));
        assert!(RedisStore::cluster(Vec::<String>::new()).is_err());
    }

    #[test]
    fn keys_of_one_credential_set_share_a_hash_slot() {
        let store = RedisStore::new("redis://127.0.0.1").unwrap();
        let key = StoreKey::builder("https://idp.example/token", "c").build();
        let tag = format!("{{{}}}", key.as_str());
        for slot in ["token", "failure", "lease"] {
            let name = store.name(&key, slot);
            assert!(name.contains(&tag), "{name}");
            // The hash tag is the first `{...}` of the name: nothing before it has a brace.
            assert!(!name[..name.find('{').unwrap()].contains('}'));
        }
    }

    /// Issue 20 defect 8: the fingerprint is inside the AEAD, so an old ciphertext put behind
    /// a new fingerprint does not decrypt; and ages come from the server's clock.
    #[test]
    fn values_are_sealed_with_their_key_slot_and_fingerprint() {
        let store = RedisStore::new("redis://127.0.0.1")
            .unwrap()
            .encryption_key([3; 32]);
        let key = StoreKey::builder("https://idp.example/token", "c").build();
        let other = StoreKey::builder("https://idp.example/token", "d").build();
        let record = Record::new("fp", b"the token".to_vec());
        let sealed = store.seal(&key, Slot::Token, &record).unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"the token"));
        let stored = |fingerprint: &str, saved: u64, payload: &[u8]| {
            let mut value = format!("{fingerprint}:{saved}:").into_bytes();
            value.extend_from_slice(payload);
            Some(value)
        };
        let back = store
            .record(&key, Slot::Token, stored("fp", 1_000, &sealed), 3_500)
            .unwrap();
        assert_eq!(back.payload(), b"the token");
        assert_eq!(back.fingerprint(), "fp");
        assert_eq!(back.age(), Some(Duration::from_millis(2_500)));
        for (k, slot, fingerprint) in [
            (&other, Slot::Token, "fp"),
            (&key, Slot::Failure, "fp"),
            (&key, Slot::Token, "fp2"),
        ] {
            assert!(store
                .record(k, slot, stored(fingerprint, 1_000, &sealed), 3_500)
                .is_none());
        }
        let plain = RedisStore::new("redis://127.0.0.1").unwrap();
        let unsealed = plain.seal(&key, Slot::Token, &record).unwrap();
        assert!(store
            .record(&key, Slot::Token, stored("fp", 1, &unsealed), 2)
            .is_none());
        // A value written by an older version (`<fingerprint>:<payload>`) is ignored.
        assert!(plain
            .record(&key, Slot::Token, Some(b"fp:{\"v\":1}".to_vec()), 2)
            .is_none());
        // A save time ahead of "now" (a failover to a server whose clock is behind) is age 0.
        let young = plain
            .record(&key, Slot::Token, stored("fp", 9_000, b"x"), 2)
            .unwrap();
        assert_eq!(young.age(), Some(Duration::ZERO));
    }
}
