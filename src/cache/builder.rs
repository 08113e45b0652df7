//! [`TokenCacheBuilder`] and the settings it collects.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::TokenCache;
use crate::source::TokenSource;
use crate::time::{clamp_to_century, ONE_YEAR};

/// Configures a [`TokenCache`]. Every setting has a default suited to OAuth2 token endpoints.
///
/// Durations longer than a century (`Duration::MAX` for "never") are taken as a century.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_client_credentials::{BoxFuture, Error, Token, TokenCache, TokenSource};
///
/// # struct Static;
/// # impl TokenSource for Static {
/// #     fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
/// #         Box::pin(async { Token::bearer("t", Some(Duration::from_secs(3600))) })
/// #     }
/// # }
/// let cache = TokenCache::builder(Static)
///     .refresh_margin(Duration::from_secs(120))
///     .max_backoff(Duration::from_secs(10))
///     .background_refresh(true)
///     .build();
/// # let _ = cache;
/// ```
pub struct TokenCacheBuilder {
    source: Arc<dyn TokenSource>,
    config: Config,
    /// The second cache level shared by processes, if any.
    #[cfg(feature = "store")]
    store: Option<Arc<dyn crate::store::TokenStore>>,
}

/// The cache's settings, read by the refresh and timing code.
#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) refresh_margin: Option<Duration>,
    pub(super) refresh_jitter: f64,
    pub(super) default_lifetime: Duration,
    pub(super) max_lifetime: Duration,
    pub(super) backoff_base: Duration,
    pub(super) backoff_factor: u32,
    pub(super) max_backoff: Duration,
    pub(super) permanent_backoff_base: Duration,
    pub(super) max_permanent_backoff: Duration,
    pub(super) max_retry_after: Duration,
    pub(super) max_backoff_wait: Duration,
    pub(super) refresh_timeout: Duration,
    pub(super) min_invalidate_interval: Duration,
    pub(super) background_refresh: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            refresh_margin: None,
            refresh_jitter: 0.5,
            default_lifetime: Duration::from_secs(300),
            max_lifetime: ONE_YEAR,
            backoff_base: Duration::from_millis(100),
            backoff_factor: 2,
            max_backoff: Duration::from_secs(30),
            // Seconds, not 100 ms: a permanent failure needs a person, and the first retry
            // still comes soon enough to notice a fix made in the identity provider (a scope
            // granted, a secret re-registered). Five minutes at most: at most 12 requests an
            // hour per process, so 100 misconfigured replicas make 20 a minute, a few percent
            // of Okta's 600 a minute for one app, while a fix is picked up within 5 minutes
            // without a restart.
            permanent_backoff_base: Duration::from_secs(5),
            max_permanent_backoff: Duration::from_secs(300),
            max_retry_after: Duration::from_secs(300),
            max_backoff_wait: Duration::ZERO,
            refresh_timeout: Duration::from_secs(60),
            min_invalidate_interval: Duration::from_secs(5),
            background_refresh: false,
        }
    }
}

impl TokenCacheBuilder {
    pub(super) fn new(source: Arc<dyn TokenSource>) -> Self {
        TokenCacheBuilder {
            source,
            config: Config::default(),
            #[cfg(feature = "store")]
            store: None,
        }
    }

