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

mod assertion_source;
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

use crate::error::{Error, ErrorKind};
use crate::http::HttpClient;
use crate::oauth::token_request::{ClientAuth, TokenRequest};
use crate::oauth::token_response::parse_response;
use crate::source::{BoxFuture, TokenSource};
use crate::token::Token;

pub use self::assertion_source::{AssertionSource, FileAssertion};
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
    /// The key the tokens are bound to (RFC 9449 DPoP), when set.
    #[cfg(feature = "dpop")]
    dpop: Option<crate::dpop::DpopKey>,
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
    ///
    /// Bounded by [`timeout`](ClientCredentialsBuilder::timeout), like a token fetch.
    pub async fn discover(&self) -> Result<(), Error> {
        let deadline = self.inner.http.deadline();
        self.inner
            .endpoint
            .resolve(&self.inner.http, deadline)
            .await
            .map(drop)
    }

    /// One token request to `endpoint`, authenticated with `auth`, given up at `deadline` (and
    /// with a DPoP key, proved and retried once when the server asks for a nonce).
    ///
    /// The request is built before the future is made, so that the future borrows neither
    /// `auth` nor the secret in it (the secret is read per attempt and lives no longer than
    /// it). With a DPoP key the request for the nonce retry is built now too, with its own
    /// fresh client assertion; only its proof is made later, when the nonce is known. It is
    /// dropped unsent when no nonce is asked for. An assertion made before the request (by a
    /// `JwtSigner`, or read from an `AssertionSource`) is never sent twice: then the nonce is
    /// only recorded, and the caller retries with a new assertion (see `rotation`).
    fn request<'a>(
        &'a self,
        endpoint: &'a http::Uri,
        auth: ClientAuth<'_>,
        deadline: tokio::time::Instant,
    ) -> impl std::future::Future<Output = Result<Token, Error>> + Send + 'a {
        let inner = &self.inner;
        let build = || {
            TokenRequest {
                client_id: &inner.client_id,
                auth,
                scope: inner.scope.as_deref(),
                params: &inner.params,
            }
            .build(endpoint)
        };
        let first = build();
        #[cfg(feature = "dpop")]
        let for_nonce_retry = inner
            .dpop
            .as_ref()
            .filter(|_| auth.may_be_resent())
            .map(|_| build());
        async move {
            #[allow(unused_mut)]
            let (mut request, secrets) = first?;
            #[cfg(feature = "dpop")]
            if let Some(key) = &inner.dpop {
                crate::dpop::sign_token_request(key, &mut request)?;
            }
            #[allow(unused_mut)]
            let mut sent_at = tokio::time::Instant::now();
            #[allow(unused_mut)]
            let mut response = inner.http.send(request, deadline, &secrets).await?;
            #[allow(unused_mut)]
            let mut secrets = secrets;
            #[cfg(feature = "dpop")]
            if let Some(key) = &inner.dpop {
                // RFC 9449 §8: the server wants a nonce; it came with the error (and is kept
                // for the next proof). One retry, with a fresh proof (and a fresh client
                // assertion), when the request could be built again.
                let challenged = crate::dpop::is_token_nonce_challenge(key, endpoint, &response);
                if let (true, Some(retry)) = (challenged, for_nonce_retry) {
                    tracing::debug!("token endpoint asked for a DPoP nonce; retrying once with it");
                    let (mut request, retry_secrets) = retry?;
                    crate::dpop::sign_token_request(key, &mut request)?;
                    secrets = retry_secrets;
                    sent_at = tokio::time::Instant::now();
                    response = inner.http.send(request, deadline, &secrets).await?;
                    // Only to keep a nonce this answer brings for the next request.
                    crate::dpop::is_token_nonce_challenge(key, endpoint, &response);
                }
            }
            let token = parse_response(&response, inner.expiry_from_jwt, &secrets)?;
            if token.is_dpop() && !self.has_dpop_key() {
                return Err(Error::new(
                    ErrorKind::InvalidTokenResponse,
                    "the token endpoint issued a DPoP-bound token, but no DPoP key is \
                     configured; set one with `.dpop(key)` (feature `dpop`) or ask for Bearer \
                     tokens",
                ));
            }
            Ok(self.stamp_binding(token.with_received_at(sent_at)))
        }
    }

    /// Records what the token may be bound to (RFC 9449 `jkt`, RFC 8705 `x5t#S256`): the
    /// cache and a shared store then use it only with the same key and certificate.
    fn stamp_binding(&self, token: Token) -> Token {
        #[cfg(feature = "dpop")]
        let token = match &self.inner.dpop {
            Some(key) => token.with_dpop_thumbprint(key.thumbprint().to_owned()),
            None => token,
        };
        match self.inner.authentication.certificate_thumbprint() {
            Some(thumbprint) => token.with_certificate_thumbprint(thumbprint),
            None => token,
        }
    }

    /// The RFC 7638 thumbprint of the DPoP key, if one is set: what a layer's own key must match.
    pub(crate) fn dpop_thumbprint(&self) -> Option<&str> {
        #[cfg(feature = "dpop")]
        return self.inner.dpop.as_ref().map(|key| key.thumbprint());
        #[cfg(not(feature = "dpop"))]
        None
    }

    fn has_dpop_key(&self) -> bool {
        #[cfg(feature = "dpop")]
        return self.inner.dpop.is_some();
        #[cfg(not(feature = "dpop"))]
        false
    }

    /// One token fetch: discovery if needed, then the token request (two with the method
    /// negotiation), all within one deadline.
    async fn fetch(&self) -> Result<Token, Error> {
        let inner = &self.inner;
        let deadline = inner.http.deadline();
        let resolved = inner.endpoint.resolve(&inner.http, deadline).await?;
        let endpoint = match &resolved.mtls_token_endpoint {
            // RFC 8705 §5: certificate-authenticated requests go to the alias when there is one.
            Some(alias) if inner.authentication.is_certificate() => alias,
            _ => &resolved.token_endpoint,
        };
        inner
            .authentication
            .fetch(
                resolved.auth_methods.as_deref(),
                (&inner.client_id, endpoint),
                |auth| self.request(endpoint, auth, deadline),
            )
            .await
    }
}

