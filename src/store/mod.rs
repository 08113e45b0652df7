//! A second cache level shared by processes: one token, one token request per expiry and one
//! backoff for a whole fleet of replicas (cargo feature `store`; [`RedisStore`] with `redis`).
//!
//! The in-process [`TokenCache`](crate::TokenCache) stays the first level: the per-request hot
//! path never touches the store, and neither does a request while a valid token is cached. Only
//! when the cache needs a token (cold start, its refresh point, expiry, invalidation) does it go
//! through the store:
//!
//! 1. **Read.** A stored token worth adopting (judged by this cache's own lifetime policy:
//!    `max_lifetime`, `default_lifetime`, the refresh margin), bound as this cache's tokens are
//!    (the same DPoP key and client certificate), other than the one being replaced, is used:
//!    no token request. A stored failure that is still backing off is returned as this
//!    process's error (same [`ErrorKind`](crate::ErrorKind), OAuth2 error and a
//!    [`retry_after`](crate::Error::retry_after) up to the end of the fleet's backoff), so the
//!    whole fleet backs off as one.
//! 2. **Lease.** Otherwise the process tries to take the lease (an owner id of its own), reading
//!    both entries again in the same atomic step ([`TokenStore::acquire_lease`]): what another
//!    process wrote meanwhile wins. The holder requests the token, writes it with its lifetime
//!    and a time-to-live that ends at its refresh point (or writes the failure, with the fleet's
//!    backoff), and releases the lease by compare-and-delete. While the request runs it renews
//!    the lease by compare-and-set; a holder that dies is replaced once its lease expires.
//! 3. **Wait.** The others wait for the store to announce a change ([`TokenStore::changed`]),
//!    reading again at least every 200 ms, until the token or failure appears or the lease is
//!    free again, bounded by half the cache's
//!    [`refresh_timeout`](crate::TokenCacheBuilder::refresh_timeout); past that they fetch on
//!    their own.
//!
//! Nothing stored is a wall-clock time: records hold durations, and a store reports each
//! record's age by its own clock ([`Record::age`]), so replicas whose clocks disagree agree on a
//! token's life and on the fleet's backoff.
//!
//! A 401 from the API ([`TokenCache::invalidate`](crate::TokenCache::invalidate)) removes the
//! stored token only if it is the one that was rejected (compare-and-delete on its fingerprint).
//!
//! **The store is an optimisation, never a dependency.** Every store operation has a short
//! time limit ([`TokenStore::operation_timeout`]); when one fails or times out the cache fetches
//! on its own, logs one warning for the outage (not one per request), leaves the store alone for
//! a couple of seconds, and shares again once the store answers.
//!
//! **Tokens at rest are credentials.** Anyone who can read the store can call the API as this
//! client until the token expires. Restrict access to the store, and use
//! [`RedisStore::encryption_key`] (AES-256-GCM) where it is shared with anything else.
//!
//! # Example
//!
//! ```no_run
//! # #[cfg(feature = "redis")] {
//! use std::time::Duration;
//! use tower_client_credentials::store::RedisStore;
//! use tower_client_credentials::{BearerAuthLayer, ClientCredentials, TokenCache};
//!
//! # fn main() -> Result<(), tower_client_credentials::Error> {
//! # let key = [0u8; 32];
//! let credentials = ClientCredentials::builder()
//!     .token_endpoint("https://idp.example/oauth2/v1/token")?
//!     .client_id("my-client")
//!     .client_secret("my-secret")
//!     .build()?;
//! let store = RedisStore::new("rediss://:password@redis.internal:6380")? // connects lazily
//!     .encryption_key(key) // AES-256-GCM at rest
//!     .lease_ttl(Duration::from_secs(10));
//! let cache = TokenCache::builder(credentials).store(store).build();
//! let layer = BearerAuthLayer::from_cache(cache).with_header("x-api-key", "api-key")?;
//! # let _ = layer; Ok(()) }
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::BoxError;
use crate::source::BoxFuture;

mod coordinator;
// Shared by the stores of the crate (a store of your own encrypts as it likes).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) mod crypto;
mod record;
#[cfg(feature = "redis")]
mod redis;

pub(crate) use self::coordinator::{Coordinator, FleetBackoff};
#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
pub use crate::source::store_key::{StoreKey, StoreKeyBuilder};

/// How long a lease lasts unless renewed (see [`TokenStore::lease_ttl`]).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Time limit of one store operation (see [`TokenStore::operation_timeout`]).
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_millis(250);

