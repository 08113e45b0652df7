//! Discovery (RFC 8414 / OpenID Connect) and the transport's safe defaults, against the crate's
//! authorization server on loopback over real TCP: which well-known locations are tried and in
//! what order, the issuer check, the auth method the metadata chooses, and what the transport
//! refuses (plain http, redirects, oversized bodies, hanging servers).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_client_credentials::testing::{ApiServer, AuthServer, Behavior, MetadataLocation};
use tower_client_credentials::{
    BearerAuthLayer, BoxError, ClientAuthMethod, ClientCredentialsBuilder, Error, ErrorKind,
    TokenSource,
};

mod common;
use common::{
    assert_explicit_method_is_not_second_guessed, assert_falls_back_to_post_and_remembers,
    crate_error, hyper_client, start_with_post_only_client, token_endpoint_builder, API_SCOPES,
};

const API_KEY: &str = "api-key-7d2e41";
/// A secret no error may ever show.
const SECRET: &str = "Sup3r-Secret-Value-42";

/// Credentials that know only the issuer.
fn issuer_builder(issuer: &str) -> ClientCredentialsBuilder {
    common::issuer_builder(issuer).scopes(API_SCOPES)
}

/// Origin (`http://127.0.0.1:port`) of a server.
fn origin(auth: &AuthServer) -> String {
    format!("http://{}", auth.addr())
}

/// The path of `location` for the default issuer path `/oauth2/default`.
fn well_known(location: MetadataLocation) -> &'static str {
    match location {
        MetadataLocation::Rfc8414 => "/.well-known/oauth-authorization-server/oauth2/default",
        MetadataLocation::Okta => "/oauth2/default/.well-known/oauth-authorization-server",
        MetadataLocation::OpenId => "/oauth2/default/.well-known/openid-configuration",
        MetadataLocation::OpenIdInserted => "/.well-known/openid-configuration/oauth2/default",
        _ => unreachable!("a location this test does not know"),
    }
}

const TOKEN_PATH: &str = "/oauth2/default/v1/token";

fn assert_secret_free(error: &Error) {
    let mut text = format!("{error} {error:?}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(" {cause} {cause:?}"));
        source = cause.source();
    }
    for secret in [SECRET, AuthServer::CLIENT_SECRET, API_KEY] {
        assert!(!text.contains(secret), "{text}");
    }
}

// --- discovery -------------------------------------------------------------------------------

#[tokio::test]
async fn issuer_only_configuration_gets_tokens_through_the_layer() {
    let auth = AuthServer::start().await.unwrap();
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let credentials = issuer_builder(&auth.issuer()).build().unwrap();
    assert_eq!(
        credentials.token_endpoint(),
        None,
        "nothing fetched at build"
    );
    assert_eq!(auth.request_paths(), Vec::<String>::new());
    let mut client = ServiceBuilder::new()
        .layer(
            BearerAuthLayer::new(credentials.clone())
                .with_header("x-api-key", API_KEY)
                .unwrap(),
        )
        .service(hyper_client());
    for _ in 0..3 {
        let request = Request::get(api.url()).body(Full::default()).unwrap();
        let response = client.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        credentials.token_endpoint().map(|u| u.to_string()),
        Some(auth.token_endpoint())
    );
    assert_eq!((auth.discovery_requests(), auth.token_requests()), (1, 1));
    assert_eq!(api.accepted(), 3);
}

/// Serves only `location`; the client must find it after 404s from the ones before it.
async fn discovers_through(location: MetadataLocation, tried_before: &[MetadataLocation]) {
    let auth = AuthServer::builder()
        .metadata_locations(&[location])
        .start()
        .await
        .unwrap();
    let credentials = issuer_builder(&auth.issuer()).build().unwrap();
    credentials.fetch_token().await.unwrap();
    let mut expected: Vec<String> = tried_before
        .iter()
        .map(|l| well_known(*l).to_string())
        .collect();
    expected.push(well_known(location).to_string());
    expected.push(TOKEN_PATH.to_string());
    assert_eq!(auth.request_paths(), expected);
    assert_eq!(auth.discovery_requests(), 1);
    assert_eq!(
        credentials.token_endpoint().map(|u| u.to_string()),
        Some(auth.token_endpoint())
    );
}

#[tokio::test]
async fn rfc8414_inserted_location_alone() {
    discovers_through(MetadataLocation::Rfc8414, &[]).await;
}

#[tokio::test]
async fn okta_appended_location_alone() {
    discovers_through(MetadataLocation::Okta, &[MetadataLocation::Rfc8414]).await;
}

