//! Retry on 401 with the request bodies of tonic and axum, against servers on loopback: the
//! first attempt's token is revoked, the API answers HTTP 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"`, and the retry must deliver the same body
//! with a fresh token. A body larger than the replay limit is sent once and not retried.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body as AxumBody;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_client_credentials::retry::{is_invalid_token, RetryUnauthorized};
use tower_client_credentials::testing::AuthServer;
use tower_client_credentials::{BearerAuthLayer, BoxError};

mod common;
use common::credentials;

/// Whether `headers` carry a token `auth` issued and has not revoked.
fn authorized(auth: &AuthServer, headers: &HeaderMap) -> bool {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| auth.is_valid_token(token))
}

fn invalid_token<B>(body: B) -> Response<B> {
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header(
            WWW_AUTHENTICATE,
            r#"Bearer realm="api", error="invalid_token""#,
        )
        .body(body)
        .unwrap()
}

// ----- axum and hyper ---------------------------------------------------------------------------

/// The protected API: echoes the body of an authorized `POST /echo`; a 401 for a revoked
/// token, without reading the body, as a gateway would.
struct EchoApi {
    addr: SocketAddr,
    rejected: Arc<AtomicUsize>,
    echoed: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct EchoState {
    auth: Arc<AuthServer>,
    rejected: Arc<AtomicUsize>,
    echoed: Arc<AtomicUsize>,
}

async fn echo(State(state): State<EchoState>, request: Request<AxumBody>) -> Response<AxumBody> {
    if !authorized(&state.auth, request.headers()) {
        state.rejected.fetch_add(1, Ordering::SeqCst);
        return invalid_token(AxumBody::empty());
    }
    let body = request.into_body().collect().await.unwrap().to_bytes();
    state.echoed.fetch_add(1, Ordering::SeqCst);
    Response::new(AxumBody::from(body))
}

async fn echo_api(auth: Arc<AuthServer>) -> EchoApi {
    let state = EchoState {
        auth,
        rejected: Arc::default(),
        echoed: Arc::default(),
    };
    let api = EchoApi {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        rejected: state.rejected.clone(),
        echoed: state.echoed.clone(),
    };
    let app = Router::new().route("/echo", post(echo)).with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    EchoApi { addr, ..api }
}

type Forwarding = RetryUnauthorized<Client<HttpConnector, AxumBody>>;

fn retrying(auth: &AuthServer, replay_limit: usize) -> Forwarding {
    let layer = BearerAuthLayer::new(credentials(auth))
        .retry_on_unauthorized()
        .retry_if(is_invalid_token)
        .replay_limit(replay_limit);
    ServiceBuilder::new()
        .layer(layer)
        .service(Client::builder(TokioExecutor::new()).build_http())
}

/// An axum app whose handler forwards its request body, as it streams in, to the API.
async fn forwarding_proxy(client: Forwarding, api: SocketAddr) -> SocketAddr {
    let forward = move |request: Request<AxumBody>| {
        let client = client.clone();
        async move {
            let forwarded = Request::post(format!("http://{api}/echo"))
                .body(request.into_body())
                .unwrap();
            let response = client.oneshot(forwarded).await.unwrap();
            let (parts, body) = response.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            Response::from_parts(parts, AxumBody::from(body))
        }
    };
    let app = Router::new().route("/forward", post(forward));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A body of unknown size, sent chunked: one frame per chunk.
struct Chunked(Vec<Bytes>);

impl http_body::Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = (!self.0.is_empty()).then(|| self.0.remove(0));
        Poll::Ready(next.map(|chunk| Ok(Frame::data(chunk))))
    }
}

fn payload(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
}

