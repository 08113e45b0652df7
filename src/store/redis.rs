//! [`RedisStore`]: the [`TokenStore`] on Redis, a Redis Cluster or behind Redis Sentinel (redis-rs).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::{ConnectionInfo, IntoConnectionInfo};
use tokio::sync::OnceCell;

use self::notify::Notifier;
use self::scripts::Scripts;
use self::sentinel::{Connection, Sentinel, Target};
use super::crypto::Cipher;
use super::{
    LeaseAttempt, Record, Slot, StoreKey, Stored, TokenStore, DEFAULT_LEASE_TTL,
    DEFAULT_OPERATION_TIMEOUT,
};
use crate::error::{BoxError, Error};
use crate::source::BoxFuture;

mod notify;
mod scripts;
mod sentinel;

/// A [`TokenStore`] on Redis (or a Redis Cluster, or anything that speaks its protocol, such as
/// Valkey): one token, one token request per expiry and one backoff for a whole fleet.
///
/// Built from a URL without touching the network; it connects on first use and reconnects by
/// itself (redis-rs' `ConnectionManager`, or its cluster client). `redis://` and `rediss://`
/// (TLS through rustls, checked against the system's root certificates) URLs work, with a user
/// name, password and database number in the URL as Redis documents them.
///
/// Behind Redis Sentinel, [`sentinel`](Self::sentinel) asks the Sentinels for the current
/// master and follows it through a failover.
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
        let infos = connection_infos(&urls)?;
        if infos.is_empty() {
            return Err(Error::config(
                "a Redis Cluster store needs the URL of at least one node",
            ));
        }
        // Checked now, so that a bad set of URLs fails here rather than on first use.
        cluster_client(infos.clone(), DEFAULT_OPERATION_TIMEOUT).map_err(|e| {
            Error::config(format!(
                "the Redis Cluster URLs are not usable ({}); check them",
                e.category()
            ))
        })?;
        let shown = urls.iter().map(|u| shown(u)).collect::<Vec<_>>().join(",");
        Ok(Self::with_target(Target::Cluster(infos), shown))
    }

    /// A store on the master that Redis Sentinel names `master_name`, given the URLs of one or
    /// more Sentinels (`redis://host:26379`). Parses the URLs; connects lazily, on first use.
    ///
    /// Each connection asks the Sentinels which node is the master and checks that the node
    /// agrees (`ROLE`); when that connection fails, or a demoted master refuses a write
    /// (`READONLY`), the next operation asks again, so a failover costs the operations made
    /// while it runs (each one falls back to fetching alone, like any store outage) and sharing
    /// resumes on the new master. The master is reached with the user name, password, database
    /// and TLS (`rediss://`) of the first Sentinel URL.
    ///
    /// ```
    /// use tower_client_credentials::store::RedisStore;
    ///
    /// let store = RedisStore::sentinel(
    ///     &["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3:26379"],
    ///     "tokens",
    /// )?; // no network yet
    /// assert!(format!("{store:?}").contains("tokens"));
    /// # Ok::<(), tower_client_credentials::Error>(())
    /// ```
    pub fn sentinel(sentinels: &[&str], master_name: &str) -> Result<Self, Error> {
        let infos = connection_infos(sentinels)?;
        if infos.is_empty() {
            return Err(Error::config(
                "a Redis Sentinel store needs the URL of at least one Sentinel",
            ));
        }
        if master_name.is_empty() {
            return Err(Error::config(
                "a Redis Sentinel store needs the master's name (`sentinel monitor <name> ...`)",
            ));
        }
        let sentinel = Sentinel::new(infos, master_name.to_owned()).map_err(|e| {
            Error::config(format!(
                "the Redis Sentinel URLs are not usable ({}); check them",
                e.category()
            ))
        })?;
        let shown = sentinels
            .iter()
            .map(|u| shown(u))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self::with_target(
            Target::Sentinel(sentinel),
            format!("{shown} (Sentinel, master `{master_name}`)"),
        ))
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

    /// Encrypts stored tokens and failures with AES-256-GCM under `key`, with the store key, the
    /// entry and its fingerprint as associated data. Every process of the fleet needs the same
    /// key; a value that does not decrypt (another key, tampered, moved to another entry or
    /// behind another fingerprint, written unencrypted) is ignored, as if absent.
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
                        Target::Sentinel(s) => Target::Sentinel(
                            Sentinel::new(s.sentinels.clone(), s.master_name.clone())
                                .expect("these URLs built a Sentinel client before"),
                        ),
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
        if let Target::Sentinel(sentinel) = &inner.target {
            return sentinel
                .connection(inner.operation_timeout)
                .await
                .map(Connection::Sentinel)
                .map_err(|e| self.failed(e));
        }
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
                    Target::Cluster(nodes) => {
                        cluster_client(nodes.clone(), inner.operation_timeout)?
                            .get_async_connection()
                            .await
                            .map(Connection::Cluster)
                    }
                    Target::Sentinel(_) => unreachable!("connected above"),
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
    /// its own (behind Sentinel, on the current master), and kept; making it is bounded by one
    /// operation limit and comes before the wait (so the first wait for a key may last that
    /// much longer: cutting the subscription short instead would make a slow link start it
    /// again at every short wait). While it cannot be made (or on a Cluster, whose pub/sub this
    /// store does not use), this polls: it sleeps `timeout`.
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

fn connection_infos<T: AsRef<str>>(urls: &[T]) -> Result<Vec<ConnectionInfo>, Error> {
    urls.iter()
        .map(|url| {
            let url = url.as_ref();
            url.into_connection_info().map_err(|e| bad_url(url, e))
        })
        .collect()
}

/// A cluster client whose connections and answers are bounded by the store's operation timeout.
fn cluster_client(
    nodes: Vec<ConnectionInfo>,
    timeout: Duration,
) -> redis::RedisResult<ClusterClient> {
    ClusterClient::builder(nodes)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(1)
        .build()
}

fn bad_url(url: &str, error: redis::RedisError) -> Error {
    Error::config(format!(
        "`{}` is not a usable Redis URL ({}); expected redis://[[user]:password@]host[:port][/db] \
         or rediss://...",
        shown(url),
        error.category()
    ))
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("servers", &self.inner.shown)
            .field("cluster", &matches!(self.inner.target, Target::Cluster(_)))
            .field(
                "sentinel",
                &matches!(self.inner.target, Target::Sentinel(_)),
            )
            .field("encrypted", &self.inner.cipher.is_some())
            .field("lease_ttl", &self.inner.lease_ttl)
            .field("operation_timeout", &self.inner.operation_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests;
