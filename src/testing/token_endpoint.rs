//! The token endpoint (RFC 6749 §4.4), in the order it decides: read the request, tell how the
//! client authenticated, play any scripted behaviour, authenticate the client, check the DPoP
//! proof (after the client, as oidc-provider and Okta do), check the grant type and the scopes,
//! issue a token.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body::Body;

use super::behaviour::{misbehave, Behavior};
use super::lock;
use super::response::{json, oauth_error, Reply};
use super::state::{Client, State};
use super::token_request::{refuse, ClientAuthentication, Credential, Step, TokenRequest};
use crate::ClientAuthMethod;

impl State {
    /// Answers a token request (the next scripted behaviour, else the default one, shapes the
    /// answer) and counts it.
    pub(super) async fn token<B>(&self, request: Request<B>) -> Reply
    where
        B: Body + Send,
        B::Data: Send,
        B::Error: Into<crate::BoxError>,
    {
        let behavior = lock(&self.script)
            .pop_front()
            .or_else(|| lock(&self.default_behavior).clone());
        let response = match self.answer_token_request(request, behavior).await {
            Ok(response) => response,
            Err(refusal) => oauth_error(refusal.status, refusal.error, &refusal.description),
        };
        self.token_requests.fetch_add(1, Ordering::SeqCst);
        response
    }

