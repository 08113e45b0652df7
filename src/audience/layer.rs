//! [`MultiAudienceLayer`] and its builder.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::origin::NormalOrigin;
use super::registry::{CacheSettings, OriginRule, Registry, RegistryConfig};
use super::MultiAudience;
use crate::cache::{TokenCache, TokenCacheBuilder};
use crate::client_credentials::{ClientCredentials, CredentialSet};
use crate::error::Error;
use crate::layer::{check_keys, Binding, ExtraHeaders};
use crate::retry::RetryUnauthorizedLayer;

/// The default bound on credential sets made on demand; see
/// [`MultiAudienceLayerBuilder::max_sets`].
pub const DEFAULT_MAX_SETS: usize = 256;

/// Layer that authenticates each request with a token of the credential set (audience,
/// resource, scopes) of the API it goes to: one client, several APIs. See the
/// [module docs](crate::audience) for an example.
///
/// Every clone of the layer, and every service it makes, shares the sets and their caches.
#[derive(Clone)]
pub struct MultiAudienceLayer {
    pub(super) registry: Arc<Registry>,
    pub(super) headers: ExtraHeaders,
    pub(super) binding: Binding,
}

impl MultiAudienceLayer {
    /// Starts configuring a layer for the client `credentials`. Their own scopes and
    /// parameters are the default set, used for requests no table entry or extension names.
    pub fn builder(credentials: ClientCredentials) -> MultiAudienceLayerBuilder {
        MultiAudienceLayerBuilder {
            default: Some(credentials.credential_set()),
            credentials,
            table: Vec::new(),
            rule: None,
            max_sets: DEFAULT_MAX_SETS,
            settings: Arc::new(|builder| builder),
            headers: ExtraHeaders::default(),
            binding: Binding::default(),
            error: None,
        }
    }

    /// Retries a request once with a fresh token of its set when the API rejects the one sent
    /// (HTTP 401 by default), or once with the new nonce when the API answers a DPoP nonce
    /// challenge that carries one; see [`RetryUnauthorizedLayer`] for the body rules,
    /// [`retry_if`](RetryUnauthorizedLayer::retry_if) and
    /// [`replay_limit`](RetryUnauthorizedLayer::replay_limit).
    ///
    /// ```
    /// use tower_client_credentials::audience::MultiAudienceLayer;
    /// use tower_client_credentials::retry::is_invalid_token;
    /// use tower_client_credentials::ClientCredentials;
    ///
    /// # fn main() -> Result<(), tower_client_credentials::Error> {
    /// let credentials = ClientCredentials::builder()
    ///     .token_endpoint("https://idp.example/oauth2/v1/token")?
    ///     .client_id("my-client")
    ///     .client_secret("my-secret")
    ///     .build()?;
    /// let layer = MultiAudienceLayer::builder(credentials)
    ///     .per_origin(|origin| {
    ///         tower_client_credentials::CredentialSet::new().resource(origin)
    ///     })
    ///     .build()?
    ///     .retry_on_unauthorized()
    ///     .retry_if(is_invalid_token)
    ///     .replay_limit(16 * 1024);
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn retry_on_unauthorized(self) -> RetryUnauthorizedLayer<MultiAudienceLayer> {
        RetryUnauthorizedLayer::over(self)
    }

    /// How many credential sets have a token cache now (made on first use).
    ///
    /// ```
    /// use tower::{Layer, Service, ServiceExt};
    /// use tower_client_credentials::audience::MultiAudienceLayer;
    /// use tower_client_credentials::testing::AuthServer;
    /// use tower_client_credentials::ClientCredentials;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// # let server = AuthServer::start().await?;
    /// let credentials = ClientCredentials::builder()
    ///     .token_endpoint(server.token_endpoint())?
    ///     .client_id(AuthServer::CLIENT_ID)
    ///     .client_secret(AuthServer::CLIENT_SECRET)
    ///     .build()?;
    /// let default_set = credentials.credential_set();
    /// let layer = MultiAudienceLayer::builder(credentials).build()?;
    /// let mut client = layer.layer(tower::service_fn(|_: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
    /// }));
    /// client.ready().await?.call(http::Request::get("https://api.example/").body(())?).await?;
    /// assert_eq!(layer.sets_in_use(), 1);
    /// assert!(layer.cache(&default_set).unwrap().cached().is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub fn sets_in_use(&self) -> usize {
        self.registry.sets_in_use()
    }

    /// The token cache of `set`, once a request has used it: to
    /// [`invalidate`](TokenCache::invalidate) a token the API rejected, or to read its
    /// [`cached`](TokenCache::cached) token.
    /// See [`sets_in_use`](Self::sets_in_use) for an example.
    pub fn cache(&self, set: &CredentialSet) -> Option<TokenCache> {
        self.registry.cache_of(set)
    }
}

