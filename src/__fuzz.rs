//! Entry points for the fuzz targets in `fuzz/` and the property tests in `tests/`: thin
//! wrappers over the crate's parsers of server input, so that those can move inside the crate
//! without touching the targets. Not part of the public API; no semver promise.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Response};

use crate::error::{Error, ErrorKind};
use crate::token::Token;

/// The token endpoint's answer (§5.1 success or §5.2 error) as the cache sees it.
pub fn token_response(response: &Response<Bytes>, expiry_from_jwt: bool) -> Result<Token, Error> {
    crate::oauth::token_response::parse_response(
        response,
        expiry_from_jwt,
        &crate::http::sanitize::Secrets::none(),
    )
}

/// A metadata document fetched for `issuer` at `url`: the token endpoint it names, or the error.
pub fn discovery_document(
    issuer: &http::Uri,
    allow_http: bool,
    url: &str,
    body: &[u8],
) -> Result<http::Uri, Error> {
    let issuer = crate::oauth::discovery::Issuer::new(issuer.clone(), allow_http);
    let _ = issuer.locations();
    let metadata = serde_json::from_slice(body)
        .map_err(|_| Error::new(ErrorKind::Discovery, "not a metadata document"))?;
    issuer.check(url, metadata).map(|r| r.token_endpoint)
}

/// The wait a server asked for: `Retry-After`, else Okta's `X-Rate-Limit-*` headers.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    crate::http::retry_after::retry_after(headers, now)
}

/// One challenge of a `WWW-Authenticate` line: scheme, token68, parameters.
pub type Challenge = (String, Option<String>, Vec<(String, String)>);

/// The challenges of one `WWW-Authenticate` line, or the byte offset where it is malformed.
pub fn www_authenticate(line: &[u8]) -> Result<Vec<Challenge>, usize> {
    crate::http::challenge::parse(line)
        .map(|challenges| {
            challenges
                .into_iter()
                .map(|c| {
                    (
                        c.scheme().to_owned(),
                        c.token68().map(str::to_owned),
                        c.params().to_vec(),
                    )
                })
                .collect()
        })
        .map_err(|malformed| malformed.at)
}

/// The `exp` claim of an access token that is a JWT, read without verification.
pub fn jwt_expiry(access_token: &str) -> Option<SystemTime> {
    Token::jwt_expiry_unverified(access_token)
}

/// Server text as the crate keeps it in errors and logs, at most `max` characters.
pub fn sanitize_with_client_secret(
    text: &str,
    client_id: &str,
    secret: &str,
    max: usize,
) -> String {
    let secret = secrecy::SecretString::from(secret.to_owned());
    crate::http::sanitize::Secrets::client_secret(client_id, &secret).clean(text, max)
}

/// [`sanitize_with_client_secret`] with no secrets: control characters escaped, length bounded.
pub fn sanitize(text: &str, max: usize) -> String {
    crate::http::sanitize::clean(text, max)
}

/// `duration`, at most a century: what every duration added to an `Instant` goes through.
pub fn clamp_to_century(duration: Duration) -> Duration {
    crate::time::clamp_to_century(duration)
}

/// Seconds from an untrusted number, as a positive duration of at most a century.
pub fn positive_seconds(seconds: f64) -> Option<Duration> {
    crate::time::positive_seconds(seconds)
}
