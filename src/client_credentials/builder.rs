//! [`ClientCredentialsBuilder`]: the settings of [`ClientCredentials`], and their validation
//! at [`build`](ClientCredentialsBuilder::build), so that a mistake is found before the first
//! token request and named.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use tower_service::Service;

use super::assertion_source::AssertionSource;
use super::auth_method::{
    Authentication, CertificateHolder, CertificateKind, ClientSecret, Negotiation, SecretEncoding,
    SecretMethod,
};
use super::secret::SecretSource;
use super::token_endpoint::TokenEndpoint;
use super::{ClientCredentials, Inner};
use crate::error::{BoxError, Error};
use crate::http::{client, url, HttpClient};
use crate::oauth::client_auth::ClientAuthMethod;
use crate::oauth::discovery::Issuer;

/// Builds [`ClientCredentials`]; get one from [`ClientCredentials::builder`].
pub struct ClientCredentialsBuilder {
    endpoint: Option<EndpointConfig>,
    client_id: Option<String>,
    client_secret: Option<SecretString>,
    client_secret_source: Option<Arc<dyn SecretSource>>,
    client_assertion_source: Option<Arc<dyn AssertionSource>>,
    #[cfg(feature = "jwt-client-auth")]
    private_key: Option<crate::oauth::assertion::PrivateKey>,
    #[cfg(feature = "jwt-client-auth")]
    signer: Option<Arc<dyn super::signer::JwtSigner>>,
    scopes: Vec<String>,
    params: Vec<(String, String)>,
    method: Option<ClientAuthMethod>,
    http: Option<HttpClient>,
    allow_http: bool,
    timeout: Duration,
    connect_timeout: Duration,
    max_response_size: usize,
    expiry_from_jwt: bool,
    #[cfg(feature = "dpop")]
    dpop: Option<crate::dpop::DpopKey>,
    #[cfg(feature = "mtls")]
    identity: Option<crate::mtls::ClientIdentity>,
    error: Option<Error>,
}

enum EndpointConfig {
    Token(http::Uri),
    Issuer(http::Uri),
}

impl ClientCredentialsBuilder {
    pub(super) fn new() -> Self {
        ClientCredentialsBuilder {
            endpoint: None,
            client_id: None,
            client_secret: None,
            client_secret_source: None,
            client_assertion_source: None,
            #[cfg(feature = "jwt-client-auth")]
            private_key: None,
            #[cfg(feature = "jwt-client-auth")]
            signer: None,
            scopes: Vec::new(),
            params: Vec::new(),
            method: None,
            http: None,
            allow_http: false,
            timeout: client::DEFAULT_TIMEOUT,
            connect_timeout: client::DEFAULT_CONNECT_TIMEOUT,
            max_response_size: client::DEFAULT_MAX_RESPONSE_SIZE,
            expiry_from_jwt: true,
            #[cfg(feature = "dpop")]
            dpop: None,
            #[cfg(feature = "mtls")]
            identity: None,
            error: None,
        }
    }

    /// The token endpoint URL, e.g. `https://idm.floriday.io/oauth2/aus3testdcf2vyfs70i7/v1/token`.
    ///
    /// Must be `https`, or `http` to a loopback address, unless [`allow_http`](Self::allow_http).
    pub fn token_endpoint(mut self, url: impl AsRef<str>) -> Result<Self, Error> {
        let url = url::parse_url(url.as_ref(), "token endpoint")?;
        self.endpoint = Some(EndpointConfig::Token(url));
        Ok(self)
    }

    /// The authorization server's issuer URL, e.g.
    /// `https://idm.staging.floriday.io/oauth2/ausmw6b47z1BnlHkw0h7`: the token endpoint and the
    /// supported client authentication methods are found through its metadata (RFC 8414, then
    /// OpenID Connect Discovery), fetched once.
    pub fn issuer(mut self, url: impl AsRef<str>) -> Result<Self, Error> {
        let issuer = url::parse_url(url.as_ref(), "issuer")?;
        if issuer.query().is_some() {
            // RFC 8414 §2: the issuer has no query or fragment component.
            return Err(Error::config(format!(
                "the issuer must not have a query (RFC 8414 §2), got {}?…",
                url::redacted_uri(&issuer)
            )));
        }
        self.endpoint = Some(EndpointConfig::Issuer(issuer));
        Ok(self)
    }

