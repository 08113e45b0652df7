//! What `ClientCredentials` makes of an authorization server that misbehaves or is hostile:
//! a bare 401, both client authentication methods refused, answers slow enough to add up, a
//! token no `Authorization` header can carry, waits of years, a metadata document written to
//! forge log lines. Each test failed before its fix (issue 12).

use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;
use tower_client_credentials::testing::{AuthServer, Behavior};
use tower_client_credentials::{ClientAuthMethod, ErrorKind, TokenSource};

mod common;
use common::{default_client, issuer_builder, start_with_post_only_client};

/// A bare 401 (no §5.2 body) is the server asking "who are you": a permanent token endpoint
/// error, and a reason to try the other client authentication method.
#[tokio::test]
async fn a_bare_401_is_permanent_and_triggers_the_form_body_fallback() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_behavior([Behavior::Raw(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        String::new(),
    )]);
    let credentials = default_client(&auth).build().unwrap();
    credentials.fetch_token().await.unwrap();
    assert_eq!(
        auth.token_requests(),
        2,
        "basic got the bare 401, then post"
    );
    assert_eq!(
        credentials.auth_method(),
        Some(ClientAuthMethod::ClientSecretPost)
    );

    // With the method fixed, the bare 401 is the answer: permanent, typed, not garbage.
    let auth = AuthServer::start().await.unwrap();
    auth.set_default_behavior(Some(Behavior::Raw(
        StatusCode::UNAUTHORIZED,
        "text/html",
        "<html><body>401 Authorization Required</body></html>".into(),
    )));
    let credentials = default_client(&auth)
        .auth_method(ClientAuthMethod::ClientSecretBasic)
        .build()
        .unwrap();
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TokenEndpoint, "{err}");
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("client secret"), "{err}");
}

/// Once both methods were refused, each later fetch sends one request, not two, alternating,
/// so that a fix on either side is still found.
#[tokio::test]
async fn after_both_methods_are_refused_each_fetch_sends_one_request() {
    let auth = start_with_post_only_client(AuthServer::builder()).await;
    // The first fetch: Basic is refused by the client's registration, Post by the script.
    auth.push_behavior([Behavior::Normal, Behavior::invalid_client()]);
    let credentials = default_client(&auth).build().unwrap();
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.oauth_error().unwrap().error, "invalid_client");
    assert_eq!(auth.token_requests(), 2, "the first fetch tries both");
    // Basic again: refused, one request.
    credentials.fetch_token().await.unwrap_err();
    assert_eq!(auth.token_requests(), 3, "one request per later fetch");
    // Then Post, which now works and is remembered.
    credentials.fetch_token().await.unwrap();
    assert_eq!(auth.token_requests(), 4);
    assert_eq!(
        credentials.auth_method(),
        Some(ClientAuthMethod::ClientSecretPost)
    );
    credentials.fetch_token().await.unwrap();
    assert_eq!(auth.token_requests(), 5);
}

/// `timeout` bounds a whole fetch: discovery and token request together.
#[tokio::test(start_paused = true)]
async fn one_deadline_covers_discovery_and_the_token_request() {
    let auth = AuthServer::start().await.unwrap();
    auth.push_discovery_behavior([Behavior::Delay(Duration::from_secs(6))]);
    auth.push_behavior([Behavior::Delay(Duration::from_secs(6))]);
    let credentials = issuer_builder(&auth.issuer())
        .auth_method(ClientAuthMethod::ClientSecretBasic)
        .http_client(auth.in_process_client())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let start = Instant::now();
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport, "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert!(err.to_string().contains("`timeout`"), "{err}");
}

/// `timeout` bounds a whole fetch: both requests of the method negotiation together.
#[tokio::test(start_paused = true)]
async fn one_deadline_covers_both_requests_of_the_negotiation() {
    let auth = start_with_post_only_client(AuthServer::builder()).await;
    // Basic is refused after 8 s; Post never answers.
    auth.push_behavior([Behavior::Delay(Duration::from_secs(8)), Behavior::Hang]);
    let credentials = default_client(&auth)
        .http_client(auth.in_process_client())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let start = Instant::now();
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport, "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(
        auth.token_requests(),
        1,
        "the hanging request is not counted"
    );
}

/// A token the `Authorization` grammar (RFC 6750 `b64token`) cannot carry is refused, and never
/// quoted.
#[tokio::test]
async fn a_token_no_authorization_header_can_carry_is_refused() {
    let auth = AuthServer::start().await.unwrap();
    let credentials = default_client(&auth).build().unwrap();
    for token in [
        "zqx ök én",
        "ZQX, Basic Zm9vOmJhcg==",
        "zqx\ten",
        "zqx=padding=in=middle",
    ] {
        let body = serde_json::json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 3600,
        });
        auth.push_behavior([Behavior::Raw(
            StatusCode::OK,
            "application/json",
            body.to_string(),
        )]);
        let err = credentials.fetch_token().await.unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidTokenResponse,
            "{token}: {err}"
        );
        let shown = format!("{err} {err:?}");
        assert!(!shown.to_lowercase().contains("zqx"), "{shown}");
    }
}

/// The wait handed to callers is capped, whatever the form of the server's request.
#[tokio::test]
async fn a_wait_of_years_is_capped() {
    let auth = AuthServer::start().await.unwrap();
    let credentials = default_client(&auth).build().unwrap();
    auth.push_behavior([Behavior::OktaRateLimited(7_973 * 365 * 86_400)]);
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(300)), "{err}");
}

/// A metadata document whose `issuer` holds CR, LF and ESC cannot forge a log line through the
/// error that names it.
#[tokio::test]
async fn a_hostile_issuer_is_printed_escaped() {
    let auth = AuthServer::start().await.unwrap();
    let document = serde_json::json!({
        "issuer": "https://evil.example/\r\n2025-01-01T00:00:00Z  INFO tower_client_credentials: \
                   token refreshed\u{1b}[2K",
        "token_endpoint": auth.token_endpoint(),
    });
    auth.push_discovery_behavior([Behavior::Raw(
        StatusCode::OK,
        "application/json",
        document.to_string(),
    )]);
    let credentials = issuer_builder(&auth.issuer()).build().unwrap();
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Discovery, "{err}");
    let shown = err.to_string();
    assert!(
        !shown.contains('\r') && !shown.contains('\n') && !shown.contains('\u{1b}'),
        "{shown}"
    );
    assert!(shown.contains("evil.example/\\r\\n2025"), "{shown}");
}
