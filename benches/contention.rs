//! Contention (issue 7, goal 2): the hot-path call of `hot_path.rs` made from 1, 2 and 8 threads
//! at once, each thread with its own clone of the service, all clones sharing one token cache.
//! Reported per call: wall time of all threads / calls (criterion `iter_custom`), so on a machine
//! with `c` cores the ideal for `n` threads is the one-thread time / `min(n, c)`.
//!
//! Arms, all over the same no-op inner service, all building the request inside the loop the same
//! way:
//! * `bearer_auth`: the layer, fresh token cached (lock-free `ArcSwap` read);
//! * `set_request_header`: tower-http's `SetRequestHeader` ×2 with static values (the floor);
//! * `rwlock`: a hand-written service that read-locks a `std::sync::RwLock<HeaderValue>` and
//!   clones the token, then adds the same headers as the layer (same reference-counted name and
//!   values), to show what the lock-free read buys.
//!
//! The paired comparison reports each arm twice: by wall time (as criterion does), and by the CPU
//! time the benchmark's threads spent in their loops (`CLOCK_THREAD_CPUTIME_ID`), which the other
//! processes of a shared machine do not inflate. Cache-line transfers between the benchmark's own
//! threads cost CPU time, so contention shows in both; preemption only in the first.
//!
//! Run: `cargo bench --bench contention -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // `criterion_group!` generates an undocumented public function.

use std::fmt::Debug;
use std::future::Future;
use std::hint::black_box;
use std::sync::{Arc, Barrier, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::Request;
use tower::{Layer, Service};
use tower_client_credentials::{BearerAuthLayer, TokenCache};

mod common;
use common::{
    benchmarking, noop_inner, noop_waker, paired, report_ratios, set_request_header_static,
    StaticSource,
};

const TOKEN: &str = "eyJraWQiOiJrZXktMSIsImFsZyI6IlJTMjU2In0.eyJzdWIiOiJiZW5jaC1jbGllbnQifQ.c2ln";
const BEARER: &str =
    "Bearer eyJraWQiOiJrZXktMSIsImFsZyI6IlJTMjU2In0.eyJzdWIiOiJiZW5jaC1jbGllbnQifQ.c2ln";
const API_KEY: &str = "3f6c2b1e-9d4a-4c1b-8e2f-7a5d0c9b1e42";
const THREADS: [usize; 3] = [1, 2, 8];
/// Calls per arm per round of the paired comparison, and rounds.
const PAIRED_CALLS: u64 = 40_000;
const PAIRED_ROUNDS: usize = 100;

/// Builds a request and drives one call through `service`: `poll_ready`, `call`, one poll.
#[inline]
fn one_call<S>(service: &mut S, cx: &mut Context<'_>)
where
    S: Service<Request<()>>,
    S::Error: Debug,
{
    let request = Request::get("http://api.example.com/v1/items")
        .body(())
        .unwrap();
    match service.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("service not ready: {other:?}"),
    }
    let future = std::pin::pin!(service.call(request));
    match future.poll(cx) {
        Poll::Ready(Ok(response)) => drop(black_box(response)),
        Poll::Ready(Err(error)) => panic!("service failed: {error:?}"),
        Poll::Pending => panic!("response future pending"),
    }
}

/// `iters` calls split over `threads` threads, each with its own clone of `service`; returns
/// the wall time from the moment all threads are released until the last one is done.
fn run_threads<S>(service: &S, threads: usize, iters: u64) -> Duration
where
    S: Service<Request<()>> + Clone + Send,
    S::Error: Debug,
{
    run_threads_timed(service, threads, iters).wall
}

/// Wall time of a run, and the CPU time its threads spent in their timed loops.
struct Times {
    wall: Duration,
    cpu: Duration,
}

/// The calling thread's CPU time. Unlike wall time, it does not grow while another process
/// runs on the core, so on a shared machine it shows what the calls themselves cost, cache-line
/// transfers between the benchmark's threads included.
fn thread_cpu_time() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn run_threads_timed<S>(service: &S, threads: usize, iters: u64) -> Times
where
    S: Service<Request<()>> + Clone + Send,
    S::Error: Debug,
{
    let barrier = Barrier::new(threads + 1);
    let per_thread = iters.div_ceil(threads as u64);
    let scale = iters as f64 / (per_thread * threads as u64) as f64;
    let (start, cpu) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let mut service = service.clone();
                let barrier = &barrier;
                scope.spawn(move || {
                    let waker = noop_waker();
                    let mut cx = Context::from_waker(&waker);
                    one_call(&mut service, &mut cx); // warm-up, not timed
                    barrier.wait();
                    let cpu_start = thread_cpu_time();
                    for _ in 0..per_thread {
                        one_call(&mut service, &mut cx);
                    }
                    thread_cpu_time() - cpu_start
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let cpu: Duration = handles.into_iter().map(|h| h.join().unwrap()).sum();
        (start, cpu)
    });
    Times {
        wall: start.elapsed().mul_f64(scale),
        cpu: cpu.mul_f64(scale),
    }
}

/// The `RwLock` baseline: the token behind a read-write lock, read and cloned per request.
#[derive(Clone)]
struct RwLockAuth<S> {
    inner: S,
    token: Arc<RwLock<HeaderValue>>,
    headers: Arc<[(HeaderName, HeaderValue)]>,
}

impl<S: Service<Request<()>>> Service<Request<()>> for RwLockAuth<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<()>) -> Self::Future {
        let token = self.token.read().unwrap().clone();
        let headers = request.headers_mut();
        headers.insert(AUTHORIZATION, token);
        for (name, value) in self.headers.iter() {
            headers.insert(name.clone(), value.clone());
        }
        self.inner.call(request)
    }
}

