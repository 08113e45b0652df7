//! Peers in the same run (issue 16): this crate's layer beside what a reader would otherwise
//! use, for the hot path, 1–8 threads and the refresh storm. Every arm adds the same two headers
//! (`Authorization: Bearer <token>`, `x-api-key`) to a request for the same no-op inner service;
//! every token lives an hour, so no arm refreshes during a measurement.
//!
//! Arms:
//! * `layer`: this crate's `BearerAuthLayer` (fresh token: an `ArcSwap` pointer comparison, a
//!   coarse clock read, the service's own header copies);
//! * `set_request_header`: tower-http's `SetRequestHeader` ×2 with static values, the floor (no
//!   token at all; absent from the storm);
//! * `rwlock`: the design card's sketch, a `tokio::sync::RwLock<Option<Token>>` read per request
//!   (`Instant::now()` against the expiry), the write lock held across the token request so one
//!   caller fetches;
//! * `mutex`: golang/oauth2's `ReuseTokenSource` shape: a `std::sync::Mutex` taken per request to
//!   check and copy the token. Go holds that mutex across the token request; an async Rust
//!   caller may not hold a `std` mutex across an `.await`, so the fetch is serialised by a
//!   `tokio::sync::Mutex` and the token checked again under it;
//! * `once_cell`: a `tokio::sync::OnceCell<Token>` behind a `std::sync::RwLock<Arc<_>>`, replaced by
//!   an empty cell at expiry; `get_or_init` is the single flight;
//! * `aliri_tokens`: aliri_tokens 0.3's `TokenWatcher` as its docs use it (`spawn_from_token_source`
//!   fetches the first token and refreshes in a background task; a request borrows the current
//!   token, `watcher.token()`, and formats its `Authorization` value). It has no cold-start single
//!   flight of its own: the storm arm makes the watcher in a `tokio::sync::OnceCell` that every
//!   caller awaits, the way one would start it lazily;
//! * `floor_watch` (storm only): no cache; N tasks await a `tokio::sync::watch` value one task
//!   publishes after the token request's 20 ms: what the runtime alone costs for a storm (the
//!   issue's "bare-runtime floor");
//! * `floor_watch_request` (storm only): the same, and then each task builds its request, adds
//!   the two headers (clones of reference-counted values) and sends it to the no-op inner
//!   service, as every arm must: the floor of any arm that sends a request.
//!
//! Measured, in the paired form (arms in alternating rounds, order rotated, median of per-round
//! ratios; robust to the load of a shared machine):
//! * `peers-hot`: one request, driven by hand with a no-op waker (no runtime), the requests built
//!   before the clock starts (as in `hot_path.rs`); ratio to `set_request_header`;
//! * `peers-threads/T` (T = 1, 2, 4, 8 threads, each with its own clone, requests built in the loop as in `contention.rs`): CPU time the threads
//!   spent per request (`CLOCK_THREAD_CPUTIME_ID`, which other processes do not inflate; cache-line
//!   transfers and lock spinning count, time asleep on a contended lock does not) and wall time
//!   × min(T, cores) per request; ratio to `set_request_header`;
//! * `peers-storm/N` (N = 1, 1,000, 10,000, 100,000 tokio tasks on a 2-worker runtime, each with its
//!   own clone of the arm, find a cold cache; the token request takes 20 ms; every storm asserts
//!   one token request): time until all N have sent; ratio to `layer`;
//! * `storm-growth/<arm>`: each arm's storm at 100,000 callers against its own single caller
//!   (issue 16's goal for the layer: ≤ 1.5 ×);
//! * `goal/storm-N` (issue 22): per round, the layer's storm time over the bare floor's (goal
//!   ≤ 1.10) and over the fastest peer's of that round (goal ≤ 1: the fastest arm).
//!
//! Output ends with `ratio <bench>/<arm> <value>` lines and `chart <panel> <arm> <x> <value>`
//! lines (read by `benches/chart.py`). `BENCH_QUICK=1` runs fewer rounds (`benches/summary.sh`).
//!
//! Run: `cargo bench --all-features --bench peers`

