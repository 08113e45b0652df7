use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response, StatusCode};
use tower_service::Service;

use super::body::DEFAULT_REPLAY_LIMIT;
use super::{judge, Authenticate, ReplayableBody, ResponseFuture, SharedPredicate, Verdict};
use crate::error::BoxError;
use crate::layer::BearerAuth;

/// Service of [`RetryUnauthorizedLayer`](super::RetryUnauthorizedLayer): an authenticating
/// service of the pipeline (`A`: a [`BearerAuth`] over `S` by default, or a
/// [`MultiAudience`](crate::audience::MultiAudience)) that retries once when the API rejects
/// the token sent, or asks for a DPoP nonce and gives one.
///
/// `RetryUnauthorized<Channel>` is the retrying [`BearerAuth<Channel>`](BearerAuth), as it
/// always was; the second parameter names the service under the retry stage.
pub struct RetryUnauthorized<S, A = BearerAuth<S>> {
    pub(super) auth: A,
    pub(super) rejected: SharedPredicate,
    pub(super) replay_limit: usize,
    _inner: PhantomData<fn() -> S>,
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
        Self::from_parts(auth, Arc::new(rejected), DEFAULT_REPLAY_LIMIT)
    }
}

impl<S, A> RetryUnauthorized<S, A> {
    pub(super) fn from_parts(auth: A, rejected: SharedPredicate, replay_limit: usize) -> Self {
        RetryUnauthorized {
            auth,
            rejected,
            replay_limit,
            _inner: PhantomData,
        }
    }

    /// The most bytes of a request body kept to send it again; see
    /// [`RetryUnauthorizedLayer::replay_limit`](super::RetryUnauthorizedLayer::replay_limit).
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.replay_limit = bytes;
        self
    }

    /// The authenticating service inside.
    pub fn get_ref(&self) -> &A {
        &self.auth
    }

    /// The authenticating service inside, mutably.
    pub fn get_mut(&mut self) -> &mut A {
        &mut self.auth
    }

    /// Consumes `self`, returning the authenticating service inside.
    pub fn into_inner(self) -> A {
        self.auth
    }
}

impl<S, A, B, RB> Service<Request<B>> for RetryUnauthorized<S, A>
where
    A: Authenticate<B, Response = Response<RB>> + Send + 'static,
    A::Future: Send,
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
            let Some(sent) = sent.get() else {
                return Ok(response);
            };
            let verdict = judge(sent, response.status(), response.headers(), &*rejected);
            if verdict == Verdict::Return {
                return Ok(response);
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
                nonce_challenge = verdict == Verdict::Resend,
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

impl<S, A: Clone> Clone for RetryUnauthorized<S, A> {
    fn clone(&self) -> Self {
        Self::from_parts(self.auth.clone(), self.rejected.clone(), self.replay_limit)
    }
}

impl<S, A: fmt::Debug> fmt::Debug for RetryUnauthorized<S, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryUnauthorized")
            .field("auth", &self.auth)
            .field("replay_limit", &self.replay_limit)
            .finish_non_exhaustive()
    }
}
