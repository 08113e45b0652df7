//! [`PostgresStore`]: the [`TokenStore`] on a PostgreSQL table (tokio-postgres).
//!
//! Why these choices:
//!
//! - **tokio-postgres** (the sans-io `postgres-protocol` underneath) rather than sqlx or diesel:
//!   no macros, no compile-time database, no runtime of its own, maintained with the `postgres`
//!   crate. With tokio-postgres-rustls it adds about 45 small crates to a build that already has
//!   `rustls` and `store` (the protocol's hashes for SCRAM and MD5, SASLprep's Unicode tables,
//!   X.509 parsing for channel binding), compiled in well under a minute here; sqlx pulls in
//!   its macros and a runtime abstraction. Its `query_typed` runs a statement in one round trip
//!   without preparing it first.
//! - **A pool of its own** (a semaphore and a list of idle clients) rather than deadpool: the
//!   store needs only a bound, a check that a connection is still open, and one rule a generic
//!   pool does not have: a connection whose operation did not finish (timed out, so possibly
//!   stalled) is closed, never handed to the next operation.
//! - **tokio-postgres-rustls** for TLS: rustls is already this crate's TLS, and it implements
//!   SCRAM channel binding (`tls-server-end-point`).
//! - **The lease is a row with an expiry (`now() + ttl`), not an advisory lock**: an advisory
//!   lock belongs to a session, so it would pin one pooled connection for the whole token
//!   request, die with that connection (a pool recycling it, a proxy such as PgBouncer in
//!   transaction mode) and could not be renewed or released from another connection. A row
//!   expires by the database's clock whatever happens to its holder, and renewing and releasing
//!   it are compare-and-set statements on any connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Config;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::crypto::Cipher;
use super::{
    LeaseAttempt, Record, Slot, StoreKey, Stored, TokenStore, DEFAULT_LEASE_TTL,
    DEFAULT_OPERATION_TIMEOUT,
};
use crate::error::{BoxError, Error};
use crate::source::BoxFuture;

mod display;
mod listener;
mod pool;
mod sql;

use display::{describe, shown, shown_config};
use listener::Listener;
use pool::{Pool, Pooled};
use sql::{Table, ENTRY_COLUMNS};

/// The default table name.
const DEFAULT_TABLE: &str = "tcc_token_store";
/// Connections of the pool, by default (the listener for waiters is one more).
const DEFAULT_MAX_CONNECTIONS: usize = 4;

