//! DPoP per-request cost (issue 14): one request through the DPoP layer (`BearerAuthLayer::dpop`,
//! a DPoP-bound token cached, a fresh ES256 or EdDSA proof with `ath` per request) against the
//! same request through the bearer layer, over a no-op inner service, driven by hand
//! (`poll_ready`, `call`, one poll of the response future; no runtime) as in `hot_path`.
//!
//! The proof is per request by design (RFC 9449 §4: a new `jti`, `iat` and signature each
//! time), so the ratio is the cost of that signature against the bearer hot path; `proof/*`
//! times the signing alone.
//!
//! Besides criterion's report, the bench prints a paired comparison: the arms run in alternating
//! rounds and the ratio is the median of the per-round ratios (see `hot_path`).
//!
//! Run: `cargo bench --all-features --bench dpop -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // `criterion_group!` generates an undocumented public function.

use std::task::Context;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{Method, Request, Uri};
use tower::Layer;
use tower_client_credentials::dpop::{DpopAlgorithm, DpopAuthLayer, DpopKey};
use tower_client_credentials::{BearerAuthLayer, BoxFuture, Error, Token, TokenSource};

mod common;
use common::{benchmarking, drive, noop_inner, noop_waker, paired, time_calls, StaticSource};

/// A realistic access token: a JWT of ~600 bytes, as in `hot_path`.
const TOKEN: &str =
    "eyJraWQiOiJrZXktMSIsImFsZyI6IlJTMjU2In0.eyJ2ZXIiOjEsImp0aSI6IkFULmJlbmNobWFyay10b2tlbiIsI\
mlzcyI6Imh0dHBzOi8vaWRtLmV4YW1wbGUuY29tL29hdXRoMi9kZWZhdWx0IiwiYXVkIjoiYXBpOi8vZGVmYXVsdC\
IsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDAzNjAwLCJjaWQiOiJiZW5jaC1jbGllbnQiLCJzY3AiOlsicm9s\
ZTphcHAiLCJvcmdhbml6YXRpb246cmVhZCJdLCJzdWIiOiJiZW5jaC1jbGllbnQifQ.c2lnbmF0dXJlLXNpZ25hdH\
VyZS1zaWduYXR1cmUtc2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmUtc2lnbmF0dXJlLXNpZ25hdHVyZQ";
const API_KEY: &str = "3f6c2b1e-9d4a-4c1b-8e2f-7a5d0c9b1e42";
const URL: &str = "https://api.example.com/v1/items?page=2";

/// Calls per arm per round of the paired comparison, and rounds.
const PAIRED_CALLS: usize = 200;
const PAIRED_ROUNDS: usize = 200;

/// Like `common::StaticSource`, but the token is DPoP-bound.
struct DpopSource(&'static str);

impl TokenSource for DpopSource {
    fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
        let token = self.0;
        Box::pin(async move { Token::dpop(token, Some(Duration::from_secs(3600))) })
    }
}

fn request() -> Request<()> {
    Request::get(URL).body(()).unwrap()
}

fn bearer_layer(runtime: &tokio::runtime::Runtime) -> BearerAuthLayer {
    let layer = BearerAuthLayer::new(StaticSource(TOKEN))
        .with_header("x-api-key", API_KEY)
        .unwrap();
    runtime.block_on(layer.cache().prefetch()).unwrap();
    layer
}

fn dpop_layer(runtime: &tokio::runtime::Runtime, algorithm: DpopAlgorithm) -> DpopAuthLayer {
    let layer = BearerAuthLayer::new(DpopSource(TOKEN))
        .with_header("x-api-key", API_KEY)
        .unwrap();
    runtime.block_on(layer.cache().prefetch()).unwrap();
    layer.dpop(DpopKey::generate_with(algorithm).unwrap())
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);

    let mut group = c.benchmark_group("dpop");
    let mut bearer = bearer_layer(&runtime).layer(noop_inner());
    group.bench_function("bearer_auth", |b| {
        b.iter_batched(
            request,
            |request| drive(&mut bearer, &mut cx, request),
            BatchSize::SmallInput,
        )
    });
    let mut es256 = dpop_layer(&runtime, DpopAlgorithm::ES256).layer(noop_inner());
    let mut eddsa = dpop_layer(&runtime, DpopAlgorithm::EdDSA).layer(noop_inner());
    for (name, service) in [("dpop_es256", &mut es256), ("dpop_eddsa", &mut eddsa)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                request,
                |request| drive(service, &mut cx, request),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();

    let mut group = c.benchmark_group("proof");
    let uri: Uri = URL.parse().unwrap();
    for (name, algorithm) in [
        ("es256", DpopAlgorithm::ES256),
        ("eddsa", DpopAlgorithm::EdDSA),
    ] {
        let key = DpopKey::generate_with(algorithm).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| key.proof(&Method::GET, &uri, Some(TOKEN)).unwrap())
        });
    }
    group.finish();

    if benchmarking() {
        paired(
            "dpop",
            PAIRED_ROUNDS,
            PAIRED_CALLS as u64,
            0,
            &mut [
                ("bearer_auth", &mut || {
                    time_calls(&mut bearer, PAIRED_CALLS, request)
                }),
                ("dpop_es256", &mut || {
                    time_calls(&mut es256, PAIRED_CALLS, request)
                }),
                ("dpop_eddsa", &mut || {
                    time_calls(&mut eddsa, PAIRED_CALLS, request)
                }),
            ],
        );
    }
}

criterion_group!(dpop, benches);
criterion_main!(dpop);
