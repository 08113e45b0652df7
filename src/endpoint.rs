//! The token request (RFC 6749 §4.4.2) and the parsing of its answer (§5.1, §5.2).

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::assertion::{self, PrivateKey};
use crate::error::{Error, ErrorKind, OAuthError};
use crate::token::Token;

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1, RFC 7523 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientAuthMethod {
    /// HTTP Basic with the form-urlencoded client id and secret (`client_secret_basic`).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    ClientSecretPost,
    /// A JWT client assertion signed with HS256 and the client secret (`client_secret_jwt`,
    /// RFC 7523 §2.2). Needs the cargo feature `jwt-client-auth`.
    ClientSecretJwt,
    /// A JWT client assertion signed with the client's private key (`private_key_jwt`,
    /// RFC 7523 §2.2); set the key with `ClientCredentialsBuilder::private_key_jwt`. Needs the
    /// cargo feature `jwt-client-auth`.
    PrivateKeyJwt,
    /// Mutual TLS with a certificate issued by a CA the server trusts (`tls_client_auth`,
    /// RFC 8705 §2.1); set the identity with `ClientCredentialsBuilder::tls_client_auth`.
    /// Needs the cargo feature `mtls`.
    TlsClientAuth,
    /// Mutual TLS with a self-signed certificate registered with the client
    /// (`self_signed_tls_client_auth`, RFC 8705 §2.2). Needs the cargo feature `mtls`.
    SelfSignedTlsClientAuth,
}

impl ClientAuthMethod {
    /// The method's registered name (RFC 8414 `token_endpoint_auth_methods_supported`).
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
            ClientAuthMethod::ClientSecretPost => "client_secret_post",
            ClientAuthMethod::ClientSecretJwt => "client_secret_jwt",
            ClientAuthMethod::PrivateKeyJwt => "private_key_jwt",
            ClientAuthMethod::TlsClientAuth => "tls_client_auth",
            ClientAuthMethod::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
        }
    }

    /// Whether the client authenticates with its TLS certificate (RFC 8705).
    pub(crate) fn is_mtls(self) -> bool {
        matches!(
            self,
            ClientAuthMethod::TlsClientAuth | ClientAuthMethod::SelfSignedTlsClientAuth
        )
    }

    /// Whether the method sends a JWT client assertion (RFC 7523) instead of the secret.
    pub(crate) fn is_jwt(self) -> bool {
        matches!(
            self,
            ClientAuthMethod::ClientSecretJwt | ClientAuthMethod::PrivateKeyJwt
        )
    }
}

/// Everything that goes into a token request except the endpoint's URL.
pub(crate) struct TokenRequest<'a> {
    pub(crate) client_id: &'a str,
    /// `None` only with `private_key_jwt`, which needs no secret.
    pub(crate) client_secret: Option<&'a SecretString>,
    pub(crate) private_key: Option<&'a PrivateKey>,
    pub(crate) scope: Option<&'a str>,
    pub(crate) params: &'a [(String, String)],
    pub(crate) method: ClientAuthMethod,
}

