//! [`BearerAuthLayer`]: adds `Authorization: Bearer <token>` and fixed headers such as an API key
//! to every request, with tokens from a shared [`TokenCache`](crate::TokenCache).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_client_credentials::{BearerAuthLayer, BoxFuture, Error, Token, TokenSource};
//!
//! # struct Static;
//! # impl TokenSource for Static {
//! #     fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
//! #         Box::pin(async { Token::bearer("t0k3n", Some(Duration::from_secs(3600))) })
//! #     }
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // In real code the source is `ClientCredentials::builder()...build()?`.
//! let layer = BearerAuthLayer::new(Static).with_header("x-api-key", "my-api-key")?;
//!
//! let mut client = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|request: Request<String>| async move {
//!         assert_eq!(request.headers()["authorization"], "Bearer t0k3n");
//!         assert_eq!(request.headers()["x-api-key"], "my-api-key");
//!         assert!(request.headers()["authorization"].is_sensitive());
//!         Ok::<_, Infallible>(Response::new(String::new()))
//!     });
//!
//! let response = client.ready().await?.call(Request::new(String::new())).await?;
//! # let _ = response;
//! # Ok(())
//! # }
//! ```
//!
//! # Waiting for a token, and failures
//!
//! A request that finds no valid token waits in `poll_ready` (before the inner service is
//! polled, so no slot of a tonic `Channel` or a concurrency limit is held meanwhile) for the one
//! refresh shared by every clone. A token failure is not returned from `poll_ready` (tower reads
//! that as "discard this service"): the service reports ready, and the next `call` returns a
//! future that fails at once with the crate's [`Error`](crate::Error), boxed into
//! [`BoxError`](crate::BoxError). Downcast to read its [`ErrorKind`](crate::ErrorKind). The inner
//! service's own errors pass through unchanged (boxed).
//!
//! # Ready, then called later
//!
//! Readiness holds no token: `call` checks the cache again, so a service made ready and called
//! later (a balancer, a ready cache) sends the token valid at `call`, never one that has expired
//! or been [invalidated](crate::TokenCache::invalidate) since. If no valid token is cached then,
//! the request is not sent and its future fails at once with
//! [`ErrorKind::NoValidTokenAtCall`](crate::ErrorKind::NoValidTokenAtCall), a transient error:
//! `call` never waits; driving the service ready again waits for the refresh.
//!
//! # Secrets in memory
//!
//! The token and the extra header values (the API key) are kept in zeroizing memory: the token
//! text as a `SecretString`, the prebuilt header values behind `bytes::Bytes` owners that wipe
//! the bytes when the last copy is dropped. A request carrying them keeps them alive until it is
//! dropped. Beyond the crate's reach: copies the HTTP client makes while sending (an HTTP/1 write
//! buffer; HPACK does not index sensitive values), the caller's own copies (a `HeaderValue`
//! passed to [`BearerAuthLayer::with_header_value`]), and request bodies.

mod bind;
mod future;
mod headers;
#[allow(clippy::module_inception)]
mod layer;
mod service;

#[cfg(feature = "dpop")]
pub(crate) use self::bind::check_token_binding;
pub(crate) use self::bind::{check_keys, Binding, Watch};
pub(crate) use self::future::Waiting;
pub(crate) use self::headers::ExtraHeaders;

pub use self::future::{ResponseFuture, ResponseHeaders};
pub use self::layer::BearerAuthLayer;
// The retry middleware lived here first; its public paths stay.
pub use self::service::BearerAuth;
pub use crate::retry::{
    is_invalid_token, is_unauthorized, RejectionPredicate, RetryUnauthorized,
    RetryUnauthorizedLayer,
};
