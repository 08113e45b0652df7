//! A fleet of replicas sharing one token through a store: the harness of `tests/store_fleet.rs`
//! (and of any test file that runs replicas against a store).
//!
//! Replicas are separate OS processes: the test binary re-running itself with `--exact replica`
//! and its settings in `TCC_*` environment variables, against one loopback `AuthServer` (which
//! counts token requests) in the parent. A test file using this module defines
//!
//! ```ignore
//! #[test]
//! fn replica() {
//!     fleet::replica_main();
//! }
//! ```
//!
//! Every test starts its own store server ([`StoreServer::start`]: a `redis-server`, three as a
//! Redis Cluster, or a PostgreSQL cluster made by `initdb`) on free loopback ports, and stops it
//! when done. The store a replica uses is named by `TCC_STORE` (see [`StoreKind::name`]) and
//! reached at `TCC_STORE_URL`, so a test can put something between them (a TCP proxy: see
//! [`StoreServer::vars_via`]).
//!
//! For the chaos cases (`tests/fleet_chaos.rs`) it also has a Redis Sentinel set-up
//! ([`SentinelSet`], store `redis-sentinel`), a TCP [`Proxy`] that stalls, slows or resets
//! traffic, and a replica mode (`TCC_MODE=api`) that sends every request to an `ApiServer` and
//! reports its counts as it goes (so a replica killed mid-run still reports).
//!
//! Needs `redis-server`/`redis-cli` for the Redis kinds and PostgreSQL's server binaries for
//! `Postgres` (`.ci/setup` installs both). PostgreSQL refuses to run as root: as root, the
//! harness runs it as `nobody` (through `setpriv`), in a directory it owns.

// Every test crate compiles its own copy of this module and uses only some of its helpers.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tower_client_credentials::testing::AuthServer;
use tower_client_credentials::{ClientAuthMethod, ClientCredentials, TokenCache};

/// Replicas per fleet in the fleet cases.
pub const K: usize = 6;

/// Which store a fleet shares. (A Sentinel set-up is [`SentinelSet`], store `redis-sentinel`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// One `redis-server`.
    Redis,
    /// Three `redis-server` masters as a Redis Cluster.
    RedisCluster,
    /// One PostgreSQL server (its own cluster made by `initdb`).
    Postgres,
}

impl StoreKind {
    /// The value of `TCC_STORE` for this kind.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Redis => "redis",
            StoreKind::RedisCluster => "redis-cluster",
            StoreKind::Postgres => "postgres",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The replica: what a child process runs.

/// The entry point of a child process; in the parent's own run (no `TCC_ROLE`) it returns at
/// once: it is not a test of its own.
pub fn replica_main() {
    if std::env::var("TCC_ROLE").as_deref() != Ok("replica") {
        return;
    }
    // The store's outage warnings, on stderr: the parent reads them (and checks that they hold
    // no password).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            // The store's own warnings, not every refused refresh.
            env("TCC_LOG").unwrap_or_else(|| "tower_client_credentials::store=warn".to_string()),
        ))
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run_replica());
}

pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    env(name).map_or(default, |v| v.parse().unwrap())
}

/// Adds the store `TCC_STORE` names to `cache`, with the fleet's settings.
fn with_store(
    cache: tower_client_credentials::TokenCacheBuilder,
) -> tower_client_credentials::TokenCacheBuilder {
    let Some(kind) = env("TCC_STORE") else {
        return cache;
    };
    let url = env("TCC_STORE_URL").expect("TCC_STORE_URL");
    let lease = Duration::from_millis(env_u64("TCC_LEASE_MS", 10_000));
    // Longer than the 250 ms default: on a loaded 2-core machine running the whole suite, a
    // store operation that times out sends its replica to the token endpoint alone (the
    // designed fallback), which would blur the counts these tests compare.
    let timeout = Duration::from_millis(env_u64("TCC_OP_TIMEOUT_MS", 1_000));
    let key = env("TCC_KEY").map(|k| [k.as_bytes()[0]; 32]);
    match kind.as_str() {
        #[cfg(feature = "redis")]
        "redis" | "redis-cluster" => {
            use tower_client_credentials::store::RedisStore;
            let mut store = if kind == "redis" {
                RedisStore::new(&url).unwrap()
            } else {
                RedisStore::cluster(url.split(',')).unwrap()
            };
            store = store.lease_ttl(lease).operation_timeout(timeout);
            if let Some(key) = key {
                store = store.encryption_key(key);
            }
            cache.store(store)
        }
        #[cfg(feature = "redis")]
        "redis-sentinel" => {
            use tower_client_credentials::store::RedisStore;
            let sentinels: Vec<&str> = url.split(',').collect();
            let mut store = RedisStore::sentinel(&sentinels, SentinelSet::MASTER).unwrap();
            store = store.lease_ttl(lease).operation_timeout(timeout);
            if let Some(key) = key {
                store = store.encryption_key(key);
            }
            cache.store(store)
        }
        #[cfg(feature = "postgres")]
        "postgres" => {
            use tower_client_credentials::store::PostgresStore;
            let mut store = PostgresStore::new(&url)
                .unwrap()
                .lease_ttl(lease)
                .operation_timeout(timeout);
            if let Some(key) = key {
                store = store.encryption_key(key);
            }
            cache.store(store)
        }
        other => panic!("store {other} is not built in (check the cargo features)"),
    }
}

