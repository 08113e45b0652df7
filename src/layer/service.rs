use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::header::HeaderValue;
use http::Request;
use tower_service::Service;

use super::ExtraHeaders;
use super::{BearerAuthLayer, ResponseFuture};
use crate::cache::{Reader, TokenCache};
use crate::error::{BoxError, Error, ErrorKind};

type WaitForToken = Pin<Box<dyn Future<Output = Result<HeaderValue, Error>> + Send + Sync>>;

/// Middleware that adds a bearer token and fixed headers to every request. Made by
/// [`BearerAuthLayer`]; see the [module docs](crate::layer).
///
/// With a fresh token cached, `poll_ready` and `call` allocate nothing, take no lock and never
/// await (see `benches/hot_path.rs`).
///
/// For tonic, `BearerAuth<Channel>` is a valid transport for generated clients:
/// `Service<http::Request<tonic::body::Body>>` with `Response = http::Response<..>` as the
/// channel's, and `Error = BoxError` (which tonic requires to be `Into<BoxError>`).
pub struct BearerAuth<S> {
    inner: S,
    cache: TokenCache,
    reader: Reader,
    headers: ExtraHeaders,
    /// The token taken by `poll_ready` for the next call. Its own field, not a state of an enum,
    /// so that the fresh-token path is straight-line code: a check, a load, a store.
    token: Option<HeaderValue>,
    /// Only when no valid token is cached (cold path).
    pending: Pending,
}

enum Pending {
    None,
    /// Waiting for the shared refresh; boxed once per refresh per waiting service, never on the
    /// hot path.
    Waiting(WaitForToken),
    /// Getting a token failed: the next call fails at once with this error.
    Failed(Error),
}

impl<S> BearerAuth<S> {
    /// Wraps `inner` with the token cache and headers of `layer`.
    pub fn new(inner: S, layer: BearerAuthLayer) -> Self {
        BearerAuth {
            inner,
            reader: layer.cache.reader(),
            cache: layer.cache,
            headers: layer.headers,
            token: None,
            pending: Pending::None,
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

    #[inline]
    fn authorize<B>(&self, request: &mut Request<B>, token: HeaderValue) {
        self.headers
            .insert_with_authorization(request.headers_mut(), token);
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

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.token.is_none() {
            if matches!(self.pending, Pending::Failed(_)) {
                // Polled again instead of called: the failure may be stale (the backoff may
                // have passed); look again rather than report it.
                self.pending = Pending::None;
            }
            self.token = self.cache.usable_header(&mut self.reader);
            if self.token.is_some() {
                if !matches!(self.pending, Pending::None) {
                    // A wait (or failure) left by an earlier, abandoned `poll_ready` is stale
                    // now that a valid token is cached.
                    self.pending = Pending::None;
                }
            } else {
                ready!(self.poll_token(cx));
                if self.token.is_none() {
                    // Ready, so that `call` can hand the error to the caller; returning it here
                    // would tell tower to discard the service.
                    return Poll::Ready(Ok(()));
                }
            }
        }
        // The token first, then the inner service: no inner capacity is reserved while the
        // token endpoint is slow.
        let ready = self.inner.poll_ready(cx);
        if ready.is_pending() {
            // Not held while the inner service is busy (a concurrency limit, a full channel):
            // it could expire or be invalidated meanwhile; the next poll takes a current one.
            self.token = None;
        }
        ready.map_err(Into::into)
    }

    #[inline]
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
    /// Cold path of `poll_ready`: wait for the shared refresh. Ends with `self.token` set, or
    /// with `self.pending` holding the error.
    #[cold]
    fn poll_token(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.pending {
                Pending::None => {
                    let cache = self.cache.clone();
                    self.pending =
                        Pending::Waiting(Box::pin(async move { cache.wait_for_header().await }));
                }
                Pending::Waiting(wait) => {
                    match ready!(wait.as_mut().poll(cx)) {
                        Ok(token) => {
                            self.pending = Pending::None;
                            self.token = Some(token);
                        }
                        Err(error) => self.pending = Pending::Failed(error),
                    }
                    return Poll::Ready(());
                }
                Pending::Failed(_) => return Poll::Ready(()),
            }
        }
    }

    /// The token `poll_ready` got for this call, or the error to fail it with.
    #[inline]
    fn take_token(&mut self) -> Result<HeaderValue, Error> {
        if let Some(token) = self.token.take() {
            return Ok(token);
        }
        self.take_token_slow()
    }

    #[cold]
    fn take_token_slow(&mut self) -> Result<HeaderValue, Error> {
        if let Pending::Failed(error) = std::mem::replace(&mut self.pending, Pending::None) {
            return Err(error);
        }
        // Called without `poll_ready`: the caller broke the tower contract; the inner service
        // decides what that means.
        self.cache.usable_header(&mut self.reader).ok_or_else(|| {
            Error::new(
                ErrorKind::Configuration,
                "`call` was made before `poll_ready` returned ready and no valid token is \
                 cached; drive the service with `ServiceExt::ready` first",
            )
        })
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
            reader: self.reader.clone(),
            headers: self.headers.clone(),
            token: None,
            pending: Pending::None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for BearerAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match (&self.token, &self.pending) {
            (Some(_), _) => "token held",
            (None, Pending::None) => "idle",
            (None, Pending::Waiting(_)) => "waiting for a token",
            (None, Pending::Failed(_)) => "failed",
        };
        f.debug_struct("BearerAuth")
            .field("inner", &self.inner)
            .field("state", &state)
            .field("headers", &self.headers)
            .finish()
    }
}
