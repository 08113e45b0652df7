//! The token request (RFC 6749 §4.4.2): the form, and the client authentication it carries.

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};

use crate::error::Error;
use crate::http::sanitize::Secrets;
use crate::oauth::client_auth;

/// Form parameters the token request sets itself (grant, scope, client authentication): a
/// caller's extra parameters may not name them.
pub(crate) fn is_set_by_the_crate(name: &str) -> bool {
    matches!(
        name,
        "grant_type"
            | "scope"
            | "client_id"
            | "client_secret"
            | "client_assertion"
            | "client_assertion_type"
    )
}

/// How one token request authenticates the client, with what it needs for that.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ClientAuth<'a> {
    /// `client_secret_basic`: the secret in an HTTP Basic `Authorization` header.
    Basic(&'a SecretString),
    /// `client_secret_post`: the secret in the form body.
    Post(&'a SecretString),
    /// `client_secret_jwt` or `private_key_jwt`: a signed JWT client assertion (RFC 7523).
    #[cfg(feature = "jwt-client-auth")]
    Assertion(&'a crate::oauth::assertion::AssertionKey),
    /// A client assertion made before the request: signed by a `JwtSigner`, or read from an
    /// `AssertionSource` (a platform's workload identity token).
    SignedAssertion(&'a SecretString),
    /// `tls_client_auth` or `self_signed_tls_client_auth` (RFC 8705 §2): the TLS client
    /// certificate authenticates; the form only names the client.
    Certificate,
}

impl ClientAuth<'_> {
    /// Whether a second request (the retry a DPoP nonce challenge asks for) may carry the same
    /// client authentication. An assertion made before the request may not: a server that
    /// checked the client before the nonce has used up its `jti` (RFC 7523 §3), so the caller
    /// gets a new one for the retry. Every other form is made anew by `build` or has no `jti`.
    #[cfg(feature = "dpop")]
    pub(crate) fn may_be_resent(&self) -> bool {
        !matches!(self, ClientAuth::SignedAssertion(_))
    }
}

/// Everything that goes into a token request except the endpoint's URL.
pub(crate) struct TokenRequest<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) auth: ClientAuth<'a>,
    pub(crate) scope: Option<&'a str>,
    pub(crate) params: &'a [(String, String)],
}

impl TokenRequest<'_> {
    /// The request to `endpoint`, and every form of the secrets it carries (to redact from what
    /// the server answers); a JWT assertion is made fresh (new `jti`, `iat`, `exp`).
    pub(crate) fn build(
        &self,
        endpoint: &http::Uri,
    ) -> Result<(Request<Full<Bytes>>, Secrets), Error> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = self.scope {
            form.append_pair("scope", scope);
        }
        for (name, value) in self.params {
            form.append_pair(name, value);
        }
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(endpoint.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json");
        let secrets = match self.auth {
            ClientAuth::Basic(secret) => {
                builder = builder.header(
                    AUTHORIZATION,
                    client_auth::basic_authorization(self.client_id, secret)?,
                );
                Secrets::client_secret(self.client_id, secret)
            }
            ClientAuth::Post(secret) => {
                form.append_pair("client_id", self.client_id);
                form.append_pair("client_secret", secret.expose_secret());
                Secrets::client_secret(self.client_id, secret)
            }
            #[cfg(feature = "jwt-client-auth")]
            ClientAuth::Assertion(key) => {
                // RFC 7523 §3: `aud` is the token endpoint, exactly the URL the request goes to.
                let client_assertion = crate::oauth::assertion::client_assertion(
                    key,
                    self.client_id,
                    &endpoint.to_string(),
                    std::time::SystemTime::now(),
                )?;
                form.append_pair("client_assertion_type", client_auth::JWT_BEARER);
                form.append_pair("client_assertion", client_assertion.expose_secret());
                form.append_pair("client_id", self.client_id);
                let mut secrets = match key {
                    crate::oauth::assertion::AssertionKey::ClientSecret(secret) => {
                        Secrets::client_secret(self.client_id, secret)
                    }
                    crate::oauth::assertion::AssertionKey::PrivateKey(_) => Secrets::none(),
                };
                secrets.add(client_assertion.expose_secret());
                secrets
            }
            ClientAuth::SignedAssertion(client_assertion) => {
                form.append_pair("client_assertion_type", client_auth::JWT_BEARER);
                form.append_pair("client_assertion", client_assertion.expose_secret());
                form.append_pair("client_id", self.client_id);
                // The signer's key never leaves it; the assertion itself is the secret here.
                let mut secrets = Secrets::none();
                secrets.add(client_assertion.expose_secret());
                secrets
            }
            ClientAuth::Certificate => {
                // RFC 8705 §2: the certificate authenticates; the form only names the client.
                form.append_pair("client_id", self.client_id);
                Secrets::none()
            }
        };
        let body = SecretString::from(form.finish());
        let request = builder
            .body(Full::new(Bytes::copy_from_slice(
                body.expose_secret().as_bytes(),
            )))
            .map_err(|e| Error::config(format!("the token request could not be built: {e}")))?;
        Ok((request, secrets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use http_body_util::BodyExt;

    #[test]
    fn basic_auth_form_encodes_before_base64() {
        let secret = SecretString::from("s3cr:t %+é");
        let request = TokenRequest {
            client_id: "my client",
            auth: ClientAuth::Basic(&secret),
            scope: Some("role:app organization:read"),
            params: &[("audience".into(), "api://x".into())],
        }
        .build(&"https://idp.example/token".parse().unwrap())
        .unwrap()
        .0;
        let auth = request.headers()[AUTHORIZATION].to_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"my+client:s3cr%3At+%25%2B%C3%A9");
        assert!(request.headers()[AUTHORIZATION].is_sensitive());
        assert_eq!(
            request.headers()[CONTENT_TYPE],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(request.headers()[ACCEPT], "application/json");
    }

    #[tokio::test]
    async fn post_auth_puts_credentials_in_body() {
        let secret = SecretString::from("pw");
        let request = TokenRequest {
            client_id: "id",
            auth: ClientAuth::Post(&secret),
            scope: None,
            params: &[],
        }
        .build(&"https://idp.example/token".parse().unwrap())
        .unwrap()
        .0;
        assert!(request.headers().get(AUTHORIZATION).is_none());
        let body = request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"grant_type=client_credentials&client_id=id&client_secret=pw"
        );
    }

    #[tokio::test]
    async fn certificate_auth_names_the_client_and_sends_no_secret() {
        let request = TokenRequest {
            client_id: "id",
            auth: ClientAuth::Certificate,
            scope: None,
            params: &[],
        }
        .build(&"https://idp.example/token".parse().unwrap())
        .unwrap()
        .0;
        assert!(request.headers().get(AUTHORIZATION).is_none());
        let body = request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"grant_type=client_credentials&client_id=id");
    }
}