/// POSTs `chunks` to `url`, chunked, and returns the status and the body of the answer.
async fn post_chunked(url: String, chunks: Vec<Bytes>) -> (StatusCode, Bytes) {
    let caller = Client::builder(TokioExecutor::new()).build_http::<AxumBody>();
    let request = Request::post(url)
        .body(AxumBody::new(Chunked(chunks)))
        .unwrap();
    let response = caller.request(request).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn an_axum_handler_forwarding_its_body_is_retried_with_the_same_body() {
    let auth = Arc::new(AuthServer::start().await.unwrap());
    let api = echo_api(auth.clone()).await;
    let proxy = forwarding_proxy(retrying(&auth, 64 * 1024), api.addr).await;
    let url = format!("http://{proxy}/forward");

    let first = payload(1000);
    assert_eq!(
        post_chunked(url.clone(), vec![first.clone()]).await,
        (StatusCode::OK, first)
    );
    auth.revoke_all();
    // Several chunks of unknown total size, streamed in by the caller as the proxy sends them.
    let chunks: Vec<Bytes> = (0..8).map(|i| payload(4096 + i)).collect();
    let whole: Bytes = chunks.concat().into();
    assert_eq!(post_chunked(url, chunks).await, (StatusCode::OK, whole));

    assert_eq!(auth.token_requests(), 2);
    assert_eq!(api.rejected.load(Ordering::SeqCst), 1);
    assert_eq!(api.echoed.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_hyper_client_resends_an_axum_body_of_known_size() {
    let auth = Arc::new(AuthServer::start().await.unwrap());
    let api = echo_api(auth.clone()).await;
    let mut client = retrying(&auth, 64 * 1024);
    let url = format!("http://{}/echo", api.addr);
    let send = |client: &mut Forwarding, body: Bytes| {
        let request = Request::post(&url).body(AxumBody::from(body)).unwrap();
        let call = client.call(request);
        async move {
            let response = call.await.unwrap();
            let status = response.status();
            (
                status,
                response.into_body().collect().await.unwrap().to_bytes(),
            )
        }
    };
    client.ready().await.unwrap();
    let body = payload(64 * 1024);
    assert_eq!(
        send(&mut client, body.clone()).await,
        (StatusCode::OK, body.clone())
    );
    auth.revoke_all();
    client.ready().await.unwrap();
    assert_eq!(
        send(&mut client, body.clone()).await,
        (StatusCode::OK, body)
    );
    assert_eq!(auth.token_requests(), 2);
    assert_eq!(api.rejected.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_over_the_replay_limit_is_sent_once_and_its_rejection_returned() {
    let auth = Arc::new(AuthServer::start().await.unwrap());
    let api = echo_api(auth.clone()).await;
    let proxy = forwarding_proxy(retrying(&auth, 1024), api.addr).await;
    let url = format!("http://{proxy}/forward");

    let small = payload(1024);
    assert_eq!(
        post_chunked(url.clone(), vec![small.clone()]).await,
        (StatusCode::OK, small)
    );
    auth.revoke_all();
    let (status, _) = post_chunked(url.clone(), vec![payload(1024), payload(1)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(api.rejected.load(Ordering::SeqCst), 1);
    // The rejected token was still retired: the next request gets a fresh one.
    let big = payload(3000);
    assert_eq!(
        post_chunked(url, vec![big.clone()]).await,
        (StatusCode::OK, big)
    );
    assert_eq!(auth.token_requests(), 2);
    assert_eq!(api.rejected.load(Ordering::SeqCst), 1);
}

// ----- tonic ------------------------------------------------------------------------------------

/// A gRPC service behind an HTTP-level check of the token, as an API gateway in front of a gRPC
/// server does: HTTP 401 for a revoked token. It reads the request body before rejecting, so
/// that the client has sent all of it (a rejection before the body was sent is not resent; the
/// unit tests of `retry::body` cover that).
#[derive(Clone)]
struct Gateway<S> {
    inner: S,
    auth: Arc<AuthServer>,
    rejected: Arc<AtomicUsize>,
}

impl<S: NamedService> NamedService for Gateway<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<tonic::body::Body>> for Gateway<S>
where
    S: Service<
            Request<tonic::body::Body>,
            Response = Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        if authorized(&self.auth, request.headers()) {
            return Box::pin(self.inner.call(request));
        }
        self.rejected.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let _ = request.into_body().collect().await;
            Ok(invalid_token(tonic::body::Body::empty()))
        })
    }
}

const SERVICE: &str = "tower_client_credentials.retry.Replayed";

/// The gRPC health service behind [`Gateway`]; only [`SERVICE`] is serving, so a health check
/// answers `Serving` only if its request message arrived intact.
async fn grpc_server(auth: Arc<AuthServer>, rejected: Arc<AtomicUsize>) -> SocketAddr {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    let gateway = Gateway {
        inner: health,
        auth,
        rejected,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _reporter = reporter;
        Server::builder()
            .add_service(gateway)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    addr
}

/// Compiles only if `T` is a transport a generated tonic client accepts.
fn assert_tonic_transport<T>()
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
}

#[test]
fn the_retrying_channel_is_a_tonic_transport() {
    assert_tonic_transport::<RetryUnauthorized<Channel>>();
    fn assert_clone_send_sync<T: Clone + Send + Sync + 'static>() {}
    assert_clone_send_sync::<HealthClient<RetryUnauthorized<Channel>>>();
}

#[tokio::test]
async fn a_tonic_call_rejected_with_http_401_is_resent_with_its_message() {
    let auth = Arc::new(AuthServer::start().await.unwrap());
    let rejected = Arc::new(AtomicUsize::new(0));
    let addr = grpc_server(auth.clone(), rejected.clone()).await;
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let layer = BearerAuthLayer::new(credentials(&auth)).retry_on_unauthorized();
    let mut client = HealthClient::new(ServiceBuilder::new().layer(layer).service(channel));
    let check = || HealthCheckRequest {
        service: SERVICE.to_string(),
    };

    let status = client.check(check()).await.unwrap().into_inner().status();
    assert_eq!(status, ServingStatus::Serving);
    auth.revoke_all();
    let status = client.check(check()).await.unwrap().into_inner().status();
    assert_eq!(status, ServingStatus::Serving);

    assert_eq!(rejected.load(Ordering::SeqCst), 1);
    assert_eq!(auth.token_requests(), 2);
}
