//! [`ApiServer`]: a protected API that accepts only the tokens of an [`AuthServer`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use hyper::body::Incoming;
use tokio::task::JoinHandle;

use super::auth_server::AuthServer;
use super::listener::serve;
use super::response::{json, Reply};
use super::state::State;

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

    /// Requires `nonce` in the DPoP proofs of API requests from now on (`None`: no nonce). A
    /// proof without it gets RFC 9449 §9's `401` with `WWW-Authenticate: DPoP
    /// error="use_dpop_nonce"` and a `DPoP-Nonce` header.
    #[cfg(feature = "dpop")]
    pub fn require_dpop_nonce(&self, nonce: Option<&str>) {
        self.state.dpop.set_nonce(nonce);
    }
}

impl ApiServer {
    /// Checks a request exactly as this API checks the requests it serves (token, API key and,
    /// with the feature `dpop`, the DPoP proof: `htu` is `http://` + the request's authority +
    /// path), and counts it in [`accepted`](Self::accepted) or [`rejected`](Self::rejected).
    /// For a test server of another protocol that wants the same checks: a tonic server's
    /// layer, for instance, answers a refusal with `Status::unauthenticated`.
    ///
    /// # Example
    ///
    /// ```
    /// use http::{HeaderMap, Method, Uri};
    /// use tower_client_credentials::testing::{ApiServer, AuthServer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let auth = AuthServer::start().await?;
    /// let api = ApiServer::start(&auth, "my-api-key").await?;
    /// let uri: Uri = format!("{}/v1/items", api.url()).parse()?;
    /// let refusal = api.check_request(&Method::GET, &uri, &HeaderMap::new()).unwrap_err();
    /// assert_eq!(refusal.error(), "invalid_token");
    /// assert_eq!(api.rejected(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn check_request(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<(), ApiRefusal> {
        self.state.check(method, uri, headers)
    }
}

/// Why an [`ApiServer`] refused a request: the error code and challenge of its `401`.
#[derive(Debug, Clone)]
pub struct ApiRefusal {
    /// `Bearer` (RFC 6750) or `DPoP` (RFC 9449).
    scheme: &'static str,
    error: &'static str,
    description: &'static str,
    /// The `DPoP-Nonce` the answer carries.
    dpop_nonce: Option<String>,
}

impl ApiRefusal {
    /// The error code: `invalid_token`, or for DPoP also `invalid_dpop_proof` and
    /// `use_dpop_nonce`.
    pub fn error(&self) -> &str {
        self.error
    }

    /// What check failed, e.g. `htu does not match the request URI`.
    pub fn description(&self) -> &str {
        self.description
    }

    /// The `WWW-Authenticate` challenge the API answers with.
    pub fn www_authenticate(&self) -> String {
        if self.scheme == "DPoP" {
            format!(
                r#"DPoP error="{}", algs="ES256 PS256 RS256 EdDSA""#,
                self.error
            )
        } else {
            format!(r#"{} error="{}""#, self.scheme, self.error)
        }
    }

    /// The server nonce the answer carries (`DPoP-Nonce`), when the API requires one.
    pub fn dpop_nonce(&self) -> Option<&str> {
        self.dpop_nonce.as_deref()
    }

    fn into_response(self) -> Reply {
        let body = if self.scheme == "DPoP" {
            serde_json::json!({"error": self.error, "error_description": self.description})
        } else {
            serde_json::json!({"error": self.error})
        };
        let mut response = json(StatusCode::UNAUTHORIZED, body);
        if let Ok(challenge) = HeaderValue::from_str(&self.www_authenticate()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let Some(nonce) = self
            .dpop_nonce
            .as_deref()
            .and_then(|n| HeaderValue::from_str(n).ok())
        {
            response.headers_mut().insert("dpop-nonce", nonce);
        }
        response
    }
}

impl ApiState {
    fn answer(&self, request: Request<Incoming>) -> Reply {
        match self.check(request.method(), request.uri(), request.headers()) {
            Ok(()) => json(
                StatusCode::OK,
                serde_json::json!({"ok": true, "path": request.uri().path()}),
            ),
            Err(refusal) => refusal.into_response(),
        }
    }

    fn check(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiRefusal> {
        let verdict = self.verdict(method, uri, headers);
        let counter = if verdict.is_ok() {
            &self.accepted
        } else {
            &self.rejected
        };
        counter.fetch_add(1, Ordering::SeqCst);
        verdict
    }

    fn verdict(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiRefusal> {
        let key_ok = headers
            .get("x-api-key")
            .is_some_and(|k| k.as_bytes() == self.api_key.as_bytes());
        #[cfg(feature = "dpop")]
        if let Some(verdict) = super::dpop::api_verdict(
            &self.auth,
            &self.dpop,
            headers,
            method.as_str(),
            uri,
            key_ok,
        ) {
            return verdict.map_err(|(error, description)| ApiRefusal {
                scheme: "DPoP",
                error,
                description,
                dpop_nonce: self.dpop.nonce(),
            });
        }
        #[cfg(not(feature = "dpop"))]
        let _ = (method, uri);
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match token {
            Some(token) if key_ok && self.auth.is_valid(token) => Ok(()),
            _ => Err(ApiRefusal {
                scheme: "Bearer",
                error: "invalid_token",
                description: "the token or API key is not valid",
                dpop_nonce: None,
            }),
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
