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
//! It counts the token and metadata requests it answered and records every request path. [`ApiServer`] answers 200 only to requests that
//! carry a token this server issued (unexpired) and the right API key.
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

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::ClientAuthMethod;

#[cfg(feature = "dpop")]
mod dpop;

/// One scripted answer of the token endpoint (or of the metadata endpoint, see
/// [`AuthServer::push_discovery_behavior`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Behavior {
    /// A normal answer.
    Normal,
    /// A normal answer whose `expires_in` is this JSON value (a number, a string, `null` to omit).
    ExpiresIn(serde_json::Value),
    /// A normal answer after a delay.
    Delay(Duration),
    /// Never answers (until the connection is dropped).
    Hang,
    /// This status with an RFC 6749 §5.2 error body.
    OAuthError(StatusCode, &'static str),
    /// This status with this body and content type.
    Raw(StatusCode, &'static str, String),
    /// HTTP 429 with `Retry-After: <seconds>`.
    RateLimited(u64),
    /// HTTP 429 with Okta's `X-Rate-Limit-Remaining: 0` and `X-Rate-Limit-Reset: <now + seconds>`.
    OktaRateLimited(u64),
    /// HTTP 503 with `Retry-After: <seconds>`.
    Unavailable(u64),
    /// A redirect to this location.
    Redirect(String),
}

impl Behavior {
    /// HTTP 500 with a JSON `server_error`.
    pub fn server_error() -> Self {
        Behavior::OAuthError(StatusCode::INTERNAL_SERVER_ERROR, "server_error")
    }

    /// HTTP 401 `invalid_client`.
    pub fn invalid_client() -> Self {
        Behavior::OAuthError(StatusCode::UNAUTHORIZED, "invalid_client")
    }

    /// HTTP 502 with an HTML page, as a proxy would send.
    pub fn garbage() -> Self {
        Behavior::Raw(
            StatusCode::BAD_GATEWAY,
            "text/html",
            "<html><body>502 Bad Gateway</body></html>".to_string(),
        )
    }
}

/// Which well-known metadata locations the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetadataLocation {
    /// `/.well-known/oauth-authorization-server{issuer path}` (RFC 8414 §3.1).
    Rfc8414,
    /// `{issuer}/.well-known/oauth-authorization-server` (Okta).
    Okta,
    /// `{issuer}/.well-known/openid-configuration` (OpenID Connect Discovery).
    OpenId,
    /// `/.well-known/openid-configuration{issuer path}` (the RFC 8414 §5 compatibility form).
    OpenIdInserted,
}

struct Client {
    secret: String,
    method: Option<ClientAuthMethod>,
    scopes: Option<Vec<String>>,
}

struct State {
    issuer_path: String,
    lifetime: Mutex<Duration>,
    clients: HashMap<String, Client>,
    script: Mutex<VecDeque<Behavior>>,
    default_behavior: Mutex<Option<Behavior>>,
    discovery_script: Mutex<VecDeque<Behavior>>,
    locations: Vec<MetadataLocation>,
    wrong_issuer: bool,
    advertised_methods: Option<Vec<String>>,
    token_requests: AtomicUsize,
    discovery_requests: AtomicUsize,
    request_paths: Mutex<Vec<String>>,
    issued: Mutex<HashMap<String, SystemTime>>,
    last_request: Mutex<Option<TokenRequestSeen>>,
    addr: Mutex<Option<SocketAddr>>,
    #[cfg(feature = "dpop")]
    dpop: dpop::AuthDpop,
}

/// What the server saw of the last token request (for assertions on the wire format).
#[derive(Debug, Clone)]
pub struct TokenRequestSeen {
    /// The client authentication method used.
    pub method: Option<ClientAuthMethod>,
    /// The form fields (the client secret, if sent in the body, replaced by `[redacted]`; a
    /// `client_assertion` is kept, it is short-lived and signed).
    pub form: Vec<(String, String)>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The `Accept` header.
    pub accept: Option<String>,
}

/// The loopback authorization server. Stops when dropped.
pub struct AuthServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

