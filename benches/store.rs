//! Cold start served from Redis and from PostgreSQL against one served by the token endpoint
//! (issues 13 and 21).
//!
//! Each iteration is a process's first token: a new `ClientCredentials` and `TokenCache`
//! (so a new HTTP connection pool, and for the store arms a new `RedisStore` or
//! `PostgresStore` and its connection), then `token().await`.
//!
//! * `store/cold_start_from_redis`: the token is already in Redis (a local `redis-server`
//!   started by the bench on a free loopback port, `--save '' --appendonly no`): one `MGET`
//!   after connecting, no token request (asserted).
//! * `store/cold_start_from_postgres`: the token is already in PostgreSQL (a server of its own
//!   made by `initdb` in a temporary directory, started by the bench on a free loopback port,
//!   `fsync=off`): a TCP connection with SCRAM-SHA-256 authentication (4096 PBKDF2 rounds on
//!   the client), the table check, then one `SELECT`, no token request (asserted).
//! * `store/cold_start_from_token_endpoint`: no store; one token request to the crate's
//!   loopback `AuthServer` over HTTP/1.1 (connect, POST, JSON).
//!
//! Both talk to servers on 127.0.0.1, so this measures client-side cost and loopback round trips;
//! a real identity provider adds its network latency and its own work (often tens to hundreds
//! of milliseconds) to the second arm only. Besides criterion's report, the bench prints a paired
//! comparison (alternating rounds, median of the per-round ratios).
//!
//! Needs `redis-server` on the PATH and PostgreSQL's server programs (`.ci/setup`). Run:
//! `cargo bench --all-features --bench store -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // `criterion_group!` generates an undocumented public function.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tower_client_credentials::store::{PostgresStore, RedisStore};
use tower_client_credentials::testing::AuthServer;
use tower_client_credentials::{ClientAuthMethod, ClientCredentials, TokenCache};

// The PostgreSQL server of the fleet tests (initdb, start, stop; as `nobody` under root).
#[path = "../tests/fleet/mod.rs"]
mod fleet;

const PAIRED_ROUNDS: usize = 40;
const PAIRED_PER_ROUND: usize = 20;

struct RedisServer(Child, u16);

impl RedisServer {
    fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (see .ci/setup)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer(child, port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn credentials(auth: &AuthServer) -> ClientCredentials {
    ClientCredentials::builder()
        .token_endpoint(auth.token_endpoint())
        .unwrap()
        .client_id(AuthServer::CLIENT_ID)
        .client_secret(AuthServer::CLIENT_SECRET)
        .auth_method(ClientAuthMethod::ClientSecretBasic)
        .build()
        .unwrap()
}

async fn from_redis(auth: &AuthServer, url: &str) {
    let cache = TokenCache::builder(credentials(auth))
        .store(RedisStore::new(url).unwrap())
        .build();
    cache.token().await.unwrap();
}

async fn from_postgres(auth: &AuthServer, url: &str) {
    let cache = TokenCache::builder(credentials(auth))
        .store(PostgresStore::new(url).unwrap())
        .build();
    cache.token().await.unwrap();
}

/// Where a cold start gets its token.
#[derive(Clone, Copy)]
enum Arm<'a> {
    Redis(&'a str),
    Postgres(&'a str),
    Endpoint,
}

async fn cold_start(auth: &AuthServer, arm: Arm<'_>) {
    match arm {
        Arm::Redis(url) => from_redis(auth, url).await,
        Arm::Postgres(url) => from_postgres(auth, url).await,
        Arm::Endpoint => from_endpoint(auth).await,
    }
}

async fn from_endpoint(auth: &AuthServer) {
    TokenCache::new(credentials(auth)).token().await.unwrap();
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = RedisServer::start();
    let url = format!("redis://127.0.0.1:{}", redis.1);
    let postgres = fleet::PostgresServer::start();
    let pg_url = postgres.url();
    let auth = runtime.block_on(AuthServer::start()).unwrap();
    // The token every store-arm iteration finds: fetched once, written to both stores.
    runtime.block_on(from_redis(&auth, &url));
    assert_eq!(auth.token_requests(), 1);
    let pg_auth = runtime.block_on(AuthServer::start()).unwrap();
    runtime.block_on(from_postgres(&pg_auth, &pg_url));
    assert_eq!(pg_auth.token_requests(), 1);

    let mut group = c.benchmark_group("store");
    group.bench_function("cold_start_from_redis", |b| {
        b.to_async(&runtime).iter(|| from_redis(&auth, &url))
    });
    group.bench_function("cold_start_from_postgres", |b| {
        b.to_async(&runtime)
            .iter(|| from_postgres(&pg_auth, &pg_url))
    });
    assert_eq!(
        auth.token_requests(),
        1,
        "the Redis arm made token requests"
    );
    assert_eq!(
        pg_auth.token_requests(),
        1,
        "the PostgreSQL arm made token requests"
    );
    group.bench_function("cold_start_from_token_endpoint", |b| {
        b.to_async(&runtime).iter(|| from_endpoint(&auth))
    });
    group.finish();

    paired(&runtime, &auth, "redis", Arm::Redis(&url));
    paired(&runtime, &pg_auth, "postgres", Arm::Postgres(&pg_url));
}

/// Paired comparison of a store arm with the token endpoint: alternating rounds, so slow
/// drifts of background load cancel out.
fn paired<'a>(runtime: &tokio::runtime::Runtime, auth: &'a AuthServer, name: &str, store: Arm<'a>) {
    let mut ratios = Vec::with_capacity(PAIRED_ROUNDS);
    let (mut store_total, mut endpoint_total) = (Duration::ZERO, Duration::ZERO);
    runtime.block_on(async {
        for round in 0..PAIRED_ROUNDS {
            let arm = |arm: Arm<'a>| async move {
                let started = Instant::now();
                for _ in 0..PAIRED_PER_ROUND {
                    cold_start(auth, arm).await;
                }
                started.elapsed() / PAIRED_PER_ROUND as u32
            };
            let (r, e) = if round % 2 == 0 {
                let r = arm(store).await;
                (r, arm(Arm::Endpoint).await)
            } else {
                let e = arm(Arm::Endpoint).await;
                (arm(store).await, e)
            };
            store_total += r;
            endpoint_total += e;
            ratios.push(r.as_secs_f64() / e.as_secs_f64());
        }
    });
    ratios.sort_by(f64::total_cmp);
    println!(
        "paired ({PAIRED_ROUNDS} rounds x {PAIRED_PER_ROUND}): cold start from {name} {:.1} µs, \
         from the token endpoint {:.1} µs (means); median ratio {name}/endpoint {:.3} \
         (quartiles {:.3}–{:.3})",
        store_total.as_secs_f64() * 1e6 / PAIRED_ROUNDS as f64,
        endpoint_total.as_secs_f64() * 1e6 / PAIRED_ROUNDS as f64,
        ratios[ratios.len() / 2],
        ratios[ratios.len() / 4],
        ratios[ratios.len() * 3 / 4],
    );
    // The line `benches/summary.sh` collects (as `common::print_ratio` prints it).
    println!(
        "ratio store/cold_start_from_{name} {:.3} (quartiles {:.3}..{:.3})",
        ratios[ratios.len() / 2],
        ratios[ratios.len() / 4],
        ratios[ratios.len() * 3 / 4],
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
