//! A tonic gRPC client whose `Channel` is wrapped in `BearerAuthLayer`, calling a gRPC server
//! that wants a bearer token and an API key (the standard health service, checked by an
//! interceptor). No credentials or network needed: a loopback authorization server stands in
//! for the real one.
//!
//! Run with `cargo run --example tonic`.

use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic::Status;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceBuilder;
use tower_client_credentials::testing::AuthServer;
use tower_client_credentials::{BearerAuthLayer, BoxError, ClientCredentials};

const API_KEY: &str = "example-api-key";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let auth = Arc::new(AuthServer::start().await?);
    let server = grpc_server(auth.clone()).await?;

    // The client side: what an application writes.
    let credentials = ClientCredentials::builder()
        .token_endpoint(auth.token_endpoint())?
        .client_id(AuthServer::CLIENT_ID)
        .client_secret(AuthServer::CLIENT_SECRET)
        .scopes(["role:app"])
        .build()?;
    let channel = Endpoint::from_shared(server.clone())?.connect_lazy();
    let channel = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(credentials).with_header("x-api-key", API_KEY)?)
        .service(channel);
    let mut client = HealthClient::new(channel);

    for _ in 0..3 {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        match client.check(request).await {
            Ok(response) => println!("health: {:?}", response.into_inner().status()),
            Err(status) => println!("failed: {:?} {}", status.code(), status.message()),
        }
    }
    println!("token requests: {}", auth.token_requests());

    // Without the layer, the server refuses.
    let mut bare = HealthClient::new(Endpoint::from_shared(server)?.connect_lazy());
    let refused = bare
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    println!(
        "without the layer: {:?}",
        refused.map_err(|status| status.code()).map(|_| ())
    );
    Ok(())
}

/// A gRPC server on loopback with the health service, behind an interceptor that wants a token
/// `auth` issued and the API key.
async fn grpc_server(auth: Arc<AuthServer>) -> Result<String, BoxError> {
    let check = move |request: tonic::Request<()>| {
        let metadata = request.metadata();
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let key_ok = metadata.get("x-api-key").is_some_and(|k| k == API_KEY);
        match token {
            Some(token) if key_ok && auth.is_valid_token(token) => Ok(request),
            _ => Err(Status::unauthenticated(
                "a valid bearer token and API key are required",
            )),
        }
    };
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(
        Server::builder()
            .add_service(InterceptedService::new(health, check))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    Ok(url)
}
