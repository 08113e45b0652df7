use std::fmt;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::Request;
use tower_service::Service;

use super::headers::OwnHeaders;
use super::{BearerAuthLayer, ResponseFuture};
use super::{Binding, ExtraHeaders, ResponseHeaders, Watch};
use crate::cache::{CurrentGuard, Reader, TokenCache, TokenWait};
use crate::error::{BoxError, Error, ErrorKind};
use crate::retry::{Authenticate, Report, Sent};

/// Middleware that adds a bearer token and fixed headers to every request, and a DPoP proof
/// when the layer has a DPoP key and the token is DPoP-bound. Made by [`BearerAuthLayer`]; see
/// the [module docs](crate::layer).
///
/// A layer that cannot work (its DPoP key is not its `ClientCredentials`' key, or one of them
/// has none) makes services whose `poll_ready` fails with that
/// [`ErrorKind::Configuration`] error, every time: nothing is sent.
///
/// With a fresh token cached, `poll_ready` and `call` allocate nothing, take no lock, write no
/// memory shared with other services and never await (see `benches/hot_path.rs` and
/// `benches/contention.rs`).
///
/// # Readiness does not hold a token
///
/// `poll_ready` returns ready once a valid token is cached (waiting for the shared refresh if
/// needed); `call` checks the cache again and sends the token valid *then*. So a service made
/// ready and called later (a balancer, a ready cache, a caller that waits in between, as tower
/// allows) never sends a token at or after its expiry, nor one that
/// [`TokenCache::invalidate`] retired: it sends the newer token if one is cached, and otherwise
/// fails that call at once with [`ErrorKind::NoValidTokenAtCall`], a transient error (`call`
/// never waits); polling the service ready again waits for the refresh.
///
/// For tonic, `BearerAuth<Channel>` is a valid transport for generated clients:
/// `Service<http::Request<tonic::body::Body>>` with `Response = http::Response<..>` as the
/// channel's, and `Error = BoxError` (which tonic requires to be `Into<BoxError>`).
pub struct BearerAuth<S> {
    inner: S,
    /// What every clone shares: one reference count per clone (a storm clones a service per
    /// caller), and nothing the fresh path reads.
    parts: Arc<Parts>,
    /// This service's view of the current token, made with its own header copies: a clone used
    /// once reads the cache through a guard instead, which touches no shared reference count.
    reader: Option<Reader>,
    /// This service's own copies of the headers for one token (see [`OwnHeaders`]): on the fresh
    /// path, a request bumps only reference counts that no other service touches.
    own: Option<OwnHeaders>,
    /// Calls to serve from the shared header values before making own copies: a clone used for
    /// one request (clone-per-request callers) costs no allocation; a service used again is
    /// long-lived and gets its own copies, once per token.
    shared_calls_left: u8,
    /// Only when no valid token is cached (cold path).
    pending: Pending,
}

/// The layer's parts a service needs off the fresh path.
struct Parts {
    cache: TokenCache,
    headers: ExtraHeaders,
    binding: Binding,
    /// Why the layer cannot work, if it cannot (see [`BearerAuthLayer::refusal`]). A refused
    /// service never makes a reader, so the fresh path need not look here.
    refused: Option<Error>,
}

enum Pending {
    None,
    /// Waiting for the shared refresh (a named future kept in place: no allocation).
    Waiting(TokenWait),
    /// Getting a token failed: the next call fails at once with this error.
    Failed(Error),
}

/// Shared values serve this many calls of a new service or clone before it makes its own.
const SHARED_CALLS: u8 = 1;

impl<S> BearerAuth<S> {
    /// Wraps `inner` with the token cache and headers of `layer`.
    pub fn new(inner: S, layer: BearerAuthLayer) -> Self {
        BearerAuth {
            inner,
            reader: None,
            parts: Arc::new(Parts {
                refused: layer.refusal(),
                cache: layer.cache,
                headers: layer.headers,
                binding: layer.binding,
            }),
            own: None,
            shared_calls_left: SHARED_CALLS,
            pending: Pending::None,
        }
    }

