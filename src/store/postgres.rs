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

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, Config, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::crypto::Cipher;
use super::{
    LeaseAttempt, Record, Slot, StoreKey, Stored, TokenStore, DEFAULT_LEASE_TTL,
    DEFAULT_OPERATION_TIMEOUT,
};
use crate::error::{BoxError, Error};
use crate::source::BoxFuture;

/// The default table name.
const DEFAULT_TABLE: &str = "tcc_token_store";
/// Connections of the pool, by default (the listener for waiters is one more).
const DEFAULT_MAX_CONNECTIONS: usize = 4;
/// While the listener is not connected, [`TokenStore::changed`] returns after at most this:
/// waiters poll rather than sleep through their whole wait.
const POLL_WITHOUT_LISTENER: Duration = Duration::from_millis(50);
/// Pause between two attempts of the listener to connect.
const LISTENER_RETRY: Duration = Duration::from_secs(1);

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

/// The table's name, quoted for SQL, and the notification channel named after it.
#[derive(Clone)]
struct Table {
    quoted: String,
    channel: String,
}

impl Table {
    fn parse(name: &str) -> Option<Table> {
        let parts: Vec<&str> = name.split('.').collect();
        let valid = |part: &&str| {
            !part.is_empty()
                && part.len() <= 63
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
                && !part.starts_with(|c: char| c.is_ascii_digit() || c == '$')
        };
        if parts.len() > 2 || !parts.iter().all(valid) || name.len() > 63 {
            return None;
        }
        Some(Table {
            quoted: parts
                .iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join("."),
            channel: name.to_owned(),
        })
    }
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

    async fn ensure_table(&self, client: &Client) -> Result<(), BoxError> {
        let table = &self.inner.table;
        if table_exists(client, &table.quoted)
            .await
            .map_err(|e| self.failed(e))?
        {
            return Ok(());
        }
        if !self.inner.create_table {
            return Err(format!(
                "PostgreSQL at {}: the table {} does not exist and creating it is off; create it \
                 with the statement in PostgresStore's documentation",
                self.inner.shown, table.channel
            )
            .into());
        }
        // One creator at a time (a transaction-scoped advisory lock: held only for these
        // statements), since concurrent `CREATE TABLE IF NOT EXISTS` can fail on the catalog's
        // unique index.
        let create = format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('tower-client-credentials table')); \
             {}; COMMIT;",
            create_sql(&table.quoted)
        );
        match client.batch_execute(&create).await {
            Ok(()) => Ok(()),
            Err(error) => {
                let _ = client.batch_execute("ROLLBACK").await;
                if table_exists(client, &table.quoted).await.unwrap_or(false) {
                    Ok(())
                } else {
                    Err(self.failed(error))
                }
            }
        }
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

    /// A record from a row's columns, `None` if absent, expired or not decrypting.
    fn record(
        &self,
        key: &StoreKey,
        slot: Slot,
        row: &Row,
        first: usize,
    ) -> Result<Option<Record>, BoxError> {
        let fingerprint: Option<String> = row.try_get(first).map_err(|e| self.failed(e))?;
        let payload: Option<Vec<u8>> = row.try_get(first + 1).map_err(|e| self.failed(e))?;
        let age_ms: Option<i64> = row.try_get(first + 2).map_err(|e| self.failed(e))?;
        let (Some(fingerprint), Some(payload)) = (fingerprint, payload) else {
            return Ok(None);
        };
        let payload = match &self.inner.cipher {
            Some(cipher) => match cipher.open_record(key, slot, &fingerprint, &payload) {
                Some(plain) => plain,
                None => {
                    tracing::debug!(
                        slot = slot_name(slot),
                        "ignoring a stored value that does not decrypt with the configured key"
                    );
                    return Ok(None);
                }
            },
            None => payload,
        };
        // The database's clock measured the age: a replica's wall clock plays no part.
        let age = Duration::from_millis(age_ms.unwrap_or(0).max(0).unsigned_abs());
        Ok(Some(Record::new(fingerprint, payload).with_age(age)))
    }

    /// Both entries from a row whose columns are [`ENTRY_COLUMNS`], starting at `first`.
    fn stored(&self, key: &StoreKey, row: Option<&Row>, first: usize) -> Result<Stored, BoxError> {
        let Some(row) = row else {
            return Ok(Stored::default());
        };
        Ok(Stored::new(
            self.record(key, Slot::Token, row, first)?,
            self.record(key, Slot::Failure, row, first + 3)?,
        ))
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

    /// Starts the task that `LISTEN`s for the fleet's changes, once.
    fn start_listener(&self) {
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
}

/// The entries' columns as statements return them: for the token then the failure, the
/// fingerprint and payload when not expired, and the age by the database's clock in ms.
const ENTRY_COLUMNS: &str = "\
    CASE WHEN s.token_expires_at > now() THEN s.token_fingerprint END, \
    CASE WHEN s.token_expires_at > now() THEN s.token_payload END, \
    (extract(epoch FROM now() - s.token_saved_at) * 1000)::int8, \
    CASE WHEN s.failure_expires_at > now() THEN s.failure_fingerprint END, \
    CASE WHEN s.failure_expires_at > now() THEN s.failure_payload END, \
    (extract(epoch FROM now() - s.failure_saved_at) * 1000)::int8";

async fn table_exists(client: &Client, quoted: &str) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_typed_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[(&quoted, Type::TEXT)],
        )
        .await?;
    row.try_get(0)
}

