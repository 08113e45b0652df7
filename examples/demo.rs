//! The whole flow with no credentials and no network: a local authorization server, a local
//! API that wants a bearer token and an API key, and 1,000 concurrent requests through a
//! hyper-util client wrapped in `BearerAuthLayer`.
//!
//! Run with `cargo run --example demo`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_client_credentials::testing::{ApiServer, AuthServer, Behavior};
use tower_client_credentials::{BearerAuthLayer, BoxError, ClientCredentials};

const REQUESTS: usize = 1_000;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // What a Floriday application gets by email: a client id and secret, and an API key.
    let api_key = "demo-api-key";
    let auth = AuthServer::start().await?;
    // A slow token endpoint makes the race for the first token real.
    auth.push_behavior([Behavior::Delay(Duration::from_millis(250))]);
    let api = ApiServer::start(&auth, api_key).await?;
    println!("authorization server: {} (issuer)", auth.issuer());
    println!("protected API:        {}", api.url());

    let credentials = ClientCredentials::builder()
        .issuer(auth.issuer())? // the token endpoint is found through RFC 8414 metadata
        .client_id(AuthServer::CLIENT_ID)
        .client_secret(AuthServer::CLIENT_SECRET)
        .scopes(["role:app", "catalog:read", "organization:read"])
        .build()?;
    let layer = BearerAuthLayer::new(credentials.clone()).with_header("x-api-key", api_key)?;
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let mut client = client.clone();
        let url = format!("{}/apps/organizations?page={i}", api.url());
        calls.spawn(async move {
            let request = Request::get(url).body(Full::default())?;
            let response = client.ready().await?.call(request).await?;
            Ok::<_, BoxError>(response.status())
        });
    }
    let (mut ok, mut failed) = (0, 0);
    while let Some(result) = calls.join_next().await {
        match result? {
            Ok(StatusCode::OK) => ok += 1,
            Ok(status) => {
                failed += 1;
                eprintln!("unexpected status {status}");
            }
            Err(error) => {
                failed += 1;
                eprintln!("request failed: {error}");
            }
        }
    }
    let elapsed = started.elapsed();

    let token = layer.cache().cached().ok_or("no token cached")?;
    println!();
    println!(
        "{REQUESTS} concurrent requests in {} ms",
        elapsed.as_millis()
    );
    println!(
        "token endpoint used:  {}",
        credentials
            .token_endpoint()
            .map(|u| u.to_string())
            .unwrap_or_default()
    );
    println!(
        "token requests seen by the authorization server: {}",
        auth.token_requests()
    );
    println!(
        "API calls accepted: {ok}, failed: {failed} (API saw {} rejected)",
        api.rejected()
    );
    println!(
        "granted scopes: {}",
        token.scope().unwrap_or("(none returned)")
    );
    println!(
        "token remaining lifetime: {} s",
        token.remaining_lifetime().unwrap_or_default().as_secs()
    );
    // What a health or readiness check would report: state, expiry, scopes; never the token.
    println!("token status: {}", layer.cache().status());
    if auth.token_requests() != 1 || ok != REQUESTS {
        return Err("the demo did not go as expected".into());
    }
    Ok(())
}
