//! Behaviour of the layer and the client-credentials source against real servers on loopback:
//! the crate's authorization server and a protected API, through a hyper-util client.

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Full;
use secrecy::ExposeSecret;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_client_credentials::testing::{ApiServer, AuthServer, Behavior};
use tower_client_credentials::{
    BearerAuth, BearerAuthLayer, BoxError, ClientAuthMethod, ClientCredentials, ErrorKind,
    TokenSource,
};

mod common;
use common::{
    assert_explicit_method_is_not_second_guessed, assert_falls_back_to_post_and_remembers,
    crate_error, credentials, default_client, hyper_client, start_with_post_only_client,
    HttpClient,
};

const API_KEY: &str = "api-key-3f1b9c";

fn layered(source: impl TokenSource) -> BearerAuth<HttpClient> {
    ServiceBuilder::new()
        .layer(
            BearerAuthLayer::new(source)
                .with_header("x-api-key", API_KEY)
                .unwrap(),
        )
        .service(hyper_client())
}

async fn get(client: &mut BearerAuth<HttpClient>, url: &str) -> Result<StatusCode, BoxError> {
    let request = Request::get(url).body(Full::default()).unwrap();
    let response = client.ready().await?.call(request).await?;
    Ok(response.status())
}

#[tokio::test]
async fn injects_bearer_token_and_api_key() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let mut client = layered(credentials(&auth));
    for _ in 0..3 {
        assert_eq!(get(&mut client, &api.url()).await.unwrap(), StatusCode::OK);
    }
    assert_eq!(api.accepted(), 3);
    assert_eq!(auth.token_requests(), 1);
}

