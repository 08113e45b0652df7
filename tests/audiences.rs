//! One client, several APIs, against the crate's authorization server on loopback (which puts
//! the requested `audience`/`resource` into the token's `aud`): each origin's token carries its
//! own audience, unknown origins get the default set or a clear error, a request extension
//! picks its own set, the bound on sets made on demand holds over 10,000 origins, and the hot
//! path allocates nothing.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use tower_client_credentials::audience::{MultiAudienceLayer, MultiAudienceLayerBuilder};
use tower_client_credentials::client_credentials::CredentialSet;
use tower_client_credentials::testing::AuthServer;
use tower_client_credentials::{BoxError, ErrorKind};

#[path = "../benches/common/mod.rs"]
mod bench_common;
mod common;
use common::{crate_error, default_client, jwt_part};

const API_A: &str = "https://api-a.example";
const API_B: &str = "https://api-b.example";

/// The inner service: answers with the `aud` claim of the token the request carries.
fn echo_audience(
    request: Request<()>,
) -> std::future::Ready<Result<Response<serde_json::Value>, Infallible>> {
    let token = request.headers()[AUTHORIZATION]
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string();
    assert_eq!(request.headers()["x-api-key"], "key");
    let claims = jwt_part(&token, 1);
    std::future::ready(Ok(Response::new(claims["aud"].clone())))
}

fn builder(auth: &AuthServer) -> MultiAudienceLayerBuilder {
    let credentials = default_client(auth).scope("role:app").build().unwrap();
    MultiAudienceLayer::builder(credentials)
        .origin(API_A, CredentialSet::new().audience(API_A).scope("a:read"))
        .origin(API_B, CredentialSet::new().resource(API_B))
        .header("x-api-key", "key")
        .unwrap()
}

async fn audience_of<S>(client: &mut S, request: Request<()>) -> Result<serde_json::Value, BoxError>
where
    S: Service<Request<()>, Response = Response<serde_json::Value>, Error = BoxError>,
{
    Ok(client.ready().await?.call(request).await?.into_body())
}

fn get(url: &str) -> Request<()> {
    Request::get(url).body(()).unwrap()
}

#[tokio::test]
async fn each_origin_gets_a_token_for_its_own_audience() {
    let auth = AuthServer::start().await.unwrap();
    let layer = builder(&auth).build().unwrap();
    let mut client = layer.layer(tower::service_fn(echo_audience));

    for _ in 0..3 {
        let aud = audience_of(&mut client, get("https://api-a.example/v1/orders")).await;
        assert_eq!(aud.unwrap(), API_A);
        // Host case and the default port do not make another origin.
        let aud = audience_of(&mut client, get("https://API-B.example:443/stock")).await;
        assert_eq!(aud.unwrap(), API_B);
        // Not in the table: the default set, the credentials' own (no audience).
        let aud = audience_of(&mut client, get("https://elsewhere.example/")).await;
        assert_eq!(aud.unwrap(), serde_json::Value::Null);
    }
    assert_eq!(auth.token_requests(), 3, "one token per set, cached");
    assert_eq!(layer.sets_in_use(), 3);
    let a_set = CredentialSet::new().audience(API_A).scope("a:read");
    let a_token = layer.cache(&a_set).unwrap().cached().unwrap();
    assert_eq!(a_token.scope(), Some("a:read"));

    // A request extension names its own set, whatever the origin.
    let custom = CredentialSet::new().audience("https://custom.example");
    let mut request = get("https://api-a.example/v1/orders");
    request.extensions_mut().insert(custom.clone());
    let aud = audience_of(&mut client, request).await.unwrap();
    assert_eq!(aud, "https://custom.example");
    // ... and an extension naming a table set shares that set's cache.
    let mut request = get("https://elsewhere.example/");
    request.extensions_mut().insert(a_set);
    assert_eq!(audience_of(&mut client, request).await.unwrap(), API_A);
    assert_eq!(auth.token_requests(), 4);
    assert_eq!(layer.sets_in_use(), 4);
}

#[tokio::test]
async fn unknown_origins_can_be_refused_with_an_error_naming_them() {
    let auth = AuthServer::start().await.unwrap();
    let layer = builder(&auth).refuse_unknown_origins().build().unwrap();
    let mut client = layer.layer(tower::service_fn(echo_audience));
    let error = audience_of(&mut client, get("https://Unknown.example:8443/x"))
        .await
        .unwrap_err();
    let error = crate_error(error);
    assert_eq!(error.kind(), ErrorKind::Configuration);
    assert!(
        error.to_string().contains("https://unknown.example:8443"),
        "{error}"
    );
    let error = crate_error(
        audience_of(&mut client, get("/relative"))
            .await
            .unwrap_err(),
    );
    assert!(error.to_string().contains("relative URI"), "{error}");
    assert_eq!(auth.token_requests(), 0);
    assert_eq!(audience_of(&mut client, get(API_A)).await.unwrap(), API_A);
}

