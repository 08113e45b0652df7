//! An axum server whose handler calls a protected API through one layered hyper-util client kept
//! in the router's state: every handler clones it, all clones share one token. No credentials or
//! network needed: a loopback authorization server and API stand in for the real ones.
//!
//! Run with `cargo run --example axum`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_client_credentials::testing::{ApiServer, AuthServer};
use tower_client_credentials::{BearerAuth, BearerAuthLayer, BoxError, ClientCredentials};

/// The app's state: `BearerAuth<Client<..>>` is `Clone + Send + Sync`, as axum wants.
#[derive(Clone)]
struct AppState {
    api: BearerAuth<Client<HttpConnector, Full<Bytes>>>,
    api_url: Arc<str>,
}

async fn organizations(State(state): State<AppState>) -> Result<String, StatusCode> {
    let request = Request::get(format!("{}/organizations", state.api_url))
        .body(Full::default())
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    // A token failure or a transport error: the API could not be asked.
    let response = state.api.oneshot(request).await.map_err(|error| {
        eprintln!("downstream call failed: {error}");
        StatusCode::BAD_GATEWAY
    })?;
    if !response.status().is_success() {
        return Err(StatusCode::BAD_GATEWAY);
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|_| StatusCode::BAD_GATEWAY)?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let api_key = "example-api-key";
    let auth = AuthServer::start().await?;
    let api = ApiServer::start(&auth, api_key).await?;

    let credentials = ClientCredentials::builder()
        .token_endpoint(auth.token_endpoint())?
        .client_id(AuthServer::CLIENT_ID)
        .client_secret(AuthServer::CLIENT_SECRET)
        .scopes(["role:app", "organization:read"])
        .build()?;
    let state = AppState {
        api: ServiceBuilder::new()
            .layer(BearerAuthLayer::new(credentials).with_header("x-api-key", api_key)?)
            .service(Client::builder(TokioExecutor::new()).build_http()),
        api_url: api.url().into(),
    };
    let app = Router::new()
        .route("/organizations", get(organizations))
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/organizations", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("axum server: {url}");

    // Callers of the axum server: 20 at once.
    let caller = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let request = Request::get(&url).body(Full::default())?;
        let caller = caller.clone();
        calls.spawn(async move { caller.request(request).await.map(|r| r.status()) });
    }
    let mut ok = 0;
    while let Some(call) = calls.join_next().await {
        match call? {
            Ok(StatusCode::OK) => ok += 1,
            other => eprintln!("unexpected: {other:?}"),
        }
    }
    println!(
        "{ok} of 20 calls OK; API accepted {}; token requests: {}",
        api.accepted(),
        auth.token_requests()
    );
    Ok(())
}
