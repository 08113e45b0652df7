//! The per-request side of DPoP: a proof on every request that carries a DPoP-bound token, and
//! the nonces of the responses.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::DpopKey;
use crate::error::{BoxError, Error};
use crate::layer::{BearerAuth, BearerAuthLayer};
use crate::retry::{RejectionPredicate, RetryUnauthorized, RetryUnauthorizedLayer};
use crate::TokenCache;

/// The `DPoP` request header.
pub(crate) static DPOP: HeaderName = HeaderName::from_static("dpop");

/// Layer for DPoP-bound tokens (RFC 9449): every request gets `Authorization: DPoP <token>`
/// from the shared cache and a `DPoP` header with a fresh proof for its method and URI, bound
/// to the token by `ath`; the `DPoP-Nonce` of every response is kept for the next proof to that
/// origin. Made by [`BearerAuthLayer::dpop`].
///
/// The key must be the one the token was bound to: give the same [`DpopKey`] to
/// [`ClientCredentialsBuilder::dpop`](crate::ClientCredentialsBuilder::dpop). When the server
/// answers the token request with a plain Bearer token (it does not support DPoP), requests
/// carry `Authorization: Bearer` and no proof.
///
/// A proof is signed per request by design (ES256: tens of microseconds, see the crate's
/// `dpop` bench); everything else is the bearer layer's hot path.
///
/// With [`retry_on_unauthorized`](Self::retry_on_unauthorized), a request the API rejects with
/// `WWW-Authenticate: DPoP error="use_dpop_nonce"` is sent once more with the nonce the
/// rejection carried (and a rejected token is replaced, as for bearer tokens). Without it, the
/// rejection goes back to the caller and the nonce is used from the next request on.
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
#[derive(Clone)]
pub struct DpopAuthLayer {
    auth: BearerAuthLayer,
    proof: DpopProofLayer,
}

impl BearerAuthLayer {
    /// Sends the tokens of this layer as DPoP-bound tokens with a proof signed by `key` on every
    /// request; see [`DpopAuthLayer`]. Needs the cargo feature `dpop`.
    pub fn dpop(self, key: DpopKey) -> DpopAuthLayer {
        DpopAuthLayer {
            auth: self,
            proof: DpopProofLayer { key, origin: None },
        }
    }
}

impl DpopAuthLayer {
    /// The origin (`https://host[:port]`) to put in `htu` for requests whose URI is only a
    /// path: a tonic `Channel` adds its origin after this layer. Absolute request URIs (hyper,
    /// axum clients) keep their own.
    pub fn origin(mut self, origin: impl AsRef<str>) -> Result<Self, Error> {
        let uri: Uri = origin.as_ref().parse().map_err(|_| {
            Error::config("the DPoP origin is not a URI; give `https://host[:port]`")
        })?;
        match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) if matches!(uri.path(), "" | "/") => {
                self.proof.origin = Some((scheme.clone(), authority.clone()));
                Ok(self)
            }
            _ => Err(Error::config(
                "the DPoP origin must be a scheme and a host, e.g. `https://api.example:8443`, \
                 with no path",
            )),
        }
    }

    /// Retries a request once when the API asks for a DPoP nonce or rejects the token; see
    /// [`RetryUnauthorizedLayer`]. The body type must be `Clone`.
    pub fn retry_on_unauthorized(self) -> DpopRetryLayer {
        DpopRetryLayer {
            retry: self.auth.retry_on_unauthorized(),
            proof: self.proof,
        }
    }

    /// The shared token cache.
    pub fn cache(&self) -> &TokenCache {
        self.auth.cache()
    }

    /// The DPoP key.
    pub fn key(&self) -> &DpopKey {
        &self.proof.key
    }
}

impl<S> Layer<S> for DpopAuthLayer {
    type Service = BearerAuth<DpopProof<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        self.auth.layer(self.proof.layer(inner))
    }
}

impl fmt::Debug for DpopAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopAuthLayer")
            .field("auth", &self.auth)
            .field("key", &self.proof.key)
            .finish()
    }
}

/// [`DpopAuthLayer`] that also retries once on a nonce challenge or a rejected token; made by
/// [`DpopAuthLayer::retry_on_unauthorized`].
#[derive(Clone)]
pub struct DpopRetryLayer {
    retry: RetryUnauthorizedLayer,
    proof: DpopProofLayer,
}

