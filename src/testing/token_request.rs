//! A token request as the token endpoint reads it: the headers it looks at, the form fields,
//! and how the client authenticated (RFC 6749 §2.3.1, RFC 7523 §2.2); and the refusal that
//! ends a request early.

use std::borrow::Cow;

use base64::Engine as _;
use http::{header, Request, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};

use super::state::TokenRequestSeen;
use crate::ClientAuthMethod;

/// The outcome of one step: `Err` ends the request there.
pub(super) type Step<T> = Result<T, Refusal>;

/// An RFC 6749 §5.2 error answer that ends a token request early.
pub(super) struct Refusal {
    pub(super) status: StatusCode,
    pub(super) error: &'static str,
    pub(super) description: Cow<'static, str>,
}

pub(super) fn refuse(
    status: StatusCode,
    error: &'static str,
    description: impl Into<Cow<'static, str>>,
) -> Refusal {
    Refusal {
        status,
        error,
        description: description.into(),
    }
}

/// A token request as read: the headers the endpoint looks at and the form fields.
pub(super) struct TokenRequest {
    content_type: Option<String>,
    accept: Option<String>,
    authorization: Option<String>,
    pub(super) form: Vec<(String, String)>,
}

/// How a token request authenticated the client: the method, the client id it names, and the
/// credential to verify.
pub(super) struct ClientAuthentication {
    pub(super) method: ClientAuthMethod,
    pub(super) client_id: String,
    pub(super) credential: Credential,
}

/// The credential a token request presented.
pub(super) enum Credential {
    /// `client_secret_basic` or `client_secret_post`.
    Secret(String),
    /// A JWT client assertion (RFC 7523).
    Assertion(String),
    /// `tls_client_auth` (RFC 8705 §2.1): the thumbprint of the certificate the TLS handshake
    /// presented, no secret in the request.
    Certificate(String),
}

impl TokenRequest {
    /// Reads the headers and at most 64 KiB of form body.
    pub(super) async fn read<B>(request: Request<B>) -> Step<Self>
    where
        B: Body + Send,
        B::Data: Send,
        B::Error: Into<crate::BoxError>,
    {
        let (content_type, accept, authorization) = {
            // Scoped: the closure borrows the request, which need not be `Sync`, so it must
            // end before the body is awaited.
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
        let body = match Limited::new(request.into_body(), 64 * 1024).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "body unreadable",
                ))
            }
        };
        Ok(TokenRequest {
            content_type,
            accept,
            authorization,
            form: form_urlencoded::parse(&body).into_owned().collect(),
        })
    }

    pub(super) fn field(&self, name: &str) -> Option<String> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    /// Client authentication (RFC 6749 §2.3.1, RFC 7523 §2.2): exactly one method. A request
    /// with none of them, a `client_id` and a client certificate on its connection
    /// (`certificate`, its thumbprint) authenticates with `tls_client_auth` (RFC 8705 §2).
    pub(super) fn client_authentication(
        &self,
        certificate: Option<String>,
    ) -> Step<ClientAuthentication> {
        let basic = self.authorization.as_deref().and_then(basic_credentials);
        let post = self
            .field("client_secret")
            .map(|secret| (self.field("client_id").unwrap_or_default(), secret));
        let assertion = self.field("client_assertion");
        let secret = |method, (client_id, secret)| ClientAuthentication {
            method,
            client_id,
            credential: Credential::Secret(secret),
        };
        match (basic, post, assertion) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "more than one client authentication method",
            )),
            (Some(basic), None, None) => Ok(secret(ClientAuthMethod::ClientSecretBasic, basic)),
            (None, Some(post), None) => Ok(secret(ClientAuthMethod::ClientSecretPost, post)),
            (None, None, Some(assertion)) => self.assertion_authentication(assertion),
            (None, None, None) => match (self.field("client_id"), certificate) {
                (Some(client_id), Some(thumbprint)) => Ok(ClientAuthentication {
                    method: ClientAuthMethod::TlsClientAuth,
                    client_id,
                    credential: Credential::Certificate(thumbprint),
                }),
                _ => Err(refuse(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "no client authentication",
                )),
            },
        }
    }

    fn assertion_authentication(&self, assertion: String) -> Step<ClientAuthentication> {
        if self.field("client_assertion_type").as_deref()
            != Some(crate::oauth::client_auth::JWT_BEARER)
        {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "unsupported client_assertion_type",
            ));
        }
        let Some((method, client_id)) = assertion_method(&assertion, self.field("client_id"))
        else {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client assertions are not supported or malformed (JWT client \
                 authentication needs the feature `jwt-client-auth`)",
            ));
        };
        Ok(ClientAuthentication {
            method,
            client_id,
            credential: Credential::Assertion(assertion),
        })
    }

    /// What [`AuthServer::last_request`](super::AuthServer::last_request) shows, the client
    /// secret redacted.
    pub(super) fn seen(&self, method: ClientAuthMethod) -> TokenRequestSeen {
        TokenRequestSeen {
            method: Some(method),
            form: self
                .form
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
            content_type: self.content_type.clone(),
            accept: self.accept.clone(),
        }
    }

    /// The client authentication as sent (for the behaviours that echo it): the
    /// `Authorization` header, the form's `client_secret` and `client_assertion`.
    pub(super) fn credentials(&self) -> String {
        [
            self.authorization.clone(),
            self.authorization
                .as_deref()
                .and_then(basic_credentials)
                .map(|(_, secret)| secret),
            self.field("client_secret"),
            self.field("client_assertion"),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
    }

    pub(super) fn require_form_body(&self) -> Step<()> {
        if self.content_type.as_deref() != Some("application/x-www-form-urlencoded") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body must be form-urlencoded",
            ));
        }
        Ok(())
    }

    pub(super) fn require_client_credentials_grant(&self) -> Step<()> {
        match self.field("grant_type").as_deref() {
            Some("client_credentials") => Ok(()),
            Some(_) => Err(refuse(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials",
            )),
            None => Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is missing",
            )),
        }
    }
}

/// The client id and secret of an `Authorization: Basic` header, each decoded from the
/// `application/x-www-form-urlencoded` form RFC 6749 §2.3.1 wants.
fn basic_credentials(authorization: &str) -> Option<(String, String)> {
    let (scheme, rest) = authorization.split_once(' ')?;
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
