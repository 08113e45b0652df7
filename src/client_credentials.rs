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

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use secrecy::SecretString;
use tower_service::Service;

use crate::assertion::PrivateKey;
use crate::discovery::{Discovery, TokenEndpoint};
use crate::endpoint::{parse_response, ClientAuthMethod, TokenRequest};
use crate::error::{BoxError, Error, ErrorKind};
use crate::source::{BoxFuture, TokenSource};
use crate::token::Token;
use crate::transport::{self, HttpClient};

/// OAuth2 client credentials: exchanges a client id and secret at a token endpoint for access
/// tokens. A [`TokenSource`]: give it to [`BearerAuthLayer::new`](crate::BearerAuthLayer::new).
///
/// Cheap to clone. `Debug` never shows the secret. See the [module docs](self) for an example.
#[derive(Clone)]
pub struct ClientCredentials {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: TokenEndpoint,
    client_id: String,
    /// `None` only with `private_key_jwt`.
    client_secret: Option<SecretString>,
    private_key: Option<PrivateKey>,
    scope: Option<String>,
    params: Vec<(String, String)>,
    explicit_method: Option<ClientAuthMethod>,
    /// The method that worked, when none was configured (0: not known yet).
    detected_method: AtomicU8,
    http: HttpClient,
    jwt_expiry: bool,
    #[cfg(feature = "dpop")]
    dpop: Option<crate::dpop::DpopKey>,
}

