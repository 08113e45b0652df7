//! What is written to a store: a token with its binding and its lifetime as durations, or the
//! failure a fleet backs off from. JSON, versioned.
//!
//! No wall-clock instant is written: replicas' wall clocks disagree. A token record says how
//! long the writer had held the token and how long it lives; a failure record how long the
//! backoff still ran. The reader adds the record's age, measured by the store's own clock
//! ([`Record::age`]), and converts to its own monotonic clock.

use std::time::Duration;

use ring::digest;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::{Record, StoreKey};
use crate::error::{Error, ErrorKind, OAuthError};
use crate::token::Token;

/// 2: durations instead of wall-clock times, the binding and the extra fields.
const VERSION: u32 = 2;

/// Identifies a token without revealing it: the first 128 bits of its SHA-256, in hex. Access
/// tokens carry far more than 128 bits of entropy, so this cannot be reversed or guessed.
pub(crate) fn fingerprint(token: &Token) -> String {
    let hash = digest::digest(&digest::SHA256, token.secret().expose_secret().as_bytes());
    crate::source::store_key::hex(&hash.as_ref()[..16])
}

/// The fingerprint of failure records: compare-and-delete of the failure slot matches any.
pub(crate) const FAILURE_FINGERPRINT: &str = "failure";

#[derive(Serialize, Deserialize)]
struct TokenRecord {
    v: u32,
    access_token: String,
    /// `Bearer` or `DPoP`.
    token_type: String,
    /// How long the writer had held the token when it wrote it (its monotonic clock).
    held_ms: u64,
    /// The lifetime the server gave (`None`: unknown; each reader applies its default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lifetime_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    extra: serde_json::Map<String, serde_json::Value>,
    /// RFC 7638 thumbprint of the DPoP key the token was requested with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jkt: Option<String>,
    /// `x5t#S256` of the certificate the token was requested over.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "x5t#S256")]
    x5t_s256: Option<String>,
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}

pub(crate) fn encode_token(token: &Token) -> Vec<u8> {
    let record = TokenRecord {
        v: VERSION,
        access_token: token.secret().expose_secret().to_owned(),
        token_type: token.token_type().to_owned(),
        held_ms: millis(token.held_for()),
        lifetime_ms: token.lifetime().map(millis),
        scope: token.scope().map(str::to_owned),
        extra: token.extra().clone(),
        jkt: token.dpop_thumbprint().map(str::to_owned),
        x5t_s256: token.certificate_thumbprint().map(str::to_owned),
    };
    serde_json::to_vec(&record).unwrap_or_default()
}

/// The token in a record a store returned: `None` for anything that is not a token record this
/// version wrote, for a record without an age (the store did not measure it: its life left is
/// unknown), and for one whose payload is not the token its fingerprint names (a ciphertext or
/// payload moved behind another fingerprint: a rejected token must not come back so).
pub(crate) fn decode_token(record: &Record) -> Option<Token> {
    let age = record.age()?;
    let stored: TokenRecord = serde_json::from_slice(record.payload()).ok()?;
    if stored.v != VERSION {
        return None;
    }
    let lifetime = stored.lifetime_ms.map(Duration::from_millis);
    let mut token = if stored.token_type.eq_ignore_ascii_case("DPoP") {
        Token::dpop(stored.access_token, lifetime).ok()?
    } else if stored.token_type.eq_ignore_ascii_case("Bearer") {
        Token::bearer(stored.access_token, lifetime).ok()?
    } else {
        return None;
    };
    if fingerprint(&token) != record.fingerprint() {
        return None;
    }
    token = token.held_since(age.saturating_add(Duration::from_millis(stored.held_ms)));
    if let Some(scope) = stored.scope {
        token = token.with_scope(scope);
    }
    if let Some(jkt) = stored.jkt {
        token = token.with_dpop_thumbprint(jkt);
    }
    if let Some(x5t) = stored.x5t_s256 {
        token = token.with_certificate_thumbprint(x5t);
    }
    Some(token.with_extra(stored.extra))
}

/// Whether `token` may be used by a holder of `key`'s binding: the same DPoP key and the same
/// certificate (or none of either), and a DPoP-bound token only with a DPoP key. The key's
/// digest already separates bindings; this is the check that a token written under the key
/// (by anyone who can write to the store) really is bound as the key says.
pub(crate) fn binding_matches(token: &Token, key: &StoreKey) -> bool {
    token.dpop_thumbprint() == key.dpop_thumbprint()
        && token.certificate_thumbprint() == key.certificate_thumbprint()
        && (!token.is_dpop() || token.dpop_thumbprint().is_some())
}

