//! The layer on the clients people use, against real servers on loopback: a hyper-util client
//! over HTTP/1.1 and HTTP/2 inside a `ServiceBuilder` stack with tower and tower-http layers, a
//! tonic gRPC client (tonic-health) calling a tonic server that checks the token, and an axum
//! server whose handlers call a protected API through one shared, layered client.
//!
//! # `BearerAuth<Channel>` as a tonic transport
//!
//! A generated tonic client (`HealthClient<T>` here) needs, for its transport `T`:
//!
//! * `T: tonic::client::GrpcService<tonic::body::Body>`, which tonic implements for every
//!   `Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>`;
//! * `T::Error: Into<BoxError>`;
//! * `T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static`, with
//!   `<T::ResponseBody as Body>::Error: Into<BoxError> + Send`.
//!
//! `BearerAuth<Channel>` meets them: it is a `Service<http::Request<B>>` for any `B` the inner
//! service takes, keeps the channel's `Response = http::Response<tonic::body::Body>`, and has
//! `Error = BoxError`. [`assert_tonic_transport`] checks this at compile time. tonic turns an
//! error of the transport into a `Status` with `Status::from_error`: a `Status` found in the
//! error's `source()` chain keeps its code. With the crate's `tonic` feature a failed token
//! request carries one (`Unauthenticated` or `Unavailable`); without it, it is `Code::Unknown`
//! with the error's message ([`tonic_token_failure_surfaces_as_a_grpc_status`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::timeout::error::Elapsed;
use tower::timeout::TimeoutLayer;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_client_credentials::testing::{ApiServer, AuthServer, Behavior};
use tower_client_credentials::{BearerAuth, BearerAuthLayer, BoxError, Error, ErrorKind};
use tower_http::trace::TraceLayer;

mod common;
use common::{credentials, default_client, HttpClient};

const API_KEY: &str = "api-key-7c2e91";

fn auth_layer(auth: &AuthServer) -> BearerAuthLayer {
    BearerAuthLayer::new(credentials(auth))
        .with_header("x-api-key", API_KEY)
        .unwrap()
}

/// A plain hyper-util client; `http2` for HTTP/2 with prior knowledge (h2c), which the loopback
/// servers speak beside HTTP/1.1.
fn hyper_client(http2: bool) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http()
}

// ----- hyper-util in a ServiceBuilder stack -----------------------------------------------------

/// What a caller of the stack tells apart: its errors are all `BoxError`; the timeout's and the
/// token cache's are found by downcasting.
#[derive(Debug, PartialEq)]
enum Failure {
    Timeout,
    Token(ErrorKind),
    Other(String),
}

fn classify(error: BoxError) -> Failure {
    if error.is::<Elapsed>() {
        return Failure::Timeout;
    }
    match error.downcast::<Error>() {
        Ok(error) => Failure::Token(error.kind()),
        Err(other) => Failure::Other(other.to_string()),
    }
}

/// Tracing outermost, then a per-request timeout, then the auth layer, over `client`. The
/// timeout bounds the response, not the wait for a token: the layer waits for a token in
/// `poll_ready`, which `tower::timeout` does not time.
fn stack(
    layer: &BearerAuthLayer,
    client: HttpClient,
    timeout: Duration,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<impl Body<Data = Bytes, Error: std::fmt::Debug> + Send>,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + Sync
       + 'static {
    ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(TimeoutLayer::new(timeout))
        .layer(layer.clone())
        .service(client)
}

async fn fetch<S, B>(client: S, url: &str) -> Result<(StatusCode, Version), Failure>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let request = Request::get(url).body(Full::default()).unwrap();
    let response = client.oneshot(request).await.map_err(classify)?;
    let (parts, body) = response.into_parts();
    body.collect().await.expect("read the response body");
    Ok((parts.status, parts.version))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_clients_share_one_token_across_tasks_and_threads() {
    let auth = AuthServer::start().await.unwrap();
    // A slow token endpoint makes every task race for the first token.
    auth.push_behavior([Behavior::Delay(Duration::from_millis(200))]);
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let layer = auth_layer(&auth);
    let http1 = stack(&layer, hyper_client(false), Duration::from_secs(10));
    let http2 = stack(&layer, hyper_client(true), Duration::from_secs(10));

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let (client, version) = if i % 2 == 0 {
            (http1.clone(), Version::HTTP_11)
        } else {
            (http2.clone(), Version::HTTP_2)
        };
        let url = format!("{}/items?page={i}", api.url());
        tasks.spawn(async move {
            for _ in 0..4 {
                let answer = fetch(client.clone(), &url).await;
                assert_eq!(answer, Ok((StatusCode::OK, version)));
            }
        });
    }
    while let Some(task) = tasks.join_next().await {
        task.unwrap();
    }
    assert_eq!(api.accepted(), 256);
    assert_eq!(auth.token_requests(), 1);
}