#[tokio::test]
async fn the_api_rejects_requests_without_the_layer() {
    // Guards the test above: the API really checks what the layer adds.
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let client = hyper_client();
    let response = client
        .request(
            Request::get(api.url())
                .header("x-api-key", API_KEY)
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let mut wrong_key = ServiceBuilder::new()
        .layer(
            BearerAuthLayer::new(credentials(&auth))
                .with_header("x-api-key", "wrong")
                .unwrap(),
        )
        .service(hyper_client());
    assert_eq!(
        get(&mut wrong_key, &api.url()).await.unwrap(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn client_secret_basic_on_the_wire() {
    let auth = AuthServer::builder()
        .client(
            AuthServer::CLIENT_ID,
            AuthServer::CLIENT_SECRET,
            Some(ClientAuthMethod::ClientSecretBasic),
        )
        .start()
        .await
        .unwrap();
    let credentials = credentials(&auth);
    let token = credentials.fetch_token().await.unwrap();
    assert!(auth.is_valid_token(token.secret().expose_secret()));
    let seen = auth.last_request().unwrap();
    assert_eq!(seen.method, Some(ClientAuthMethod::ClientSecretBasic));
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(seen.accept.as_deref(), Some("application/json"));
    assert_eq!(
        seen.form,
        [
            ("grant_type".to_string(), "client_credentials".to_string()),
            (
                "scope".to_string(),
                "role:app organization:read".to_string()
            ),
        ]
    );
    assert_eq!(token.scope(), Some("role:app organization:read"));
    assert_eq!(
        credentials.auth_method(),
        Some(ClientAuthMethod::ClientSecretBasic)
    );
}

#[tokio::test]
async fn client_secret_post_on_the_wire() {
    let auth = start_with_post_only_client(AuthServer::builder()).await;
    let credentials = default_client(&auth)
        .auth_method(ClientAuthMethod::ClientSecretPost)
        .audience("https://api.example")
        .build()
        .unwrap();
    credentials.fetch_token().await.unwrap();
    let seen = auth.last_request().unwrap();
    assert_eq!(seen.method, Some(ClientAuthMethod::ClientSecretPost));
    assert_eq!(
        seen.form,
        [
            ("grant_type".to_string(), "client_credentials".to_string()),
            ("audience".to_string(), "https://api.example".to_string()),
            ("client_id".to_string(), AuthServer::CLIENT_ID.to_string()),
            ("client_secret".to_string(), "[redacted]".to_string()),
        ]
    );
    assert_eq!(auth.token_requests(), 1);
}

#[tokio::test]
async fn explicit_method_is_not_second_guessed() {
    let auth = start_with_post_only_client(AuthServer::builder()).await;
    let credentials = default_client(&auth)
        .auth_method(ClientAuthMethod::ClientSecretBasic)
        .build()
        .unwrap();
    assert_explicit_method_is_not_second_guessed(&credentials, &auth).await;
}

#[tokio::test]
async fn undeclared_method_falls_back_to_post_and_is_remembered() {
    let auth = start_with_post_only_client(AuthServer::builder()).await;
    assert_falls_back_to_post_and_remembers(&credentials(&auth), &auth).await;
}

#[tokio::test]
async fn oauth_errors_reach_the_caller_typed() {
    let auth = AuthServer::builder()
        .client(AuthServer::CLIENT_ID, "another-secret", None)
        .start()
        .await
        .unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let mut client = layered(credentials(&auth));
    let error = crate_error(get(&mut client, &api.url()).await.unwrap_err());
    assert_eq!(error.kind(), ErrorKind::TokenEndpoint);
    let oauth = error.oauth_error().unwrap();
    assert_eq!(oauth.error, "invalid_client");
    assert_eq!(oauth.status, StatusCode::UNAUTHORIZED);
    assert!(!error.is_transient());
    let text = format!("{error} {error:?}");
    assert!(!text.contains(AuthServer::CLIENT_SECRET), "{text}");
    assert!(!text.contains(API_KEY), "{text}");
    assert_eq!(
        api.accepted() + api.rejected(),
        0,
        "no API call without a token"
    );
}

#[tokio::test]
async fn invalid_scope_is_typed() {
    let auth = AuthServer::builder()
        .client(AuthServer::CLIENT_ID, AuthServer::CLIENT_SECRET, None)
        .allowed_scopes(AuthServer::CLIENT_ID, &["role:app"])
        .start()
        .await
        .unwrap();
    let err = credentials(&auth).fetch_token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TokenEndpoint);
    assert_eq!(err.oauth_error().unwrap().error, "invalid_scope");
    assert!(
        err.to_string().contains("check the requested scopes"),
        "{err}"
    );
    // Not a client-authentication failure: no second try with the other method.
    assert_eq!(auth.token_requests(), 1);
}

#[tokio::test]
async fn garbage_answers_are_typed() {
    let auth = AuthServer::start().await.unwrap();
    let credentials = credentials(&auth);
    auth.push_behavior([
        Behavior::garbage(),
        Behavior::Raw(StatusCode::OK, "application/json", String::new()),
        Behavior::Raw(StatusCode::OK, "text/plain", "access_token=abc".into()),
        Behavior::server_error(),
    ]);
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidTokenResponse);
    assert_eq!(err.status(), Some(StatusCode::BAD_GATEWAY));
    assert!(err.to_string().contains("text/html"), "{err}");
    assert!(err.is_transient());
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidTokenResponse);
    assert!(err.to_string().contains("empty"), "{err}");
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidTokenResponse);
    assert!(!err.to_string().contains("abc"), "{err}");
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TokenEndpoint);
    assert_eq!(err.oauth_error().unwrap().error, "server_error");
    assert!(err.is_transient());
}

#[tokio::test]
async fn unreachable_endpoint_is_a_transport_error() {
    // Bind and drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let credentials = ClientCredentials::builder()
        .token_endpoint(format!("http://127.0.0.1:{port}/token"))
        .unwrap()
        .client_id("id")
        .client_secret("secret-xyz")
        .build()
        .unwrap();
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport);
    assert!(!format!("{err:?}").contains("secret-xyz"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_cold_requests_make_one_token_request() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([Behavior::Delay(Duration::from_millis(200))]);
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let client = layered(credentials(&auth));
    let url = api.url();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let mut client = client.clone();
        let url = url.clone();
        tasks.spawn(async move { get(&mut client, &url).await.map_err(|e| e.to_string()) });
    }
    let mut ok = 0;
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap(), StatusCode::OK);
        ok += 1;
    }
    assert_eq!(ok, 1000);
    assert_eq!(auth.token_requests(), 1);
    assert_eq!(api.accepted(), 1000);
}

