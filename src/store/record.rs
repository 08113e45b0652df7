//! What is written to a store: a token with its wall-clock issue and expiry times, or the
//! failure a fleet backs off from. JSON, versioned.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::digest;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, OAuthError};
use crate::token::Token;

const VERSION: u32 = 1;

/// Identifies a token without revealing it: the first 128 bits of its SHA-256, in hex. Access
/// tokens carry far more than 128 bits of entropy, so this cannot be reversed or guessed.
pub(crate) fn fingerprint(token: &Token) -> String {
    let hash = digest::digest(&digest::SHA256, token.secret().expose_secret().as_bytes());
    super::key::hex(&hash.as_ref()[..16])
}

/// The fingerprint of failure records: compare-and-delete of the failure slot matches any.
pub(crate) const FAILURE_FINGERPRINT: &str = "failure";

#[derive(Serialize, Deserialize)]
struct TokenRecord {
    v: u32,
    access_token: String,
    issued_at_ms: u64,
    expires_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

fn at_millis(ms: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

pub(crate) fn encode_token(token: &Token) -> Vec<u8> {
    let (issued, expires) = token.wall_clock_times();
    let record = TokenRecord {
        v: VERSION,
        access_token: token.secret().expose_secret().to_owned(),
        issued_at_ms: millis(issued),
        expires_at_ms: expires.map(millis),
        scope: token.scope().map(str::to_owned),
    };
    serde_json::to_vec(&record).unwrap_or_default()
}

/// `None` for anything that is not a token record this version wrote.
pub(crate) fn decode_token(bytes: &[u8]) -> Option<Token> {
    let record: TokenRecord = serde_json::from_slice(bytes).ok()?;
    if record.v != VERSION {
        return None;
    }
    let issued = at_millis(record.issued_at_ms)?;
    let expires = match record.expires_at_ms {
        Some(ms) => Some(at_millis(ms)?),
        None => None,
    };
    let token = Token::from_wall_clock(record.access_token, issued, expires).ok()?;
    Some(match record.scope {
        Some(scope) => token.with_scope(scope),
        None => token,
    })
}

/// A failed token request, as the fleet sees it.
#[derive(Serialize, Deserialize)]
pub(crate) struct FailureRecord {
    v: u32,
    /// Consecutive failures of the fleet: the backoff grows with it.
    pub(crate) failures: u32,
    /// No process requests a token before this (Unix ms).
    pub(crate) until_ms: u64,
    kind: String,
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oauth: Option<StoredOAuthError>,
}

#[derive(Serialize, Deserialize)]
struct StoredOAuthError {
    error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uri: Option<String>,
}

fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Configuration => "configuration",
        ErrorKind::Discovery => "discovery",
        ErrorKind::Transport => "transport",
        ErrorKind::TokenEndpoint => "token_endpoint",
        ErrorKind::InvalidTokenResponse => "invalid_token_response",
        ErrorKind::BackingOff => "backing_off",
        ErrorKind::RefreshAborted => "refresh_aborted",
        _ => "source",
    }
}

fn kind_from_name(name: &str) -> ErrorKind {
    match name {
        "configuration" => ErrorKind::Configuration,
        "discovery" => ErrorKind::Discovery,
        "transport" => ErrorKind::Transport,
        "token_endpoint" => ErrorKind::TokenEndpoint,
        "invalid_token_response" => ErrorKind::InvalidTokenResponse,
        "backing_off" => ErrorKind::BackingOff,
        "refresh_aborted" => ErrorKind::RefreshAborted,
        _ => ErrorKind::Source,
    }
}

