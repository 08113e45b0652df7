//! [`AuthServer`]: its builder and the methods tests drive it with (scripts, counters, secret
//! rotation, DPoP nonces).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::behaviour::Behavior;
use super::in_process::InProcessClient;
use super::listener::serve;
use super::lock;
use super::router::route;
use super::state::{Client, MetadataLocation, State, TokenRequestSeen};
use crate::ClientAuthMethod;

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
    refuse_replayed_assertions: bool,
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
            refuse_replayed_assertions: false,
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

    /// Accepts `secret` for `client_id` as well as the secrets it already has, as an
    /// authorization server does during a rotation.
    ///
    /// ```
    /// use tower_client_credentials::testing::AuthServer;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let server = AuthServer::start().await?;
    /// server.add_client_secret(AuthServer::CLIENT_ID, "the-next-secret");
    /// server.revoke_client_secret(AuthServer::CLIENT_ID, AuthServer::CLIENT_SECRET);
    /// assert_eq!(server.token_requests_with_secret("the-next-secret"), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn add_client_secret(&self, client_id: &str, secret: &str) {
        lock(&self.state.rotation).add(client_id, secret);
    }

    /// Stops accepting `secret` for `client_id` (tokens already issued stay valid; see
    /// [`revoke_all`](Self::revoke_all)). See [`add_client_secret`](Self::add_client_secret).
    pub fn revoke_client_secret(&self, client_id: &str, secret: &str) {
        lock(&self.state.rotation).revoke(client_id, secret);
    }

    /// How many token requests presented `secret` (in a Basic header or the form body),
    /// whether it was accepted or not. See [`add_client_secret`](Self::add_client_secret).
    pub fn token_requests_with_secret(&self, secret: &str) -> usize {
        lock(&self.state.rotation).presented(secret)
    }

    /// Requires `nonce` in the DPoP proofs of token requests from now on (`None`: no nonce).
    /// A proof without it gets RFC 9449 §8's `400 use_dpop_nonce` with a `DPoP-Nonce` header.
    #[cfg(feature = "dpop")]
    pub fn require_dpop_nonce(&self, nonce: Option<&str>) {
        self.state.dpop.server.set_nonce(nonce);
    }

    /// The thumbprint (`cnf.jkt`) of the key `access_token` is bound to, if it is a DPoP token
    /// this server issued.
    #[cfg(feature = "dpop")]
    pub fn dpop_jkt(&self, access_token: &str) -> Option<String> {
        self.state.dpop_bound_to(access_token)
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
                public_key: None,
            },
        );
        self
    }

    /// Registers a `private_key_jwt` client (RFC 7523 §2.2, feature `jwt-client-auth`): its
    /// assertions must be signed (RS256 or ES256) by the private half of `public_key_pem` (an
    /// SPKI `-----BEGIN PUBLIC KEY-----`), with `iss` and `sub` the client id, `aud` the token
    /// endpoint or the issuer, an `exp` ahead and a `jti`. The key may be a platform's, as for
    /// a workload identity token.
    ///
    /// ```
    /// use tower_client_credentials::testing::AuthServer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # let pem = include_bytes!("../../tests/oidc-provider/test-client-key.pub.pem");
    /// let server = AuthServer::builder()
    ///     .private_key_jwt_client("workload", pem)
    ///     .refuse_replayed_assertions()
    ///     .start()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn private_key_jwt_client(mut self, id: &str, public_key_pem: &[u8]) -> Self {
        self.clients.insert(
            id.to_string(),
            Client {
                secret: String::new(),
                method: Some(ClientAuthMethod::PrivateKeyJwt),
                scopes: None,
                public_key: Some(public_key_pem.to_vec()),
            },
        );
        self
    }

    /// Accepts each client assertion's `jti` once (RFC 7523 §3 lets a server refuse a replay;
    /// oidc-provider and Okta do): a second request with an assertion already seen gets
    /// `invalid_client`. The server authenticates the client before it checks a DPoP proof,
    /// as they do, so a request refused for its nonce has used up its assertion.
    pub fn refuse_replayed_assertions(mut self) -> Self {
        self.refuse_replayed_assertions = true;
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
            used_jtis: self
                .refuse_replayed_assertions
                .then(|| Mutex::new(HashSet::new())),
            rotation: Mutex::default(),
            addr: Mutex::new(None),
            #[cfg(feature = "dpop")]
            dpop: Default::default(),
        });
        let (addr, task) = serve(state.clone(), |state, request| {
            Box::pin(route(state, request))
        })
        .await?;
        *lock(&state.addr) = Some(addr);
        Ok(AuthServer { addr, state, task })
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
