//! [`AuthServer`]: its builder, the state its endpoints share, routing, and the metadata
//! document.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{Request, StatusCode};
use http_body::Body;
use tokio::task::JoinHandle;

use super::behaviour::{misbehave, Behavior};
use super::in_process::InProcessClient;
use super::listener::serve;
use super::lock;
use super::response::{json, Reply};
use super::token_endpoint::TokenRequestSeen;
use crate::ClientAuthMethod;

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

/// A registered client.
pub(super) struct Client {
    pub(super) secret: String,
    /// The only auth method it may use; `None`: any.
    pub(super) method: Option<ClientAuthMethod>,
    /// The scopes it may request; `None`: any.
    pub(super) scopes: Option<Vec<String>>,
}

/// What the endpoints of one server share: its configuration, scripts, counters and the
/// tokens it issued.
pub(super) struct State {
    pub(super) issuer_path: String,
    pub(super) lifetime: Mutex<Duration>,
    pub(super) clients: HashMap<String, Client>,
    pub(super) script: Mutex<VecDeque<Behavior>>,
    pub(super) default_behavior: Mutex<Option<Behavior>>,
    discovery_script: Mutex<VecDeque<Behavior>>,
    locations: Vec<MetadataLocation>,
    wrong_issuer: bool,
    advertised_methods: Option<Vec<String>>,
    pub(super) token_requests: AtomicUsize,
    discovery_requests: AtomicUsize,
    request_paths: Mutex<Vec<String>>,
    /// Every token issued, with the moment it expires.
    pub(super) issued: Mutex<HashMap<String, SystemTime>>,
    pub(super) last_request: Mutex<Option<TokenRequestSeen>>,
    /// Extra and revoked client secrets, and the requests that presented each.
    pub(super) rotation: Mutex<super::rotation::Rotation>,
    /// Known once the listener is bound; the issuer URL and the tokens name it.
    addr: Mutex<Option<SocketAddr>>,
    #[cfg(feature = "dpop")]
    pub(super) dpop: super::dpop::AuthDpop,
}

/// The loopback authorization server. Stops when dropped.
pub struct AuthServer {
    addr: SocketAddr,
    pub(super) state: Arc<State>,
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

    /// The shared state, for an [`ApiServer`](super::ApiServer) that trusts this server's tokens.
    pub(super) fn handle(&self) -> Arc<State> {
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
            rotation: Mutex::default(),
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

impl State {
    /// Records the path and hands the request to the token endpoint, the metadata endpoint, or
    /// answers 404.
    pub(super) async fn route<B>(self: Arc<Self>, request: Request<B>) -> Reply
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

    /// The issuer URL, from the bound address.
    pub(super) fn issuer_url(&self) -> String {
        let addr = lock(&self.addr).map(|a| a.to_string()).unwrap_or_default();
        format!("http://{addr}{}", self.issuer_path)
    }

    async fn metadata(&self) -> Reply {
        self.discovery_requests.fetch_add(1, Ordering::SeqCst);
        let behavior = lock(&self.discovery_script).pop_front();
        if let Some(response) = misbehave(behavior.as_ref(), "").await {
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

    /// Whether this server issued `token` and it has not expired.
    pub(super) fn is_valid(&self, token: &str) -> bool {
        lock(&self.issued)
            .get(token)
            .is_some_and(|expires| *expires > SystemTime::now())
    }
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