/// A [`TokenStore`] on a PostgreSQL table: one token, one token request per expiry and one
/// backoff for a whole fleet that shares a database.
///
/// Built from a connection string without touching the network (`postgres://user:password@host
/// [:port]/database?sslmode=...`, or the `key=value` form libpq accepts); it connects on first
/// use, keeps at most [`max_connections`](Self::max_connections) connections (default 4), plus
/// one that `LISTEN`s for the fleet's changes, and reconnects by itself.
///
/// **One row per credential set** (a [`StoreKey`]: the client, its scopes and parameters, and
/// the key or certificate the token is bound to): the token, the failure the fleet backs off
/// from, and the lease, each with the time the database saved it (`now()`) and when it expires.
/// Every time is the database's clock, never a replica's. Expired entries are ignored and
/// overwritten, so the table holds one row per credential set, never more.
///
/// **The lease** is the row's `lease_owner` with an expiry, taken by one `INSERT ... ON
/// CONFLICT DO UPDATE` that also returns the stored entries (not an advisory lock: see the
/// module's source for why). Writes of a token or failure and a lease's release send a
/// `NOTIFY` on a channel named like the table, with the store key as payload: waiting replicas
/// wake at once instead of polling.
///
/// **The table** is created on first use (unless [`create_table(false)`](Self::create_table)),
/// by this statement (`tcc_token_store` or the name given to [`table`](Self::table)); create it
/// yourself where the store's database user may not:
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS tcc_token_store (
///     store_key           text PRIMARY KEY,
///     token_fingerprint   text,
///     token_payload       bytea,
///     token_saved_at      timestamptz,
///     token_expires_at    timestamptz,
///     failure_fingerprint text,
///     failure_payload     bytea,
///     failure_saved_at    timestamptz,
///     failure_expires_at  timestamptz,
///     lease_owner         text,
///     lease_expires_at    timestamptz
/// );
/// ```
///
/// The database user needs `SELECT`, `INSERT` and `UPDATE` on it.
///
/// **TLS** (rustls, with the webpki root certificates unless [`tls`](Self::tls) gives a
/// configuration) follows the connection string's `sslmode`: `prefer` (the default) uses TLS
/// when the server offers it, `require` insists, `disable` never does. A server certificate
/// must verify: for a private CA, pass a configuration that trusts it.
///
/// **The database is an optimisation, never a dependency**: down, slow, read-only, out of
/// connections or missing the table, every operation fails within
/// [`operation_timeout`](Self::operation_timeout) and the cache fetches on its own. Errors
/// name the host and the database's message, never the password, a token or a stored value.
///
/// **Tokens at rest are credentials**: whoever reads the table can use them until they expire.
/// Restrict access to it and set an [`encryption_key`](Self::encryption_key).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_client_credentials::store::PostgresStore;
///
/// # fn main() -> Result<(), tower_client_credentials::Error> {
/// # let key = [7u8; 32];
/// let store = PostgresStore::new("postgres://tcc:s3cret@db.internal/app?sslmode=require")? // no network yet
///     .table("auth.token_store")?
///     .encryption_key(key)
///     .lease_ttl(Duration::from_secs(10))
///     .operation_timeout(Duration::from_millis(300))
///     .max_connections(2);
/// assert!(!format!("{store:?}").contains("s3cret"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    tls: MakeRustlsConnect,
    table: Table,
    create_table: bool,
    /// Whether the table was seen (or created); cleared when a statement finds it missing
    /// (dropped while the fleet runs), so that it is created again.
    table_ready: AtomicBool,
    cipher: Option<Cipher>,
    lease_ttl: Duration,
    operation_timeout: Duration,
    pool: Pool,
    listener: Arc<Listener>,
    /// For `Debug` and errors: host, port and database only, never a password.
    shown: String,
}

