//! Retry once on a rejected token: [`RetryUnauthorizedLayer`], made by
//! [`BearerAuthLayer::retry_on_unauthorized`](crate::BearerAuthLayer::retry_on_unauthorized).
//!
//! On a rejection (HTTP 401 by default, see [`RetryUnauthorizedLayer::retry_if`]) the token that
//! was sent is invalidated (only that one: a newer token another request already fetched
//! stays), a fresh token is awaited through the same single-flight refresh, and the request is
//! sent once more. A second rejection goes back to the caller. Invalidations are rate-limited by
//! the cache ([`min_invalidate_interval`](crate::TokenCacheBuilder::min_invalidate_interval)):
//! an API that rejects every token gets its 401 back rather than a flood of token requests.
//!
//! The request body goes again with the retry: it is recorded as the first attempt sends it,
//! up to [`RetryUnauthorizedLayer::replay_limit`] bytes, for every [`ReplayableBody`] (tonic's
//! and axum's with the features `tonic` and `axum`). A body larger than that, or not sent in
//! full by the time the rejection arrives, is not resent: its rejection goes back to the caller.
//!
//! # Example
//!
//! ```
//! # use std::time::Duration;
//! # use tower_client_credentials::{BearerAuthLayer, BoxFuture, Error, Token, TokenSource};
//! # struct Static;
//! # impl TokenSource for Static {
//! #     fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
//! #         Box::pin(async { Token::bearer("t", Some(Duration::from_secs(60))) })
//! #     }
//! # }
//! use tower_client_credentials::retry::is_invalid_token;
//!
//! let layer = BearerAuthLayer::new(Static)
//!     .with_header("x-api-key", "key")?
//!     .retry_on_unauthorized()
//!     .retry_if(is_invalid_token);
//! # let _ = layer;
//! # Ok::<(), Error>(())
//! ```

mod body;
mod future;
mod service;
mod stage;

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use tower_layer::Layer;

pub use self::body::{Replay, ReplayableBody, RetryBody, DEFAULT_REPLAY_LIMIT};
pub use self::future::ResponseFuture;
pub use self::service::RetryUnauthorized;
pub(crate) use self::stage::sealed::Authenticate;
pub(crate) use self::stage::{judge, Report, Sent, Verdict};
use crate::http::challenge;
use crate::layer::BearerAuthLayer;

/// Decides whether an API response means "this token was rejected": the form of
/// [`is_unauthorized`] and [`is_invalid_token`]. [`RetryUnauthorizedLayer::retry_if`] takes any
/// `Fn` of this shape, closures that capture state included.
pub type RejectionPredicate = fn(StatusCode, &HeaderMap) -> bool;

/// A predicate as the layer keeps it: shared by every clone of the service.
pub(crate) type SharedPredicate = Arc<dyn Fn(StatusCode, &HeaderMap) -> bool + Send + Sync>;

/// The default [`RejectionPredicate`]: HTTP 401.
pub fn is_unauthorized(status: StatusCode, _headers: &HeaderMap) -> bool {
    status == StatusCode::UNAUTHORIZED
}

/// A stricter [`RejectionPredicate`]: HTTP 401 with a `Bearer` (or `DPoP`) challenge whose
/// `error` parameter is `invalid_token` (RFC 6750 §3.1), so that a 401 for other reasons is not
/// retried.
///
/// The `WWW-Authenticate` lines are parsed as challenges (RFC 9110 §11.6.1): a challenge of
/// another scheme, an `error="insufficient_scope"` whose description mentions `invalid_token`,
/// or a line that does not follow the grammar does not count.
///
/// ```
/// use http::{header::WWW_AUTHENTICATE, HeaderMap, StatusCode};
/// use tower_client_credentials::retry::is_invalid_token;
///
/// let mut headers = HeaderMap::new();
/// headers.insert(
///     WWW_AUTHENTICATE,
///     r#"Bearer realm="api", error="invalid_token", error_description="expired""#.parse()?,
/// );
/// assert!(is_invalid_token(StatusCode::UNAUTHORIZED, &headers));
///
/// headers.insert(
///     WWW_AUTHENTICATE,
///     r#"Bearer error="insufficient_scope", error_description="not an invalid_token""#.parse()?,
/// );
/// assert!(!is_invalid_token(StatusCode::UNAUTHORIZED, &headers));
/// # Ok::<(), http::header::InvalidHeaderValue>(())
/// ```
pub fn is_invalid_token(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::UNAUTHORIZED
        && challenge::challenges(headers).iter().any(|c| {
            (c.is_scheme("Bearer") || c.is_scheme("DPoP"))
                && c.param("error") == Some("invalid_token")
        })
}

/// A layer of the pipeline ([`BearerAuthLayer`] by default, with or without a DPoP key, or a
/// [`MultiAudienceLayer`](crate::MultiAudienceLayer)) that also retries a request once when the
/// API rejects its token, or asks for a DPoP nonce and gives one. See the
/// [module docs](crate::retry).
///
/// The request body is sent again on the retry: any body type that implements
/// [`ReplayableBody`] takes part (tonic's and axum's with the crate features `tonic` and
/// `axum`, http-body-util's, `String`, `Bytes`...). A body is not read ahead: it is recorded
/// as the first attempt sends it, up to [`replay_limit`](Self::replay_limit) bytes (64 KiB by
/// default), and a larger one is sent untouched and not retried. The response future is boxed
/// and the recording is shared with the body: this costs allocations per request that the
/// plain [`BearerAuthLayer`] does not.
#[derive(Clone)]
pub struct RetryUnauthorizedLayer<L = BearerAuthLayer> {
    auth: L,
    rejected: SharedPredicate,
    replay_limit: usize,
}