/// After a failed store operation, the store is left alone this long (fetching alone), so that
/// an outage costs one timeout per interval, not one per refresh.
const OUTAGE_PAUSE: Duration = Duration::from_secs(2);

/// Which of a credential set's two entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Slot {
    /// The current token.
    Token,
    /// The failure the fleet is backing off from.
    Failure,
}

/// One stored entry: a fingerprint that identifies it (for compare-and-delete), an opaque
/// payload (the serialised token or failure, which a store may encrypt) and, on records a store
/// returns, its age by the store's own clock.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_client_credentials::store::Record;
///
/// let record = Record::new("3f2a…", b"{...}".to_vec());
/// assert_eq!(record.fingerprint(), "3f2a…");
/// assert_eq!(record.age(), None);
/// assert!(!format!("{record:?}").contains("{...}"));
/// // What a store's `load` returns: the same record, saved 1.5 s ago by the store's clock.
/// let loaded = record.with_age(Duration::from_millis(1500));
/// assert_eq!(loaded.age(), Some(Duration::from_millis(1500)));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    fingerprint: String,
    payload: Vec<u8>,
    age: Option<Duration>,
}

impl Record {
    /// A record. The fingerprint never contains the token; the payload does (in clear unless
    /// the store encrypts it).
    pub fn new(fingerprint: impl Into<String>, payload: Vec<u8>) -> Self {
        Record {
            fingerprint: fingerprint.into(),
            payload,
            age: None,
        }
    }

    /// The record as read back: saved `age` ago, measured by the store's own clock (Redis
    /// `TIME` at save and at load, a database's `now() - saved_at`), never by a writer's wall
    /// clock. [`TokenStore::load`] and [`TokenStore::acquire_lease`] set it on every record
    /// they return; the payload's durations (a token's remaining lifetime, a backoff) count
    /// from the save, so a reader subtracts this age from them.
    pub fn with_age(mut self, age: Duration) -> Self {
        self.age = Some(age);
        self
    }

    /// How long ago the store saved this entry, by the store's clock; `None` on a record not
    /// read from a store. A record a store returns without an age cannot be judged (how much
    /// of its life is left is unknown): the cache ignores it, adopting no token from it and
    /// obeying no failure in it.
    pub fn age(&self) -> Option<Duration> {
        self.age
    }

    /// Identifies the entry without revealing it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The serialised entry. Holds a credential: never log it.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Takes the payload out.
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("fingerprint", &self.fingerprint)
            .field(
                "payload",
                &format_args!("[{} bytes, redacted]", self.payload.len()),
            )
            .field("age", &self.age)
            .finish()
    }
}

/// Both entries of a credential set, as read in one operation.
///
/// # Example
///
/// ```
/// use tower_client_credentials::store::Stored;
///
/// let nothing = Stored::default();
/// assert!(nothing.token.is_none() && nothing.failure.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stored {
    /// The [`Slot::Token`] entry.
    pub token: Option<Record>,
    /// The [`Slot::Failure`] entry.
    pub failure: Option<Record>,
}

impl Stored {
    /// Both entries.
    pub fn new(token: Option<Record>, failure: Option<Record>) -> Self {
        Stored { token, failure }
    }
}

/// What an attempt to take the lease found: whether it was taken, and both entries, read in the
/// same atomic step (so that a token or failure written just before cannot be missed).
///
/// The cache uses the entries first: a usable token or a failure still backing off wins, and a
/// lease taken anyway is released at once.
///
/// # Example
///
/// ```
/// use tower_client_credentials::store::{LeaseAttempt, Stored};
///
/// let attempt = LeaseAttempt::new(true, Stored::default());
/// assert!(attempt.acquired && attempt.stored.token.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseAttempt {
    /// Whether the lease was taken (it was free).
    pub acquired: bool,
    /// Both entries, with their ages, as they were when the lease was (or was not) taken.
    pub stored: Stored,
}

impl LeaseAttempt {
    /// What one attempt found.
    pub fn new(acquired: bool, stored: Stored) -> Self {
        LeaseAttempt { acquired, stored }
    }
}