#[tokio::test]
async fn stack_tells_a_timeout_from_a_token_failure() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let layer = auth_layer(&auth);
    let client = stack(&layer, hyper_client(false), Duration::from_millis(300));

    // An API that accepts connections and never answers: the timeout layer ends the request.
    let hanging = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_url = format!("http://{}", hanging.local_addr().unwrap());
    assert_eq!(
        fetch(client.clone(), &hanging_url).await,
        Err(Failure::Timeout)
    );
    // The token fetched for it stays cached and serves the next request.
    assert_eq!(
        fetch(client.clone(), &api.url()).await,
        Ok((StatusCode::OK, Version::HTTP_11))
    );
    assert_eq!(auth.token_requests(), 1);

    // A token endpoint that fails: the request is not sent, the crate's error says why.
    auth.set_default_behavior(Some(Behavior::server_error()));
    let failing = stack(
        &auth_layer(&auth),
        hyper_client(false),
        Duration::from_millis(300),
    );
    assert_eq!(
        fetch(failing, &api.url()).await,
        Err(Failure::Token(ErrorKind::TokenEndpoint))
    );
    assert_eq!(api.rejected(), 0);
}

// ----- tonic ------------------------------------------------------------------------------------

/// Compiles only if `T` is a transport a generated tonic client accepts (see the crate docs).
fn assert_tonic_transport<T>()
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<BoxError> + Send,
{
}

#[test]
fn bearer_auth_channel_is_a_tonic_transport() {
    assert_tonic_transport::<BearerAuth<Channel>>();
    // `HealthClient` is `Clone` when its transport is, for one client per task.
    fn assert_clone_send_sync<T: Clone + Send + Sync + 'static>() {}
    assert_clone_send_sync::<HealthClient<BearerAuth<Channel>>>();
}

/// A tonic server on loopback with the gRPC health service, behind an interceptor that wants a
/// token `auth` issued and the API key, as a gRPC API would; `Status::unauthenticated`
/// otherwise. Stops with the test's runtime.
async fn grpc_server(auth: Arc<AuthServer>) -> SocketAddr {
    let check = move |request: tonic::Request<()>| {
        let metadata = request.metadata();
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let key_ok = metadata
            .get("x-api-key")
            .is_some_and(|key| key.as_bytes() == API_KEY.as_bytes());
        match token {
            Some(token) if key_ok && auth.is_valid_token(token) => Ok(request),
            _ => Err(Status::unauthenticated(
                "a valid bearer token and API key are required",
            )),
        }
    };
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        Server::builder()
            .add_service(tonic::service::interceptor::InterceptedService::new(
                health, check,
            ))
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    addr
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

#[tokio::test]
async fn tonic_client_with_the_layer_is_authenticated() {
    let auth = Arc::new(AuthServer::start().await.unwrap());
    let addr = grpc_server(auth.clone()).await;
    let transport = ServiceBuilder::new()
        .layer(auth_layer(&auth))
        .service(channel(addr));
    let client = HealthClient::new(transport);

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let mut client = client.clone();
        calls.spawn(async move { client.check(health_check()).await });
    }
    while let Some(call) = calls.join_next().await {
        let response = call.unwrap().unwrap();
        assert_eq!(response.into_inner().status(), ServingStatus::Serving);
    }
    assert_eq!(auth.token_requests(), 1);
}