#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aliri_clock::DurationSecs;
use aliri_tokens::sources::{AsyncTokenSource, ConstTokenSource};
use aliri_tokens::{
    backoff::ErrorBackoffConfig, jitter::NullJitter, TokenWatcher, TokenWithLifetime,
};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{Request, Response};
use tokio::sync::OnceCell;
use tower::{Layer, Service, ServiceExt};
use tower_client_credentials::{BearerAuth, BearerAuthLayer, BoxFuture, Error, Token, TokenSource};

mod common;
use common::{
    noop_inner, noop_waker, print_ratio, quantile, quick, report_ratios, set_request_header_static,
    NoopService,
};

const TOKEN: &str = "eyJraWQiOiJrZXktMSIsImFsZyI6IlJTMjU2In0.eyJzdWIiOiJiZW5jaC1jbGllbnQifQ.c2ln";
const BEARER: &str =
    "Bearer eyJraWQiOiJrZXktMSIsImFsZyI6IlJTMjU2In0.eyJzdWIiOiJiZW5jaC1jbGllbnQifQ.c2ln";
const API_KEY: &str = "3f6c2b1e-9d4a-4c1b-8e2f-7a5d0c9b1e42";
const LIFETIME: Duration = Duration::from_secs(3600);
const SOURCE_DELAY: Duration = Duration::from_millis(20);
const THREADS: [usize; 4] = [1, 2, 4, 8];
const CALLERS: [usize; 4] = [1, 1_000, 10_000, 100_000];

// ----------------------------------------------------------------------------------------------
// The token request every arm makes: after `delay`, counted.

#[derive(Clone)]
struct Fetcher {
    delay: Duration,
    calls: Arc<AtomicUsize>,
}

impl Fetcher {
    fn new(delay: Duration) -> Fetcher {
        Fetcher {
            delay,
            calls: Arc::default(),
        }
    }

    async fn wait(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }

    /// A token as the hand-written peers keep it: the prebuilt header and the expiry.
    async fn fetch(&self) -> PeerToken {
        self.wait().await;
        let mut header = HeaderValue::from_str(BEARER).unwrap();
        header.set_sensitive(true);
        PeerToken {
            header,
            expires_at: Instant::now() + LIFETIME,
        }
    }

    fn assert_one_request(&self, arm: &str, callers: usize) {
        let calls = self.calls.load(Ordering::SeqCst);
        assert_eq!(
            calls, 1,
            "{arm}: {callers} callers made {calls} token requests"
        );
    }
}

impl TokenSource for Fetcher {
    fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(async move {
            self.wait().await;
            Token::bearer(TOKEN, Some(LIFETIME))
        })
    }
}

/// A token as the hand-written peers keep it: the prebuilt header and its expiry.
struct PeerToken {
    header: HeaderValue,
    expires_at: Instant,
}

impl PeerToken {
    fn valid(&self) -> bool {
        Instant::now() < self.expires_at
    }
}

/// aliri_tokens' source trait (an `async_trait`, written out by hand): the counted wait, then
/// its own `ConstTokenSource`.
struct AliriSource<S> {
    fetcher: Fetcher,
    token: S,
}

impl<S: AsyncTokenSource<Error = Infallible>> AsyncTokenSource for AliriSource<S> {
    type Error = Infallible;

    fn request_token<'life0, 'async_trait>(
        &'life0 mut self,
    ) -> Pin<Box<dyn Future<Output = Result<TokenWithLifetime, Infallible>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.fetcher.wait().await;
            self.token.request_token().await
        })
    }
}

// ----------------------------------------------------------------------------------------------
// The arms.

/// What a caller holds (its own clone) to send a request through one arm.
trait Arm: Clone + Send + 'static {
    fn send(&mut self, request: Request<()>) -> impl Future<Output = ()> + Send;
}

/// A tower service arm: the layer, the `SetRequestHeader` floor.
#[derive(Clone)]
struct ServiceArm<S>(S);

