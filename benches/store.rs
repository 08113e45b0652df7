//! Cold start served from Redis against one served by the token endpoint (issue 13).
//!
//! Each iteration is a process's first token: a new `ClientCredentials` and `TokenCache`
//! (so a new HTTP connection pool, and for the store arm a new `RedisStore` and connection),
//! then `token().await`.
//!
//! * `store/cold_start_from_redis`: the token is already in Redis (a local `redis-server`
//!   started by the bench on a free loopback port, `--save '' --appendonly no`): one `MGET`
//!   after connecting, no token request (asserted).
//! * `store/cold_start_from_token_endpoint`: no store; one token request to the crate's
//!   loopback `AuthServer` over HTTP/1.1 (connect, POST, JSON).
//!
//! Both talk to servers on 127.0.0.1, so this measures client-side cost and loopback round trips;
//! a real identity provider adds its network latency and its own work (often tens to hundreds
//! of milliseconds) to the second arm only. Besides criterion's report, the bench prints a paired
//! comparison (alternating rounds, median of the per-round ratios).
//!
//! Needs `redis-server` on the PATH. Run:
//! `cargo bench --all-features --bench store -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // `criterion_group!` generates an undocumented public function.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tower_client_credentials::store::RedisStore;
use tower_client_credentials::testing::AuthServer;
use tower_client_credentials::{ClientAuthMethod, ClientCredentials, TokenCache};

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
    let auth = runtime.block_on(AuthServer::start()).unwrap();
    // The token every store-arm iteration finds.
    runtime.block_on(from_redis(&auth, &url));
    assert_eq!(auth.token_requests(), 1);

    let mut group = c.benchmark_group("store");
    group.bench_function("cold_start_from_redis", |b| {
        b.to_async(&runtime).iter(|| from_redis(&auth, &url))
    });
    let after_store_arm = auth.token_requests();
    assert_eq!(after_store_arm, 1, "the store arm made token requests");
    group.bench_function("cold_start_from_token_endpoint", |b| {
        b.to_async(&runtime).iter(|| from_endpoint(&auth))
    });
    group.finish();

    // Paired comparison: alternating rounds, so slow drifts of background load cancel out.
    let mut ratios = Vec::with_capacity(PAIRED_ROUNDS);
    let (mut redis_total, mut endpoint_total) = (Duration::ZERO, Duration::ZERO);
    runtime.block_on(async {
        for round in 0..PAIRED_ROUNDS {
            let arm = |store: bool| {
                let auth = &auth;
                let url = &url;
                async move {
                    let started = Instant::now();
                    for _ in 0..PAIRED_PER_ROUND {
                        if store {
                            from_redis(auth, url).await;
                        } else {
                            from_endpoint(auth).await;
                        }
                    }
                    started.elapsed() / PAIRED_PER_ROUND as u32
                }
            };
            let (r, e) = if round % 2 == 0 {
                let r = arm(true).await;
                (r, arm(false).await)
            } else {
                let e = arm(false).await;
                (arm(true).await, e)
            };
            redis_total += r;
            endpoint_total += e;
            ratios.push(r.as_secs_f64() / e.as_secs_f64());
        }
    });
    ratios.sort_by(f64::total_cmp);
    println!(
        "paired ({PAIRED_ROUNDS} rounds x {PAIRED_PER_ROUND}): cold start from Redis {:.1} µs, \
         from the token endpoint {:.1} µs (means); median ratio redis/endpoint {:.3} \
         (quartiles {:.3}–{:.3})",
        redis_total.as_secs_f64() * 1e6 / PAIRED_ROUNDS as f64,
        endpoint_total.as_secs_f64() * 1e6 / PAIRED_ROUNDS as f64,
        ratios[ratios.len() / 2],
        ratios[ratios.len() / 4],
        ratios[ratios.len() * 3 / 4],
    );
    // The line `benches/summary.sh` collects (as `common::print_ratio` prints it).
    println!(
        "ratio store/cold_start_from_redis {:.3} (quartiles {:.3}..{:.3})",
        ratios[ratios.len() / 2],
        ratios[ratios.len() / 4],
        ratios[ratios.len() * 3 / 4],
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