/// Builds [`ClientCredentials`]; get one from [`ClientCredentials::builder`].
pub struct ClientCredentialsBuilder {
    endpoint: Option<EndpointConfig>,
    client_id: Option<String>,
    client_secret: Option<SecretString>,
    private_key: Option<PrivateKey>,
    scopes: Vec<String>,
    params: Vec<(String, String)>,
    method: Option<ClientAuthMethod>,
    http: Option<HttpClient>,
    allow_http: bool,
    timeout: Duration,
    connect_timeout: Duration,
    max_response_size: usize,
    jwt_expiry: bool,
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

impl ClientCredentials {
    /// Starts building client credentials.
    pub fn builder() -> ClientCredentialsBuilder {
        ClientCredentialsBuilder {
            endpoint: None,
            client_id: None,
            client_secret: None,
            private_key: None,
            scopes: Vec::new(),
            params: Vec::new(),
            method: None,
            http: None,
            allow_http: false,
            timeout: transport::DEFAULT_TIMEOUT,
            connect_timeout: transport::DEFAULT_CONNECT_TIMEOUT,
            max_response_size: transport::DEFAULT_MAX_RESPONSE_SIZE,
            jwt_expiry: true,
            #[cfg(feature = "dpop")]
            dpop: None,
            #[cfg(feature = "mtls")]
            identity: None,
            error: None,
        }
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
        self.inner.explicit_method.or_else(|| {
            match self.inner.detected_method.load(Ordering::Relaxed) {
                1 => Some(ClientAuthMethod::ClientSecretBasic),
                2 => Some(ClientAuthMethod::ClientSecretPost),
                _ => None,
            }
        })
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

    async fn request(
        &self,
        endpoint: &http::Uri,
        method: ClientAuthMethod,
    ) -> Result<Token, Error> {
        let inner = &self.inner;
        let build = || {
            #[allow(unused_mut)]
            let mut request = TokenRequest {
                client_id: &inner.client_id,
                client_secret: inner.client_secret.as_ref(),
                private_key: inner.private_key.as_ref(),
                scope: inner.scope.as_deref(),
                params: &inner.params,
                method,
            }
            .build(endpoint)?;
            #[cfg(feature = "dpop")]
            if let Some(key) = &inner.dpop {
                crate::dpop::sign_token_request(key, &mut request)?;
            }
            Ok::<_, Error>(request)
        };
        #[allow(unused_mut)]
        let mut sent_at = tokio::time::Instant::now();
        #[allow(unused_mut)]
        let mut response = inner.http.send(build()?).await?;
        #[cfg(feature = "dpop")]
        if let Some(key) = &inner.dpop {
            // RFC 9449 §8: the server wants a nonce; it came with the error. One retry, with a
            // fresh proof (and a fresh client assertion).
            if crate::dpop::is_token_nonce_challenge(key, endpoint, &response) {
                tracing::debug!("token endpoint asked for a DPoP nonce; retrying once with it");
                sent_at = tokio::time::Instant::now();
                response = inner.http.send(build()?).await?;
                crate::dpop::is_token_nonce_challenge(key, endpoint, &response);
            }
        }
        let token = parse_response(&response, inner.jwt_expiry)?;
        if token.is_dpop() && !self.has_dpop_key() {
            return Err(Error::new(
                ErrorKind::InvalidTokenResponse,
                "the token endpoint issued a DPoP-bound token, but no DPoP key is configured; \
                 set one with `.dpop(key)` (feature `dpop`) or ask for Bearer tokens",
            ));
        }
        Ok(token.with_received_at(sent_at))
    }

    fn has_dpop_key(&self) -> bool {
        #[cfg(feature = "dpop")]
        return self.inner.dpop.is_some();
        #[cfg(not(feature = "dpop"))]
        false
    }

    async fn fetch(&self) -> Result<Token, Error> {
        let inner = &self.inner;
        let resolved = inner.endpoint.resolve(&inner.http).await?;
        let endpoint = match (inner.explicit_method, &resolved.mtls_token_endpoint) {
            // RFC 8705 §5: certificate-authenticated requests go to the alias when there is one.
            (Some(method), Some(alias)) if method.is_mtls() => alias,
            _ => &resolved.token_endpoint,
        };
        if let Some(method) = inner.explicit_method {
            return self.request(endpoint, method).await;
        }
        let remembered = match inner.detected_method.load(Ordering::Relaxed) {
            1 => Some(ClientAuthMethod::ClientSecretBasic),
            2 => Some(ClientAuthMethod::ClientSecretPost),
            _ => None,
        };
        if let Some(method) = remembered {
            return self.request(endpoint, method).await;
        }
        // Not configured and not learned yet: what the server metadata supports, else Basic
        // first (the RFC's must-support), then the form body after a rejection, as Go's
        // x/oauth2 does. The one that works is kept for the life of these credentials.
        let candidates: &[ClientAuthMethod] = match resolved.auth_methods.as_deref() {
            Some(methods) => {
                let basic = methods.iter().any(|m| m == "client_secret_basic");
                let post = methods.iter().any(|m| m == "client_secret_post");
                match (basic, post) {
                    (false, true) => &[ClientAuthMethod::ClientSecretPost],
                    (true, false) => &[ClientAuthMethod::ClientSecretBasic],
                    _ => &[
                        ClientAuthMethod::ClientSecretBasic,
                        ClientAuthMethod::ClientSecretPost,
                    ],
                }
            }
            None => &[
                ClientAuthMethod::ClientSecretBasic,
                ClientAuthMethod::ClientSecretPost,
            ],
        };
        let mut last = None;
        for &method in candidates {
            match self.request(endpoint, method).await {
                Ok(token) => {
                    let code = if method == ClientAuthMethod::ClientSecretBasic {
                        1
                    } else {
                        2
                    };
                    inner.detected_method.store(code, Ordering::Relaxed);
                    tracing::debug!(
                        method = method.as_str(),
                        "client authentication method detected"
                    );
                    return Ok(token);
                }
                Err(error) if rejected_client_auth(&error) => {
                    tracing::debug!(
                        method = method.as_str(),
                        "client authentication method rejected"
                    );
                    last = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or_else(|| Error::config("no client authentication method to try")))
    }
}

/// Whether the server rejected the client authentication itself (RFC 6749 §5.2
/// `invalid_client`, or a bare 401): only then is the other method worth a try. Other 400s
/// (`invalid_scope`, `invalid_request`) would fail the same way with either method.
fn rejected_client_auth(error: &Error) -> bool {
    error.kind() == ErrorKind::TokenEndpoint
        && match error.oauth_error() {
            Some(oauth) => oauth.error == "invalid_client",
            None => error.status() == Some(http::StatusCode::UNAUTHORIZED),
        }
}

impl TokenSource for ClientCredentials {
    fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(self.fetch())
    }
}

impl ClientCredentialsBuilder {
    /// The token endpoint URL, e.g. `https://idm.floriday.io/oauth2/aus3testdcf2vyfs70i7/v1/token`.
    ///
    /// Must be `https`, or `http` to a loopback address, unless [`allow_http`](Self::allow_http).
    pub fn token_endpoint(mut self, url: impl AsRef<str>) -> Result<Self, Error> {
        let url = transport::parse_url(url.as_ref(), "token endpoint")?;
        self.endpoint = Some(EndpointConfig::Token(url));
        Ok(self)
    }

    /// The authorization server's issuer URL, e.g.
    /// `https://idm.staging.floriday.io/oauth2/ausmw6b47z1BnlHkw0h7`: the token endpoint and the
    /// supported client authentication methods are found through its metadata (RFC 8414, then
    /// OpenID Connect Discovery), fetched once.
    pub fn issuer(mut self, url: impl AsRef<str>) -> Result<Self, Error> {
        let issuer = transport::parse_url(url.as_ref(), "issuer")?;
        if issuer.query().is_some() {
            // RFC 8414 §2: the issuer has no query or fragment component.
            return Err(Error::config(format!(
                "the issuer must not have a query (RFC 8414 §2), got {}?…",
                transport::redacted_uri(&issuer)
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
    pub fn client_secret(mut self, client_secret: impl Into<String>) -> Self {
        self.client_secret = Some(SecretString::from(client_secret.into()));
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
        if matches!(
            name.as_str(),
            "grant_type"
                | "scope"
                | "client_id"
                | "client_secret"
                | "client_assertion"
                | "client_assertion_type"
        ) {
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
        self.private_key = Some(PrivateKey::from_pem(algorithm, pem, kid)?);
        self.method = Some(ClientAuthMethod::PrivateKeyJwt);
        Ok(self)
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

    /// Time limit for one token or discovery request, connecting included. Default 30 s.
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
        self.jwt_expiry = enabled;
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
    pub fn build(self) -> Result<ClientCredentials, Error> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let has_identity = self.has_identity();
        let client_id = self.client_id.unwrap_or_default();
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
        if let Some(method) = self.method.filter(|m| m.is_jwt()) {
            if !cfg!(feature = "jwt-client-auth") {
                return Err(crate::assertion::feature_missing(method));
            }
        }
        let mtls = self.method.is_some_and(ClientAuthMethod::is_mtls);
        if mtls && !has_identity && self.http.is_none() {
            return Err(Error::config(format!(
                "{} needs a client certificate; set it with `.tls_client_auth(identity)` or \
                 `.self_signed_tls_client_auth(identity)` (feature `mtls`), or pass an HTTP \
                 client that presents one with `.http_client(..)`",
                self.method
                    .map(ClientAuthMethod::as_str)
                    .unwrap_or_default()
            )));
        }
        let private_key = match self.method {
            Some(ClientAuthMethod::PrivateKeyJwt) => Some(self.private_key.ok_or_else(|| {
                Error::config(
                    "private_key_jwt needs a private key; set it with `.private_key_jwt(..)`",
                )
            })?),
            _ => None,
        };
        // private_key_jwt signs with the key alone; every other method needs the secret.
        let client_secret = match (self.client_secret, private_key.is_some() || mtls) {
            (secret, true) => secret,
            (Some(secret), false) => Some(secret),
            (None, false) => {
                return Err(Error::config(
                    "no client secret; set it with `.client_secret(..)`",
                ))
            }
        };
        if let Some(client_secret) = &client_secret {
            use secrecy::ExposeSecret;
            let secret = client_secret.expose_secret();
            if secret.is_empty() {
                return Err(Error::config(
                    "the client secret is empty; set it with `.client_secret(..)`",
                ));
            }
            if secret.chars().any(char::is_control) {
                return Err(Error::config(
                    "the client secret contains control characters; check for a stray newline",
                ));
            }
        }
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
                transport::check_scheme(&uri, self.allow_http, "token endpoint")?;
                TokenEndpoint::fixed(uri)
            }
            Some(EndpointConfig::Issuer(uri)) => {
                transport::check_scheme(&uri, self.allow_http, "issuer")?;
                TokenEndpoint::Discovered(Discovery::new(uri, self.allow_http))
            }
            None => {
                return Err(Error::config(
                    "no token endpoint; set `.token_endpoint(url)` or `.issuer(url)`",
                ))
            }
        };
        #[cfg(feature = "mtls")]
        let identity_client = match (&self.http, &self.identity) {
            (None, Some(identity)) => Some(identity.token_client(self.connect_timeout)?),
            _ => None,
        };
        #[cfg(not(feature = "mtls"))]
        let identity_client = None;
        let http = match self.http.or(identity_client) {
            Some(http) => http,
            None => default_client(self.connect_timeout)?,
        }
        .with_limits(self.timeout, self.max_response_size);
        let scope = (!self.scopes.is_empty()).then(|| self.scopes.join(" "));
        Ok(ClientCredentials {
            inner: Arc::new(Inner {
                endpoint,
                client_id,
                client_secret,
                private_key,
                scope,
                params: self.params,
                explicit_method: self.method,
                detected_method: AtomicU8::new(0),
                http,
                jwt_expiry: self.jwt_expiry,
                #[cfg(feature = "dpop")]
                dpop: self.dpop,
            }),
        })
    }
}

impl ClientCredentialsBuilder {
    fn has_identity(&self) -> bool {
        #[cfg(feature = "mtls")]
        return self.identity.is_some();
        #[cfg(not(feature = "mtls"))]
        false
    }
}

#[cfg(feature = "rustls")]
fn default_client(connect_timeout: Duration) -> Result<HttpClient, Error> {
    HttpClient::default_client(connect_timeout)
}

#[cfg(not(feature = "rustls"))]
fn default_client(_connect_timeout: Duration) -> Result<HttpClient, Error> {
    Err(Error::config(
        "no HTTP client for the token endpoint: enable the `rustls` feature or pass one with \
         `.http_client(..)`",
    ))
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("endpoint", &self.inner.endpoint)
            .field("client_id", &self.inner.client_id)
            .field("client_secret", &"[redacted]")
            .field("private_key", &self.inner.private_key)
            .field("scope", &self.inner.scope)
            .field("auth_method", &self.auth_method())
            .finish()
    }
}

impl fmt::Debug for ClientCredentialsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentialsBuilder")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("private_key", &self.private_key)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> ClientCredentialsBuilder {
        ClientCredentials::builder()
            .token_endpoint("https://idp.example/oauth2/default/v1/token")
            .unwrap()
            .client_id("id")
            .client_secret("top-secret-value")
    }

    #[test]
    fn build_errors_name_what_to_fix() {
        let err = ClientCredentials::builder()
            .client_secret("x")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("client id"), "{err}");
        let err = builder().client_id("").build().unwrap_err();
        assert!(err.to_string().contains("client id is empty"));
        let err = ClientCredentials::builder()
            .client_id("a")
            .client_secret("b")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("token endpoint"));
        let err = builder().scopes(["bad\"scope"]).build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        let err = builder()
            .param("grant_type", "password")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("grant_type"));
        let err = ClientCredentials::builder()
            .token_endpoint("http://idp.example/token")
            .unwrap()
            .client_id("id")
            .client_secret("s")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("allow_http"));
    }

