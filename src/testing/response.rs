//! The JSON answers of the loopback servers.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;

/// A complete answer of a loopback server.
pub(super) type Reply = Response<Full<Bytes>>;

/// `body` as `application/json` with `status`.
pub(super) fn json(status: StatusCode, body: serde_json::Value) -> Reply {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

/// An RFC 6749 §5.2 error body with `status`.
pub(super) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Reply {
    json(
        status,
        serde_json::json!({"error": error, "error_description": description}),
    )
}
