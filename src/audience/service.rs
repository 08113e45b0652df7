//! [`MultiAudience`]: the service of a [`MultiAudienceLayer`](super::MultiAudienceLayer).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderValue;
use http::Request;
use tower_service::Service;

use super::future::ResponseFuture;
use super::registry::{CacheSettings, Found, Key, Registry, SetCache};
use super::MultiAudienceLayer;
use crate::cache::Reader;
use crate::error::{BoxError, Error};
use crate::layer::ExtraHeaders;

/// Middleware that picks the credential set of each request (by its [`CredentialSet`]
/// extension, else its origin, else the default), and adds that set's bearer token and the
/// fixed headers. Made by [`MultiAudienceLayer`]; see the [module docs](crate::audience).
///
/// The set is known only from the request, so the token is taken in `call`, not `poll_ready`.
/// With the set's token cached and fresh, `call` takes no lock and allocates nothing (for a
/// URI in normal form: lower-case host, no default port). Otherwise the returned future waits
/// for the set's token, then drives a clone of the inner service (hence `S: Clone`), as
/// tower's `Buffer` and tower-http's async authorisation do.
///
/// [`CredentialSet`]: crate::client_credentials::CredentialSet
pub struct MultiAudience<S> {
    inner: S,
    registry: Arc<Registry>,
    headers: ExtraHeaders,
    /// The set of the last request, and this service's reader of its cache: consecutive
    /// requests to one API (the common case) reuse it.
    last: Option<(Arc<SetCache>, Reader)>,
}

impl<S> MultiAudience<S> {
    /// Wraps `inner` with the credential sets and headers of `layer`.
    pub fn new(inner: S, layer: MultiAudienceLayer) -> Self {
        MultiAudience {
            inner,
            registry: layer.registry,
            headers: layer.headers,
            last: None,
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

/// The hot path: the fresh token of `entry`'s cache, through the service's reader of it (`last`,
/// replaced when the request's set is another than the last request's).
#[inline]
fn usable_header(
    last: &mut Option<(Arc<SetCache>, Reader)>,
    entry: &Arc<SetCache>,
    settings: &CacheSettings,
) -> Option<HeaderValue> {
    let same = matches!(last, Some((previous, _)) if Arc::ptr_eq(previous, entry));
    if !same {
        // An `Arc` bump and a load: no allocation.
        *last = Some((entry.clone(), entry.cache(settings).reader()));
    }
    let (entry, reader) = last.as_mut()?;
    entry
        .cache(settings)
        .usable(reader)
        .map(|current| current.token().header().clone())
}

type Waiting<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

impl<S, B> Service<Request<B>> for MultiAudience<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S::Response>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // `Some(token)`: the hot path; `None`: the set exists but has no fresh token, or is
        // missing (then `entry` is `None` too).
        let found: Result<(Option<HeaderValue>, Option<Arc<SetCache>>), Error> = {
            let key = Key::of(&request);
            let registry = &*self.registry;
            let last = &mut self.last;
            registry.with_set(&key, |found| match found {
                Found::Set(entry) => match usable_header(last, entry, &registry.settings) {
                    Some(token) => Ok((Some(token), None)),
                    None => Ok((None, Some(entry.clone()))),
                },
                Found::Missing => registry.insert(&key).map(|entry| (None, Some(entry))),
                Found::Refused(error) => Err(error),
            })
        };
        match found {
            Ok((Some(token), _)) => {
                self.headers
                    .insert_with_authorization(request.headers_mut(), token);
                ResponseFuture::new(self.inner.call(request))
            }
            Ok((None, Some(entry))) => self.call_after_token(entry, request),
            Ok((None, None)) => {
                ResponseFuture::failed(Error::config("no credential set was found for the request"))
            }
            Err(error) => ResponseFuture::failed(error),
        }
    }
}

impl<S> MultiAudience<S> {
    /// The cold path: waits for `entry`'s token, then calls the inner service that
    /// `poll_ready` made ready (a clone stays here for the next request).
    #[cold]
    fn call_after_token<B>(
        &mut self,
        entry: Arc<SetCache>,
        mut request: Request<B>,
    ) -> ResponseFuture<S::Future, S::Response>
    where
        S: Service<Request<B>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send,
        B: Send + 'static,
    {
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let cache = entry.cache(&self.registry.settings).clone();
        let headers = self.headers.clone();
        let waiting: Waiting<S::Response> = Box::pin(async move {
            let token = cache.wait_for_header().await?;
            headers.insert_with_authorization(request.headers_mut(), token);
            ready.call(request).await.map_err(Into::into)
        });
        ResponseFuture::waiting(waiting)
    }
}

impl<S: Clone> Clone for MultiAudience<S> {
    fn clone(&self) -> Self {
        MultiAudience {
            inner: self.inner.clone(),
            registry: self.registry.clone(),
            headers: self.headers.clone(),
            last: self.last.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for MultiAudience<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiAudience")
            .field("inner", &self.inner)
            .field("registry", &self.registry)
            .field("headers", &self.headers)
            .finish()
    }
}
