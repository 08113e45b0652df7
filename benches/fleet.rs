//! Fleet (issue 22): K replicas that need a token at the same moment share one token request
//! through Redis. How soon does a waiting replica hear that the token was written, and what does
//! the wait cost the store, as K grows?
//!
//! Each replica is a tokio task with a `TokenCache` of its own over a `RedisStore` of its own:
//! its own multiplexed connection and its own pub/sub connection, so Redis sees K clients and K
//! subscribers, and every command and notification is what K processes would cause. Tasks, not
//! processes: K processes on this 2-core machine would add K runtimes and process start-up to
//! what is measured without changing the store traffic; the one thing tasks share is the two
//! runtime workers that run the wake-ups (as K processes would share the two cores).
//!
//! One round is one expiry: the store is emptied (`FLUSHDB`, which keeps the subscriptions),
//! every replica gets a fresh cache (no token) and asks for a token at once. One of them takes
//! the lease and calls its source (a 20 ms token request); the others wait for the write. The
//! stores (connections, subscriptions, loaded scripts) live across rounds, as in a running
//! fleet; a first, unmeasured round warms them.
//!
//! Reported per K, median over the rounds:
//! * `written→last`: from the moment the holder sends the token's write to Redis (the start of
//!   `TokenStore::save`) to the last replica's `token()` returning it; also the median replica;
//! * store round trips per replica per expiry (`EVALSHA`/`EVAL`/`SUBSCRIBE` calls) and the
//!   commands Redis ran for them (scripts' inner commands included), from `INFO commandstats`
//!   after `CONFIG RESETSTAT`.
//!
//! Arms: `notified` (the `RedisStore` as shipped: waiters woken by pub/sub), and `polling` (the
//! same store with `TokenStore::changed` left at the trait's default, a sleep: the waiters
//! read again after 10 ms, doubling, jittered; what the fleet did before notifications).
//! Every round asserts one token request for the whole fleet.
//!
//! Needs `redis-server` and `redis-cli` on the PATH; the bench starts its own server on a free
//! loopback port. Run: `cargo bench --all-features --bench fleet`

#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::time::Instant;
use tower_client_credentials::store::{
    LeaseAttempt, Record, RedisStore, Slot, StoreKey, Stored, TokenStore,
};
use tower_client_credentials::{BoxError, BoxFuture, Error, Token, TokenCache, TokenSource};

const REPLICAS: [usize; 4] = [1, 4, 16, 64];
const SOURCE_DELAY: Duration = Duration::from_millis(20);

struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> Option<RedisServer> {
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--maxclients", "1000"])
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let server = RedisServer { child, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while server.cli(&["PING"]).trim() != "PONG" {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output();
        output
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Calls per command since the last `CONFIG RESETSTAT`.
    fn command_calls(&self) -> BTreeMap<String, u64> {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), calls))
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every replica's source: counted, 20 ms, an hour's token; all name one credential set.
struct Source {
    calls: Arc<AtomicUsize>,
    key: StoreKey,
}

impl TokenSource for Source {
    fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(SOURCE_DELAY).await;
            Token::bearer("fleet-token", Some(Duration::from_secs(3600)))
        })
    }

    fn store_key(&self) -> Option<StoreKey> {
        Some(self.key.clone())
    }
}

/// A replica's `RedisStore`, noting when a token write is sent; `notified: false` leaves
/// `changed` at the trait's default (a sleep: polling).
#[derive(Debug, Clone)]
struct Observed {
    inner: RedisStore,
    notified: bool,
    written: Arc<Mutex<Option<Instant>>>,
}

impl TokenStore for Observed {
    fn load<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Stored, BoxError>> {
        self.inner.load(key)
    }

    fn save<'a>(
        &'a self,
        key: &'a StoreKey,
        slot: Slot,
        record: Record,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        if slot == Slot::Token {
            self.written
                .lock()
                .unwrap()
                .get_or_insert_with(Instant::now);
        }
        self.inner.save(key, slot, record, ttl)
    }

    fn remove_if<'a>(
        &'a self,
        key: &'a StoreKey,
        slot: Slot,
        fingerprint: &'a str,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        self.inner.remove_if(key, slot, fingerprint)
    }

    fn acquire_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<LeaseAttempt, BoxError>> {
        self.inner.acquire_lease(key, owner, ttl)
    }

    fn renew_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        self.inner.renew_lease(key, owner, ttl)
    }

    fn release_lease<'a>(
        &'a self,
        key: &'a StoreKey,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        self.inner.release_lease(key, owner)
    }

    fn changed<'a>(
        &'a self,
        key: &'a StoreKey,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        if self.notified {
            self.inner.changed(key, timeout)
        } else {
            Box::pin(async move {
                tokio::time::sleep(timeout).await;
                Ok(())
            })
        }
    }

    fn lease_ttl(&self) -> Duration {
        TokenStore::lease_ttl(&self.inner)
    }

    fn operation_timeout(&self) -> Duration {
        TokenStore::operation_timeout(&self.inner)
    }
}

