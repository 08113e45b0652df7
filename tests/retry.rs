//! Retry once on 401, against the crate's authorization server and protected API on loopback.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_client_credentials::layer::{is_invalid_token, RetryUnauthorized};
use tower_client_credentials::testing::{ApiServer, AuthServer};
use tower_client_credentials::{BearerAuthLayer, TokenCache};

mod common;
use common::{default_client, hyper_client, HttpClient};

const API_KEY: &str = "retry-api-key";

type Layered = RetryUnauthorized<HttpClient>;

fn layer(auth: &AuthServer, api_key: &str) -> BearerAuthLayer {
    let credentials = default_client(auth).build().unwrap();
    BearerAuthLayer::from_cache(TokenCache::new(credentials))
        .with_header("x-api-key", api_key)
        .unwrap()
}

fn client(layer: BearerAuthLayer) -> Layered {
    ServiceBuilder::new()
        .layer(layer.retry_on_unauthorized())
        .service(hyper_client())
}

async fn post<S>(client: &mut S, url: &str) -> StatusCode
where
    S: Service<
        Request<Full<Bytes>>,
        Response = http::Response<hyper::body::Incoming>,
        Error = tower_client_credentials::BoxError,
    >,
{
    // A body, to show it is replayed.
    let request = Request::post(url)
        .body(Full::new(Bytes::from_static(b"{\"n\":1}")))
        .unwrap();
    client
        .ready()
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_rejected_token_is_replaced_and_the_request_resent_once() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let mut client = client(layer(&auth, API_KEY));
    assert_eq!(post(&mut client, &api.url()).await, StatusCode::OK);
    auth.revoke_all(); // the API now rejects the cached token
    assert_eq!(post(&mut client, &api.url()).await, StatusCode::OK);
    assert_eq!(auth.token_requests(), 2);
    assert_eq!((api.accepted(), api.rejected()), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_rejections_of_one_token_cause_one_refresh() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let client = client(layer(&auth, API_KEY));
    assert_eq!(post(&mut client.clone(), &api.url()).await, StatusCode::OK);
    auth.revoke_all();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let mut client = client.clone();
        let url = api.url();
        tasks.spawn(async move { post(&mut client, &url).await });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert_eq!(auth.token_requests(), 2);
}

#[tokio::test]
async fn an_api_that_rejects_every_token_gets_no_token_flood() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    // A wrong API key: every request is rejected, whatever the token.
    let mut client = client(layer(&auth, "wrong-key"));
    for _ in 0..20 {
        assert_eq!(
            post(&mut client, &api.url()).await,
            StatusCode::UNAUTHORIZED
        );
    }
    // One cold-start token, one forced refresh; the rest within the minimum interval.
    assert_eq!(auth.token_requests(), 2);
    // At most one retry per request: 20 requests, 21 API calls (one retried).
    assert_eq!(api.rejected(), 21);
}

#[tokio::test]
async fn the_plain_layer_does_not_retry() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let mut client = ServiceBuilder::new()
        .layer(layer(&auth, API_KEY))
        .service(hyper_client());
    let request = || Request::get(api.url()).body(Full::default()).unwrap();
    client.ready().await.unwrap().call(request()).await.unwrap();
    auth.revoke_all();
    let response = client.ready().await.unwrap().call(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(auth.token_requests(), 1);
}

#[tokio::test]
async fn a_custom_predicate_decides_what_a_rejection_is() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let mut client = ServiceBuilder::new()
        .layer(
            layer(&auth, API_KEY)
                .retry_on_unauthorized()
                .retry_if(is_invalid_token),
        )
        .service(hyper_client());
    let request = || Request::get(api.url()).body(Full::default()).unwrap();
    client.ready().await.unwrap().call(request()).await.unwrap();
    auth.revoke_all();
    // The API's 401 carries `WWW-Authenticate: Bearer error="invalid_token"`.
    let response = client.ready().await.unwrap().call(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(auth.token_requests(), 2);
}

#[tokio::test]
async fn a_predicate_can_capture_state() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    let mut client =
        ServiceBuilder::new()
            .layer(layer(&auth, API_KEY).retry_on_unauthorized().retry_if(
                move |status, headers| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    is_invalid_token(status, headers)
                },
            ))
            .service(hyper_client());
    assert_eq!(post(&mut client, &api.url()).await, StatusCode::OK);
    auth.revoke_all();
    assert_eq!(post(&mut client, &api.url()).await, StatusCode::OK);
    // Every first attempt's response is judged; the retry's goes back as it is.
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    assert_eq!(auth.token_requests(), 2);
}
