use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::Request;
use tower_service::Service;

use super::{BearerAuthLayer, ResponseFuture};
use crate::cache::TokenCache;
use crate::error::{BoxError, Error, ErrorKind};

type WaitForToken = Pin<Box<dyn Future<Output = Result<HeaderValue, Error>> + Send + Sync>>;

/// Middleware that adds a bearer token and fixed headers to every request. Made by
/// [`BearerAuthLayer`]; see the [module docs](crate::layer).
///
/// With a fresh token cached, `poll_ready` and `call` cost one lock-free load, one clock read,
/// a reference-count bump per header and the header inserts: no allocation, lock or await.
///
/// For tonic, `BearerAuth<Channel>` is a valid transport for generated clients:
/// `Service<http::Request<tonic::body::Body>>` with `Response = http::Response<..>` as the
/// channel's, and `Error = BoxError` (which tonic requires to be `Into<BoxError>`).
pub struct BearerAuth<S> {
    inner: S,
    cache: TokenCache,
    headers: Arc<[(HeaderName, HeaderValue)]>,
    state: State,
}

enum State {
    /// No token taken yet for the next call.
    Idle,
    /// Waiting for the shared refresh; only when no valid token is cached (boxed once per
    /// refresh per waiting service, never on the hot path).
    Waiting(WaitForToken),
    /// A token is held for the next call; the inner service is being polled.
    Ready(HeaderValue),
    /// Getting a token failed: the next call fails at once with this error.
    Failed(Error),
}

impl<S> BearerAuth<S> {
    /// Wraps `inner` with the token cache and headers of `layer`.
    pub fn new(inner: S, layer: BearerAuthLayer) -> Self {
        BearerAuth {
            inner,
            cache: layer.cache,
            headers: layer.headers,
            state: State::Idle,
        }
    }

    /// The shared token cache.
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Inserts the auth and extra headers. Hot path: reference-count bumps and inserts only.
    #[inline]
    fn authorize<B>(&self, request: &mut Request<B>, token: HeaderValue) {
        let headers = request.headers_mut();
        headers.insert(AUTHORIZATION, token);
        for (name, value) in self.headers.iter() {
            headers.insert(name.clone(), value.clone());
        }
    }
}

impl<S, B> Service<Request<B>> for BearerAuth<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.state {
                State::Idle => {
                    self.state = match self.cache.valid_header() {
                        Some(token) => State::Ready(token),
                        None => {
                            let cache = self.cache.clone();
                            State::Waiting(Box::pin(async move { cache.header().await }))
                        }
                    };
                }
                State::Waiting(wait) => {
                    self.state = match ready!(wait.as_mut().poll(cx)) {
                        Ok(token) => State::Ready(token),
                        Err(error) => State::Failed(error),
                    };
                }
                // The token first, then the inner service: no inner capacity is reserved while
                // the token endpoint is slow.
                State::Ready(_) => return self.inner.poll_ready(cx).map_err(Into::into),
                // Ready, so that `call` can hand the error to the caller; returning it here
                // would tell tower to discard the service.
                State::Failed(_) => return Poll::Ready(Ok(())),
            }
        }
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self.take_token() {
            Ok(token) => {
                self.authorize(&mut request, token);
                ResponseFuture::new(self.inner.call(request))
            }
            Err(error) => ResponseFuture::failed(error),
        }
    }
}

impl<S> BearerAuth<S> {
    /// The token `poll_ready` got for this call, or the error to fail it with.
    #[inline]
    fn take_token(&mut self) -> Result<HeaderValue, Error> {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Ready(token) => Ok(token),
            State::Failed(error) => Err(error),
            State::Idle | State::Waiting(_) => match self.cache.valid_header() {
                // Called without `poll_ready`: the caller broke the tower contract; the inner
                // service decides what that means.
                Some(token) => Ok(token),
                None => Err(Error::new(
                    ErrorKind::Configuration,
                    "`call` was made before `poll_ready` returned ready and no valid token is \
                     cached; drive the service with `ServiceExt::ready` first",
                )),
            },
        }
    }

    /// Like `call`, and also returns the token sent (for the 401 retry).
    pub(crate) fn call_reporting<B>(
        &mut self,
        mut request: Request<B>,
    ) -> (ResponseFuture<S::Future>, Option<HeaderValue>)
    where
        S: Service<Request<B>>,
    {
        match self.take_token() {
            Ok(token) => {
                self.authorize(&mut request, token.clone());
                (ResponseFuture::new(self.inner.call(request)), Some(token))
            }
            Err(error) => (ResponseFuture::failed(error), None),
        }
    }
}

impl<S: Clone> Clone for BearerAuth<S> {
    fn clone(&self) -> Self {
        // A token held for this service's next call is not the clone's: like tower's
        // ConcurrencyLimit permit, the clone starts idle.
        BearerAuth {
            inner: self.inner.clone(),
            cache: self.cache.clone(),
            headers: self.headers.clone(),
            state: State::Idle,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for BearerAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Idle => "idle",
            State::Waiting(_) => "waiting for a token",
            State::Ready(_) => "token held",
            State::Failed(_) => "failed",
        };
        f.debug_struct("BearerAuth")
            .field("inner", &self.inner)
            .field("state", &state)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}