#[tokio::test]
async fn openid_configuration_appended_location_alone() {
    use MetadataLocation::*;
    discovers_through(OpenId, &[Rfc8414, Okta]).await;
}

#[tokio::test]
async fn openid_configuration_inserted_location_alone() {
    use MetadataLocation::*;
    discovers_through(OpenIdInserted, &[Rfc8414, Okta, OpenId]).await;
}

#[tokio::test]
async fn with_every_location_served_the_first_documented_one_is_used() {
    use MetadataLocation::*;
    let auth = AuthServer::builder()
        // Listed in reverse: the server's order must not matter, the client's does.
        .metadata_locations(&[OpenIdInserted, OpenId, Okta, Rfc8414])
        .start()
        .await
        .unwrap();
    let credentials = issuer_builder(&auth.issuer()).build().unwrap();
    credentials.discover().await.unwrap();
    assert_eq!(auth.request_paths(), [well_known(Rfc8414)]);
    assert_eq!(auth.discovery_requests(), 1);
}

#[tokio::test]
async fn no_metadata_anywhere_names_every_location_tried() {
    let auth = AuthServer::builder()
        .metadata_locations(&[])
        .start()
        .await
        .unwrap();
    let credentials = issuer_builder(&auth.issuer()).build().unwrap();
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Discovery);
    use MetadataLocation::*;
    let order = [Rfc8414, Okta, OpenId, OpenIdInserted].map(well_known);
    assert_eq!(auth.request_paths(), order);
    for path in order {
        assert!(err.to_string().contains(path), "{err}");
    }
    assert!(err.to_string().contains(".token_endpoint(url)"), "{err}");
    assert_eq!(auth.token_requests(), 0);
}

#[tokio::test]
async fn issuer_without_a_path() {
    let auth = AuthServer::builder()
        .issuer_path("/")
        .start()
        .await
        .unwrap();
    assert_eq!(auth.issuer(), origin(&auth));
    // With and without the trailing slash: RFC 8414 §3.3 compares them as equal.
    for issuer in [auth.issuer(), format!("{}/", auth.issuer())] {
        let credentials = issuer_builder(&issuer).build().unwrap();
        credentials.fetch_token().await.unwrap();
        assert_eq!(
            credentials.token_endpoint().map(|u| u.to_string()),
            Some(format!("{}/v1/token", origin(&auth)))
        );
    }
    assert_eq!(
        auth.request_paths(),
        [
            "/.well-known/oauth-authorization-server",
            "/v1/token",
            "/.well-known/oauth-authorization-server",
            "/v1/token"
        ]
    );
}

#[tokio::test]
async fn metadata_is_fetched_once_for_many_token_requests() {
    let auth = AuthServer::start().await.unwrap();
    // A slow metadata answer, so that the first concurrent callers really overlap.
    auth.push_discovery_behavior([Behavior::Delay(Duration::from_millis(100))]);
    let credentials = issuer_builder(&auth.issuer()).build().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let credentials = credentials.clone();
        tasks.spawn(async move { credentials.fetch_token().await.map(drop) });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    for _ in 0..5 {
        credentials.fetch_token().await.unwrap();
    }
    credentials.discover().await.unwrap();
    assert_eq!(auth.discovery_requests(), 1);
    assert_eq!(auth.token_requests(), 15);
}

#[tokio::test]
async fn a_failed_discovery_is_not_kept() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_discovery_behavior([Behavior::server_error()]);
    let credentials = issuer_builder(&auth.issuer()).build().unwrap();
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Discovery);
    assert_eq!(err.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert!(err.is_transient());
    assert_eq!(credentials.token_endpoint(), None);
    // A 5xx is the server's trouble, not a missing document: no other location is tried.
    assert_eq!(
        auth.request_paths(),
        [well_known(MetadataLocation::Rfc8414)]
    );
    credentials.fetch_token().await.unwrap();
    assert_eq!((auth.discovery_requests(), auth.token_requests()), (2, 1));
    assert!(credentials.token_endpoint().is_some());
}

#[tokio::test]
async fn a_hanging_discovery_times_out_and_is_retried() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_discovery_behavior([Behavior::Hang]);
    let credentials = issuer_builder(&auth.issuer())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = credentials.discover().await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(err.kind(), ErrorKind::Discovery);
    assert!(err.to_string().contains("300 ms"), "{err}");
    credentials.fetch_token().await.unwrap();
    assert_eq!(auth.discovery_requests(), 2);
}

