//! OAuth2 client-credentials authentication for any tower HTTP or gRPC client.
//!
//! An API such as Floriday's gives an application a client id, a client secret and an API key:
//! the id and secret are exchanged at an OAuth2 token endpoint (RFC 6749 §4.4) for an access
//! token, and every API call carries `Authorization: Bearer <token>` and `X-Api-Key: <key>`.
//! [`BearerAuthLayer`] does all of it for any `tower::Service<http::Request<B>>`: a hyper-util
//! client, a tonic `Channel`, a `ServiceBuilder` stack.
//!
//! ```no_run
//! use tower::ServiceBuilder;
//! use tower_client_credentials::{BearerAuthLayer, ClientCredentials};
//! # use http_body_util::Full; use bytes::Bytes;
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # let hyper_client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
//! #     .build_http::<Full<Bytes>>();
//! # let api_key = "api-key";
//! let credentials = ClientCredentials::builder()
//!     .issuer("https://idm.staging.floriday.io/oauth2/ausmw6b47z1BnlHkw0h7")? // RFC 8414 discovery
//!     // or .token_endpoint("https://idm.staging.floriday.io/oauth2/ausmw6b47z1BnlHkw0h7/v1/token")?
//!     .client_id("my-client-id")
//!     .client_secret("my-client-secret")
//!     .scopes(["role:app", "organization:read"])
//!     .build()?;
//!
//! let client = ServiceBuilder::new()
//!     .layer(BearerAuthLayer::new(credentials).with_header("x-api-key", api_key)?)
//!     .service(hyper_client);
//! # let _ = client;
//! # Ok(())
//! # }
//! ```
//!
//! # What it guarantees
//!
//! * **One token request** however many requests race for an expired token; every clone of
//!   the layer and its services shares one [`TokenCache`].
//! * **No needless waiting**: a token is refreshed ahead of expiry while the old one keeps
//!   serving; only a request that finds no valid token waits.
//! * **A cheap hot path**: with a valid token, a request costs a lock-free load, a coarse clock
//!   read and the header inserts: no allocation, lock, await, or write to memory shared with
//!   other services.
//! * **Bounded failure**: a failing token endpoint gets one attempt per backoff step, honouring
//!   `Retry-After`; errors are typed ([`ErrorKind`]) and never contain a secret, token or key.
//!
//! # Modules
//!
//! * [`layer`]: [`BearerAuthLayer`], [`BearerAuth`], [`ResponseFuture`](layer::ResponseFuture).
//! * [`retry`]: [`RetryUnauthorizedLayer`](retry::RetryUnauthorizedLayer), one retry with a
//!   fresh token when the API rejects the one sent.
//! * [`audience`]: [`MultiAudienceLayer`], one client for several APIs, a token cache per
//!   credential set.
//! * [`cache`]: [`TokenCache`], refresh and failure behaviour.
//! * [`client_credentials`]: [`ClientCredentials`], the token endpoint client, with discovery;
//!   [`SecretSource`]s for a secret that rotates.
//! * [`source`]: the [`TokenSource`] trait for tokens from elsewhere.
//! * `testing` (feature `test-util`): a real authorization server on loopback.
//! * `reqwest` (feature `reqwest`): the middleware for reqwest.
//! * `store` (feature `store`, `redis`): a token store shared by the replicas of a service.
//!
//! # Cargo features
//!
//! * `rustls` (default): the built-in HTTPS client for token and discovery requests.
//! * `test-util`: the `testing` module.
//! * `metrics`: cache metrics through the `metrics` facade (names in `cache::metric`).
//! * `reqwest`: `reqwest::BearerAuthMiddleware`, the same cache and headers for a
//!   `reqwest-middleware` client.
//! * `jwt-client-auth`: `client_secret_jwt` and `private_key_jwt` client authentication
//!   (RFC 7523).
//! * `store`: [`store::TokenStore`], a second cache level shared by processes (one token
//!   request per expiry for a whole fleet).
//! * `redis`: `store::RedisStore`, that store on Redis or a Redis Cluster.
//! * `dpop`: DPoP (RFC 9449) sender-constrained tokens: the `dpop` module (`DpopKey`,
//!   `ClientCredentialsBuilder::dpop`, `BearerAuthLayer::dpop`).
//! * `mtls`: mutual-TLS client authentication and certificate-bound tokens (RFC 8705): the
//!   `mtls` module (`ClientIdentity`, `ClientCredentialsBuilder::tls_client_auth`).
//! * `tonic`: token errors carry a `tonic::Status` (`Unauthenticated` or `Unavailable`) in their
//!   source chain, so gRPC callers see the right code; see `Error::grpc_status`. The retry on
//!   401 resends `tonic::body::Body` requests.
//! * `axum`: the retry on 401 resends `axum::body::Body` requests.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[doc(hidden)]
pub mod __fuzz;
pub mod audience;
pub mod cache;
pub mod client_credentials;
mod coarse_clock;
#[cfg(feature = "dpop")]
pub mod dpop;
mod error;
mod http;
pub mod layer;
#[cfg(feature = "mtls")]
pub mod mtls;
mod oauth;
pub mod retry;
mod secret_header;
pub mod source;
#[cfg(feature = "store")]
pub mod store;
mod time;
mod token;

#[cfg(feature = "reqwest")]
pub mod reqwest;
#[cfg(feature = "test-util")]
pub mod testing;

pub use crate::audience::MultiAudienceLayer;
pub use crate::cache::{TokenCache, TokenCacheBuilder, TokenState, TokenStatus};
pub use crate::client_credentials::{
    ClientCredentials, ClientCredentialsBuilder, CredentialSet, SecretSource,
};
pub use crate::error::{BoxError, Error, ErrorKind, OAuthError};
pub use crate::layer::{BearerAuth, BearerAuthLayer};
pub use crate::oauth::client_auth::{ClientAuthMethod, JwtSigningAlgorithm};
#[cfg(feature = "reqwest")]
pub use crate::reqwest::BearerAuthMiddleware;
pub use crate::source::{BoxFuture, TokenSource};
pub use crate::token::Token;
