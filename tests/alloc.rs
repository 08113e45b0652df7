//! The hot path allocates nothing of its own (issue 7, goal 5; DESIGN.md rule 1).
//!
//! With a fresh token cached, `poll_ready` + `call` + polling the response future to completion
//! through `BearerAuth` must allocate no more than tower-http's `SetRequestHeader` ×2 adding the
//! same two headers to the same request; and on a request whose header map has room, neither may
//! allocate at all.
//!
//! Allocations are counted by `allocation-counter`'s global allocator, per thread: only what the
//! measuring thread does inside `measure` counts, so the test harness, other tests and runtime
//! threads cannot disturb it. The measured code runs on this thread, polled by hand with a no-op
//! waker: no runtime, no paused clock, no timing. Requests are built before measuring.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::task::{Context, Poll};

use allocation_counter::AllocationInfo;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{Request, Response};
use tower::{Layer, Service, ServiceBuilder};
use tower_client_credentials::{BearerAuthLayer, TokenCache};
use tower_http::set_header::SetRequestHeaderLayer;

// The fixtures of the hot-path benches, whose path this test counts the allocations of.
#[path = "../benches/common/mod.rs"]
mod bench_common;
use bench_common::{noop_waker, StaticSource};

const TOKEN: &str = "eyJraWQiOiJrZXktMSIsImFsZyI6IlJTMjU2In0.eyJzdWIiOiJhbGxvYy10ZXN0In0.c2ln";
const API_KEY: &str = "3f6c2b1e-9d4a-4c1b-8e2f-7a5d0c9b1e42";
const CALLS: usize = 100;

type NoopFuture = std::future::Ready<Result<Response<()>, Infallible>>;
type NoopService = tower::util::ServiceFn<fn(Request<()>) -> NoopFuture>;

/// The inner service: checks the headers arrived, drops the request, answers at once.
fn noop(request: Request<()>) -> NoopFuture {
    assert_eq!(
        request.headers()[AUTHORIZATION],
        format!("Bearer {TOKEN}").as_str().as_bytes()
    );
    assert_eq!(request.headers()["x-api-key"], API_KEY);
    std::future::ready(Ok(Response::new(())))
}

/// `noop` without the checks (their `format!` would allocate inside the measured section).
fn quiet_noop(request: Request<()>) -> NoopFuture {
    drop(request);
    std::future::ready(Ok(Response::new(())))
}

fn inner(check: bool) -> NoopService {
    if check {
        tower::service_fn(noop as fn(Request<()>) -> NoopFuture)
    } else {
        tower::service_fn(quiet_noop as fn(Request<()>) -> NoopFuture)
    }
}

/// A request as an application builds it: an empty header map, which allocates on first insert.
fn fresh_request() -> Request<()> {
    Request::get("http://api.example.com/v1/items")
        .body(())
        .unwrap()
}

/// A request whose header map already has room for the headers the middleware adds.
fn roomy_request() -> Request<()> {
    let mut request = fresh_request();
    request.headers_mut().reserve(8);
    request
}

/// `poll_ready`, `call` and polling the response future to completion, all by hand.
fn drive<S>(service: &mut S, request: Request<()>) -> S::Response
where
    S: Service<Request<()>>,
    S::Error: Debug,
{
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    drive_with(service, &mut cx, request)
}

fn drive_with<S>(service: &mut S, cx: &mut Context<'_>, request: Request<()>) -> S::Response
where
    S: Service<Request<()>>,
    S::Error: Debug,
{
    match service.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(error)) => panic!("poll_ready failed: {error:?}"),
        // Never on the fresh-token path: it would mean no token is cached.
        Poll::Pending => panic!("poll_ready pending with a fresh token cached"),
    }
    let mut future = std::pin::pin!(service.call(request));
    loop {
        match future.as_mut().poll(cx) {
            Poll::Ready(Ok(response)) => return response,
            Poll::Ready(Err(error)) => panic!("call failed: {error:?}"),
            Poll::Pending => continue,
        }
    }
}