impl PostgresStore {
    /// A store on the PostgreSQL database of `url` (`postgres://[user[:password]@]host[:port]
    /// [/database][?sslmode=...]`, or libpq's `key=value` form). Parses it; connects lazily, on
    /// first use.
    ///
    /// Fails only on a connection string that does not parse; the error never shows the
    /// password.
    pub fn new(url: &str) -> Result<Self, Error> {
        let mut config: Config = url.parse().map_err(|_| {
            Error::config(format!(
                "`{}` is not a usable PostgreSQL connection string; expected \
                 postgres://[user[:password]@]host[:port][/database][?sslmode=...] or \
                 host=... user=... key=value pairs",
                shown(url)
            ))
        })?;
        if config.get_hosts().is_empty() {
            return Err(Error::config(format!(
                "the PostgreSQL connection string `{}` names no host; add one",
                shown(url)
            )));
        }
        if config.get_application_name().is_none() {
            config.application_name("tower-client-credentials");
        }
        config.keepalives(true);
        let tls_config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|_| Error::config("rustls refused its own default protocol versions"))?
        .with_root_certificates(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
        .with_no_client_auth();
        let shown = shown_config(&config);
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                config,
                tls: MakeRustlsConnect::new(tls_config),
                table: Table::parse(DEFAULT_TABLE).expect("the default table name is valid"),
                create_table: true,
                table_ready: AtomicBool::new(false),
                cipher: None,
                lease_ttl: DEFAULT_LEASE_TTL,
                operation_timeout: DEFAULT_OPERATION_TIMEOUT,
                pool: Pool::new(DEFAULT_MAX_CONNECTIONS),
                listener: Arc::new(Listener::default()),
                shown,
            }),
        })
    }

    /// The table to use (default `tcc_token_store`), optionally with its schema
    /// (`schema.table`). Letters, digits and `_`, at most 63 bytes; anything else is refused
    /// rather than quoted, since the name also names the `NOTIFY` channel.
    ///
    /// ```
    /// use tower_client_credentials::store::PostgresStore;
    ///
    /// let store = PostgresStore::new("postgres://db.internal/app")?.table("auth.tokens")?;
    /// assert!(PostgresStore::new("postgres://db.internal/app")?.table("tokens; DROP").is_err());
    /// # Ok::<(), tower_client_credentials::Error>(())
    /// ```
    pub fn table(self, name: &str) -> Result<Self, Error> {
        let table = Table::parse(name).ok_or_else(|| {
            Error::config(format!(
                "`{name}` is not a usable table name for the PostgreSQL token store; use \
                 letters, digits and `_` (`table` or `schema.table`, at most 63 bytes)"
            ))
        })?;
        Ok(self.configure(|inner| inner.table = table))
    }

    /// Whether to create the table on first use when it is missing (default `true`). With
    /// `false`, create it yourself (the statement is in [`PostgresStore`]'s documentation);
    /// until it exists, every operation fails and the cache fetches on its own.
    ///
    /// ```
    /// use tower_client_credentials::store::PostgresStore;
    ///
    /// // The application's user may not run DDL; the table is created by a migration.
    /// let store = PostgresStore::new("postgres://app@db.internal/app")?.create_table(false);
    /// # Ok::<(), tower_client_credentials::Error>(())
    /// ```
    pub fn create_table(self, create: bool) -> Self {
        self.configure(|inner| inner.create_table = create)
    }

    /// The most connections the store opens (default 4, at least 1), besides the one that
    /// listens for the fleet's changes. An operation that finds them all busy waits for one,
    /// within its [`operation_timeout`](Self::operation_timeout).
    pub fn max_connections(self, max: usize) -> Self {
        self.configure(|inner| inner.pool = Pool::new(max.max(1)))
    }

    /// The TLS configuration (rustls) for servers that offer or require TLS, for example one
    /// trusting a private CA or presenting a client certificate. Default: the webpki root
    /// certificates, no client certificate.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_client_credentials::store::PostgresStore;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let private_ca_der: Vec<u8> = Vec::new();
    /// let mut roots = rustls::RootCertStore::empty();
    /// # if !private_ca_der.is_empty() {
    /// roots.add(rustls::pki_types::CertificateDer::from(private_ca_der))?;
    /// # }
    /// let config = rustls::ClientConfig::builder_with_provider(Arc::new(
    ///     rustls::crypto::ring::default_provider(),
    /// ))
    /// .with_safe_default_protocol_versions()?
    /// .with_root_certificates(roots)
    /// .with_no_client_auth();
    /// let store = PostgresStore::new("postgres://app@db.internal/app?sslmode=require")?.tls(config);
    /// # Ok(()) }
    /// ```
    pub fn tls(self, config: rustls::ClientConfig) -> Self {
        self.configure(|inner| inner.tls = MakeRustlsConnect::new(config))
    }

    /// Encrypts stored tokens and failures with AES-256-GCM under `key`, with the store key, the
    /// entry and its fingerprint as associated data. Every process of the fleet needs the same
    /// key; a value that does not decrypt (another key, tampered, moved to another row, written
    /// unencrypted) is ignored, as if absent.
    pub fn encryption_key(self, key: [u8; 32]) -> Self {
        self.configure(|inner| inner.cipher = Some(Cipher::new(key)))
    }

    /// How long the lease of the process fetching a token lasts unless renewed; a holder that
    /// dies is replaced after this. Default 10 s; at least 100 ms.
    pub fn lease_ttl(self, ttl: Duration) -> Self {
        self.configure(|inner| inner.lease_ttl = ttl.max(Duration::from_millis(100)))
    }

    /// Time limit of every operation (connecting included); past it the cache fetches on its
    /// own. Default 250 ms; at least 1 ms.
    pub fn operation_timeout(self, timeout: Duration) -> Self {
        self.configure(|inner| inner.operation_timeout = timeout.max(Duration::from_millis(1)))
    }

    /// Settings apply to a store not yet shared (the builder methods are called before
    /// `TokenCacheBuilder::store`); on a clone already shared they are made on a copy, with
    /// connections of its own.
    fn configure(mut self, change: impl FnOnce(&mut Inner)) -> Self {
        if Arc::get_mut(&mut self.inner).is_none() {
            let inner = &self.inner;
            self.inner = Arc::new(Inner {
                config: inner.config.clone(),
                tls: inner.tls.clone(),
                table: inner.table.clone(),
                create_table: inner.create_table,
                table_ready: AtomicBool::new(false),
                cipher: inner.cipher.clone(),
                lease_ttl: inner.lease_ttl,
                operation_timeout: inner.operation_timeout,
                pool: Pool::new(inner.pool.max),
                listener: Arc::new(Listener::default()),
                shown: inner.shown.clone(),
            });
        }
        change(Arc::get_mut(&mut self.inner).expect("not shared"));
        self
    }

    /// A pooled connection, the table checked (and created) once.
    async fn connection(&self) -> Result<Pooled<'_>, BoxError> {
        let mut connection = self.inner.pool.get(&self.inner).await?;
        if !self.inner.table_ready.load(Ordering::Acquire) {
            // Concurrent first uses may each check: creating is idempotent and serialised.
            self.ensure_table(&connection.client).await?;
            self.inner.table_ready.store(true, Ordering::Release);
        }
        // Reusable so far; each statement marks it unfinished while it runs.
        connection.finished = true;
        Ok(connection)
    }

    fn failed(&self, error: tokio_postgres::Error) -> BoxError {
        if error.code() == Some(&SqlState::UNDEFINED_TABLE) {
            self.inner.table_ready.store(false, Ordering::Release);
        }
        describe(&self.inner.shown, &error).into()
    }

    /// The stored form of a payload: sealed when a key is set.
    fn seal(&self, key: &StoreKey, slot: Slot, record: &Record) -> Option<Vec<u8>> {
        match &self.inner.cipher {
            Some(cipher) => cipher.seal_record(key, slot, record),
            None => Some(record.payload().to_vec()),
        }
    }

    /// Takes the lease if free (or already `owner`'s) and reads both entries, in one statement.
    async fn attempt_lease(
        &self,
        key: &StoreKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<LeaseAttempt, BoxError> {
        self.inner.listener.read(key.as_str());
        let mut connection = self.connection().await?;
        self.start_listener();
        let table = &self.inner.table.quoted;
        let sql = format!(
            "INSERT INTO {table} AS s (store_key, lease_owner, lease_expires_at) \
             VALUES ($1, $2, now() + $3 * interval '1 millisecond') \
             ON CONFLICT (store_key) DO UPDATE SET \
               lease_owner = CASE WHEN {free} THEN EXCLUDED.lease_owner ELSE s.lease_owner END, \
               lease_expires_at = CASE WHEN {free} THEN EXCLUDED.lease_expires_at \
                 ELSE s.lease_expires_at END \
             RETURNING s.lease_owner = $2, {ENTRY_COLUMNS}",
            free = "(s.lease_expires_at IS NULL OR s.lease_expires_at <= now() \
                     OR s.lease_owner = EXCLUDED.lease_owner)",
        );
        let ttl = millis(ttl);
        let row = connection
            .query_one(
                &sql,
                &[
                    (&key.as_str(), Type::TEXT),
                    (&owner, Type::TEXT),
                    (&ttl, Type::INT8),
                ],
            )
            .await
            .map_err(|e| self.failed(e))?;
        let acquired: bool = row.try_get(0).map_err(|e| self.failed(e))?;
        Ok(LeaseAttempt::new(
            acquired,
            self.stored(key, Some(&row), 1)?,
        ))
    }
}

