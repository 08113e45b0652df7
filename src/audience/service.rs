//! [`MultiAudience`]: the service of a [`MultiAudienceLayer`](super::MultiAudienceLayer).

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use http::Request;
use tower_service::Service;

use super::future::ResponseFuture;
use super::registry::{Found, Key, Registry, SetCache};
use super::MultiAudienceLayer;
use crate::cache::Reader;
use crate::error::{BoxError, Error};
use crate::layer::{Binding, ExtraHeaders, ResponseHeaders, Waiting};
use crate::retry::{Authenticate, Report, Sent};

/// Middleware that picks the credential set of each request (by its [`CredentialSet`]
/// extension, else its origin, else the default), and adds that set's token, the fixed
/// headers and, with [`MultiAudienceLayerBuilder::dpop`](super::MultiAudienceLayerBuilder::dpop),
/// a DPoP proof for the request's own URL. Made by [`MultiAudienceLayer`]; see the
/// [module docs](crate::audience).
///
/// The set is known only from the request, so the token is taken in `call`, not `poll_ready`.
/// With the set's token cached and fresh, `call` takes no lock and allocates nothing (for a
/// URI in normal form: lower-case host, no default port), for an origin seen before and for
/// the first request to one whose set already has a token (the per-origin rule's own work
/// aside). Otherwise the returned future waits for the set's token, then drives a clone of the
/// inner service (hence `S: Clone`), as tower's `Buffer` and tower-http's async authorisation
/// do.
///
/// [`CredentialSet`]: crate::client_credentials::CredentialSet
pub struct MultiAudience<S> {
    inner: S,
    registry: Arc<Registry>,
    headers: ExtraHeaders,
    binding: Binding,
    /// The set of the last request, and this service's reader of its cache: consecutive
    /// requests to one API (the common case) reuse it.
    last: Option<(Arc<SetCache>, Reader)>,
}

impl<S> MultiAudience<S> {
    /// Wraps `inner` with the credential sets, headers and DPoP key of `layer`.
    pub fn new(inner: S, layer: MultiAudienceLayer) -> Self {
        MultiAudience {
            inner,
            registry: layer.registry,
            headers: layer.headers,
            binding: layer.binding,
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

/// Makes `last` the reader of `entry`'s cache (an `Arc` bump and a load when the set differs
/// from the last request's: no allocation).
#[inline]
fn point_at(
    last: &mut Option<(Arc<SetCache>, Reader)>,
    entry: &Arc<SetCache>,
    registry: &Registry,
) {
    let same = matches!(last, Some((previous, _)) if Arc::ptr_eq(previous, entry));
    if !same {
        *last = Some((entry.clone(), entry.cache(&registry.settings).reader()));
    }
}

impl<S, B> Service<Request<B>> for MultiAudience<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Response: ResponseHeaders,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.authenticate(request, false).0
    }
}

impl<S, B> Authenticate<B> for MultiAudience<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Response: ResponseHeaders,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Send + 'static,
{
    fn call_reporting(&mut self, request: Request<B>) -> (Self::Future, Report) {
        self.authenticate(request, true)
    }
}

impl<S> MultiAudience<S> {
    /// The pipeline for one request: choose the set, take its token, bind it, insert the
    /// headers, send. With `report`, also says what was sent (for the retry stage).
    #[inline]
    fn authenticate<B>(
        &mut self,
        mut request: Request<B>,
        report: bool,
    ) -> (ResponseFuture<S::Future>, Report)
    where
        S: Service<Request<B>> + Clone + Send + 'static,
        S::Response: ResponseHeaders,
        S::Error: Into<BoxError>,
        S::Future: Send,
        B: Send + 'static,
    {
        // Stage 1: the set, found without a lock (or made, the cold path).
        let chosen: Result<(), Error> = {
            let key = Key::of(&request);
            let registry = &*self.registry;
            let last = &mut self.last;
            registry.with_set(&key, |found| match found {
                Found::Set(entry) => {
                    point_at(last, entry, registry);
                    Ok(())
                }
                Found::Missing => registry
                    .insert(&key)
                    .map(|entry| point_at(last, &entry, registry)),
                Found::Refused(error) => Err(error),
            })
        };
        if let Err(error) = chosen {
            return (ResponseFuture::failed(error), Report::None);
        }
        let Some((entry, reader)) = self.last.as_mut() else {
            let error = Error::config("no credential set was found for the request");
            return (ResponseFuture::failed(error), Report::None);
        };
        let cache = entry.cache(&self.registry.settings);
        // Stage 2: the token, if the set's is fresh (the hot path).
        let Some(current) = cache.usable(reader) else {
            let cache = cache.clone();
            return self.call_after_token(cache, request, report);
        };
        let token = current.token();
        // Stages 3 and 4: bind, insert the headers.
        let watch = match self.binding.needs_proof(token) {
            Ok(false) => {
                self.headers
                    .insert_with_authorization(request.headers_mut(), token.header().clone());
                None
            }
            Ok(true) => {
                self.headers
                    .insert_with_authorization(request.headers_mut(), token.header().clone());
                let (method, uri) = (request.method().clone(), request.uri().clone());
                match self
                    .binding
                    .prove(token, &method, &uri, request.headers_mut())
                {
                    Ok(watch) => Some(watch),
                    Err(error) => return (ResponseFuture::failed(error), Report::None),
                }
            }
            Err(error) => return (ResponseFuture::failed(error), Report::None),
        };
        let sent = match report {
            true => Sent::of(cache, request.headers(), watch.is_some()).into(),
            false => Report::None,
        };
        // Stage 5: send.
        (ResponseFuture::new(self.inner.call(request), watch), sent)
    }

    /// The cold path: waits for the set's token, binds it and calls the inner service that
    /// `poll_ready` made ready (a clone stays here for the next request).
    #[cold]
    fn call_after_token<B>(
        &mut self,
        cache: crate::TokenCache,
        mut request: Request<B>,
        report: bool,
    ) -> (ResponseFuture<S::Future>, Report)
    where
        S: Service<Request<B>> + Clone + Send + 'static,
        S::Response: ResponseHeaders,
        S::Error: Into<BoxError>,
        S::Future: Send,
        B: Send + 'static,
    {
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let headers = self.headers.clone();
        let binding = self.binding.clone();
        let slot = report.then(|| Arc::new(OnceLock::new()));
        let sent_slot = slot.clone();
        let waiting: Waiting<S::Future> = Box::pin(async move {
            let token = cache.wait_for_token().await?;
            let proof = binding.needs_proof(&token)?;
            headers.insert_with_authorization(request.headers_mut(), token.header().clone());
            let watch = if proof {
                let (method, uri) = (request.method().clone(), request.uri().clone());
                Some(binding.prove(&token, &method, &uri, request.headers_mut())?)
            } else {
                None
            };
            if let Some(slot) = sent_slot {
                if let Some(sent) = Sent::of(&cache, request.headers(), watch.is_some()) {
                    let _ = slot.set(sent);
                }
            }
            Ok((ready.call(request), watch))
        });
        let report = slot.map_or(Report::None, Report::Later);
        (ResponseFuture::waiting(waiting), report)
    }
}

impl<S: Clone> Clone for MultiAudience<S> {
    fn clone(&self) -> Self {
        MultiAudience {
            inner: self.inner.clone(),
            registry: self.registry.clone(),
            headers: self.headers.clone(),
            binding: self.binding.clone(),
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
            .field("binding", &self.binding)
            .finish()
    }
}
