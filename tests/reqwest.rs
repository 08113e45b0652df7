//! `BearerAuthMiddleware` (feature `reqwest`) on a reqwest-middleware client, sharing one token
//! cache with a hyper-util client wrapped in the same `BearerAuthLayer`, against the loopback
//! authorization server and protected API.

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Full;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tower::{ServiceBuilder, ServiceExt};
use tower_client_credentials::reqwest::BearerAuthMiddleware;
use tower_client_credentials::testing::{ApiServer, AuthServer, Behavior};
use tower_client_credentials::{BearerAuthLayer, Error, ErrorKind};

mod common;
use common::{default_client, hyper_client};

const API_KEY: &str = "api-key-51d0a4";

fn layer(auth: &AuthServer) -> BearerAuthLayer {
    let credentials = default_client(auth).scopes(["role:app"]).build().unwrap();
    BearerAuthLayer::new(credentials)
        .with_header("x-api-key", API_KEY)
        .unwrap()
}

fn reqwest_client(layer: &BearerAuthLayer) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(BearerAuthMiddleware::new(layer))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_and_reqwest_clients_share_one_token() {
    let auth = AuthServer::start().await.unwrap();
    // A slow token endpoint: both clients race for the first token.
    auth.push_behavior([Behavior::Delay(Duration::from_millis(200))]);
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let layer = layer(&auth);
    let hyper = ServiceBuilder::new()
        .layer(layer.clone())
        .service(hyper_client());
    let reqwest = reqwest_client(&layer);

    let mut calls = tokio::task::JoinSet::new();
    for i in 0..20 {
        let url = format!("{}/items?page={i}", api.url());
        let hyper = hyper.clone();
        let request = Request::get(url.clone()).body(Full::default()).unwrap();
        calls.spawn(async move { hyper.oneshot(request).await.unwrap().status() });
        let reqwest = reqwest.clone();
        calls.spawn(async move { reqwest.get(url).send().await.unwrap().status() });
    }
    while let Some(status) = calls.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert_eq!(api.accepted(), 40);
    assert_eq!(auth.token_requests(), 1);
}

#[tokio::test]
async fn the_middleware_replaces_headers_the_request_brought() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let client = reqwest_client(&layer(&auth));
    let response = client
        .get(api.url())
        .bearer_auth("stale-token")
        .header("x-api-key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Guard: without the middleware the API refuses.
    let bare = reqwest::Client::new()
        .get(api.url())
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn token_failure_is_a_middleware_error_and_nothing_is_sent() {
    let auth = AuthServer::start().await.unwrap();
    auth.set_default_behavior(Some(Behavior::invalid_client()));
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let client = reqwest_client(&layer(&auth));
    let error = client.get(api.url()).send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(error) = error else {
        panic!("expected a middleware error, got {error:?}");
    };
    let error = error
        .downcast_ref::<Error>()
        .expect("the crate's error inside");
    assert_eq!(error.kind(), ErrorKind::TokenEndpoint);
    assert_eq!(error.oauth_error().unwrap().error, "invalid_client");
    assert!(!error.to_string().contains(AuthServer::CLIENT_SECRET));
    assert_eq!(api.accepted() + api.rejected(), 0);
}