impl FailureRecord {
    /// `error`'s message and OAuth2 fields (which never hold a secret: see [`Error`]).
    pub(crate) fn new(error: &Error, failures: u32, until: SystemTime) -> Self {
        FailureRecord {
            v: VERSION,
            failures,
            until_ms: millis(until),
            kind: kind_name(error.kind()).to_owned(),
            message: error.message().to_owned(),
            status: error.status().map(|s| s.as_u16()),
            oauth: error.oauth_error().map(|oauth| StoredOAuthError {
                error: oauth.error.clone(),
                description: oauth.error_description.clone(),
                uri: oauth.error_uri.clone(),
            }),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let record: FailureRecord = serde_json::from_slice(bytes).ok()?;
        (record.v == VERSION).then_some(record)
    }

    /// How long the fleet still backs off (zero: no longer).
    pub(crate) fn remaining(&self) -> Duration {
        at_millis(self.until_ms)
            .and_then(|until| until.duration_since(SystemTime::now()).ok())
            .unwrap_or_default()
    }

    /// The error this process reports instead of making a token request of its own: the same
    /// kind and OAuth2 error, with the rest of the fleet's backoff as its `retry_after`.
    pub(crate) fn to_error(&self, remaining: Duration) -> Error {
        let status = self.status.and_then(|s| http::StatusCode::from_u16(s).ok());
        let mut error = Error::new(
            kind_from_name(&self.kind),
            format!(
                "{} (a token request of another process sharing this token store failed; the \
                 fleet backs off for {} ms)",
                self.message,
                remaining.as_millis()
            ),
        )
        .with_retry_after(Some(remaining));
        match (&self.oauth, status) {
            (Some(oauth), Some(status)) => {
                error = error.with_oauth(OAuthError {
                    status,
                    error: oauth.error.clone(),
                    error_description: oauth.description.clone(),
                    error_uri: oauth.uri.clone(),
                })
            }
            (None, Some(status)) => error = error.with_status(status),
            _ => {}
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_round_trip() {
        let token = Token::bearer("tok.en-1", Some(Duration::from_secs(120)))
            .unwrap()
            .with_scope("a b");
        let bytes = encode_token(&token);
        let back = decode_token(&bytes).unwrap();
        assert_eq!(back.secret().expose_secret(), "tok.en-1");
        assert_eq!(back.scope(), Some("a b"));
        let (a, b) = (
            back.remaining_lifetime().unwrap(),
            token.remaining_lifetime().unwrap(),
        );
        assert!(
            a.max(b) - a.min(b) < Duration::from_millis(5),
            "{a:?} {b:?}"
        );
        assert_eq!(fingerprint(&back), fingerprint(&token));
        assert_eq!(fingerprint(&token).len(), 32);
        let no_expiry = Token::bearer("x", None).unwrap();
        assert_eq!(
            decode_token(&encode_token(&no_expiry)).unwrap().lifetime(),
            None
        );
    }

    #[test]
    fn garbage_and_other_versions_are_ignored() {
        assert!(decode_token(b"not json").is_none());
        assert!(
            decode_token(br#"{"v":2,"access_token":"a","issued_at_ms":1,"expires_at_ms":2}"#)
                .is_none()
        );
        assert!(decode_token(br#"{"v":1,"access_token":"","issued_at_ms":1}"#).is_none());
        assert!(FailureRecord::decode(b"{}").is_none());
    }

    #[test]
    fn failure_keeps_kind_oauth_error_and_backoff() {
        let oauth = OAuthError {
            status: http::StatusCode::UNAUTHORIZED,
            error: "invalid_client".into(),
            error_description: Some("bad client".into()),
            error_uri: None,
        };
        let error = Error::new(
            ErrorKind::TokenEndpoint,
            "the token endpoint refused the client",
        )
        .with_oauth(oauth.clone());
        let until = SystemTime::now() + Duration::from_secs(30);
        let record = FailureRecord::decode(&FailureRecord::new(&error, 3, until).encode()).unwrap();
        assert_eq!(record.failures, 3);
        let remaining = record.remaining();
        assert!(remaining > Duration::from_secs(29) && remaining <= Duration::from_secs(30));
        let back = record.to_error(remaining);
        assert_eq!(back.kind(), ErrorKind::TokenEndpoint);
        assert_eq!(back.oauth_error(), Some(&oauth));
        assert_eq!(back.retry_after(), Some(remaining));
        assert!(back.to_string().contains("another process"), "{back}");
        let past = FailureRecord::new(&error, 1, SystemTime::now() - Duration::from_secs(1));
        assert_eq!(past.remaining(), Duration::ZERO);
    }
}
