//! Refresh storm (issue 7, goal 3; DESIGN.md rule 2): N = 1, 100 and 10,000 concurrent callers
//! find a cold cache (no token) at once, against an in-process token source that takes a fixed
//! 20 ms and counts its calls. Reported: the time until all N have their token (criterion
//! `iter_custom`, one storm per iteration, each on a fresh cache). Every storm asserts that the
//! source was called exactly once.
//!
//! Arms:
//! * `cache_token/N`: N tokio tasks each awaiting `TokenCache::token()`;
//! * `layer/N`: N tokio tasks each driving its own clone of a `BearerAuth` over a no-op inner
//!   service (`ready().await`, then `call`), all clones sharing the cache.
//!
//! * `floor_watch/N`: no cache: N tasks awaiting a `tokio::sync::watch` value that one task
//!   publishes after 20 ms, i.e. what the runtime alone costs for such a storm.
//!
//! The ideal is the source's 20 ms (plus tokio's ~1 ms timer granularity); the excess is the cost
//! of spawning N tasks, queueing them on the one refresh and waking them.
//!
//! Run: `cargo bench --bench refresh_storm -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // `criterion_group!` generates an undocumented public function.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use tower_client_credentials::{BearerAuthLayer, BoxFuture, Error, Token, TokenCache, TokenSource};

const SOURCE_DELAY: Duration = Duration::from_millis(20);
const CALLERS: [usize; 3] = [1, 100, 10_000];

/// A token source that counts its calls and answers after `SOURCE_DELAY`.
#[derive(Clone, Default)]
struct SlowSource {
    calls: Arc<AtomicUsize>,
}

impl TokenSource for SlowSource {
    fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(SOURCE_DELAY).await;
            Token::bearer(format!("token-{n}"), Some(Duration::from_secs(3600)))
        })
    }
}

fn assert_one_refresh(source: &SlowSource, callers: usize) {
    let calls = source.calls.load(Ordering::SeqCst);
    assert_eq!(
        calls, 1,
        "a storm of {callers} callers made {calls} token requests instead of one"
    );
}

/// One storm of `callers` tasks awaiting `TokenCache::token` on a cold cache.
async fn cache_storm(callers: usize) -> Duration {
    let source = SlowSource::default();
    let cache = TokenCache::new(source.clone());
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let elapsed = start.elapsed();
    assert_one_refresh(&source, callers);
    elapsed
}

/// One storm of `callers` tasks, each calling through its own clone of a `BearerAuth` service.
async fn layer_storm(callers: usize) -> Duration {
    let source = SlowSource::default();
    let service = BearerAuthLayer::new(source.clone())
        .with_header("x-api-key", "api-key")
        .unwrap()
        .layer(tower::service_fn(|request: Request<()>| {
            debug_assert!(request.headers().contains_key("authorization"));
            std::future::ready(Ok::<_, Infallible>(Response::new(())))
        }));
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut service = service.clone();
            tokio::spawn(async move { service.ready().await?.call(Request::new(())).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let elapsed = start.elapsed();
    assert_one_refresh(&source, callers);
    elapsed
}

/// The floor: one storm of `callers` tasks that wait for a value one task publishes after
/// `SOURCE_DELAY` through a `tokio::sync::watch` channel (what the cache uses to share a refresh),
/// with no cache around it.
async fn floor_storm(callers: usize) -> Duration {
    let (sender, receiver) = tokio::sync::watch::channel(None::<Arc<String>>);
    let start = Instant::now();
    let publisher = tokio::spawn(async move {
        tokio::time::sleep(SOURCE_DELAY).await;
        sender.send_replace(Some(Arc::new("token-0".to_owned())));
        sender
    });
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut receiver = receiver.clone();
            tokio::spawn(async move {
                let value = receiver.wait_for(Option::is_some).await.unwrap();
                value.clone().unwrap()
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed();
    drop(publisher.await.unwrap());
    elapsed
}

fn refresh_storm(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut group = c.benchmark_group("refresh_storm");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10);
    for callers in CALLERS {
        group.bench_function(BenchmarkId::new("cache_token", callers), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += cache_storm(callers).await;
                    }
                    total
                })
            })
        });
        group.bench_function(BenchmarkId::new("floor_watch", callers), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += floor_storm(callers).await;
                    }
                    total
                })
            })
        });
        group.bench_function(BenchmarkId::new("layer", callers), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += layer_storm(callers).await;
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, refresh_storm);
criterion_main!(benches);