fn create_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\
           store_key text PRIMARY KEY, \
           token_fingerprint text, token_payload bytea, \
           token_saved_at timestamptz, token_expires_at timestamptz, \
           failure_fingerprint text, failure_payload bytea, \
           failure_saved_at timestamptz, failure_expires_at timestamptz, \
           lease_owner text, lease_expires_at timestamptz)"
    )
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

// ---------------------------------------------------------------------------------------------
// The pool.

/// At most `max` connections; an idle one is reused if still open.
struct Pool {
    max: usize,
    permits: Semaphore,
    idle: Mutex<Vec<Connection>>,
}

/// A client and the task driving its socket (aborted when the client is dropped, so that a
/// stalled socket does not outlive it).
struct Connection {
    client: Client,
    task: tokio::task::AbortHandle,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Pool {
    fn new(max: usize) -> Pool {
        Pool {
            max,
            permits: Semaphore::new(max),
            idle: Mutex::new(Vec::new()),
        }
    }

    async fn get<'a>(&'a self, inner: &Inner) -> Result<Pooled<'a>, BoxError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| "the PostgreSQL store's pool is closed")?;
        let idle = {
            let mut idle = lock(&self.idle);
            idle.retain(|c| !c.client.is_closed());
            idle.pop()
        };
        let connection = match idle {
            Some(connection) => connection,
            None => connect(&inner.config, inner.tls.clone(), &inner.shown).await?,
        };
        Ok(Pooled {
            pool: self,
            connection: Some(connection),
            finished: false,
            _permit: permit,
        })
    }
}

/// A connection out of the pool. Back to the pool on drop only if its last operation finished:
/// one cut short (its future dropped at the time limit) may sit on a stalled socket.
struct Pooled<'a> {
    pool: &'a Pool,
    connection: Option<Connection>,
    finished: bool,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Pooled<'_> {
    fn client(&self) -> &Client {
        &self
            .connection
            .as_ref()
            .expect("present until dropped")
            .client
    }

    /// One statement (one round trip: `query_typed` prepares nothing), its last row.
    async fn query_opt(
        &mut self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        // Not reusable unless the exchange completes (even with an error from the database).
        self.finished = false;
        let rows = self.client().query_typed(sql, params).await;
        self.finished = true;
        Ok(rows?.pop())
    }

    async fn query_one(
        &mut self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Row, tokio_postgres::Error> {
        self.finished = false;
        let row = self.client().query_typed_one(sql, params).await;
        self.finished = true;
        row
    }
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.connection.as_ref().expect("present until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            if self.finished && !connection.client.is_closed() {
                lock(&self.pool.idle).push(connection);
            }
        }
    }
}