impl<S> Arm for ServiceArm<S>
where
    S: Service<Request<()>, Response = Response<()>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    async fn send(&mut self, request: Request<()>) {
        let response = self.0.ready().await.unwrap().call(request).await.unwrap();
        black_box(response);
    }
}

/// Where a hand-written peer gets its `Authorization` value.
trait Provider: Clone + Send + Sync + 'static {
    fn header(&mut self) -> impl Future<Output = HeaderValue> + Send;
}

/// A hand-written peer: the header from its provider, the API key, the inner service.
#[derive(Clone)]
struct PeerArm<P> {
    provider: P,
    api_key: HeaderValue,
    inner: NoopService,
}

impl<P: Provider> PeerArm<P> {
    fn new(provider: P) -> Self {
        let mut api_key = HeaderValue::from_str(API_KEY).unwrap();
        api_key.set_sensitive(true);
        PeerArm {
            provider,
            api_key,
            inner: noop_inner(),
        }
    }
}

impl<P: Provider> Arm for PeerArm<P> {
    async fn send(&mut self, mut request: Request<()>) {
        let header = self.provider.header().await;
        let headers = request.headers_mut();
        headers.insert(AUTHORIZATION, header);
        headers.insert(HeaderName::from_static("x-api-key"), self.api_key.clone());
        let response = self.inner.call(request).await.unwrap();
        black_box(response);
    }
}

/// The design card: `tokio::sync::RwLock<Option<Token>>`, read per request.
#[derive(Clone)]
struct RwLockProvider {
    token: Arc<tokio::sync::RwLock<Option<PeerToken>>>,
    fetcher: Fetcher,
}

impl Provider for RwLockProvider {
    async fn header(&mut self) -> HeaderValue {
        if let Some(token) = self.token.read().await.as_ref().filter(|t| t.valid()) {
            return token.header.clone();
        }
        let mut slot = self.token.write().await;
        if let Some(token) = slot.as_ref().filter(|t| t.valid()) {
            return token.header.clone();
        }
        let token = slot.insert(self.fetcher.fetch().await);
        token.header.clone()
    }
}

/// golang/oauth2's `ReuseTokenSource`: a mutex per request.
#[derive(Clone)]
struct MutexProvider {
    token: Arc<Mutex<Option<PeerToken>>>,
    fetching: Arc<tokio::sync::Mutex<()>>,
    fetcher: Fetcher,
}

impl MutexProvider {
    fn valid_header(&self) -> Option<HeaderValue> {
        let token = self.token.lock().unwrap();
        token
            .as_ref()
            .filter(|t| t.valid())
            .map(|t| t.header.clone())
    }
}

impl Provider for MutexProvider {
    async fn header(&mut self) -> HeaderValue {
        if let Some(header) = self.valid_header() {
            return header;
        }
        let _fetching = self.fetching.lock().await;
        if let Some(header) = self.valid_header() {
            return header;
        }
        let token = self.fetcher.fetch().await;
        let header = token.header.clone();
        *self.token.lock().unwrap() = Some(token);
        header
    }
}

/// A `tokio::sync::OnceCell`, replaced by an empty one at expiry.
#[derive(Clone)]
struct OnceCellProvider {
    cell: Arc<RwLock<Arc<OnceCell<PeerToken>>>>,
    fetcher: Fetcher,
}

impl Provider for OnceCellProvider {
    async fn header(&mut self) -> HeaderValue {
        loop {
            let cell = self.cell.read().unwrap().clone();
            let token = cell.get_or_init(|| self.fetcher.fetch()).await;
            if token.valid() {
                return token.header.clone();
            }
            let mut current = self.cell.write().unwrap();
            if Arc::ptr_eq(&current, &cell) {
                *current = Arc::new(OnceCell::new());
            }
        }
    }
}

/// aliri_tokens' `TokenWatcher`, started lazily by the first caller.
#[derive(Clone)]
struct AliriProvider {
    started: Arc<OnceCell<TokenWatcher>>,
    watcher: Option<TokenWatcher>,
    fetcher: Fetcher,
}

