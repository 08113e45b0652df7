//! DPoP (RFC 9449) against the crate's own servers on loopback, through a hyper-util client:
//! a bound token obtained and used, server nonces at the token endpoint and at the API, and
//! the API's refusal of a replayed proof and of a bound token sent as a bearer token.
//! `tests/oidc_provider.rs` runs the same against oidc-provider.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use secrecy::ExposeSecret;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_client_credentials::dpop::{DpopAlgorithm, DpopKey};
use tower_client_credentials::testing::{ApiServer, AuthServer};
use tower_client_credentials::{
    BearerAuthLayer, BoxError, BoxFuture, ClientCredentials, Error, Token, TokenSource,
};

const API_KEY: &str = "api-key-d9f0e1";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn hyper_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn credentials(auth: &AuthServer, key: &DpopKey) -> ClientCredentials {
    ClientCredentials::builder()
        .token_endpoint(auth.token_endpoint())
        .unwrap()
        .client_id(AuthServer::CLIENT_ID)
        .client_secret(AuthServer::CLIENT_SECRET)
        .dpop(key.clone())
        .build()
        .unwrap()
}

async fn get<S>(client: &mut S, url: &str) -> Result<Response<Incoming>, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>, Error = BoxError>,
{
    let request = Request::get(url).body(Full::default()).unwrap();
    client.ready().await?.call(request).await
}

fn claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn a_bound_token_is_obtained_and_used() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    for key in [
        DpopKey::generate().unwrap(),
        DpopKey::generate_with(DpopAlgorithm::EdDSA).unwrap(),
    ] {
        let credentials = credentials(&auth, &key);
        let layer = BearerAuthLayer::new(credentials)
            .with_header("x-api-key", API_KEY)
            .unwrap()
            .dpop(key.clone());
        let mut client = ServiceBuilder::new()
            .layer(layer.clone())
            .service(hyper_client());
        for path in ["/v1/items", "/v1/items?page=2"] {
            let response = get(&mut client, &format!("{}{path}", api.url()))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
        let token = layer.cache().cached().unwrap();
        assert_eq!(token.token_type(), "DPoP");
        let text = token.secret().expose_secret();
        assert_eq!(auth.dpop_jkt(text).as_deref(), Some(key.thumbprint()));
        assert_eq!(claims(text)["cnf"]["jkt"], key.thumbprint());
    }
    assert_eq!(api.accepted(), 4);
    assert_eq!(auth.token_requests(), 2);
}

#[tokio::test]
async fn a_token_endpoint_nonce_challenge_is_answered_once() {
    let auth = AuthServer::start().await.unwrap();
    auth.require_dpop_nonce(Some("as-nonce-1"));
    let key = DpopKey::generate().unwrap();
    let credentials = credentials(&auth, &key);
    let token = credentials.fetch_token().await.unwrap();
    assert!(token.is_dpop());
    assert_eq!(auth.token_requests(), 2, "the challenge, then the retry");
    // The nonce is kept: the next request carries it at once.
    credentials.fetch_token().await.unwrap();
    assert_eq!(auth.token_requests(), 3);
    // A rotated nonce: one challenge again, answered with the new one.
    auth.require_dpop_nonce(Some("as-nonce-2"));
    credentials.fetch_token().await.unwrap();
    assert_eq!(auth.token_requests(), 5);
}

#[tokio::test]
async fn an_api_nonce_challenge_is_retried_with_the_nonce_and_the_same_token() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    api.require_dpop_nonce(Some("api-nonce-1"));
    let key = DpopKey::generate().unwrap();
    let layer = BearerAuthLayer::new(credentials(&auth, &key))
        .with_header("x-api-key", API_KEY)
        .unwrap()
        .dpop(key.clone());

    // Without the retry layer the challenge reaches the caller; the nonce serves the next one.
    let mut plain = ServiceBuilder::new()
        .layer(layer.clone())
        .service(hyper_client());
    let response = get(&mut plain, &api.url()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("use_dpop_nonce"));
    assert_eq!(
        get(&mut plain, &api.url()).await.unwrap().status(),
        StatusCode::OK
    );

    // With it, a rotated nonce costs one extra round trip and no token request.
    api.require_dpop_nonce(Some("api-nonce-2"));
    let mut retrying = ServiceBuilder::new()
        .layer(layer.retry_on_unauthorized())
        .service(hyper_client());
    let response = get(&mut retrying, &api.url()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!((api.accepted(), api.rejected()), (2, 2));
    assert_eq!(
        auth.token_requests(),
        1,
        "a nonce challenge keeps the token"
    );
}

#[tokio::test]
async fn the_api_rejects_a_replayed_proof_and_a_bound_token_sent_as_bearer() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let key = DpopKey::generate().unwrap();
    let http = hyper_client();
    let captured: Arc<Mutex<Option<Request<Full<Bytes>>>>> = Arc::default();
    let recording = {
        let captured = captured.clone();
        let http = http.clone();
        tower::service_fn(move |request: Request<Full<Bytes>>| {
            let mut copy = Request::new(request.body().clone());
            *copy.uri_mut() = request.uri().clone();
            *copy.headers_mut() = request.headers().clone();
            *captured.lock().unwrap() = Some(copy);
            let http = http.clone();
            async move { http.request(request).await }
        })
    };
    let layer = BearerAuthLayer::new(credentials(&auth, &key))
        .with_header("x-api-key", API_KEY)
        .unwrap()
        .dpop(key);
    let mut client = ServiceBuilder::new().layer(layer).service(recording);
    assert_eq!(
        get(&mut client, &api.url()).await.unwrap().status(),
        StatusCode::OK
    );

    // The very same request, proof and all, sent again by an attacker who saw it.
    let replay = captured.lock().unwrap().take().unwrap();
    let response = http.request(replay).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_dpop_proof"));

    // The stolen token without the key: as a bearer token, and with a proof of another key.
    let token = auth_token(&client);
    let response = http
        .request(
            Request::get(api.url())
                .header("authorization", format!("Bearer {token}"))
                .header("x-api-key", API_KEY)
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let thief = DpopKey::generate().unwrap();
    let proof = thief
        .proof(
            &http::Method::GET,
            &api.url().parse().unwrap(),
            Some(&token),
        )
        .unwrap();
    let response = http
        .request(
            Request::get(api.url())
                .header("authorization", format!("DPoP {token}"))
                .header("dpop", proof)
                .header("x-api-key", API_KEY)
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!((api.accepted(), api.rejected()), (1, 3));
}

fn auth_token<S>(client: &tower_client_credentials::BearerAuth<S>) -> String {
    let token = client.cache().cached().unwrap();
    token.secret().expose_secret().to_string()
}

/// A server that does not do DPoP answers with a Bearer token: the layer sends it as one, with
/// no proof.
#[tokio::test]
async fn a_bearer_token_through_the_dpop_layer_gets_no_proof() {
    struct Bearer;
    impl TokenSource for Bearer {
        fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
            Box::pin(async { Token::bearer("plain", Some(Duration::from_secs(60))) })
        }
    }
    let key = DpopKey::generate().unwrap();
    let mut client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(Bearer).dpop(key))
        .service_fn(|request: Request<Full<Bytes>>| async move {
            assert_eq!(request.headers()["authorization"], "Bearer plain");
            assert!(request.headers().get("dpop").is_none());
            Ok::<_, BoxError>(Response::new(()))
        });
    let request = Request::get("http://127.0.0.1:1/")
        .body(Full::default())
        .unwrap();
    client.ready().await.unwrap().call(request).await.unwrap();
}
