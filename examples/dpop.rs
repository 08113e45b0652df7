//! DPoP (RFC 9449) through a hyper-util client: the token is bound to a generated ES256 key, and
//! every API request carries `Authorization: DPoP <token>` and a fresh proof. The loopback API
//! verifies each proof and asks for a server nonce, which the retry layer answers. No
//! credentials or network needed.
//!
//! Run with `cargo run --example dpop --features dpop`.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_client_credentials::dpop::DpopKey;
use tower_client_credentials::testing::{ApiServer, AuthServer};
use tower_client_credentials::{BearerAuthLayer, BoxError, ClientCredentials};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let api_key = "example-api-key";
    let auth = AuthServer::start().await?;
    let api = ApiServer::start(&auth, api_key).await?;
    api.require_dpop_nonce(Some("nonce-from-the-api"));

    // One key for both halves: the token request's proof and every API request's proof.
    let key = DpopKey::generate()?;
    let credentials = ClientCredentials::builder()
        .token_endpoint(auth.token_endpoint())?
        .client_id(AuthServer::CLIENT_ID)
        .client_secret(AuthServer::CLIENT_SECRET)
        .dpop(key.clone())
        .build()?;
    let layer = BearerAuthLayer::new(credentials)
        .with_header("x-api-key", api_key)?
        .dpop(key.clone())
        .retry_on_unauthorized();
    let client = ServiceBuilder::new()
        .layer(layer)
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    for page in 0..3 {
        let request =
            Request::get(format!("{}/items?page={page}", api.url())).body(Full::default())?;
        let response = client.clone().oneshot(request).await?;
        assert_eq!(response.status(), StatusCode::OK);
        println!("GET /items?page={page} -> {}", response.status());
    }
    println!(
        "key thumbprint {}; API accepted {}, rejected {} (the nonce challenge); token requests {}",
        key.thumbprint(),
        api.accepted(),
        api.rejected(),
        auth.token_requests()
    );
    Ok(())
}
