use std::fmt;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::{RejectionPredicate, ResponseFuture};
use crate::error::BoxError;
use crate::layer::BearerAuth;

/// Service of [`RetryUnauthorizedLayer`](super::RetryUnauthorizedLayer): a [`BearerAuth`] that
/// retries once with a fresh token when the API rejects the one sent.
pub struct RetryUnauthorized<S> {
    auth: BearerAuth<S>,
    rejected: RejectionPredicate,
}

impl<S> RetryUnauthorized<S> {
    /// Retries requests through `auth` once when `rejected` says the token was rejected.
    pub fn new(auth: BearerAuth<S>, rejected: RejectionPredicate) -> Self {
        RetryUnauthorized { auth, rejected }
    }

    /// The bearer-auth service inside.
    pub fn get_ref(&self) -> &BearerAuth<S> {
        &self.auth
    }

    /// The bearer-auth service inside, mutably.
    pub fn get_mut(&mut self) -> &mut BearerAuth<S> {
        &mut self.auth
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
    type Future = ResponseFuture<Response<RB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.auth.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let replay = clone_request(&request);
        let (first, sent) = self.auth.call_reporting(request);
        let mut again = self.auth.clone();
        let rejected = self.rejected;
        ResponseFuture::new(async move {
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
            let newer = cache.cached_header().as_ref() != Some(&sent);
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