impl TokenSource for ClientCredentials {
    fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(self.fetch())
    }

    /// Whether the client secret's (or the client assertion's) source reports a new one since
    /// it was last read.
    fn credentials_changed(&self) -> bool {
        let authentication = &self.inner.authentication;
        authentication
            .secret_source()
            .is_some_and(|source| source.changed())
            || authentication
                .assertion_source()
                .is_some_and(|source| source.changed())
    }

    /// The credential set: token endpoint (or issuer), client id, configured auth method
    /// (`negotiated` when none is), scopes, extra parameters and the binding (the DPoP key's
    /// and the client certificate's thumbprints), keyed by the client secret (with
    /// `private_key_jwt` or a certificate: without key material; the client id still separates
    /// the set).
    ///
    /// With a [`SecretSource`] this is the key before the secret is read (keyed by the
    /// source's name); the cache uses [`current_store_key`](Self::current_store_key), keyed by
    /// the secret the source gives now.
    ///
    /// `None` (no sharing) for `tls_client_auth` over the caller's HTTP client: the tokens
    /// may be bound to a certificate the crate cannot see, and replicas with different ones
    /// must not share them. Give the identity to the builder instead to share.
    #[cfg(feature = "store")]
    fn store_key(&self) -> Option<crate::store::StoreKey> {
        if self.inner.authentication.certificate_unknown() {
            return None;
        }
        Some(self.store_key_with(None))
    }

    /// The key keyed by the client secret as the source gives it now: a rotated secret gets a
    /// new key (so a failure the old secret caused never holds the new one up, and tokens
    /// are not shared between pods with the old and the new secret during a rotation), and the
    /// key cannot be guessed without the secret. Nothing derived from the secret but the HMAC
    /// is kept. A source that cannot be read now: `None` (the fetch reports why).
    #[cfg(feature = "store")]
    fn current_store_key(&self) -> BoxFuture<'_, Option<crate::store::StoreKey>> {
        Box::pin(async move {
            if self.inner.authentication.certificate_unknown() {
                return None;
            }
            let secret = match self.inner.authentication.secret_source() {
                Some(source) => match source.secret().await {
                    Ok(secret) => Some(secret),
                    Err(error) => {
                        tracing::debug!(error = %error, "the client secret could not be read for the store key");
                        return None;
                    }
                },
                None => None,
            };
            Some(self.store_key_with(secret.as_ref()))
        })
    }
}

