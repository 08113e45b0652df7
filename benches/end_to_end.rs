//! End to end (issue 7, goal 4): HTTP/1.1 requests through a hyper-util legacy client to a
//! minimal hyper server on 127.0.0.1, with the layer (fresh token, prefetched) and without it
//! (the same two headers added by two static `SetRequestHeader` layers, so that the same bytes
//! go over the wire and the server does the same work). The server answers 200 when both headers
//! are present, 401 otherwise; every response is checked and its body read to the end.
//!
//! Goal: `end_to_end/bearer_auth` ≤ 1.05 × `end_to_end/set_request_header`.
//!
//! Client and server share one current-thread tokio runtime (less scheduling noise than two
//! workers on a shared 2-core machine). Besides criterion's report, the bench prints a paired
//! comparison (alternating rounds of 200 requests per arm; median of the per-round ratios).
//!
//! Run: `cargo bench --bench end_to_end -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // `criterion_group!` generates an undocumented public function.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_client_credentials::{BearerAuthLayer, TokenCache};
use tower_http::set_header::SetRequestHeaderLayer;

mod common;
use common::{benchmarking, print_ratio, quantile, StaticSource};

const TOKEN: &str = "eyJraWQiOiJrZXktMSIsImFsZyI6IlJTMjU2In0.eyJzdWIiOiJiZW5jaC1jbGllbnQifQ.c2ln";
const BEARER: &str =
    "Bearer eyJraWQiOiJrZXktMSIsImFsZyI6IlJTMjU2In0.eyJzdWIiOiJiZW5jaC1jbGllbnQifQ.c2ln";
const API_KEY: &str = "3f6c2b1e-9d4a-4c1b-8e2f-7a5d0c9b1e42";
/// Requests per arm per round of the paired comparison, and rounds.
const PAIRED_REQUESTS: usize = 200;
const PAIRED_ROUNDS: usize = 60;

/// A minimal HTTP/1.1 server on loopback: 200 with an empty body when `authorization` and
/// `x-api-key` are present, else 401. Runs until the runtime is dropped.
async fn start_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|request: Request<hyper::body::Incoming>| {
                        let authorized = request.headers().contains_key(AUTHORIZATION)
                            && request.headers().contains_key("x-api-key");
                        let mut response = Response::new(Empty::<Bytes>::new());
                        if !authorized {
                            *response.status_mut() = StatusCode::UNAUTHORIZED;
                        }
                        std::future::ready(Ok::<_, Infallible>(response))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// One request through `client`: ready, call, status check, body read to the end.
async fn one_request<S>(client: &mut S, uri: &http::Uri)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<hyper::body::Incoming>>,
    S::Error: Into<BoxError>,
{
    let request = Request::get(uri.clone()).body(Empty::new()).unwrap();
    let response = client
        .ready()
        .await
        .map_err(Into::into)
        .unwrap()
        .call(request)
        .await
        .map_err(Into::into)
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
}

async fn time_requests<S>(client: &mut S, uri: &http::Uri, n: usize) -> Duration
where
    S: Service<Request<Empty<Bytes>>, Response = Response<hyper::body::Incoming>>,
    S::Error: Into<BoxError>,
{
    let start = Instant::now();
    for _ in 0..n {
        one_request(client, uri).await;
    }
    start.elapsed()
}

fn end_to_end(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = runtime.block_on(start_server());
    let uri: http::Uri = format!("http://{addr}/v1/items").parse().unwrap();

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let cache = TokenCache::new(StaticSource(TOKEN));
    runtime.block_on(cache.prefetch()).unwrap();
    let mut layered = ServiceBuilder::new()
        .layer(
            BearerAuthLayer::from_cache(cache)
                .with_header("x-api-key", API_KEY)
                .unwrap(),
        )
        .service(client.clone());
    let mut baseline = ServiceBuilder::new()
        .layer(SetRequestHeaderLayer::overriding(
            AUTHORIZATION,
            HeaderValue::from_static(BEARER),
        ))
        .layer(SetRequestHeaderLayer::overriding(
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_static(API_KEY),
        ))
        .service(client);
    // Both arms share the client's connection pool; open the connection before measuring.
    runtime.block_on(async {
        time_requests(&mut layered, &uri, 10).await;
        time_requests(&mut baseline, &uri, 10).await;
    });

    let mut group = c.benchmark_group("end_to_end");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("bearer_auth", |b| {
        b.iter_custom(|iters| runtime.block_on(time_requests(&mut layered, &uri, iters as usize)))
    });
    group.bench_function("set_request_header", |b| {
        b.iter_custom(|iters| runtime.block_on(time_requests(&mut baseline, &uri, iters as usize)))
    });
    group.finish();

    if benchmarking() {
        let mut layer_times = Vec::with_capacity(PAIRED_ROUNDS);
        let mut baseline_times = Vec::with_capacity(PAIRED_ROUNDS);
        runtime.block_on(async {
            for round in 0..PAIRED_ROUNDS {
                // Alternate which arm goes first.
                if round % 2 == 0 {
                    layer_times.push(time_requests(&mut layered, &uri, PAIRED_REQUESTS).await);
                    baseline_times.push(time_requests(&mut baseline, &uri, PAIRED_REQUESTS).await);
                } else {
                    baseline_times.push(time_requests(&mut baseline, &uri, PAIRED_REQUESTS).await);
                    layer_times.push(time_requests(&mut layered, &uri, PAIRED_REQUESTS).await);
                }
            }
        });
        let per_request = |times: &[Duration]| {
            let mut v: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
            quantile(&mut v, 0.5) / PAIRED_REQUESTS as f64 * 1e6
        };
        let mut ratios: Vec<f64> = layer_times
            .iter()
            .zip(&baseline_times)
            .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
            .collect();
        println!("paired end_to_end: {PAIRED_ROUNDS} rounds x {PAIRED_REQUESTS} requests per arm");
        let (median, low, high) = (
            quantile(&mut ratios, 0.5),
            quantile(&mut ratios, 0.25),
            quantile(&mut ratios, 0.75),
        );
        println!(
            "paired end_to_end/bearer_auth {:.2} us/request, set_request_header {:.2} us/request, \
             ratio {median:.3} (quartiles {low:.3}..{high:.3})",
            per_request(&layer_times),
            per_request(&baseline_times),
        );
        print_ratio("end_to_end", "bearer_auth", median, low, high);
    }
    drop(runtime);
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
