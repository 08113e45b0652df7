//! The crate's one error type.
//!
//! An [`Error`] is cheap to clone (an `Arc` inside): a single failed token refresh is handed to
//! every request that waited on it. Its message says what went wrong and what to check, and by
//! construction never holds the client secret, an access token or an API key: the crate only ever
//! builds errors from static text, URLs, status codes and the authorization server's own
//! `error`/`error_description` fields.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A boxed error, the conventional error type of tower services.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What kind of failure an [`Error`] is; match on it to decide what to do.
///
/// # Example
///
/// ```
/// use tower_client_credentials::{ClientCredentials, ErrorKind};
///
/// let err = ClientCredentials::builder()
///     .token_endpoint("not a url")
///     .unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Configuration);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The crate was configured wrongly: a bad URL, header, client id, scope, or a missing part.
    /// Fix the configuration; retrying will not help.
    Configuration,
    /// The authorization server's metadata (RFC 8414 / OpenID discovery) could not be fetched or
    /// did not describe the configured issuer.
    Discovery,
    /// The token or discovery request did not get an HTTP answer: connection refused, DNS, TLS,
    /// timeout, a redirect that was not followed, or a body over the size limit.
    Transport,
    /// The token endpoint answered with an OAuth2 error (RFC 6749 §5.2); see
    /// [`Error::oauth_error`]. A bare HTTP 401 (a body that is not a §5.2 error) is one too,
    /// with [`Error::status`] 401 and no `oauth_error`: the server refused the client
    /// authentication without naming an error code.
    TokenEndpoint,
    /// The token endpoint answered, but not with a usable token response: not JSON, a missing
    /// `access_token`, a token type other than `Bearer`, ...
    InvalidTokenResponse,
    /// No valid token is available because the last refresh failed and the next attempt is not
    /// due yet (see [`Error::retry_after`]); the cache is backing off to protect the endpoint.
    BackingOff,
    /// The refresh this request waited for stalled past its time limit (its runtime is no
    /// longer driven), or kept being stopped (its runtime shut down). A refresh stopped by its
    /// runtime shutting down is not counted as a failure of the token endpoint: no backoff, and
    /// a waiter on another runtime starts it again there.
    RefreshAborted,
    /// A custom [`TokenSource`](crate::TokenSource) failed.
    Source,
    /// The service was made ready with a valid token, but by the time `call` came that token had
    /// expired or been invalidated, and no newer valid token was cached: the request was not
    /// sent (a token is never sent at or after its expiry). Transient: make the service ready
    /// again, which waits for the refresh.
    NoValidTokenAtCall,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Configuration => "configuration error",
            ErrorKind::Discovery => "authorization server discovery failed",
            ErrorKind::Transport => "request to the authorization server failed",
            ErrorKind::TokenEndpoint => "token endpoint returned an error",
            ErrorKind::InvalidTokenResponse => "invalid token response",
            ErrorKind::BackingOff => "no valid access token (backing off after a failed refresh)",
            ErrorKind::RefreshAborted => "token refresh aborted",
            ErrorKind::Source => "token source failed",
            ErrorKind::NoValidTokenAtCall => "no valid access token when the request was called",
        }
    }
}

/// The RFC 6749 §5.2 error an authorization server returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// HTTP status of the answer.
    pub status: http::StatusCode,
    /// The `error` code, e.g. `invalid_client`, `invalid_scope`.
    pub error: String,
    /// The optional `error_description`.
    pub error_description: Option<String>,
    /// The optional `error_uri`.
    pub error_uri: Option<String>,
}

impl OAuthError {
    /// Whether retrying the same request can succeed. `invalid_client`, `invalid_grant`,
    /// `unauthorized_client`, `unsupported_grant_type`, `invalid_scope` and `invalid_request`
    /// cannot: the configuration or the registration must change.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.error.as_str(),
            "invalid_client"
                | "invalid_grant"
                | "unauthorized_client"
                | "unsupported_grant_type"
                | "invalid_scope"
                | "invalid_request"
                | "invalid_target"
        )
    }
}

