//! [`ApiServer`]: a protected API that accepts only the tokens of an [`AuthServer`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;

use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use hyper::body::Incoming;
use tokio::task::JoinHandle;

use super::auth_server::AuthServer;
use super::listener::{serve, Connection, Tls};
use super::lock;
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
    https: bool,
    /// The `aud` a token must name, if any.
    audience: Mutex<Option<String>>,
    accepted: AtomicUsize,
    rejected: AtomicUsize,
    #[cfg(feature = "dpop")]
    dpop: crate::dpop::verify::DpopServer,
}

impl ApiServer {
    /// Starts an API that trusts `auth`'s tokens and wants `api_key`.
    pub async fn start(auth: &AuthServer, api_key: &str) -> std::io::Result<Self> {
        Self::start_with(auth, api_key, None).await
    }

    /// Starts an API over TLS (`https` URL) with `tls`'s certificate, accepting client
    /// certificates of its CA. A token bound to a client certificate (RFC 8705 §3) is
    /// accepted only from a connection that presented that certificate: otherwise `401`
    /// `invalid_token`.
    ///
    /// ```
    /// use tower_client_credentials::testing::{ApiServer, AuthServer, ServerTls};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let tls = ServerTls::from_pem(
    ///     include_bytes!("../../tests/mtls/server.pem"),
    ///     include_bytes!("../../tests/mtls/server-key.pem"),
    ///     include_bytes!("../../tests/mtls/ca.pem"),
    /// )?;
    /// let auth = AuthServer::builder().tls(tls.clone()).start().await?;
    /// let api = ApiServer::start_tls(&auth, "my-api-key", &tls).await?;
    /// assert!(api.url().starts_with("https://127.0.0.1:"));
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "mtls")]
    pub async fn start_tls(
        auth: &AuthServer,
        api_key: &str,
        tls: &super::ServerTls,
    ) -> std::io::Result<Self> {
        Self::start_with(auth, api_key, Some(tls.acceptor.clone())).await
    }

    async fn start_with(
        auth: &AuthServer,
        api_key: &str,
        tls: Option<Tls>,
    ) -> std::io::Result<Self> {
        let state = Arc::new(ApiState {
            auth: auth.handle(),
            api_key: api_key.to_string(),
            https: tls.is_some(),
            audience: Mutex::new(None),
            accepted: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
            #[cfg(feature = "dpop")]
            dpop: Default::default(),
        });
        let (addr, task) = serve(
            state.clone(),
            |state, request| Box::pin(async move { state.answer(request) }),
            tls,
        )
        .await?;
        Ok(ApiServer { addr, state, task })
    }

    /// The base URL, e.g. `http://127.0.0.1:41235` (`https` with `start_tls`).
    pub fn url(&self) -> String {
        let scheme = if self.state.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// From now on, accepts only tokens whose `aud` claim is or contains `audience` (`None`:
    /// any), as an API that is one of several does: a token of another API's credential set
    /// gets `401 invalid_token`.
    ///
    /// ```
    /// use http::{HeaderMap, Method, Uri};
    /// use secrecy::ExposeSecret;
    /// use tower_client_credentials::testing::{ApiServer, AuthServer};
    /// use tower_client_credentials::{ClientCredentials, TokenSource};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let auth = AuthServer::start().await?;
    /// let api = ApiServer::start(&auth, "my-api-key").await?;
    /// let token = ClientCredentials::builder()
    ///     .token_endpoint(auth.token_endpoint())?
    ///     .client_id(AuthServer::CLIENT_ID)
    ///     .client_secret(AuthServer::CLIENT_SECRET)
    ///     .audience("https://api-a.example")
    ///     .build()?
    ///     .fetch_token()
    ///     .await?;
    /// let mut headers = HeaderMap::new();
    /// headers.insert("x-api-key", "my-api-key".parse()?);
    /// headers.insert("authorization", format!("Bearer {}", token.secret().expose_secret()).parse()?);
    /// let uri: Uri = api.url().parse()?;
    ///
    /// api.require_audience(Some("https://api-a.example"));
    /// assert!(api.check_request(&Method::GET, &uri, &headers).is_ok());
    /// api.require_audience(Some("https://api-b.example"));
    /// let refusal = api.check_request(&Method::GET, &uri, &headers).unwrap_err();
    /// assert_eq!(refusal.error(), "invalid_token");
    /// # Ok(())
    /// # }
    /// ```
    pub fn require_audience(&self, audience: Option<&str>) {
        *lock(&self.state.audience) = audience.map(str::to_string);
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
    /// No connection comes with the request, so a certificate-bound token is refused.
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
        self.state.check(method, uri, headers, None)
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
        let connection = request.extensions().get::<Connection>();
        match self.check(
            request.method(),
            request.uri(),
            request.headers(),
            connection,
        ) {
            Ok(()) => json(
                StatusCode::OK,
                serde_json::json!({"ok": true, "path": request.uri().path()}),
            ),
            Err(refusal) => refusal.into_response(),
        }
    }

    fn check(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        connection: Option<&Connection>,
    ) -> Result<(), ApiRefusal> {
        let verdict = self
            .verdict(method, uri, headers, connection)
            .and_then(|()| self.binding_verdict(headers, connection));
        let counter = if verdict.is_ok() {
            &self.accepted
        } else {
            &self.rejected
        };
        counter.fetch_add(1, Ordering::SeqCst);
        verdict
    }

    /// RFC 8705 §3: a certificate-bound token only from a connection that presented that
    /// certificate; and the audience, when one is required. Run after the token and proof
    /// checks passed.
    fn binding_verdict(
        &self,
        headers: &HeaderMap,
        connection: Option<&Connection>,
    ) -> Result<(), ApiRefusal> {
        let (scheme, token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .unwrap_or_default();
        let scheme = if scheme.eq_ignore_ascii_case("dpop") {
            "DPoP"
        } else {
            "Bearer"
        };
        let refuse = |description| ApiRefusal {
            scheme,
            error: "invalid_token",
            description,
            dpop_nonce: None,
        };
        if let Some(bound) = self.auth.certificate_bound_to(token) {
            let presented = connection.and_then(|c| c.certificate_thumbprint.as_deref());
            if presented != Some(bound.as_str()) {
                return Err(refuse(
                    "the token is bound to a client certificate this connection did not present",
                ));
            }
        }
        if let Some(audience) = lock(&self.audience).as_deref() {
            if !token_has_audience(token, audience) {
                return Err(refuse("the token is not for this API (aud)"));
            }
        }
        Ok(())
    }

    fn verdict(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        connection: Option<&Connection>,
    ) -> Result<(), ApiRefusal> {
        let key_ok = headers
            .get("x-api-key")
            .is_some_and(|k| k.as_bytes() == self.api_key.as_bytes());
        #[cfg(feature = "dpop")]
        if let Some(verdict) = super::dpop::api_verdict(
            &self.auth,
            &self.dpop,
            headers,
            method.as_str(),
            if connection.is_some() {
                "https"
            } else {
                "http"
            },
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
        let _ = (method, uri, connection);
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

/// Whether the JWT-shaped `token`'s `aud` claim is `audience` or a list holding it.
fn token_has_audience(token: &str, audience: &str) -> bool {
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
        })
        .and_then(|payload| serde_json::from_slice::<serde_json::Value>(&payload).ok());
    match claims.as_ref().map(|claims| &claims["aud"]) {
        Some(serde_json::Value::String(aud)) => aud == audience,
        Some(serde_json::Value::Array(auds)) => auds.iter().any(|aud| aud == audience),
        _ => false,
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