impl TokenRequest<'_> {
    pub(crate) fn build(&self, endpoint: &http::Uri) -> Result<Request<Full<Bytes>>, Error> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = self.scope {
            form.append_pair("scope", scope);
        }
        for (name, value) in self.params {
            form.append_pair(name, value);
        }
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(endpoint.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json");
        let secret = || {
            self.client_secret.ok_or_else(|| {
                Error::config(format!(
                    "{} needs a client secret; set it with `.client_secret(..)`",
                    self.method.as_str()
                ))
            })
        };
        match self.method {
            ClientAuthMethod::ClientSecretBasic => {
                // RFC 6749 §2.3.1: both parts are form-urlencoded *before* base64. Servers
                // decode them; skipping this breaks secrets with `:`, `%`, `+` or non-ASCII.
                let mut credentials = String::new();
                credentials.extend(form_urlencoded::byte_serialize(self.client_id.as_bytes()));
                credentials.push(':');
                credentials.extend(form_urlencoded::byte_serialize(
                    secret()?.expose_secret().as_bytes(),
                ));
                let credentials = SecretString::from(credentials);
                let encoded = SecretString::from(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(credentials.expose_secret().as_bytes())
                ));
                let mut value = HeaderValue::from_str(encoded.expose_secret()).map_err(|_| {
                    Error::config("the client credentials cannot be sent in a header")
                })?;
                value.set_sensitive(true);
                builder = builder.header(AUTHORIZATION, value);
            }
            ClientAuthMethod::ClientSecretPost => {
                form.append_pair("client_id", self.client_id);
                form.append_pair("client_secret", secret()?.expose_secret());
            }
            ClientAuthMethod::ClientSecretJwt | ClientAuthMethod::PrivateKeyJwt => {
                // RFC 7523 §3: `aud` is the token endpoint, exactly the URL the request goes to.
                // A fresh assertion (new `jti`, `iat`, `exp`) for every request.
                let client_assertion = assertion::client_assertion(
                    self.method,
                    self.client_id,
                    self.client_secret,
                    self.private_key,
                    &endpoint.to_string(),
                    SystemTime::now(),
                )?;
                form.append_pair("client_assertion_type", assertion::JWT_BEARER);
                form.append_pair("client_assertion", client_assertion.expose_secret());
                form.append_pair("client_id", self.client_id);
            }
            ClientAuthMethod::TlsClientAuth | ClientAuthMethod::SelfSignedTlsClientAuth => {
                // RFC 8705 §2: the certificate authenticates; the body names the client.
                form.append_pair("client_id", self.client_id);
            }
        }
        let body = SecretString::from(form.finish());
        builder
            .body(Full::new(Bytes::copy_from_slice(
                body.expose_secret().as_bytes(),
            )))
            .map_err(|e| Error::config(format!("the token request could not be built: {e}")))
    }
}

#[derive(Deserialize)]
struct SuccessBody {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    scope: Option<serde_json::Value>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    error_uri: Option<String>,
}

