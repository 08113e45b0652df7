//! Scripted misbehaviour: what the token or metadata endpoint answers instead of (or before)
//! its normal answer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::response::{oauth_error, Reply};

/// One scripted answer of the token endpoint (or of the metadata endpoint, see
/// [`AuthServer::push_discovery_behavior`](super::AuthServer::push_discovery_behavior)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Behavior {
    /// A normal answer.
    Normal,
    /// A normal answer whose `expires_in` is this JSON value (a number, a string, `null` to omit).
    ExpiresIn(serde_json::Value),
    /// A normal answer after a delay.
    Delay(Duration),
    /// Never answers (until the connection is dropped).
    Hang,
    /// This status with an RFC 6749 §5.2 error body.
    OAuthError(StatusCode, &'static str),
    /// This status with this body and content type.
    Raw(StatusCode, &'static str, String),
    /// HTTP 429 with `Retry-After: <seconds>`.
    RateLimited(u64),
    /// HTTP 429 with Okta's `X-Rate-Limit-Remaining: 0` and `X-Rate-Limit-Reset: <now + seconds>`.
    OktaRateLimited(u64),
    /// HTTP 503 with `Retry-After: <seconds>`.
    Unavailable(u64),
    /// A redirect to this location.
    Redirect(String),
    /// HTTP 401 `invalid_client` whose `error_description` and `error_uri` quote the client
    /// authentication the request carried (the `Authorization` header, the form's
    /// `client_secret` or `client_assertion`), as a careless server might.
    EchoCredentials,
    /// A redirect whose `Location` carries the client authentication the request carried in
    /// its query.
    RedirectWithCredentials,
}

impl Behavior {
    /// HTTP 500 with a JSON `server_error`.
    pub fn server_error() -> Self {
        Behavior::OAuthError(StatusCode::INTERNAL_SERVER_ERROR, "server_error")
    }

    /// HTTP 401 `invalid_client`.
    pub fn invalid_client() -> Self {
        Behavior::OAuthError(StatusCode::UNAUTHORIZED, "invalid_client")
    }

    /// HTTP 502 with an HTML page, as a proxy would send.
    pub fn garbage() -> Self {
        Behavior::Raw(
            StatusCode::BAD_GATEWAY,
            "text/html",
            "<html><body>502 Bad Gateway</body></html>".to_string(),
        )
    }
}

/// Plays `behavior`: `Some` answer replaces the normal one; `None` (after any delay) lets the
/// endpoint answer normally. `credentials` is what the request authenticated with, as sent
/// (empty for a metadata request), for the behaviours that echo it.
pub(super) async fn misbehave(behavior: Option<&Behavior>, credentials: &str) -> Option<Reply> {
    match behavior? {
        Behavior::Normal | Behavior::ExpiresIn(_) => None,
        Behavior::Delay(delay) => {
            tokio::time::sleep(*delay).await;
            None
        }
        Behavior::Hang => {
            std::future::pending::<()>().await;
            None
        }
        Behavior::OAuthError(status, code) => Some(oauth_error(*status, code, "scripted failure")),
        Behavior::Raw(status, content_type, body) => Some(
            Response::builder()
                .status(*status)
                .header(header::CONTENT_TYPE, *content_type)
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap_or_default(),
        ),
        Behavior::RateLimited(seconds) => {
            let mut response =
                oauth_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
            Some(response)
        }
        Behavior::OktaRateLimited(seconds) => {
            let mut response =
                oauth_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down");
            let reset = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                + seconds;
            response
                .headers_mut()
                .insert("x-rate-limit-limit", HeaderValue::from(600));
            response
                .headers_mut()
                .insert("x-rate-limit-remaining", HeaderValue::from(0));
            response
                .headers_mut()
                .insert("x-rate-limit-reset", HeaderValue::from(reset));
            Some(response)
        }
        Behavior::Unavailable(seconds) => {
            let mut response = oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "try later",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
            Some(response)
        }
        Behavior::Redirect(location) => Some(redirect(location)),
        Behavior::EchoCredentials => {
            let body = serde_json::json!({
                "error": "invalid_client",
                "error_description": format!("Client authentication failed: {credentials}"),
                "error_uri": format!(
                    "https://idp.example/help?credentials={}",
                    form_urlencoded::byte_serialize(credentials.as_bytes()).collect::<String>()
                ),
            });
            Some(super::response::json(StatusCode::UNAUTHORIZED, body))
        }
        Behavior::RedirectWithCredentials => Some(redirect(&format!(
            "https://idp.example/login?credentials={}",
            form_urlencoded::byte_serialize(credentials.as_bytes()).collect::<String>()
        ))),
    }
}

fn redirect(location: &str) -> Reply {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, location)
        .body(Full::default())
        .unwrap_or_default()
}