async fn run_replica() {
    let credentials = ClientCredentials::builder()
        .token_endpoint(env("TCC_TOKEN_ENDPOINT").unwrap())
        .unwrap()
        .client_id(AuthServer::CLIENT_ID)
        // One method: with negotiation, a refused client is tried with both, which would
        // double every count below.
        .auth_method(ClientAuthMethod::ClientSecretBasic);
    let credentials = match env("TCC_SECRET_VAR") {
        // The secret as Kubernetes often hands it over: an environment variable, read at each
        // token request; every pod names the same variable, each pod has its own value.
        Some(var) => credentials.client_secret_source(
            tower_client_credentials::client_credentials::EnvSecret::new(var),
        ),
        None => credentials.client_secret(AuthServer::CLIENT_SECRET),
    }
    .build()
    .unwrap();
    let backoff = Duration::from_millis(env_u64("TCC_BACKOFF_MS", 100));
    let millis = |name: &str, default: Duration| {
        env(name).map_or(default, |v| Duration::from_millis(v.parse().unwrap()))
    };
    let cache = TokenCache::builder(credentials)
        .refresh_jitter(0.0)
        .backoff_base(backoff)
        // The fleet tests refuse with `invalid_client`, a permanent failure: the same short
        // schedule for both kinds keeps them short.
        .permanent_backoff_base(millis("TCC_PERMANENT_BACKOFF_MS", backoff))
        .max_permanent_backoff(millis("TCC_MAX_PERMANENT_BACKOFF_MS", backoff))
        .max_backoff(backoff.max(Duration::from_millis(env_u64("TCC_MAX_BACKOFF_MS", 30_000))))
        .refresh_timeout(millis("TCC_REFRESH_TIMEOUT_MS", Duration::from_secs(20)));
    let cache = with_store(cache).build();
    if env("TCC_MODE").as_deref() == Some("api") {
        return run_api_replica(cache).await;
    }
    let concurrency = env_u64("TCC_CONCURRENCY", 50) as usize;
    let (mut ok, mut failed) = (0usize, 0usize);
    match env("TCC_MODE").as_deref() {
        // `concurrency` requests at once, at cold start.
        Some("burst") => {
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| {
                    let cache = cache.clone();
                    tokio::spawn(async move { cache.token().await })
                })
                .collect();
            for task in tasks {
                match task.await.unwrap() {
                    Ok(token) => {
                        ok += 1;
                        if env("TCC_PRINT_TOKEN").is_some() {
                            use secrecy::ExposeSecret;
                            println!("TOKEN {}", token.secret().expose_secret());
                        }
                    }
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        failed += 1;
                    }
                }
            }
        }
        // A request every 10 ms for `TCC_MILLIS`, each one needing a valid token.
        _ => {
            let until = Instant::now() + Duration::from_millis(env_u64("TCC_MILLIS", 5_000));
            while Instant::now() < until {
                match cache.token().await {
                    Ok(token) if token.remaining_lifetime() > Some(Duration::ZERO) => ok += 1,
                    Ok(_) => failed += 1,
                    Err(e) => {
                        if env("TCC_EXPECT_ERRORS").is_none() {
                            eprintln!("request failed: {e}");
                        }
                        failed += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    println!("REPLICA ok={ok} failed={failed}");
}

/// `TCC_MODE=api`: a request every 20 ms for `TCC_MILLIS` to the `ApiServer` at `TCC_API`
/// (`x-api-key: TCC_API_KEY`), which checks the token against the server that issued it: a
/// token the replica believes valid but the issuer does not counts as failed, whatever the
/// replica's clock says. Prints `COUNTS ok= failed= longest_ms=` (the longest wait for a token)
/// every 100 ms and at the end, then `REPLICA ...`.
async fn run_api_replica(cache: TokenCache) {
    use secrecy::ExposeSecret;
    let api: http::Uri = format!("{}/v1/items", env("TCC_API").unwrap())
        .parse()
        .unwrap();
    let api_key = env("TCC_API_KEY").unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let (mut ok, mut failed, mut longest) = (0usize, 0usize, Duration::ZERO);
    let started = Instant::now();
    let until = started + Duration::from_millis(env_u64("TCC_MILLIS", 9_000));
    let mut reported = started;
    let me = std::process::id();
    while Instant::now() < until {
        let asked = Instant::now();
        let token = cache.token().await;
        longest = longest.max(asked.elapsed());
        let problem = match token {
            Ok(token) => {
                let request = http::Request::get(api.clone())
                    .header(
                        "authorization",
                        format!("Bearer {}", token.secret().expose_secret()),
                    )
                    .header("x-api-key", &api_key)
                    .body(http_body_util::Empty::new())
                    .unwrap();
                match client.request(request).await {
                    Ok(response) if response.status() == 200 => None,
                    Ok(response) => Some(format!("the API answered {}", response.status())),
                    Err(e) => Some(format!("the API did not answer: {e}")),
                }
            }
            Err(e) => Some(format!("no token: {e}")),
        };
        match problem {
            None => ok += 1,
            Some(problem) => {
                failed += 1;
                // The first few, not one line per 20 ms.
                if failed <= 3 {
                    eprintln!("replica {me}: {problem}");
                }
            }
        }
        if reported.elapsed() >= Duration::from_millis(100) {
            reported = Instant::now();
            println!(
                "COUNTS ok={ok} failed={failed} longest_ms={}",
                longest.as_millis()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "COUNTS ok={ok} failed={failed} longest_ms={}",
        longest.as_millis()
    );
    println!("REPLICA ok={ok} failed={failed}");
}

// ---------------------------------------------------------------------------------------------
// The parent's side.

pub struct Replica {
    pub child: tokio::process::Child,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub ok: usize,
    pub failed: usize,
}

/// What a replica printed.
#[derive(Debug, Default, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

impl Replica {
    pub fn start(vars: &[(&str, String)]) -> Replica {
        Self::start_skewed(vars, None)
    }

    /// A replica whose wall clock is off by `offset` (faketime's syntax: `"+30s"`, `"-1h"`);
    /// its monotonic clock is left alone, as a real skewed host's is.
    pub fn start_skewed(vars: &[(&str, String)], offset: Option<&str>) -> Replica {
        let exe = std::env::current_exe().unwrap();
        let mut command = match offset {
            Some(offset) => {
                let mut c = tokio::process::Command::new("faketime");
                c.args(["-f", offset])
                    .arg(&exe)
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
                c
            }
            None => tokio::process::Command::new(&exe),
        };
        command
            .args(["replica", "--exact", "--nocapture", "--test-threads=1"])
            .env("TCC_ROLE", "replica")
            .env_remove("TCC_STORE")
            .env_remove("TCC_STORE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in vars {
            command.env(name, value);
        }
        Replica {
            child: command
                .spawn()
                .expect("the test binary (and faketime for a skewed replica) must run"),
        }
    }

    pub async fn finish(self) -> (Outcome, Output) {
        let output = self.child.wait_with_output().await.unwrap();
        let printed = Output {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        // Shown with the test's own output (nextest shows it for a failing test).
        eprint!("{}", printed.stderr);
        assert!(output.status.success(), "replica failed: {printed:?}");
        let line = printed
            .stdout
            .lines()
            .find_map(|l| l.split_once("REPLICA ").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no result from the replica: {printed:?}"));
        let field = |name: &str| -> usize {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .unwrap()
                .parse()
                .unwrap()
        };
        (
            Outcome {
                ok: field("ok"),
                failed: field("failed"),
            },
            printed,
        )
    }
}

/// What an `api` replica reported last: requests answered 200, failed, longest wait for a token.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub ok: usize,
    pub failed: usize,
    pub longest: Duration,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.longest = self.longest.max(other.longest);
    }

    fn last_in(stdout: &str) -> Counts {
        let Some(line) = stdout.lines().rev().find_map(|l| l.strip_prefix("COUNTS ")) else {
            return Counts::default(); // killed before its first report
        };
        let field = |name: &str| -> u64 {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .unwrap()
                .parse()
                .unwrap()
        };
        Counts {
            ok: field("ok") as usize,
            failed: field("failed") as usize,
            longest: Duration::from_millis(field("longest_ms")),
        }
    }
}

impl Replica {
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// [`finish`](Self::finish) for an `api` replica (bounded: a minute at most), its counts.
    pub async fn counts(self) -> Counts {
        let (_, output) = tokio::time::timeout(Duration::from_secs(60), self.finish())
            .await
            .expect("a replica ran for over a minute");
        Counts::last_in(&output.stdout)
    }

    /// SIGKILL, and the counts an `api` replica reported before it.
    pub async fn kill(mut self) -> Counts {
        let _ = self.child.start_kill();
        let output = tokio::time::timeout(Duration::from_secs(10), self.child.wait_with_output())
            .await
            .expect("a killed replica did not end")
            .unwrap();
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        Counts::last_in(&String::from_utf8_lossy(&output.stdout))
    }
}

/// Waits for all `replicas` (`api` mode, none killed) and sums their counts.
pub async fn counts_of(replicas: Vec<Replica>) -> Counts {
    let mut total = Counts::default();
    for replica in replicas {
        total.add(replica.counts().await);
    }
    total
}

/// Starts `count` replicas with the same settings and sums their outcomes.
pub async fn fleet(count: usize, vars: Vec<(&'static str, String)>) -> Outcome {
    fleet_output(count, vars).await.0
}

/// [`fleet`], with everything the replicas printed.
pub async fn fleet_output(count: usize, vars: Vec<(&'static str, String)>) -> (Outcome, Output) {
    let replicas: Vec<_> = (0..count).map(|_| Replica::start(&vars)).collect();
    let mut total = Outcome::default();
    let mut printed = Output::default();
    for replica in replicas {
        let (outcome, output) = replica.finish().await;
        total.ok += outcome.ok;
        total.failed += outcome.failed;
        printed.stdout.push_str(&output.stdout);
        printed.stderr.push_str(&output.stderr);
    }
    (total, printed)
}

/// The settings of a replica using `auth`'s token endpoint, in `mode` (`burst` or `steady`),
/// with the store of `store` (none: each process alone).
pub fn vars(
    auth: &AuthServer,
    store: Option<&StoreServer>,
    mode: &str,
) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("TCC_TOKEN_ENDPOINT", auth.token_endpoint()),
        ("TCC_MODE", mode.to_string()),
    ];
    if let Some(store) = store {
        vars.extend(store.vars());
    }
    vars
}

pub fn free_port(also_bus: bool) -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Cluster nodes also listen on port + 10000 (the cluster bus).
        if !also_bus || (port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()) {
            return port;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Store servers.

/// One stored entry as the tests see it: `<store key>:token`, `:failure` or `:lease`, and the
/// bytes stored (for the token and failure: `<fingerprint>:<payload>`, the payload encrypted
/// when a key is set). Expired entries are left out.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub value: Vec<u8>,
}

/// A store server of one [`StoreKind`], stopped (and its files removed) on drop.
pub struct StoreServer {
    kind: StoreKind,
    servers: Servers,
}

enum Servers {
    Redis(Vec<RedisServer>),
    Postgres(PostgresServer),
}

impl StoreServer {
    pub fn start(kind: StoreKind) -> StoreServer {
        let servers = match kind {
            StoreKind::Redis => Servers::Redis(vec![RedisServer::start()]),
            StoreKind::RedisCluster => Servers::Redis(start_cluster()),
            StoreKind::Postgres => Servers::Postgres(PostgresServer::start()),
        };
        StoreServer { kind, servers }
    }

    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// The URL replicas use (for a cluster, the nodes' URLs joined by commas).
    pub fn url(&self) -> String {
        match &self.servers {
            Servers::Redis(nodes) => nodes
                .iter()
                .map(RedisServer::url)
                .collect::<Vec<_>>()
                .join(","),
            Servers::Postgres(server) => server.url(),
        }
    }

    /// The address of the (first) server: what a proxy in front of the store forwards to.
    pub fn address(&self) -> SocketAddr {
        let port = match &self.servers {
            Servers::Redis(nodes) => nodes[0].port,
            Servers::Postgres(server) => server.port,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A replica's settings for this store.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TCC_STORE", self.kind.name().to_string()),
            ("TCC_STORE_URL", self.url()),
        ]
    }

    /// A replica's settings for this store reached through `proxy` (which forwards to
    /// [`address`](Self::address)). Not for a cluster, whose nodes tell clients each other's
    /// addresses.
    pub fn vars_via(&self, proxy: SocketAddr) -> Vec<(&'static str, String)> {
        assert_ne!(self.kind, StoreKind::RedisCluster);
        let url = self
            .url()
            .replace(&self.address().to_string(), &proxy.to_string());
        vec![
            ("TCC_STORE", self.kind.name().to_string()),
            ("TCC_STORE_URL", url),
        ]
    }

    /// A secret in the URL that must never appear in an error or a log line (PostgreSQL's
    /// password; the Redis servers run without one).
    pub fn password(&self) -> Option<&'static str> {
        match self.servers {
            Servers::Redis(_) => None,
            Servers::Postgres(_) => Some(PostgresServer::PASSWORD),
        }
    }

    /// Stops the server(s): an outage, from the replicas' point of view.
    pub fn stop(&mut self) {
        match &mut self.servers {
            Servers::Redis(nodes) => nodes.iter_mut().for_each(RedisServer::stop),
            Servers::Postgres(server) => server.stop(),
        }
    }

    /// Starts the server(s) again, with the data they had (Redis: none, it persists nothing).
    pub fn restart(&mut self) {
        match &mut self.servers {
            Servers::Redis(nodes) => {
                assert_eq!(nodes.len(), 1, "a cluster is not restarted");
                nodes[0].restart();
            }
            Servers::Postgres(server) => server.restart(),
        }
    }

    /// Stalls the server(s) (SIGSTOP to every server process): connections stay open, the
    /// kernel still accepts new ones, nothing answers. [`resume`](Self::resume) undoes it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets stalled server(s) answer again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let mut pids = Vec::new();
        match &self.servers {
            Servers::Redis(nodes) => pids.extend(nodes.iter().filter_map(RedisServer::pid)),
            Servers::Postgres(server) => {
                if let Some(pid) = server.pid() {
                    // The postmaster and its backends (one process per connection).
                    pids.push(pid);
                    pids.extend(children(pid));
                }
            }
        }
        for pid in pids {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    /// Every live entry in the store.
    pub async fn entries(&self) -> Vec<Entry> {
        match &self.servers {
            Servers::Redis(nodes) => {
                let mut all = Vec::new();
                for node in nodes {
                    all.extend(redis_entries(&node.url()).await);
                }
                all
            }
            Servers::Postgres(server) => server.entries().await,
        }
    }

    /// Waits (at most `limit`) until an entry whose name ends with `suffix` (`:token`,
    /// `:lease`, `:failure`) is in the store.
    pub async fn wait_for(&self, suffix: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self
            .entries()
            .await
            .iter()
            .any(|e| e.name.ends_with(suffix))
        {
            assert!(Instant::now() < deadline, "no {suffix} entry in the store");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ----- Redis

/// A `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    process: Option<Child>,
    dir: PathBuf,
    cluster: bool,
    /// More `redis-server` arguments (`--replicaof ...`).
    extra: Vec<String>,
    /// Runs `redis-sentinel` with this configuration instead.
    sentinel: Option<PathBuf>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_on(free_port(false), false)
    }

    pub fn start_on(port: u16, cluster: bool) -> RedisServer {
        Self::start_with(port, cluster, &[])
    }

    /// A server with more arguments (`["--replicaof", "127.0.0.1", "6379"]`).
    pub fn start_with(port: u16, cluster: bool, extra: &[&str]) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("tcc-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            port,
            process: None,
            dir,
            cluster,
            extra: extra.iter().map(|a| a.to_string()).collect(),
            sentinel: None,
        };
        server.restart();
        server
    }

    /// A `redis-sentinel` monitoring the master on `master_port` as [`SentinelSet::MASTER`]
    /// (quorum 2), quick to act: the master is down after 1 s without an answer.
    pub fn sentinel(master_port: u16) -> RedisServer {
        let port = free_port(false);
        let dir = std::env::temp_dir().join(format!("tcc-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("sentinel.conf");
        let name = SentinelSet::MASTER;
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {name} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir.display()
            ),
        )
        .unwrap();
        let mut server = RedisServer {
            port,
            process: None,
            dir,
            cluster: false,
            extra: Vec::new(),
            sentinel: Some(config),
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let mut command = match &self.sentinel {
            Some(config) => {
                let mut command = Command::new("redis-sentinel");
                command.arg(config);
                command
            }
            None => {
                let mut command = Command::new("redis-server");
                command
                    .args(["--port", &self.port.to_string()])
                    .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args(["--dir", self.dir.to_str().unwrap()])
                    .args(&self.extra);
                command
            }
        };
        command.stdout(Stdio::null());
        if self.cluster {
            command.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
        }
        self.process = Some(
            command
                .spawn()
                .expect("redis-server and redis-sentinel must be installed (see .ci/setup)"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to the server process.
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    /// One command, its first reply line (`None`: no answer).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        Some(self.reply(args)?.lines().next()?.to_owned())
    }

    /// One command, its whole reply (as far as one read gets it), in RESP.
    pub fn reply(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut reply = vec![0u8; 64 * 1024];
        let n = stream.read(&mut reply).ok()?;
        Some(String::from_utf8_lossy(&reply[..n]).into_owned())
    }

    /// The names of the keys stored that end in `suffix` (`:token`, `:lease`).
    pub fn keys(&self, suffix: &str) -> Vec<String> {
        let reply = self
            .reply(&["KEYS", &format!("*{suffix}")])
            .unwrap_or_default();
        reply
            .lines()
            .filter(|l| l.ends_with(suffix))
            .map(str::to_owned)
            .collect()
    }

    /// Whether the server's `ROLE` is `role` (`master`, `slave`).
    pub fn has_role(&self, role: &str) -> bool {
        // `*<n>`, `$<len>`, then the role's name.
        self.reply(&["ROLE"])
            .is_some_and(|reply| reply.lines().nth(2) == Some(role))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three masters as a Redis Cluster, ready.
fn start_cluster() -> Vec<RedisServer> {
    let nodes: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start_on(free_port(true), true))
        .collect();
    let addresses: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(created.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    while !nodes.iter().all(|n| {
        let mut stream = TcpStream::connect(("127.0.0.1", n.port)).unwrap();
        stream.write_all(b"CLUSTER INFO\r\n").unwrap();
        let mut reply = vec![0u8; 4096];
        let read = stream.read(&mut reply).unwrap();
        String::from_utf8_lossy(&reply[..read]).contains("cluster_state:ok")
    }) {
        assert!(
            Instant::now() < deadline,
            "the cluster did not become ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    nodes
}

/// Every key and value in one Redis server.
#[cfg(feature = "redis")]
async fn redis_entries(url: &str) -> Vec<Entry> {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut out = Vec::new();
    for key in keys {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        if let Some(value) = value {
            // `tcc:{<key>}:<slot>` → `<key>:<slot>`
            let name = key
                .strip_prefix("tcc:{")
                .map(|rest| rest.replacen("}:", ":", 1))
                .unwrap_or(key);
            out.push(Entry { name, value });
        }
    }
    out
}

#[cfg(not(feature = "redis"))]
async fn redis_entries(_url: &str) -> Vec<Entry> {
    panic!("the Redis stores need the cargo feature `redis`")
}

// ----- PostgreSQL

/// A PostgreSQL server of its own (`initdb` into a temporary directory) on a free loopback
/// port, with a user `tcc` whose password is [`PASSWORD`](Self::PASSWORD) (SCRAM), stopped
/// and removed on drop.
pub struct PostgresServer {
    pub port: u16,
    dir: PathBuf,
    process: Option<Child>,
}

/// The directory of PostgreSQL's server programs: `TCC_PG_BIN`, else the newest of Debian's
/// `/usr/lib/postgresql/<version>/bin`.
fn postgres_bin() -> PathBuf {
    if let Some(dir) = env("TCC_PG_BIN") {
        return dir.into();
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server must be installed (see .ci/setup), or TCC_PG_BIN set")
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no /usr/lib/postgresql/<version>/bin/postgres")
        .1
}

/// Whether this process runs as root (then PostgreSQL must run as someone else).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|ids| ids.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

/// The processes whose parent is `pid` (from /proc).
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let child: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // `pid (comm) state ppid ...`: the command may hold spaces, so split after `)`.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// `nobody`'s ids: PostgreSQL's user when the tests run as root (as CI does).
const NOBODY: u32 = 65534;

fn as_postgres_user(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("setpriv");
        command
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
                "--",
            ])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl PostgresServer {
    /// The password of the `tcc` user; tests check that it never appears in output.
    pub const PASSWORD: &'static str = "pg-pass-7f3e9c";

    pub fn start() -> PostgresServer {
        let port = free_port(false);
        // As root, a directory `nobody` can reach: TMPDIR may be private to root.
        let base = if running_as_root() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("tcc-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let password_file = dir.join("password");
        std::fs::write(&password_file, Self::PASSWORD).unwrap();
        if running_as_root() {
            std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
            std::os::unix::fs::chown(&password_file, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let output = as_postgres_user(&postgres_bin().join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "tcc",
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .args(["--no-sync", "--no-instructions"])
            .arg(format!("--pwfile={}", password_file.display()))
            .current_dir(&dir)
            .output()
            .expect("initdb must be installed (see .ci/setup)");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut server = PostgresServer {
            port,
            dir,
            process: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://tcc:{}@127.0.0.1:{}/postgres",
            Self::PASSWORD,
            self.port
        )
    }

    pub fn restart(&mut self) {
        let log_path = self.dir.join(format!("log-{}", fastrand::u32(..)));
        let log = std::fs::File::create(&log_path).unwrap();
        let process = as_postgres_user(&postgres_bin().join("postgres"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=60"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres must be installed (see .ci/setup)");
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(postgres_bin().join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to the server process.
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    /// Immediate shutdown (SIGQUIT): the server ends every connection and exits at once, as a
    /// crash would look to its clients.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            // A stalled server (see `StoreServer::pause`) must run to shut down.
            for pid in children(process.id()) {
                let _ = Command::new("kill")
                    .args(["-CONT", &pid.to_string()])
                    .status();
            }
            let _ = Command::new("kill")
                .args(["-CONT", &process.id().to_string()])
                .status();
            let _ = Command::new("kill")
                .args(["-QUIT", &process.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while process.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = process.kill();
                    let _ = process.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Every live entry of the store's default table.
    #[cfg(feature = "postgres")]
    pub async fn entries(&self) -> Vec<Entry> {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(connection);
        let exists: bool = client
            .query_one("SELECT to_regclass('tcc_token_store') IS NOT NULL", &[])
            .await
            .unwrap()
            .get(0);
        let mut out = Vec::new();
        if exists {
            let rows = client
                .query(
                    "SELECT store_key, \
                       CASE WHEN token_expires_at > now() THEN token_fingerprint END, \
                       CASE WHEN token_expires_at > now() THEN token_payload END, \
                       CASE WHEN failure_expires_at > now() THEN failure_fingerprint END, \
                       CASE WHEN failure_expires_at > now() THEN failure_payload END, \
                       CASE WHEN lease_expires_at > now() THEN lease_owner END \
                     FROM tcc_token_store",
                    &[],
                )
                .await
                .unwrap();
            for row in rows {
                let key: String = row.get(0);
                for (slot, fingerprint, payload) in [("token", 1, 2), ("failure", 3, 4)] {
                    let fingerprint: Option<String> = row.get(fingerprint);
                    let payload: Option<Vec<u8>> = row.get(payload);
                    if let (Some(fingerprint), Some(payload)) = (fingerprint, payload) {
                        let mut value = fingerprint.into_bytes();
                        value.push(b':');
                        value.extend(payload);
                        out.push(Entry {
                            name: format!("{key}:{slot}"),
                            value,
                        });
                    }
                }
                if let Some(owner) = row.get::<_, Option<String>>(5) {
                    out.push(Entry {
                        name: format!("{key}:lease"),
                        value: owner.into_bytes(),
                    });
                }
            }
        }
        drop(client);
        let _ = task.await;
        out
    }

    #[cfg(not(feature = "postgres"))]
    pub async fn entries(&self) -> Vec<Entry> {
        panic!("the PostgreSQL store needs the cargo feature `postgres`")
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ----- Redis Sentinel

/// One master, its replica and three Sentinels monitoring it as [`MASTER`](Self::MASTER), on
/// loopback, ready for a failover (each Sentinel knows the replica and the two others).
pub struct SentinelSet {
    pub master: Option<RedisServer>,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
}

impl SentinelSet {
    /// The name the Sentinels know the master by.
    pub const MASTER: &'static str = "tcc";

    pub async fn start() -> SentinelSet {
        let master = RedisServer::start();
        let replica = RedisServer::start_with(
            free_port(false),
            false,
            &["--replicaof", "127.0.0.1", &master.port.to_string()],
        );
        let sentinels: Vec<RedisServer> =
            (0..3).map(|_| RedisServer::sentinel(master.port)).collect();
        // A failover needs a majority of the Sentinels to agree: each must have met the others
        // (hello messages every 2 s) and the replica (the master's INFO).
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sentinels.iter().all(|s| {
            let info = s
                .reply(&["SENTINEL", "MASTER", Self::MASTER])
                .unwrap_or_default();
            let field = |name: &str| {
                let mut lines = info.lines();
                while let Some(line) = lines.next() {
                    if line == name {
                        lines.next();
                        return lines.next().map(str::to_owned);
                    }
                }
                None
            };
            field("num-other-sentinels").as_deref() == Some("2")
                && field("num-slaves").as_deref() == Some("1")
        }) {
            assert!(
                Instant::now() < deadline,
                "the Sentinels did not see each other"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        SentinelSet {
            master: Some(master),
            replica,
            sentinels,
        }
    }

    /// The Sentinels' URLs, joined by commas.
    pub fn url(&self) -> String {
        self.sentinels
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A replica's settings for this store (`redis-sentinel`).
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TCC_STORE", "redis-sentinel".to_string()),
            ("TCC_STORE_URL", self.url()),
        ]
    }

    /// Waits (at most 15 s) until `node` has `role` (`master`, `slave`).
    pub async fn wait_role(node: &RedisServer, role: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !node.has_role(role) {
            assert!(Instant::now() < deadline, "no {role} after 15 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ----- A TCP proxy

/// A TCP proxy on loopback in front of one upstream (replicas -> proxy -> store); what it does
/// to the traffic is set at any time through [`control`](Self::control). Stops when dropped.
pub struct Proxy {
    pub port: u16,
    pub control: std::sync::Arc<ProxyControl>,
    task: tokio::task::JoinHandle<()>,
}

/// The faults a [`Proxy`] plays.
#[derive(Default)]
pub struct ProxyControl {
    /// While set, no byte moves in either direction (held, not dropped).
    pub stalled: AtomicBool,
    /// Added before each chunk from a client (a command) is forwarded.
    pub latency_ms: AtomicU64,
    /// The next this-many commands are forwarded, then their connection is reset (RST) before
    /// the reply comes back.
    pub resets: AtomicUsize,
    /// Connections reset so far.
    pub reset_done: AtomicUsize,
    /// The next this-many commands that name a lease key are held `slow_lease_ms` first.
    pub slow_lease_commands: AtomicUsize,
    pub slow_lease_ms: AtomicU64,
    /// Slowed lease commands forwarded so far.
    pub slow_lease_forwarded: AtomicUsize,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Proxy {
        Self::start_on(0, upstream).await
    }

    /// A proxy listening on `port` (0: any free one).
    pub async fn start_on(port: u16, upstream: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let control = std::sync::Arc::new(ProxyControl::default());
        let upstream: SocketAddr = ([127, 0, 0, 1], upstream).into();
        let task = tokio::spawn({
            let control = control.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(relay(client, upstream, control.clone()));
                }
            }
        });
        Proxy {
            port,
            control,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn address(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ProxyControl {
    async fn unstalled(&self) {
        // Bounded by the test that stalls: it always lifts the stall.
        while self.stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn take(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

async fn relay(
    mut client: tokio::net::TcpStream,
    upstream: SocketAddr,
    control: std::sync::Arc<ProxyControl>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    // Closed with a zero linger: a reset is an RST, as when a middlebox or a node dies.
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let up = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            control.unstalled().await;
            let chunk = &buffer[..n];
            let latency = control.latency_ms.load(Ordering::SeqCst);
            if latency > 0 {
                tokio::time::sleep(Duration::from_millis(latency)).await;
            }
            let slowed = chunk.windows(6).any(|w| w == b":lease")
                && ProxyControl::take(&control.slow_lease_commands);
            if slowed {
                let ms = control.slow_lease_ms.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if server_write.write_all(chunk).await.is_err() {
                return;
            }
            if slowed {
                control.slow_lease_forwarded.fetch_add(1, Ordering::SeqCst);
            }
            if ProxyControl::take(&control.resets) {
                // Let the command reach the store (it may well run), then cut before the reply.
                tokio::time::sleep(Duration::from_millis(2)).await;
                control.reset_done.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    };
    let down = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            control.unstalled().await;
            if client_write.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}
