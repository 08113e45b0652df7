//! One client, several APIs: [`MultiAudienceLayer`] picks, for each request, the credential set
//! (audience, RFC 8707 resource, scopes) of the API it goes to, and keeps one token cache per
//! set (design rule 11: two sets never share a token).
//!
//! The set of a request is its [`CredentialSet`] request extension if it has one; else the
//! set its origin has in the table; else what the per-origin rule derives; else the default
//! (the credentials' own scopes and parameters), or a configuration error naming the origin.
//! Each set's cache is made when a request first needs it. Sets made on demand (extensions,
//! the rule) are bounded ([`MultiAudienceLayerBuilder::max_sets`]).
//!
//! With the set's token cached and fresh, a request costs a lookup by the URI's authority (a
//! `&str`, no allocation) in an immutable map, and what [`BearerAuthLayer`](crate::BearerAuthLayer)
//! costs: no lock, no allocation.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_client_credentials::audience::MultiAudienceLayer;
//! use tower_client_credentials::client_credentials::CredentialSet;
//! use tower_client_credentials::testing::AuthServer;
//! use tower_client_credentials::ClientCredentials;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # let server = AuthServer::start().await?;
//! # let token_endpoint = server.token_endpoint();
//! let credentials = ClientCredentials::builder()
//!     .token_endpoint(&token_endpoint)?
//!     .client_id(AuthServer::CLIENT_ID)
//!     .client_secret(AuthServer::CLIENT_SECRET)
//!     .build()?;
//! let layer = MultiAudienceLayer::builder(credentials)
//!     .origin("https://orders.example", CredentialSet::new().audience("https://orders.example"))
//!     .origin("https://stock.example", CredentialSet::new().resource("https://stock.example"))
//!     .refuse_unknown_origins()
//!     .header("x-api-key", "my-api-key")?
//!     .build()?;
//!
//! let mut client = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|request: Request<()>| async move {
//!         assert!(request.headers()["authorization"].to_str()?.starts_with("Bearer "));
//!         Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Response::new(()))
//!     });
//! let request = Request::get("https://orders.example/v1/orders").body(())?;
//! client.ready().await?.call(request).await?;
//! let request = Request::get("https://elsewhere.example/").body(())?;
//! assert!(client.ready().await?.call(request).await.is_err());
//! # Ok(())
//! # }
//! ```

mod future;
mod layer;
mod origin;
mod registry;
mod service;

pub use self::future::ResponseFuture;
pub use self::layer::{MultiAudienceLayer, MultiAudienceLayerBuilder, DEFAULT_MAX_SETS};
pub use self::service::MultiAudience;
pub use crate::client_credentials::CredentialSet;
