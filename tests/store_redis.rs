//! A fleet of replicas sharing one token through Redis (issue 13).
//!
//! Replicas are separate OS processes: this test binary re-running itself with `--exact
//! replica` and its settings in `TCC_*` environment variables, against one loopback
//! [`AuthServer`] (which counts token requests) in the parent. Every test starts its own
//! `redis-server` (or three, as a Cluster) on free loopback ports and kills it when done.
//! Needs `redis-server` and `redis-cli` on the PATH (`.ci/setup` installs them).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tower_client_credentials::store::RedisStore;
use tower_client_credentials::testing::{AuthServer, Behavior};
use tower_client_credentials::{ClientAuthMethod, ClientCredentials, TokenCache};

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
    let credentials = ClientCredentials::builder()
        .token_endpoint(env("TCC_TOKEN_ENDPOINT").unwrap())
        .unwrap()
        .client_id(AuthServer::CLIENT_ID)
        .client_secret(AuthServer::CLIENT_SECRET)
        // One method: with negotiation, a refused client is tried with both, which would
        // double every count below.
        .auth_method(ClientAuthMethod::ClientSecretBasic)
        .build()
        .unwrap();
    let backoff = Duration::from_millis(env_u64("TCC_BACKOFF_MS", 100));
    let mut cache = TokenCache::builder(credentials)
        .refresh_jitter(0.0)
        .backoff_base(backoff)
        // The fleet tests refuse with `invalid_client`, a permanent failure: the same short
        // schedule for both kinds keeps them short.
        .permanent_backoff_base(backoff)
        .max_permanent_backoff(backoff)
        .max_backoff(backoff.max(Duration::from_millis(env_u64("TCC_MAX_BACKOFF_MS", 30_000))))
        .refresh_timeout(Duration::from_secs(20));
    let store = match (env("TCC_REDIS"), env("TCC_CLUSTER")) {
        (Some(url), _) => Some(RedisStore::new(&url).unwrap()),
        (None, Some(urls)) => Some(RedisStore::cluster(urls.split(',')).unwrap()),
        (None, None) => None,
    };
    if let Some(mut store) = store {
        store = store.lease_ttl(Duration::from_millis(env_u64("TCC_LEASE_MS", 10_000)));
        // Longer than the 250 ms default: on a loaded 2-core machine running the whole suite, a
        // store operation that times out sends its replica to the token endpoint alone (the
        // designed fallback), which would blur the counts these tests compare.
        store = store.operation_timeout(Duration::from_millis(env_u64("TCC_OP_TIMEOUT_MS", 1_000)));
        if let Some(key) = env("TCC_KEY") {
            store = store.encryption_key([key.as_bytes()[0]; 32]);
        }
        cache = cache.store(store);
    }
    let cache = cache.build();
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
        // A request every 10 ms for `TCC_SECONDS`, each one needing a valid token.
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

// ---------------------------------------------------------------------------------------------
// The parent's side.

struct Replica {
    child: tokio::process::Child,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    ok: usize,
    failed: usize,
}

impl Replica {
    fn start(vars: &[(&str, String)]) -> Replica {
        let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
        command
            .args(["replica", "--exact", "--nocapture", "--test-threads=1"])
            .env("TCC_ROLE", "replica")
            .env_remove("TCC_REDIS")
            .env_remove("TCC_CLUSTER")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (name, value) in vars {
            command.env(name, value);
        }
        Replica {
            child: command.spawn().unwrap(),
        }
    }

    async fn finish(self) -> (Outcome, String) {
        let output = self.child.wait_with_output().await.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "replica failed: {stdout}");
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("REPLICA ").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no result from the replica: {stdout}"));
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
            stdout,
        )
    }
}

