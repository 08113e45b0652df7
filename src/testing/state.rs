//! What the endpoints of one [`AuthServer`](super::AuthServer) share: its configuration, the
//! registered clients, scripts, counters, the tokens it issued, and the data of the optional
//! parts (secret rotation, DPoP). Only data and the lookups every endpoint needs: the endpoints
//! themselves build on this module, never the other way round.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::behaviour::Behavior;
use super::lock;
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

/// A registered client.
pub(super) struct Client {
    pub(super) secret: String,
    /// The only auth method it may use; `None`: any.
    pub(super) method: Option<ClientAuthMethod>,
    /// The scopes it may request; `None`: any.
    pub(super) scopes: Option<Vec<String>>,
    /// The public key (PEM) its `private_key_jwt` assertions are verified with; `None`: that
    /// method is refused.
    #[cfg_attr(not(feature = "jwt-client-auth"), allow(dead_code))]
    pub(super) public_key: Option<Vec<u8>>,
}

/// The rotation state of a server's clients (the rules are in `rotation`).
#[derive(Default)]
pub(super) struct Rotation {
    /// Secrets accepted besides the one a client was registered with.
    pub(super) added: HashMap<String, Vec<String>>,
    /// `(client id, secret)` pairs no longer accepted.
    pub(super) revoked: HashSet<(String, String)>,
    /// Token requests that presented each secret (Basic or form body), accepted or not.
    pub(super) presented: HashMap<String, usize>,
}

/// The token endpoint's DPoP state (the checks are in `dpop`).
#[cfg(feature = "dpop")]
#[derive(Debug, Default)]
pub(super) struct AuthDpop {
    pub(super) server: crate::dpop::verify::DpopServer,
    /// Access token → the thumbprint of the key it is bound to.
    pub(super) bound: Mutex<HashMap<String, String>>,
}

/// What the endpoints of one server share: its configuration, scripts, counters and the
/// tokens it issued.
pub(super) struct State {
    pub(super) issuer_path: String,
    pub(super) lifetime: Mutex<Duration>,
    pub(super) clients: HashMap<String, Client>,
    pub(super) script: Mutex<VecDeque<Behavior>>,
    pub(super) default_behavior: Mutex<Option<Behavior>>,
    pub(super) discovery_script: Mutex<VecDeque<Behavior>>,
    pub(super) locations: Vec<MetadataLocation>,
    pub(super) wrong_issuer: bool,
    pub(super) advertised_methods: Option<Vec<String>>,
    pub(super) token_requests: AtomicUsize,
    pub(super) discovery_requests: AtomicUsize,
    pub(super) request_paths: Mutex<Vec<String>>,
    /// Every token issued, with the moment it expires.
    pub(super) issued: Mutex<HashMap<String, SystemTime>>,
    pub(super) last_request: Mutex<Option<TokenRequestSeen>>,
    /// The `jti`s of the client assertions accepted so far, when each may be used only once
    /// (RFC 7523 §3); `None`: replays are not checked.
    #[cfg_attr(not(feature = "jwt-client-auth"), allow(dead_code))]
    pub(super) used_jtis: Option<Mutex<HashSet<String>>>,
    /// Extra and revoked client secrets, and the requests that presented each.
    pub(super) rotation: Mutex<Rotation>,
    /// Known once the listener is bound; the issuer URL and the tokens name it.
    pub(super) addr: Mutex<Option<SocketAddr>>,
    #[cfg(feature = "dpop")]
    pub(super) dpop: AuthDpop,
}

impl State {
    /// The issuer URL, from the bound address.
    pub(super) fn issuer_url(&self) -> String {
        let addr = lock(&self.addr).map(|a| a.to_string()).unwrap_or_default();
        format!("http://{addr}{}", self.issuer_path)
    }

    /// Whether this server issued `token` and it has not expired.
    pub(super) fn is_valid(&self, token: &str) -> bool {
        lock(&self.issued)
            .get(token)
            .is_some_and(|expires| *expires > SystemTime::now())
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
