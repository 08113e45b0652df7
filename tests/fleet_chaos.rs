//! A fleet that survives its own infrastructure (issue 20): replicas sharing one token through
//! Redis while the network, Redis, Sentinel, the clocks and the processes themselves misbehave.
//!
//! Replicas are separate OS processes (this test binary re-running itself with `--exact
//! replica`, settings in `TCC_*` variables), each sending a request every 20 ms to a loopback
//! [`ApiServer`] that checks the token against the [`AuthServer`] that issued it (so a token a
//! replica believes valid but the server does not counts as a failed request, whatever the
//! replica's clock says). Each replica prints its counts (requests, failed, longest wait for a
//! token) as it goes, so a replica killed mid-run still reports what it did.
//!
//! Every fault is scripted and bounded in time: a TCP proxy in this process (tokio, loopback)
//! between replicas and Redis that stalls, slows or resets; Redis refusing writes (`maxmemory`);
//! `faketime` clocks; SIGKILL; a Sentinel failover. Each case asserts 0 failed requests in the
//! processes not killed, no wait for a token past the cache's bounds, and no more token requests
//! than one process alone makes (plus what each fault's fallback costs, stated per case). Each
//! prints a `CHAOS` line with its counts (the README's "Many replicas" table).
//!
//! Needs `redis-server`, `redis-sentinel` and `faketime` (`.ci/setup` installs them).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tower_client_credentials::store::{RedisStore, StoreKey, TokenStore};
use tower_client_credentials::testing::{ApiServer, AuthServer};
use tower_client_credentials::{ClientAuthMethod, ClientCredentials, TokenCache};

const API_KEY: &str = "chaos-api-key";
/// The replicas' `refresh_timeout`: the longest a request may wait for a token (a token request
/// of its own, or waiting for another process's, which the store bounds to half of this).
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);
/// Tokens live 3 s: refreshed every ~1.5 s (the margin is capped at half the lifetime), so a
/// 9 s run spans several lifetimes.
const LIFETIME: Duration = Duration::from_secs(3);
/// How often a replica refreshes: the refresh margin is capped at half the lifetime.
const REFRESH_EVERY_MS: u128 = 1_500;
/// After a failed store operation the coordinator leaves the store alone this long, fetching
/// alone (`OUTAGE_PAUSE` in src/store/mod.rs): a fault's cost lasts that much longer.
const OUTAGE_PAUSE: Duration = Duration::from_secs(2);

/// Refresh points a replica meets in `window` (at most): at each one inside a store outage it
/// fetches alone, the designed fallback.
fn refresh_points(window: Duration) -> usize {
    (window.as_millis() / REFRESH_EVERY_MS) as usize + 1
}

// ---------------------------------------------------------------------------------------------
// The replica: what a child process runs.

/// The entry point of a child process; in the parent's own run (no `TCC_ROLE`) it returns at
/// once: it is not a test of its own.
#[test]
fn replica() {
    if std::env::var("TCC_ROLE").as_deref() != Ok("replica") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run_replica());
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_u64(name: &str, default: u64) -> u64 {
    env(name).map_or(default, |v| v.parse().unwrap())
}

