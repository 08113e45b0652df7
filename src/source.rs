//! Where tokens come from.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{Error, Token};

// The name of a credential set in a shared store lives here, beside the trait that gives it, and
// `store` uses it from here: the store sits above the source (cache → store → source), never
// below it.
#[cfg(feature = "store")]
pub(crate) mod store_key;
#[cfg(feature = "store")]
use self::store_key::StoreKey;

/// A boxed, `Send` future, the return type of [`TokenSource::fetch_token`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that can get a new access token: "give me a fresh token".
///
/// [`ClientCredentials`](crate::ClientCredentials) is the implementation for an OAuth2 token
/// endpoint. Implement it for tokens from elsewhere (a file, a sidecar, another grant) to get the
/// same caching, single-flight refresh and header injection from
/// [`BearerAuthLayer`](crate::BearerAuthLayer).
///
/// `fetch_token` is only called by the cache, at most once at a time per cache, from a task of
/// its own: an implementation need not deduplicate or cache anything.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_client_credentials::{BoxFuture, Error, Token, TokenSource};
///
/// #[derive(Debug)]
/// struct FromEnvironment;
///
/// impl TokenSource for FromEnvironment {
///     fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
///         Box::pin(async {
///             let text = std::env::var("ACCESS_TOKEN")
///                 .map_err(|e| Error::source_failed("ACCESS_TOKEN is not set", e))?;
///             Token::bearer(text, Some(Duration::from_secs(300)))
///         })
///     }
/// }
/// ```
pub trait TokenSource: Send + Sync + 'static {
    /// Gets a new token. Errors must not contain secrets.
    fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>>;

    /// Whether the credentials behind this source changed since the last `fetch_token` (a
    /// rotated client secret): asked only while the cache backs off after a failure and a
    /// request finds no valid token; `true` ends the backoff, so the new credentials are tried
    /// at once and a failure with them starts a clean backoff. Must be cheap and must not
    /// block for long: it runs under the cache's lock. Default `false`.
    fn credentials_changed(&self) -> bool {
        false
    }

    /// The name of this source's credential set in a shared token store
    /// ([`TokenCacheBuilder::store`](crate::TokenCacheBuilder::store)); `None` (the default):
    /// the source cannot say which tokens are interchangeable with its own, and a cache over it
    /// does not use a store. [`ClientCredentials`](crate::ClientCredentials) derives it from its
    /// configuration; derive one with [`StoreKey::builder`](crate::store::StoreKey::builder).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_client_credentials::store::StoreKey;
    /// use tower_client_credentials::{BoxFuture, Error, Token, TokenSource};
    ///
    /// struct Sidecar;
    ///
    /// impl TokenSource for Sidecar {
    ///     fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
    ///         Box::pin(async { Token::bearer("from-the-sidecar", Some(Duration::from_secs(60))) })
    ///     }
    ///     fn store_key(&self) -> Option<StoreKey> {
    ///         Some(StoreKey::builder("http://127.0.0.1:9000/token", "orders-service").build())
    ///     }
    /// }
    /// ```
    #[cfg(feature = "store")]
    fn store_key(&self) -> Option<StoreKey> {
        None
    }

    /// The name of the credential set as the credentials are now: asked before every use of
    /// the store (once per token the cache needs, not per request), so that a key that depends
    /// on credentials which change (a rotated secret read from a file) follows them. Tokens and
    /// failures of old credentials then stay under their old key: a new secret never waits out
    /// a backoff that the old one caused. `None`: the store is not used this time (the cache
    /// fetches on its own).
    ///
    /// Default: [`store_key`](Self::store_key). [`ClientCredentials`](crate::ClientCredentials)
    /// reads its secret source here and keys the hash with the secret's current value.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_client_credentials::store::StoreKey;
    /// use tower_client_credentials::{BoxFuture, Error, Token, TokenSource};
    ///
    /// /// Reads its API secret from a mounted file at every token request.
    /// struct Sidecar;
    ///
    /// fn key(secret: &str) -> StoreKey {
    ///     StoreKey::builder("http://127.0.0.1:9000/token", "orders").secret(secret.as_bytes()).build()
    /// }
    ///
    /// impl TokenSource for Sidecar {
    ///     fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
    ///         Box::pin(async { Token::bearer("from-the-sidecar", Some(Duration::from_secs(60))) })
    ///     }
    ///     fn store_key(&self) -> Option<StoreKey> {
    ///         Some(key("")) // a store is used; the key comes from `current_store_key`
    ///     }
    ///     fn current_store_key(&self) -> BoxFuture<'_, Option<StoreKey>> {
    ///         Box::pin(async {
    ///             let secret = tokio::fs::read_to_string("/run/secrets/api").await.ok()?;
    ///             Some(key(secret.trim()))
    ///         })
    ///     }
    /// }
    /// ```
    #[cfg(feature = "store")]
    fn current_store_key(&self) -> BoxFuture<'_, Option<StoreKey>> {
        let key = self.store_key();
        Box::pin(std::future::ready(key))
    }
}

impl<T: TokenSource + ?Sized> TokenSource for Arc<T> {
    fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
        (**self).fetch_token()
    }

    fn credentials_changed(&self) -> bool {
        (**self).credentials_changed()
    }

    #[cfg(feature = "store")]
    fn store_key(&self) -> Option<StoreKey> {
        (**self).store_key()
    }

    #[cfg(feature = "store")]
    fn current_store_key(&self) -> BoxFuture<'_, Option<StoreKey>> {
        (**self).current_store_key()
    }
}

impl<T: TokenSource + ?Sized> TokenSource for Box<T> {
    fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
        (**self).fetch_token()
    }

    fn credentials_changed(&self) -> bool {
        (**self).credentials_changed()
    }

    #[cfg(feature = "store")]
    fn store_key(&self) -> Option<StoreKey> {
        (**self).store_key()
    }

    #[cfg(feature = "store")]
    fn current_store_key(&self) -> BoxFuture<'_, Option<StoreKey>> {
        (**self).current_store_key()
    }
}