/// Configures an [`AuthServer`].
#[derive(Debug)]
pub struct AuthServerBuilder {
    issuer_path: String,
    lifetime: Duration,
    clients: HashMap<String, Client>,
    locations: Vec<MetadataLocation>,
    wrong_issuer: bool,
    advertised_methods: Option<Vec<String>>,
}

impl AuthServer {
    /// The client id registered by [`AuthServer::start`].
    pub const CLIENT_ID: &'static str = "test-client";
    /// Its secret; holds characters that RFC 6749 §2.3.1 encoding must escape.
    pub const CLIENT_SECRET: &'static str = "s3cret:with%special+chars é";

    /// Starts a server with one client ([`CLIENT_ID`](Self::CLIENT_ID),
    /// [`CLIENT_SECRET`](Self::CLIENT_SECRET), either auth method), one-hour tokens, and the
    /// RFC 8414 and Okta metadata locations.
    pub async fn start() -> std::io::Result<Self> {
        Self::builder().start().await
    }

    /// Starts configuring a server.
    pub fn builder() -> AuthServerBuilder {
        AuthServerBuilder {
            issuer_path: "/oauth2/default".to_string(),
            lifetime: Duration::from_secs(3600),
            clients: HashMap::new(),
            locations: vec![MetadataLocation::Rfc8414, MetadataLocation::Okta],
            wrong_issuer: false,
            advertised_methods: Some(vec![
                "client_secret_basic".to_string(),
                "client_secret_post".to_string(),
            ]),
        }
    }

    /// The issuer URL, e.g. `http://127.0.0.1:41234/oauth2/default`.
    pub fn issuer(&self) -> String {
        format!("http://{}{}", self.addr, self.state.issuer_path)
    }

    /// The token endpoint URL, `{issuer}/v1/token`.
    pub fn token_endpoint(&self) -> String {
        format!("{}/v1/token", self.issuer())
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many token requests the server answered (any answer, errors included).
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// How many metadata requests the server answered with a document (or a scripted
    /// [`push_discovery_behavior`](Self::push_discovery_behavior) answer); requests for
    /// locations it does not serve are not counted (see [`request_paths`](Self::request_paths)).
    pub fn discovery_requests(&self) -> usize {
        self.state.discovery_requests.load(Ordering::SeqCst)
    }

    /// The path of every request the server received, in order: token, metadata, and paths it
    /// does not serve (answered 404). Shows which well-known locations a client tried, and that
    /// a redirect target was never requested.
    pub fn request_paths(&self) -> Vec<String> {
        lock(&self.state.request_paths).clone()
    }

    /// What the server saw of the last token request.
    pub fn last_request(&self) -> Option<TokenRequestSeen> {
        lock(&self.state.last_request).clone()
    }

    /// Queues answers for the next token requests, in order; afterwards answers are normal.
    pub fn push_behavior(&self, behaviors: impl IntoIterator<Item = Behavior>) {
        lock(&self.state.script).extend(behaviors);
    }

    /// The answer to every token request once the queue of [`push_behavior`](Self::push_behavior)
    /// is empty: `Some(Behavior::server_error())` for an outage, `None` to end it.
    pub fn set_default_behavior(&self, behavior: Option<Behavior>) {
        *lock(&self.state.default_behavior) = behavior;
    }

    /// A client that reaches this server in-process, without a socket: pass it to
    /// [`ClientCredentialsBuilder::http_client`](crate::ClientCredentialsBuilder::http_client).
    /// The server's logic is the same; what it adds is determinism under tokio's paused clock
    /// (`#[tokio::test(start_paused = true)]`), where real socket I/O would let the clock jump
    /// past timeouts while a response is in flight.
    pub fn in_process_client(&self) -> InProcessClient {
        InProcessClient {
            state: self.state.clone(),
        }
    }

    /// Queues answers for the next metadata requests.
    pub fn push_discovery_behavior(&self, behaviors: impl IntoIterator<Item = Behavior>) {
        lock(&self.state.discovery_script).extend(behaviors);
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        *lock(&self.state.lifetime) = lifetime;
    }

    /// Whether `token` was issued by this server and has not expired.
    pub fn is_valid_token(&self, token: &str) -> bool {
        self.state.is_valid(token)
    }

    /// Forgets every issued token: they are no longer valid (as after a key rotation).
    pub fn revoke_all(&self) {
        lock(&self.state.issued).clear();
    }

    fn handle(&self) -> Arc<State> {
        self.state.clone()
    }
}

impl AuthServerBuilder {
    /// Registers a client. `method`: the only auth method it may use (`None`: any of
    /// `client_secret_basic`, `client_secret_post` and, with the feature `jwt-client-auth`,
    /// `client_secret_jwt`, whose HS256 key is `secret`).
    pub fn client(mut self, id: &str, secret: &str, method: Option<ClientAuthMethod>) -> Self {
        self.clients.insert(
            id.to_string(),
            Client {
                secret: secret.to_string(),
                method,
                scopes: None,
            },
        );
        self
    }