async fn run_replica() {
    let mut credentials = ClientCredentials::builder()
        .token_endpoint(env("TCC_TOKEN_ENDPOINT").unwrap())
        .unwrap()
        .client_id(AuthServer::CLIENT_ID)
        // One method: with negotiation, a refused client is tried with both.
        .auth_method(ClientAuthMethod::ClientSecretBasic);
    credentials = match env("TCC_SECRET_VAR") {
        // The secret as Kubernetes often hands it over: an environment variable, read at each
        // token request; every pod names the same variable, each pod has its own value.
        Some(var) => credentials.client_secret_source(
            tower_client_credentials::client_credentials::EnvSecret::new(var),
        ),
        None => credentials.client_secret(AuthServer::CLIENT_SECRET),
    };
    let credentials = credentials.build().unwrap();
    let backoff = Duration::from_millis(100);
    let mut cache = TokenCache::builder(credentials)
        .refresh_jitter(0.0)
        .backoff_base(backoff)
        .permanent_backoff_base(Duration::from_millis(env_u64(
            "TCC_PERMANENT_BACKOFF_MS",
            200,
        )))
        .max_permanent_backoff(Duration::from_secs(30))
        .max_backoff(Duration::from_secs(1))
        .refresh_timeout(REFRESH_TIMEOUT);
    let store = if let Some(url) = env("TCC_REDIS") {
        Some(RedisStore::new(&url).unwrap())
    } else if let Some(sentinels) = env("TCC_SENTINELS") {
        let sentinels: Vec<&str> = sentinels.split(',').collect();
        Some(RedisStore::sentinel(&sentinels, "tcc").unwrap())
    } else {
        None
    };
    if let Some(mut store) = store {
        store = store.lease_ttl(Duration::from_millis(env_u64("TCC_LEASE_MS", 2_000)));
        store = store.operation_timeout(Duration::from_millis(env_u64("TCC_OP_TIMEOUT_MS", 500)));
        cache = cache.store(store);
    }
    let cache = cache.build();
    let api: http::Uri = format!("{}/v1/items", env("TCC_API").unwrap())
        .parse()
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();

    let (mut ok, mut failed, mut longest) = (0usize, 0usize, Duration::ZERO);
    let started = Instant::now();
    let until = started + Duration::from_millis(env_u64("TCC_MILLIS", 9_000));
    let mut last_report = started;
    while Instant::now() < until {
        let asked = Instant::now();
        let token = cache.token().await;
        longest = longest.max(asked.elapsed());
        let accepted = match token {
            Ok(token) => {
                use secrecy::ExposeSecret;
                let request = http::Request::get(api.clone())
                    .header(
                        "authorization",
                        format!("Bearer {}", token.secret().expose_secret()),
                    )
                    .header("x-api-key", API_KEY)
                    .body(http_body_util::Empty::new())
                    .unwrap();
                match client.request(request).await {
                    Ok(response) if response.status() == 200 => true,
                    Ok(response) => {
                        if failed < 3 {
                            eprintln!(
                                "replica {}: the API answered {}",
                                std::process::id(),
                                response.status()
                            );
                        }
                        false
                    }
                    Err(e) => {
                        if failed < 3 {
                            eprintln!(
                                "replica {}: the API did not answer: {e}",
                                std::process::id()
                            );
                        }
                        false
                    }
                }
            }
            Err(e) => {
                if failed < 3 {
                    eprintln!("replica {}: no token: {e}", std::process::id());
                }
                false
            }
        };
        if accepted {
            ok += 1;
        } else {
            failed += 1;
            if failed == 3 {
                eprintln!(
                    "replica {}: (further failures counted, not shown)",
                    std::process::id()
                );
            }
        }
        if last_report.elapsed() >= Duration::from_millis(100) {
            last_report = Instant::now();
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
    println!("DONE");
}

// ---------------------------------------------------------------------------------------------
// The parent's side: replicas.

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    ok: usize,
    failed: usize,
    longest: Duration,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.longest = self.longest.max(other.longest);
    }
}

struct Replica {
    child: tokio::process::Child,
}

#[derive(Clone, Default)]
struct Settings {
    vars: Vec<(&'static str, String)>,
    /// Runs the replica under libfaketime with its wall clock moved by this many seconds (the
    /// monotonic clock stays real).
    clock_offset: Option<i64>,
}

impl Settings {
    fn new(auth: &AuthServer, api: &ApiServer) -> Settings {
        Settings {
            vars: vec![
                ("TCC_TOKEN_ENDPOINT", auth.token_endpoint()),
                ("TCC_API", api.url()),
            ],
            clock_offset: None,
        }
    }

    fn with(mut self, name: &'static str, value: impl ToString) -> Settings {
        self.vars.retain(|(n, _)| *n != name);
        self.vars.push((name, value.to_string()));
        self
    }

