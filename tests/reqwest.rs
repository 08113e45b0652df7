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
use tower_client_credentials::{BearerAuthLayer, BoxFuture, Error, ErrorKind, Token, TokenSource};

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

/// A DPoP-bound token needs a proof this middleware cannot make: the request is not sent.
#[tokio::test]
async fn a_bearer_middleware_refuses_to_send_a_dpop_bound_token() {
    struct Bound;
    impl TokenSource for Bound {
        fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
            Box::pin(async { Token::dpop("bound-t0k3n", Some(Duration::from_secs(60))) })
        }
    }
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let client = reqwest_client(&BearerAuthLayer::new(Bound));
    let error = client.get(api.url()).send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(error) = error else {
        panic!("expected a middleware error, got {error:?}");
    };
    let error = error
        .downcast_ref::<Error>()
        .expect("the crate's error inside");
    assert_eq!(error.kind(), ErrorKind::Configuration);
    assert!(
        error.to_string().contains("BearerAuthMiddleware::dpop"),
        "{error}"
    );
    assert!(!error.to_string().contains("bound-t0k3n"));
    assert_eq!(api.accepted() + api.rejected(), 0);
}

/// The middleware made from a `DpopAuthLayer`, against the API that verifies every proof.
/// The retry stage on reqwest: a middleware made from a retry layer sends a request whose token
/// the API rejects (revoked) once more with a fresh one; one made from the plain layer hands
/// the 401 back.
#[tokio::test]
async fn a_middleware_from_a_retry_layer_replaces_a_rejected_token_once() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let layer = layer(&auth);
    let retrying = ClientBuilder::new(reqwest::Client::new())
        .with(BearerAuthMiddleware::from(
            &layer.clone().retry_on_unauthorized(),
        ))
        .build();
    let plain = reqwest_client(&layer);
    let body = "{\"order\":1}";
    let send = |client: &ClientWithMiddleware| client.post(api.url()).body(body).send();
    assert_eq!(send(&retrying).await.unwrap().status(), StatusCode::OK);
    auth.revoke_all();
    assert_eq!(
        send(&plain).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(send(&retrying).await.unwrap().status(), StatusCode::OK);
    assert_eq!((api.accepted(), api.rejected()), (2, 2));
    assert_eq!(auth.token_requests(), 2);
}

#[cfg(feature = "dpop")]
mod dpop {
    use super::*;
    use tower_client_credentials::dpop::{DpopAuthLayer, DpopKey};

    fn dpop_layer(auth: &AuthServer, key: &DpopKey) -> DpopAuthLayer {
        let credentials = default_client(auth).dpop(key.clone()).build().unwrap();
        BearerAuthLayer::new(credentials)
            .with_header("x-api-key", API_KEY)
            .unwrap()
            .dpop(key.clone())
    }

    fn dpop_client(layer: &DpopAuthLayer) -> ClientWithMiddleware {
        ClientBuilder::new(reqwest::Client::new())
            .with(BearerAuthMiddleware::dpop(layer))
            .build()
    }

    #[tokio::test]
    async fn every_request_carries_a_valid_proof() {
        let auth = AuthServer::start().await.unwrap();
        let api = ApiServer::start(&auth, API_KEY).await.unwrap();
        let key = DpopKey::generate().unwrap();
        let layer = dpop_layer(&auth, &key);
        let client = dpop_client(&layer);
        for path in ["/v1/items", "/v1/items?page=2", "/v1/items"] {
            let response = client
                .post(format!("{}{path}", api.url()))
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
        }
        // The API accepts a DPoP-bound token only with a fresh, valid proof of its key (a
        // replayed `jti` or a wrong `htm`/`htu`/`ath` is refused).
        assert_eq!((api.accepted(), api.rejected()), (3, 0));
        assert!(layer.cache().cached().unwrap().is_dpop());
        assert_eq!(auth.token_requests(), 1);

        // Guard: the same token without the proof is refused.
        let bare = ClientBuilder::new(reqwest::Client::new())
            .with(BearerAuthMiddleware::new(&BearerAuthLayer::from_cache(
                layer.cache().clone(),
            )))
            .build();
        let error = bare.get(api.url()).send().await.unwrap_err();
        assert!(error.to_string().contains("DPoP-bound"), "{error}");
    }

    #[tokio::test]
    async fn a_nonce_challenge_is_answered_by_one_more_try() {
        let auth = AuthServer::start().await.unwrap();
        let api = ApiServer::start(&auth, API_KEY).await.unwrap();
        api.require_dpop_nonce(Some("reqwest-nonce-1"));
        let key = DpopKey::generate().unwrap();
        let client = dpop_client(&dpop_layer(&auth, &key));
        let response = client
            .post(api.url())
            .body("replayable")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!((api.accepted(), api.rejected()), (1, 1));
        // The nonce is kept: the next request carries it at once.
        client.get(api.url()).send().await.unwrap();
        assert_eq!((api.accepted(), api.rejected()), (2, 1));
        // A rotated nonce: one challenge again; the token stays.
        api.require_dpop_nonce(Some("reqwest-nonce-2"));
        let response = client.get(api.url()).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!((api.accepted(), api.rejected()), (3, 2));
        assert_eq!(auth.token_requests(), 1);
    }
}