/// Counts the allocations of `CALLS` calls through `service`, requests built beforehand.
fn measure_calls<S>(service: &mut S, make_request: fn() -> Request<()>) -> AllocationInfo
where
    S: Service<Request<()>>,
    S::Error: Debug,
{
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut requests: Vec<_> = (0..CALLS).map(|_| make_request()).collect();
    let mut responses = Vec::with_capacity(CALLS);
    let info = allocation_counter::measure(|| {
        for request in requests.drain(..) {
            responses.push(drive_with(service, &mut cx, request));
        }
    });
    assert_eq!(responses.len(), CALLS);
    info
}

fn layered(cache: &TokenCache, check: bool) -> impl Service<Request<()>, Error = tower::BoxError> {
    BearerAuthLayer::from_cache(cache.clone())
        .with_header("x-api-key", API_KEY)
        .unwrap()
        .layer(inner(check))
}

fn baseline(check: bool) -> impl Service<Request<()>, Error = Infallible> {
    // The same kind of values as the layer's: a reference-counted name and values, sensitive.
    let mut bearer = HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap();
    bearer.set_sensitive(true);
    let mut key = HeaderValue::from_str(API_KEY).unwrap();
    key.set_sensitive(true);
    ServiceBuilder::new()
        .layer(SetRequestHeaderLayer::overriding(AUTHORIZATION, bearer))
        .layer(SetRequestHeaderLayer::overriding(
            HeaderName::from_bytes(b"x-api-key").unwrap(),
            key,
        ))
        .service(inner(check))
}

/// A cache holding a fresh token. The runtime is only needed to fetch it; the measured calls run
/// outside any runtime, so nothing but the service can allocate on this thread.
fn fresh_cache() -> TokenCache {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = TokenCache::new(StaticSource(TOKEN));
    runtime.block_on(cache.prefetch()).unwrap();
    cache
}

#[test]
fn counting_allocator_is_active() {
    // Guards every assertion below against passing vacuously.
    let info = allocation_counter::measure(|| {
        std::hint::black_box(Box::new(1_u64));
    });
    assert_eq!(info.count_total, 1);
}

#[test]
fn fresh_token_path_allocates_no_more_than_set_request_header() {
    let cache = fresh_cache();
    // Checked once, outside measurement: both arms add the headers they claim.
    drive(&mut layered(&cache, true), fresh_request());
    drive(&mut baseline(true), fresh_request());

    let mut layer = layered(&cache, false);
    let mut base = baseline(false);
    // Warm-up: the first clone of a `from_str` value or custom name promotes its `Bytes` to the
    // shared form (one allocation per value, once), and the first `ArcSwap` load on a thread
    // registers the thread (once).
    for _ in 0..3 {
        drive(&mut layer, fresh_request());
        drive(&mut base, fresh_request());
    }

    let layer_fresh = measure_calls(&mut layer, fresh_request);
    let base_fresh = measure_calls(&mut base, fresh_request);
    eprintln!("{CALLS} calls, fresh requests: BearerAuth {layer_fresh:?}, baseline {base_fresh:?}");
    assert!(
        layer_fresh.count_total <= base_fresh.count_total,
        "BearerAuth made {} allocations ({} bytes) for {CALLS} calls, SetRequestHeader x2 made {} \
         ({} bytes)",
        layer_fresh.count_total,
        layer_fresh.bytes_total,
        base_fresh.count_total,
        base_fresh.bytes_total,
    );
    assert!(layer_fresh.bytes_total <= base_fresh.bytes_total);

    // With room in the header map the baseline allocates nothing, and so must the layer.
    let layer_roomy = measure_calls(&mut layer, roomy_request);
    let base_roomy = measure_calls(&mut base, roomy_request);
    assert_eq!(base_roomy.count_total, 0, "baseline: {base_roomy:?}");
    assert_eq!(layer_roomy.count_total, 0, "BearerAuth: {layer_roomy:?}");
}

#[test]
fn poll_ready_alone_allocates_nothing() {
    let cache = fresh_cache();
    let mut layer = layered(&cache, false);
    drive(&mut layer, fresh_request());
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    let info = allocation_counter::measure(|| {
        for _ in 0..CALLS {
            // Repeated `poll_ready` without `call` keeps the held token: still no allocation.
            assert!(matches!(layer.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        }
    });
    assert_eq!(info.count_total, 0, "{info:?}");
}