/// What one expiry showed.
struct Round {
    /// From the write's start to the last replica having the token.
    last: Duration,
    /// From the write's start to the median replica having it.
    median: Duration,
    /// Round trips (scripts and subscriptions) and all commands Redis ran, per replica.
    round_trips: f64,
    commands: f64,
}

/// One expiry for the fleet `stores`.
async fn round(redis: &RedisServer, stores: &[Observed], key: &StoreKey) -> Round {
    assert_eq!(redis.cli(&["FLUSHDB"]).trim(), "OK");
    for store in stores {
        *store.written.lock().unwrap() = None;
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let caches: Vec<TokenCache> = stores
        .iter()
        .map(|store| {
            TokenCache::builder(Source {
                calls: calls.clone(),
                key: key.clone(),
            })
            .store(store.clone())
            .build()
        })
        .collect();
    assert_eq!(redis.cli(&["CONFIG", "RESETSTAT"]).trim(), "OK");
    let start = Arc::new(tokio::sync::Barrier::new(caches.len()));
    let tasks: Vec<_> = caches
        .into_iter()
        .map(|cache| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let token = cache.token().await.expect("a token for every replica");
                assert_eq!(token.secret().expose_secret(), "fleet-token");
                Instant::now()
            })
        })
        .collect();
    let mut done = Vec::with_capacity(tasks.len());
    for task in tasks {
        done.push(task.await.unwrap());
    }
    let stats = redis.command_calls();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "{} replicas made more than one token request",
        stores.len()
    );
    let written = stores
        .iter()
        .filter_map(|s| *s.written.lock().unwrap())
        .min()
        .expect("one replica wrote the token");
    let mut after: Vec<Duration> = done
        .iter()
        .map(|t| t.saturating_duration_since(written))
        .collect();
    after.sort();
    let admin = ["info", "config|resetstat", "config", "flushdb"];
    let round_trips: u64 = ["evalsha", "eval", "subscribe", "script|load", "script"]
        .iter()
        .filter_map(|c| stats.get(*c))
        .sum();
    let commands: u64 = stats
        .iter()
        .filter(|(c, _)| !admin.contains(&c.as_str()))
        .map(|(_, n)| n)
        .sum();
    let k = stores.len() as f64;
    Round {
        last: *after.last().unwrap(),
        median: after[after.len() / 2],
        round_trips: round_trips as f64 / k,
        commands: commands as f64 / k,
    }
}

fn median(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.25), at(0.75))
}

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return; // `cargo test --benches`: nothing to measure
    }
    let Some(redis) = RedisServer::start() else {
        println!("ratio fleet/notified_written_to_last_ms skipped: no redis-server");
        return;
    };
    let quick = std::env::var_os("BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0");
    let rounds = std::env::var("FLEET_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(if quick { 8 } else { 25 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let key = StoreKey::builder("https://idp.example.com/token", "fleet-bench").build();
    println!("fleet: replicas = tasks, each with its own RedisStore (connection + pub/sub connection); {rounds} rounds per arm");
    let mut chart = Vec::new();
    for k in REPLICAS {
        let mut results: BTreeMap<&str, Vec<Round>> = BTreeMap::new();
        let arms = [("notified", true), ("polling", false)];
        let fleets: Vec<Vec<Observed>> = arms
            .iter()
            .map(|&(_, notified)| {
                (0..k)
                    .map(|_| Observed {
                        inner: RedisStore::new(&url).unwrap(),
                        notified,
                        written: Arc::default(),
                    })
                    .collect()
            })
            .collect();
        runtime.block_on(async {
            for fleet in &fleets {
                round(&redis, fleet, &key).await; // warm: connections, subscriptions, scripts
            }
            for r in 0..rounds {
                for i in 0..arms.len() {
                    let i = (i + r) % arms.len();
                    let result = round(&redis, &fleets[i], &key).await;
                    results.entry(arms[i].0).or_default().push(result);
                }
            }
        });
        for (arm, rounds) in &results {
            let ms = |f: fn(&Round) -> Duration| {
                median(rounds.iter().map(|r| f(r).as_secs_f64() * 1e3).collect())
            };
            let (last, last_q1, last_q3) = ms(|r| r.last);
            let (mid, _, _) = ms(|r| r.median);
            let (trips, _, _) = median(rounds.iter().map(|r| r.round_trips).collect());
            let (commands, _, _) = median(rounds.iter().map(|r| r.commands).collect());
            println!(
                "fleet/{arm}/K={k:<3} written→last {last:7.2} ms (quartiles {last_q1:.2}..{last_q3:.2}), \
                 written→median {mid:6.2} ms; per replica per expiry: {trips:.2} round trips, \
                 {commands:.2} Redis commands"
            );
            println!(
                "ratio fleet/{arm}_written_to_last_ms/{k} {last:.3} (quartiles {last_q1:.3}..{last_q3:.3})"
            );
            println!("ratio fleet/{arm}_round_trips_per_replica/{k} {trips:.3} (quartiles {trips:.3}..{trips:.3})");
            chart.push(format!("chart fleet {arm} {k} {last:.3}"));
            chart.push(format!("chart fleet-commands {arm} {k} {trips:.3}"));
        }
    }
    for line in chart {
        println!("{line}");
    }
}