    /// The client id. Required.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// The client secret. Required. Kept as a [`SecretString`]: zeroized on drop, never shown.
    ///
    /// A fixed secret: to pick up a rotated secret without a restart, use
    /// [`client_secret_source`](Self::client_secret_source). The later of the two calls wins.
    pub fn client_secret(mut self, client_secret: impl Into<String>) -> Self {
        self.client_secret = Some(SecretString::from(client_secret.into()));
        self.client_secret_source = None;
        self
    }

    /// Where to read the client secret, at every token request: a
    /// [`FileSecret`](super::FileSecret) (a Kubernetes secret volume), an
    /// [`EnvSecret`](super::EnvSecret), or your own [`SecretSource`] (a secret manager). A
    /// replaced secret is used from the next token request on; when the server refuses the
    /// secret (`invalid_client`) it is read once more and, if it changed, tried at once.
    ///
    /// Replaces a secret given with [`client_secret`](Self::client_secret). The source is first
    /// read at the first token request, so a missing file is reported then, as a configuration
    /// error naming the path.
    ///
    /// ```
    /// use tower_client_credentials::client_credentials::EnvSecret;
    /// use tower_client_credentials::ClientCredentials;
    ///
    /// # fn main() -> Result<(), tower_client_credentials::Error> {
    /// let credentials = ClientCredentials::builder()
    ///     .token_endpoint("https://idp.example/oauth2/default/v1/token")?
    ///     .client_id("my-client")
    ///     .client_secret_source(EnvSecret::new("IDP_CLIENT_SECRET"))
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn client_secret_source(mut self, source: impl SecretSource) -> Self {
        self.client_secret_source = Some(Arc::new(source));
        self.client_secret = None;
        self
    }