fn contention(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = TokenCache::new(StaticSource(TOKEN));
    runtime.block_on(cache.prefetch()).unwrap();

    let layered = BearerAuthLayer::from_cache(cache)
        .with_header("x-api-key", API_KEY)
        .unwrap()
        .layer(noop_inner());
    let baseline = set_request_header_static(BEARER, API_KEY, noop_inner());
    let rwlock = {
        let mut token = HeaderValue::from_str(BEARER).unwrap();
        token.set_sensitive(true);
        let mut key = HeaderValue::from_str(API_KEY).unwrap();
        key.set_sensitive(true);
        RwLockAuth {
            inner: noop_inner(),
            token: Arc::new(RwLock::new(token)),
            headers: Arc::from(vec![(HeaderName::from_bytes(b"x-api-key").unwrap(), key)]),
        }
    };

    let mut group = c.benchmark_group("contention");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    for threads in THREADS {
        group.bench_function(BenchmarkId::new("bearer_auth", threads), |b| {
            b.iter_custom(|iters| run_threads(&layered, threads, iters))
        });
        group.bench_function(BenchmarkId::new("set_request_header", threads), |b| {
            b.iter_custom(|iters| run_threads(&baseline, threads, iters))
        });
        group.bench_function(BenchmarkId::new("rwlock", threads), |b| {
            b.iter_custom(|iters| run_threads(&rwlock, threads, iters))
        });
    }
    group.finish();

    if benchmarking() {
        for threads in THREADS {
            let (mut cpu_layer, mut cpu_base, mut cpu_rwlock) =
                (Vec::new(), Vec::new(), Vec::new());
            paired(
                &format!("contention/{threads}"),
                PAIRED_ROUNDS,
                PAIRED_CALLS,
                1,
                &mut [
                    ("bearer_auth", &mut || {
                        let t = run_threads_timed(&layered, threads, PAIRED_CALLS);
                        cpu_layer.push(t.cpu.as_secs_f64());
                        t.wall
                    }),
                    ("set_request_header", &mut || {
                        let t = run_threads_timed(&baseline, threads, PAIRED_CALLS);
                        cpu_base.push(t.cpu.as_secs_f64());
                        t.wall
                    }),
                    ("rwlock", &mut || {
                        let t = run_threads_timed(&rwlock, threads, PAIRED_CALLS);
                        cpu_rwlock.push(t.cpu.as_secs_f64());
                        t.wall
                    }),
                ],
            );
            report_ratios(
                &format!("contention-cpu/{threads}"),
                "CPU time of the calling threads",
                PAIRED_ROUNDS,
                PAIRED_CALLS,
                &["bearer_auth", "set_request_header", "rwlock"],
                1,
                &[cpu_layer, cpu_base, cpu_rwlock],
            );
        }
    }
    drop(runtime);
}

criterion_group!(benches, contention);
criterion_main!(benches);
