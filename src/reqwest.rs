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
//! # DPoP-bound tokens
//!
//! A DPoP-bound token (`token_type` `DPoP`) is useless without a proof per request. Make the
//! middleware from the [`DpopAuthLayer`](crate::dpop::DpopAuthLayer) (feature `dpop`) with
//! [`BearerAuthMiddleware::dpop`]: every request then carries `Authorization: DPoP <token>`
//! and a fresh `DPoP` proof for its method and URL, the `DPoP-Nonce` of every response is kept
//! for the next proof to that origin, and an API's nonce challenge (`401` with
//! `WWW-Authenticate: DPoP error="use_dpop_nonce"`) is answered by sending the request once
//! more with the new nonce, when its body can be cloned (not a stream). A middleware made from
//! a plain [`BearerAuthLayer`] does not send a DPoP-bound token at all: the request fails with
//! an [`ErrorKind::Configuration`](crate::ErrorKind::Configuration) error that says so.
//!
//! ```
//! # #[cfg(feature = "dpop")]
//! # {
//! use reqwest_middleware::ClientBuilder;
//! use tower_client_credentials::dpop::DpopKey;
//! use tower_client_credentials::reqwest::BearerAuthMiddleware;
//! use tower_client_credentials::{BearerAuthLayer, ClientCredentials};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let key = DpopKey::generate()?;
//! let credentials = ClientCredentials::builder()
//!     .token_endpoint("https://idp.example/oauth2/v1/token")?
//!     .client_id("my-client-id")
//!     .client_secret("my-client-secret")
//!     .dpop(key.clone())
//!     .build()?;
//! let layer = BearerAuthLayer::new(credentials).dpop(key);
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(BearerAuthMiddleware::dpop(&layer))
//!     .build();
//! # let _ = client;
//! # Ok(())
//! # }
//! # main().unwrap();
//! # }
//! ```
//!
//! # Failures
//!
//! When no token can be had, the request is not sent and
//! [`handle`](reqwest_middleware::Middleware::handle) returns
//! [`reqwest_middleware::Error::Middleware`] wrapping the crate's [`Error`]:
//! `error.downcast_ref::<tower_client_credentials::Error>()` on the inner `anyhow::Error` gives
//! its [`ErrorKind`](crate::ErrorKind).

use std::fmt;

use http::Extensions;
use reqwest_middleware::{Middleware, Next};

use crate::cache::TokenCache;
use crate::error::Error;
use crate::layer::{BearerAuthLayer, ExtraHeaders};

/// reqwest-middleware [`Middleware`] that adds a bearer token from a shared [`TokenCache`] and
/// the extra headers of a [`BearerAuthLayer`]. See the [module docs](crate::reqwest).
///
/// Cheap to clone; every clone, and the layer it was made from, shares one cache.
#[derive(Clone)]
pub struct BearerAuthMiddleware {
    cache: TokenCache,
    headers: ExtraHeaders,
    /// The key of DPoP-bound tokens; without it such a token is not sent.
    #[cfg(feature = "dpop")]
    dpop_key: Option<crate::dpop::DpopKey>,
}

impl BearerAuthMiddleware {
    /// A middleware with the token cache and the extra headers of `layer`. It sends bearer
    /// tokens only: for DPoP-bound tokens use [`dpop`](Self::dpop).
    pub fn new(layer: &BearerAuthLayer) -> Self {
        BearerAuthMiddleware {
            cache: layer.cache.clone(),
            headers: layer.headers.clone(),
            #[cfg(feature = "dpop")]
            dpop_key: None,
        }
    }

    /// A middleware with the token cache, extra headers and DPoP key of `layer`: a DPoP-bound
    /// token goes out with a fresh proof per request (see the
    /// [module docs](crate::reqwest#dpop-bound-tokens)). Needs the cargo feature `dpop`.
    #[cfg(feature = "dpop")]
    pub fn dpop(layer: &crate::dpop::DpopAuthLayer) -> Self {
        BearerAuthMiddleware {
            dpop_key: Some(layer.key().clone()),
            ..Self::new(layer.bearer())
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
            #[cfg(feature = "dpop")]
            dpop_key: None,
        }
    }
}

#[cfg(feature = "dpop")]
impl From<&crate::dpop::DpopAuthLayer> for BearerAuthMiddleware {
    fn from(layer: &crate::dpop::DpopAuthLayer) -> Self {
        Self::dpop(layer)
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
            .wait_for_token()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        self.headers
            .insert_with_authorization(request.headers_mut(), token.header().clone());
        if !token.is_dpop() {
            return next.run(request, extensions).await;
        }
        #[cfg(feature = "dpop")]
        if let Some(key) = &self.dpop_key {
            use secrecy::ExposeSecret as _;
            let token = token.secret().expose_secret();
            return dpop::send(key, token, request, extensions, next).await;
        }
        Err(reqwest_middleware::Error::middleware(Error::config(
            "the token is DPoP-bound (token_type DPoP) and needs a proof per request, which \
             this middleware cannot make: build it with `BearerAuthMiddleware::dpop` from the \
             `DpopAuthLayer` (feature `dpop`); the request was not sent",
        )))
    }
}

/// The DPoP half of the middleware: a proof per request, the nonces of the responses, and one
/// more try on a nonce challenge.
#[cfg(feature = "dpop")]
mod dpop {
    use http::Extensions;
    use reqwest_middleware::Next;

    use crate::dpop::{is_nonce_challenge, DpopKey};
    use crate::error::Error;

    /// Sends `request` (its `Authorization` already set to `DPoP <token>`) with a proof; on a
    /// nonce challenge that brought a nonce, sends it once more if its body can be cloned.
    pub(super) async fn send(
        key: &DpopKey,
        token: &str,
        mut request: ::reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<::reqwest::Response> {
        let (scheme, authority) = origin(request.url())?;
        let retry = request.try_clone();
        add_proof(key, token, (&scheme, &authority), &mut request)?;
        let response = next.clone().run(request, extensions).await?;
        let has_nonce = key
            .nonces()
            .update_from(&scheme, &authority, response.headers());
        match retry {
            Some(mut retry)
                if has_nonce && is_nonce_challenge(response.status(), response.headers()) =>
            {
                add_proof(key, token, (&scheme, &authority), &mut retry)?;
                let response = next.run(retry, extensions).await?;
                key.nonces()
                    .update_from(&scheme, &authority, response.headers());
                Ok(response)
            }
            _ => Ok(response),
        }
    }

    /// The URL's scheme and `host[:port]` (no user info: `htu` never carries it).
    fn origin(url: &::reqwest::Url) -> Result<(String, String), reqwest_middleware::Error> {
        let host = url.host_str().ok_or_else(|| {
            reqwest_middleware::Error::middleware(Error::config(
                "a DPoP proof needs a URL with a host; the request was not sent",
            ))
        })?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        Ok((url.scheme().to_string(), authority))
    }

    fn add_proof(
        key: &DpopKey,
        token: &str,
        (scheme, authority): (&str, &str),
        request: &mut ::reqwest::Request,
    ) -> Result<(), reqwest_middleware::Error> {
        let proof = key
            .proof_parts(
                request.method(),
                scheme,
                authority,
                request.url().path(),
                Some(token),
            )
            .map_err(reqwest_middleware::Error::middleware)?;
        request.headers_mut().insert("dpop", proof);
        Ok(())
    }
}

impl fmt::Debug for BearerAuthMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("BearerAuthMiddleware");
        debug
            .field("cache", &self.cache)
            .field("headers", &self.headers);
        #[cfg(feature = "dpop")]
        debug.field("dpop_key", &self.dpop_key);
        debug.finish()
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
