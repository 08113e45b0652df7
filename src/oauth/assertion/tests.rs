//! The assertion as it goes over the wire: the form fields, the JOSE header and the claims,
//! decoded with the matching key.

use std::time::SystemTime;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::Request;
use http_body_util::{BodyExt, Full};
use secrecy::SecretString;

use super::*;
use crate::error::ErrorKind;
use crate::oauth::token_request::{ClientAuth, TokenRequest};

async fn form_of(request: Request<Full<Bytes>>) -> Vec<(String, String)> {
    let body = request.into_body().collect().await.unwrap().to_bytes();
    form_urlencoded::parse(&body).into_owned().collect()
}

async fn assertion_request(
    key: &AssertionKey,
    endpoint: &str,
) -> (Request<Full<Bytes>>, Vec<(String, String)>, String) {
    let request = TokenRequest {
        client_id: "jwt client",
        auth: ClientAuth::Assertion(key),
        scope: Some("a b"),
        params: &[],
    }
    .build(&endpoint.parse().unwrap())
    .unwrap()
    .0;
    let (parts, body) = request.into_parts();
    let form = form_of(Request::from_parts(parts.clone(), body)).await;
    let assertion = form
        .iter()
        .find(|(k, _)| k == "client_assertion")
        .map(|(_, v)| v.clone())
        .expect("client_assertion");
    (Request::from_parts(parts, Full::default()), form, assertion)
}

fn check_claims(claims: &Claims, endpoint: &str) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(claims.iss, "jwt client");
    assert_eq!(claims.sub, "jwt client");
    assert_eq!(claims.aud, endpoint);
    assert_eq!(claims.jti.len(), 32);
    assert!(claims.jti.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(claims.iat.abs_diff(now) <= 5);
    assert_eq!(claims.exp, claims.iat + 60);
}

#[tokio::test]
async fn client_secret_jwt_sends_an_hs256_assertion() {
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
    let endpoint = "https://idp.example:8443/oauth2/v1/token";
    let key =
        AssertionKey::ClientSecret(SecretString::from("a-client-secret-of-at-least-32-bytes!!"));
    let (request, form, jwt) = assertion_request(&key, endpoint).await;
    assert!(request.headers().get(AUTHORIZATION).is_none());
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(field("grant_type"), Some("client_credentials"));
    assert_eq!(field("scope"), Some("a b"));
    assert_eq!(
        field("client_assertion_type"),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    assert_eq!(field("client_id"), Some("jwt client"));
    assert_eq!(field("client_secret"), None);
    let header = decode_header(&jwt).unwrap();
    assert_eq!(header.alg, Algorithm::HS256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(header.kid, None);
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[endpoint]);
    let claims = decode::<Claims>(
        &jwt,
        &DecodingKey::from_secret(b"a-client-secret-of-at-least-32-bytes!!"),
        &validation,
    )
    .unwrap()
    .claims;
    check_claims(&claims, endpoint);
    // A fresh assertion for every request.
    let (_, _, again) = assertion_request(&key, endpoint).await;
    let again = decode::<Claims>(
        &again,
        &DecodingKey::from_secret(b"a-client-secret-of-at-least-32-bytes!!"),
        &validation,
    )
    .unwrap()
    .claims;
    assert_ne!(claims.jti, again.jti);
}

#[tokio::test]
async fn private_key_jwt_signs_with_rs256_and_es256() {
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
    let endpoint = "https://idp.example/token";
    let cases = [
        (
            JwtSigningAlgorithm::RS256,
            &include_bytes!("../../../tests/oidc-provider/test-client-key.pem")[..],
            DecodingKey::from_rsa_pem(include_bytes!(
                "../../../tests/oidc-provider/test-client-key.pub.pem"
            ))
            .unwrap(),
            Algorithm::RS256,
        ),
        (
            JwtSigningAlgorithm::ES256,
            &include_bytes!("../../../tests/oidc-provider/test-es256-key.pem")[..],
            DecodingKey::from_ec_pem(include_bytes!(
                "../../../tests/oidc-provider/test-es256-key.pub.pem"
            ))
            .unwrap(),
            Algorithm::ES256,
        ),
    ];
    for (algorithm, pem, public, alg) in cases {
        let key = PrivateKey::from_pem(algorithm, pem, Some("kid-1")).unwrap();
        let debug = format!("{key:?}");
        let key = AssertionKey::PrivateKey(key);
        assert!(
            debug.contains("[redacted]") && !debug.contains("PRIVATE"),
            "{debug}"
        );
        let (request, form, jwt) = assertion_request(&key, endpoint).await;
        assert!(request.headers().get(AUTHORIZATION).is_none());
        assert!(form
            .iter()
            .any(|(k, v)| k == "client_id" && v == "jwt client"));
        let header = decode_header(&jwt).unwrap();
        assert_eq!(header.alg, alg);
        assert_eq!(header.kid.as_deref(), Some("kid-1"));
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        let mut validation = Validation::new(alg);
        validation.set_audience(&[endpoint]);
        let claims = decode::<Claims>(&jwt, &public, &validation).unwrap().claims;
        check_claims(&claims, endpoint);
    }
    // The wrong kind of key, or no key at all: a configuration error that quotes nothing.
    let rsa = include_bytes!("../../../tests/oidc-provider/test-client-key.pem");
    let err = PrivateKey::from_pem(JwtSigningAlgorithm::ES256, rsa, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert!(!err.to_string().contains("MII"), "{err}");
    let err = PrivateKey::from_pem(JwtSigningAlgorithm::RS256, b"not a key", None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
}

/// Issue 19 (smaller item): the `jti` comes from the operating system's CSPRNG, not from
/// fastrand's thread-local generator (64 bits of state, reseedable by any code on the thread).
/// With fastrand, the same seed gave the same `jti` twice: a server that refuses replays
/// (RFC 7523 §3) refused the second assertion, and anyone who knew the state could predict it.
#[test]
fn the_jti_does_not_follow_the_threads_fastrand_state() {
    let make = || {
        fastrand::seed(7);
        Claims::new("id", "https://idp.example/token", SystemTime::now())
            .unwrap()
            .jti
    };
    let (first, second) = (make(), make());
    assert_ne!(first, second);
    assert_eq!(first.len(), 32);
}