    /// The scopes to request, sent space-separated in `scope`. Each may itself hold several
    /// space-separated scopes.
    pub fn scopes<I, T>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        for scope in scopes {
            let scope: String = scope.into();
            self.scopes
                .extend(scope.split_whitespace().map(str::to_string));
        }
        self
    }

    /// One scope to request (adds to [`scopes`](Self::scopes)).
    pub fn scope(self, scope: impl Into<String>) -> Self {
        self.scopes([scope])
    }

    /// Adds `audience=<audience>` to the token request (Auth0, Okta custom servers).
    pub fn audience(self, audience: impl Into<String>) -> Self {
        self.param("audience", audience)
    }

    /// Adds `resource=<resource>` (RFC 8707 resource indicator) to the token request; may be
    /// given several times.
    pub fn resource(self, resource: impl Into<String>) -> Self {
        self.param("resource", resource)
    }

    /// Adds any other form parameter to the token request. `grant_type`, `scope`, `client_id`,
    /// `client_secret`, `client_assertion` and `client_assertion_type` are set by the crate and
    /// refused here.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        if crate::oauth::token_request::is_set_by_the_crate(&name) {
            self.error.get_or_insert_with(|| {
                Error::config(format!(
                    "the form parameter `{name}` is set by the crate; use the builder's own method"
                ))
            });
        } else {
            self.params.push((name, value.into()));
        }
        self
    }

    /// How the client authenticates. Default: `client_secret_basic`, falling back once to
    /// `client_secret_post` if the server rejects it (or what the server metadata supports), and
    /// remembering the one that worked. An explicit choice is never second-guessed.
    ///
    /// The JWT methods (RFC 7523) are only used when chosen here (or, for `private_key_jwt`,
    /// through `private_key_jwt`) and need the cargo feature
    /// `jwt-client-auth`: [`ClientAuthMethod::ClientSecretJwt`] signs an HS256 assertion with
    /// the client secret.
    pub fn auth_method(mut self, method: ClientAuthMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Authenticates with `private_key_jwt` (RFC 7523 §2.2): every token request carries a fresh
    /// JWT client assertion signed with this PEM private key (`iss` = `sub` = the client id,
    /// `aud` = the token endpoint URL, a random `jti`, valid for 60 s), its header naming `kid`
    /// when given. Selects [`ClientAuthMethod::PrivateKeyJwt`]; no client secret is needed.
    ///
    /// [`RS256`](crate::JwtSigningAlgorithm::RS256) takes an RSA key (PKCS#1 or PKCS#8 PEM),
    /// [`ES256`](crate::JwtSigningAlgorithm::ES256) an EC P-256 key in PKCS#8 PEM
    /// (`-----BEGIN PRIVATE KEY-----`). The key is checked here by a trial signature; it is
    /// never shown by `Debug` or in errors.
    #[cfg(feature = "jwt-client-auth")]
    pub fn private_key_jwt(
        mut self,
        algorithm: crate::JwtSigningAlgorithm,
        pem: &[u8],
        kid: Option<&str>,
    ) -> Result<Self, Error> {
        self.private_key = Some(crate::oauth::assertion::PrivateKey::from_pem(
            algorithm, pem, kid,
        )?);
        self.signer = None;
        self.client_assertion_source = None;
        self.method = Some(ClientAuthMethod::PrivateKeyJwt);
        Ok(self)
    }

    /// Authenticates with `private_key_jwt` (RFC 7523 §2.2), the assertion signed by `signer`
    /// at every token request: a key kept in a KMS or an HSM, never copied into the process
    /// (claims as for [`private_key_jwt`](Self::private_key_jwt)). Selects
    /// [`ClientAuthMethod::PrivateKeyJwt`] and replaces a key given there.
    ///
    /// ```
    /// use tower_client_credentials::client_credentials::PemSigner;
    /// use tower_client_credentials::{ClientCredentials, JwtSigningAlgorithm};
    ///
    /// # fn main() -> Result<(), tower_client_credentials::Error> {
    /// # let pem = include_bytes!("../../tests/oidc-provider/test-client-key.pem");
    /// // Any `JwtSigner` works; `PemSigner` is the one for a key in memory.
    /// let signer = PemSigner::from_pem(JwtSigningAlgorithm::RS256, pem, Some("key-1"))?;
    /// let credentials = ClientCredentials::builder()
    ///     .token_endpoint("https://idp.example/oauth2/default/v1/token")?
    ///     .client_id("my-client")
    ///     .private_key_jwt_signer(signer)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "jwt-client-auth")]
    pub fn private_key_jwt_signer(mut self, signer: impl super::signer::JwtSigner) -> Self {
        self.signer = Some(Arc::new(signer));
        self.private_key = None;
        self.client_assertion_source = None;
        self.method = Some(ClientAuthMethod::PrivateKeyJwt);
        self
    }

    /// Authenticates with a client assertion signed by someone else (RFC 7523 §2.2): a
    /// platform's workload identity token, read from `source` at every token request and sent
    /// as `client_assertion` with `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`.
    /// [`FileAssertion`](super::FileAssertion) reads a file (a Kubernetes projected
    /// service-account token, `AZURE_FEDERATED_TOKEN_FILE`, `AWS_WEB_IDENTITY_TOKEN_FILE`);
    /// implement [`AssertionSource`] for another place.
    ///
    /// An assertion that is not a signed JWT or whose `exp` has passed is a configuration error
    /// naming the source; after `invalid_client` the source is read once more, and a changed
    /// assertion is tried before the failure counts. Selects
    /// [`ClientAuthMethod::PrivateKeyJwt`] (the server verifies the platform's signature) and
    /// replaces a key or signer given before; no client secret and no cargo feature is needed.
    /// With a shared token store, the store key is made of the client id and the source's
    /// [`name`](AssertionSource::name), never of an assertion.
    ///
    /// ```
    /// use tower_client_credentials::client_credentials::FileAssertion;
    /// use tower_client_credentials::{ClientAuthMethod, ClientCredentials};
    ///
    /// # fn main() -> Result<(), tower_client_credentials::Error> {
    /// let credentials = ClientCredentials::builder()
    ///     .token_endpoint("https://login.example/oauth2/v2.0/token")?
    ///     .client_id("my-client")
    ///     .client_assertion_source(FileAssertion::new("/var/run/secrets/tokens/idp-token"))
    ///     .scopes(["api://orders/.default"])
    ///     .build()?;
    /// assert_eq!(credentials.auth_method(), Some(ClientAuthMethod::PrivateKeyJwt));
    /// # Ok(())
    /// # }
    /// ```
    pub fn client_assertion_source(mut self, source: impl AssertionSource) -> Self {
        self.client_assertion_source = Some(Arc::new(source));
        #[cfg(feature = "jwt-client-auth")]
        {
            self.signer = None;
            self.private_key = None;
        }
        self.method = Some(ClientAuthMethod::PrivateKeyJwt);
        self
    }

    /// Uses `client` for token and discovery requests instead of the built-in hyper-util/rustls
    /// client: your own proxy, TLS roots, or a test double. Any cloneable tower service taking
    /// `http::Request<Full<Bytes>>` works, e.g. a `hyper_util::client::legacy::Client`.
    pub fn http_client<S, B>(mut self, client: S) -> Self
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.http = Some(HttpClient::from_service(client));
        self
    }

    /// Allows plain `http` token and discovery URLs on non-loopback hosts. Credentials then
    /// travel in clear text: only for trusted networks.
    pub fn allow_http(mut self) -> Self {
        self.allow_http = true;
        self
    }

    /// Time limit for one whole token fetch, connecting included. Default 30 s.
    ///
    /// One deadline covers everything a fetch does: discovery over all its locations (the
    /// first fetch with an [`issuer`](Self::issuer)), then the token request, or both token
    /// requests of the client authentication negotiation. It is the most one
    /// [`fetch_token`](crate::TokenSource::fetch_token) (and one refresh of a
    /// [`TokenCache`](crate::TokenCache)) can take; a request still unanswered then fails with
    /// [`ErrorKind::Transport`](crate::ErrorKind::Transport). The same limit applies to
    /// [`discover`](ClientCredentials::discover).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_client_credentials::ClientCredentials;
    ///
    /// let credentials = ClientCredentials::builder()
    ///     .issuer("https://idp.example/oauth2/default")?
    ///     .client_id("my-client")
    ///     .client_secret("my-secret")
    ///     .timeout(Duration::from_secs(10))
    ///     .build()?;
    /// # Ok::<(), tower_client_credentials::Error>(())
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Time limit for connecting (built-in client only). Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Largest token or discovery response body accepted. Default 64 KiB.
    pub fn max_response_size(mut self, bytes: usize) -> Self {
        self.max_response_size = bytes;
        self
    }

    /// Whether a response without `expires_in` takes its lifetime from the JWT `exp` claim
    /// (read, never verified or trusted for anything else). Default on; when off, or when the
    /// token is not a JWT, the cache's default lifetime applies.
    pub fn expiry_from_jwt(mut self, enabled: bool) -> Self {
        self.expiry_from_jwt = enabled;
        self
    }

    /// Binds the tokens to `key` (RFC 9449 DPoP): every token request carries a proof signed
    /// with it, and a `use_dpop_nonce` answer is retried once with the server's nonce. Give
    /// the same key to [`BearerAuthLayer::dpop`](crate::BearerAuthLayer::dpop), which proves
    /// possession on every API request. Needs the cargo feature `dpop`.
    #[cfg(feature = "dpop")]
    pub fn dpop(mut self, key: crate::dpop::DpopKey) -> Self {
        self.dpop = Some(key);
        self
    }

    /// Authenticates with `tls_client_auth` (RFC 8705 §2.1): the token and discovery requests
    /// present `identity`'s certificate (issued by a CA the server trusts) on the built-in
    /// rustls client, and the form names the client id; no secret is needed. Tokens the server
    /// binds to the certificate (`cnf.x5t#S256`) must reach the API over a client with the same
    /// identity: [`ClientIdentity::hyper_client`](crate::mtls::ClientIdentity::hyper_client).
    /// When the server's metadata has `mtls_endpoint_aliases`, its token endpoint is used.
    /// Needs the cargo feature `mtls`.
    #[cfg(feature = "mtls")]
    pub fn tls_client_auth(mut self, identity: crate::mtls::ClientIdentity) -> Self {
        self.identity = Some(identity);
        self.method = Some(ClientAuthMethod::TlsClientAuth);
        self
    }

    /// Like [`tls_client_auth`](Self::tls_client_auth) with a self-signed certificate registered
    /// with the client (`self_signed_tls_client_auth`, RFC 8705 §2.2).
    #[cfg(feature = "mtls")]
    pub fn self_signed_tls_client_auth(mut self, identity: crate::mtls::ClientIdentity) -> Self {
        self.identity = Some(identity);
        self.method = Some(ClientAuthMethod::SelfSignedTlsClientAuth);
        self
    }

    /// Checks the configuration and builds the credentials. Fetches nothing.
    pub fn build(mut self) -> Result<ClientCredentials, Error> {
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        let client_id = self.client_id.take().unwrap_or_default();
        if client_id.trim().is_empty() {
            return Err(Error::config(
                "the client id is empty; set it with `.client_id(..)`",
            ));
        }
        if client_id.chars().any(char::is_control) {
            return Err(Error::config(
                "the client id contains control characters; check for a stray newline",
            ));
        }
        let authentication = self.authentication()?;
        for scope in &self.scopes {
            // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
            if !scope
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
            {
                return Err(Error::config(format!(
                    "the scope `{}` has characters RFC 6749 does not allow (quotes, backslashes, \
                     non-ASCII or control characters)",
                    scope.escape_debug()
                )));
            }
        }
        let endpoint = match self.endpoint {
            Some(EndpointConfig::Token(uri)) => {
                url::check_scheme(&uri, self.allow_http, "token endpoint")?;
                TokenEndpoint::fixed(uri)
            }
            Some(EndpointConfig::Issuer(uri)) => {
                url::check_scheme(&uri, self.allow_http, "issuer")?;
                TokenEndpoint::discovered(Issuer::new(uri, self.allow_http))
            }
            None => {
                return Err(Error::config(
                    "no token endpoint; set `.token_endpoint(url)` or `.issuer(url)`",
                ))
            }
        };
        let http = match (self.http, &authentication) {
            (Some(http), _) => http,
            #[cfg(feature = "mtls")]
            (
                None,
                Authentication::Certificate {
                    presented_by: CertificateHolder::Identity(identity),
                    ..
                },
            ) => identity.token_client(self.connect_timeout)?,
            (None, _) => default_client(self.connect_timeout)?,
        }
        .with_limits(self.timeout, self.max_response_size);
        let scope = (!self.scopes.is_empty()).then(|| self.scopes.join(" "));
        Ok(ClientCredentials {
            inner: Arc::new(Inner {
                endpoint: Arc::new(endpoint),
                client_id,
                authentication: Arc::new(authentication),
                scope,
                params: self.params,
                http,
                expiry_from_jwt: self.expiry_from_jwt,
                #[cfg(feature = "dpop")]
                dpop: self.dpop,
            }),
        })
    }
}

impl fmt::Debug for ClientCredentialsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ClientCredentialsBuilder");
        debug
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("client_secret_source", &self.client_secret_source)
            .field("client_assertion_source", &self.client_assertion_source);
        #[cfg(feature = "jwt-client-auth")]
        debug.field("private_key", &self.private_key);
        #[cfg(feature = "mtls")]
        debug.field("client_identity", &self.identity);
        #[cfg(feature = "dpop")]
        debug.field("dpop", &self.dpop);
        debug.field("scopes", &self.scopes).finish_non_exhaustive()
    }
}

mod authentication;

use self::authentication::default_client;
#[cfg(test)]
mod tests;