#[tokio::test]
async fn issuer_mismatch_names_both_issuers() {
    let auth = AuthServer::builder().wrong_issuer().start().await.unwrap();
    let credentials = issuer_builder(&auth.issuer()).build().unwrap();
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Discovery);
    let text = err.to_string();
    assert!(
        text.contains("https://attacker.example/oauth2/default"),
        "{text}"
    );
    assert!(text.contains(&auth.issuer()), "{text}");
    assert_eq!(auth.token_requests(), 0, "no credentials sent anywhere");
    assert_eq!(credentials.token_endpoint(), None);
}

/// The error of a first token request when the metadata endpoint answers `document`.
async fn fetch_error_with_metadata(auth: &AuthServer, document: String) -> Error {
    auth.push_discovery_behavior([Behavior::Raw(StatusCode::OK, "application/json", document)]);
    issuer_builder(&auth.issuer())
        .build()
        .unwrap()
        .fetch_token()
        .await
        .unwrap_err()
}

#[tokio::test]
async fn metadata_without_token_endpoint_is_a_discovery_error() {
    let auth = AuthServer::start().await.unwrap();
    let document = serde_json::json!({ "issuer": auth.issuer() }).to_string();
    let err = fetch_error_with_metadata(&auth, document).await;
    assert_eq!(err.kind(), ErrorKind::Discovery);
    assert!(err.to_string().contains("token_endpoint"), "{err}");
    assert_eq!(auth.token_requests(), 0);
}

#[tokio::test]
async fn discovered_plain_http_token_endpoint_is_refused() {
    let auth = AuthServer::start().await.unwrap();
    let document = serde_json::json!({
        "issuer": auth.issuer(),
        "token_endpoint": "http://idp.example/oauth2/default/v1/token",
    })
    .to_string();
    let err = fetch_error_with_metadata(&auth, document).await;
    assert_eq!(err.kind(), ErrorKind::Discovery);
    assert!(err.to_string().contains("allow_http"), "{err}");
}

// --- client authentication method -------------------------------------------------------------

#[tokio::test]
async fn auth_method_comes_from_the_metadata() {
    let auth = start_with_post_only_client(
        AuthServer::builder().advertised_auth_methods(Some(&["client_secret_post"])),
    )
    .await;
    let credentials = issuer_builder(&auth.issuer()).build().unwrap();
    assert_eq!(credentials.auth_method(), None);
    credentials.fetch_token().await.unwrap();
    assert_eq!(auth.token_requests(), 1, "no basic attempt first");
    assert_eq!(
        credentials.auth_method(),
        Some(ClientAuthMethod::ClientSecretPost)
    );
    assert_eq!(
        auth.last_request().unwrap().method,
        Some(ClientAuthMethod::ClientSecretPost)
    );
}

#[tokio::test]
async fn without_a_method_list_basic_then_post_and_remembered() {
    let auth =
        start_with_post_only_client(AuthServer::builder().advertised_auth_methods(None)).await;
    let credentials = issuer_builder(&auth.issuer()).build().unwrap();
    assert_falls_back_to_post_and_remembers(&credentials, &auth).await;
}

#[tokio::test]
async fn an_explicit_method_is_not_second_guessed_by_the_metadata() {
    // The server advertises post only but would accept basic: the configured basic is sent.
    let auth = AuthServer::builder()
        .advertised_auth_methods(Some(&["client_secret_post"]))
        .start()
        .await
        .unwrap();
    let credentials = issuer_builder(&auth.issuer())
        .auth_method(ClientAuthMethod::ClientSecretBasic)
        .build()
        .unwrap();
    credentials.fetch_token().await.unwrap();
    let seen = auth.last_request().unwrap();
    assert_eq!(seen.method, Some(ClientAuthMethod::ClientSecretBasic));

    // And a rejected explicit method is an error, not a fallback.
    let auth = start_with_post_only_client(
        AuthServer::builder().advertised_auth_methods(Some(&["client_secret_post"])),
    )
    .await;
    let credentials = issuer_builder(&auth.issuer())
        .auth_method(ClientAuthMethod::ClientSecretBasic)
        .build()
        .unwrap();
    assert_explicit_method_is_not_second_guessed(&credentials, &auth).await;
    assert_eq!(
        credentials.auth_method(),
        Some(ClientAuthMethod::ClientSecretBasic)
    );
}

// --- transport safety -----------------------------------------------------------------------