impl Provider for AliriProvider {
    async fn header(&mut self) -> HeaderValue {
        if self.watcher.is_none() {
            let watcher = self
                .started
                .get_or_init(|| async {
                    let source = AliriSource {
                        fetcher: self.fetcher.clone(),
                        token: ConstTokenSource::new(TOKEN)
                            .with_token_valid_for(DurationSecs(LIFETIME.as_secs())),
                    };
                    TokenWatcher::spawn_from_token_source(
                        source,
                        NullJitter,
                        ErrorBackoffConfig::default(),
                    )
                    .await
                    .unwrap()
                })
                .await;
            self.watcher = Some(watcher.clone());
        }
        let token = self.watcher.as_ref().unwrap().token();
        let mut header =
            HeaderValue::from_str(&format!("Bearer {}", token.access_token().as_str())).unwrap();
        header.set_sensitive(true);
        header
    }
}

fn layer_arm(fetcher: Fetcher) -> ServiceArm<BearerAuth<NoopService>> {
    ServiceArm(
        BearerAuthLayer::new(fetcher)
            .with_header("x-api-key", API_KEY)
            .unwrap()
            .layer(noop_inner()),
    )
}

fn rwlock_arm(fetcher: Fetcher) -> PeerArm<RwLockProvider> {
    PeerArm::new(RwLockProvider {
        token: Arc::default(),
        fetcher,
    })
}

fn mutex_arm(fetcher: Fetcher) -> PeerArm<MutexProvider> {
    PeerArm::new(MutexProvider {
        token: Arc::default(),
        fetching: Arc::default(),
        fetcher,
    })
}

fn once_cell_arm(fetcher: Fetcher) -> PeerArm<OnceCellProvider> {
    PeerArm::new(OnceCellProvider {
        cell: Arc::default(),
        fetcher,
    })
}

fn aliri_arm(fetcher: Fetcher) -> PeerArm<AliriProvider> {
    PeerArm::new(AliriProvider {
        started: Arc::default(),
        watcher: None,
        fetcher,
    })
}

fn request() -> Request<()> {
    Request::get("http://api.example.com/v1/items")
        .body(())
        .unwrap()
}

/// Polls one send to completion, which must come at the first poll (a warm arm never waits).
#[inline]
fn send_now<A: Arm>(arm: &mut A, cx: &mut Context<'_>, request: Request<()>) {
    let future = std::pin::pin!(arm.send(request));
    match future.poll(cx) {
        Poll::Ready(()) => {}
        Poll::Pending => panic!("a warm arm waited"),
    }
}

/// A warm arm: its token fetched (at once) by a first request on `runtime`.
fn warm<A: Arm>(runtime: &tokio::runtime::Runtime, make: impl FnOnce(Fetcher) -> A) -> A {
    let mut arm = make(Fetcher::new(Duration::ZERO));
    runtime.block_on(arm.send(request()));
    arm
}

// ----------------------------------------------------------------------------------------------
// Measurements.

/// `calls` requests through `arm`, built before the clock starts (as `hot_path.rs` does), so that
/// only the middleware and the inner service's drop of the request are timed.
fn time_calls<A: Arm>(arm: &mut A, calls: u64) -> Duration {
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    let requests: Vec<_> = (0..calls).map(|_| request()).collect();
    let start = Instant::now();
    for request in requests {
        send_now(arm, &mut cx, request);
    }
    start.elapsed()
}

fn thread_cpu_time() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// `calls` requests from each of `threads` threads, each with its own clone of `arm`: the wall
/// time from the release of all threads to the end of the last, and the CPU time of the threads.
fn time_threads<A: Arm>(arm: &A, threads: usize, calls: u64) -> (Duration, Duration) {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let mut arm = arm.clone();
                let barrier = &barrier;
                scope.spawn(move || {
                    let waker = noop_waker();
                    let mut cx = Context::from_waker(&waker);
                    send_now(&mut arm, &mut cx, request()); // the clone's first, not timed
                    barrier.wait();
                    let start = thread_cpu_time();
                    for _ in 0..calls {
                        send_now(&mut arm, &mut cx, request());
                    }
                    thread_cpu_time() - start
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let cpu = handles.into_iter().map(|h| h.join().unwrap()).sum();
        (start.elapsed(), cpu)
    })
}

