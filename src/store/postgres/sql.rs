//! The table: its name, its creation, and the entries' columns read back from its rows.

use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};

use super::{slot_name, PostgresStore, Record, Slot, StoreKey, Stored};
use crate::error::BoxError;

/// The table's name, quoted for SQL, and the notification channel named after it.
#[derive(Clone)]
pub(super) struct Table {
    pub(super) quoted: String,
    pub(super) channel: String,
}

impl Table {
    pub(super) fn parse(name: &str) -> Option<Table> {
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

/// The entries' columns as statements return them: for the token then the failure, the
/// fingerprint and payload when not expired, and the age by the database's clock in ms.
pub(super) const ENTRY_COLUMNS: &str = "\
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

impl PostgresStore {
    pub(super) async fn ensure_table(&self, client: &Client) -> Result<(), BoxError> {
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
    pub(super) fn stored(
        &self,
        key: &StoreKey,
        row: Option<&Row>,
        first: usize,
    ) -> Result<Stored, BoxError> {
        let Some(row) = row else {
            return Ok(Stored::default());
        };
        Ok(Stored::new(
            self.record(key, Slot::Token, row, first)?,
            self.record(key, Slot::Failure, row, first + 3)?,
        ))
    }
}