impl<S> Layer<S> for MultiAudienceLayer {
    type Service = MultiAudience<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MultiAudience::new(inner, self.clone())
    }
}

impl fmt::Debug for MultiAudienceLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiAudienceLayer")
            .field("registry", &self.registry)
            .field("headers", &self.headers)
            .field("binding", &self.binding)
            .finish()
    }
}

/// Configures a [`MultiAudienceLayer`]; get one from [`MultiAudienceLayer::builder`].
///
/// A request's set is, in this order: its [`CredentialSet`] request extension; the set of its
/// origin in the table ([`origin`](Self::origin)); the set the per-origin rule
/// ([`per_origin`](Self::per_origin)) derives; the default set (unless
/// [`refuse_unknown_origins`](Self::refuse_unknown_origins)).
///
/// # Example
///
/// An RFC 8707 resource per API, derived from the origin, at most 100 of them, every cache
/// backing off for at most 10 s:
///
/// ```
/// use std::time::Duration;
/// use tower_client_credentials::audience::MultiAudienceLayer;
/// use tower_client_credentials::client_credentials::CredentialSet;
/// use tower_client_credentials::ClientCredentials;
///
/// # fn main() -> Result<(), tower_client_credentials::Error> {
/// let credentials = ClientCredentials::builder()
///     .token_endpoint("https://idp.example/oauth2/default/v1/token")?
///     .client_id("my-client")
///     .client_secret("my-secret")
///     .build()?;
/// let layer = MultiAudienceLayer::builder(credentials)
///     // A table entry wins over the rule.
///     .origin("https://legacy.example", CredentialSet::new().audience("legacy-api"))
///     .per_origin(|origin| CredentialSet::new().resource(origin).scope("api.read"))
///     .max_sets(100)
///     .cache_settings(|cache| cache.max_backoff(Duration::from_secs(10)))
///     .build()?;
/// assert_eq!(layer.sets_in_use(), 0, "caches are made on first use");
/// # Ok(())
/// # }
/// ```
pub struct MultiAudienceLayerBuilder {
    credentials: ClientCredentials,
    table: Vec<(NormalOrigin, CredentialSet)>,
    default: Option<CredentialSet>,
    rule: Option<OriginRule>,
    max_sets: usize,
    settings: CacheSettings,
    headers: ExtraHeaders,
    binding: Binding,
    error: Option<Error>,
}

impl MultiAudienceLayerBuilder {
    /// Requests to `origin` (scheme, host and port, e.g. `https://api-a.example`; host case
    /// and a default port do not matter) get tokens for `set`. An invalid origin or set is
    /// reported by [`build`](Self::build).
    pub fn origin(mut self, origin: &str, set: CredentialSet) -> Self {
        match NormalOrigin::parse(origin) {
            Ok(origin) => self.table.push((origin, set)),
            Err(error) => {
                self.error.get_or_insert(error);
            }
        }
        self
    }

    /// The set for requests that no extension, table entry or rule gives one. Default: the
    /// credentials' own scopes and parameters.
    pub fn default_set(mut self, set: CredentialSet) -> Self {
        self.default = Some(set);
        self
    }

    /// No default set: a request to an origin not in the table (and without an extension or a
    /// rule) fails with a configuration error naming the origin.
    pub fn refuse_unknown_origins(mut self) -> Self {
        self.default = None;
        self
    }

    /// Derives the set of an origin not in the table, e.g. an RFC 8707 `resource` per API:
    /// `|origin| CredentialSet::new().resource(origin)`. Called once per origin (given in
    /// normal form, `https://host[:port]`); the sets it makes count against
    /// [`max_sets`](Self::max_sets). Replaces the default set for requests with an origin.
    pub fn per_origin(
        mut self,
        rule: impl Fn(&str) -> CredentialSet + Send + Sync + 'static,
    ) -> Self {
        self.rule = Some(Arc::new(rule));
        self
    }