/// Turns the token endpoint's answer into a token or a typed error. `now` is when the answer
/// arrived, the start of the token's lifetime.
pub(crate) fn parse_response(
    response: &Response<Bytes>,
    default_expiry_from_jwt: bool,
) -> Result<Token, Error> {
    let status = response.status();
    let body = response.body();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    if !status.is_success() {
        let retry_after = retry_after(response.headers(), SystemTime::now());
        if let Ok(error) = serde_json::from_slice::<ErrorBody>(body) {
            return Err(oauth_error(status, error).with_retry_after(retry_after));
        }
        return Err(Error::new(
            ErrorKind::InvalidTokenResponse,
            format!(
                "HTTP {status} with a {} body of type `{}` that is not an OAuth2 error; check \
                 the token endpoint URL{}",
                describe_len(body.len()),
                clean(content_type, 100),
                if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                    " and the authorization server's health"
                } else {
                    ""
                }
            ),
        )
        .with_status(status)
        .with_retry_after(retry_after));
    }
    // Some servers (GitHub's among them) answer an error with HTTP 200.
    if let Ok(error) = serde_json::from_slice::<ErrorBody>(body) {
        if !body_has_access_token(body) {
            return Err(oauth_error(status, error));
        }
    }
    let parsed: SuccessBody = serde_json::from_slice(body).map_err(|e| {
        // serde_json's message names the position and the kind of problem, never the content.
        Error::new(
            ErrorKind::InvalidTokenResponse,
            format!(
                "HTTP {status} with a {} body of type `{}` that is not a token response ({}); \
                 check the token endpoint URL",
                describe_len(body.len()),
                clean(content_type, 100),
                strip_serde_detail(&e)
            ),
        )
        .with_status(status)
    })?;
    let dpop_bound = match parsed.token_type.as_deref() {
        // Lenient: some servers omit it; RFC 6750 tokens are bearer tokens.
        None => {
            tracing::debug!("token response without token_type; assuming Bearer");
            false
        }
        Some(t) if t.eq_ignore_ascii_case("bearer") => false,
        // RFC 9449 §5: whether a DPoP key is configured is checked by the caller.
        Some(t) if t.eq_ignore_ascii_case("dpop") => true,
        Some(other) => {
            return Err(Error::new(
                ErrorKind::InvalidTokenResponse,
                format!(
                    "the token endpoint issued a `{}` token; only Bearer and DPoP tokens are \
                     supported",
                    clean(other, 32)
                ),
            )
            .with_status(status));
        }
    };
    let lifetime = match parsed.expires_in.as_ref().map(seconds) {
        Some(Ok(Some(seconds))) => Some(seconds),
        Some(Ok(None)) => {
            tracing::warn!("token response with an expires_in of zero or less; treating the lifetime as unknown");
            None
        }
        Some(Err(())) => {
            return Err(Error::new(
                ErrorKind::InvalidTokenResponse,
                "expires_in is neither a number nor a numeric string",
            )
            .with_status(status))
        }
        None => None,
    };
    let lifetime = lifetime.or_else(|| {
        if !default_expiry_from_jwt {
            return None;
        }
        let exp = Token::jwt_expiry_unverified(&parsed.access_token)?;
        // An `exp` in the past is a lifetime of zero, which the cache rejects as expired: not
        // an unknown lifetime that the default would stretch.
        Some(
            exp.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    });
    let token = if dpop_bound {
        Token::dpop(parsed.access_token, lifetime)?
    } else {
        Token::bearer(parsed.access_token, lifetime)?
    };
    let scope = match parsed.scope {
        Some(serde_json::Value::String(s)) => Some(s),
        // Some servers send an array of scopes.
        Some(serde_json::Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    };
    let token = match scope {
        Some(scope) => token.with_scope(scope),
        None => token,
    };
    Ok(token.with_extra(parsed.extra))
}

/// The typed error for an RFC 6749 §5.2 error body: the server's fields, cleaned of control
/// characters and bounded, and a hint at what to check.
fn oauth_error(status: StatusCode, error: ErrorBody) -> Error {
    let oauth = OAuthError {
        status,
        error: clean(&error.error, 64),
        error_description: error.error_description.map(|d| clean(&d, 512)),
        error_uri: error.error_uri.map(|u| clean(&u, 512)),
    };
    let hint = hint_for(&oauth.error);
    let message = match &oauth.error_description {
        Some(description) => format!("HTTP {status}, `{}`: {description}; {hint}", oauth.error),
        None => format!("HTTP {status}, `{}`; {hint}", oauth.error),
    };
    Error::new(ErrorKind::TokenEndpoint, message).with_oauth(oauth)
}

fn body_has_access_token(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        access_token: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(body).is_ok_and(|p| p.access_token.is_some())
}

/// `expires_in` as a positive duration (`Ok(None)`: zero or negative), from a number or a
/// numeric string.
fn seconds(value: &serde_json::Value) -> Result<Option<Duration>, ()> {
    let number = match value {
        serde_json::Value::Number(n) => n.as_f64().ok_or(())?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().map_err(|_| ())?,
        serde_json::Value::Null => return Ok(None),
        _ => return Err(()),
    };
    if !number.is_finite() {
        return Err(());
    }
    // Zero or negative: no stated lifetime. Clamped so that no later Instant arithmetic can
    // overflow; the cache clamps further.
    Ok(crate::time::positive_seconds(number))
}

/// The server's requested wait: `Retry-After` (seconds or HTTP date), else Okta's
/// `X-Rate-Limit-Reset` (UTC epoch seconds) when the rate limit is exhausted.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(value) = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds.min(86_400)));
        }
        if let Ok(date) = httpdate::parse_http_date(value) {
            return Some(date.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    let reset = headers
        .get("x-rate-limit-reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())?;
    let remaining = headers
        .get("x-rate-limit-remaining")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if remaining.is_some_and(|r| r > 0) {
        return None;
    }
    let reset = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(reset))?;
    Some(reset.duration_since(now).unwrap_or(Duration::ZERO))
}

fn hint_for(code: &str) -> &'static str {
    match code {
        "invalid_client" => {
            "check the client id, the client secret and the client authentication method"
        }
        "unauthorized_client" => "check that the client is allowed the client_credentials grant",
        "invalid_scope" => "check the requested scopes against those granted to the client",
        "unsupported_grant_type" => {
            "check that the authorization server supports client_credentials"
        }
        "invalid_request" => "check the extra parameters and the token endpoint URL",
        "invalid_target" => "check the resource or audience parameter",
        _ => "see the error description",
    }
}