async fn connect(
    config: &Config,
    tls: MakeRustlsConnect,
    shown: &str,
) -> Result<Connection, BoxError> {
    let (client, connection) = config.connect(tls).await.map_err(|e| describe(shown, &e))?;
    let task = tokio::spawn(async move {
        // Ends when the client is dropped or the server goes away; `is_closed` tells the pool.
        let _ = connection.await;
    })
    .abort_handle();
    Ok(Connection { client, task })
}

// ---------------------------------------------------------------------------------------------
// Waiters: LISTEN/NOTIFY.

/// What the listening connection has heard: a count of notifications per store key, and for
/// each key read, the count and the connection (epoch) at the time of the read.
#[derive(Default)]
struct Listener {
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
    fn read(&self, key: &str) {
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
    /// Resolves when `key`'s entries may have changed since they were last read, or after
    /// `timeout`.
    async fn wait_changed(&self, key: &StoreKey, timeout: Duration) {
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

// ---------------------------------------------------------------------------------------------
// What errors and `Debug` show.

/// `postgres://host:port/database` of a connection string, for messages: never the user name
/// or password (and for the `key=value` form, only that it is one).
fn shown(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}")
        }
        None => "(key=value connection string)".to_owned(),
    }
}

fn shown_config(config: &Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            let ports = config.get_ports();
            match ports.get(i).or(ports.first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    format!(
        "postgres://{}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// The failure as the database or the socket told it: the SQLSTATE and message of a database
/// error (not its DETAIL, which can quote a row's values), or the kind of a connection error.
fn describe(shown: &str, error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!(
            "PostgreSQL at {shown}: {} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        ),
        None => {
            let cause = std::error::Error::source(error)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            format!("PostgreSQL at {shown}: {error}{cause}")
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("server", &self.inner.shown)
            .field("table", &self.inner.table.channel)
            .field("encrypted", &self.inner.cipher.is_some())
            .field("lease_ttl", &self.inner.lease_ttl)
            .field("operation_timeout", &self.inner.operation_timeout)
            .field("max_connections", &self.inner.pool.max)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_parse_without_network_and_never_show_the_password() {
        for url in [
            "postgres://tcc:hunter2@db.internal/app",
            "postgresql://tcc:hunter2@10.0.0.1:6432/app?sslmode=require",
            "host=db.internal user=tcc password=hunter2 dbname=app",
        ] {
            let store = PostgresStore::new(url).unwrap();
            let shown = format!("{store:?}");
            assert!(
                !shown.contains("hunter2")
                    && (shown.contains("db.internal") || shown.contains("10.0.0.1")),
                "{shown}"
            );
        }
        for bad in [
            "postgres://tcc:hunter2@db.internal:notaport/app",
            "host=db.internal password=hunter2 sslmode=sometimes",
            "postgres://tcc:hunter2@/app",
        ] {
            let error = PostgresStore::new(bad).unwrap_err().to_string();
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn table_names_are_identifiers_or_refused() {
        let table = Table::parse("auth.token_store").unwrap();
        assert_eq!(table.quoted, "\"auth\".\"token_store\"");
        assert_eq!(table.channel, "auth.token_store");
        for bad in [
            "",
            "a.b.c",
            "x;DROP TABLE y",
            "t\"",
            "1abc",
            "a..b",
            &"x".repeat(64),
        ] {
            assert!(Table::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn settings_have_floors_and_apply_to_a_shared_store_as_a_copy() {
        let store = PostgresStore::new("postgres://db.internal/app")
            .unwrap()
            .lease_ttl(Duration::ZERO)
            .operation_timeout(Duration::ZERO)
            .max_connections(0);
        assert_eq!(TokenStore::lease_ttl(&store), Duration::from_millis(100));
        assert_eq!(
            TokenStore::operation_timeout(&store),
            Duration::from_millis(1)
        );
        assert_eq!(store.inner.pool.max, 1);
        let shared = store.clone();
        let changed = store.lease_ttl(Duration::from_secs(3));
        assert_eq!(TokenStore::lease_ttl(&changed), Duration::from_secs(3));
        assert_eq!(TokenStore::lease_ttl(&shared), Duration::from_millis(100));
    }
}