    /// The shared token cache.
    pub fn cache(&self) -> &TokenCache {
        &self.parts.cache
    }

    /// Whether a token is usable now (the fresh path's check; see `cache/read.rs`).
    #[inline(always)]
    fn usable_now(&mut self) -> bool {
        match &mut self.reader {
            Some(reader) => self.parts.cache.usable(reader).is_some(),
            None => {
                let guard = self.parts.cache.current_guard();
                self.parts.cache.usable_in(&guard).is_some()
            }
        }
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
}

impl<S, B> Service<Request<B>> for BearerAuth<S>
where
    S: Service<Request<B>>,
    S::Response: ResponseHeaders,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The hot path: a service used before, whose token is still fresh (see
        // `Reader::is_fresh`); anything else goes through the cache's full check.
        let idle = matches!(self.pending, Pending::None);
        if !(idle && self.reader.as_ref().is_some_and(Reader::is_fresh)) {
            if let Some(refused) = &self.parts.refused {
                // A configuration that cannot work: permanent, so tower's "this service failed"
                // is the right answer, and no request is ever sent.
                return Poll::Ready(Err(Box::new(refused.clone())));
            }
            let usable = idle && self.usable_now();
            if !usable && !ready!(self.poll_token(cx)) {
                // Ready, so that `call` can hand the error to the caller; returning it here
                // would tell tower to discard the service. The inner service is not polled:
                // `call` will not reach it.
                return Poll::Ready(Ok(()));
            }
        }
        // The token first, then the inner service: no inner capacity is reserved while the
        // token endpoint is slow. Nothing is held for `call`: it checks the cache again.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The fresh path: a valid bearer token whose copies this service already made (own
        // copies are made only for tokens that need no proof, so a match proves that too).
        // One atomic load, one coarse clock read, two comparisons: no allocation, lock or
        // syscall (`Reader::is_fresh`); the headers are this service's own copies.
        if let (Pending::None, Some(reader), Some(own)) = (&self.pending, &self.reader, &self.own) {
            if reader.is_fresh() && own.generation == reader.generation() {
                own.insert(request.headers_mut());
                return ResponseFuture::new(self.inner.call(request), None);
            }
        }
        match self.authorize_slow(&mut request) {
            Ok(watch) => ResponseFuture::new(self.inner.call(request), watch),
            Err(error) => ResponseFuture::failed(error),
        }
    }
}

impl<S> BearerAuth<S> {
    /// Cold path of `poll_ready`: a failure to forget, or no valid token cached. Ends with
    /// `true` when a valid token is cached, `false` with `self.pending` holding the error.
    #[cold]
    fn poll_token(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        // Idle, `poll_ready` has just looked at the cache: no second look before the wait.
        let mut look = !matches!(self.pending, Pending::None);
        if matches!(self.pending, Pending::Failed(_)) {
            // Polled again instead of called: the failure may be stale (the backoff may have
            // passed); look again rather than report it.
            self.pending = Pending::None;
        }
        loop {
            if std::mem::replace(&mut look, false) && self.usable_now() {
                // A wait left by an earlier, abandoned `poll_ready` is stale now.
                self.pending = Pending::None;
                return Poll::Ready(true);
            }
            match &mut self.pending {
                Pending::None => self.pending = Pending::Waiting(TokenWait::after_a_miss()),
                Pending::Waiting(wait) => {
                    return Poll::Ready(
                        match ready!(wait.poll_token(&self.parts.cache, cx, |_| ())) {
                            // `call` takes the token from the cache, where the refresh put it.
                            Ok(_) => {
                                self.pending = Pending::None;
                                true
                            }
                            Err(error) => {
                                self.pending = Pending::Failed(error);
                                false
                            }
                        },
                    );
                }
                Pending::Failed(_) => return Poll::Ready(false),
            }
        }
    }