/// Text from the server, made safe to put in an error: no control characters, bounded length.
fn clean(text: &str, max: usize) -> String {
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(max).collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

fn describe_len(len: usize) -> String {
    if len == 0 {
        "empty".to_string()
    } else {
        format!("{len}-byte")
    }
}

fn strip_serde_detail(e: &serde_json::Error) -> String {
    // serde_json errors can quote a string value (e.g. "invalid type: string \"...\""); keep
    // only the category and position so a token never leaks through it.
    let category = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "wrong or missing fields; `access_token` is required",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{category} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, content_type: &str, body: &str) -> Response<Bytes> {
        Response::builder()
            .status(status)
            .header(CONTENT_TYPE, content_type)
            .body(Bytes::from(body.to_string()))
            .unwrap()
    }

    #[test]
    fn basic_auth_form_encodes_before_base64() {
        let secret = SecretString::from("s3cr:t %+é");
        let request = TokenRequest {
            client_id: "my client",
            client_secret: Some(&secret),
            private_key: None,
            scope: Some("role:app organization:read"),
            params: &[("audience".into(), "api://x".into())],
            method: ClientAuthMethod::ClientSecretBasic,
        }
        .build(&"https://idp.example/token".parse().unwrap())
        .unwrap();
        let auth = request.headers()[AUTHORIZATION].to_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"my+client:s3cr%3At+%25%2B%C3%A9");
        assert!(request.headers()[AUTHORIZATION].is_sensitive());
        assert_eq!(
            request.headers()[CONTENT_TYPE],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(request.headers()[ACCEPT], "application/json");
    }

    #[test]
    fn post_auth_puts_credentials_in_body() {
        use http_body_util::BodyExt;
        let secret = SecretString::from("pw");
        let request = TokenRequest {
            client_id: "id",
            client_secret: Some(&secret),
            private_key: None,
            scope: None,
            params: &[],
            method: ClientAuthMethod::ClientSecretPost,
        }
        .build(&"https://idp.example/token".parse().unwrap())
        .unwrap();
        assert!(request.headers().get(AUTHORIZATION).is_none());
        let body = futures_lite_block_on(request.into_body().collect())
            .unwrap()
            .to_bytes();
        assert_eq!(
            &body[..],
            b"grant_type=client_credentials&client_id=id&client_secret=pw"
        );
    }

    #[cfg(feature = "jwt-client-auth")]
    fn form_of(request: Request<Full<Bytes>>) -> Vec<(String, String)> {
        use http_body_util::BodyExt;
        let body = futures_lite_block_on(request.into_body().collect())
            .unwrap()
            .to_bytes();
        form_urlencoded::parse(&body).into_owned().collect()
    }

    #[cfg(feature = "jwt-client-auth")]
    fn assertion_request(
        method: ClientAuthMethod,
        secret: Option<&SecretString>,
        key: Option<&PrivateKey>,
        endpoint: &str,
    ) -> (Request<Full<Bytes>>, Vec<(String, String)>, String) {
        let request = TokenRequest {
            client_id: "jwt client",
            client_secret: secret,
            private_key: key,
            scope: Some("a b"),
            params: &[],
            method,
        }
        .build(&endpoint.parse().unwrap())
        .unwrap();
        let (parts, body) = request.into_parts();
        let form = form_of(Request::from_parts(parts.clone(), body));
        let assertion = form
            .iter()
            .find(|(k, _)| k == "client_assertion")
            .map(|(_, v)| v.clone())
            .expect("client_assertion");
        (Request::from_parts(parts, Full::default()), form, assertion)
    }

    #[cfg(feature = "jwt-client-auth")]
    fn check_claims(claims: &assertion::Claims, endpoint: &str) {
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

    #[cfg(feature = "jwt-client-auth")]
    #[test]
    fn client_secret_jwt_sends_an_hs256_assertion() {
        use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
        let endpoint = "https://idp.example:8443/oauth2/v1/token";
        let secret = SecretString::from("a-client-secret-of-at-least-32-bytes!!");
        let (request, form, jwt) = assertion_request(
            ClientAuthMethod::ClientSecretJwt,
            Some(&secret),
            None,
            endpoint,
        );
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
        let claims = decode::<assertion::Claims>(
            &jwt,
            &DecodingKey::from_secret(b"a-client-secret-of-at-least-32-bytes!!"),
            &validation,
        )
        .unwrap()
        .claims;
        check_claims(&claims, endpoint);
        // A fresh assertion for every request.
        let (_, _, again) = assertion_request(
            ClientAuthMethod::ClientSecretJwt,
            Some(&secret),
            None,
            endpoint,
        );
        let again = decode::<assertion::Claims>(
            &again,
            &DecodingKey::from_secret(b"a-client-secret-of-at-least-32-bytes!!"),
            &validation,
        )
        .unwrap()
        .claims;
        assert_ne!(claims.jti, again.jti);
    }

    #[cfg(feature = "jwt-client-auth")]
    #[test]
    fn private_key_jwt_signs_with_rs256_and_es256() {
        use crate::JwtSigningAlgorithm;
        use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
        let endpoint = "https://idp.example/token";
        let cases = [
            (
                JwtSigningAlgorithm::RS256,
                &include_bytes!("../tests/oidc-provider/test-client-key.pem")[..],
                DecodingKey::from_rsa_pem(include_bytes!(
                    "../tests/oidc-provider/test-client-key.pub.pem"
                ))
                .unwrap(),
                Algorithm::RS256,
            ),
            (
                JwtSigningAlgorithm::ES256,
                &include_bytes!("../tests/oidc-provider/test-es256-key.pem")[..],
                DecodingKey::from_ec_pem(include_bytes!(
                    "../tests/oidc-provider/test-es256-key.pub.pem"
                ))
                .unwrap(),
                Algorithm::ES256,
            ),
        ];
        for (algorithm, pem, public, alg) in cases {
            let key = PrivateKey::from_pem(algorithm, pem, Some("kid-1")).unwrap();
            let debug = format!("{key:?}");
            assert!(
                debug.contains("[redacted]") && !debug.contains("PRIVATE"),
                "{debug}"
            );
            let (request, form, jwt) =
                assertion_request(ClientAuthMethod::PrivateKeyJwt, None, Some(&key), endpoint);
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
            let claims = decode::<assertion::Claims>(&jwt, &public, &validation)
                .unwrap()
                .claims;
            check_claims(&claims, endpoint);
        }
        // The wrong kind of key, or no key at all: a configuration error that quotes nothing.
        let rsa = include_bytes!("../tests/oidc-provider/test-client-key.pem");
        let err = PrivateKey::from_pem(JwtSigningAlgorithm::ES256, rsa, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(!err.to_string().contains("MII"), "{err}");
        let err = PrivateKey::from_pem(JwtSigningAlgorithm::RS256, b"not a key", None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
    }

    #[cfg(not(feature = "jwt-client-auth"))]
    #[test]
    fn jwt_methods_need_the_feature() {
        let secret = SecretString::from("pw");
        for method in [
            ClientAuthMethod::ClientSecretJwt,
            ClientAuthMethod::PrivateKeyJwt,
        ] {
            let err = TokenRequest {
                client_id: "id",
                client_secret: Some(&secret),
                private_key: None,
                scope: None,
                params: &[],
                method,
            }
            .build(&"https://idp.example/token".parse().unwrap())
            .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Configuration);
            assert!(err.to_string().contains("jwt-client-auth"), "{err}");
        }
    }

    #[test]
    fn method_names() {
        assert_eq!(
            ClientAuthMethod::ClientSecretJwt.as_str(),
            "client_secret_jwt"
        );
        assert_eq!(ClientAuthMethod::PrivateKeyJwt.as_str(), "private_key_jwt");
    }

    fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
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
            let body =
                format!(r#"{{"access_token":"abc","token_type":"Bearer","expires_in":{v}}}"#);
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
    fn an_absurd_rate_limit_reset_does_not_panic() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-rate-limit-reset",
            HeaderValue::from_static("18446744073709551615"),
        );
        headers.insert("x-rate-limit-remaining", HeaderValue::from_static("0"));
        let _ = retry_after(&headers, SystemTime::now());
        headers.insert(
            "retry-after",
            HeaderValue::from_static("99999999999999999999"),
        );
        let _ = retry_after(&headers, SystemTime::now());
        let body = r#"{"access_token":"a","token_type":"Bearer","expires_in":1e308}"#;
        assert!(parse_response(&response(200, "application/json", body), true).is_ok());
        let body = r#"{"access_token":"a","token_type":"Bearer","expires_in":1e-300}"#;
        assert!(parse_response(&response(200, "application/json", body), true).is_ok());
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        headers.insert(
            "retry-after",
            HeaderValue::from_str(&httpdate::fmt_http_date(now + Duration::from_secs(20))).unwrap(),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(20)));
        let mut headers = HeaderMap::new();
        headers.insert("x-rate-limit-reset", HeaderValue::from_static("1000042"));
        headers.insert("x-rate-limit-remaining", HeaderValue::from_static("0"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(42)));
    }
}