    /// Restricts the scopes the last registered client may request (others: `invalid_scope`).
    pub fn allowed_scopes(mut self, id: &str, scopes: &[&str]) -> Self {
        if let Some(client) = self.clients.get_mut(id) {
            client.scopes = Some(scopes.iter().map(|s| s.to_string()).collect());
        }
        self
    }

    /// The issuer's path. Default `/oauth2/default`.
    pub fn issuer_path(mut self, path: &str) -> Self {
        self.issuer_path = format!("/{}", path.trim_matches('/'));
        if self.issuer_path == "/" {
            self.issuer_path.clear();
        }
        self
    }

    /// Lifetime of the issued tokens. Default one hour.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// The metadata locations served. Default RFC 8414 and Okta.
    pub fn metadata_locations(mut self, locations: &[MetadataLocation]) -> Self {
        self.locations = locations.to_vec();
        self
    }

    /// Serves metadata that names another issuer (an attack RFC 8414 §3.3 guards against).
    pub fn wrong_issuer(mut self) -> Self {
        self.wrong_issuer = true;
        self
    }

    /// The `token_endpoint_auth_methods_supported` advertised (`None`: the field is left out).
    pub fn advertised_auth_methods(mut self, methods: Option<&[&str]>) -> Self {
        self.advertised_methods = methods.map(|m| m.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(mut self) -> std::io::Result<AuthServer> {
        if self.clients.is_empty() {
            self = self.client(AuthServer::CLIENT_ID, AuthServer::CLIENT_SECRET, None);
        }
        let state = Arc::new(State {
            issuer_path: self.issuer_path,
            lifetime: Mutex::new(self.lifetime),
            clients: self.clients,
            script: Mutex::new(VecDeque::new()),
            default_behavior: Mutex::new(None),
            discovery_script: Mutex::new(VecDeque::new()),
            locations: self.locations,
            wrong_issuer: self.wrong_issuer,
            advertised_methods: self.advertised_methods,
            token_requests: AtomicUsize::new(0),
            discovery_requests: AtomicUsize::new(0),
            request_paths: Mutex::new(Vec::new()),
            issued: Mutex::new(HashMap::new()),
            last_request: Mutex::new(None),
            addr: Mutex::new(None),
            #[cfg(feature = "dpop")]
            dpop: Default::default(),
        });
        let (addr, task) = serve(state.clone(), |state, request| {
            Box::pin(async move { state.route(request).await })
        })
        .await?;
        *lock(&state.addr) = Some(addr);
        Ok(AuthServer { addr, state, task })
    }
}

type Handler<T> = fn(Arc<T>, Request<Incoming>) -> crate::BoxFuture<'static, Response<Full<Bytes>>>;

/// Serves `handler` on `127.0.0.1:0` with HTTP/1.1 and HTTP/2; every connection ends with the task.
async fn serve<T: Send + Sync + 'static>(
    state: Arc<T>,
    handler: Handler<T>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handler(state, request).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
            // Reap finished connections so the set does not grow without bound.
            while connections.try_join_next().is_some() {}
        }
    });
    Ok((addr, task))
}

