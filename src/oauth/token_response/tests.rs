//! What `parse_response` makes of the answers real servers give: lenient where servers
//! differ, typed where they fail, and never echoing the body.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Response, StatusCode};

use super::*;
use crate::error::ErrorKind;

/// The parser for a request that carried no secret.
fn parse_response(response: &Response<Bytes>, expiry_from_jwt: bool) -> Result<Token, Error> {
    super::parse_response(response, expiry_from_jwt, &Secrets::none())
}

fn response(status: u16, content_type: &str, body: &str) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Bytes::from(body.to_string()))
        .unwrap()
}

#[test]
fn parses_lenient_success() {
    let token = parse_response(
        &response(200, "application/json", r#"{"access_token":"abc","token_type":"BEARER","expires_in":"3600","scope":"a b","foo":1}"#),
        true,
    )
    .unwrap();
    assert_eq!(token.lifetime(), Some(Duration::from_secs(3600)));
    assert_eq!(token.scope(), Some("a b"));
    assert_eq!(token.extra()["foo"], 1);
    let token = parse_response(
        &response(
            200,
            "application/json",
            r#"{"access_token":"abc","token_type":"bearer","expires_in":60.5}"#,
        ),
        true,
    )
    .unwrap();
    assert_eq!(token.lifetime(), Some(Duration::from_secs_f64(60.5)));
}

#[test]
fn zero_or_negative_expires_in_is_unknown() {
    for v in ["0", "-5", "\"-1\""] {
        let body = format!(r#"{{"access_token":"abc","token_type":"Bearer","expires_in":{v}}}"#);
        let token = parse_response(&response(200, "application/json", &body), true).unwrap();
        assert_eq!(token.lifetime(), None, "{v}");
    }
    let body = r#"{"access_token":"abc","token_type":"Bearer","expires_in":"soon"}"#;
    assert_eq!(
        parse_response(&response(200, "application/json", body), true)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidTokenResponse
    );
}

#[test]
fn dpop_token_type_gives_a_dpop_token() {
    let token = parse_response(
        &response(
            200,
            "application/json",
            r#"{"access_token":"abc","token_type":"dpop","expires_in":60}"#,
        ),
        true,
    )
    .unwrap();
    assert!(token.is_dpop());
    assert_eq!(token.header(), "DPoP abc");
}

#[test]
fn non_bearer_is_rejected() {
    let err = parse_response(
        &response(
            200,
            "application/json",
            r#"{"access_token":"abc","token_type":"mac"}"#,
        ),
        true,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidTokenResponse);
    assert!(err.to_string().contains("mac"));
}

#[test]
fn oauth_error_is_typed() {
    let err = parse_response(
        &response(
            401,
            "application/json",
            r#"{"error":"invalid_client","error_description":"Client authentication failed."}"#,
        ),
        true,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TokenEndpoint);
    assert_eq!(err.oauth_error().unwrap().error, "invalid_client");
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert!(!err.is_transient());
    assert!(err.to_string().contains("check the client id"));
}

#[test]
fn garbage_is_typed_without_echoing_it() {
    let err = parse_response(
        &response(502, "text/html", "<html>bad gateway token=abc</html>"),
        true,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidTokenResponse);
    assert_eq!(err.status(), Some(StatusCode::BAD_GATEWAY));
    assert!(err.to_string().contains("text/html"));
    assert!(!err.to_string().contains("abc"));
    let err = parse_response(&response(200, "application/json", ""), true).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let err = parse_response(
        &response(200, "application/json", r#"{"access_token":12}"#),
        true,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidTokenResponse);
    let err = parse_response(
        &response(
            200,
            "application/json",
            r#"{"token_type":"Bearer","leak":"supersecret"}"#,
        ),
        true,
    )
    .unwrap_err();
    assert!(!err.to_string().contains("supersecret"));
}

#[test]
fn an_error_with_status_200_is_typed() {
    let err = parse_response(
        &response(
            200,
            "application/json",
            r#"{"error":"invalid_client","error_description":"bad"}"#,
        ),
        true,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TokenEndpoint);
    assert_eq!(err.oauth_error().unwrap().error, "invalid_client");
}

#[test]
fn a_jwt_whose_exp_has_passed_has_no_lifetime_left() {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwt = format!(
        "{}.{}.{}",
        e.encode("{}"),
        e.encode(r#"{"exp":1000}"#),
        e.encode("s")
    );
    let body = format!(r#"{{"access_token":"{jwt}","token_type":"Bearer"}}"#);
    let token = parse_response(&response(200, "application/json", &body), true).unwrap();
    assert_eq!(token.lifetime(), Some(Duration::ZERO));
}

#[test]
fn an_absurd_expires_in_does_not_panic() {
    let body = r#"{"access_token":"a","token_type":"Bearer","expires_in":1e308}"#;
    assert!(parse_response(&response(200, "application/json", body), true).is_ok());
    let body = r#"{"access_token":"a","token_type":"Bearer","expires_in":1e-300}"#;
    assert!(parse_response(&response(200, "application/json", body), true).is_ok());
}

#[test]
fn a_bare_401_is_a_permanent_token_endpoint_error() {
    for (content_type, body) in [
        ("text/plain", ""),
        ("text/html", "<html>Unauthorized</html>"),
        ("application/json", "{}"),
    ] {
        let err = parse_response(&response(401, content_type, body), true).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TokenEndpoint, "{err}");
        assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
        assert!(err.oauth_error().is_none());
        assert!(!err.is_transient(), "{err}");
        assert!(err.to_string().contains("client authentication"), "{err}");
    }
    // Other statuses without an OAuth2 body stay what they were.
    let err = parse_response(&response(502, "text/html", "<html/>"), true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidTokenResponse);
    assert!(err.is_transient());
}

#[test]
fn an_echoed_secret_is_redacted_from_every_field() {
    let secret = secrecy::SecretString::from("Echo-Me-S3cret+/");
    let secrets = Secrets::client_secret("client-id", &secret);
    let basic = base64::engine::general_purpose::STANDARD.encode("client-id:Echo-Me-S3cret%2B%2F");
    let body = serde_json::json!({
        "error": "invalid_client Echo-Me-S3cret+/",
        "error_description": format!("secret Echo-Me-S3cret+/ or Basic {basic} is wrong\r\nforged"),
        "error_uri": "https://idp.example/help?client_secret=Echo-Me-S3cret%2B%2F",
    });
    let err = super::parse_response(
        &response(401, "application/json", &body.to_string()),
        true,
        &secrets,
    )
    .unwrap_err();
    let oauth = err.oauth_error().unwrap();
    let shown = format!("{err} {err:?} {oauth:?}");
    for leaked in ["Echo-Me", "S3cret", &basic[..20]] {
        assert!(!shown.contains(leaked), "{leaked} in {shown}");
    }
    assert!(!shown.contains('\r') && !shown.contains('\n'), "{shown}");
    assert!(shown.contains("[redacted]"), "{shown}");
}