#[tokio::test]
async fn an_expired_token_is_replaced() {
    let auth = AuthServer::builder()
        .token_lifetime(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let mut client = layered(credentials(&auth));
    assert_eq!(get(&mut client, &api.url()).await.unwrap(), StatusCode::OK);
    let before = client.cache().cached().unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(before.remaining_lifetime(), Some(Duration::ZERO));
    assert_eq!(get(&mut client, &api.url()).await.unwrap(), StatusCode::OK);
    let after = client.cache().cached().unwrap();
    assert_ne!(
        before.secret().expose_secret(),
        after.secret().expose_secret()
    );
    assert_eq!(auth.token_requests(), 2);
    assert_eq!(api.accepted(), 2);
    assert_eq!(api.rejected(), 0);
}

#[tokio::test]
async fn a_dropped_caller_does_not_wedge_the_cache() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([Behavior::Delay(Duration::from_millis(300))]);
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let client = layered(credentials(&auth));
    let caller = {
        let mut client = client.clone();
        let url = api.url();
        tokio::spawn(async move { get(&mut client, &url).await.map_err(|e| e.to_string()) })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    // A caller with a deadline shorter than the refresh gives up too.
    let mut impatient = client.clone();
    let timed_out =
        tokio::time::timeout(Duration::from_millis(50), get(&mut impatient, &api.url())).await;
    assert!(timed_out.is_err());
    // The refresh went on for everyone: the next caller gets its token.
    let mut next = client.clone();
    assert_eq!(get(&mut next, &api.url()).await.unwrap(), StatusCode::OK);
    assert_eq!(auth.token_requests(), 1);
}

#[tokio::test]
async fn bad_configuration_is_a_clear_error() {
    let err = BearerAuthLayer::new(credentials(&AuthServer::start().await.unwrap()))
        .with_header("x-api-key", "line\nbreak-key")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert!(!err.to_string().contains("break-key"), "{err}");
    assert!(err.to_string().contains("x-api-key"), "{err}");
    let err = BearerAuthLayer::new(credentials(&AuthServer::start().await.unwrap()))
        .with_header("bad header", "v")
        .unwrap_err();
    assert!(err.to_string().contains("header name"), "{err}");
    // Arguments swapped by mistake: the key must not be echoed.
    let key = "k3y+with/base64=";
    let err = BearerAuthLayer::new(credentials(&AuthServer::start().await.unwrap()))
        .with_header(key, "x-api-key")
        .unwrap_err();
    assert!(!err.to_string().contains(key), "{err}");
    assert!(err.to_string().contains("name comes first"), "{err}");
    let err = ClientCredentials::builder()
        .token_endpoint("::not a url::")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
}

#[tokio::test]
async fn nothing_secret_in_debug_output() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let layer = BearerAuthLayer::new(credentials(&auth))
        .with_header("x-api-key", API_KEY)
        .unwrap();
    let mut client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(hyper_client());
    assert_eq!(get(&mut client, &api.url()).await.unwrap(), StatusCode::OK);
    let token = layer.cache().cached().unwrap();
    let token_text = token.secret().expose_secret().to_string();
    for text in [
        format!("{layer:?}"),
        format!("{client:?}"),
        format!("{token:?}"),
        format!("{:?}", credentials(&auth)),
        format!("{:?}", layer.cache()),
    ] {
        assert!(!text.contains(AuthServer::CLIENT_SECRET), "{text}");
        assert!(!text.contains(&token_text), "{text}");
        assert!(!text.contains(API_KEY), "{text}");
    }
}

// A service made ready does not keep its token (issue 12, defect 1; DESIGN.md rule 8): tower lets
// a caller wait between `poll_ready` and `call` (a balancer, a ready cache), so `call` must send
// the token valid then, or nothing. Paused clock, the authorization server reached in-process.