impl State {
    async fn route<B>(self: Arc<Self>, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body + Send,
        B::Data: Send,
        B::Error: Into<crate::BoxError>,
    {
        let path = request.uri().path().to_string();
        lock(&self.request_paths).push(path.clone());
        let issuer = &self.issuer_path;
        if path == format!("{issuer}/v1/token") {
            return self.token(request).await;
        }
        // With an empty issuer path two forms name the same URL: serve it if either is served.
        let served = self.locations.iter().any(|location| {
            let served_path = match location {
                MetadataLocation::Rfc8414 => {
                    format!("/.well-known/oauth-authorization-server{issuer}")
                }
                MetadataLocation::Okta => {
                    format!("{issuer}/.well-known/oauth-authorization-server")
                }
                MetadataLocation::OpenId => format!("{issuer}/.well-known/openid-configuration"),
                MetadataLocation::OpenIdInserted => {
                    format!("/.well-known/openid-configuration{issuer}")
                }
            };
            served_path == path
        });
        if served {
            self.metadata().await
        } else {
            json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found"}),
            )
        }
    }

    fn issuer_url(&self) -> String {
        let addr = lock(&self.addr).map(|a| a.to_string()).unwrap_or_default();
        format!("http://{addr}{}", self.issuer_path)
    }

    async fn metadata(&self) -> Response<Full<Bytes>> {
        self.discovery_requests.fetch_add(1, Ordering::SeqCst);
        let behavior = lock(&self.discovery_script).pop_front();
        if let Some(response) = misbehave(behavior.as_ref()).await {
            return response;
        }
        let issuer = self.issuer_url();
        let mut document = serde_json::json!({
            "issuer": if self.wrong_issuer { "https://attacker.example/oauth2/default".to_string() } else { issuer.clone() },
            "token_endpoint": format!("{issuer}/v1/token"),
            "grant_types_supported": ["client_credentials"],
            "response_types_supported": ["token"],
        });
        if let Some(methods) = &self.advertised_methods {
            document["token_endpoint_auth_methods_supported"] = serde_json::json!(methods);
        }
        json(StatusCode::OK, document)
    }

    async fn token<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body + Send,
        B::Data: Send,
        B::Error: Into<crate::BoxError>,
    {
        let behavior = lock(&self.script)
            .pop_front()
            .or_else(|| lock(&self.default_behavior).clone());
        let response = self.token_inner(request, behavior).await;
        self.token_requests.fetch_add(1, Ordering::SeqCst);
        response
    }

