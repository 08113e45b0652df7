//! A real OAuth2 authorization server, and an API that demands its tokens, on loopback: for
//! tests and examples (feature `test-util`).
//!
//! [`AuthServer`] listens on `127.0.0.1` on a random port and serves
//!
//! * a token endpoint (`{issuer}/v1/token`, Okta's layout) that checks the grant type, the
//!   client authentication (`client_secret_basic` with RFC 6749 §2.3.1 decoding,
//!   `client_secret_post`, or with the feature `jwt-client-auth` a `client_secret_jwt`
//!   assertion; without it an assertion is `invalid_client`) and the scopes, and issues
//!   JWT-shaped tokens;
//! * authorization server metadata at the RFC 8414 and Okta well-known locations (and,
//!   on request, the OpenID ones, see [`MetadataLocation`]);
//! * scripted misbehaviour ([`Behavior`]): errors, garbage, delays, hangs, rate limits.
//!
//! It counts the token and metadata requests it answered and records every request path.
//! [`ApiServer`] answers 200 only to requests that carry a token this server issued (unexpired)
//! and the right API key. [`InProcessClient`] reaches the same server without a socket.
//!
//! # Example
//!
//! ```
//! use tower_client_credentials::testing::AuthServer;
//! use tower_client_credentials::ClientCredentials;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let server = AuthServer::start().await?;
//! let credentials = ClientCredentials::builder()
//!     .token_endpoint(&server.token_endpoint())?
//!     .client_id(AuthServer::CLIENT_ID)
//!     .client_secret(AuthServer::CLIENT_SECRET)
//!     .build()?;
//! # use tower_client_credentials::TokenSource;
//! let token = credentials.fetch_token().await?;
//! assert!(server.is_valid_token(secrecy::ExposeSecret::expose_secret(token.secret())));
//! assert_eq!(server.token_requests(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! Imports point one way, from the servers down to the data they share:
//!
//! * `auth_server` and `api_server`: [`AuthServer`] with its builder and every method tests
//!   drive it with, and [`ApiServer`];
//! * `in_process`: [`InProcessClient`];
//! * `router`: where a request to the authorization server goes, and the metadata document;
//! * `token_endpoint`: the token endpoint, in steps: read the request, authenticate the client,
//!   check grant and scopes, issue;
//! * `token_request`: a token request as read, how the client authenticated, and the refusal
//!   that ends a request early;
//! * `rotation`: the rules of more than one secret per client, revocation, and per-secret
//!   counts;
//! * `dpop` (feature `dpop`): the token endpoint's binding of tokens to a proof's key, and the
//!   API's proof checks;
//! * `state`: what the endpoints of one authorization server share (configuration, clients,
//!   scripts, counters, issued tokens, rotation and DPoP data), [`MetadataLocation`] and
//!   [`TokenRequestSeen`];
//! * `behaviour`: [`Behavior`], the scripted answers;
//! * `tls` (feature `mtls`): `ServerTls`, TLS with optional client certificates for both
//!   servers: the token endpoint authenticates `tls_client_auth` clients and binds tokens to
//!   the certificate (`cnf.x5t#S256`, RFC 8705 §3), the API refuses a certificate-bound token
//!   from a connection without that certificate;
//! * `listener` and `response`: the loopback accept loop both servers use (plain or TLS; it
//!   tells the endpoints the client certificate of the connection), and their JSON answers.

mod api_server;
mod auth_server;
mod behaviour;
#[cfg(feature = "dpop")]
mod dpop;
mod in_process;
mod listener;
mod response;
mod rotation;
mod router;
mod state;
#[cfg(feature = "mtls")]
mod tls;
mod token_endpoint;
mod token_request;

pub use self::api_server::{ApiRefusal, ApiServer};
pub use self::auth_server::{AuthServer, AuthServerBuilder};
pub use self::behaviour::Behavior;
pub use self::in_process::InProcessClient;
pub use self::state::{MetadataLocation, TokenRequestSeen};
#[cfg(feature = "mtls")]
pub use self::tls::ServerTls;

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning: a test that panicked while holding it must not turn every
/// later request into a second panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
