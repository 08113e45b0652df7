//! [`ClientCredentials`]: the [`TokenSource`] for an OAuth2 token endpoint (RFC 6749 §4.4).
//!
//! # Example
//!
//! ```no_run
//! use tower_client_credentials::ClientCredentials;
//!
//! # fn main() -> Result<(), tower_client_credentials::Error> {
//! let credentials = ClientCredentials::builder()
//!     .token_endpoint("https://idm.staging.floriday.io/oauth2/ausmw6b47z1BnlHkw0h7/v1/token")?
//!     .client_id("my-client")
//!     .client_secret("my-secret")
//!     .scopes(["role:app", "organization:read"])
//!     .build()?;
//! # Ok(())
//! # }
//! ```

mod auth_method;
mod builder;
mod credential_set;
mod rotation;
mod secret;
#[cfg(feature = "jwt-client-auth")]
mod signer;
pub(crate) mod token_endpoint;

use std::fmt;
use std::sync::Arc;

use crate::error::Error;
use crate::http::HttpClient;
use crate::oauth::token_request::{ClientAuth, TokenRequest};
use crate::oauth::token_response::parse_response;
use crate::source::{BoxFuture, TokenSource};
use crate::token::Token;

use self::auth_method::Authentication;
pub use self::builder::ClientCredentialsBuilder;
pub use self::credential_set::CredentialSet;
pub use self::secret::{EnvSecret, FileSecret, SecretSource, SecretSourceError};
#[cfg(feature = "jwt-client-auth")]
pub use self::signer::{JwtSigner, PemSigner};
use self::token_endpoint::TokenEndpoint;
use crate::oauth::client_auth::ClientAuthMethod;

/// OAuth2 client credentials: exchanges a client id and secret at a token endpoint for access
/// tokens. A [`TokenSource`]: give it to [`BearerAuthLayer::new`](crate::BearerAuthLayer::new).
///
/// Cheap to clone. `Debug` never shows the secret. See the [module docs](self) for an example.
#[derive(Clone)]
pub struct ClientCredentials {
    inner: Arc<Inner>,
}

struct Inner {
    // Shared by the credentials of every credential set made from these (see `for_set`):
    // one discovery, one negotiated method, one secret source.
    endpoint: Arc<TokenEndpoint>,
    client_id: String,
    authentication: Arc<Authentication>,
    scope: Option<String>,
    params: Vec<(String, String)>,
    http: HttpClient,
    expiry_from_jwt: bool,
}

impl ClientCredentials {
    /// Starts building client credentials.
    pub fn builder() -> ClientCredentialsBuilder {
        ClientCredentialsBuilder::new()
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The token endpoint, once known (with an issuer: after discovery).
    pub fn token_endpoint(&self) -> Option<http::Uri> {
        self.inner.endpoint.known()
    }

    /// The client authentication method in use: the configured one, or the one that worked, or
    /// `None` before the first token request when none was configured.
    pub fn auth_method(&self) -> Option<ClientAuthMethod> {
        self.inner.authentication.method()
    }

    /// Fetches the authorization server metadata now (with [`issuer`](ClientCredentialsBuilder::issuer));
    /// otherwise it is fetched at the first token request. Does nothing for a fixed token
    /// endpoint.
    pub async fn discover(&self) -> Result<(), Error> {
        self.inner
            .endpoint
            .resolve(&self.inner.http)
            .await
            .map(drop)
    }

    /// One token request to `endpoint`, authenticated with `auth`. The request is built before
    /// the future is made, so that the future borrows neither `auth` nor the secret in it (the
    /// secret is read per token request and lives no longer than its attempt).
    fn request(
        &self,
        endpoint: &http::Uri,
        auth: ClientAuth<'_>,
    ) -> impl std::future::Future<Output = Result<Token, Error>> + Send + '_ {
        let inner = &self.inner;
        let request = TokenRequest {
            client_id: &inner.client_id,
            auth,
            scope: inner.scope.as_deref(),
            params: &inner.params,
        }
        .build(endpoint);
        async move {
            let request = request?;
            let sent_at = tokio::time::Instant::now();
            let response = inner.http.send(request).await?;
            parse_response(&response, inner.expiry_from_jwt)
                .map(|token| token.with_received_at(sent_at))
        }
    }

    async fn fetch(&self) -> Result<Token, Error> {
        let inner = &self.inner;
        let resolved = inner.endpoint.resolve(&inner.http).await?;
        let endpoint = &resolved.token_endpoint;
        inner
            .authentication
            .fetch(
                resolved.auth_methods.as_deref(),
                (&inner.client_id, endpoint),
                |auth| self.request(endpoint, auth),
            )
            .await
    }
}

impl TokenSource for ClientCredentials {
    fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(self.fetch())
    }

    /// Whether the client secret's source reports a new secret since it was last read.
    fn credentials_changed(&self) -> bool {
        self.inner
            .authentication
            .secret_source()
            .is_some_and(|source| source.changed())
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ClientCredentials");
        debug
            .field("endpoint", &self.inner.endpoint)
            .field("client_id", &self.inner.client_id)
            .field("client_secret", &self.inner.authentication.secret_source());
        #[cfg(feature = "jwt-client-auth")]
        debug.field("private_key", &self.inner.authentication.private_key());
        debug
            .field("scope", &self.inner.scope)
            .field("auth_method", &self.auth_method())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_split_and_joined() {
        let credentials = ClientCredentials::builder()
            .token_endpoint("https://idp.example/oauth2/default/v1/token")
            .unwrap()
            .client_id("id")
            .client_secret("top-secret-value")
            .scopes(["role:app catalog:read", "organization:read"])
            .build()
            .unwrap();
        assert_eq!(
            credentials.inner.scope.as_deref(),
            Some("role:app catalog:read organization:read")
        );
    }
}