    #[test]
    fn secret_never_shows() {
        let credentials = builder().build().unwrap();
        assert!(!format!("{credentials:?}").contains("top-secret-value"));
        let b = builder();
        assert!(!format!("{b:?}").contains("top-secret-value"));
        let err = builder()
            .client_secret("line\nbreak-secret")
            .build()
            .unwrap_err();
        assert!(!err.to_string().contains("break-secret"));
    }

    #[cfg(not(feature = "jwt-client-auth"))]
    #[test]
    fn jwt_methods_without_the_feature_fail_at_build() {
        for method in [
            ClientAuthMethod::ClientSecretJwt,
            ClientAuthMethod::PrivateKeyJwt,
        ] {
            let err = builder().auth_method(method).build().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Configuration);
            assert!(err.to_string().contains("`jwt-client-auth`"), "{err}");
            assert!(err.to_string().contains(method.as_str()), "{err}");
        }
    }

    #[cfg(feature = "jwt-client-auth")]
    #[test]
    fn jwt_method_configuration() {
        use crate::JwtSigningAlgorithm;
        let pem = include_bytes!("../tests/oidc-provider/test-client-key.pem");
        let no_secret = || {
            ClientCredentials::builder()
                .token_endpoint("https://idp.example/token")
                .unwrap()
                .client_id("id")
        };
        // private_key_jwt needs no secret, and its key never shows.
        let credentials = no_secret()
            .private_key_jwt(JwtSigningAlgorithm::RS256, pem, Some("k1"))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            credentials.auth_method(),
            Some(ClientAuthMethod::PrivateKeyJwt)
        );
        let debug = format!("{credentials:?}");
        assert!(
            debug.contains("[redacted]") && !debug.contains("MII"),
            "{debug}"
        );
        // The method without a key, client_secret_jwt without a secret: named errors.
        let err = no_secret()
            .auth_method(ClientAuthMethod::PrivateKeyJwt)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("private_key_jwt"), "{err}");
        let err = no_secret()
            .auth_method(ClientAuthMethod::ClientSecretJwt)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("client secret"), "{err}");
        // Every other method still needs the secret, key or not.
        let err = no_secret()
            .private_key_jwt(JwtSigningAlgorithm::RS256, pem, None)
            .unwrap()
            .auth_method(ClientAuthMethod::ClientSecretPost)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("client secret"), "{err}");
        let err = builder()
            .param("client_assertion", "x")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("client_assertion"), "{err}");
    }

    #[test]
    fn scopes_are_split_and_joined() {
        let credentials = builder()
            .scopes(["role:app catalog:read", "organization:read"])
            .build()
            .unwrap();
        assert_eq!(
            credentials.inner.scope.as_deref(),
            Some("role:app catalog:read organization:read")
        );
    }
}