/// The error returned by every fallible operation of this crate.
///
/// Cheap to clone. `Display` gives one line: what happened, then what to check. It never
/// contains a client secret, a token or an API key.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    oauth: Option<OAuthError>,
    status: Option<http::StatusCode>,
    retry_after: Option<Duration>,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    /// The gRPC view of this error, made on first use (feature `tonic`).
    #[cfg(feature = "tonic")]
    grpc: std::sync::OnceLock<tonic::Status>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                oauth: None,
                status: None,
                retry_after: None,
                source: None,
                #[cfg(feature = "tonic")]
                grpc: std::sync::OnceLock::new(),
            }),
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Configuration, message)
    }

    /// A failure of a custom [`TokenSource`](crate::TokenSource). `message` should say what
    /// failed and what to check; it must not contain secrets.
    pub fn source_failed(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::Source, message).with_source(source)
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        let source: Arc<dyn std::error::Error + Send + Sync> = Arc::from(source.into());
        self.update(|inner| inner.source = Some(source));
        self
    }

    pub(crate) fn with_status(mut self, status: http::StatusCode) -> Self {
        self.update(|inner| inner.status = Some(status));
        self
    }

    pub(crate) fn with_oauth(mut self, oauth: OAuthError) -> Self {
        self.update(|inner| {
            inner.status = Some(oauth.status);
            inner.oauth = Some(oauth);
        });
        self
    }

    pub(crate) fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.update(|inner| inner.retry_after = retry_after);
        self
    }

    /// Errors are only built up before they are shared, so the `Arc` is unique here; were it
    /// not, the detail is dropped rather than panicking.
    fn update(&mut self, f: impl FnOnce(&mut Inner)) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            f(inner);
        }
    }

    /// The message without the kind's label.
    pub(crate) fn message(&self) -> &str {
        &self.inner.message
    }

    /// The underlying cause (for [`ErrorKind::BackingOff`]: the error of the last attempt),
    /// whatever the cargo features; [`source()`](std::error::Error::source) may put a
    /// `tonic::Status` before it.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.inner.source.as_deref()
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The OAuth2 error the token endpoint returned, for [`ErrorKind::TokenEndpoint`].
    pub fn oauth_error(&self) -> Option<&OAuthError> {
        self.inner.oauth.as_ref()
    }

    /// The HTTP status of the answer that caused this error, if there was one.
    pub fn status(&self) -> Option<http::StatusCode> {
        self.inner.status
    }

    /// How long to wait before the next attempt is worth making: the server's `Retry-After` (or
    /// Okta's `X-Rate-Limit-Reset`) on a token endpoint error, or the remaining backoff for
    /// [`ErrorKind::BackingOff`].
    ///
    /// A server's wait is capped at 5 minutes, the default of
    /// [`TokenCacheBuilder::max_retry_after`](crate::TokenCacheBuilder::max_retry_after), in
    /// every form (seconds, HTTP date, `X-Rate-Limit-Reset`): a broken or hostile server cannot
    /// make a caller who honours it wait longer (a `max_retry_after` above 5 minutes therefore
    /// changes nothing).
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// Whether a later attempt with the same configuration may succeed. Configuration errors and
    /// permanent OAuth2 errors (`invalid_client`, `invalid_scope`, ...) and 400/401 answers are
    /// not; transport failures, 5xx, 429 and garbage answers are. [`ErrorKind::BackingOff`] is
    /// as transient as the failure it carries: waiting out the backoff does not fix
    /// `invalid_client`.
    pub fn is_transient(&self) -> bool {
        match self.inner.kind {
            ErrorKind::Configuration => false,
            ErrorKind::BackingOff => self
                .cause()
                .and_then(|cause| cause.downcast_ref::<Error>())
                .is_none_or(Error::is_transient),
            ErrorKind::TokenEndpoint => {
                let permanent_code = self.inner.oauth.as_ref().is_some_and(|e| e.is_permanent());
                let permanent_status =
                    matches!(self.inner.status.map(|s| s.as_u16()), Some(400 | 401 | 403));
                !(permanent_code || permanent_status)
            }
            _ => true,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.kind.as_str(), self.inner.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(oauth) = &self.inner.oauth {
            d.field("oauth", oauth);
        } else if let Some(status) = &self.inner.status {
            d.field("status", status);
        }
        if let Some(retry_after) = &self.inner.retry_after {
            d.field("retry_after", retry_after);
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    /// The underlying cause. With the `tonic` feature, a `tonic::Status` comes first (its own
    /// source is the underlying cause): tonic finds it in the chain, so a gRPC caller gets
    /// `Unauthenticated` for a failure retrying cannot fix and `Unavailable` for a transient
    /// one, instead of `Unknown`.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        #[cfg(feature = "tonic")]
        {
            Some(self.grpc_status())
        }
        #[cfg(not(feature = "tonic"))]
        {
            self.inner
                .source
                .as_ref()
                .map(|s| &**s as &(dyn std::error::Error + 'static))
        }
    }
}

#[cfg(feature = "tonic")]
impl Error {
    /// This error as a gRPC status: `Unauthenticated` when [`is_transient`](Self::is_transient)
    /// is false, `Unavailable` otherwise, with this error's message.
    pub fn grpc_status(&self) -> &tonic::Status {
        self.inner.grpc.get_or_init(|| {
            let code = if self.is_transient() {
                tonic::Code::Unavailable
            } else {
                tonic::Code::Unauthenticated
            };
            let mut status = tonic::Status::new(code, self.to_string());
            if let Some(source) = &self.inner.source {
                status.set_source(source.clone());
            }
            status
        })
    }
}

#[cfg(feature = "tonic")]
impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let status = error.grpc_status();
        let mut copy = tonic::Status::new(status.code(), status.message());
        copy.set_source(Arc::new(error));
        copy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kind_and_message() {
        let err = Error::config("client id is empty; set it with `.client_id(..)`");
        assert_eq!(
            err.to_string(),
            "configuration error: client id is empty; set it with `.client_id(..)`"
        );
        assert!(!err.is_transient());
    }

    #[test]
    fn permanent_oauth_errors_are_not_transient() {
        let oauth = OAuthError {
            status: http::StatusCode::UNAUTHORIZED,
            error: "invalid_client".into(),
            error_description: None,
            error_uri: None,
        };
        let err = Error::new(ErrorKind::TokenEndpoint, "x").with_oauth(oauth);
        assert!(!err.is_transient());
        let err = Error::new(ErrorKind::TokenEndpoint, "x")
            .with_status(http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(err.is_transient());
        let err = Error::new(ErrorKind::TokenEndpoint, "x")
            .with_status(http::StatusCode::TOO_MANY_REQUESTS);
        assert!(err.is_transient());
    }

    #[test]
    fn backing_off_reports_the_transience_of_its_cause() {
        let invalid_client = Error::new(ErrorKind::TokenEndpoint, "x").with_oauth(OAuthError {
            status: http::StatusCode::UNAUTHORIZED,
            error: "invalid_client".into(),
            error_description: None,
            error_uri: None,
        });
        let backing_off = Error::new(ErrorKind::BackingOff, "y").with_source(invalid_client);
        assert!(!backing_off.is_transient());
        #[cfg(feature = "tonic")]
        assert_eq!(
            backing_off.grpc_status().code(),
            tonic::Code::Unauthenticated
        );

        let outage = Error::new(ErrorKind::Transport, "down");
        let backing_off = Error::new(ErrorKind::BackingOff, "y").with_source(outage);
        assert!(backing_off.is_transient());
        #[cfg(feature = "tonic")]
        assert_eq!(backing_off.grpc_status().code(), tonic::Code::Unavailable);
        // Backing off after an invalidation, with no failed attempt: waiting helps.
        assert!(Error::new(ErrorKind::BackingOff, "y").is_transient());
    }

    #[test]
    fn error_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
        let err = Error::config("x");
        let clone = err.clone();
        assert!(Arc::ptr_eq(&err.inner, &clone.inner));
    }
}