    /// The most credential sets made on demand (from request extensions or the per-origin
    /// rule; the table's and the default do not count). Default [`DEFAULT_MAX_SETS`].
    ///
    /// At the bound, sets whose token has expired (or that never got one) are dropped, since
    /// they would need a token request anyway; if all hold valid tokens, a request for a new
    /// set fails with a configuration error naming the bound. Evicting sets in use instead
    /// would turn a flood of distinct sets into a flood of token requests at the
    /// authorization server, whose rate limit the whole organisation shares.
    pub fn max_sets(mut self, max: usize) -> Self {
        self.max_sets = max.max(1);
        self
    }

    /// Settings for every set's [`TokenCache`] (refresh margin, backoff, ...).
    pub fn cache_settings(
        mut self,
        settings: impl Fn(TokenCacheBuilder) -> TokenCacheBuilder + Send + Sync + 'static,
    ) -> Self {
        self.settings = Arc::new(settings);
        self
    }

    /// Adds a header sent with every request, marked sensitive: typically `x-api-key`. Fails,
    /// without echoing the value, if the name or value is not valid HTTP or the name is
    /// `authorization` or `dpop`.
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, Error> {
        // Checked and kept as `BearerAuthLayer::with_header` does: one implementation.
        self.headers = self.headers.with_text("header", name, value)?;
        Ok(self)
    }

    /// Sends every set's tokens as DPoP-bound tokens (RFC 9449) with a proof signed by `key`
    /// on every request: for its own method and URL (`htu` is that request's origin and path),
    /// with the nonce that origin last gave. The `DPoP-Nonce` of every response is kept per
    /// origin. Needs the cargo feature `dpop`.
    ///
    /// `key` must be the key given to
    /// [`ClientCredentialsBuilder::dpop`](crate::ClientCredentialsBuilder::dpop):
    /// [`build`](Self::build) refuses another key, DPoP credentials without this call, and this
    /// call over credentials without a key.
    ///
    /// ```
    /// use tower_client_credentials::audience::MultiAudienceLayer;
    /// use tower_client_credentials::dpop::DpopKey;
    /// use tower_client_credentials::ClientCredentials;
    ///
    /// # fn main() -> Result<(), tower_client_credentials::Error> {
    /// let key = DpopKey::generate()?;
    /// let credentials = ClientCredentials::builder()
    ///     .token_endpoint("https://idp.example/oauth2/v1/token")?
    ///     .client_id("my-client")
    ///     .client_secret("my-secret")
    ///     .dpop(key.clone())
    ///     .build()?;
    /// let layer = MultiAudienceLayer::builder(credentials.clone()).dpop(key).build()?;
    /// # let _ = layer;
    /// // Another key than the credentials' is refused here, not on the wire.
    /// let other = DpopKey::generate()?;
    /// let refused = MultiAudienceLayer::builder(credentials).dpop(other).build().unwrap_err();
    /// assert_eq!(refused.kind(), tower_client_credentials::ErrorKind::Configuration);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "dpop")]
    pub fn dpop(mut self, key: crate::dpop::DpopKey) -> Self {
        self.binding.dpop = Some(crate::dpop::ProofStage::new(key));
        self
    }

    /// Checks the table, the sets and the DPoP keys, and builds the layer. Fetches nothing:
    /// each set's cache is made, and its first token fetched, when a request first needs it.
    pub fn build(self) -> Result<MultiAudienceLayer, Error> {
        if let Some(error) = self.error {
            return Err(error);
        }
        check_keys(
            "MultiAudienceLayer",
            self.credentials.dpop_thumbprint(),
            self.binding.dpop_thumbprint(),
        )?;
        let registry = Registry::new(RegistryConfig {
            base: self.credentials,
            settings: self.settings,
            table: self.table,
            default: self.default,
            rule: self.rule,
            max_sets: self.max_sets,
        })?;
        Ok(MultiAudienceLayer {
            registry: Arc::new(registry),
            headers: self.headers,
            binding: self.binding,
        })
    }
}

impl fmt::Debug for MultiAudienceLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiAudienceLayerBuilder")
            .field("credentials", &self.credentials)
            .field("origins", &self.table.len())
            .field("default", &self.default)
            .field("max_sets", &self.max_sets)
            .finish_non_exhaustive()
    }
}
