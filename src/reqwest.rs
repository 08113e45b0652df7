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
//! middleware from a layer with a DPoP key ([`BearerAuthLayer::dpop`], feature `dpop`) with
//! [`BearerAuthMiddleware::dpop`]: every request then carries `Authorization: DPoP <token>`
//! and a fresh `DPoP` proof for its method and URL, the `DPoP-Nonce` of every response is kept
//! for the next proof to that origin, and an API's nonce challenge (`401` with
//! `WWW-Authenticate: DPoP error="use_dpop_nonce"` and a `DPoP-Nonce`) is answered by sending
//! the request once more with the new nonce, when its body can be cloned (not a stream). A
//! middleware made from a layer without a DPoP key does not send a DPoP-bound token at all:
//! the request fails with an [`ErrorKind::Configuration`](crate::ErrorKind::Configuration)
//! error that says so.
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
use crate::layer::{BearerAuthLayer, Binding, ExtraHeaders};

/// reqwest-middleware [`Middleware`] that adds a token from a shared [`TokenCache`], the extra
/// headers of a [`BearerAuthLayer`] and, when the layer has a DPoP key, a proof per request.
/// See the [module docs](crate::reqwest).
///
/// The stages are the layer's own (take the token, bind it, insert the headers, answer a
/// DPoP nonce challenge once): one implementation for tower and reqwest. Cheap to clone; every
/// clone, and the layer it was made from, shares one cache.
#[derive(Clone)]
pub struct BearerAuthMiddleware {
    cache: TokenCache,
    headers: ExtraHeaders,
    binding: Binding,
    /// Why the layer cannot work, if it cannot: every request fails with it, unsent.
    refused: Option<Error>,
    /// Made from a retry layer: what counts as a rejected token, retried once with a new one.
    rejected: Option<crate::retry::SharedPredicate>,
}

impl BearerAuthMiddleware {
    /// A middleware with the token cache, the extra headers and the DPoP key (if it has one) of
    /// `layer`. Without a DPoP key it sends bearer tokens only, and refuses a DPoP-bound token.
    pub fn new(layer: &BearerAuthLayer) -> Self {
        BearerAuthMiddleware {
            cache: layer.cache.clone(),
            headers: layer.headers.clone(),
            binding: layer.binding.clone(),
            refused: layer.refusal(),
            rejected: None,
        }
    }

    /// A middleware with the token cache, extra headers and DPoP key of `layer` (made with
    /// [`BearerAuthLayer::dpop`]): a DPoP-bound token goes out with a fresh proof per request
    /// (see the [module docs](crate::reqwest#dpop-bound-tokens)). The same as
    /// [`new`](Self::new), under the name that says what it is for. Needs the cargo feature
    /// `dpop`.
    #[cfg(feature = "dpop")]
    pub fn dpop(layer: &crate::dpop::DpopAuthLayer) -> Self {
        Self::new(layer)
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
        Self::new(&layer)
    }
}

/// A middleware with the retry stage of `layer` too: a request whose token the API rejects
/// (the layer's [`retry_if`](crate::retry::RetryUnauthorizedLayer::retry_if), HTTP 401 by
/// default) is sent once more with a fresh token, when its body can be cloned (not a stream).
///
/// ```
/// # use std::time::Duration;
/// # use tower_client_credentials::{BearerAuthLayer, BoxFuture, Error, Token, TokenSource};
/// use tower_client_credentials::reqwest::BearerAuthMiddleware;
/// use tower_client_credentials::retry::is_invalid_token;
/// # struct Static;
/// # impl TokenSource for Static {
/// #     fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
/// #         Box::pin(async { Token::bearer("t", Some(Duration::from_secs(60))) })
/// #     }
/// # }
///
/// let layer = BearerAuthLayer::new(Static).retry_on_unauthorized().retry_if(is_invalid_token);
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(BearerAuthMiddleware::from(&layer))
///     .build();
/// # let _ = client;
/// ```
impl From<&crate::retry::RetryUnauthorizedLayer> for BearerAuthMiddleware {
    fn from(layer: &crate::retry::RetryUnauthorizedLayer) -> Self {
        BearerAuthMiddleware {
            rejected: Some(layer.rejection_predicate().clone()),
            ..Self::new(layer.get_ref())
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
        let failed = reqwest_middleware::Error::middleware;
        if let Some(refused) = &self.refused {
            return Err(failed(refused.clone()));
        }
        // Take the token (waiting for the shared refresh), then the pipeline's stages.
        let token = self.cache.wait_for_token().await.map_err(failed)?;
        let proof = self.binding.needs_proof(&token).map_err(failed)?;
        self.headers
            .insert_with_authorization(request.headers_mut(), token.header().clone());
        if !proof && self.rejected.is_none() {
            return next.run(request, extensions).await;
        }
        // A second attempt may follow (a DPoP nonce challenge, a rejected token): it needs a
        // copy of the request, which a streamed body cannot give.
        let again = request.try_clone();
        let watch = match proof {
            true => Some(self.prove(&token, &mut request)?),
            false => None,
        };
        let response = next.clone().run(request, extensions).await?;
        if let Some(watch) = &watch {
            watch.observe(response.headers());
        }
        let Some(mut again) = again else {
            return Ok(response);
        };
        let sent = crate::retry::Sent {
            cache: self.cache.clone(),
            header: token.header().clone(),
            proof,
        };
        let never_rejected = |_: http::StatusCode, _: &http::HeaderMap| false;
        let rejected: &(dyn Fn(http::StatusCode, &http::HeaderMap) -> bool + Send + Sync) =
            match &self.rejected {
                Some(rejected) => &**rejected,
                None => &never_rejected,
            };
        let verdict = crate::retry::judge(&sent, response.status(), response.headers(), rejected);
        let token = match verdict {
            crate::retry::Verdict::Return => return Ok(response),
            crate::retry::Verdict::Resend => token,
            crate::retry::Verdict::Refresh => {
                let token = self.cache.wait_for_token().await.map_err(failed)?;
                self.headers
                    .insert_with_authorization(again.headers_mut(), token.header().clone());
                token
            }
        };
        let watch = match self.binding.needs_proof(&token).map_err(failed)? {
            true => Some(self.prove(&token, &mut again)?),
            false => None,
        };
        drop(response);
        let response = next.run(again, extensions).await?;
        if let Some(watch) = &watch {
            watch.observe(response.headers());
        }
        Ok(response)
    }
}

impl BearerAuthMiddleware {
    /// The bind stage for a reqwest request: the URL's scheme, `host[:port]` (no user info:
    /// `htu` never carries it) and path.
    fn prove(
        &self,
        token: &crate::Token,
        request: &mut ::reqwest::Request,
    ) -> Result<crate::layer::Watch, reqwest_middleware::Error> {
        let failed = reqwest_middleware::Error::middleware;
        let url = request.url();
        let host = url.host_str().ok_or_else(|| {
            failed(Error::config(
                "a DPoP proof needs a URL with a host; the request was not sent",
            ))
        })?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let scheme = url.scheme().to_string();
        let path = url.path().to_string();
        let method = request.method().clone();
        self.binding
            .prove_parts(
                token,
                &method,
                (&scheme, &authority, &path),
                request.headers_mut(),
            )
            .map_err(failed)
    }
}

impl fmt::Debug for BearerAuthMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuthMiddleware")
            .field("cache", &self.cache)
            .field("headers", &self.headers)
            .field("binding", &self.binding)
            .field("retries_rejections", &self.rejected.is_some())
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