    async fn token_inner<B>(
        &self,
        request: Request<B>,
        behavior: Option<Behavior>,
    ) -> Response<Full<Bytes>>
    where
        B: Body + Send,
        B::Data: Send,
        B::Error: Into<crate::BoxError>,
    {
        if request.method() != Method::POST {
            return oauth_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "use POST",
            );
        }
        let (content_type, accept, authorization) = {
            let header = |name: header::HeaderName| {
                request
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            (
                header(header::CONTENT_TYPE),
                header(header::ACCEPT),
                header(header::AUTHORIZATION),
            )
        };
        #[cfg(feature = "dpop")]
        let dpop_jkt = match self.dpop_token_request(request.headers()) {
            Ok(jkt) => jkt,
            Err(refused) => return *refused,
        };
        #[cfg(not(feature = "dpop"))]
        let dpop_jkt: Option<String> = None;
        let body = match Limited::new(request.into_body(), 64 * 1024).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "body unreadable",
                )
            }
        };
        let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());

        // Client authentication (RFC 6749 §2.3.1): exactly one method.
        let basic = authorization.as_deref().and_then(|a| {
            let (scheme, rest) = a.split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("basic") {
                return None;
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let (id, secret) = decoded.split_once(':')?;
            let decode = |s: &str| {
                form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            Some((decode(id)?, decode(secret)?))
        });
        let post =
            field("client_secret").map(|secret| (field("client_id").unwrap_or_default(), secret));
        let assertion = field("client_assertion");
        if assertion.is_some() && (basic.is_some() || post.is_some()) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "more than one client authentication method",
            );
        }
        let (method, id, credential) = match (basic, post, assertion) {
            (Some(_), Some(_), _) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "more than one client authentication method",
                )
            }
            (Some((id, secret)), None, _) => (
                ClientAuthMethod::ClientSecretBasic,
                id,
                Credential::Secret(secret),
            ),
            (None, Some((id, secret)), _) => (
                ClientAuthMethod::ClientSecretPost,
                id,
                Credential::Secret(secret),
            ),
            (None, None, Some(assertion)) => {
                if field("client_assertion_type").as_deref() != Some(crate::assertion::JWT_BEARER) {
                    return oauth_error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        "unsupported client_assertion_type",
                    );
                }
                match assertion_method(&assertion, field("client_id")) {
                    Some((method, id)) => (method, id, Credential::Assertion(assertion)),
                    None => {
                        return oauth_error(
                            StatusCode::UNAUTHORIZED,
                            "invalid_client",
                            "client assertions are not supported or malformed (JWT client \
                             authentication needs the feature `jwt-client-auth`)",
                        )
                    }
                }
            }
            (None, None, None) => {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "no client authentication",
                )
            }
        };
        *lock(&self.last_request) = Some(TokenRequestSeen {
            method: Some(method),
            form: form
                .iter()
                .map(|(k, v)| {
                    let v = if k == "client_secret" {
                        "[redacted]".to_string()
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect(),
            content_type: content_type.clone(),
            accept,
        });
        if let Some(response) = misbehave(behavior.as_ref()).await {
            return response;
        }
        if content_type.as_deref() != Some("application/x-www-form-urlencoded") {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body must be form-urlencoded",
            );
        }
        let Some(client) = self.clients.get(&id) else {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed.",
            );
        };
        let authenticated = match &credential {
            Credential::Secret(secret) => client.secret == *secret,
            Credential::Assertion(jwt) => self.verify_assertion(jwt, &id, &client.secret, method),
        };
        if !authenticated || client.method.is_some_and(|m| m != method) {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed.",
            );
        }
        match field("grant_type").as_deref() {
            Some("client_credentials") => {}
            Some(_) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "only client_credentials",
                )
            }
            None => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "grant_type is missing",
                )
            }
        }
        let scope = field("scope").unwrap_or_default();
        if let Some(allowed) = &client.scopes {
            if let Some(bad) = scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .find(|s| !allowed.iter().any(|a| a == s))
            {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    &format!("scope {bad} is not allowed"),
                );
            }
        }
        let lifetime = *lock(&self.lifetime);
        let now = SystemTime::now();
        let token = self.issue(&id, &scope, now, lifetime, dpop_jkt.as_deref());
        let expires_in = match behavior {
            Some(Behavior::ExpiresIn(value)) => value,
            _ => serde_json::json!(lifetime.as_secs()),
        };
        let mut body = serde_json::json!({
            "token_type": if dpop_jkt.is_some() { "DPoP" } else { "Bearer" },
            "access_token": token,
            "scope": scope,
        });
        if !expires_in.is_null() {
            body["expires_in"] = expires_in;
        }
        let mut response = json(StatusCode::OK, body);
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        #[cfg(feature = "dpop")]
        self.add_dpop_nonce(response.headers_mut());
        response
    }

    /// RFC 7523 §3: a `client_secret_jwt` assertion signed HS256 with the client's secret, `iss`
    /// and `sub` the client id, `aud` this token endpoint, unexpired, with a `jti`.
    /// `private_key_jwt` is not verified here (no client keys are registered): refused.
    #[cfg(feature = "jwt-client-auth")]
    fn verify_assertion(
        &self,
        jwt: &str,
        client_id: &str,
        secret: &str,
        method: ClientAuthMethod,
    ) -> bool {
        if method != ClientAuthMethod::ClientSecretJwt {
            return false;
        }
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_audience(&[format!("{}/v1/token", self.issuer_url())]);
        validation.set_issuer(&[client_id]);
        validation.sub = Some(client_id.to_string());
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.leeway = 0;
        jsonwebtoken::decode::<serde_json::Value>(
            jwt,
            &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
            &validation,
        )
        .is_ok_and(|data| data.claims["jti"].as_str().is_some_and(|j| !j.is_empty()))
    }

    #[cfg(not(feature = "jwt-client-auth"))]
    fn verify_assertion(&self, _: &str, _: &str, _: &str, _: ClientAuthMethod) -> bool {
        false
    }

    fn issue(
        &self,
        client_id: &str,
        scope: &str,
        now: SystemTime,
        lifetime: Duration,
        dpop_jkt: Option<&str>,
    ) -> String {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = engine.encode(r#"{"alg":"RS256","typ":"JWT","kid":"test"}"#);
        let mut claims = serde_json::json!({
            "iss": self.issuer_url(),
            "sub": client_id,
            "cid": client_id,
            "scp": scope.split(' ').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
            "iat": iat,
            "exp": iat + lifetime.as_secs(),
            "jti": format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
        });
        if let Some(jkt) = dpop_jkt {
            claims["cnf"] = serde_json::json!({ "jkt": jkt });
        }
        let payload = engine.encode(claims.to_string());
        let signature = engine.encode((0..32).map(|_| fastrand::u8(..)).collect::<Vec<u8>>());
        let token = format!("{header}.{payload}.{signature}");
        lock(&self.issued).insert(token.clone(), now + lifetime);
        #[cfg(feature = "dpop")]
        if let Some(jkt) = dpop_jkt {
            self.bind_dpop(&token, jkt.to_string());
        }
        token
    }

    fn is_valid(&self, token: &str) -> bool {
        lock(&self.issued)
            .get(token)
            .is_some_and(|expires| *expires > SystemTime::now())
    }
}