fn slot_name(slot: Slot) -> &'static str {
    match slot {
        Slot::Token => "token",
        Slot::Failure => "failure",
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}

impl TokenStore for PostgresStore {
    fn load<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Stored, BoxError>> {
        Box::pin(async move {
            self.inner.listener.read(key.as_str());
            let mut connection = self.connection().await?;
            // After the first connection is made, so that the two logins do not compete.
            self.start_listener();
            let sql = format!(
                "SELECT {ENTRY_COLUMNS} FROM {} AS s WHERE s.store_key = $1",
                self.inner.table.quoted
            );
            let row = connection
                .query_opt(&sql, &[(&key.as_str(), Type::TEXT)])
                .await
                .map_err(|e| self.failed(e))?;
            self.stored(key, row.as_ref(), 0)
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
            let s = slot_name(slot);
            let sql = format!(
                "WITH saved AS (\
                   INSERT INTO {table} AS s \
                     (store_key, {s}_fingerprint, {s}_payload, {s}_saved_at, {s}_expires_at) \
                   VALUES ($1, $2, $3, now(), now() + $4 * interval '1 millisecond') \
                   ON CONFLICT (store_key) DO UPDATE SET \
                     {s}_fingerprint = EXCLUDED.{s}_fingerprint, \
                     {s}_payload = EXCLUDED.{s}_payload, \
                     {s}_saved_at = EXCLUDED.{s}_saved_at, \
                     {s}_expires_at = EXCLUDED.{s}_expires_at \
                   RETURNING 1) \
                 SELECT pg_notify($5, $1) FROM saved",
                table = self.inner.table.quoted,
            );
            let ttl = millis(ttl);
            connection
                .query_opt(
                    &sql,
                    &[
                        (&key.as_str(), Type::TEXT),
                        (&record.fingerprint(), Type::TEXT),
                        (&payload, Type::BYTEA),
                        (&ttl, Type::INT8),
                        (&self.inner.table.channel, Type::TEXT),
                    ],
                )
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
            let s = slot_name(slot);
            let sql = format!(
                "WITH removed AS (\
                   UPDATE {table} SET {s}_fingerprint = NULL, {s}_payload = NULL, \
                     {s}_saved_at = NULL, {s}_expires_at = NULL \
                   WHERE store_key = $1 AND {s}_fingerprint = $2 AND {s}_expires_at > now() \
                   RETURNING 1) \
                 SELECT pg_notify($3, $1) FROM removed",
                table = self.inner.table.quoted,
            );
            let removed = connection
                .query_opt(
                    &sql,
                    &[
                        (&key.as_str(), Type::TEXT),
                        (&fingerprint, Type::TEXT),
                        (&self.inner.table.channel, Type::TEXT),
                    ],
                )
                .await
                .map_err(|e| self.failed(e))?;
            Ok(removed.is_some())
        })
    }

