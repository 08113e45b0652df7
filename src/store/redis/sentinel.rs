//! Where the Redis store connects: its target and connection, and behind Sentinel the master,
//! looked up again when its connection fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionInfo, ErrorKind, Pipeline, RedisFuture, ServerErrorKind,
    Value,
};

// One per store, inside its `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Target {
    Single(redis::Client),
    /// The nodes given; the client is built on first use, with the store's operation timeout
    /// (issue 20, defect 5: built here, it kept the default whatever the setter said later).
    Cluster(Vec<ConnectionInfo>),
    Sentinel(Sentinel),
}

#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(MasterConnection),
}

/// The master a set of Sentinels names, and one connection to it while it serves.
///
/// redis-rs' `ConnectionManager` reconnects to one fixed address, which after a failover is a
/// replica (or gone): here a connection that fails (dropped, refused, timed out, `READONLY`
/// from a demoted master) is forgotten, and the next operation asks the Sentinels again.
pub(super) struct Sentinel {
    pub(super) sentinels: Vec<ConnectionInfo>,
    pub(super) master_name: String,
    /// One client per Sentinel, asked all at once: the first to name a master that agrees
    /// wins, so a Sentinel that is down or stalled (which redis-rs' own client, asking them in
    /// order, waits out for half a second or more) costs nothing while another answers.
    clients: Vec<Arc<tokio::sync::Mutex<SentinelClient>>>,
    /// One lookup at a time; the others wait and take its answer.
    lookup: tokio::sync::Mutex<()>,
    current: Arc<Current>,
}

#[derive(Default)]
struct Current {
    /// The connection in use and its generation (which connection a failure is about).
    master: Mutex<Option<(u64, MultiplexedConnection)>>,
    generations: AtomicU64,
}

impl Current {
    fn get(self: &Arc<Self>) -> Option<MasterConnection> {
        let master = self.master.lock().unwrap_or_else(|e| e.into_inner());
        let (generation, connection) = master.as_ref()?;
        Some(MasterConnection {
            connection: connection.clone(),
            generation: *generation,
            current: self.clone(),
        })
    }

    fn set(self: &Arc<Self>, connection: MultiplexedConnection) -> MasterConnection {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        *self.master.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((generation, connection.clone()));
        MasterConnection {
            connection,
            generation,
            current: self.clone(),
        }
    }

    /// Forgets connection `generation` (not a newer one another task already made).
    fn forget(&self, generation: u64) {
        let mut master = self.master.lock().unwrap_or_else(|e| e.into_inner());
        if master.as_ref().is_some_and(|(g, _)| *g == generation) {
            *master = None;
        }
    }
}

#[derive(Clone)]
pub(super) struct MasterConnection {
    connection: MultiplexedConnection,
    generation: u64,
    current: Arc<Current>,
}

impl MasterConnection {
    /// Runs `request`; a failure that says this master is gone or no longer the master, and a
    /// request abandoned before its answer (the store's operation timeout: a stalled master
    /// answers nothing, not even an error), make the next operation look the master up again.
    async fn checked<T>(
        current: Arc<Current>,
        generation: u64,
        request: RedisFuture<'_, T>,
    ) -> redis::RedisResult<T> {
        struct Abandoned<'a>(Option<(&'a Current, u64)>);
        impl Drop for Abandoned<'_> {
            fn drop(&mut self) {
                if let Some((current, generation)) = self.0.take() {
                    current.forget(generation);
                }
            }
        }
        let mut guard = Abandoned(Some((&current, generation)));
        let result = request.await;
        guard.0 = None;
        if let Err(error) = &result {
            if master_lost(error) {
                current.forget(generation);
            }
        }
        result
    }
}

pub(super) fn master_lost(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

impl Sentinel {
    pub(super) fn new(
        sentinels: Vec<ConnectionInfo>,
        master_name: String,
    ) -> redis::RedisResult<Self> {
        // The master is reached with the user name, password, database and TLS of the first
        // Sentinel's URL: deployments commonly give Sentinels and data nodes the same ones.
        let first = &sentinels[0];
        let mut node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(first.redis_settings().clone());
        if let redis::ConnectionAddr::TcpTls { insecure, .. } = first.addr() {
            node = node.set_tls_mode(if *insecure {
                redis::TlsMode::Insecure
            } else {
                redis::TlsMode::Secure
            });
        }
        let clients = sentinels
            .iter()
            .map(|sentinel| {
                SentinelClient::build(
                    vec![sentinel.clone()],
                    &master_name,
                    Some(node.clone()),
                    SentinelServerType::Master,
                )
                .map(|client| Arc::new(tokio::sync::Mutex::new(client)))
            })
            .collect::<redis::RedisResult<_>>()?;
        Ok(Sentinel {
            sentinels,
            master_name,
            clients,
            lookup: tokio::sync::Mutex::new(()),
            current: Arc::default(),
        })
    }

    /// The master the Sentinels name now (checked with `ROLE`), from whichever answers first.
    /// Cancel-safe: the lookups still running are aborted when this is dropped.
    pub(super) async fn master(&self) -> redis::RedisResult<redis::Client> {
        let mut lookups = tokio::task::JoinSet::new();
        for client in &self.clients {
            let client = client.clone();
            lookups.spawn(async move { client.lock().await.async_get_client().await });
        }
        let mut last = None;
        while let Some(joined) = lookups.join_next().await {
            match joined {
                Ok(Ok(master)) => return Ok(master),
                Ok(Err(error)) => last = Some(error),
                Err(_) => {} // not cancelled here; a panic in redis-rs is its own report
            }
        }
        Err(last
            .unwrap_or_else(|| redis::RedisError::from((ErrorKind::Io, "no Sentinel answered"))))
    }

    pub(super) async fn connection(
        &self,
        timeout: Duration,
    ) -> redis::RedisResult<MasterConnection> {
        if let Some(connection) = self.current.get() {
            return Ok(connection);
        }
        let _lookup = self.lookup.lock().await;
        if let Some(connection) = self.current.get() {
            return Ok(connection);
        }
        let master = self.master().await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let connection = master
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(self.current.set(connection))
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
            Connection::Sentinel(c) => {
                let (current, generation) = (c.current.clone(), c.generation);
                Box::pin(MasterConnection::checked(
                    current,
                    generation,
                    c.connection.req_packed_command(cmd),
                ))
            }
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
            Connection::Sentinel(c) => {
                let (current, generation) = (c.current.clone(), c.generation);
                Box::pin(MasterConnection::checked(
                    current,
                    generation,
                    c.connection.req_packed_commands(cmd, offset, count),
                ))
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
            Connection::Sentinel(c) => c.connection.get_db(),
        }
    }
}