async fn misbehave(behavior: Option<&Behavior>) -> Option<Response<Full<Bytes>>> {
    match behavior? {
        Behavior::Normal | Behavior::ExpiresIn(_) => None,
        Behavior::Delay(delay) => {
            tokio::time::sleep(*delay).await;
            None
        }
        Behavior::Hang => {
            std::future::pending::<()>().await;
            None
        }
        Behavior::OAuthError(status, code) => Some(oauth_error(*status, code, "scripted failure")),
        Behavior::Raw(status, content_type, body) => Some(
            Response::builder()
                .status(*status)
                .header(header::CONTENT_TYPE, *content_type)
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap_or_default(),
        ),
        Behavior::RateLimited(seconds) => {
            let mut response =
                oauth_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
            Some(response)
        }
        Behavior::OktaRateLimited(seconds) => {
            let mut response =
                oauth_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down");
            let reset = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                + seconds;
            response
                .headers_mut()
                .insert("x-rate-limit-limit", HeaderValue::from(600));
            response
                .headers_mut()
                .insert("x-rate-limit-remaining", HeaderValue::from(0));
            response
                .headers_mut()
                .insert("x-rate-limit-reset", HeaderValue::from(reset));
            Some(response)
        }
        Behavior::Unavailable(seconds) => {
            let mut response = oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "try later",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
            Some(response)
        }
        Behavior::Redirect(location) => Some(
            Response::builder()
                .status(StatusCode::FOUND)
                .header(header::LOCATION, location.as_str())
                .body(Full::default())
                .unwrap_or_default(),
        ),
    }
}

/// How a token request authenticated the client.
enum Credential {
    /// `client_secret_basic` or `client_secret_post`.
    Secret(String),
    /// A JWT client assertion (RFC 7523).
    Assertion(String),
}