#[tokio::test]
async fn plain_http_to_another_host_needs_allow_http() {
    for build in [
        token_endpoint_builder("http://idp.example/oauth2/default/v1/token"),
        issuer_builder("http://idp.example/oauth2/default"),
    ] {
        let err = build.build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.to_string().contains("allow_http"), "{err}");
    }
    issuer_builder("http://idp.example/oauth2/default")
        .allow_http()
        .build()
        .unwrap();
    // Accepted means used: a plain-http, non-loopback URL gets a token (the in-process client
    // stands in for the network, which this test must not need).
    let auth = AuthServer::start().await.unwrap();
    let credentials =
        token_endpoint_builder("http://auth.internal.example/oauth2/default/v1/token")
            .allow_http()
            .http_client(auth.in_process_client())
            .build()
            .unwrap();
    credentials.fetch_token().await.unwrap();
    assert_eq!(auth.token_requests(), 1);
}

#[tokio::test]
async fn a_redirect_from_the_token_endpoint_is_not_followed() {
    let auth = AuthServer::start().await.unwrap();
    // The target is a second real server: following the redirect would reach it.
    let elsewhere = ApiServer::start(&auth, API_KEY).await.unwrap();
    let target = format!("{}/moved/v1/token", elsewhere.url());
    auth.push_behavior([Behavior::Redirect(target.clone())]);
    let err = token_endpoint_builder(&auth.token_endpoint())
        .build()
        .unwrap()
        .fetch_token()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport);
    assert_eq!(err.status(), Some(StatusCode::FOUND));
    assert!(err.to_string().contains(&target), "{err}");
    assert_eq!(elsewhere.accepted() + elsewhere.rejected(), 0);
    assert_eq!(auth.request_paths(), [TOKEN_PATH], "no retry, no fallback");
}

#[tokio::test]
async fn a_redirect_from_the_metadata_endpoint_is_not_followed() {
    let auth = AuthServer::start().await.unwrap();
    // The target serves real metadata: following the redirect would succeed.
    let target = format!("{}{}", origin(&auth), well_known(MetadataLocation::Okta));
    auth.push_discovery_behavior([Behavior::Redirect(target.clone())]);
    let credentials = issuer_builder(&auth.issuer()).build().unwrap();
    let err = credentials.discover().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Discovery);
    assert_eq!(err.status(), Some(StatusCode::FOUND));
    assert!(err.to_string().contains(&target), "{err}");
    assert!(err.to_string().contains("redirect"), "{err}");
    assert!(!err.to_string().contains("token endpoint"), "{err}");
    assert_eq!(
        auth.request_paths(),
        [well_known(MetadataLocation::Rfc8414)],
        "neither followed nor moved on to the next location"
    );
}

fn huge_token_response() -> String {
    format!(
        r#"{{"access_token":"{}","token_type":"Bearer","expires_in":3600}}"#,
        "a".repeat(100 * 1024)
    )
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_and_the_limit_can_be_raised() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([Behavior::Raw(
        StatusCode::OK,
        "application/json",
        huge_token_response(),
    )]);
    let err = token_endpoint_builder(&auth.token_endpoint())
        .build()
        .unwrap()
        .fetch_token()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport);
    assert!(err.to_string().contains("65536 bytes"), "{err}");
    assert!(err.to_string().contains("max_response_size"), "{err}");

    auth.push_behavior([Behavior::Raw(
        StatusCode::OK,
        "application/json",
        huge_token_response(),
    )]);
    let token = token_endpoint_builder(&auth.token_endpoint())
        .max_response_size(256 * 1024)
        .build()
        .unwrap()
        .fetch_token()
        .await
        .unwrap();
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(token.secret()).len(),
        100 * 1024
    );
}

#[tokio::test]
async fn oversized_metadata_is_refused() {
    let auth = AuthServer::start().await.unwrap();
    let document = format!(
        r#"{{"issuer":"{}","token_endpoint":"{}","padding":"{}"}}"#,
        auth.issuer(),
        auth.token_endpoint(),
        "x".repeat(100 * 1024)
    );
    auth.push_discovery_behavior([Behavior::Raw(StatusCode::OK, "application/json", document)]);
    let err = issuer_builder(&auth.issuer())
        .max_response_size(16 * 1024)
        .build()
        .unwrap()
        .discover()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Discovery);
    assert!(err.to_string().contains("16384 bytes"), "{err}");
}

