//! The token endpoint's answer (RFC 6749 §5.1, §5.2): the success and error bodies, the leniency
//! real servers need, and the typed error with a hint at what to check.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Response, StatusCode};
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

use crate::error::{Error, ErrorKind, OAuthError};
use crate::http::retry_after::retry_after;
use crate::http::sanitize::{describe_len, strip_serde_detail, Secrets};
use crate::token::Token;

/// A §5.1 success body.
#[derive(Deserialize)]
struct SuccessBody {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default, deserialize_with = "expires_in")]
    expires_in: Option<ExpiresIn>,
    #[serde(default, deserialize_with = "scope")]
    scope: Option<String>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// A §5.2 error body.
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    error_uri: Option<String>,
}

/// `expires_in` as sent. Lenient: a number or a numeric string, as servers differ.
enum ExpiresIn {
    /// A positive number of seconds, clamped so that no later `Instant` arithmetic overflows.
    Lifetime(Duration),
    /// Zero, negative or `null`: no stated lifetime.
    NotPositive,
    /// Neither a number nor a numeric string.
    Invalid,
}

fn expires_in<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<ExpiresIn>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Sent {
        Number(f64),
        Text(String),
        Null(()),
        Other(IgnoredAny),
    }
    let number = match Sent::deserialize(deserializer)? {
        Sent::Number(number) => number,
        Sent::Text(text) => match text.trim().parse::<f64>() {
            Ok(number) => number,
            Err(_) => return Ok(Some(ExpiresIn::Invalid)),
        },
        Sent::Null(()) => return Ok(Some(ExpiresIn::NotPositive)),
        Sent::Other(_) => return Ok(Some(ExpiresIn::Invalid)),
    };
    if !number.is_finite() {
        return Ok(Some(ExpiresIn::Invalid));
    }
    Ok(Some(match crate::time::positive_seconds(number) {
        Some(lifetime) => ExpiresIn::Lifetime(lifetime),
        None => ExpiresIn::NotPositive,
    }))
}

/// `scope` as a space-separated string. Lenient: some servers send an array of scopes; any
/// other value is ignored.
fn scope<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        Text(String),
        Other(IgnoredAny),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Sent {
        Text(String),
        List(Vec<Item>),
        Other(IgnoredAny),
    }
    Ok(match Sent::deserialize(deserializer)? {
        Sent::Text(scope) => Some(scope),
        Sent::List(items) => Some(
            items
                .iter()
                .filter_map(|item| match item {
                    Item::Text(scope) => Some(scope.as_str()),
                    Item::Other(_) => None,
                })
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Sent::Other(_) => None,
    })
}

/// Turns the token endpoint's answer into a token or a typed error. The token's lifetime is
/// counted by the caller from when the request was sent (`Token::with_received_at`);
/// `expiry_from_jwt` lets a JWT's `exp` state a lifetime the response does not.
///
/// Server text kept in an error is cleaned of `secrets` (every form of what the request
/// carried) and of control characters. A 401 that is not a §5.2 error body is the server saying
/// "who are you" all the same: a [`ErrorKind::TokenEndpoint`] error with status 401 and no
/// [`OAuthError`] (the server named no error code), permanent, and a reason to try the other
/// client authentication method.
pub(crate) fn parse_response(
    response: &Response<Bytes>,
    expiry_from_jwt: bool,
    secrets: &Secrets,
) -> Result<Token, Error> {
    let clean = |text: &str, max: usize| secrets.clean(text, max);
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
            return Err(oauth_error(status, error, secrets).with_retry_after(retry_after));
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(Error::new(
                ErrorKind::TokenEndpoint,
                format!(
                    "HTTP 401 with a {} body of type `{}` and no OAuth2 error: the server did not \
                     accept the client authentication; check the client id, the client secret \
                     and the client authentication method",
                    describe_len(body.len()),
                    clean(content_type, 100),
                ),
            )
            .with_status(status)
            .with_retry_after(retry_after));
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
            return Err(oauth_error(status, error, secrets));
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
    let lifetime = match parsed.expires_in {
        Some(ExpiresIn::Lifetime(seconds)) => Some(seconds),
        Some(ExpiresIn::NotPositive) => {
            tracing::warn!("token response with an expires_in of zero or less; treating the lifetime as unknown");
            None
        }
        Some(ExpiresIn::Invalid) => {
            return Err(Error::new(
                ErrorKind::InvalidTokenResponse,
                "expires_in is neither a number nor a numeric string",
            )
            .with_status(status))
        }
        None => None,
    };
    let lifetime = lifetime.or_else(|| {
        if !expiry_from_jwt {
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
    let token = match parsed.scope {
        Some(scope) => token.with_scope(scope),
        None => token,
    };
    Ok(token.with_extra(parsed.extra))
}

/// The typed error for an RFC 6749 §5.2 error body: the server's fields, cleaned of control
/// characters and bounded, and a hint at what to check.
fn oauth_error(status: StatusCode, error: ErrorBody, secrets: &Secrets) -> Error {
    let oauth = OAuthError {
        status,
        error: secrets.clean(&error.error, 64),
        error_description: error.error_description.map(|d| secrets.clean(&d, 512)),
        error_uri: error.error_uri.map(|u| secrets.clean(&u, 512)),
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
        access_token: Option<IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(body).is_ok_and(|p| p.access_token.is_some())
}

/// What to check for a §5.2 error code.
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

#[cfg(test)]
mod tests;