/// Starts `count` replicas with the same settings and sums their outcomes.
async fn fleet(count: usize, vars: Vec<(&'static str, String)>) -> Outcome {
    let replicas: Vec<_> = (0..count).map(|_| Replica::start(&vars)).collect();
    let mut total = Outcome::default();
    for replica in replicas {
        let (outcome, _) = replica.finish().await;
        total.ok += outcome.ok;
        total.failed += outcome.failed;
    }
    total
}

/// A `redis-server` on a free loopback port, killed on drop.
struct RedisServer {
    port: u16,
    process: Option<Child>,
    dir: std::path::PathBuf,
    cluster: bool,
}

fn free_port(also_bus: bool) -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Cluster nodes also listen on port + 10000 (the cluster bus).
        if !also_bus || (port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()) {
            return port;
        }
    }
}

impl RedisServer {
    fn start() -> RedisServer {
        Self::start_on(free_port(false), false)
    }

    fn start_on(port: u16, cluster: bool) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("tcc-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            port,
            process: None,
            dir,
            cluster,
        };
        server.restart();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", self.dir.to_str().unwrap()])
            .stdout(Stdio::null());
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
                .expect("redis-server must be installed (see .ci/setup)"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// One inline command, its first reply line (`None`: no answer).
    fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut reply = vec![0u8; 64 * 1024];
        let n = stream.read(&mut reply).ok()?;
        let text = String::from_utf8_lossy(&reply[..n]).into_owned();
        Some(text.lines().next()?.to_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every key and value in a Redis server, through the redis crate.
async fn dump(url: &str) -> Vec<(String, Vec<u8>)> {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut out = Vec::new();
    for key in keys {
        let value: Vec<u8> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        out.push((key, value));
    }
    out
}

fn vars(auth: &AuthServer, redis: Option<&str>, mode: &str) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("TCC_TOKEN_ENDPOINT", auth.token_endpoint()),
        ("TCC_MODE", mode.to_string()),
    ];
    if let Some(url) = redis {
        vars.push(("TCC_REDIS", url.to_string()));
    }
    vars
}

const K: usize = 6;

// ---------------------------------------------------------------------------------------------
// The cases.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_of_six_processes_makes_one_token_request_and_a_late_one_none() {
    let redis = RedisServer::start();
    let auth = AuthServer::start().await.unwrap();
    let without = AuthServer::start().await.unwrap();
    // A slow token endpoint, so that every replica arrives while the first request runs.
    auth.set_default_behavior(Some(Behavior::Delay(Duration::from_millis(300))));
    without.set_default_behavior(Some(Behavior::Delay(Duration::from_millis(300))));
    let (shared, alone) = tokio::join!(
        fleet(K, vars(&auth, Some(&redis.url()), "burst")),
        fleet(K, vars(&without, None, "burst")),
    );
    assert_eq!(
        shared,
        Outcome {
            ok: K * 50,
            failed: 0
        }
    );
    assert_eq!(
        alone,
        Outcome {
            ok: K * 50,
            failed: 0
        }
    );
    println!(
        "cold start, {K} processes x 50 requests: {} token request(s) with the store, {} without",
        auth.token_requests(),
        without.token_requests()
    );
    assert_eq!(auth.token_requests(), 1);
    assert_eq!(without.token_requests(), K);