/// An inner service that records the `Authorization` value of every request it gets.
#[derive(Clone, Default)]
struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Recorder {
    fn service(
        &self,
    ) -> impl Service<Request<()>, Response = (), Error = std::convert::Infallible> + Clone {
        let seen = self.0.clone();
        tower::service_fn(move |request: Request<()>| {
            let authorization = request.headers()[http::header::AUTHORIZATION]
                .to_str()
                .unwrap()
                .to_string();
            seen.lock().unwrap().push(authorization);
            std::future::ready(Ok(()))
        })
    }

    fn seen(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn in_process_layer(auth: &AuthServer) -> BearerAuthLayer {
    let credentials = ClientCredentials::builder()
        .token_endpoint(auth.token_endpoint())
        .unwrap()
        .client_id(AuthServer::CLIENT_ID)
        .client_secret(AuthServer::CLIENT_SECRET)
        .http_client(auth.in_process_client())
        .build()
        .unwrap();
    BearerAuthLayer::new(credentials)
        .with_header("x-api-key", API_KEY)
        .unwrap()
}

fn unit_request() -> Request<()> {
    Request::get("http://api.example.com/v1/items")
        .body(())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_service_made_ready_never_sends_its_token_after_expiry() {
    let auth = AuthServer::builder()
        .token_lifetime(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let layer = in_process_layer(&auth);
    let recorder = Recorder::default();
    let mut service = tower::Layer::layer(&layer, recorder.service());
    let first = layer.cache().token().await.unwrap();
    let first_text = first.secret().expose_secret().to_string();

    // Ready while the token is valid, called after it expired.
    service.ready().await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    let result = service.call(unit_request()).await;
    assert!(
        recorder.seen().is_empty(),
        "the API received a token at or after its expiry"
    );
    let error = crate_error(result.unwrap_err());
    assert_eq!(error.kind(), ErrorKind::NoValidTokenAtCall, "{error}");
    assert!(error.is_transient());
    assert!(!error.to_string().contains(&first_text));

    // Made ready again, the service waits for the refresh and sends the new token.
    service
        .ready()
        .await
        .unwrap()
        .call(unit_request())
        .await
        .unwrap();
    let seen = recorder.seen();
    assert_eq!(seen.len(), 1);
    assert_ne!(seen[0], format!("Bearer {first_text}"));
    assert!(auth.is_valid_token(seen[0].trim_start_matches("Bearer ")));
    assert_eq!(auth.token_requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_service_made_ready_never_sends_an_invalidated_token() {
    let auth = AuthServer::start().await.unwrap();
    let layer = in_process_layer(&auth);
    let recorder = Recorder::default();
    let mut service = tower::Layer::layer(&layer, recorder.service());
    // Long-lived (its own header copies made), then ready.
    for _ in 0..3 {
        service
            .ready()
            .await
            .unwrap()
            .call(unit_request())
            .await
            .unwrap();
    }
    let first = layer.cache().cached().unwrap();
    let first_header = format!("Bearer {}", first.secret().expose_secret());
    service.ready().await.unwrap();

    // Invalidated between `poll_ready` and `call`, before the refresh it starts has finished.
    assert!(layer.cache().invalidate(&first));
    let error = crate_error(service.call(unit_request()).await.unwrap_err());
    assert_eq!(error.kind(), ErrorKind::NoValidTokenAtCall, "{error}");
    assert_eq!(recorder.seen().len(), 3);

    // Invalidated between `poll_ready` and `call`, and the refresh has finished: the call sends
    // the newer token.
    service.ready().await.unwrap();
    let second = layer.cache().cached().unwrap();
    assert_ne!(
        second.secret().expose_secret(),
        first.secret().expose_secret()
    );
    tokio::time::advance(Duration::from_secs(60)).await; // past the invalidation rate limit
    assert!(layer.cache().invalidate(&second));
    while layer
        .cache()
        .cached()
        .is_none_or(|t| t.secret().expose_secret() == second.secret().expose_secret())
    {
        tokio::task::yield_now().await;
    }
    service.call(unit_request()).await.unwrap();
    let seen = recorder.seen();
    assert_eq!(seen.len(), 4);
    let third = layer.cache().cached().unwrap();
    assert_eq!(
        seen[3],
        format!("Bearer {}", third.secret().expose_secret())
    );
    assert!(seen.iter().take(3).all(|s| *s == first_header));
    assert_eq!(auth.token_requests(), 3);
}

#[tokio::test(start_paused = true)]
async fn clones_made_ready_and_called_later_send_only_valid_tokens() {
    // A ready cache of many clones (as tower's balancers keep), called long after: each call
    // sends a valid token or fails; none sends an expired one.
    let auth = AuthServer::builder()
        .token_lifetime(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let layer = in_process_layer(&auth);
    let recorder = Recorder::default();
    let service = tower::Layer::layer(&layer, recorder.service());
    let mut ready = Vec::new();
    for k in 0..8 {
        let mut clone = service.clone();
        if k % 2 == 0 {
            // Some of them long-lived, with their own copies.
            for _ in 0..2 {
                clone
                    .ready()
                    .await
                    .unwrap()
                    .call(unit_request())
                    .await
                    .unwrap();
            }
        }
        clone.ready().await.unwrap();
        ready.push(clone);
    }
    let before = recorder.seen().len();
    tokio::time::advance(Duration::from_secs(120)).await;
    for clone in &mut ready {
        let error = crate_error(clone.call(unit_request()).await.unwrap_err());
        assert_eq!(error.kind(), ErrorKind::NoValidTokenAtCall);
    }
    assert_eq!(recorder.seen().len(), before);
    for clone in &mut ready {
        clone
            .ready()
            .await
            .unwrap()
            .call(unit_request())
            .await
            .unwrap();
    }
    let seen = recorder.seen();
    assert!(seen[before..]
        .iter()
        .all(|s| auth.is_valid_token(s.trim_start_matches("Bearer "))));
    assert_eq!(auth.token_requests(), 2);
}

/// Issues one token with `lifetime`, then never answers again (a hung token endpoint).
struct OneTokenThenHang {
    lifetime: Duration,
    issued: std::sync::atomic::AtomicBool,
}

impl TokenSource for OneTokenThenHang {
    fn fetch_token(
        &self,
    ) -> tower_client_credentials::BoxFuture<
        '_,
        Result<tower_client_credentials::Token, tower_client_credentials::Error>,
    > {
        let first = !self.issued.swap(true, std::sync::atomic::Ordering::SeqCst);
        let lifetime = self.lifetime;
        Box::pin(async move {
            if !first {
                std::future::pending::<()>().await;
            }
            tower_client_credentials::Token::bearer("only-token", Some(lifetime))
        })
    }
}

#[tokio::test]
async fn with_the_real_clocks_a_token_is_never_sent_at_or_after_its_expiry() {
    // Real time, so the per-request check runs on the coarse clock while the token is fresh and
    // on the precise clock near its refresh point and expiry; requests are sent as fast as the
    // service allows across both, and across expiry. Each request that reaches the inner service
    // records when its `call` began, before the layer's check: every one must be before expiry.
    let lifetime = Duration::from_secs(3);
    let cache = tower_client_credentials::TokenCache::builder(OneTokenThenHang {
        lifetime,
        issued: Default::default(),
    })
    .refresh_margin(Duration::from_millis(500))
    .refresh_jitter(0.0)
    .build();
    let token = cache.token().await.unwrap();
    let expires_at = token.expires_at().unwrap();
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    // When the test called `call`: the layer's check comes after it, so a request whose call
    // began at or after expiry and still reached the inner service is a real violation. (The
    // inner service's own timestamp comes after the check: a thread preempted in between can
    // stamp a request checked before expiry a little after it.)
    let call_began = std::sync::Arc::new(std::sync::Mutex::new(tokio::time::Instant::now()));
    let inner = {
        let sent = sent.clone();
        let call_began = call_began.clone();
        tower::service_fn(move |_request: Request<()>| {
            sent.lock().unwrap().push(*call_began.lock().unwrap());
            std::future::ready(Ok::<_, std::convert::Infallible>(()))
        })
    };
    let mut service = tower::Layer::layer(&BearerAuthLayer::from_cache(cache.clone()), inner);
    let mut failed_at_call = 0;
    while tokio::time::Instant::now() < expires_at + Duration::from_millis(300) {
        match tokio::time::timeout(Duration::from_millis(20), service.ready()).await {
            // Past expiry: the refresh hangs, `poll_ready` waits.
            Err(_elapsed) => continue,
            Ok(ready) => {
                let ready = ready.unwrap();
                *call_began.lock().unwrap() = tokio::time::Instant::now();
                if let Err(error) = ready.call(unit_request()).await {
                    assert_eq!(crate_error(error).kind(), ErrorKind::NoValidTokenAtCall);
                    failed_at_call += 1;
                }
            }
        }
        if sent.lock().unwrap().len() % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let sent = sent.lock().unwrap();
    let received = token.received_at();
    let late: Vec<_> = sent.iter().filter(|at| **at >= expires_at).collect();
    assert!(
        late.is_empty(),
        "{} requests sent at or after expiry",
        late.len()
    );
    // Not vacuous: requests went out while the coarse clock decided (more than 1 s before the
    // refresh point) and while the precise one did (the last second before expiry).
    let early = sent
        .iter()
        .filter(|at| **at < received + Duration::from_millis(1000))
        .count();
    let last_second = sent
        .iter()
        .filter(|at| **at >= expires_at - Duration::from_secs(1))
        .count();
    // (Counts a loaded 2-core machine reaches in a debug build; a quiet one sends tens of
    // thousands.)
    assert!(early > 100, "only {early} requests in the first second");
    assert!(
        last_second > 100,
        "only {last_second} requests in the last second"
    );
    eprintln!(
        "{} requests; {early} in the first second, {last_second} in the last; {failed_at_call} \
         failed at call",
        sent.len()
    );
}
