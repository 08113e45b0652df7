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

mod future;
mod service;

use std::fmt;

use http::{HeaderMap, StatusCode};
use tower_layer::Layer;

pub use self::future::ResponseFuture;
pub use self::service::RetryUnauthorized;
use crate::http::challenge;
use crate::layer::{BearerAuth, BearerAuthLayer};

/// Decides whether an API response means "this token was rejected".
pub type RejectionPredicate = fn(StatusCode, &HeaderMap) -> bool;

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

/// [`BearerAuthLayer`] that also retries a request once when the API rejects its token. See the
/// [module docs](crate::retry).
///
/// Only requests whose body can be replayed take part: the body type must be `Clone`
/// (`http_body_util::Full<Bytes>`, `String`, `Bytes`, `Empty`...). Buffer a streaming body into
/// one of these (with a size cap, e.g. `http_body_util::Limited`) before this layer to opt it
/// in. The response future is boxed and the request is cloned before it is sent: this costs an
/// allocation per request that the plain [`BearerAuthLayer`] does not.
#[derive(Clone)]
pub struct RetryUnauthorizedLayer {
    auth: BearerAuthLayer,
    rejected: RejectionPredicate,
}

impl RetryUnauthorizedLayer {
    /// Retries requests authenticated by `auth` once when the API rejects the token (HTTP 401).
    pub fn new(auth: BearerAuthLayer) -> Self {
        RetryUnauthorizedLayer {
            auth,
            rejected: is_unauthorized,
        }
    }

    /// What counts as a rejected token. Default [`is_unauthorized`] (HTTP 401).
    pub fn retry_if(mut self, rejected: RejectionPredicate) -> Self {
        self.rejected = rejected;
        self
    }
}

impl<S> Layer<S> for RetryUnauthorizedLayer {
    type Service = RetryUnauthorized<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryUnauthorized::new(BearerAuth::new(inner, self.auth.clone()), self.rejected)
    }
}

impl fmt::Debug for RetryUnauthorizedLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryUnauthorizedLayer")
            .field("auth", &self.auth)
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
