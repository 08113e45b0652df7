//! [`ApiServer`]: a protected API that accepts only the tokens of an [`AuthServer`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use tokio::task::JoinHandle;

use super::auth_server::{AuthServer, State};
use super::listener::serve;
use super::response::{json, Reply};

/// A protected API on loopback: answers `200 {"ok":true}` to requests that carry a valid token
/// of its [`AuthServer`] and the right `x-api-key`, `401` with a RFC 6750
/// `WWW-Authenticate: Bearer error="invalid_token"` otherwise. Stops when dropped.
pub struct ApiServer {
    addr: SocketAddr,
    pub(super) state: Arc<ApiState>,
    task: JoinHandle<()>,
}

pub(super) struct ApiState {
    pub(super) auth: Arc<State>,
    api_key: String,
    pub(super) accepted: AtomicUsize,
    pub(super) rejected: AtomicUsize,
    #[cfg(feature = "dpop")]
    pub(super) dpop: crate::dpop::verify::DpopServer,
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
    fn answer(&self, request: Request<Incoming>) -> Reply {
        let key_ok = request
            .headers()
            .get("x-api-key")
            .is_some_and(|k| k.as_bytes() == self.api_key.as_bytes());
        #[cfg(feature = "dpop")]
        if let Some(response) = self.answer_dpop(
            request.headers(),
            request.method().as_str(),
            request.uri(),
            key_ok,
        ) {
            return response;
        }
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
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
