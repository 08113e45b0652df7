//! Fixtures the benches share (and `tests/alloc.rs`, which counts the allocations of the path
//! `hot_path.rs` times): a token source that answers at once, a no-op inner service and waker,
//! the static `SetRequestHeader` baseline, and the paired comparison.

// Every bench compiles its own copy of this module and uses only some of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{Request, Response};
use tower::{Service, ServiceBuilder};
use tower_client_credentials::{BoxFuture, Error, Token, TokenSource};
use tower_http::set_header::{SetRequestHeader, SetRequestHeaderLayer};

/// A token source that answers at once with this token, valid for an hour.
pub(crate) struct StaticSource(pub(crate) &'static str);

impl TokenSource for StaticSource {
    fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
        let token = self.0;
        Box::pin(async move { Token::bearer(token, Some(Duration::from_secs(3600))) })
    }
}

struct NoopWake;

impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

/// A waker that does nothing: services are driven by hand, outside any runtime.
pub(crate) fn noop_waker() -> Waker {
    Waker::from(Arc::new(NoopWake))
}

pub(crate) type NoopFuture = std::future::Ready<Result<Response<()>, Infallible>>;
pub(crate) type NoopService = tower::util::ServiceFn<fn(Request<()>) -> NoopFuture>;

/// The inner service's function: takes the request (dropping it, headers included) and answers
/// at once.
fn noop(request: Request<()>) -> NoopFuture {
    drop(black_box(request));
    std::future::ready(Ok(Response::new(())))
}

/// The inner service every arm wraps; see [`noop`].
pub(crate) fn noop_inner() -> NoopService {
    tower::service_fn(noop as fn(Request<()>) -> NoopFuture)
}

/// tower-http's `SetRequestHeader` ×2 adding `Authorization: {bearer}` and `x-api-key` from
/// static values: the floor the layer is compared with.
pub(crate) fn set_request_header_static<S>(
    bearer: &'static str,
    api_key: &'static str,
    inner: S,
) -> SetRequestHeader<SetRequestHeader<S, HeaderValue>, HeaderValue> {
    ServiceBuilder::new()
        .layer(SetRequestHeaderLayer::overriding(
            AUTHORIZATION,
            HeaderValue::from_static(bearer),
        ))
        .layer(SetRequestHeaderLayer::overriding(
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_static(api_key),
        ))
        .service(inner)
}

/// Whether the binary runs as a benchmark (`cargo bench`), not as a test (`cargo test --benches`)
/// nor under a profiler (`--profile-time`): only then is the paired comparison run.
pub(crate) fn benchmarking() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|arg| arg == "--bench") && !args.iter().any(|arg| arg == "--profile-time")
}

/// Whether to run short versions of the paired comparisons (`BENCH_QUICK=1`, as
/// `benches/summary.sh` does).
pub(crate) fn quick() -> bool {
    std::env::var_os("BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Prints the machine-readable line `benches/summary.sh` collects: `ratio <bench>/<arm> <value>`.
pub(crate) fn print_ratio(bench: &str, arm: &str, ratio: f64, low: f64, high: f64) {
    println!("ratio {bench}/{arm} {ratio:.3} (quartiles {low:.3}..{high:.3})");
}

/// The `q` quantile (0.5: the median) of `values`, which it sorts.
pub(crate) fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// Runs the arms in `rounds` rounds, each arm once per round (`calls` calls) in an order rotated
/// every round, and prints each arm's median time per call and the median (and quartiles) of its
/// per-round ratio to arm `baseline`. Robust to the load of other processes, which changes
/// slowly compared with one round.
pub(crate) fn paired(
    label: &str,
    rounds: usize,
    calls: u64,
    baseline: usize,
    arms: &mut [(&str, &mut dyn FnMut() -> Duration)],
) {
    let n = arms.len();
    let mut times = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            times[i].push((arms[i].1)().as_secs_f64());
        }
    }
    let names: Vec<&str> = arms.iter().map(|arm| arm.0).collect();
    report_ratios(label, "wall time", rounds, calls, &names, baseline, &times);
}

/// Prints each arm's median time per call and the median (and quartiles) of its per-round ratio
/// to arm `baseline`; `times[arm][round]` in seconds for `calls` calls; `what` names the time
/// measured (wall time, CPU time).
pub(crate) fn report_ratios(
    label: &str,
    what: &str,
    rounds: usize,
    calls: u64,
    names: &[&str],
    baseline: usize,
    times: &[Vec<f64>],
) {
    let width = names.iter().map(|name| name.len()).max().unwrap_or(0);
    println!("paired {label} ({what}): {rounds} rounds x {calls} calls per arm");
    let mut summary = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut ratios: Vec<f64> = times[i]
            .iter()
            .zip(&times[baseline])
            .map(|(a, b)| a / b)
            .collect();
        let ns = quantile(&mut times[i].clone(), 0.5) / calls as f64 * 1e9;
        let (median, low, high) = (
            quantile(&mut ratios, 0.5),
            quantile(&mut ratios, 0.25),
            quantile(&mut ratios, 0.75),
        );
        println!(
            "paired {label}/{name:<width$} {ns:>8.1} ns/call  ratio to {}: {median:.3} (quartiles {low:.3}..{high:.3})",
            names[baseline],
        );
        if i != baseline {
            summary.push((*name, median, low, high));
        }
    }
    for (name, median, low, high) in summary {
        print_ratio(label, name, median, low, high);
    }
}

/// `poll_ready`, `call` and one poll of the response future, which must all be ready at once.
#[inline]
pub(crate) fn drive<S>(service: &mut S, cx: &mut Context<'_>, request: Request<()>) -> S::Response
where
    S: Service<Request<()>>,
    S::Error: Debug,
{
    match service.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("service not ready: {other:?}"),
    }
    let future = std::pin::pin!(service.call(request));
    match future.poll(cx) {
        Poll::Ready(Ok(response)) => response,
        Poll::Ready(Err(error)) => panic!("service failed: {error:?}"),
        Poll::Pending => panic!("response future pending"),
    }
}

/// Times `calls` calls of `service` through [`drive`]; the requests (from `request`) are built
/// before the clock starts.
pub(crate) fn time_calls<S>(service: &mut S, calls: usize, request: fn() -> Request<()>) -> Duration
where
    S: Service<Request<()>>,
    S::Error: Debug,
{
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    let requests: Vec<_> = (0..calls).map(|_| request()).collect();
    let start = Instant::now();
    for request in requests {
        black_box(drive(service, &mut cx, request));
    }
    start.elapsed()
}