/// One storm: `callers` tasks, each with its own clone of a cold arm, send one request each.
async fn storm<A: Arm>(name: &str, make: impl FnOnce(Fetcher) -> A, callers: usize) -> Duration {
    let fetcher = Fetcher::new(SOURCE_DELAY);
    let arm = make(fetcher.clone());
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut arm = arm.clone();
            tokio::spawn(async move { arm.send(request()).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed();
    fetcher.assert_one_request(name, callers);
    elapsed
}

/// The floor: `callers` tasks await a `watch` value one task publishes after `SOURCE_DELAY`.
async fn floor_storm(callers: usize) -> Duration {
    let (sender, receiver) = tokio::sync::watch::channel(None::<Arc<String>>);
    let start = Instant::now();
    let publisher = tokio::spawn(async move {
        tokio::time::sleep(SOURCE_DELAY).await;
        sender.send_replace(Some(Arc::new(TOKEN.to_owned())));
        sender
    });
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut receiver = receiver.clone();
            tokio::spawn(async move {
                let value = receiver.wait_for(Option::is_some).await.unwrap();
                black_box(value.clone().unwrap());
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

/// The floor of any arm that sends a request: the bare floor, and then each task builds its
/// request, adds the two headers (clones of reference-counted values, as a cache must hand out)
/// and sends it to the same no-op inner service, as every arm does.
async fn floor_request_storm(callers: usize) -> Duration {
    let (sender, receiver) = tokio::sync::watch::channel(None::<HeaderValue>);
    let mut api_key = HeaderValue::from_str(API_KEY).unwrap();
    api_key.set_sensitive(true);
    let start = Instant::now();
    let publisher = tokio::spawn(async move {
        tokio::time::sleep(SOURCE_DELAY).await;
        let mut header = HeaderValue::from_str(BEARER).unwrap();
        header.set_sensitive(true);
        sender.send_replace(Some(header));
        sender
    });
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut receiver = receiver.clone();
            let api_key = api_key.clone();
            tokio::spawn(async move {
                let header = receiver.wait_for(Option::is_some).await.unwrap().clone();
                let mut request = request();
                let headers = request.headers_mut();
                headers.insert(AUTHORIZATION, header.unwrap());
                headers.insert(HeaderName::from_static("x-api-key"), api_key);
                let response = noop_inner().call(request).await.unwrap();
                black_box(response);
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

/// The cache alone: `callers` tasks await `TokenCache::token()` (no layer, no boxed wait).
async fn cache_storm(callers: usize) -> Duration {
    let fetcher = Fetcher::new(SOURCE_DELAY);
    let cache = tower_client_credentials::TokenCache::new(fetcher.clone());
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { black_box(cache.token().await.unwrap()) })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed();
    fetcher.assert_one_request("cache_token", callers);
    elapsed
}

/// Runs the arms in `rounds` rounds (order rotated each round), returning `times[arm][round]`.
fn rounds(rounds: usize, arms: &mut [&mut dyn FnMut() -> Duration]) -> Vec<Vec<f64>> {
    let n = arms.len();
    let mut times = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            times[i].push((arms[i])().as_secs_f64());
        }
    }
    times
}

fn median(values: &[f64]) -> f64 {
    quantile(&mut values.to_vec(), 0.5)
}

const HOT_ARMS: [&str; 6] = [
    "layer",
    "set_request_header",
    "rwlock",
    "mutex",
    "once_cell",
    "aliri_tokens",
];
const STORM_ARMS: [&str; 7] = [
    "layer",
    "floor_watch",
    "floor_watch_request",
    "rwlock",
    "mutex",
    "once_cell",
    "aliri_tokens",
];

fn main() {
    // `cargo test --benches` runs each bench binary once as a test: nothing to measure then.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let quick = quick();
    // `PEERS_PARTS=hot,threads,storm,growth` (default: all) runs only those parts.
    let parts = std::env::var("PEERS_PARTS").unwrap_or_default();
    let part = |name: &str| parts.is_empty() || parts.split(',').any(|p| p == name);
    let mut chart = Vec::new();
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Hot path and threads: warm arms.
    let mut layer = warm(&current, layer_arm);
    let mut floor = ServiceArm(set_request_header_static(BEARER, API_KEY, noop_inner()));
    let mut rwlock = warm(&current, rwlock_arm);
    let mut mutex = warm(&current, mutex_arm);
    let mut once_cell = warm(&current, once_cell_arm);
    let mut aliri = current.block_on(async {
        // aliri_tokens spawns its refresh task on the runtime it is started in; it must stay.
        let mut arm = aliri_arm(Fetcher::new(Duration::ZERO));
        arm.send(request()).await;
        arm
    });

    let (hot_rounds, hot_calls) = if quick { (60, 2_000) } else { (300, 2_000) };
    if part("hot") {
        let times = rounds(
            hot_rounds,
            &mut [
                &mut || time_calls(&mut layer, hot_calls),
                &mut || time_calls(&mut floor, hot_calls),
                &mut || time_calls(&mut rwlock, hot_calls),
                &mut || time_calls(&mut mutex, hot_calls),
                &mut || time_calls(&mut once_cell, hot_calls),
                &mut || time_calls(&mut aliri, hot_calls),
            ],
        );
        report_ratios(
            "peers-hot",
            "wall time",
            hot_rounds,
            hot_calls,
            &HOT_ARMS,
            1,
            &times,
        );
    }

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (thread_rounds, thread_calls) = if quick { (8, 20_000) } else { (30, 40_000) };
    for threads in THREADS.into_iter().filter(|_| part("threads")) {
        let mut cpu = vec![Vec::new(); HOT_ARMS.len()];
        let mut run = |i: usize, (wall, used): (Duration, Duration)| {
            cpu[i].push(used.as_secs_f64());
            wall.mul_f64(threads.min(cores) as f64 / threads as f64)
        };
        let wall = {
            let run = std::cell::RefCell::new(&mut run);
            rounds(
                thread_rounds,
                &mut [
                    &mut || (run.borrow_mut())(0, time_threads(&layer, threads, thread_calls)),
                    &mut || (run.borrow_mut())(1, time_threads(&floor, threads, thread_calls)),
                    &mut || (run.borrow_mut())(2, time_threads(&rwlock, threads, thread_calls)),
                    &mut || (run.borrow_mut())(3, time_threads(&mutex, threads, thread_calls)),
                    &mut || (run.borrow_mut())(4, time_threads(&once_cell, threads, thread_calls)),
                    &mut || (run.borrow_mut())(5, time_threads(&aliri, threads, thread_calls)),
                ],
            )
        };
        let calls = thread_calls * threads as u64;
        report_ratios(
            &format!("peers-threads/{threads}"),
            "CPU time of the calling threads",
            thread_rounds,
            calls,
            &HOT_ARMS,
            1,
            &cpu,
        );
        report_ratios(
            &format!("peers-threads-wall/{threads}"),
            "wall time x min(threads, cores)",
            thread_rounds,
            calls,
            &HOT_ARMS,
            1,
            &wall,
        );
        for (i, name) in HOT_ARMS.iter().enumerate() {
            let ns = median(&cpu[i]) / calls as f64 * 1e9;
            chart.push(format!("chart threads {name} {threads} {ns:.1}"));
        }
    }
    drop((layer, floor, rwlock, mutex, once_cell, aliri));

    // Storms, on a runtime with one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if part("storm") || part("sizes") {
        // What each storm task carries (spawning moves it to the heap; 100,000 of them touch
        // fresh pages): the arm's clone, the request and the send's state.
        fn task_size<A: Arm>(mut arm: A) -> usize {
            let size = std::mem::size_of_val(&async move { arm.send(request()).await });
            size
        }
        let fetcher = || Fetcher::new(SOURCE_DELAY);
        println!(
            "storm task sizes (bytes): layer {}, rwlock {}, mutex {}, once_cell {}, aliri_tokens {}",
            task_size(layer_arm(fetcher())),
            task_size(rwlock_arm(fetcher())),
            task_size(mutex_arm(fetcher())),
            task_size(once_cell_arm(fetcher())),
            task_size(aliri_arm(fetcher())),
        );
    }
    for callers in CALLERS.into_iter().filter(|_| part("storm")) {
        let storm_rounds = match (quick, callers) {
            (true, 100_000) => 3,
            (true, _) => 6,
            (false, 100_000) => 10,
            (false, _) => 20,
        };
        let times = rounds(
            storm_rounds,
            &mut [
                &mut || runtime.block_on(storm("layer", layer_arm, callers)),
                &mut || runtime.block_on(floor_storm(callers)),
                &mut || runtime.block_on(floor_request_storm(callers)),
                &mut || runtime.block_on(storm("rwlock", rwlock_arm, callers)),
                &mut || runtime.block_on(storm("mutex", mutex_arm, callers)),
                &mut || runtime.block_on(storm("once_cell", once_cell_arm, callers)),
                &mut || runtime.block_on(storm("aliri_tokens", aliri_arm, callers)),
            ],
        );
        report_ratios(
            &format!("peers-storm/{callers}"),
            "wall time until every caller has sent",
            storm_rounds,
            1,
            &STORM_ARMS,
            0,
            &times,
        );
        for (i, name) in STORM_ARMS.iter().enumerate() {
            let ms = median(&times[i]) * 1e3;
            chart.push(format!("chart storm {name} {callers} {ms:.2}"));
        }
        // The issue-22 goals, per round: the layer against the bare floor (≤ 1.10), and against
        // the fastest peer of that round (≤ 1: the fastest arm).
        let layer = &times[0];
        let over_floor: Vec<f64> = (0..storm_rounds).map(|r| layer[r] / times[1][r]).collect();
        let over_request_floor: Vec<f64> =
            (0..storm_rounds).map(|r| layer[r] / times[2][r]).collect();
        let over_fastest: Vec<f64> = (0..storm_rounds)
            .map(|r| {
                layer[r]
                    / (3..STORM_ARMS.len())
                        .map(|i| times[i][r])
                        .fold(f64::MAX, f64::min)
            })
            .collect();
        for (arm, ratios) in [
            ("layer_over_floor", over_floor),
            ("layer_over_floor_with_request", over_request_floor),
            ("layer_over_fastest_peer", over_fastest),
        ] {
            let mut ratios = ratios;
            let (mid, low, high) = (
                quantile(&mut ratios, 0.5),
                quantile(&mut ratios, 0.25),
                quantile(&mut ratios, 0.75),
            );
            print_ratio(&format!("goal/storm-{callers}"), arm, mid, low, high);
        }
    }

    // The storm goal: 100,000 callers against the single caller, layer and floor, with
    // the cache alone beside them (the layer's own share of a waiter).
    let growth_rounds = if quick { 5 } else { 15 };
    let big = *CALLERS.last().unwrap();
    if part("growth") {
        let times = rounds(
            growth_rounds,
            &mut [
                &mut || runtime.block_on(storm("layer", layer_arm, 1)),
                &mut || runtime.block_on(storm("layer", layer_arm, big)),
                &mut || runtime.block_on(cache_storm(big)),
                &mut || runtime.block_on(floor_storm(big)),
            ],
        );
        report_ratios(
            "storm-growth",
            "wall time, against one caller through the layer",
            growth_rounds,
            1,
            &[
                "layer-1",
                "layer-100000",
                "cache_token-100000",
                "floor_watch-100000",
            ],
            0,
            &times,
        );
    }

    // For a profiler (`PEERS_PARTS=profile-storm perf record ...`): layer storms only.
    if parts == "profile-storm" {
        for _ in 0..40 {
            runtime.block_on(storm("layer", layer_arm, 10_000));
        }
    }

    for line in chart {
        println!("{line}");
    }
}