#[tokio::test]
async fn tonic_client_without_the_layer_or_with_a_wrong_key_is_unauthenticated() {
    // Guards the test above: the server really checks what the layer adds.
    let auth = Arc::new(AuthServer::start().await.unwrap());
    let addr = grpc_server(auth.clone()).await;
    let mut bare = HealthClient::new(channel(addr));
    let status = bare.check(health_check()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let wrong_key = BearerAuthLayer::new(credentials(&auth))
        .with_header("x-api-key", "wrong")
        .unwrap();
    let mut client = HealthClient::new(
        ServiceBuilder::new()
            .layer(wrong_key)
            .service(channel(addr)),
    );
    let status = client.check(health_check()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn tonic_token_failure_surfaces_as_a_grpc_status() {
    let auth = Arc::new(AuthServer::start().await.unwrap());
    auth.push_behavior([Behavior::invalid_client(), Behavior::server_error()]);
    let addr = grpc_server(auth.clone()).await;
    let layer = BearerAuthLayer::from_cache(
        // An explicit method: no fallback from Basic to the form body after `invalid_client`.
        tower_client_credentials::TokenCache::builder(
            default_client(&auth)
                .auth_method(tower_client_credentials::ClientAuthMethod::ClientSecretBasic)
                .build()
                .unwrap(),
        )
        .backoff_base(Duration::ZERO)
        .permanent_backoff_base(Duration::ZERO)
        .build(),
    )
    .with_header("x-api-key", API_KEY)
    .unwrap();
    let mut client = HealthClient::new(ServiceBuilder::new().layer(layer).service(channel(addr)));
    // With the `tonic` feature the crate's error carries a `Status` in its source chain: a
    // failure retrying cannot fix is `Unauthenticated`, a transient one `Unavailable`. Without
    // it, tonic reports `Unknown` with the same message.
    let expected = |code: Code| {
        if cfg!(feature = "tonic") {
            code
        } else {
            Code::Unknown
        }
    };
    let status = client.check(health_check()).await.unwrap_err();
    assert_eq!(status.code(), expected(Code::Unauthenticated), "{status:?}");
    assert!(
        status
            .message()
            .starts_with("token endpoint returned an error"),
        "{status:?}"
    );
    assert!(status.message().contains("invalid_client"), "{status:?}");
    assert!(!status.message().contains(AuthServer::CLIENT_SECRET));
    let status = client.check(health_check()).await.unwrap_err();
    assert_eq!(status.code(), expected(Code::Unavailable), "{status:?}");
    assert!(status.message().contains("server_error"), "{status:?}");
    // The endpoint recovers: the next call is authenticated.
    client.check(health_check()).await.unwrap();
    assert_eq!(auth.token_requests(), 3);
}

// ----- axum -------------------------------------------------------------------------------------

/// What an axum app keeps in its state: one layered client, cloned per request. All clones share
/// the token cache.
#[derive(Clone)]
struct AppState {
    api: BearerAuth<HttpClient>,
    api_url: Arc<str>,
}

/// Calls the protected API and maps the outcome to this server's answer: a timeout to 504, no
/// token to 503, anything else to 502.
async fn downstream(State(state): State<AppState>) -> Result<String, StatusCode> {
    let request = Request::get(&*state.api_url)
        .body(Full::default())
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let response = state
        .api
        .oneshot(request)
        .await
        .map_err(|error| match classify(error) {
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::Token(_) => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Other(_) => StatusCode::BAD_GATEWAY,
        })?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|_| StatusCode::BAD_GATEWAY)?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(StatusCode::BAD_GATEWAY);
    }
    String::from_utf8(body.to_vec()).map_err(|_| StatusCode::BAD_GATEWAY)
}

async fn axum_server(state: AppState) -> SocketAddr {
    let app = Router::new()
        .route("/downstream", get(downstream))
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[test]
fn layered_client_fits_in_axum_state() {
    fn assert_state<T: Clone + Send + Sync + 'static>() {}
    assert_state::<BearerAuth<HttpClient>>();
    assert_state::<AppState>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_handlers_share_one_layered_client() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([Behavior::Delay(Duration::from_millis(200))]);
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let state = AppState {
        api: ServiceBuilder::new()
            .layer(auth_layer(&auth))
            .service(hyper_client(false)),
        api_url: api.url().into(),
    };
    let addr = axum_server(state).await;

    let caller = hyper_client(false);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let caller = caller.clone();
        let url = format!("http://{addr}/downstream");
        calls.spawn(async move {
            let response = caller
                .request(Request::get(url).body(Full::default()).unwrap())
                .await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>((status, body))
        });
    }
    while let Some(call) = calls.join_next().await {
        let (status, body) = call.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with(br#"{"ok":true"#), "{body:?}");
    }
    assert_eq!(api.accepted(), 50);
    assert_eq!(auth.token_requests(), 1);
}

#[tokio::test]
async fn axum_handler_answers_503_when_no_token_can_be_had() {
    let auth = AuthServer::start().await.unwrap();
    auth.set_default_behavior(Some(Behavior::server_error()));
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let addr = axum_server(AppState {
        api: ServiceBuilder::new()
            .layer(auth_layer(&auth))
            .service(hyper_client(false)),
        api_url: api.url().into(),
    })
    .await;
    let response = hyper_client(false)
        .request(
            Request::get(format!("http://{addr}/downstream"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(api.accepted() + api.rejected(), 0);
}