impl ClientCredentials {
    /// The store key, keyed by `secret` when given, else by what `store_identity` says.
    #[cfg(feature = "store")]
    fn store_key_with(&self, secret: Option<&secrecy::SecretString>) -> crate::store::StoreKey {
        use secrecy::ExposeSecret;
        let inner = &self.inner;
        let (method, fixed) = inner.authentication.store_identity();
        let mut key =
            crate::store::StoreKey::builder(inner.endpoint.configured(), &*inner.client_id)
                .auth_method(method)
                .scopes(inner.scope.as_deref());
        for (name, value) in &inner.params {
            key = key.param(name.as_str(), value.as_str());
        }
        if let Some(secret) = secret.or(fixed) {
            key = key.secret(secret.expose_secret().as_bytes());
        }
        #[cfg(feature = "dpop")]
        if let Some(dpop) = &inner.dpop {
            key = key.dpop_thumbprint(dpop.thumbprint());
        }
        if let Some(certificate) = inner.authentication.certificate_thumbprint() {
            key = key.certificate_thumbprint(certificate);
        }
        key.build()
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ClientCredentials");
        debug
            .field("endpoint", &self.inner.endpoint)
            .field("client_id", &self.inner.client_id)
            .field("client_secret", &self.inner.authentication.secret_source())
            .field(
                "client_assertion",
                &self.inner.authentication.assertion_source(),
            );
        #[cfg(feature = "jwt-client-auth")]
        debug.field("private_key", &self.inner.authentication.private_key());
        debug.field(
            "client_certificate",
            &self.inner.authentication.certificate_holder(),
        );
        #[cfg(feature = "dpop")]
        debug.field("dpop", &self.inner.dpop);
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

    /// Issue 20 defect 4: with a `SecretSource`, the key follows the secret the source gives
    /// now (a rotated secret gets a new key, so the old secret's failure entry never holds the
    /// new one up), is the key `client_secret("..")` with that value gives, and cannot be
    /// derived from the source's name.
    #[cfg(feature = "store")]
    #[tokio::test]
    async fn the_store_key_follows_the_secret_a_source_gives_and_never_holds_it() {
        let dir = std::env::temp_dir().join(format!("tcc-store-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("client-secret");
        std::fs::write(&path, "old-secret-5d1f").unwrap();
        let builder = || {
            ClientCredentials::builder()
                .token_endpoint("https://idp.example/oauth2/default/v1/token")
                .unwrap()
                .client_id("id")
        };
        let credentials = |path: &std::path::Path| {
            builder()
                .client_secret_source(crate::client_credentials::FileSecret::new(path))
                .build()
                .unwrap()
        };
        let fixed = |secret: &str| builder().client_secret(secret).build().unwrap().store_key();
        let pod = credentials(&path);
        let before = pod.current_store_key().await.unwrap();
        assert_eq!(Some(before.clone()), fixed("old-secret-5d1f"));
        assert_ne!(
            Some(before.clone()),
            pod.store_key(),
            "not keyed by the name"
        );
        std::fs::write(&path, "new-secret-8a2c").unwrap();
        let after = pod.current_store_key().await.unwrap();
        assert_ne!(before, after);
        assert_eq!(Some(after.clone()), fixed("new-secret-8a2c"));
        assert_eq!(
            credentials(&path).current_store_key().await,
            Some(after.clone())
        );
        for shown in [format!("{before:?}"), format!("{after:?}")] {
            assert!(
                !shown.contains("old-secret") && !shown.contains("new-secret"),
                "{shown}"
            );
        }
        // A source that cannot be read: no key, so no sharing this time.
        assert!(credentials(&dir.join("missing"))
            .current_store_key()
            .await
            .is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue 19 defect 1: the store key includes the DPoP key's thumbprint, and every fetched
    /// token carries it (and its type), so replicas share a bound token only with the same key.
    #[cfg(all(feature = "store", feature = "dpop"))]
    #[tokio::test]
    async fn dpop_bound_tokens_carry_their_binding_and_key_the_store() {
        use bytes::Bytes;
        use http_body_util::Full;
        fn answer(
            _: http::Request<Full<Bytes>>,
        ) -> std::future::Ready<Result<http::Response<Full<Bytes>>, std::convert::Infallible>>
        {
            let body = br#"{"access_token":"bound-token","token_type":"DPoP","expires_in":300}"#;
            std::future::ready(Ok(http::Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(body)))
                .unwrap()))
        }
        let with_key = |key: &crate::dpop::DpopKey| {
            ClientCredentials::builder()
                .token_endpoint("https://idp.example/token")
                .unwrap()
                .client_id("id")
                .client_secret("secret")
                .auth_method(ClientAuthMethod::ClientSecretBasic)
                .dpop(key.clone())
                .http_client(tower::service_fn(answer))
                .build()
                .unwrap()
        };
        let (one, two) = (
            crate::dpop::DpopKey::generate().unwrap(),
            crate::dpop::DpopKey::generate().unwrap(),
        );
        let credentials = with_key(&one);
        let key = credentials.current_store_key().await.unwrap();
        assert_eq!(key.dpop_thumbprint(), Some(one.thumbprint()));
        assert_eq!(Some(key.clone()), with_key(&one).store_key());
        assert_ne!(Some(key), with_key(&two).store_key());
        let token = credentials.fetch_token().await.unwrap();
        assert!(token.is_dpop());
        assert_eq!(token.dpop_thumbprint(), Some(one.thumbprint()));
        assert_eq!(token.certificate_thumbprint(), None);
    }

    /// Issue 19 defect 1, certificates: a certificate the crate cannot see (the caller's HTTP
    /// client presents it) cannot key the store, so such credentials do not share tokens.
    #[cfg(feature = "store")]
    #[tokio::test]
    async fn a_certificate_the_crate_cannot_see_shares_nothing() {
        use bytes::Bytes;
        use http_body_util::Full;
        fn never(
            _: http::Request<Full<Bytes>>,
        ) -> std::future::Ready<Result<http::Response<Full<Bytes>>, std::convert::Infallible>>
        {
            std::future::ready(Ok(http::Response::new(Full::new(Bytes::new()))))
        }
        let credentials = ClientCredentials::builder()
            .token_endpoint("https://idp.example/token")
            .unwrap()
            .client_id("id")
            .auth_method(ClientAuthMethod::TlsClientAuth)
            .http_client(tower::service_fn(never))
            .build()
            .unwrap();
        assert!(credentials.store_key().is_none());
        assert!(credentials.current_store_key().await.is_none());
    }

    /// Issue 19 defect 1, certificates: the store key includes the certificate's `x5t#S256`,
    /// and tokens are stamped with it.
    #[cfg(all(feature = "store", feature = "mtls"))]
    #[test]
    fn certificate_bound_tokens_carry_their_binding_and_key_the_store() {
        let identity =
            |cert: &[u8], key: &[u8]| crate::mtls::ClientIdentity::from_pem(cert, key).unwrap();
        let client = identity(
            include_bytes!("../../tests/mtls/client.pem"),
            include_bytes!("../../tests/mtls/client-key.pem"),
        );
        let other = identity(
            include_bytes!("../../tests/mtls/self-signed.pem"),
            include_bytes!("../../tests/mtls/self-signed-key.pem"),
        );
        let with = |identity: &crate::mtls::ClientIdentity| {
            ClientCredentials::builder()
                .token_endpoint("https://idp.example/token")
                .unwrap()
                .client_id("id")
                .tls_client_auth(identity.clone())
                .build()
                .unwrap()
        };
        let credentials = with(&client);
        let key = credentials.store_key().unwrap();
        assert_eq!(
            key.certificate_thumbprint(),
            Some(client.thumbprint().as_str())
        );
        assert_eq!(Some(key.clone()), with(&client).store_key());
        assert_ne!(Some(key), with(&other).store_key());
        let token = credentials.stamp_binding(Token::bearer("t", None).unwrap());
        assert_eq!(
            token.certificate_thumbprint(),
            Some(client.thumbprint().as_str())
        );
    }
}
