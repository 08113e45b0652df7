//! DPoP on the test servers (feature `dpop`): the token endpoint binds a token to the key of a
//! valid proof (`token_type` `DPoP`, `cnf.jkt`), the API demands a valid proof for a bound
//! token (signature, `htm`, `htu`, `ath`, `iat` window, `jti` not replayed, the key the token
//! is bound to), and either can require a server nonce.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::api_server::{ApiServer, ApiState};
use super::auth_server::{AuthServer, State};
use super::lock;
use super::response::{json, oauth_error};
use crate::dpop::verify::{DpopServer, Rejection};

/// The token endpoint's DPoP state.
#[derive(Debug, Default)]
pub(super) struct AuthDpop {
    server: DpopServer,
    /// Access token → the thumbprint of the key it is bound to.
    bound: Mutex<HashMap<String, String>>,
}

impl AuthServer {
    /// Requires `nonce` in the DPoP proofs of token requests from now on (`None`: no nonce).
    /// A proof without it gets RFC 9449 §8's `400 use_dpop_nonce` with a `DPoP-Nonce` header.
    pub fn require_dpop_nonce(&self, nonce: Option<&str>) {
        self.state.dpop.server.set_nonce(nonce);
    }

    /// The thumbprint (`cnf.jkt`) of the key `access_token` is bound to, if it is a DPoP token
    /// this server issued.
    pub fn dpop_jkt(&self, access_token: &str) -> Option<String> {
        lock(&self.state.dpop.bound).get(access_token).cloned()
    }
}

impl ApiServer {
    /// Requires `nonce` in the DPoP proofs of API requests from now on (`None`: no nonce). A
    /// proof without it gets RFC 9449 §9's `401` with `WWW-Authenticate: DPoP
    /// error="use_dpop_nonce"` and a `DPoP-Nonce` header.
    pub fn require_dpop_nonce(&self, nonce: Option<&str>) {
        self.state.dpop.set_nonce(nonce);
    }
}

impl State {
    /// The token request's proof: `Ok(Some(jkt))` to bind the token, `Ok(None)` without a
    /// proof, `Err` with the answer for a refused one.
    pub(super) fn dpop_token_request(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<String>, Box<Response<Full<Bytes>>>> {
        let htu = format!("{}/v1/token", self.issuer_url());
        let server = &self.dpop.server;
        server
            .check(headers, "POST", &htu, None)
            .map_err(|rejection| {
                let mut response = match rejection {
                    Rejection::Nonce => oauth_error(
                        StatusCode::BAD_REQUEST,
                        "use_dpop_nonce",
                        "Authorization server requires nonce in DPoP proof",
                    ),
                    Rejection::Invalid(reason) => {
                        oauth_error(StatusCode::BAD_REQUEST, "invalid_dpop_proof", reason)
                    }
                };
                add_nonce(server, response.headers_mut());
                Box::new(response)
            })
    }

    /// Records that `access_token` is bound to `jkt`.
    pub(super) fn bind_dpop(&self, access_token: &str, jkt: String) {
        lock(&self.dpop.bound).insert(access_token.to_string(), jkt);
    }

    fn dpop_bound_to(&self, access_token: &str) -> Option<String> {
        lock(&self.dpop.bound).get(access_token).cloned()
    }

    /// The current nonce, for a successful token response.
    pub(super) fn add_dpop_nonce(&self, headers: &mut HeaderMap) {
        add_nonce(&self.dpop.server, headers);
    }
}

impl ApiState {
    /// Answers a request whose `Authorization` is `DPoP <token>`, or one that presents a bound
    /// token as a bearer token (refused: RFC 9449 §7.2). `None`: not a DPoP matter.
    pub(super) fn answer_dpop(
        &self,
        headers: &HeaderMap,
        method: &str,
        uri: &http::Uri,
        key_ok: bool,
    ) -> Option<Response<Full<Bytes>>> {
        let path = uri.path();
        let authorization = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = authorization.split_once(' ')?;
        let bound = self.auth.dpop_bound_to(token);
        if scheme.eq_ignore_ascii_case("bearer") {
            return bound
                .map(|_| self.refuse("invalid_token", "a DPoP-bound token sent as Bearer"));
        }
        if !scheme.eq_ignore_ascii_case("dpop") {
            return None;
        }
        // As a server behind its own name would: the authority the client addressed (HTTP/2
        // `:authority`, else `Host`), on plain http.
        let authority = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
            .unwrap_or_default();
        let htu = format!("http://{authority}{path}");
        let verdict = match self.dpop.check(headers, method, &htu, Some(token)) {
            Ok(Some(jkt)) if bound.as_deref() == Some(jkt.as_str()) => None,
            Ok(Some(_)) => Some(("invalid_token", "the token is not bound to the proof's key")),
            Ok(None) => Some(("invalid_dpop_proof", "no DPoP proof")),
            Err(Rejection::Nonce) => Some(("use_dpop_nonce", "a nonce is required")),
            Err(Rejection::Invalid(reason)) => Some(("invalid_dpop_proof", reason)),
        };
        let response = match verdict {
            None if key_ok && self.auth.is_valid(token) => {
                self.accepted
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                json(
                    StatusCode::OK,
                    serde_json::json!({"ok": true, "path": path}),
                )
            }
            None => self.refuse("invalid_token", "the token or API key is not valid"),
            Some((error, description)) => self.refuse(error, description),
        };
        Some(response)
    }

    fn refuse(&self, error: &str, description: &str) -> Response<Full<Bytes>> {
        self.rejected
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut response = json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": error, "error_description": description}),
        );
        let challenge = format!(r#"DPoP error="{error}", algs="ES256 PS256 RS256 EdDSA""#);
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        add_nonce(&self.dpop, response.headers_mut());
        response
    }
}

fn add_nonce(server: &DpopServer, headers: &mut HeaderMap) {
    if let Some(nonce) = server.nonce().and_then(|n| HeaderValue::from_str(&n).ok()) {
        headers.insert("dpop-nonce", nonce);
    }
}
