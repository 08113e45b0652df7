//! A reqwest client (through reqwest-middleware) and a hyper-util client sharing one token:
//! `BearerAuthMiddleware` is made from the same `BearerAuthLayer` that wraps the hyper client.
//! No credentials or network needed: a loopback authorization server and API stand in for the
//! real ones.
//!
//! Run with `cargo run --example reqwest --features reqwest`.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use reqwest_middleware::ClientBuilder;
use tower::{ServiceBuilder, ServiceExt};
use tower_client_credentials::reqwest::BearerAuthMiddleware;
use tower_client_credentials::testing::{ApiServer, AuthServer};
use tower_client_credentials::{BearerAuthLayer, BoxError, ClientCredentials};

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
    let layer = BearerAuthLayer::new(credentials).with_header("x-api-key", api_key)?;

    let reqwest = ClientBuilder::new(reqwest::Client::new())
        .with(BearerAuthMiddleware::new(&layer))
        .build();
    let hyper = ServiceBuilder::new()
        .layer(layer.clone())
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    let response = reqwest
        .get(format!("{}/from-reqwest", api.url()))
        .send()
        .await?;
    println!("reqwest: {}", response.status());
    let request = Request::get(format!("{}/from-hyper", api.url())).body(Full::default())?;
    let response = hyper.oneshot(request).await?;
    println!("hyper:   {}", response.status());
    println!("token requests: {}", auth.token_requests());
    Ok(())
}
