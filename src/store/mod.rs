//! A second cache level shared by processes: one token, one token request per expiry and one
//! backoff for a whole fleet of replicas (cargo feature `store`; [`RedisStore`] with `redis`).
//!
//! The in-process [`TokenCache`](crate::TokenCache) stays the first level: the per-request hot
//! path never touches the store, and neither does a request while a valid token is cached. Only
//! when the cache needs a token (cold start, its refresh point, expiry, invalidation) does it go
//! through the store:
//!
//! 1. **Read.** A stored token with enough life left, other than the one being replaced, is
//!    used: no token request. A stored failure that is still backing off is returned as this
//!    process's error (same [`ErrorKind`](crate::ErrorKind), OAuth2 error and a
//!    [`retry_after`](crate::Error::retry_after) up to the end of the fleet's backoff), so the
//!    whole fleet backs off as one.
//! 2. **Lease.** Otherwise the process tries to take the lease (`SET NX PX` with an owner id of
//!    its own). The holder requests the token, writes it with its wall-clock issue and expiry
//!    times and a time-to-live that ends before expiry (or writes the failure, with the fleet's
//!    backoff), and releases the lease by compare-and-delete. While the request runs it renews
//!    the lease by compare-and-set; a holder that dies is replaced once its lease expires.
//! 3. **Wait.** The others poll (every few tens of milliseconds) until the token or failure
//!    appears or the lease is free again, bounded by half the cache's
//!    [`refresh_timeout`](crate::TokenCacheBuilder::refresh_timeout); past that they fetch on
//!    their own.
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
#[cfg(any(feature = "redis", feature = "postgres"))] // the built-in stores encrypt with it
mod crypto;
pub(crate) mod key;
#[cfg(feature = "postgres")]
mod postgres;
mod record;
#[cfg(feature = "redis")]
mod redis;

pub(crate) use self::coordinator::{Coordinator, FleetBackoff};
pub use self::key::{StoreKey, StoreKeyBuilder};
#[cfg(feature = "postgres")]
pub use self::postgres::PostgresStore;
#[cfg(feature = "redis")]
pub use self::redis::RedisStore;

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

/// One stored entry: a fingerprint that identifies it (for compare-and-delete) and an opaque
/// payload (the serialised token or failure, which a store may encrypt).
///
/// # Example
///
/// ```
/// use tower_client_credentials::store::Record;
///
/// let record = Record::new("3f2a…", b"{...}".to_vec());
/// assert_eq!(record.fingerprint(), "3f2a…");
/// assert!(!format!("{record:?}").contains("{...}"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    fingerprint: String,
    payload: Vec<u8>,
}

impl Record {
    /// A record. The fingerprint never contains the token; the payload does (in clear unless
    /// the store encrypts it).
    pub fn new(fingerprint: impl Into<String>, payload: Vec<u8>) -> Self {
        Record {
            fingerprint: fingerprint.into(),
            payload,
        }
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

/// A store shared by the processes of a fleet: what
/// [`TokenCacheBuilder::store`](crate::TokenCacheBuilder::store) needs to share one token and
/// one backoff between them.
///
/// [`RedisStore`] (feature `redis`) is the implementation for Redis. Implement it for another
/// shared store (a SQL table, etcd, ...): seven small operations on a credential set's
/// [`StoreKey`], each of which must be atomic. The coordination (read first, lease, wait,
/// fleet backoff, fallback when the store fails) is the cache's, not the store's.
///
/// Entries expire by themselves after the time-to-live given when they are written; a lease
/// likewise. Errors are logged (once per outage) and make the cache fetch on its own: they must
/// not contain secrets.
///
/// # Example
///
/// An in-memory store, for one process (a test double):
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::Duration;
/// use tokio::time::Instant;
/// use tower_client_credentials::store::{Record, Slot, StoreKey, Stored, TokenStore};
/// use tower_client_credentials::{BoxError, BoxFuture};
///
/// #[derive(Debug, Default)]
/// struct InMemory(Mutex<HashMap<(String, &'static str), (Record, Instant)>>);
///
/// fn slot_name(slot: Slot) -> &'static str {
///     if slot == Slot::Token { "token" } else { "failure" }
/// }
///
/// impl InMemory {
///     fn get(&self, key: &StoreKey, name: &'static str) -> Option<Record> {
///         let map = self.0.lock().unwrap();
///         let (record, until) = map.get(&(key.to_string(), name))?;
///         (Instant::now() < *until).then(|| record.clone())
///     }
/// }
///
/// impl TokenStore for InMemory {
///     fn load<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Stored, BoxError>> {
///         Box::pin(async move {
///             Ok(Stored::new(self.get(key, "token"), self.get(key, "failure")))
///         })
///     }
///     fn save<'a>(&'a self, key: &'a StoreKey, slot: Slot, record: Record, ttl: Duration)
///         -> BoxFuture<'a, Result<(), BoxError>> {
///         let entry = ((key.to_string(), slot_name(slot)), (record, Instant::now() + ttl));
///         self.0.lock().unwrap().insert(entry.0, entry.1);
///         Box::pin(async { Ok(()) })
///     }
///     fn remove_if<'a>(&'a self, key: &'a StoreKey, slot: Slot, fingerprint: &'a str)
///         -> BoxFuture<'a, Result<bool, BoxError>> {
///         let mut map = self.0.lock().unwrap();
///         let id = (key.to_string(), slot_name(slot));
///         let matches = map.get(&id).is_some_and(|(r, _)| r.fingerprint() == fingerprint);
///         if matches { map.remove(&id); }
///         Box::pin(async move { Ok(matches) })
///     }
///     fn acquire_lease<'a>(&'a self, key: &'a StoreKey, owner: &'a str, ttl: Duration)
///         -> BoxFuture<'a, Result<bool, BoxError>> {
///         let free = self.get(key, "lease").is_none();
///         if free {
///             let entry = (Record::new(owner, Vec::new()), Instant::now() + ttl);
///             self.0.lock().unwrap().insert((key.to_string(), "lease"), entry);
///         }
///         Box::pin(async move { Ok(free) })
///     }
///     fn renew_lease<'a>(&'a self, key: &'a StoreKey, owner: &'a str, ttl: Duration)
///         -> BoxFuture<'a, Result<bool, BoxError>> {
///         let mut map = self.0.lock().unwrap();
///         let held = match map.get_mut(&(key.to_string(), "lease")) {
///             Some((lease, until)) if lease.fingerprint() == owner && Instant::now() < *until => {
///                 *until = Instant::now() + ttl;
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
///         if map.get(&id).is_some_and(|(lease, _)| lease.fingerprint() == owner) {
///             map.remove(&id);
///         }
///         Box::pin(async { Ok(()) })
///     }
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

    /// Takes the lease of `key` for `owner` for `ttl` if nobody holds it (`SET NX PX`).
    /// Returns whether it was taken.
    fn acquire_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>>;

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
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
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
    fn lease_ttl(&self) -> Duration {
        (**self).lease_ttl()
    }
    fn operation_timeout(&self) -> Duration {
        (**self).operation_timeout()
    }
}

#[cfg(test)]
mod tests;