impl DpopRetryLayer {
    /// What counts as a rejected token; see [`RetryUnauthorizedLayer::retry_if`]. A nonce
    /// challenge is always retried.
    pub fn retry_if(mut self, rejected: RejectionPredicate) -> Self {
        self.retry = self.retry.retry_if(rejected);
        self
    }
}

impl<S> Layer<S> for DpopRetryLayer {
    type Service = RetryUnauthorized<DpopProof<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        self.retry.layer(self.proof.layer(inner))
    }
}

impl fmt::Debug for DpopRetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopRetryLayer")
            .field("retry", &self.retry)
            .field("key", &self.proof.key)
            .finish()
    }
}

/// Makes [`DpopProof`] services (the inner half of [`DpopAuthLayer`]).
#[derive(Clone)]
struct DpopProofLayer {
    key: DpopKey,
    origin: Option<(Scheme, Authority)>,
}

impl<S> Layer<S> for DpopProofLayer {
    type Service = DpopProof<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DpopProof {
            inner,
            key: self.key.clone(),
            origin: self.origin.clone(),
        }
    }
}

/// The service under [`BearerAuth`] in a [`DpopAuthLayer`] stack: adds the proof to a request
/// whose `Authorization` is a DPoP token, and keeps the nonces of the responses. A request
/// with any other `Authorization` passes through untouched.
#[derive(Clone)]
pub struct DpopProof<S> {
    inner: S,
    key: DpopKey,
    origin: Option<(Scheme, Authority)>,
}

impl<S> DpopProof<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The token of a DPoP `Authorization` value (scheme compared case-insensitively).
fn dpop_token(value: &HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_at_checked(5)?;
    scheme.eq_ignore_ascii_case("dpop ").then_some(token)
}

impl<S, B, RB> Service<Request<B>> for DpopProof<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = DpopResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let Some(token) = request.headers().get(AUTHORIZATION).and_then(dpop_token) else {
            return DpopResponseFuture::plain(self.inner.call(request));
        };
        let uri = request.uri();
        let origin = match (uri.scheme(), uri.authority(), &self.origin) {
            (Some(scheme), Some(authority), _) => (scheme.clone(), authority.clone()),
            (_, _, Some(origin)) => origin.clone(),
            _ => {
                return DpopResponseFuture::failed(Error::config(
                    "a DPoP proof needs the request's absolute URI (scheme and host); for a \
                     client that sends only the path (a tonic Channel), set the origin with \
                     `DpopAuthLayer::origin`",
                ))
            }
        };
        let proof = self.key.proof_parts(
            request.method(),
            origin.0.as_str(),
            origin.1.as_str(),
            uri.path(),
            Some(token),
        );
        match proof {
            Ok(proof) => {
                request.headers_mut().insert(DPOP.clone(), proof);
                DpopResponseFuture {
                    kind: Kind::Bound {
                        future: self.inner.call(request),
                        key: self.key.clone(),
                        origin,
                    },
                }
            }
            Err(error) => DpopResponseFuture::failed(error),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for DpopProof<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopProof")
            .field("inner", &self.inner)
            .field("key", &self.key)
            .finish()
    }
}

pin_project! {
    /// Response future of [`DpopProof`]: stores the response's `DPoP-Nonce` for its origin.
    pub struct DpopResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Plain { #[pin] future: F },
        Bound { #[pin] future: F, key: DpopKey, origin: (Scheme, Authority) },
        Failed { error: Option<Error> },
    }
}

impl<F> DpopResponseFuture<F> {
    fn plain(future: F) -> Self {
        DpopResponseFuture {
            kind: Kind::Plain { future },
        }
    }

    fn failed(error: Error) -> Self {
        DpopResponseFuture {
            kind: Kind::Failed { error: Some(error) },
        }
    }
}

impl<F, RB, E> Future for DpopResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Plain { future } => future.poll(cx).map_err(Into::into),
            KindProj::Bound {
                future,
                key,
                origin,
            } => {
                let response = ready!(future.poll(cx)).map_err(Into::into)?;
                key.nonces()
                    .update_from(origin.0.as_str(), origin.1.as_str(), response.headers());
                Poll::Ready(Ok(response))
            }
            KindProj::Failed { error } => {
                Poll::Ready(Err(Box::new(error.take().unwrap_or_else(|| {
                    Error::config("the response future was polled after it completed")
                }))))
            }
        }
    }
}

impl<F> fmt::Debug for DpopResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopResponseFuture").finish_non_exhaustive()
    }
}