impl RetryUnauthorizedLayer {
    /// Retries requests authenticated by `auth` once when the API rejects the token (HTTP 401).
    pub fn new(auth: BearerAuthLayer) -> Self {
        Self::over(auth)
    }

    /// The shared token cache, e.g. to [`invalidate`](crate::TokenCache::invalidate) a token.
    pub fn cache(&self) -> &crate::TokenCache {
        self.auth.cache()
    }
}

impl<L> RetryUnauthorizedLayer<L> {
    /// The retry stage over any layer of the pipeline.
    pub(crate) fn over(auth: L) -> Self {
        RetryUnauthorizedLayer {
            auth,
            rejected: Arc::new(is_unauthorized),
            replay_limit: DEFAULT_REPLAY_LIMIT,
        }
    }

    /// The layer under the retry stage.
    pub fn get_ref(&self) -> &L {
        &self.auth
    }

    /// What counts as a rejected token (for the reqwest middleware's retry).
    #[cfg(feature = "reqwest")]
    pub(crate) fn rejection_predicate(&self) -> &SharedPredicate {
        &self.rejected
    }

    /// What counts as a rejected token. Default [`is_unauthorized`] (HTTP 401). Any
    /// `Fn(StatusCode, &HeaderMap) -> bool`, so a predicate can capture what it needs:
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_client_credentials::{BearerAuthLayer, BoxFuture, Error, Token, TokenSource};
    /// # struct Static;
    /// # impl TokenSource for Static {
    /// #     fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
    /// #         Box::pin(async { Token::bearer("t", Some(Duration::from_secs(60))) })
    /// #     }
    /// # }
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    ///
    /// let rejections = Arc::new(AtomicU64::new(0));
    /// let counted = rejections.clone();
    /// let layer = BearerAuthLayer::new(Static)
    ///     .retry_on_unauthorized()
    ///     .retry_if(move |status, _headers| {
    ///         let rejected = status == http::StatusCode::UNAUTHORIZED;
    ///         counted.fetch_add(u64::from(rejected), Ordering::Relaxed);
    ///         rejected
    ///     });
    /// # let _ = layer;
    /// ```
    pub fn retry_if<P>(mut self, rejected: P) -> Self
    where
        P: Fn(StatusCode, &HeaderMap) -> bool + Send + Sync + 'static,
    {
        self.rejected = Arc::new(rejected);
        self
    }

    /// The most bytes of a request body kept to send it again. Default
    /// [`DEFAULT_REPLAY_LIMIT`] (64 KiB); a larger body is sent once, and its rejection goes
    /// back to the caller.
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.replay_limit = bytes;
        self
    }
}

impl<S, L: Layer<S>> Layer<S> for RetryUnauthorizedLayer<L> {
    type Service = RetryUnauthorized<S, L::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryUnauthorized::from_parts(
            self.auth.layer(inner),
            self.rejected.clone(),
            self.replay_limit,
        )
    }
}

impl<L: fmt::Debug> fmt::Debug for RetryUnauthorizedLayer<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryUnauthorizedLayer")
            .field("auth", &self.auth)
            .field("replay_limit", &self.replay_limit)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use http::header::WWW_AUTHENTICATE;

    use super::*;

    fn challenged(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(WWW_AUTHENTICATE, line.parse().unwrap());
        }
        headers
    }

    #[test]
    fn invalid_token_is_the_error_of_a_bearer_or_dpop_challenge() {
        let rejected =
            |lines: &[&str]| is_invalid_token(StatusCode::UNAUTHORIZED, &challenged(lines));
        assert!(rejected(&[r#"Bearer realm="api", error="invalid_token""#]));
        assert!(rejected(&[r#"bearer error=invalid_token"#]));
        assert!(rejected(&[r#"DPoP algs="ES256", error="invalid_token""#]));
        assert!(rejected(&[
            r#"Basic realm="api""#,
            r#"Newauth realm="x", Bearer error="invalid_token""#
        ]));
        // The regression: the text anywhere in the header used to count.
        assert!(!rejected(&[
            r#"Bearer error="insufficient_scope", error_description="not an invalid_token""#
        ]));
        assert!(!rejected(&[r#"Bearer realm="invalid_token""#]));
        assert!(!rejected(&[r#"Basic realm="api", error="invalid_token""#]));
        assert!(!rejected(&[r#"Bearer error="invalid_token_extra""#]));
        assert!(!rejected(&[r#"Bearer error="invalid_token"#])); // unterminated: malformed
        assert!(!rejected(&[]));
        assert!(!is_invalid_token(
            StatusCode::FORBIDDEN,
            &challenged(&[r#"Bearer error="invalid_token""#])
        ));
    }
}