/// A failed token request, as the fleet sees it.
#[derive(Serialize, Deserialize)]
pub(crate) struct FailureRecord {
    v: u32,
    /// Consecutive failures of the fleet: the transient backoff grows with it.
    pub(crate) failures: u32,
    /// The permanent ones among them (`invalid_client`, ...): the permanent backoff grows with
    /// these only, as a single process's does (transient failures before say nothing about
    /// how long a configuration error lasts).
    pub(crate) permanent_failures: u32,
    /// How long the fleet still backed off when this was written; the reader subtracts the
    /// record's age.
    backoff_ms: u64,
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
    pub(crate) fn new(
        error: &Error,
        failures: u32,
        permanent_failures: u32,
        backoff: Duration,
    ) -> Self {
        FailureRecord {
            v: VERSION,
            failures,
            permanent_failures,
            backoff_ms: millis(backoff),
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

    /// The failure in a record a store returned, with how long its backoff still runs (by the
    /// store's clock); `None` for anything else, or a record without an age.
    pub(crate) fn decode(record: &Record) -> Option<(Self, Duration)> {
        let age = record.age()?;
        let failure: FailureRecord = serde_json::from_slice(record.payload()).ok()?;
        if failure.v != VERSION {
            return None;
        }
        let remaining = Duration::from_millis(failure.backoff_ms).saturating_sub(age);
        Some((failure, remaining))
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

    fn stored(token: &Token, age: Duration) -> Record {
        Record::new(fingerprint(token), encode_token(token)).with_age(age)
    }

    #[tokio::test(start_paused = true)]
    async fn token_round_trip_keeps_type_binding_scope_extra_and_life() {
        let mut extra = serde_json::Map::new();
        extra.insert("issued_token_type".into(), "urn:x".into());
        let token = Token::dpop("tok.en-1", Some(Duration::from_secs(120)))
            .unwrap()
            .with_scope("a b")
            .with_extra(extra.clone())
            .with_dpop_thumbprint("jkt-1".into())
            .with_certificate_thumbprint("x5t-1".into());
        tokio::time::advance(Duration::from_secs(20)).await;
        // Read back 30 s after the write, by the store's clock: 50 s of 120 gone.
        let back = decode_token(&stored(&token, Duration::from_secs(30))).unwrap();
        assert_eq!(back.secret().expose_secret(), "tok.en-1");
        assert!(back.is_dpop(), "issue 19 defect 1: the token type is kept");
        assert_eq!(back.dpop_thumbprint(), Some("jkt-1"));
        assert_eq!(back.certificate_thumbprint(), Some("x5t-1"));
        assert_eq!(back.scope(), Some("a b"));
        assert_eq!(
            back.extra(),
            &extra,
            "issue 20 defect 9: extra fields are kept"
        );
        assert_eq!(back.lifetime(), Some(Duration::from_secs(120)));
        assert_eq!(back.remaining_lifetime(), Some(Duration::from_secs(70)));
        assert_eq!(fingerprint(&back), fingerprint(&token));
        let no_expiry = Token::bearer("x", None).unwrap();
        let back = decode_token(&stored(&no_expiry, Duration::ZERO)).unwrap();
        assert_eq!(back.lifetime(), None);
        assert!(!back.is_dpop());
    }

    #[test]
    fn garbage_other_versions_unaged_and_misfiled_records_are_ignored() {
        let token = Token::bearer("tok", Some(Duration::from_secs(60))).unwrap();
        let aged = |payload: &[u8]| {
            Record::new(fingerprint(&token), payload.to_vec()).with_age(Duration::ZERO)
        };
        assert!(decode_token(&aged(b"not json")).is_none());
        assert!(decode_token(&aged(
            br#"{"v":1,"access_token":"tok","issued_at_ms":1,"expires_at_ms":2}"#
        ))
        .is_none());
        // No age: the store did not say how old it is.
        assert!(decode_token(&Record::new(fingerprint(&token), encode_token(&token))).is_none());
        // Issue 20 defect 8: a payload behind another token's fingerprint.
        let other = Token::bearer("other", Some(Duration::from_secs(60))).unwrap();
        let misfiled =
            Record::new(fingerprint(&other), encode_token(&token)).with_age(Duration::ZERO);
        assert!(decode_token(&misfiled).is_none());
        assert!(FailureRecord::decode(
            &Record::new("failure", b"{}".to_vec()).with_age(Duration::ZERO)
        )
        .is_none());
    }

    #[test]
    fn failure_keeps_kind_oauth_error_counts_and_backoff_by_the_store_clock() {
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
        let encoded = FailureRecord::new(&error, 3, 1, Duration::from_secs(30)).encode();
        let record = Record::new(FAILURE_FINGERPRINT, encoded).with_age(Duration::from_secs(10));
        let (failure, remaining) = FailureRecord::decode(&record).unwrap();
        assert_eq!((failure.failures, failure.permanent_failures), (3, 1));
        assert_eq!(remaining, Duration::from_secs(20));
        let back = failure.to_error(remaining);
        assert_eq!(back.kind(), ErrorKind::TokenEndpoint);
        assert_eq!(back.oauth_error(), Some(&oauth));
        assert_eq!(back.retry_after(), Some(remaining));
        assert!(back.to_string().contains("another process"), "{back}");
        let old = Record::new(
            FAILURE_FINGERPRINT,
            FailureRecord::new(&error, 1, 1, Duration::from_secs(5)).encode(),
        )
        .with_age(Duration::from_secs(6));
        assert_eq!(FailureRecord::decode(&old).unwrap().1, Duration::ZERO);
    }
}
