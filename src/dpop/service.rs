//! The DPoP stage of the request pipeline: the proof on every request that carries a
//! DPoP-bound token (called by the bind stage, `layer/bind.rs`), and the nonces of the
//! responses. The layer names users know (`DpopAuthLayer`, `DpopRetryLayer`, `DpopProof`) are
//! the one pipeline's types under their old names.

use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Method, Uri};
use secrecy::ExposeSecret as _;

use super::DpopKey;
use crate::error::Error;
use crate::layer::BearerAuthLayer;
use crate::retry::RetryUnauthorizedLayer;
use crate::token::Token;

/// The `DPoP` request header.
pub(crate) static DPOP: HeaderName = HeaderName::from_static("dpop");

/// A [`BearerAuthLayer`] with a DPoP key (RFC 9449): every request gets
/// `Authorization: DPoP <token>` from the shared cache and a `DPoP` header with a fresh proof
/// for its method and URI, bound to the token by `ath`; the `DPoP-Nonce` of every response is
/// kept for the next proof to that origin. Made by [`BearerAuthLayer::dpop`].
///
/// The proof is a stage of the one layer, not a type of its own: this name is the
/// [`BearerAuthLayer`] it always was to its users, and every method of that layer
/// ([`with_header`](BearerAuthLayer::with_header), [`cache`](BearerAuthLayer::cache),
/// [`retry_on_unauthorized`](BearerAuthLayer::retry_on_unauthorized)) works in any order.
///
/// The key must be the one the token was bound to: give the same [`DpopKey`] to
/// [`ClientCredentialsBuilder::dpop`](crate::ClientCredentialsBuilder::dpop). A layer made with
/// [`BearerAuthLayer::new`] over `ClientCredentials` whose key is another one (or that have
/// none) refuses every request in `poll_ready` with an
/// [`ErrorKind::Configuration`](crate::ErrorKind::Configuration) error naming the mismatch, and
/// sends nothing. When the server answers the token request with a plain Bearer token (it
/// does not support DPoP), requests carry `Authorization: Bearer` and no proof.
///
/// A proof is signed per request by design (ES256: tens of microseconds, see the crate's
/// `dpop` bench); everything else is the bearer layer's hot path.
///
/// # Nonce challenges from the API
///
/// RFC 9449 §9 has the client answer an API's nonce challenge (`401` with
/// `WWW-Authenticate: DPoP error="use_dpop_nonce"` and a `DPoP-Nonce`) by sending the request
/// again with the nonce. That means sending the body again, so it is the job of
/// [`retry_on_unauthorized`](BearerAuthLayer::retry_on_unauthorized): it sends the request
/// once more with the new nonce and keeps the token (and replaces a rejected token, as for
/// bearer tokens), for every [`ReplayableBody`](crate::retry::ReplayableBody) (tonic's and
/// axum's included). A challenge without a `DPoP-Nonce` is not retried: a second attempt
/// would carry no nonce either. **The layer alone does not retry**: the challenge goes back to
/// the caller, the nonce is stored, and the next request to that origin carries it.
///
/// # Requests that carry only a path
///
/// `htu` is the request's scheme, host and path. A tonic `Channel` adds its origin after this
/// layer: name it with [`origin`](BearerAuthLayer::origin), or the request fails with a
/// configuration error and is not sent. User info in the URI (`user:password@`) never goes into
/// `htu`, nor do the query and fragment (RFC 9449 §4.2).
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use http::{Request, Response};
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_client_credentials::dpop::DpopKey;
/// use tower_client_credentials::{BearerAuthLayer, BoxFuture, Error, Token, TokenSource};
///
/// # struct Bound;
/// # impl TokenSource for Bound {
/// #     fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
/// #         Box::pin(async { Token::dpop("t0k3n", Some(Duration::from_secs(3600))) })
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let key = DpopKey::generate()?;
/// // In real code: ClientCredentials::builder()...dpop(key.clone()).build()?
/// let layer = BearerAuthLayer::new(Bound).dpop(key);
///
/// let mut client = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|request: Request<String>| async move {
///         assert_eq!(request.headers()["authorization"], "DPoP t0k3n");
///         assert_eq!(request.headers()["dpop"].as_bytes().split(|b| *b == b'.').count(), 3);
///         Ok::<_, Infallible>(Response::new(String::new()))
///     });
///
/// let request = Request::get("https://api.example/v1/items?page=2").body(String::new())?;
/// client.ready().await?.call(request).await?;
/// # Ok(())
/// # }
/// ```
pub type DpopAuthLayer = BearerAuthLayer;

/// [`DpopAuthLayer`] that also retries once on a nonce challenge or a rejected token; made by
/// [`BearerAuthLayer::retry_on_unauthorized`] on a layer with a DPoP key. The retry layer of
/// every layer: [`retry_if`](RetryUnauthorizedLayer::retry_if) takes any closure, and
/// [`replay_limit`](RetryUnauthorizedLayer::replay_limit) is there too.
pub type DpopRetryLayer = RetryUnauthorizedLayer;

/// The DPoP stage was a service of its own under [`BearerAuth`](crate::BearerAuth); it is now a
/// stage inside it, and this alias keeps the type names written for it compiling:
/// `BearerAuth<DpopProof<Channel>>` is `BearerAuth<Channel>`.
pub type DpopProof<S> = S;

/// The response future of a layer with a DPoP key: the one
/// [`ResponseFuture`](crate::layer::ResponseFuture) of the pipeline, which keeps the response's
/// `DPoP-Nonce`.
pub type DpopResponseFuture<F> = crate::layer::ResponseFuture<F>;