    async fn answer_token_request<B>(
        &self,
        request: Request<B>,
        behavior: Option<Behavior>,
    ) -> Step<Reply>
    where
        B: Body + Send,
        B::Data: Send,
        B::Error: Into<crate::BoxError>,
    {
        if request.method() != Method::POST {
            return Err(refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "use POST",
            ));
        }
        #[cfg(feature = "dpop")]
        let headers = request.headers().clone();
        let request = TokenRequest::read(request).await?;
        let authentication = request.client_authentication()?;
        *lock(&self.last_request) = Some(request.seen(authentication.method));
        if let Some(response) = misbehave(behavior.as_ref(), &request.credentials()).await {
            return Ok(response);
        }
        request.require_form_body()?;
        let client = self.authenticate(&authentication)?;
        // The client is authenticated before the proof is checked, as oidc-provider and Okta
        // do: a request refused for its DPoP nonce has used up its client assertion's `jti`.
        #[cfg(feature = "dpop")]
        let dpop_jkt = match self.dpop_token_request(&headers) {
            Ok(jkt) => jkt,
            Err(refused) => return Ok(*refused),
        };
        #[cfg(not(feature = "dpop"))]
        let dpop_jkt: Option<String> = None;
        request.require_client_credentials_grant()?;
        let scope = request.field("scope").unwrap_or_default();
        require_allowed_scopes(client, &scope)?;
        // The audience (`audience`, RFC 8707 `resource`) the client asked for goes into the
        // token's `aud`, so that a test can tell which credential set a token belongs to.
        let audiences: Vec<String> = request
            .form
            .iter()
            .filter(|(name, _)| name == "audience" || name == "resource")
            .map(|(_, value)| value.clone())
            .collect();
        Ok(self.issue_response(
            &authentication.client_id,
            &scope,
            &audiences,
            behavior,
            dpop_jkt.as_deref(),
        ))
    }

    /// The registered client `authentication` names, if its credential is right and it used
    /// the method the client is restricted to.
    fn authenticate(&self, authentication: &ClientAuthentication) -> Step<&Client> {
        let failed = || {
            refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed.",
            )
        };
        let ClientAuthentication {
            method,
            client_id,
            credential,
        } = authentication;
        let client = self.clients.get(client_id).ok_or_else(failed)?;
        let authenticated = match credential {
            Credential::Secret(secret) => self.secret_accepted(client_id, client, secret),
            Credential::Assertion(jwt) => self.verify_assertion(jwt, client_id, client, *method),
        };
        if !authenticated || client.method.is_some_and(|m| m != *method) {
            return Err(failed());
        }
        Ok(client)
    }

    /// RFC 7523 §3: a `client_secret_jwt` assertion signed HS256 with the client's secret, or
    /// a `private_key_jwt` one signed RS256/ES256 with the client's registered key; `iss` and
    /// `sub` the client id, `aud` this token endpoint (or, for a key, the issuer), unexpired,
    /// with a `jti` (not seen before, when replays are refused).
    #[cfg(feature = "jwt-client-auth")]
    fn verify_assertion(
        &self,
        jwt: &str,
        client_id: &str,
        client: &Client,
        method: ClientAuthMethod,
    ) -> bool {
        use jsonwebtoken::{Algorithm, DecodingKey};
        let token_endpoint = format!("{}/v1/token", self.issuer_url());
        let (key, algorithm, audiences) = match (method, &client.public_key) {
            (ClientAuthMethod::ClientSecretJwt, _) => (
                DecodingKey::from_secret(client.secret.as_bytes()),
                Algorithm::HS256,
                vec![token_endpoint],
            ),
            (ClientAuthMethod::PrivateKeyJwt, Some(pem)) => {
                let header = jsonwebtoken::decode_header(jwt).ok();
                let key = match header.as_ref().map(|h| h.alg) {
                    Some(Algorithm::RS256) => DecodingKey::from_rsa_pem(pem),
                    Some(Algorithm::ES256) => DecodingKey::from_ec_pem(pem),
                    _ => return false,
                };
                let (Ok(key), Some(header)) = (key, header) else {
                    return false;
                };
                (key, header.alg, vec![token_endpoint, self.issuer_url()])
            }
            _ => return false,
        };
        let mut validation = jsonwebtoken::Validation::new(algorithm);
        validation.set_audience(&audiences);
        validation.set_issuer(&[client_id]);
        validation.sub = Some(client_id.to_string());
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.leeway = 0;
        let Ok(data) = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation) else {
            return false;
        };
        let Some(jti) = data.claims["jti"].as_str().filter(|j| !j.is_empty()) else {
            return false;
        };
        match &self.used_jtis {
            Some(used) => lock(used).insert(jti.to_string()),
            None => true,
        }
    }

    #[cfg(not(feature = "jwt-client-auth"))]
    fn verify_assertion(&self, _: &str, _: &str, _: &Client, _: ClientAuthMethod) -> bool {
        false
    }

    /// The successful answer: a new token for `client_id` and `scope`, with the `expires_in`
    /// that `behavior` may override; bound to the DPoP key `dpop_jkt` when there is one.
    fn issue_response(
        &self,
        client_id: &str,
        scope: &str,
        audiences: &[String],
        behavior: Option<Behavior>,
        dpop_jkt: Option<&str>,
    ) -> Reply {
        let lifetime = *lock(&self.lifetime);
        let now = SystemTime::now();
        let token = self.issue(client_id, scope, audiences, now, lifetime, dpop_jkt);
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

    /// Mints a JWT-shaped token (Okta's claims, `aud` the audiences and resources asked for, a
    /// random signature nobody checks) and records it as valid until `now + lifetime`; with
    /// `dpop_jkt`, bound to that key (`cnf.jkt`).
    fn issue(
        &self,
        client_id: &str,
        scope: &str,
        audiences: &[String],
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
        match audiences {
            [] => {}
            [one] => claims["aud"] = serde_json::json!(one),
            several => claims["aud"] = serde_json::json!(several),
        }
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
}

/// Every space-separated scope in `scope` must be one `client` may request.
fn require_allowed_scopes(client: &Client, scope: &str) -> Step<()> {
    let Some(allowed) = &client.scopes else {
        return Ok(());
    };
    match scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .find(|s| !allowed.iter().any(|a| a == s))
    {
        Some(bad) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            format!("scope {bad} is not allowed"),
        )),
        None => Ok(()),
    }
}
