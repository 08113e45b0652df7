//! The pool: a bounded set of connections, one whose operation did not finish never reused.

use std::sync::Mutex;

use tokio::sync::Semaphore;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Config, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{describe, lock, Inner};
use crate::error::BoxError;

/// At most `max` connections; an idle one is reused if still open.
pub(super) struct Pool {
    pub(super) max: usize,
    permits: Semaphore,
    idle: Mutex<Vec<Connection>>,
}

/// A client and the task driving its socket (aborted when the client is dropped, so that a
/// stalled socket does not outlive it).
pub(super) struct Connection {
    pub(super) client: Client,
    task: tokio::task::AbortHandle,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Pool {
    pub(super) fn new(max: usize) -> Pool {
        Pool {
            max,
            permits: Semaphore::new(max),
            idle: Mutex::new(Vec::new()),
        }
    }

    pub(super) async fn get<'a>(&'a self, inner: &Inner) -> Result<Pooled<'a>, BoxError> {
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
pub(super) struct Pooled<'a> {
    pool: &'a Pool,
    connection: Option<Connection>,
    pub(super) finished: bool,
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
    pub(super) async fn query_opt(
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

    pub(super) async fn query_one(
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