    let late = fleet(1, vars(&auth, Some(&redis.url()), "burst")).await;
    assert_eq!(late, Outcome { ok: 50, failed: 0 });
    assert_eq!(
        auth.token_requests(),
        1,
        "a late process reads the stored token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_several_lifetimes_a_fleet_makes_as_many_token_requests_as_one_process() {
    let redis = RedisServer::start();
    let lifetime = Duration::from_secs(2);
    let (single, shared, alone) = (
        AuthServer::builder()
            .token_lifetime(lifetime)
            .start()
            .await
            .unwrap(),
        AuthServer::builder()
            .token_lifetime(lifetime)
            .start()
            .await
            .unwrap(),
        AuthServer::builder()
            .token_lifetime(lifetime)
            .start()
            .await
            .unwrap(),
    );
    let run = |auth: &AuthServer, redis: Option<&str>| {
        let mut v = vars(auth, redis, "steady");
        v.push(("TCC_MILLIS", "7000".to_string()));
        v
    };
    let (one, fleet_shared, fleet_alone) = tokio::join!(
        fleet(1, run(&single, None)),
        fleet(K, run(&shared, Some(&redis.url()))),
        fleet(K, run(&alone, None)),
    );
    for outcome in [one, fleet_shared, fleet_alone] {
        assert_eq!(outcome.failed, 0, "{outcome:?}");
    }
    println!(
        "7 s of 2 s tokens: one process {} token requests; {K} processes {} with the store, {} \
         without",
        single.token_requests(),
        shared.token_requests(),
        alone.token_requests()
    );
    assert!(single.token_requests() >= 3);
    assert!(
        shared.token_requests() <= single.token_requests() + 1,
        "{} with the store against {} for one process",
        shared.token_requests(),
        single.token_requests()
    );
    assert!(alone.token_requests() >= K * (single.token_requests() - 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_killed_mid_refresh_is_replaced_after_the_lease_ttl() {
    let redis = RedisServer::start();
    let auth = AuthServer::start().await.unwrap();
    auth.set_default_behavior(Some(Behavior::Hang));
    let mut v = vars(&auth, Some(&redis.url()), "burst");
    v.push(("TCC_LEASE_MS", "2000".to_string()));
    let mut holder = Replica::start(&v);
    // Wait until the holder has the lease; its token request hangs (and is never answered, so
    // the server does not count it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dump(&redis.url())
        .await
        .iter()
        .any(|(k, _)| k.ends_with(":lease"))
    {
        assert!(Instant::now() < deadline, "the first replica took no lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed_at = Instant::now();
    holder.child.start_kill().unwrap(); // SIGKILL
    holder.child.wait().await.unwrap();
    auth.set_default_behavior(None);

    let started = Instant::now();
    let (outcome, _) = Replica::start(&v).finish().await;
    assert_eq!(outcome, Outcome { ok: 50, failed: 0 });
    assert_eq!(
        auth.token_requests(),
        1,
        "one answered token request: the new holder's"
    );
    println!(
        "takeover: the next process got its token {} ms after the holder was killed (lease 2000 \
         ms)",
        killed_at.elapsed().as_millis()
    );
    // It waited for the dead holder's lease to expire rather than fetching at once.
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_fails_no_request_and_sharing_resumes_after_restart() {
    let mut redis = RedisServer::start();
    let auth = AuthServer::builder()
        .token_lifetime(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let mut v = vars(&auth, Some(&redis.url()), "steady");
    v.push(("TCC_MILLIS", "9000".to_string()));
    let replicas: Vec<_> = (0..3).map(|_| Replica::start(&v)).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.stop();
    let before_outage = auth.token_requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during_outage = auth.token_requests() - before_outage;
    redis.restart();
    // Sharing resumes: once a token is stored again, a new process makes no token request.
    let deadline = Instant::now() + Duration::from_secs(8);
    while !dump(&redis.url())
        .await
        .iter()
        .any(|(k, _)| k.ends_with(":token"))
    {
        assert!(
            Instant::now() < deadline,
            "no token was stored after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let requests = auth.token_requests();
    let late = fleet(1, vars(&auth, Some(&redis.url()), "burst")).await;
    assert_eq!(late, Outcome { ok: 50, failed: 0 });
    let late_requests = auth.token_requests() - requests;
    for replica in replicas {
        let (outcome, _) = replica.finish().await;
        assert_eq!(outcome.failed, 0, "{outcome:?}");
        assert!(outcome.ok > 100);
    }
    println!(
        "3 processes, Redis down for 3 s: {during_outage} token requests during the outage, \
         {late_requests} for a process started after the restart"
    );
    assert!(during_outage >= 1, "the replicas fetched on their own");
    // A token stored moments before could be in its last tenth of life: then the late process
    // makes the one refresh for everyone.
    assert!(late_requests <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_client_for_the_whole_fleet_costs_no_more_requests_than_one_process() {
    let redis = RedisServer::start();
    let (single, shared, alone) = (
        AuthServer::start().await.unwrap(),
        AuthServer::start().await.unwrap(),
        AuthServer::start().await.unwrap(),
    );
    for auth in [&single, &shared, &alone] {
        auth.set_default_behavior(Some(Behavior::invalid_client()));
    }
    let run = |auth: &AuthServer, redis: Option<&str>| {
        let mut v = vars(auth, redis, "steady");
        v.push(("TCC_MILLIS", "4000".to_string()));
        v.push(("TCC_BACKOFF_MS", "400".to_string()));
        v.push(("TCC_MAX_BACKOFF_MS", "400".to_string()));
        v.push(("TCC_EXPECT_ERRORS", "1".to_string()));
        v
    };
    let (one, fleet_shared, _) = tokio::join!(
        fleet(1, run(&single, None)),
        fleet(K, run(&shared, Some(&redis.url()))),
        fleet(K, run(&alone, None)),
    );
    assert_eq!(one.ok + fleet_shared.ok, 0);
    println!(
        "4 s of invalid_client: one process {} token requests; {K} processes {} with the store, \
         {} without",
        single.token_requests(),
        shared.token_requests(),
        alone.token_requests()
    );
    // Each backoff step of 400 ms waits at least 200 ms: the most one process can make.
    let most_for_one = 4000 / 200 + 1;
    assert!(single.token_requests() <= most_for_one);
    assert!(
        shared.token_requests() <= most_for_one,
        "{} with the store",
        shared.token_requests()
    );
    assert!(alone.token_requests() > most_for_one);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_encryption_key_no_stored_value_contains_the_token() {
    for encrypted in [true, false] {
        let redis = RedisServer::start();
        let auth = AuthServer::start().await.unwrap();
        let mut v = vars(&auth, Some(&redis.url()), "burst");
        v.push(("TCC_PRINT_TOKEN", "1".to_string()));
        v.push(("TCC_CONCURRENCY", "1".to_string()));
        if encrypted {
            v.push(("TCC_KEY", "k".to_string()));
        }
        let (outcome, stdout) = Replica::start(&v).finish().await;
        assert_eq!(outcome.ok, 1);
        let token = stdout
            .lines()
            .find_map(|l| l.split_once("TOKEN ").map(|(_, rest)| rest))
            .unwrap()
            .to_string();
        // A second process reads it back (so the stored value is usable, not garbage).
        let (second, again) = Replica::start(&v).finish().await;
        assert_eq!(second.ok, 1);
        assert!(again.contains(&token));
        assert_eq!(auth.token_requests(), 1);
        let stored = dump(&redis.url()).await;
        let holds_token = stored
            .iter()
            .any(|(_, value)| value.windows(token.len()).any(|w| w == token.as_bytes()));
        assert!(stored.iter().any(|(k, _)| k.ends_with(":token")));
        assert_eq!(holds_token, !encrypted, "encrypted: {encrypted}");
        assert!(stored
            .iter()
            .all(|(k, _)| !k.contains(AuthServer::CLIENT_ID)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_master_cluster_passes_the_cold_start_case() {
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
    let auth = AuthServer::start().await.unwrap();
    auth.set_default_behavior(Some(Behavior::Delay(Duration::from_millis(300))));
    let urls: Vec<String> = nodes.iter().map(RedisServer::url).collect();
    let mut v = vars(&auth, None, "burst");
    v.push(("TCC_CLUSTER", urls.join(",")));
    let outcome = fleet(K, v.clone()).await;
    assert_eq!(
        outcome,
        Outcome {
            ok: K * 50,
            failed: 0
        }
    );
    println!(
        "cluster cold start, {K} processes x 50 requests: {} token request(s)",
        auth.token_requests()
    );
    assert_eq!(auth.token_requests(), 1);
}

// ---------------------------------------------------------------------------------------------
// The store's own operations on a real Redis (branch store-model): self-contained, one server.

mod store_operations {
    use std::time::{Duration, Instant};

    use tower_client_credentials::store::{Record, RedisStore, Slot, StoreKey, TokenStore};

    use super::RedisServer;

    /// Waiters hear at once: `changed` resolves when another connection (another process)
    /// saves, removes or releases, not after its timeout; without Redis it is a bounded sleep.
    /// Ages and the atomic lease attempt come from the server (`TIME` inside the scripts).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changed_is_announced_by_writes_and_ages_are_the_servers() {
        let mut redis = RedisServer::start();
        let (a, b) = (
            RedisStore::new(&redis.url()).unwrap(),
            RedisStore::new(&redis.url()).unwrap(),
        );
        let key = StoreKey::builder("https://idp.example/token", "pubsub").build();
        // Each of a save, a compare-and-delete and a release wakes a waiter at once.
        let writes: [&str; 3] = ["save", "remove", "release"];
        let owner = "owner-a";
        for write in writes {
            let (waiting, waiting_key) = (a.clone(), key.clone());
            let waiter = tokio::spawn(async move {
                let started = Instant::now();
                waiting
                    .changed(&waiting_key, Duration::from_secs(5))
                    .await
                    .unwrap();
                started.elapsed()
            });
            // Subscribed (one round trip) well before the write.
            tokio::time::sleep(Duration::from_millis(300)).await;
            match write {
                "save" => {
                    let record = Record::new("fp-1", b"payload".to_vec());
                    b.save(&key, Slot::Token, record, Duration::from_secs(60))
                        .await
                        .unwrap();
                }
                "remove" => assert!(b.remove_if(&key, Slot::Token, "fp-1").await.unwrap()),
                _ => b.release_lease(&key, owner).await.unwrap(),
            }
            let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .unwrap()
                .unwrap();
            assert!(
                waited < Duration::from_secs(2),
                "{write}: woken after {waited:?}, not by the write"
            );
            if write == "remove" {
                // The lease for the release case, with both entries read in the same step.
                let record = Record::new("fp-2", b"second".to_vec());
                b.save(&key, Slot::Token, record, Duration::from_secs(60))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let attempt = a
                    .acquire_lease(&key, owner, Duration::from_secs(10))
                    .await
                    .unwrap();
                assert!(attempt.acquired);
                let token = attempt.stored.token.unwrap();
                assert_eq!(token.fingerprint(), "fp-2");
                assert_eq!(token.payload(), b"second");
                let age = token.age().unwrap();
                assert!(
                    age >= Duration::from_millis(250) && age < Duration::from_secs(5),
                    "{age:?}"
                );
                let other = b
                    .acquire_lease(&key, "owner-b", Duration::from_secs(10))
                    .await
                    .unwrap();
                assert!(!other.acquired);
                assert_eq!(other.stored.token.unwrap().fingerprint(), "fp-2");
            }
        }
        // Redis gone: a bounded sleep, no error.
        redis.stop();
        let fresh = RedisStore::new(&redis.url()).unwrap();
        let started = Instant::now();
        fresh
            .changed(&key, Duration::from_millis(300))
            .await
            .unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(290) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }

    fn credentials(auth: &super::AuthServer) -> tower_client_credentials::ClientCredentialsBuilder {
        tower_client_credentials::ClientCredentials::builder()
            .token_endpoint(auth.token_endpoint())
            .unwrap()
            .client_id(super::AuthServer::CLIENT_ID)
            .client_secret(super::AuthServer::CLIENT_SECRET)
            .auth_method(super::ClientAuthMethod::ClientSecretBasic)
    }

    /// Issue 19 defect 1 on a real Redis: replicas that load one DPoP key share one DPoP token
    /// (read back as DPoP, bound to that key), and a replica with a key of its own gets its
    /// own token; each token is bound (per the server) to the key of the replica using it.
    #[cfg(feature = "dpop")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_share_a_dpop_token_only_with_the_same_key() {
        use tower_client_credentials::dpop::DpopKey;
        let redis = RedisServer::start();
        let auth = super::AuthServer::start().await.unwrap();
        let replica = |key: &DpopKey| {
            let credentials = credentials(&auth).dpop(key.clone()).build().unwrap();
            super::TokenCache::builder(credentials)
                .store(RedisStore::new(&redis.url()).unwrap())
                .build()
        };
        let (shared, own) = (DpopKey::generate().unwrap(), DpopKey::generate().unwrap());
        let first = replica(&shared).token().await.unwrap();
        let second = replica(&shared).token().await.unwrap();
        assert_eq!(auth.token_requests(), 1);
        assert!(second.is_dpop(), "read back as {}", second.token_type());
        assert_eq!(second.dpop_thumbprint(), Some(shared.thumbprint()));
        use secrecy::ExposeSecret;
        let text = |t: &tower_client_credentials::Token| t.secret().expose_secret().to_owned();
        assert_eq!(text(&first), text(&second));
        assert_eq!(
            auth.dpop_jkt(&text(&second)).as_deref(),
            Some(shared.thumbprint())
        );
        let other = replica(&own).token().await.unwrap();
        assert_eq!(auth.token_requests(), 2);
        assert_ne!(text(&other), text(&first));
        assert_eq!(
            auth.dpop_jkt(&text(&other)).as_deref(),
            Some(own.thumbprint())
        );
    }

    /// Issue 19 defect 2 on a real Redis: a fleet restarted with a `max_lifetime` shorter than
    /// the provider's lifetime does not adopt a stored token past the cap (its caches would
    /// refuse it): one replica fetches, the others adopt that one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fleet_restarted_with_a_short_max_lifetime_fetches_and_shares() {
        let redis = RedisServer::start();
        let auth = super::AuthServer::start().await.unwrap();
        let replica = |max_lifetime: Option<Duration>| {
            let mut cache = super::TokenCache::builder(credentials(&auth).build().unwrap())
                .store(RedisStore::new(&redis.url()).unwrap());
            if let Some(max) = max_lifetime {
                cache = cache.max_lifetime(max);
            }
            cache.build()
        };
        // Before the restart: one-hour tokens, no cap.
        replica(None).token().await.unwrap();
        assert_eq!(auth.token_requests(), 1);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        // After: capped at 2 s, so the stored token (2.5 s old) is past its believed life.
        let capped = Some(Duration::from_secs(2));
        let started = Instant::now();
        let token = replica(capped).token().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(auth.token_requests(), 2);
        assert_eq!(token.lifetime(), Some(Duration::from_secs(3600)));
        // The next replica adopts it: still within its capped life.
        replica(capped).token().await.unwrap();
        assert_eq!(auth.token_requests(), 2);
    }

    /// A Redis user whose ACL allows no channel: writes still work (their announcements are
    /// best effort), and waiters poll.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_channel_permission_writes_work_and_waiters_poll() {
        let redis = RedisServer::start();
        let created = redis.command(&[
            "ACL",
            "SETUSER",
            "limited",
            "on",
            ">pw",
            "~*",
            "+@all",
            "resetchannels",
        ]);
        assert_eq!(created.as_deref(), Some("+OK"));
        let url = redis.url().replace("redis://", "redis://limited:pw@");
        let store = RedisStore::new(&url).unwrap();
        let key = StoreKey::builder("https://idp.example/token", "acl").build();
        let record = Record::new("fp", b"payload".to_vec());
        store
            .save(&key, Slot::Token, record, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(store.load(&key).await.unwrap().token.is_some());
        let started = Instant::now();
        store
            .changed(&key, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(290));
        assert!(store.remove_if(&key, Slot::Token, "fp").await.unwrap());
    }
}