/// The method (from the JWS `alg`: HMAC is `client_secret_jwt`) and the client id (the
/// `client_id` field, else the unverified `sub`) of a client assertion. `None` when it is
/// malformed, or always without the feature `jwt-client-auth`.
#[cfg(feature = "jwt-client-auth")]
fn assertion_method(jwt: &str, client_id: Option<String>) -> Option<(ClientAuthMethod, String)> {
    let header = jsonwebtoken::decode_header(jwt).ok()?;
    let method = match header.alg {
        jsonwebtoken::Algorithm::HS256
        | jsonwebtoken::Algorithm::HS384
        | jsonwebtoken::Algorithm::HS512 => ClientAuthMethod::ClientSecretJwt,
        _ => ClientAuthMethod::PrivateKeyJwt,
    };
    let id = match client_id {
        Some(id) => id,
        None => {
            let payload = jwt.split('.').nth(1)?;
            let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()?;
            let claims: serde_json::Value = serde_json::from_slice(&payload).ok()?;
            claims["sub"].as_str()?.to_string()
        }
    };
    Some((method, id))
}

#[cfg(not(feature = "jwt-client-auth"))]
fn assertion_method(_: &str, _: Option<String>) -> Option<(ClientAuthMethod, String)> {
    None
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({"error": error, "error_description": description}),
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for AuthServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthServer")
            .field("addr", &self.addr)
            .field("token_requests", &self.token_requests())
            .finish()
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("secret", &"[redacted]")
            .field("method", &self.method)
            .finish()
    }
}

/// A tower service that hands requests to an [`AuthServer`] in-process; see
/// [`AuthServer::in_process_client`].
#[derive(Clone)]
pub struct InProcessClient {
    state: Arc<State>,
}

impl<B> tower_service::Service<Request<B>> for InProcessClient
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<crate::BoxError>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = crate::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move { Ok(state.route(request).await) })
    }
}

impl fmt::Debug for InProcessClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessClient").finish_non_exhaustive()
    }
}

/// A protected API on loopback: answers `200 {"ok":true}` to requests that carry a valid token
/// of its [`AuthServer`] and the right `x-api-key`, `401` with a RFC 6750
/// `WWW-Authenticate: Bearer error="invalid_token"` otherwise. Stops when dropped.
pub struct ApiServer {
    addr: SocketAddr,
    state: Arc<ApiState>,
    task: JoinHandle<()>,
}

struct ApiState {
    auth: Arc<State>,
    api_key: String,
    accepted: AtomicUsize,
    rejected: AtomicUsize,
    #[cfg(feature = "dpop")]
    dpop: crate::dpop::verify::DpopServer,
}

impl ApiServer {
    /// Starts an API that trusts `auth`'s tokens and wants `api_key`.
    pub async fn start(auth: &AuthServer, api_key: &str) -> std::io::Result<Self> {
        let state = Arc::new(ApiState {
            auth: auth.handle(),
            api_key: api_key.to_string(),
            accepted: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
            #[cfg(feature = "dpop")]
            dpop: Default::default(),
        });
        let (addr, task) = serve(state.clone(), |state, request| {
            Box::pin(async move { state.answer(request) })
        })
        .await?;
        Ok(ApiServer { addr, state, task })
    }

    /// The base URL, e.g. `http://127.0.0.1:41235`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered 200.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Requests answered 401.
    pub fn rejected(&self) -> usize {
        self.state.rejected.load(Ordering::SeqCst)
    }
}

impl ApiState {
    fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        #[cfg(feature = "dpop")]
        {
            let key_ok = request
                .headers()
                .get("x-api-key")
                .is_some_and(|k| k.as_bytes() == self.api_key.as_bytes());
            let method = request.method().as_str();
            if let Some(response) =
                self.answer_dpop(request.headers(), method, request.uri(), key_ok)
            {
                return response;
            }
        }
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let key_ok = request
            .headers()
            .get("x-api-key")
            .is_some_and(|k| k.as_bytes() == self.api_key.as_bytes());
        match token {
            Some(token) if key_ok && self.auth.is_valid(token) => {
                self.accepted.fetch_add(1, Ordering::SeqCst);
                json(
                    StatusCode::OK,
                    serde_json::json!({"ok": true, "path": request.uri().path()}),
                )
            }
            _ => {
                self.rejected.fetch_add(1, Ordering::SeqCst);
                let mut response = json(
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({"error": "invalid_token"}),
                );
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                );
                response
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .field("accepted", &self.accepted())
            .field("rejected", &self.rejected())
            .finish()
    }
}