    fn acquire_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<LeaseAttempt, BoxError>> {
        Box::pin(self.attempt_lease(key, owner, ttl))
    }

    fn renew_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        Box::pin(async move {
            let mut connection = self.connection().await?;
            let sql = format!(
                "UPDATE {} SET lease_expires_at = now() + $3 * interval '1 millisecond' \
                 WHERE store_key = $1 AND lease_owner = $2 AND lease_expires_at > now() \
                 RETURNING 1",
                self.inner.table.quoted
            );
            let ttl = millis(ttl);
            let renewed = connection
                .query_opt(
                    &sql,
                    &[
                        (&key.as_str(), Type::TEXT),
                        (&owner, Type::TEXT),
                        (&ttl, Type::INT8),
                    ],
                )
                .await
                .map_err(|e| self.failed(e))?;
            Ok(renewed.is_some())
        })
    }

    fn release_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let mut connection = self.connection().await?;
            let sql = format!(
                "WITH released AS (\
                   UPDATE {} SET lease_owner = NULL, lease_expires_at = NULL \
                   WHERE store_key = $1 AND lease_owner = $2 RETURNING 1) \
                 SELECT pg_notify($3, $1) FROM released",
                self.inner.table.quoted
            );
            connection
                .query_opt(
                    &sql,
                    &[
                        (&key.as_str(), Type::TEXT),
                        (&owner, Type::TEXT),
                        (&self.inner.table.channel, Type::TEXT),
                    ],
                )
                .await
                .map_err(|e| self.failed(e))?;
            Ok(())
        })
    }

    /// Waits for a `NOTIFY` about `key` (a token or failure written, the lease released, by any
    /// process) heard since `key` was last read by this store, or `timeout`. Changes are heard
    /// on a connection of its own that `LISTEN`s (opened on first use, reopened after a
    /// failure); while it is not listening, this polls (returns within 50 ms).
    fn changed<'a>(
        &'a self,
        key: &'a StoreKey,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            self.wait_changed(key, timeout).await;
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
