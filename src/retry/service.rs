use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response, StatusCode};
use tower_service::Service;

use super::body::DEFAULT_REPLAY_LIMIT;
use super::{ReplayableBody, ResponseFuture, SharedPredicate};
use crate::error::BoxError;
use crate::http::challenge::is_dpop_nonce_challenge;
use crate::layer::BearerAuth;

/// Service of [`RetryUnauthorizedLayer`](super::RetryUnauthorizedLayer): a [`BearerAuth`] that
/// retries once with a fresh token when the API rejects the one sent.
pub struct RetryUnauthorized<S> {
    pub(super) auth: BearerAuth<S>,
    pub(super) rejected: SharedPredicate,
    pub(super) replay_limit: usize,
}

impl<S> RetryUnauthorized<S> {
    /// Retries requests through `auth` once when `rejected` says the token was rejected
    /// ([`is_unauthorized`](super::is_unauthorized), [`is_invalid_token`](super::is_invalid_token)
    /// or any `Fn(StatusCode, &HeaderMap) -> bool`), resending bodies of at most
    /// [`DEFAULT_REPLAY_LIMIT`] bytes.
    pub fn new<P>(auth: BearerAuth<S>, rejected: P) -> Self
    where
        P: Fn(StatusCode, &HeaderMap) -> bool + Send + Sync + 'static,
    {
        RetryUnauthorized {
            auth,
            rejected: Arc::new(rejected),
            replay_limit: DEFAULT_REPLAY_LIMIT,
        }
    }

    /// The most bytes of a request body kept to send it again; see
    /// [`RetryUnauthorizedLayer::replay_limit`](super::RetryUnauthorizedLayer::replay_limit).
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.replay_limit = bytes;
        self
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
    B: ReplayableBody + Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = ResponseFuture<Response<RB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.auth.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let head = copy_head(&request);
        let (parts, body) = request.into_parts();
        let (body, replay) = body.prepare_replay(self.replay_limit);
        let (first, sent) = self.auth.call_reporting(Request::from_parts(parts, body));
        let mut again = self.auth.clone();
        let rejected = self.rejected.clone();
        ResponseFuture::new(async move {
            let response = first.await?;
            let Some(sent) = sent else {
                return Ok(response);
            };
            // RFC 9449 §9: a DPoP nonce challenge. The token is fine; the proof lacked the nonce
            // the response carried, which the DPoP service has stored: send once more, token kept.
            let nonce_challenge = cfg!(feature = "dpop")
                && is_dpop_nonce_challenge(response.status(), response.headers());
            if !nonce_challenge {
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
            }
            // Only now: a recording is complete once the first attempt has sent its body.
            let Some(body) = replay.into_body() else {
                tracing::debug!(
                    "API rejected the access token; the request body cannot be sent again \
                     (larger than the replay limit, failed, or not sent in full), so the \
                     rejection goes back to the caller"
                );
                return Ok(response);
            };
            tracing::debug!(
                nonce_challenge,
                "API rejected the request's token or DPoP proof; retrying once"
            );
            drop(response);
            std::future::poll_fn(|cx| again.poll_ready(cx)).await?;
            let (parts, ()) = head.into_parts();
            again.call(Request::from_parts(parts, body)).await
        })
    }
}

/// The request's head, for the second attempt: taken before the first one adds its token.
fn copy_head<B>(request: &Request<B>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = request.method().clone();
    *head.uri_mut() = request.uri().clone();
    *head.version_mut() = request.version();
    *head.headers_mut() = request.headers().clone();
    *head.extensions_mut() = request.extensions().clone();
    head
}

impl<S: Clone> Clone for RetryUnauthorized<S> {
    fn clone(&self) -> Self {
        RetryUnauthorized {
            auth: self.auth.clone(),
            rejected: self.rejected.clone(),
            replay_limit: self.replay_limit,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RetryUnauthorized<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryUnauthorized")
            .field("auth", &self.auth)
            .field("replay_limit", &self.replay_limit)
            .finish_non_exhaustive()
    }
}