#[tokio::test]
async fn a_hanging_token_endpoint_times_out() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([Behavior::Hang]);
    let credentials = token_endpoint_builder(&auth.token_endpoint())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = credentials.fetch_token().await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Transport);
    assert!(err.to_string().contains("time limit of 300 ms"), "{err}");
    assert!(err.is_transient());
    credentials.fetch_token().await.unwrap();
}

#[tokio::test]
async fn a_user_supplied_http_client_is_used() {
    let auth = AuthServer::start().await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let client = hyper_client();
    let counting = tower::service_fn({
        let calls = calls.clone();
        move |request: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            client.request(request)
        }
    });
    let credentials = issuer_builder(&auth.issuer())
        .http_client(counting)
        .build()
        .unwrap();
    credentials.fetch_token().await.unwrap();
    credentials.fetch_token().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3, "one discovery, two tokens");
    assert_eq!(auth.request_paths().len(), 3);
}

#[tokio::test]
async fn the_in_process_client_needs_no_network() {
    let auth = AuthServer::start().await.unwrap();
    // `.invalid` never resolves: only the supplied client can answer.
    let credentials = token_endpoint_builder("https://idp.invalid/oauth2/default/v1/token")
        .http_client(auth.in_process_client())
        .build()
        .unwrap();
    credentials.fetch_token().await.unwrap();
    assert_eq!(auth.request_paths(), [TOKEN_PATH]);
}

// --- secrets --------------------------------------------------------------------------------

#[tokio::test]
async fn errors_never_contain_the_secret() {
    let auth = AuthServer::builder()
        .client(AuthServer::CLIENT_ID, SECRET, None)
        .start()
        .await
        .unwrap();
    let with_secret = |builder: ClientCredentialsBuilder| {
        builder
            .client_secret(SECRET)
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap()
    };
    let mut errors = Vec::new();
    // Discovery: a 5xx, a hang, a redirect, an oversized document.
    auth.push_discovery_behavior([
        Behavior::server_error(),
        Behavior::Hang,
        Behavior::Redirect("/elsewhere".into()),
        Behavior::Raw(StatusCode::OK, "application/json", "x".repeat(100 * 1024)),
    ]);
    let credentials = with_secret(issuer_builder(&auth.issuer()));
    for _ in 0..4 {
        errors.push(credentials.fetch_token().await.unwrap_err());
    }
    // Token endpoint: a hang, a redirect, an oversized body, an OAuth error, garbage.
    auth.push_behavior([
        Behavior::Hang,
        Behavior::Redirect("/elsewhere".into()),
        Behavior::Raw(StatusCode::OK, "application/json", huge_token_response()),
        Behavior::invalid_client(),
        Behavior::garbage(),
    ]);
    let credentials = with_secret(
        token_endpoint_builder(&auth.token_endpoint())
            .auth_method(ClientAuthMethod::ClientSecretPost),
    );
    for _ in 0..5 {
        errors.push(credentials.fetch_token().await.unwrap_err());
    }
    // The issuer check, and a plain-http configuration.
    let wrong = AuthServer::builder().wrong_issuer().start().await.unwrap();
    errors.push(
        with_secret(issuer_builder(&wrong.issuer()))
            .fetch_token()
            .await
            .unwrap_err(),
    );
    errors.push(
        issuer_builder("http://idp.example/oauth2/default")
            .client_secret(SECRET)
            .build()
            .unwrap_err(),
    );
    let kinds: Vec<ErrorKind> = errors.iter().map(Error::kind).collect();
    assert_eq!(
        kinds,
        [
            ErrorKind::Discovery,
            ErrorKind::Discovery,
            ErrorKind::Discovery,
            ErrorKind::Discovery,
            ErrorKind::Transport,
            ErrorKind::Transport,
            ErrorKind::Transport,
            ErrorKind::TokenEndpoint,
            ErrorKind::InvalidTokenResponse,
            ErrorKind::Discovery,
            ErrorKind::Configuration,
        ]
    );
    for error in &errors {
        assert_secret_free(error);
    }
    // And the layer's boxed error, as a caller sees it.
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    auth.push_behavior([Behavior::invalid_client()]);
    let mut client = ServiceBuilder::new()
        .layer(
            BearerAuthLayer::new(with_secret(
                token_endpoint_builder(&auth.token_endpoint())
                    .auth_method(ClientAuthMethod::ClientSecretPost),
            ))
            .with_header("x-api-key", API_KEY)
            .unwrap(),
        )
        .service(hyper_client());
    let request = Request::get(api.url()).body(Full::default()).unwrap();
    let err: BoxError = client
        .ready()
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap_err();
    assert_secret_free(&crate_error(err));
}