    /// Cold path of `call`: the error `poll_ready` left, or the token valid now, with own copies
    /// made if this service is used again, or the error that no token is valid now.
    ///
    /// A DPoP-bound token takes this path on every request: the proof is per request.
    #[cold]
    #[inline(never)]
    fn authorize_slow<B>(&mut self, request: &mut Request<B>) -> Result<Option<Watch>, Error> {
        if let Some(refused) = &self.parts.refused {
            return Err(refused.clone());
        }
        if let Pending::Failed(error) = std::mem::replace(&mut self.pending, Pending::None) {
            return Err(error);
        }
        let parts = &*self.parts;
        let guard: CurrentGuard;
        let current = match &mut self.reader {
            Some(reader) => parts.cache.usable(reader),
            None => {
                guard = parts.cache.current_guard();
                parts.cache.usable_in(&guard)
            }
        };
        let Some(current) = current else {
            // The token `poll_ready` saw expired or was invalidated since, and no newer one is
            // cached (or `call` came without `poll_ready`). Never block in `call`: fail this
            // request; `poll_ready` waits for the refresh.
            return Err(Error::new(
                ErrorKind::NoValidTokenAtCall,
                "the token that was valid when the service became ready expired or was \
                 invalidated before `call`, and no newer token is cached yet; the request was \
                 not sent. Drive the service ready again (`ServiceExt::ready`), which waits for \
                 the refresh, and call it without delay",
            ));
        };
        let token = current.token();
        if parts.binding.needs_proof(token)? {
            let (method, uri) = (request.method().clone(), request.uri().clone());
            let headers = request.headers_mut();
            parts
                .headers
                .insert_with_authorization(headers, token.header().clone());
            return parts.binding.prove(token, &method, &uri, headers).map(Some);
        }
        let headers = request.headers_mut();
        match &self.own {
            Some(own) if own.generation == current.generation() => own.insert(headers),
            _ if self.shared_calls_left == 0 => {
                let own = OwnHeaders::new(
                    current.generation(),
                    current.token().secret_header(),
                    &parts.headers,
                );
                own.insert(headers);
                self.own = Some(own);
                // Used again: from now on, the cheaper check of a reader of its own.
                if self.reader.is_none() {
                    self.reader = Some(parts.cache.reader());
                }
            }
            _ => {
                self.shared_calls_left -= 1;
                parts
                    .headers
                    .insert_with_authorization(headers, token.header().clone());
            }
        }
        Ok(None)
    }
}

impl<S, B> Authenticate<B> for BearerAuth<S>
where
    S: Service<Request<B>> + Clone,
    S::Response: ResponseHeaders,
    S::Error: Into<BoxError>,
{
    fn call_reporting(&mut self, mut request: Request<B>) -> (Self::Future, Report) {
        match self.authorize_slow(&mut request) {
            Ok(watch) => {
                let sent = Sent::of(&self.parts.cache, request.headers(), watch.is_some());
                let future = ResponseFuture::new(self.inner.call(request), watch);
                (future, sent.into())
            }
            Err(error) => (ResponseFuture::failed(error), Report::None),
        }
    }
}

impl<S: Clone> Clone for BearerAuth<S> {
    fn clone(&self) -> Self {
        // A wait or failure of this service is not the clone's: the clone starts idle.
        BearerAuth {
            inner: self.inner.clone(),
            parts: self.parts.clone(),
            // Made by the clone itself with its own copies (see `shared_calls_left`).
            reader: None,
            // Made by the clone itself if it is used more than once (see `shared_calls_left`).
            own: None,
            shared_calls_left: SHARED_CALLS,
            pending: Pending::None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for BearerAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.pending {
            Pending::None => "idle",
            Pending::Waiting(_) => "waiting for a token",
            Pending::Failed(_) => "failed",
        };
        f.debug_struct("BearerAuth")
            .field("inner", &self.inner)
            .field("state", &state)
            .field("headers", &self.parts.headers)
            .field("binding", &self.parts.binding)
            .finish()
    }
}
