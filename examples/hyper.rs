//! A hyper-util client over HTTP/1.1 and one over HTTP/2 (h2c), each in a `ServiceBuilder` stack
//! with tracing and a timeout, sharing one `BearerAuthLayer`: many concurrent requests from a
//! multi-threaded runtime, one token request. No credentials or network needed: a loopback
//! authorization server and API stand in for the real ones.
//!
//! Run with `cargo run --example hyper` (`RUST_LOG=tower_http=debug` to see the trace spans).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::timeout::TimeoutLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_client_credentials::testing::{ApiServer, AuthServer};
use tower_client_credentials::{BearerAuthLayer, BoxError, ClientCredentials};
use tower_http::trace::TraceLayer;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let api_key = "example-api-key";
    let auth = AuthServer::start().await?;
    let api = ApiServer::start(&auth, api_key).await?;

    let credentials = ClientCredentials::builder()
        .token_endpoint(auth.token_endpoint())?
        .client_id(AuthServer::CLIENT_ID)
        .client_secret(AuthServer::CLIENT_SECRET)
        .scopes(["role:app", "organization:read"])
        .build()?;
    let layer = BearerAuthLayer::new(credentials).with_header("x-api-key", api_key)?;

    let stack = |http2: bool| {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .build_http::<Full<Bytes>>();
        ServiceBuilder::new()
            .layer(TraceLayer::new_for_http())
            .layer(TimeoutLayer::new(Duration::from_secs(10)))
            .layer(layer.clone())
            .service(client)
    };
    let (http1, http2) = (stack(false), stack(true));

    let mut calls = tokio::task::JoinSet::new();
    for i in 0..100 {
        let client = if i % 2 == 0 {
            http1.clone()
        } else {
            http2.clone()
        };
        let request = Request::get(format!("{}/items?page={i}", api.url())).body(Full::default())?;
        calls.spawn(async move {
            let response = client.oneshot(request).await?;
            Ok::<_, BoxError>((response.status(), response.version()))
        });
    }
    let (mut http1_ok, mut http2_ok, mut failed) = (0, 0, 0);
    while let Some(call) = calls.join_next().await {
        match call? {
            Ok((StatusCode::OK, http::Version::HTTP_2)) => http2_ok += 1,
            Ok((StatusCode::OK, _)) => http1_ok += 1,
            Ok((status, _)) => {
                failed += 1;
                eprintln!("unexpected status {status}");
            }
            Err(error) => {
                failed += 1;
                eprintln!("request failed: {error}");
            }
        }
    }
    println!("HTTP/1.1: {http1_ok} OK, HTTP/2: {http2_ok} OK, failed: {failed}");
    println!("token requests: {}", auth.token_requests());
    Ok(())
}