#[tokio::test]
async fn bad_origins_and_sets_are_refused_at_build() {
    let auth = AuthServer::start().await.unwrap();
    let error = builder(&auth)
        .origin("https://api-c.example/v1", CredentialSet::new())
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("not an origin"), "{error}");
    let error = builder(&auth)
        .origin(
            "https://api-c.example",
            CredentialSet::new().param("scope", "x"),
        )
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("`scope`"), "{error}");
}

/// The per-origin rule makes a set (an RFC 8707 resource) per origin; 10,000 distinct origins
/// never hold more than the bound, and the authorization server sees one token request per set
/// made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_holds_with_10_000_distinct_origins() {
    const BOUND: usize = 50;
    let auth = AuthServer::builder()
        .token_lifetime(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let rule_calls = Arc::new(AtomicUsize::new(0));
    let layer = MultiAudienceLayer::builder(default_client(&auth).build().unwrap())
        .per_origin({
            let rule_calls = rule_calls.clone();
            move |origin| {
                rule_calls.fetch_add(1, Ordering::SeqCst);
                CredentialSet::new().resource(origin)
            }
        })
        .max_sets(BOUND)
        .header("x-api-key", "key")
        .unwrap()
        .build()
        .unwrap();
    let mut client = layer.layer(tower::service_fn(echo_audience));

    let (mut served, mut refused) = (0, 0);
    for i in 0..10_000 {
        let origin = format!("https://api-{i}.example");
        match audience_of(&mut client, get(&origin)).await {
            Ok(aud) => {
                assert_eq!(aud, origin.as_str());
                served += 1;
            }
            Err(error) => {
                let error = crate_error(error);
                assert_eq!(error.kind(), ErrorKind::Configuration);
                assert!(error.to_string().contains("bound of 50"), "{error}");
                assert!(error.to_string().contains(&origin), "{error}");
                refused += 1;
            }
        }
        assert!(layer.sets_in_use() <= BOUND);
    }
    println!("10,000 origins: {served} served, {refused} refused at the bound of {BOUND}");
    // Tokens live 1 s, so some sets may have gone idle and been replaced during the run; each
    // set made cost exactly one token request.
    assert!(served >= BOUND, "{served}");
    assert_eq!(auth.token_requests(), served);
    assert_eq!(served + refused, 10_000);

    // Once their tokens have expired, the sets are idle: new origins take their places.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 10_000..10_000 + BOUND {
        let origin = format!("https://api-{i}.example");
        let aud = audience_of(&mut client, get(&origin)).await.unwrap();
        assert_eq!(aud, origin.as_str());
    }
    assert_eq!(layer.sets_in_use(), BOUND);
}

/// With each set's token cached, requests alternating between two APIs allocate nothing in the
/// layer: a lookup by `&str`, a reader switch without allocation, the header inserts.
#[test]
fn the_hot_path_allocates_nothing() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_auth, layer) = runtime.block_on(async {
        let auth = AuthServer::start().await.unwrap();
        let layer = builder(&auth).build().unwrap();
        let mut warm = layer.layer(tower::service_fn(echo_audience));
        for url in [API_A, API_B] {
            audience_of(&mut warm, get(url)).await.unwrap();
        }
        (auth, layer)
    });
    let mut client = layer.layer(tower::service_fn(|request: Request<()>| {
        drop(request);
        std::future::ready(Ok::<_, Infallible>(Response::new(())))
    }));
    let mut requests: Vec<_> = (0..100)
        .map(|i| {
            let mut request = get(if i % 2 == 0 {
                "https://api-a.example/v1/orders"
            } else {
                "https://api-b.example/stock"
            });
            request.headers_mut().reserve(8);
            request
        })
        .collect();
    let waker = bench_common::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut responses = Vec::with_capacity(requests.len());
    let info = allocation_counter::measure(|| {
        for request in requests.drain(..) {
            assert!(client.poll_ready(&mut cx).is_ready());
            let mut future = std::pin::pin!(client.call(request));
            match future.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(response)) => responses.push(response),
                other => panic!("not answered at once: {:?}", other.is_ready()),
            }
        }
    });
    assert_eq!(responses.len(), 100);
    assert_eq!(info.count_total, 0, "{info:?}");
    // The counter counts on this thread (so the zero above means something).
    let boxed = allocation_counter::measure(|| drop(std::hint::black_box(Box::new(1u64))));
    assert_eq!(boxed.count_total, 1);
}