    /// How long before expiry a token is refreshed. Default: the larger of 30 s and 10 % of the
    /// token's lifetime. Always capped at half the lifetime, so that a short-lived token is used
    /// for at least half of it.
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.config.refresh_margin = Some(clamp_to_century(margin));
        self
    }

    /// How far, as a fraction of the margin, the refresh point is moved earlier at random so
    /// that replicas do not refresh in lockstep. Default 0.5; 0 turns jitter off. Clamped to
    /// `0.0..=1.0`.
    pub fn refresh_jitter(mut self, fraction: f64) -> Self {
        self.config.refresh_jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// Lifetime assumed for a token whose source gives none. Default 5 minutes.
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.default_lifetime = clamp_to_century(lifetime);
        self
    }

    /// Longest lifetime believed; longer ones are clamped to it. Default one year.
    pub fn max_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.max_lifetime = clamp_to_century(lifetime);
        self
    }

    /// First backoff step after a failure. Default 100 ms.
    pub fn backoff_base(mut self, base: Duration) -> Self {
        self.config.backoff_base = clamp_to_century(base);
        self
    }

    /// Growth of the backoff step per consecutive failure. Default 2; at least 1.
    pub fn backoff_factor(mut self, factor: u32) -> Self {
        self.config.backoff_factor = factor.max(1);
        self
    }

    /// Largest backoff step. Default 30 s.
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.config.max_backoff = clamp_to_century(max);
        self
    }

    /// First backoff step after a permanent failure (`invalid_client`, `unauthorized_client`,
    /// `invalid_scope`, `unsupported_grant_type`, a bare 401: errors whose
    /// [`is_transient`](crate::Error::is_transient) is false). It doubles with each permanent
    /// failure since the last success, up to [`max_permanent_backoff`](Self::max_permanent_backoff);
    /// each wait is a random point in the upper half of its step. Default 5 s.
    ///
    /// Such a failure will not heal by itself, and an identity provider's rate limit is often
    /// shared by every app of an organisation: a misconfigured client must not spend it.
    pub fn permanent_backoff_base(mut self, base: Duration) -> Self {
        self.config.permanent_backoff_base = clamp_to_century(base);
        self
    }

    /// Largest backoff step after permanent failures; see
    /// [`permanent_backoff_base`](Self::permanent_backoff_base). Default 5 minutes.
    pub fn max_permanent_backoff(mut self, max: Duration) -> Self {
        self.config.max_permanent_backoff = clamp_to_century(max);
        self
    }

    /// Longest wait a server's `Retry-After` (or `X-Rate-Limit-Reset`) may impose. Default 5 min.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.config.max_retry_after = clamp_to_century(max);
        self
    }

    /// How long a request with no valid token may wait for the next attempt while the cache is
    /// backing off, instead of failing at once with
    /// [`ErrorKind::BackingOff`](crate::ErrorKind::BackingOff). Default zero.
    pub fn max_backoff_wait(mut self, wait: Duration) -> Self {
        self.config.max_backoff_wait = clamp_to_century(wait);
        self
    }

    /// Time limit for one call of the token source. Default 60 s.
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.config.refresh_timeout = clamp_to_century(timeout);
        self
    }

    /// Minimum time between two invalidations that drop a token ([`TokenCache::invalidate`]).
    /// Default 5 s.
    pub fn min_invalidate_interval(mut self, interval: Duration) -> Self {
        self.config.min_invalidate_interval = clamp_to_century(interval);
        self
    }

    /// Refresh ahead of expiry even without request traffic, from a task that ends when the
    /// last clone of the cache is dropped. Off by default: without traffic the first request
    /// after a long pause then waits for one token request.
    pub fn background_refresh(mut self, enabled: bool) -> Self {
        self.config.background_refresh = enabled;
        self
    }

    /// Shares tokens, token requests and backoff with every other process whose cache uses the
    /// same store and credential set (see [`crate::store`]): for example a
    /// [`RedisStore`](crate::store::RedisStore). The store is an optimisation: when it fails
    /// the cache fetches on its own. It is used only if the source names its credential set
    /// ([`TokenSource::store_key`]; [`ClientCredentials`](crate::ClientCredentials) does).
    ///
    /// ```
    /// # #[cfg(feature = "redis")] {
    /// use tower_client_credentials::store::RedisStore;
    /// use tower_client_credentials::{ClientCredentials, TokenCache};
    ///
    /// let credentials = ClientCredentials::builder()
    ///     .token_endpoint("https://idp.example/oauth2/v1/token")?
    ///     .client_id("my-client")
    ///     .client_secret("my-secret")
    ///     .build()?;
    /// let cache = TokenCache::builder(credentials)
    ///     .store(RedisStore::new("redis://127.0.0.1:6379")?)
    ///     .build();
    /// # }
    /// # Ok::<(), tower_client_credentials::Error>(())
    /// ```
    #[cfg(feature = "store")]
    pub fn store(mut self, store: impl crate::store::TokenStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Builds the cache. No token is fetched until one is needed (or [`TokenCache::prefetch`]).
    pub fn build(self) -> TokenCache {
        #[cfg(feature = "store")]
        let store = self.store.and_then(|store| match self.source.store_key() {
            Some(key) => Some(Arc::new(crate::store::Coordinator::new(
                store,
                key,
                self.config.refresh_timeout,
            ))),
            None => {
                tracing::warn!(
                    "the token source does not name its credential set (TokenSource::store_key), \
                     so the shared token store is not used (ClientCredentials names none when \
                     its certificate is presented by your own HTTP client: give the identity to \
                     `.tls_client_auth(..)` to share certificate-bound tokens)"
                );
                None
            }
        });
        TokenCache::from_parts(
            self.source,
            self.config,
            #[cfg(feature = "store")]
            store,
        )
    }
}

impl fmt::Debug for TokenCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCacheBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
