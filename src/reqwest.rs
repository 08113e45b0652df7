//! [`BearerAuthMiddleware`]: the layer's token cache and headers for a
//! [`reqwest_middleware`] client (feature `reqwest`).
//!
//! Made from a [`BearerAuthLayer`], it shares the layer's [`TokenCache`]: a hyper or tonic
//! client wrapped in the layer and a reqwest client with the middleware use one token, fetched
//! once. Every request gets `Authorization: Bearer <token>` and the layer's extra headers (such
//! as `x-api-key`), all marked sensitive, replacing headers of the same names.
//!
//! # Example
//!
//! ```
//! use reqwest_middleware::ClientBuilder;
//! use tower_client_credentials::reqwest::BearerAuthMiddleware;
//! use tower_client_credentials::{BearerAuthLayer, ClientCredentials};
//! # use tower_client_credentials::testing::{ApiServer, AuthServer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # let auth = AuthServer::start().await?;
//! # let api = ApiServer::start(&auth, "my-api-key").await?;
//! # let (token_endpoint, client_id, client_secret) =
//! #     (auth.token_endpoint(), AuthServer::CLIENT_ID, AuthServer::CLIENT_SECRET);
//! let credentials = ClientCredentials::builder()
//!     .token_endpoint(&token_endpoint)?
//!     .client_id(client_id)
//!     .client_secret(client_secret)
//!     .build()?;
//! let layer = BearerAuthLayer::new(credentials).with_header("x-api-key", "my-api-key")?;
//!
//! // The same `layer` can also wrap a hyper client or a tonic channel: one token for all.
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(BearerAuthMiddleware::new(&layer))
//!     .build();
//! let response = client.get(api.url()).send().await?;
//! assert_eq!(response.status(), 200);
//! # Ok(())
//! # }
//! ```
//!
//! # Failures
//!
//! When no token can be had, the request is not sent and
//! [`handle`](reqwest_middleware::Middleware::handle) returns
//! [`reqwest_middleware::Error::Middleware`] wrapping the crate's [`Error`](crate::Error):
//! `error.downcast_ref::<tower_client_credentials::Error>()` on the inner `anyhow::Error` gives
//! its [`ErrorKind`](crate::ErrorKind).

use std::fmt;

use http::Extensions;
use reqwest_middleware::{Middleware, Next};

use crate::cache::TokenCache;
use crate::layer::{BearerAuthLayer, ExtraHeaders};

/// reqwest-middleware [`Middleware`] that adds a bearer token from a shared [`TokenCache`] and
/// the extra headers of a [`BearerAuthLayer`]. See the [module docs](crate::reqwest).
///
/// Cheap to clone; every clone, and the layer it was made from, shares one cache.
#[derive(Clone)]
pub struct BearerAuthMiddleware {
    cache: TokenCache,
    headers: ExtraHeaders,
}

impl BearerAuthMiddleware {
    /// A middleware with the token cache and the extra headers of `layer`.
    pub fn new(layer: &BearerAuthLayer) -> Self {
        BearerAuthMiddleware {
            cache: layer.cache.clone(),
            headers: layer.headers.clone(),
        }
    }

    /// The shared token cache.
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }
}

impl From<&BearerAuthLayer> for BearerAuthMiddleware {
    fn from(layer: &BearerAuthLayer) -> Self {
        Self::new(layer)
    }
}

impl From<BearerAuthLayer> for BearerAuthMiddleware {
    fn from(layer: BearerAuthLayer) -> Self {
        BearerAuthMiddleware {
            cache: layer.cache,
            headers: layer.headers,
        }
    }
}

#[async_trait::async_trait]
impl Middleware for BearerAuthMiddleware {
    async fn handle(
        &self,
        mut request: ::reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<::reqwest::Response> {
        let token = self
            .cache
            .wait_for_header()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        self.headers
            .insert_with_authorization(request.headers_mut(), token);
        next.run(request, extensions).await
    }
}

impl fmt::Debug for BearerAuthMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuthMiddleware")
            .field("cache", &self.cache)
            .field("headers", &self.headers)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BoxFuture, Error, Token, TokenSource};
    use std::time::Duration;

    struct Static;

    impl TokenSource for Static {
        fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
            Box::pin(async { Token::bearer("t0k3n", Some(Duration::from_secs(3600))) })
        }
    }

    #[test]
    fn shares_the_layers_cache_and_headers_and_hides_their_values() {
        let layer = BearerAuthLayer::new(Static)
            .with_header("x-api-key", "my-api-key")
            .unwrap();
        let middleware = BearerAuthMiddleware::from(&layer);
        assert!(middleware.headers.ptr_eq(&layer.headers));
        let headers = middleware.headers.names_and_values();
        assert_eq!(headers[0].0, "x-api-key");
        assert!(headers[0].1.is_sensitive());
        let debug = format!("{middleware:?}");
        assert!(debug.contains("x-api-key"));
        assert!(!debug.contains("my-api-key"));
    }
}
