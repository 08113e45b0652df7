//! DPoP on the test servers (feature `dpop`): the token endpoint binds a token to the key of a
//! valid proof (`token_type` `DPoP`, `cnf.jkt`), the API demands a valid proof for a bound
//! token (signature, `htm`, `htu`, `ath`, `iat` window, `jti` not replayed, the key the token
//! is bound to), and either can require a server nonce.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::lock;
use super::response::oauth_error;
use super::state::State;
use crate::dpop::verify::{DpopServer, Rejection};

/// Why the API refuses a request on DPoP grounds: the error code and what check failed.
pub(super) type DpopRefusal = (&'static str, &'static str);

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

    /// The thumbprint of the key `access_token` is bound to, if it is a DPoP token.
    pub(super) fn dpop_bound_to(&self, access_token: &str) -> Option<String> {
        lock(&self.dpop.bound).get(access_token).cloned()
    }

    /// The current nonce, for a successful token response.
    pub(super) fn add_dpop_nonce(&self, headers: &mut HeaderMap) {
        add_nonce(&self.dpop.server, headers);
    }
}

/// The API's verdict on a request whose `Authorization` is `DPoP <token>`, or one that presents
/// a bound token as a bearer token (refused: RFC 9449 §7.2). `None`: not a DPoP matter. `auth`
/// issued the tokens; `api` holds the API's own nonce and replay memory.
pub(super) fn api_verdict(
    auth: &State,
    api: &DpopServer,
    headers: &HeaderMap,
    method: &str,
    url_scheme: &str,
    uri: &http::Uri,
    key_ok: bool,
) -> Option<Result<(), DpopRefusal>> {
    let authorization = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = authorization.split_once(' ')?;
    let bound = auth.dpop_bound_to(token);
    if scheme.eq_ignore_ascii_case("bearer") {
        return bound.map(|_| Err(("invalid_token", "a DPoP-bound token sent as Bearer")));
    }
    if !scheme.eq_ignore_ascii_case("dpop") {
        return None;
    }
    // As a server behind its own name would: the authority the client addressed (HTTP/2
    // `:authority`, else `Host`), with the scheme of the connection.
    let authority = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_default();
    let htu = format!("{url_scheme}://{authority}{}", uri.path());
    let refused = match api.check(headers, method, &htu, Some(token)) {
        Ok(Some(jkt)) if bound.as_deref() == Some(jkt.as_str()) => None,
        Ok(Some(_)) => Some(("invalid_token", "the token is not bound to the proof's key")),
        Ok(None) => Some(("invalid_dpop_proof", "no DPoP proof")),
        Err(Rejection::Nonce) => Some(("use_dpop_nonce", "a nonce is required")),
        Err(Rejection::Invalid(reason)) => Some(("invalid_dpop_proof", reason)),
    };
    Some(match refused {
        None if key_ok && auth.is_valid(token) => Ok(()),
        None => Err(("invalid_token", "the token or API key is not valid")),
        Some(refusal) => Err(refusal),
    })
}

fn add_nonce(server: &DpopServer, headers: &mut HeaderMap) {
    if let Some(nonce) = server.nonce().and_then(|n| HeaderValue::from_str(&n).ok()) {
        headers.insert("dpop-nonce", nonce);
    }
}
