use std::fmt;

use http::header::{HeaderName, HeaderValue};
use tower_layer::Layer;

use super::bind::{check_keys, Binding};
use super::BearerAuth;
use super::ExtraHeaders;
use crate::cache::TokenCache;
use crate::client_credentials::ClientCredentials;
use crate::error::Error;
use crate::retry::RetryUnauthorizedLayer;
use crate::source::TokenSource;

/// Layer that authenticates every request with a bearer token from a shared cache and adds
/// fixed headers such as `X-Api-Key`. See the [module docs](crate::layer) for an example.
///
/// Every clone of the layer, and every service it makes, shares one [`TokenCache`].
///
/// The layer is the request pipeline for one API (see `ARCHITECTURE.md`): take the token from
/// the cache, bind it (a DPoP proof with [`dpop`](Self::dpop)), insert the headers, send; and
/// with [`retry_on_unauthorized`](Self::retry_on_unauthorized), retry once on a rejection. The
/// DPoP stage is optional and every method works with or without it, in any order.
#[derive(Clone)]
pub struct BearerAuthLayer {
    pub(crate) cache: TokenCache,
    pub(crate) headers: ExtraHeaders,
    pub(crate) binding: Binding,
    /// When the source is [`ClientCredentials`]: the thumbprint of its DPoP key (`Some(None)`:
    /// it has none), checked against the layer's own key. `None`: another source, whose tokens
    /// are checked one by one.
    source_dpop: Option<Option<Box<str>>>,
}

impl BearerAuthLayer {
    /// A layer with its own token cache over `source`, with the default cache settings.
    pub fn new(source: impl TokenSource) -> Self {
        let source_dpop = (&source as &dyn std::any::Any)
            .downcast_ref::<ClientCredentials>()
            .map(|credentials| credentials.dpop_thumbprint().map(Box::from));
        BearerAuthLayer {
            source_dpop,
            ..Self::from_cache(TokenCache::new(source))
        }
    }

    /// A layer over an existing cache, shared with whoever else holds it.
    pub fn from_cache(cache: TokenCache) -> Self {
        BearerAuthLayer {
            cache,
            headers: ExtraHeaders::default(),
            binding: Binding::default(),
            source_dpop: None,
        }
    }

    /// Why this layer cannot work, if it cannot: its DPoP key and its credentials' differ (or
    /// one of them has none). Its services refuse every request with it in `poll_ready`.
    pub(crate) fn refusal(&self) -> Option<crate::Error> {
        let source = self.source_dpop.as_ref()?;
        check_keys(
            "BearerAuthLayer",
            source.as_deref(),
            self.binding.dpop_thumbprint(),
        )
        .err()
    }

    /// Adds a header sent with every request, marked sensitive (kept out of logs and HPACK
    /// tables): typically `x-api-key`. Replaces a header of the same name on the request.
    ///
    /// Fails, without echoing the value, if the name or value is not valid HTTP or the name is
    /// `authorization` or `dpop` (the layer sets those).
    pub fn with_header(self, name: impl AsRef<str>, value: impl AsRef<str>) -> Result<Self, Error> {
        let headers = self
            .headers
            .with_text("with_header", name.as_ref(), value.as_ref())?;
        Ok(BearerAuthLayer { headers, ..self })
    }

    /// Like [`with_header`](Self::with_header), with a typed name and value. The layer keeps its
    /// own copy of the value, marked sensitive and zeroized when the layer, its services and the
    /// last request carrying it are dropped (`value` itself is the caller's to drop).
    pub fn with_header_value(self, name: HeaderName, value: HeaderValue) -> Result<Self, Error> {
        let headers = self.headers.with_checked(name, value.as_bytes())?;
        Ok(BearerAuthLayer { headers, ..self })
    }

    /// Retries a request once with a fresh token when the API rejects the one sent; see
    /// [`RetryUnauthorizedLayer`].
    pub fn retry_on_unauthorized(self) -> RetryUnauthorizedLayer {
        RetryUnauthorizedLayer::new(self)
    }

    /// The shared token cache, e.g. to [`invalidate`](TokenCache::invalidate) a rejected token.
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth::new(inner, self.clone())
    }
}

impl fmt::Debug for BearerAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuthLayer")
            .field("cache", &self.cache)
            .field("headers", &self.headers)
            .field("binding", &self.binding)
            .finish()
    }
}