    fn redis(self, url: &str) -> Settings {
        self.with("TCC_REDIS", url)
    }
}

impl Replica {
    fn start(settings: &Settings) -> Replica {
        let exe = std::env::current_exe().unwrap();
        let mut command = match settings.clock_offset {
            Some(offset) => {
                let mut command = tokio::process::Command::new("faketime");
                command
                    .arg("-f")
                    .arg(format!("{offset:+}s"))
                    .arg(&exe)
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
                command
            }
            None => tokio::process::Command::new(&exe),
        };
        command
            .args(["replica", "--exact", "--nocapture", "--test-threads=1"])
            .env("TCC_ROLE", "replica")
            .env_remove("TCC_REDIS")
            .env_remove("TCC_SENTINELS")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (name, value) in &settings.vars {
            command.env(name, value);
        }
        Replica {
            child: command
                .spawn()
                .expect("the test binary (and `faketime`, see .ci/setup) must run"),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Waits for the replica to end (bounded: every replica runs for `TCC_MILLIS`) and returns
    /// its counts; `killed`: it was SIGKILLed, its last report counts.
    async fn finish(self, killed: bool) -> Counts {
        let output = tokio::time::timeout(Duration::from_secs(60), self.child.wait_with_output())
            .await
            .expect("a replica ran for over a minute")
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !killed {
            assert!(
                output.status.success() && stdout.contains("DONE"),
                "replica failed: {stdout}"
            );
        }
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

    async fn kill(mut self) -> Counts {
        let _ = self.child.start_kill(); // SIGKILL
        self.finish(true).await
    }
}

/// Waits for all `replicas` (none killed) and sums their counts.
async fn finish_all(replicas: Vec<Replica>) -> Counts {
    let mut total = Counts::default();
    for replica in replicas {
        total.add(replica.finish(false).await);
    }
    total
}

/// One process without a store, run beside a case for as long: the token requests one process
/// alone makes, the yardstick of every case.
async fn alone(millis: u64) -> (usize, Counts) {
    let auth = auth_server().await;
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let counts = Replica::start(&Settings::new(&auth, &api).with("TCC_MILLIS", millis))
        .finish(false)
        .await;
    (auth.token_requests(), counts)
}

async fn auth_server() -> AuthServer {
    AuthServer::builder()
        .token_lifetime(LIFETIME)
        .start()
        .await
        .unwrap()
}

/// The measured outcome of one case: printed for the README's table, then asserted.
struct Report<'a> {
    case: &'a str,
    counts: Counts,
    token_requests: usize,
    alone: usize,
    allowed_extra: usize,
    note: String,
}

impl Report<'_> {
    fn check(self) {
        let Report {
            case,
            counts,
            token_requests,
            alone,
            allowed_extra,
            note,
        } = self;
        println!(
            "CHAOS | {case} | {} | {} | {token_requests} (one process alone: {alone}) | {} ms | {note}",
            counts.ok + counts.failed,
            counts.failed,
            counts.longest.as_millis()
        );
        assert_eq!(counts.failed, 0, "{case}: failed requests: {counts:?}");
        assert!(counts.ok > 0, "{case}: no request made");
        assert!(
            counts.longest <= REFRESH_TIMEOUT,
            "{case}: a request waited {:?} for a token",
            counts.longest
        );
        assert!(
            token_requests <= alone + allowed_extra,
            "{case}: {token_requests} token requests, one process alone made {alone} (+{allowed_extra} allowed: {note})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Servers: redis-server, redis-sentinel.

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` (or `redis-sentinel`) on a free loopback port, killed on drop.
struct RedisServer {
    port: u16,
    process: Option<Child>,
    dir: std::path::PathBuf,
}

impl RedisServer {
    fn start(extra: &[&str]) -> RedisServer {
        Self::start_on(free_port(), extra)
    }

    fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("tcc-chaos-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let process = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", dir.to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (see .ci/setup)");
        let server = RedisServer {
            port,
            process: Some(process),
            dir,
        };
        server.wait_ready();
        server
    }

    /// A Sentinel monitoring `master` as `tcc` (quorum 2), quick to act: down after 1 s.
    fn sentinel(master: u16) -> RedisServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("tcc-chaos-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor tcc 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds tcc 1000\nsentinel failover-timeout tcc 5000\n\
                 sentinel parallel-syncs tcc 1\n",
                dir.display()
            ),
        )
        .unwrap();
        let process = Command::new("redis-sentinel")
            .arg(&config)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-sentinel must be installed (see .ci/setup)");
        let server = RedisServer {
            port,
            process: Some(process),
            dir,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// One command, the first line of its reply (`None`: no answer).
    fn command(&self, args: &[&str]) -> Option<String> {
        Some(self.reply(args)?.lines().next()?.to_owned())
    }

    /// One command, its whole (first read of the) reply.
    fn reply(&self, args: &[&str]) -> Option<String> {
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

    /// The names of the keys stored, ending in `suffix`.
    fn keys(&self, suffix: &str) -> Vec<String> {
        let reply = self
            .reply(&["KEYS", &format!("*{suffix}")])
            .unwrap_or_default();
        reply
            .lines()
            .filter(|l| l.ends_with(suffix))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy: replicas -> proxy -> Redis, on loopback, faults on command.

/// A TCP proxy in front of one upstream; what it does to the traffic is set at any time.
struct Proxy {
    port: u16,
    control: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Control {
    /// While set, no byte moves in either direction (held, not dropped).
    stalled: AtomicBool,
    /// Added before each chunk from a client (a command) is forwarded.
    latency_ms: AtomicU64,
    /// The next this-many commands are forwarded, then their connection is reset before the
    /// reply comes back.
    resets: AtomicUsize,
    /// Connections reset so far.
    reset_done: AtomicUsize,
    /// The next this-many commands that mention a lease key are held this long first.
    slow_lease_commands: AtomicUsize,
    slow_lease_ms: AtomicU64,
    /// Slowed lease commands forwarded so far.
    slow_lease_forwarded: AtomicUsize,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        Self::start_on(0, upstream).await
    }

    /// A proxy listening on `port` (0: any free one).
    async fn start_on(port: u16, upstream: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let control = Arc::new(Control::default());
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

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Control {
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

async fn relay(mut client: tokio::net::TcpStream, upstream: SocketAddr, control: Arc<Control>) {
    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    // Dropped with a zero linger: a reset is an RST, as when a middlebox or a node dies.
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let up = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match tokio::io::AsyncReadExt::read(&mut client_read, &mut buffer).await {
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
                && Control::take(&control.slow_lease_commands);
            if slowed {
                let ms = control.slow_lease_ms.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if tokio::io::AsyncWriteExt::write_all(&mut server_write, chunk)
                .await
                .is_err()
            {
                return;
            }
            if slowed {
                control.slow_lease_forwarded.fetch_add(1, Ordering::SeqCst);
            }
            if Control::take(&control.resets) {
                // Let the command reach Redis (it may well run), then cut before the reply.
                tokio::time::sleep(Duration::from_millis(2)).await;
                control.reset_done.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    };
    let down = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match tokio::io::AsyncReadExt::read(&mut server_read, &mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            control.unstalled().await;
            if tokio::io::AsyncWriteExt::write_all(&mut client_write, &buffer[..n])
                .await
                .is_err()
            {
                return;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

// ---------------------------------------------------------------------------------------------
// The cases. Four replicas unless said otherwise; tokens live 3 s; each run lasts 9 s.

const N: usize = 4;
const RUN_MS: u64 = 9_000;

/// Starts `count` replicas with `settings`.
fn start(count: usize, settings: &Settings) -> Vec<Replica> {
    (0..count).map(|_| Replica::start(settings)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_stalling_all_traffic_for_two_seconds() {
    let redis = RedisServer::start(&[]);
    let proxy = Proxy::start(redis.port).await;
    let auth = auth_server().await;
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let settings = Settings::new(&auth, &api)
        .redis(&proxy.url())
        .with("TCC_MILLIS", RUN_MS);
    let baseline = tokio::spawn(alone(RUN_MS));
    let replicas = start(N, &settings);
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    proxy.control.stalled.store(true, Ordering::SeqCst);
    let before = auth.token_requests();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    proxy.control.stalled.store(false, Ordering::SeqCst);
    let during = auth.token_requests() - before;
    let counts = finish_all(replicas).await;
    let (alone, _) = baseline.await.unwrap();
    // Through the stall, its last operation timeout (500 ms) and the pause after it, every
    // replica fetches alone at its refresh points (the designed fallback): at most N - 1 more
    // than one process at each.
    let window = Duration::from_millis(2_000 + 500) + OUTAGE_PAUSE;
    Report {
        case: "all traffic to Redis stalled for 2 s",
        counts,
        token_requests: auth.token_requests(),
        alone,
        allowed_extra: refresh_points(window) * (N - 1) + 1,
        note: format!("{during} token requests during the stall"),
    }
    .check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_with_300_ms_per_redis_command() {
    let redis = RedisServer::start(&[]);
    let proxy = Proxy::start(redis.port).await;
    proxy.control.latency_ms.store(300, Ordering::SeqCst);
    let auth = auth_server().await;
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let settings = Settings::new(&auth, &api)
        .with("TCC_MILLIS", RUN_MS)
        .with("TCC_OP_TIMEOUT_MS", 1_000);
    let baseline = tokio::spawn(alone(RUN_MS));
    let mut replicas = start(N - 1, &settings.clone().redis(&redis.url()));
    replicas.push(Replica::start(&settings.redis(&proxy.url())));
    let counts = finish_all(replicas).await;
    let (alone, _) = baseline.await.unwrap();
    Report {
        case: "one replica's Redis commands take 300 ms (timeout 1 s)",
        counts,
        token_requests: auth.token_requests(),
        alone,
        allowed_extra: 1,
        note: "the slow replica shares like the others".into(),
    }
    .check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reset_mid_command() {
    let redis = RedisServer::start(&[]);
    let proxy = Proxy::start(redis.port).await;
    let auth = auth_server().await;
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let settings = Settings::new(&auth, &api)
        .redis(&proxy.url())
        .with("TCC_MILLIS", RUN_MS);
    let baseline = tokio::spawn(alone(RUN_MS));
    let replicas = start(N, &settings);
    // Every 500 ms the next command is cut before its reply, for 7 s.
    let cutter = tokio::spawn({
        let control = proxy.control.clone();
        async move {
            for _ in 0..14 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                control.resets.store(1, Ordering::SeqCst);
            }
        }
    });
    let counts = finish_all(replicas).await;
    cutter.await.unwrap();
    let (alone, _) = baseline.await.unwrap();
    let resets = proxy.control.reset_done.load(Ordering::SeqCst);
    // Redis sees commands only around refresh points (every ~1.5 s): not every cut finds one.
    assert!(resets >= 3, "only {resets} connections were reset");
    // A command cut mid-way fails that operation: its replica fetches alone at its refresh
    // points during the pause that follows.
    Report {
        case: "a connection reset mid-command every 500 ms",
        counts,
        token_requests: auth.token_requests(),
        alone,
        allowed_extra: resets * refresh_points(OUTAGE_PAUSE) + 1,
        note: format!("{resets} connections reset"),
    }
    .check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refusing_every_write() {
    let redis = RedisServer::start(&[]);
    let auth = auth_server().await;
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let settings = Settings::new(&auth, &api)
        .redis(&redis.url())
        .with("TCC_MILLIS", RUN_MS);
    let baseline = tokio::spawn(alone(RUN_MS));
    let replicas = start(N, &settings);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    // From now on every write fails (OOM), reads work: the stored token stays readable until it
    // expires, and no lease or new token can be written.
    assert_eq!(
        redis
            .command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
            .as_deref(),
        Some("+OK")
    );
    assert_eq!(
        redis
            .command(&["CONFIG", "SET", "maxmemory", "1"])
            .as_deref(),
        Some("+OK")
    );
    assert!(redis
        .command(&["SET", "probe", "x"])
        .is_some_and(|reply| reply.starts_with("-OOM")));
    let counts = finish_all(replicas).await;
    let (alone, _) = baseline.await.unwrap();
    // Nothing can be shared once writes fail: each replica fetches on its own, never more
    // than a process without a store.
    Report {
        case: "Redis refuses every write (maxmemory 1, noeviction) after 2 s",
        counts,
        token_requests: auth.token_requests(),
        alone: N * alone,
        allowed_extra: N,
        note: "no sharing possible: bound is N processes alone".into(),
    }
    .check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_wall_clocks_five_minutes_behind_and_ahead() {
    let redis = RedisServer::start(&[]);
    let auth = auth_server().await;
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let settings = Settings::new(&auth, &api)
        .redis(&redis.url())
        .with("TCC_MILLIS", RUN_MS);
    let baseline = tokio::spawn(alone(RUN_MS));
    let mut replicas = Vec::new();
    for offset in [None, Some(-300), Some(300), None] {
        let mut settings = settings.clone();
        settings.clock_offset = offset;
        replicas.push(Replica::start(&settings));
    }
    let counts = finish_all(replicas).await;
    let (alone, _) = baseline.await.unwrap();
    Report {
        case: "one replica's wall clock 5 min behind, one 5 min ahead",
        counts,
        token_requests: auth.token_requests(),
        alone,
        allowed_extra: 1,
        note: "every token checked by the API against the issuer's clock".into(),
    }
    .check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_fleet() {
    let redis = RedisServer::start(&[]);
    let auth = auth_server().await;
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let settings = Settings::new(&auth, &api).redis(&redis.url());
    let total_ms = 12_000;
    let baseline = tokio::spawn(alone(total_ms));
    // Generation one runs 3..6 s (staggered); each is replaced by a process running to the
    // end as it stops: one process at a time goes away, as in a Deployment's rolling update.
    let started = Instant::now();
    let mut first = Vec::new();
    for i in 0..N as u64 {
        first.push(Replica::start(
            &settings.clone().with("TCC_MILLIS", 3_000 + i * 1_000),
        ));
    }
    let mut counts = Counts::default();
    let mut second = Vec::new();
    for replica in first {
        counts.add(replica.finish(false).await);
        let left = total_ms.saturating_sub(started.elapsed().as_millis() as u64);
        second.push(Replica::start(
            &settings.clone().with("TCC_MILLIS", left.max(1_000)),
        ));
    }
    counts.add(finish_all(second).await);
    let (alone, _) = baseline.await.unwrap();
    Report {
        case: "rolling restart: 4 processes replaced one by one over 12 s",
        counts,
        token_requests: auth.token_requests(),
        alone,
        allowed_extra: 1,
        note: "each new process reads the stored token".into(),
    }
    .check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_storm_over_several_token_lifetimes() {
    let redis = RedisServer::start(&[]);
    let auth = auth_server().await;
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let total_ms = 12_000u64;
    let settings = Settings::new(&auth, &api)
        .redis(&redis.url())
        .with("TCC_LEASE_MS", 1_000);
    let baseline = tokio::spawn(alone(total_ms));
    let started = Instant::now();
    let mut replicas: Vec<Replica> = start(N, &settings.clone().with("TCC_MILLIS", total_ms));
    let (mut killed, mut holders) = (Counts::default(), 0usize);
    let mut kills = 0usize;
    // Every 300 ms a random replica gets SIGKILL and a new one starts, until 1.5 s before the
    // end (the last ones then run out their time and report).
    while started.elapsed() < Duration::from_millis(total_ms - 1_500) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A kill while a lease is held may have hit its holder (whose token request, if
        // answered, is then made again by the next holder).
        if !redis.keys(":lease").is_empty() {
            holders += 1;
        }
        let victim = replicas.swap_remove(fastrand::usize(..replicas.len()));
        let pid = victim.pid();
        let counts = victim.kill().await;
        assert_eq!(
            counts.failed, 0,
            "replica {pid} failed requests before it was killed"
        );
        killed.add(counts);
        kills += 1;
        let left = total_ms.saturating_sub(started.elapsed().as_millis() as u64);
        replicas.push(Replica::start(
            &settings.clone().with("TCC_MILLIS", left.max(500)),
        ));
    }
    let mut counts = finish_all(replicas).await;
    counts.add(killed);
    let (alone, _) = baseline.await.unwrap();
    Report {
        case: "kill storm: SIGKILL a random replica every 300 ms and start another, 12 s",
        counts,
        token_requests: auth.token_requests(),
        alone,
        allowed_extra: 1 + holders,
        note: format!("{kills} kills, {holders} while a lease was held"),
    }
    .check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_stranded_at_cold_start() {
    // Issue 20, defect 6: the first replica's lease command reaches Redis after its own
    // operation timeout; the lease is taken but its taker has given up on it and fetches
    // alone. The other cold replicas must not wait out the lease TTL (4 s here) and fetch again.
    let redis = RedisServer::start(&[]);
    let proxy = Proxy::start(redis.port).await;
    proxy.control.slow_lease_commands.store(1, Ordering::SeqCst);
    proxy.control.slow_lease_ms.store(800, Ordering::SeqCst);
    let auth = auth_server().await;
    auth.set_token_lifetime(Duration::from_secs(30));
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let settings = Settings::new(&auth, &api)
        .with("TCC_MILLIS", 2_000)
        .with("TCC_LEASE_MS", 4_000)
        .with("TCC_OP_TIMEOUT_MS", 400);
    let first = Replica::start(&settings.clone().redis(&proxy.url()));
    // The others start once the late lease command has reached Redis (400 ms after the first
    // replica gave up on it): the lease is taken, by a process that fetched alone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.control.slow_lease_forwarded.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the first replica's lease command never came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let others = start(N - 1, &settings.redis(&redis.url()));
    let mut counts = first.finish(false).await;
    counts.add(finish_all(others).await);
    Report {
        case: "a lease stranded at cold start (lease taken after its taker's timeout)",
        counts,
        token_requests: auth.token_requests(),
        alone: 1,
        allowed_extra: 0,
        note: "lease TTL 4 s".into(),
    }
    .check();
}

/// A master, its replica and three Sentinels monitoring it as `tcc`, ready for a failover.
async fn sentinel_set() -> (RedisServer, RedisServer, Vec<RedisServer>) {
    let master = RedisServer::start(&[]);
    let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let sentinels: Vec<RedisServer> = (0..3).map(|_| RedisServer::sentinel(master.port)).collect();
    // Ready when every Sentinel knows the replica and the two other Sentinels (a failover
    // needs a majority of them to agree).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sentinels.iter().all(|s| {
        let info = s.reply(&["SENTINEL", "MASTER", "tcc"]).unwrap_or_default();
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
    (master, replica, sentinels)
}

/// Waits (bounded) until `node` says it is a master.
async fn promoted(node: &RedisServer) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !node
        .reply(&["ROLE"])
        .is_some_and(|role| role.contains("master"))
    {
        assert!(Instant::now() < deadline, "no failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `RedisStore::sentinel` follows a switchover: the old master is demoted to a replica (its
/// clients cut, writes refused with `READONLY`) and the store's next operations reach the new
/// master through the Sentinels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_store_follows_a_switchover() {
    let (master, replica, sentinels) = sentinel_set().await;
    let urls: Vec<String> = sentinels.iter().map(RedisServer::url).collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = RedisStore::sentinel(&urls, "tcc")
        .unwrap()
        .operation_timeout(Duration::from_millis(500));
    let key = StoreKey::builder("https://idp.example/token", "before").build();
    let taken = store
        .acquire_lease(&key, "me", Duration::from_secs(60))
        .await;
    assert!(taken.unwrap().acquired);
    let before = master.keys(":lease");
    assert_eq!(before.len(), 1, "written to the master");
    assert_eq!(
        sentinels[0]
            .command(&["SENTINEL", "FAILOVER", "tcc"])
            .as_deref(),
        Some("+OK")
    );
    promoted(&replica).await;
    // And the old master demoted (until then it still takes writes, which its resync with the
    // new master then drops: Sentinel's documented window of lost writes).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !master
        .reply(&["ROLE"])
        .is_some_and(|role| role.contains("slave"))
    {
        assert!(Instant::now() < deadline, "the old master was not demoted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let switched = Instant::now();
    let key = StoreKey::builder("https://idp.example/token", "after").build();
    let mut errors = 0;
    loop {
        match store
            .acquire_lease(&key, "me", Duration::from_secs(60))
            .await
        {
            Ok(attempt) => {
                assert!(attempt.acquired);
                break;
            }
            Err(_) => errors += 1,
        }
        assert!(
            switched.elapsed() < Duration::from_secs(10),
            "the store did not reach the new master"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "switchover: the store wrote to the new master {} ms after the old one was demoted \
         ({errors} failed operations meanwhile)",
        switched.elapsed().as_millis()
    );
    assert!(
        replica.keys(":lease").iter().any(|k| !before.contains(k)),
        "the second lease is on the new master"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_mid_run() {
    let (master, replica, sentinels) = sentinel_set().await;
    let mut master = Some(master);
    let urls: Vec<String> = sentinels.iter().map(RedisServer::url).collect();
    let auth = auth_server().await;
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let run_ms = 12_000;
    let settings = Settings::new(&auth, &api)
        .with("TCC_SENTINELS", urls.join(","))
        .with("TCC_MILLIS", run_ms);
    let baseline = tokio::spawn(alone(run_ms));
    let replicas = start(3, &settings);
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let killed_at = Instant::now();
    master.take().unwrap().kill();
    let before = auth.token_requests();
    // The Sentinels notice after 1 s and promote the replica.
    promoted(&replica).await;
    let failover = killed_at.elapsed();
    let during = auth.token_requests() - before;
    // Sharing resumes on the new master: a token is written there again.
    let written = Instant::now();
    replica.command(&["FLUSHALL"]);
    let deadline = Instant::now() + Duration::from_secs(6);
    while replica.keys(":token").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no token stored on the new master"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumed = written.elapsed();
    let counts = finish_all(replicas).await;
    let (alone, _) = baseline.await.unwrap();
    // While no master answers (the failover, and the pause after the last failure), each of
    // the 3 replicas fetches alone at its refresh points: at most 2 more than one process.
    Report {
        case: "Sentinel failover: master killed, replica promoted (3 Sentinels)",
        counts,
        token_requests: auth.token_requests(),
        alone,
        allowed_extra: 1 + refresh_points(failover + OUTAGE_PAUSE) * 2,
        note: format!(
            "failover took {} ms, {during} token requests meanwhile; a token was stored on the \
             new master {} ms after it was emptied",
            failover.as_millis(),
            resumed.as_millis()
        ),
    }
    .check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_where_old_pods_hold_a_revoked_secret_and_a_new_pod_starts() {
    // Issue 20, defect 4: old pods hold a secret the provider has revoked (their token stays
    // valid until it expires); their refreshes get `invalid_client`. A new pod with the new
    // secret must not adopt the old pods' failure: it fetches with its secret at once.
    let redis = RedisServer::start(&[]);
    let auth = AuthServer::builder()
        .token_lifetime(Duration::from_secs(4))
        .start()
        .await
        .unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let (old_secret, new_secret) = (AuthServer::CLIENT_SECRET, "the-next-secret");
    let settings = Settings::new(&auth, &api)
        .redis(&redis.url())
        .with("TCC_SECRET_VAR", "TCC_CLIENT_SECRET")
        // A permanent failure's backoff as in production (seconds): adopting it would show.
        .with("TCC_PERMANENT_BACKOFF_MS", 5_000);
    let old: Vec<Replica> = start(
        3,
        &settings
            .clone()
            .with("TCC_CLIENT_SECRET", old_secret)
            .with("TCC_MILLIS", 3_500),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    auth.add_client_secret(AuthServer::CLIENT_ID, new_secret);
    auth.revoke_client_secret(AuthServer::CLIENT_ID, old_secret);
    // The old pods refresh (~2 s in, half the 4 s lifetime) and are refused.
    let deadline = Instant::now() + Duration::from_secs(5);
    while auth.token_requests() < 2 {
        assert!(Instant::now() < deadline, "the old pods did not refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let new = Replica::start(
        &settings
            .clone()
            .with("TCC_CLIENT_SECRET", new_secret)
            .with("TCC_MILLIS", 4_000),
    );
    // The old pods stop (rolling update) before their token expires.
    let mut counts = finish_all(old).await;
    let new_counts = new.finish(false).await;
    counts.add(new_counts);
    let with_new = auth.token_requests_with_secret(new_secret);
    Report {
        case: "rotation: 3 old pods hold a revoked secret, a new pod starts",
        counts,
        token_requests: with_new,
        alone: 1,
        allowed_extra: 1,
        note: format!(
            "{} token requests with the old secret (the first one accepted); the new pod waited \
             at most {} ms",
            auth.token_requests_with_secret(old_secret),
            new_counts.longest.as_millis()
        ),
    }
    .check();
    assert!(with_new >= 1, "the new pod never used its secret");
}

/// Issue 20, defect 5: a Cluster store honours `operation_timeout`. One node holding every
/// slot, announced at a proxy's port that adds 300 ms to each command: with a 1 s operation
/// timeout every operation succeeds (before the fix, 250 ms timeouts fixed at construction
/// made each one fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_honours_the_operation_timeout() {
    // The proxy's port is needed before the node starts (it announces it).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    // A cluster node also listens on its port + 10000 (the cluster bus).
    let node_port = loop {
        let port = free_port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            break port;
        }
    };
    let node = RedisServer::start_on(
        node_port,
        &[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-announce-ip",
            "127.0.0.1",
            "--cluster-announce-port",
            &proxy_port.to_string(),
        ],
    );
    assert_eq!(
        node.command(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"])
            .as_deref(),
        Some("+OK")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node
        .reply(&["CLUSTER", "INFO"])
        .unwrap_or_default()
        .contains("cluster_state:ok")
    {
        assert!(
            Instant::now() < deadline,
            "the cluster did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(listener);
    let proxy = Proxy::start_on(proxy_port, node.port).await;
    proxy.control.latency_ms.store(300, Ordering::SeqCst);
    let store = RedisStore::cluster([proxy.url()])
        .unwrap()
        .operation_timeout(Duration::from_secs(1));
    let key = StoreKey::builder("https://idp.example/token", "c").build();
    for _ in 0..3 {
        let started = Instant::now();
        let loaded = tokio::time::timeout(Duration::from_secs(5), store.load(&key))
            .await
            .expect("bounded by the operation timeout");
        assert!(loaded.is_ok(), "{loaded:?}");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
    // And a timeout shorter than the answers fails them.
    let hasty = RedisStore::cluster([proxy.url()])
        .unwrap()
        .operation_timeout(Duration::from_millis(100));
    assert!(hasty.load(&key).await.is_err());
}