/// A store shared by the processes of a fleet: what
/// [`TokenCacheBuilder::store`](crate::TokenCacheBuilder::store) needs to share one token and
/// one backoff between them.
///
/// [`RedisStore`] (feature `redis`) is the implementation for Redis. Implement it for another
/// shared store (a SQL table, etcd, ...): six small operations on a credential set's
/// [`StoreKey`], each of which must be atomic, and optionally [`changed`](Self::changed) to
/// wake waiters. The coordination (read first, lease, wait, fleet backoff, fallback when the
/// store fails) is the cache's, not the store's.
///
/// **Time is the store's.** Replicas' wall clocks disagree, so nothing stored is a wall-clock
/// instant: records carry durations counted from their save, and every record a store returns
/// carries its age measured by the store's own clock ([`Record::with_age`]). Entries expire by
/// themselves after the time-to-live given when they are written; a lease likewise. Errors are logged (once per outage) and make the cache fetch on its own: they must
/// not contain secrets.
///
/// # Example
///
/// An in-memory store, for one process (a test double). Its clock is the process's monotonic
/// clock; entries carry the instant they were saved, from which `load` gives their age:
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::Duration;
/// use tokio::time::Instant;
/// use tower_client_credentials::store::{LeaseAttempt, Record, Slot, StoreKey, Stored, TokenStore};
/// use tower_client_credentials::{BoxError, BoxFuture};
///
/// /// (key, entry) -> (record, saved at, expires at)
/// #[derive(Debug, Default)]
/// struct InMemory(Mutex<HashMap<(String, &'static str), (Record, Instant, Instant)>>);
///
/// fn slot_name(slot: Slot) -> &'static str {
///     if slot == Slot::Token { "token" } else { "failure" }
/// }
///
/// type Entries = HashMap<(String, &'static str), (Record, Instant, Instant)>;
///
/// fn get(map: &Entries, key: &StoreKey, name: &'static str) -> Option<Record> {
///     let (record, saved, until) = map.get(&(key.to_string(), name))?;
///     let now = Instant::now();
///     (now < *until).then(|| record.clone().with_age(now - *saved))
/// }
///
/// fn both(map: &Entries, key: &StoreKey) -> Stored {
///     Stored::new(get(map, key, "token"), get(map, key, "failure"))
/// }
///
/// impl TokenStore for InMemory {
///     fn load<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Stored, BoxError>> {
///         let stored = both(&self.0.lock().unwrap(), key);
///         Box::pin(async move { Ok(stored) })
///     }
///     fn save<'a>(&'a self, key: &'a StoreKey, slot: Slot, record: Record, ttl: Duration)
///         -> BoxFuture<'a, Result<(), BoxError>> {
///         let now = Instant::now();
///         let id = (key.to_string(), slot_name(slot));
///         self.0.lock().unwrap().insert(id, (record, now, now + ttl));
///         Box::pin(async { Ok(()) })
///     }
///     fn remove_if<'a>(&'a self, key: &'a StoreKey, slot: Slot, fingerprint: &'a str)
///         -> BoxFuture<'a, Result<bool, BoxError>> {
///         let mut map = self.0.lock().unwrap();
///         let matches = get(&map, key, slot_name(slot))
///             .is_some_and(|r| r.fingerprint() == fingerprint);
///         if matches { map.remove(&(key.to_string(), slot_name(slot))); }
///         Box::pin(async move { Ok(matches) })
///     }
///     // One critical section: both entries are read and the lease taken atomically.
///     fn acquire_lease<'a>(&'a self, key: &'a StoreKey, owner: &'a str, ttl: Duration)
///         -> BoxFuture<'a, Result<LeaseAttempt, BoxError>> {
///         let mut map = self.0.lock().unwrap();
///         let stored = both(&map, key);
///         let free = get(&map, key, "lease").is_none();
///         if free {
///             let now = Instant::now();
///             let lease = (Record::new(owner, Vec::new()), now, now + ttl);
///             map.insert((key.to_string(), "lease"), lease);
///         }
///         Box::pin(async move { Ok(LeaseAttempt::new(free, stored)) })
///     }
///     fn renew_lease<'a>(&'a self, key: &'a StoreKey, owner: &'a str, ttl: Duration)
///         -> BoxFuture<'a, Result<bool, BoxError>> {
///         let mut map = self.0.lock().unwrap();
///         let now = Instant::now();
///         let held = match map.get_mut(&(key.to_string(), "lease")) {
///             Some((lease, _, until)) if lease.fingerprint() == owner && now < *until => {
///                 *until = now + ttl;
///                 true
///             }
///             _ => false,
///         };
///         Box::pin(async move { Ok(held) })
///     }
///     fn release_lease<'a>(&'a self, key: &'a StoreKey, owner: &'a str)
///         -> BoxFuture<'a, Result<(), BoxError>> {
///         let mut map = self.0.lock().unwrap();
///         let id = (key.to_string(), "lease");
///         if map.get(&id).is_some_and(|(lease, _, _)| lease.fingerprint() == owner) {
///             map.remove(&id);
///         }
///         Box::pin(async { Ok(()) })
///     }
///     // `changed` keeps its default: waiters poll.
/// }
/// ```
pub trait TokenStore: fmt::Debug + Send + Sync + 'static {
    /// Reads both entries of `key` (one round trip where the store allows). Expired entries
    /// are absent.
    fn load<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Stored, BoxError>>;

    /// Writes an entry, replacing any, to expire after `ttl`.
    fn save<'a>(
        &'a self,
        key: &'a StoreKey,
        slot: Slot,
        record: Record,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Removes the entry only if its fingerprint is `fingerprint` (atomically: compare and
    /// delete). Returns whether it did.
    fn remove_if<'a>(
        &'a self,
        key: &'a StoreKey,
        slot: Slot,
        fingerprint: &'a str,
    ) -> BoxFuture<'a, Result<bool, BoxError>>;

    /// In one atomic step: reads both entries of `key` (with their ages, as
    /// [`load`](Self::load)) and takes the lease for `owner` for `ttl` if nobody holds it
    /// (Redis: one Lua script; SQL: one transaction). Returns whether it was taken, and the
    /// entries: the cache prefers a usable stored token or a running failure to the lease, so a
    /// waiter that read just before the holder wrote never fetches a second time.
    fn acquire_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<LeaseAttempt, BoxError>>;

    /// Extends the lease to `ttl` from now if `owner` still holds it (compare and set).
    /// Returns whether it did.
    fn renew_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>>;

    /// Releases the lease if `owner` holds it (compare and delete).
    fn release_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Resolves when an entry of `key` may have changed (a token or failure written or
    /// removed, the lease released), or after `timeout`, whichever comes first: how a process
    /// waiting for another one's token hears of it. A spurious wake-up is harmless (the waiter
    /// reads again); the cache bounds `timeout` so that changes no one announces (a dead
    /// holder's lease running out) are still seen.
    ///
    /// Default: sleeps `timeout` (polling). [`RedisStore`] subscribes to a per-key channel that
    /// its writes publish on.
    ///
    /// ```no_run
    /// # #[cfg(feature = "redis")] {
    /// use std::time::Duration;
    /// use tower_client_credentials::store::{RedisStore, StoreKey, TokenStore};
    ///
    /// # async fn wait() -> Result<(), tower_client_credentials::BoxError> {
    /// let store = RedisStore::new("redis://127.0.0.1:6379")?;
    /// let key = StoreKey::builder("https://idp.example/token", "my-client").build();
    /// // Back as soon as any process writes one of the key's entries, or after 200 ms.
    /// store.changed(&key, Duration::from_millis(200)).await?;
    /// # Ok(()) }
    /// # }
    /// ```
    fn changed<'a>(
        &'a self,
        key: &'a StoreKey,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        let _ = key;
        Box::pin(async move {
            tokio::time::sleep(timeout).await;
            Ok(())
        })
    }

    /// How long a lease lasts unless renewed: how long the fleet waits for a holder that died.
    /// Default [`DEFAULT_LEASE_TTL`].
    fn lease_ttl(&self) -> Duration {
        DEFAULT_LEASE_TTL
    }

    /// The time limit of each operation; past it the cache fetches on its own. Default
    /// [`DEFAULT_OPERATION_TIMEOUT`].
    fn operation_timeout(&self) -> Duration {
        DEFAULT_OPERATION_TIMEOUT
    }
}

impl<T: TokenStore + ?Sized> TokenStore for Arc<T> {
    fn load<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Stored, BoxError>> {
        (**self).load(key)
    }
    fn save<'a>(
        &'a self,
        key: &'a StoreKey,
        slot: Slot,
        record: Record,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        (**self).save(key, slot, record, ttl)
    }
    fn remove_if<'a>(
        &'a self,
        key: &'a StoreKey,
        slot: Slot,
        fingerprint: &'a str,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        (**self).remove_if(key, slot, fingerprint)
    }
    fn acquire_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<LeaseAttempt, BoxError>> {
        (**self).acquire_lease(key, owner, ttl)
    }
    fn renew_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        (**self).renew_lease(key, owner, ttl)
    }
    fn release_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        (**self).release_lease(key, owner)
    }
    fn changed<'a>(
        &'a self,
        key: &'a StoreKey,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        (**self).changed(key, timeout)
    }
    fn lease_ttl(&self) -> Duration {
        (**self).lease_ttl()
    }
    fn operation_timeout(&self) -> Duration {
        (**self).operation_timeout()
    }
}

#[cfg(test)]
mod tests;
