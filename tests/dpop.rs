//! DPoP (RFC 9449) against the crate's own servers on loopback, through a hyper-util client:
//! a bound token obtained and used, server nonces at the token endpoint and at the API, and
//! the API's refusal of a replayed proof and of a bound token sent as a bearer token; then
//! through a tonic client (tonic-health over `BearerAuth<DpopProof<Channel>>`, the origin set
//! with `DpopAuthLayer::origin`) against a tonic server that runs the API's checks, and through
//! an axum handler calling the API with the layered client in its state.
//! `tests/oidc_provider.rs` runs the same against oidc-provider.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::Router;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_client_credentials::dpop::{DpopAlgorithm, DpopAuthLayer, DpopKey, DpopProof};
use tower_client_credentials::testing::{ApiServer, AuthServer};
use tower_client_credentials::{
    BearerAuth, BearerAuthLayer, BoxError, BoxFuture, ClientCredentials, Error, Token, TokenSource,
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

/// A plain `DpopAuthLayer` (no retry layer: any body) hands the challenge back; the stored nonce
/// is in the proof of the very next request, which the API accepts.
#[tokio::test]
async fn without_the_retry_layer_the_next_request_carries_the_stored_nonce() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    api.require_dpop_nonce(Some("api-nonce-7"));
    let key = DpopKey::generate().unwrap();
    let proofs: Arc<Mutex<Vec<String>>> = Arc::default();
    let recording = {
        let proofs = proofs.clone();
        let http = hyper_client();
        tower::service_fn(move |request: Request<Full<Bytes>>| {
            let proof = request.headers()["dpop"].to_str().unwrap().to_string();
            proofs.lock().unwrap().push(proof);
            let http = http.clone();
            async move { http.request(request).await }
        })
    };
    let layer = BearerAuthLayer::new(credentials(&auth, &key))
        .with_header("x-api-key", API_KEY)
        .unwrap()
        .dpop(key);
    let mut client = ServiceBuilder::new().layer(layer).service(recording);

    let challenge = get(&mut client, &api.url()).await.unwrap();
    assert_eq!(challenge.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge.headers()["dpop-nonce"], "api-nonce-7");
    let next = get(&mut client, &format!("{}/v1/items", api.url()))
        .await
        .unwrap();
    assert_eq!(next.status(), StatusCode::OK);

    let proofs = proofs.lock().unwrap();
    assert_eq!(proofs.len(), 2, "no retry without the retry layer");
    assert_eq!(claims(&proofs[0]).get("nonce"), None);
    assert_eq!(claims(&proofs[1])["nonce"], "api-nonce-7");
    assert_eq!((api.accepted(), api.rejected()), (1, 1));
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

// ----- tonic ------------------------------------------------------------------------------------

/// The gRPC health service on loopback behind a layer that checks every request with the
/// [`ApiServer`]'s own checks (token, API key, DPoP proof with `htu` = `http://` + the
/// `:authority` + the path, the key the token is bound to, replay, nonce). A refusal is
/// `Status::unauthenticated` naming the failed check, with the API's `DPoP-Nonce` in its
/// metadata (a trailers-only answer: response headers). Stops with the test's runtime.
async fn grpc_server(api: Arc<ApiServer>) -> SocketAddr {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        Server::builder()
            .layer(tower::layer::layer_fn(move |inner| CheckedByApi {
                inner,
                api: api.clone(),
            }))
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    addr
}

#[derive(Clone)]
struct CheckedByApi<S> {
    inner: S,
    api: Arc<ApiServer>,
}

type GrpcResponse = Response<tonic::body::Body>;

impl<S, B> Service<Request<B>> for CheckedByApi<S>
where
    S: Service<Request<B>, Response = GrpcResponse>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = GrpcResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<GrpcResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self
            .api
            .check_request(request.method(), request.uri(), request.headers())
        {
            Ok(()) => {
                let future = self.inner.call(request);
                Box::pin(async move { future.await.map_err(Into::into) })
            }
            Err(refusal) => {
                let mut status = Status::unauthenticated(format!(
                    "{}: {}",
                    refusal.error(),
                    refusal.description()
                ));
                if let Some(nonce) = refusal.dpop_nonce().and_then(|n| n.parse().ok()) {
                    status.metadata_mut().insert("dpop-nonce", nonce);
                }
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

fn health_check() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

fn dpop_layer(auth: &AuthServer, key: &DpopKey) -> DpopAuthLayer {
    BearerAuthLayer::new(credentials(auth, key))
        .with_header("x-api-key", API_KEY)
        .unwrap()
        .dpop(key.clone())
}

#[test]
fn the_dpop_stack_over_a_channel_is_a_tonic_transport() {
    fn assert_tonic_transport<T>()
    where
        T: tonic::client::GrpcService<tonic::body::Body>,
        T::Error: Into<BoxError>,
        T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
    {
    }
    fn assert_clone_send_sync<T: Clone + Send + Sync + 'static>() {}
    assert_tonic_transport::<BearerAuth<DpopProof<Channel>>>();
    assert_clone_send_sync::<HealthClient<BearerAuth<DpopProof<Channel>>>>();
}

#[tokio::test]
async fn a_tonic_client_sends_a_valid_proof_for_the_channels_origin() {
    let auth = AuthServer::start().await.unwrap();
    let api = Arc::new(ApiServer::start(&auth, API_KEY).await.unwrap());
    let addr = grpc_server(api.clone()).await;
    let key = DpopKey::generate().unwrap();
    // A Channel sends only the path: `htu` needs the origin the channel connects to.
    let layer = dpop_layer(&auth, &key)
        .origin(format!("http://{addr}"))
        .unwrap();
    let client = HealthClient::new(
        ServiceBuilder::new()
            .layer(layer.clone())
            .service(channel(addr)),
    );

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut client = client.clone();
        calls.spawn(async move { client.check(health_check()).await });
    }
    while let Some(call) = calls.join_next().await {
        let response = call.unwrap().unwrap();
        assert_eq!(response.into_inner().status(), ServingStatus::Serving);
    }
    // Every call passed the proof checks with a DPoP-bound token (the API refuses such a token
    // without a valid proof of its key); one token served them all.
    assert_eq!((api.accepted(), api.rejected()), (8, 0));
    assert!(layer.cache().cached().unwrap().is_dpop());
    assert_eq!(auth.token_requests(), 1);
}

#[tokio::test]
async fn a_tonic_call_without_a_proof_or_with_a_wrong_one_is_unauthenticated() {
    let auth = AuthServer::start().await.unwrap();
    let api = Arc::new(ApiServer::start(&auth, API_KEY).await.unwrap());
    let addr = grpc_server(api.clone()).await;
    let key = DpopKey::generate().unwrap();

    // The bearer layer alone over DPoP credentials cannot prove their tokens: refused before
    // the wire (it used to send `Authorization: DPoP <token>` with no proof), naming the fix.
    let mut no_proof = HealthClient::new(
        ServiceBuilder::new()
            .layer(
                BearerAuthLayer::new(credentials(&auth, &key))
                    .with_header("x-api-key", API_KEY)
                    .unwrap(),
            )
            .service(channel(addr)),
    );
    let status = no_proof.check(health_check()).await.unwrap_err();
    assert!(
        status.message().contains("no DPoP proof stage") && status.message().contains(".dpop(key)"),
        "{status:?}"
    );
    assert_eq!(
        auth.token_requests(),
        0,
        "refused before anything was fetched"
    );

    // A proof for another origin: `htu` does not match the request.
    let mut wrong_origin = HealthClient::new(
        ServiceBuilder::new()
            .layer(
                dpop_layer(&auth, &key)
                    .origin("http://api.example:50051")
                    .unwrap(),
            )
            .service(channel(addr)),
    );
    let status = wrong_origin.check(health_check()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "invalid_dpop_proof: htu does not match the request URI"
    );

    // No origin at all: the request is not sent, and the error says what to set.
    let mut no_origin = HealthClient::new(
        ServiceBuilder::new()
            .layer(dpop_layer(&auth, &key))
            .service(channel(addr)),
    );
    let status = no_origin.check(health_check()).await.unwrap_err();
    assert!(
        status.message().contains("DpopAuthLayer::origin"),
        "{status:?}"
    );
    assert_eq!((api.accepted(), api.rejected()), (0, 1));
}

/// tonic bodies are not `Clone`, so a tonic client has no retry layer: a nonce challenge
/// reaches the caller, and the nonce it carried serves the next call.
#[tokio::test]
async fn a_tonic_nonce_challenge_serves_the_next_call() {
    let auth = AuthServer::start().await.unwrap();
    let api = Arc::new(ApiServer::start(&auth, API_KEY).await.unwrap());
    api.require_dpop_nonce(Some("grpc-nonce-1"));
    let addr = grpc_server(api.clone()).await;
    let key = DpopKey::generate().unwrap();
    let mut client = HealthClient::new(
        ServiceBuilder::new()
            .layer(
                dpop_layer(&auth, &key)
                    .origin(format!("http://{addr}"))
                    .unwrap(),
            )
            .service(channel(addr)),
    );
    let status = client.check(health_check()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().starts_with("use_dpop_nonce"), "{status:?}");
    client.check(health_check()).await.unwrap();
    assert_eq!((api.accepted(), api.rejected()), (1, 1));
}

// ----- axum -------------------------------------------------------------------------------------

/// An axum app's state: one layered client, cloned per request (all clones share the token
/// cache and the key's nonces).
#[derive(Clone)]
struct AppState<C> {
    api: C,
    api_url: Arc<str>,
}

/// Calls the protected API; its refusal is this server's 502.
async fn downstream<C>(State(state): State<AppState<C>>) -> Result<String, StatusCode>
where
    C: Service<Request<Full<Bytes>>, Response = Response<Incoming>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    C::Future: Send,
{
    let request = Request::get(format!("{}/v1/items?page=1", state.api_url))
        .body(Full::default())
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let response = state
        .api
        .oneshot(request)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    if response.status() != StatusCode::OK {
        return Err(StatusCode::BAD_GATEWAY);
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|_| StatusCode::BAD_GATEWAY)?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| StatusCode::BAD_GATEWAY)
}

async fn axum_server<C>(state: AppState<C>) -> SocketAddr
where
    C: Service<Request<Full<Bytes>>, Response = Response<Incoming>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    C::Future: Send,
{
    let app = Router::new()
        .route("/downstream", axum::routing::get(downstream::<C>))
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn call_downstream(addr: SocketAddr) -> (StatusCode, Bytes) {
    let response = hyper_client()
        .request(
            Request::get(format!("http://{addr}/downstream"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_handlers_call_the_api_through_one_dpop_client_in_state() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let key = DpopKey::generate().unwrap();
    let layer = dpop_layer(&auth, &key);
    let addr = axum_server(AppState {
        api: ServiceBuilder::new()
            .layer(layer.clone())
            .service(hyper_client()),
        api_url: api.url().into(),
    })
    .await;

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        calls.spawn(call_downstream(addr));
    }
    while let Some(call) = calls.join_next().await {
        let (status, body) = call.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with(br#"{"ok":true"#), "{body:?}");
    }
    assert_eq!((api.accepted(), api.rejected()), (20, 0));
    assert!(layer.cache().cached().unwrap().is_dpop());
    assert_eq!(auth.token_requests(), 1);
}

#[tokio::test]
async fn an_axum_handler_whose_client_sends_no_proof_is_refused() {
    // Guards the test above: the same app with the bearer layer alone fails. Its layer cannot
    // prove the DPoP credentials' tokens, so it refuses in `poll_ready` (a configuration
    // error, the handler's 503) and the API never sees a proof-less bound token.
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let key = DpopKey::generate().unwrap();
    let bearer_only = BearerAuthLayer::new(credentials(&auth, &key))
        .with_header("x-api-key", API_KEY)
        .unwrap();
    let addr = axum_server(AppState {
        api: ServiceBuilder::new()
            .layer(bearer_only)
            .service(hyper_client()),
        api_url: api.url().into(),
    })
    .await;
    assert_eq!(
        call_downstream(addr).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!((api.accepted(), api.rejected()), (0, 0));
    assert_eq!(auth.token_requests(), 0);
}

// ----- issue 19: combinations -------------------------------------------------------------------

/// Defect 19.7: a DPoP nonce challenge without a `DPoP-Nonce` header cannot be answered (the
/// next proof would lack the nonce just the same), so the retry layer must not replay the body
/// for it: the challenge goes back to the caller after one request.
#[tokio::test]
async fn a_nonce_challenge_without_a_nonce_is_not_retried() {
    struct Bound;
    impl TokenSource for Bound {
        fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
            Box::pin(async { Token::dpop("bound", Some(Duration::from_secs(60))) })
        }
    }
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let key = DpopKey::generate().unwrap();
    let mut client = ServiceBuilder::new()
        .layer(
            BearerAuthLayer::new(Bound)
                .dpop(key)
                .retry_on_unauthorized(),
        )
        .service(tower::service_fn(move |request: Request<Full<Bytes>>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            assert!(request.headers().contains_key("dpop"));
            let response = Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header(
                    "www-authenticate",
                    r#"DPoP error="use_dpop_nonce", error_description="nonce required""#,
                )
                .body(Full::<Bytes>::default())
                .unwrap();
            async move { Ok::<_, BoxError>(response) }
        }));
    let request = Request::post("https://api.example/v1/orders")
        .body(Full::new(Bytes::from_static(b"{\"order\":1}")))
        .unwrap();
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Defect 19.6 through the layer: `htu` of a request whose URI has user info is the origin
/// and path only, so the API accepts it (and no password reaches the API inside the proof).
#[tokio::test]
async fn a_uri_with_user_info_gets_a_proof_without_it() {
    let auth = AuthServer::start().await.unwrap();
    let key = DpopKey::generate().unwrap();
    let layer = BearerAuthLayer::new(credentials(&auth, &key)).dpop(key);
    let mut client =
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(|request: Request<Full<Bytes>>| async move {
                let proof = request.headers()["dpop"].to_str().unwrap().to_string();
                Ok::<_, BoxError>(Response::new(claims(&proof)))
            });
    let request = Request::get("https://user:pa55word@api.example:8443/v1/items?page=2")
        .body(Full::default())
        .unwrap();
    let claims = client.ready().await.unwrap().call(request).await.unwrap();
    let claims = claims.into_body();
    assert_eq!(claims["htu"], "https://api.example:8443/v1/items");
    assert!(!claims.to_string().contains("pa55word"));
}

/// Refusals before the wire: a layer whose DPoP key is not its credentials' key, or that has
/// one over credentials without a key, fails `poll_ready` with a configuration error naming
/// the combination, and fetches and sends nothing.
#[tokio::test]
async fn a_layer_key_other_than_the_credentials_key_is_refused() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let (key, other) = (DpopKey::generate().unwrap(), DpopKey::generate().unwrap());
    let plain = ClientCredentials::builder()
        .token_endpoint(auth.token_endpoint())
        .unwrap()
        .client_id(AuthServer::CLIENT_ID)
        .client_secret(AuthServer::CLIENT_SECRET)
        .build()
        .unwrap();
    let cases = [
        (
            BearerAuthLayer::new(credentials(&auth, &key)).dpop(other.clone()),
            "thumbprints differ",
        ),
        (
            BearerAuthLayer::new(plain).dpop(other),
            "credentials have none",
        ),
    ];
    for (layer, why) in cases {
        let mut client = ServiceBuilder::new()
            .layer(layer.retry_on_unauthorized())
            .service(hyper_client());
        let error = get(&mut client, &api.url()).await.unwrap_err();
        let error = error.downcast::<Error>().unwrap();
        assert_eq!(
            error.kind(),
            tower_client_credentials::ErrorKind::Configuration
        );
        assert!(error.to_string().contains(why), "{error}");
    }
    assert_eq!(auth.token_requests(), 0);
    assert_eq!((api.accepted(), api.rejected()), (0, 0));
}

/// Defect 19.4: several APIs × DPoP × retry. Each request through a `MultiAudienceLayer` with
/// a DPoP key gets a proof for its own origin (the API checks `htu` against the request), a
/// nonce challenge is answered per origin with one more attempt and the same token, and a
/// revoked token is replaced once.
#[tokio::test]
async fn several_apis_get_proofs_for_their_own_origin_and_retry() {
    use tower_client_credentials::audience::MultiAudienceLayer;
    use tower_client_credentials::CredentialSet;

    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let port = api.url().rsplit(':').next().unwrap().to_string();
    let (api_a, api_b) = (
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    );
    let key = DpopKey::generate().unwrap();
    let layer = MultiAudienceLayer::builder(credentials(&auth, &key))
        .origin(&api_a, CredentialSet::new().audience("api-a"))
        .origin(&api_b, CredentialSet::new().audience("api-b"))
        .refuse_unknown_origins()
        .header("x-api-key", API_KEY)
        .unwrap()
        .dpop(key.clone())
        .build()
        .unwrap();
    let mut client = ServiceBuilder::new()
        .layer(layer.clone().retry_on_unauthorized())
        .service(hyper_client());

    for origin in [&api_a, &api_b] {
        let response = get(&mut client, &format!("{origin}/v1/items?page=1")).await;
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    assert_eq!((api.accepted(), api.rejected()), (2, 0));
    assert_eq!(auth.token_requests(), 2, "one token per set");
    let token = layer
        .cache(&CredentialSet::new().audience("api-a"))
        .unwrap()
        .cached()
        .unwrap();
    assert!(token.is_dpop());

    // A nonce per origin: each origin's first request is challenged once, then retried.
    api.require_dpop_nonce(Some("multi-nonce-1"));
    for origin in [&api_a, &api_b] {
        let response = get(&mut client, &format!("{origin}/v1/items")).await;
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    assert_eq!((api.accepted(), api.rejected()), (4, 2));
    assert_eq!(
        auth.token_requests(),
        2,
        "a nonce challenge keeps the token"
    );

    // A revoked token: one 401, one new token for that set, then success.
    auth.revoke_all();
    let response = get(&mut client, &format!("{api_a}/v1/items")).await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    assert_eq!((api.accepted(), api.rejected()), (5, 3));
    assert_eq!(auth.token_requests(), 3);
}

/// Refusals at build: DPoP credentials through a `MultiAudienceLayer` without a proof stage,
/// a layer key other than the credentials', a layer key over credentials without one.
#[test]
fn a_multi_audience_layer_that_cannot_prove_its_tokens_is_refused_at_build() {
    use tower_client_credentials::audience::MultiAudienceLayer;

    let key = DpopKey::generate().unwrap();
    let with_key = |key: Option<&DpopKey>| {
        let builder = ClientCredentials::builder()
            .token_endpoint("https://idp.example/token")
            .unwrap()
            .client_id("c")
            .client_secret("s");
        match key {
            Some(key) => builder.dpop(key.clone()).build().unwrap(),
            None => builder.build().unwrap(),
        }
    };
    let refused = [
        (
            MultiAudienceLayer::builder(with_key(Some(&key))),
            "no DPoP proof stage",
        ),
        (
            MultiAudienceLayer::builder(with_key(Some(&key))).dpop(DpopKey::generate().unwrap()),
            "thumbprints differ",
        ),
        (
            MultiAudienceLayer::builder(with_key(None)).dpop(key.clone()),
            "credentials have none",
        ),
    ];
    for (builder, why) in refused {
        let error = builder.build().unwrap_err();
        assert_eq!(
            error.kind(),
            tower_client_credentials::ErrorKind::Configuration
        );
        assert!(error.to_string().contains(why), "{error}");
        assert!(error.to_string().contains("MultiAudienceLayer"), "{error}");
    }
    MultiAudienceLayer::builder(with_key(Some(&key)))
        .dpop(key)
        .build()
        .unwrap();
}

/// Where the layer cannot see the credentials (`from_cache`), the token's own binding decides:
/// a token bound to another key than the layer's is refused before the wire, by its thumbprint.
#[tokio::test]
async fn a_token_bound_to_another_key_is_not_sent() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let (key, other) = (DpopKey::generate().unwrap(), DpopKey::generate().unwrap());
    let cache = tower_client_credentials::TokenCache::new(credentials(&auth, &key));
    let mut client = ServiceBuilder::new()
        .layer(BearerAuthLayer::from_cache(cache.clone()).dpop(other))
        .service(hyper_client());
    let error = get(&mut client, &api.url()).await.unwrap_err();
    let error = error.downcast::<Error>().unwrap();
    assert_eq!(
        error.kind(),
        tower_client_credentials::ErrorKind::Configuration
    );
    assert!(error.to_string().contains("another DPoP key"), "{error}");
    assert_eq!((api.accepted(), api.rejected()), (0, 0));
    // The same cache through a layer with the right key works.
    let mut client = ServiceBuilder::new()
        .layer(
            BearerAuthLayer::from_cache(cache)
                .dpop(key)
                .with_header("x-api-key", API_KEY)
                .unwrap(),
        )
        .service(hyper_client());
    let response = get(&mut client, &api.url()).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{:?}",
        response.headers()
    );
    assert_eq!(auth.token_requests(), 1);
}
