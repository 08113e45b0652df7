use std::fmt;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use super::{BearerAuth, BearerAuthLayer};
use crate::error::BoxError;
use crate::source::BoxFuture;

/// Decides whether an API response means "this token was rejected".
pub type RejectionPredicate = fn(StatusCode, &HeaderMap) -> bool;

/// The default [`RejectionPredicate`]: HTTP 401.
pub fn is_unauthorized(status: StatusCode, _headers: &HeaderMap) -> bool {
    status == StatusCode::UNAUTHORIZED
}

/// A stricter [`RejectionPredicate`]: HTTP 401 whose `WWW-Authenticate` says
/// `error="invalid_token"` (RFC 6750 §3.1), so that a 401 for other reasons is not retried.
pub fn is_invalid_token(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::UNAUTHORIZED
        && headers
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("invalid_token"))
}

/// [`BearerAuthLayer`] that also retries a request once when the API rejects its token; made by
/// [`BearerAuthLayer::retry_on_unauthorized`].
///
/// On a rejection (HTTP 401 by default, see [`retry_if`](Self::retry_if)) the token that was
/// sent is invalidated (only that one: a newer token another request already fetched stays),
/// a fresh token is awaited through the same single-flight refresh, and the request is sent
/// once more. A second rejection goes back to the caller. Invalidations are rate-limited by the
/// cache ([`min_invalidate_interval`](crate::TokenCacheBuilder::min_invalidate_interval)): an
/// API that rejects every token gets its 401 back rather than a flood of token requests.
///
/// Only requests whose body can be replayed take part: the body type must be `Clone`
/// (`http_body_util::Full<Bytes>`, `String`, `Bytes`, `Empty`...). Buffer a streaming body into
/// one of these (with a size cap, e.g. `http_body_util::Limited`) before this layer to opt it
/// in. The response future is boxed and the request is cloned before it is sent: this costs an
/// allocation per request that the plain [`BearerAuthLayer`] does not.
///
/// # Example
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
/// use tower_client_credentials::layer::is_invalid_token;
///
/// let layer = BearerAuthLayer::new(Static)
///     .with_header("x-api-key", "key")?
///     .retry_on_unauthorized()
///     .retry_if(is_invalid_token);
/// # let _ = layer;
/// # Ok::<(), Error>(())
/// ```
#[derive(Clone)]
pub struct RetryUnauthorizedLayer {
    auth: BearerAuthLayer,
    rejected: RejectionPredicate,
}

impl BearerAuthLayer {
    /// Retries a request once with a fresh token when the API rejects the one sent; see
    /// [`RetryUnauthorizedLayer`].
    pub fn retry_on_unauthorized(self) -> RetryUnauthorizedLayer {
        RetryUnauthorizedLayer {
            auth: self,
            rejected: is_unauthorized,
        }
    }
}

impl RetryUnauthorizedLayer {
    /// What counts as a rejected token. Default [`is_unauthorized`] (HTTP 401).
    pub fn retry_if(mut self, rejected: RejectionPredicate) -> Self {
        self.rejected = rejected;
        self
    }
}

impl<S> Layer<S> for RetryUnauthorizedLayer {
    type Service = RetryUnauthorized<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryUnauthorized {
            auth: BearerAuth::new(inner, self.auth.clone()),
            rejected: self.rejected,
        }
    }
}

/// Service of [`RetryUnauthorizedLayer`].
pub struct RetryUnauthorized<S> {
    auth: BearerAuth<S>,
    rejected: RejectionPredicate,
}

impl<S> RetryUnauthorized<S> {
    /// The bearer-auth service inside.
    pub fn get_ref(&self) -> &BearerAuth<S> {
        &self.auth
    }

    /// Consumes `self`, returning the bearer-auth service inside.
    pub fn into_inner(self) -> BearerAuth<S> {
        self.auth
    }
}

impl<S, B, RB> Service<Request<B>> for RetryUnauthorized<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Clone + Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<RB>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.auth.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let replay = clone_request(&request);
        let (first, sent) = self.auth.call_reporting(request);
        let mut again = self.auth.clone();
        let rejected = self.rejected;
        Box::pin(async move {
            let response = first.await?;
            let Some(sent) = sent else {
                return Ok(response);
            };
            #[cfg(feature = "dpop")]
            if crate::dpop::is_nonce_challenge(response.status(), response.headers()) {
                // RFC 9449 §9: the token is fine; the proof lacked the nonce the response
                // carried, which the DPoP service has stored. Send once more, token kept.
                tracing::debug!("API asked for a DPoP nonce; retrying once with it");
                drop(response);
                std::future::poll_fn(|cx| again.poll_ready(cx)).await?;
                return again.call(replay).await;
            }
            if !rejected(response.status(), response.headers()) {
                return Ok(response);
            }
            let cache = again.cache().clone();
            let invalidated = cache.invalidate_header(&sent);
            let newer = cache.current_header().as_ref() != Some(&sent);
            if !(invalidated || newer) {
                // Rate-limited and no newer token: the rejection goes back to the caller.
                return Ok(response);
            }
            tracing::debug!("API rejected the access token; retrying once with a fresh one");
            drop(response);
            std::future::poll_fn(|cx| again.poll_ready(cx)).await?;
            again.call(replay).await
        })
    }
}

fn clone_request<B: Clone>(request: &Request<B>) -> Request<B> {
    let mut clone = Request::new(request.body().clone());
    *clone.method_mut() = request.method().clone();
    *clone.uri_mut() = request.uri().clone();
    *clone.version_mut() = request.version();
    *clone.headers_mut() = request.headers().clone();
    *clone.extensions_mut() = request.extensions().clone();
    clone
}

impl<S: Clone> Clone for RetryUnauthorized<S> {
    fn clone(&self) -> Self {
        RetryUnauthorized {
            auth: self.auth.clone(),
            rejected: self.rejected,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RetryUnauthorized<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryUnauthorized")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RetryUnauthorizedLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryUnauthorizedLayer")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}