impl BearerAuthLayer {
    /// Sends the tokens of this layer as DPoP-bound tokens with a proof signed by `key` on every
    /// request; see [`DpopAuthLayer`]. Needs the cargo feature `dpop`.
    ///
    /// Give the same key to [`ClientCredentialsBuilder::dpop`](crate::ClientCredentialsBuilder::dpop):
    /// over `ClientCredentials` with another key (RFC 7638 thumbprints compared) or none, the
    /// layer's services refuse every request in `poll_ready` with a configuration error.
    pub fn dpop(mut self, key: DpopKey) -> Self {
        let stage = self.binding.dpop.get_or_insert_with(ProofStage::default);
        stage.key = Some(key);
        self
    }

    /// The origin (`https://host[:port]`) to put in `htu` for requests whose URI is only a
    /// path: a tonic `Channel` adds its origin after this layer. Absolute request URIs (hyper,
    /// axum clients) keep their own. Needs the cargo feature `dpop`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_client_credentials::{BearerAuthLayer, BoxFuture, Error, Token, TokenSource};
    /// use tower_client_credentials::dpop::DpopKey;
    /// # struct Bound;
    /// # impl TokenSource for Bound {
    /// #     fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
    /// #         Box::pin(async { Token::dpop("t", Some(Duration::from_secs(60))) })
    /// #     }
    /// # }
    /// let layer = BearerAuthLayer::new(Bound)
    ///     .dpop(DpopKey::generate()?)
    ///     .origin("https://grpc.example:8443")?;
    /// assert!(BearerAuthLayer::new(Bound).origin("https://grpc.example/v1").is_err());
    /// # let _ = layer;
    /// # Ok::<(), Error>(())
    /// ```
    pub fn origin(mut self, origin: impl AsRef<str>) -> Result<Self, Error> {
        let uri: Uri = origin.as_ref().parse().map_err(|_| {
            Error::config("the DPoP origin is not a URI; give `https://host[:port]`")
        })?;
        match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority))
                if matches!(uri.path(), "" | "/") && !authority.as_str().contains('@') =>
            {
                let stage = self.binding.dpop.get_or_insert_with(ProofStage::default);
                stage.origin = Some((scheme.clone(), authority.clone()));
                Ok(self)
            }
            _ => Err(Error::config(
                "the DPoP origin must be a scheme and a host, e.g. `https://api.example:8443`, \
                 with no path and no user info",
            )),
        }
    }

    /// The DPoP key of this layer, if it has one ([`dpop`](Self::dpop)).
    pub fn dpop_key(&self) -> Option<&DpopKey> {
        self.binding.dpop.as_ref()?.key.as_ref()
    }
}

/// The DPoP half of a layer's bind stage: the key, and the origin for path-only requests.
#[derive(Clone, Default)]
pub(crate) struct ProofStage {
    pub(crate) key: Option<DpopKey>,
    origin: Option<(Scheme, Authority)>,
}

impl ProofStage {
    pub(crate) fn new(key: DpopKey) -> Self {
        ProofStage {
            key: Some(key),
            origin: None,
        }
    }

    fn key(&self) -> Result<&DpopKey, Error> {
        self.key.as_ref().ok_or_else(|| {
            Error::config(
                "the token is DPoP-bound and the layer has an origin for DPoP proofs but no DPoP \
                 key; add `.dpop(key)` with the key given to `ClientCredentialsBuilder::dpop`; \
                 the request was not sent",
            )
        })
    }

    /// Refuses a DPoP-bound token this stage cannot prove.
    pub(crate) fn check(&self, token: &Token) -> Result<(), Error> {
        let key = self.key()?;
        crate::layer::check_token_binding(token, key.thumbprint())
    }

    /// Signs and inserts the proof for a request of `method` to `uri` carrying `token`.
    pub(crate) fn prove(
        &self,
        token: &Token,
        method: &Method,
        uri: &Uri,
        headers: &mut HeaderMap,
    ) -> Result<NonceWatch, Error> {
        let key = self.key()?;
        let (scheme, authority) = match (uri.scheme(), uri.authority(), &self.origin) {
            (Some(scheme), Some(authority), _) => (scheme, authority),
            (_, _, Some((scheme, authority))) => (scheme, authority),
            _ => {
                return Err(Error::config(
                    "a DPoP proof needs the request's absolute URI (scheme and host); for a \
                     client that sends only the path (a tonic Channel), set the origin with \
                     `.origin(..)` (`DpopAuthLayer::origin`); the request was not sent",
                ))
            }
        };
        let proof = key.proof_parts(
            method,
            scheme.as_str(),
            authority.as_str(),
            uri.path(),
            Some(token.secret().expose_secret()),
        )?;
        headers.insert(DPOP.clone(), proof);
        Ok(NonceWatch {
            key: key.clone(),
            scheme: scheme.clone(),
            authority: authority.clone(),
        })
    }

    /// [`prove`](Self::prove) with the URI in parts.
    #[cfg(feature = "reqwest")]
    pub(crate) fn prove_parts(
        &self,
        token: &Token,
        method: &Method,
        (scheme, authority, path): (&str, &str, &str),
        headers: &mut HeaderMap,
    ) -> Result<NonceWatch, Error> {
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(super::nonce::host_port(authority))
            .path_and_query(if path.is_empty() { "/" } else { path })
            .build()
            .map_err(|_| {
                Error::config("a DPoP proof needs a URL with a host; the request was not sent")
            })?;
        self.prove(token, method, &uri, headers)
    }
}

/// Keeps the `DPoP-Nonce` of the response to a proven request, for its origin.
pub(crate) struct NonceWatch {
    key: DpopKey,
    scheme: Scheme,
    authority: Authority,
}

impl NonceWatch {
    #[inline]
    pub(crate) fn observe(&self, headers: &HeaderMap) {
        self.key
            .nonces()
            .update_from(self.scheme.as_str(), self.authority.as_str(), headers);
    }
}