/// Defect 19.5: past the bound on remembered origins, every request to an origin the layer had
/// stopped remembering took the global mutex, called the rule, copied the map and boxed a
/// future around a clone of the inner service, even with the set's token cached. Now 100
/// origins (the old bound for `max_sets(1)` was 64) that share one set are each derived once;
/// after that, a request to any of them takes no lock and allocates nothing, and the rule is
/// not called again.
#[test]
fn many_origins_of_one_set_are_remembered_without_allocation() {
    const ORIGINS: usize = 100;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rule_calls = Arc::new(AtomicUsize::new(0));
    let (_auth, layer) = runtime.block_on(async {
        let auth = AuthServer::start().await.unwrap();
        let layer = MultiAudienceLayer::builder(default_client(&auth).build().unwrap())
            .per_origin({
                let rule_calls = rule_calls.clone();
                move |_origin| {
                    rule_calls.fetch_add(1, Ordering::SeqCst);
                    CredentialSet::new().audience("https://tenants.example")
                }
            })
            .max_sets(1)
            .header("x-api-key", "key")
            .unwrap()
            .build()
            .unwrap();
        let mut warm = layer.layer(tower::service_fn(echo_audience));
        for i in 0..ORIGINS {
            let aud = audience_of(&mut warm, get(&format!("https://tenant-{i}.example/")));
            assert_eq!(aud.await.unwrap(), "https://tenants.example");
        }
        (auth, layer)
    });
    assert_eq!(rule_calls.load(Ordering::SeqCst), ORIGINS);
    assert_eq!(layer.sets_in_use(), 1);
    let mut client = layer.layer(tower::service_fn(|request: Request<()>| {
        assert!(request.headers().contains_key(AUTHORIZATION));
        std::future::ready(Ok::<_, Infallible>(Response::new(())))
    }));
    let mut requests: Vec<_> = (0..ORIGINS)
        .map(|i| {
            let mut request = get(&format!("https://tenant-{i}.example/v1/orders"));
            request.headers_mut().reserve(8);
            request
        })
        .collect();
    let waker = bench_common::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut responses = Vec::with_capacity(requests.len());
    let info = allocation_counter::measure(|| {
        for request in requests.drain(..) {
            assert!(client.poll_ready(&mut cx).is_ready());
            let mut future = std::pin::pin!(client.call(request));
            match future.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(response)) => responses.push(response),
                other => panic!("not answered at once: {:?}", other.is_ready()),
            }
        }
    });
    assert_eq!(responses.len(), ORIGINS);
    assert_eq!(
        rule_calls.load(Ordering::SeqCst),
        ORIGINS,
        "no origin derived twice"
    );
    assert_eq!(info.count_total, 0, "{info:?}");
}

/// Defect 19.5, its other half: the first request to a new origin whose set already has a
/// fresh token is answered at once (the inner service's own future, no wait boxed around a
/// clone of it), so a stream of new origins costs the rule's work and nothing else.
#[test]
fn a_new_origin_of_a_set_with_a_token_is_not_sent_through_a_boxed_wait() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_auth, layer) = runtime.block_on(async {
        let auth = AuthServer::start().await.unwrap();
        let layer = MultiAudienceLayer::builder(default_client(&auth).build().unwrap())
            .per_origin(|_| CredentialSet::new().audience("https://tenants.example"))
            .header("x-api-key", "key")
            .unwrap()
            .build()
            .unwrap();
        let mut warm = layer.layer(tower::service_fn(echo_audience));
        audience_of(&mut warm, get("https://tenant-0.example/"))
            .await
            .unwrap();
        (auth, layer)
    });
    // An inner service whose future is pending once: a boxed wait would still answer, so
    // what is checked is that no clone of the inner service was made for the request.
    let clones = Arc::new(AtomicUsize::new(0));
    let mut client = layer.layer(CountingClones {
        clones: clones.clone(),
    });
    let waker = bench_common::noop_waker();
    let mut cx = Context::from_waker(&waker);
    for i in 1..=200 {
        let request = get(&format!("https://tenant-{i}.example/"));
        assert!(client.poll_ready(&mut cx).is_ready());
        let mut future = std::pin::pin!(client.call(request));
        assert!(future.as_mut().poll(&mut cx).is_ready());
    }
    assert_eq!(clones.load(Ordering::SeqCst), 0);
}

#[derive(Debug)]
struct CountingClones {
    clones: Arc<AtomicUsize>,
}

impl Clone for CountingClones {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::SeqCst);
        CountingClones {
            clones: self.clones.clone(),
        }
    }
}

impl Service<Request<()>> for CountingClones {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        assert!(request.headers().contains_key(AUTHORIZATION));
        std::future::ready(Ok(Response::new(())))
    }
}
