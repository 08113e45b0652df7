//! How these credentials authenticate the client: decided at build, except that with a secret
//! and no configured method, `client_secret_basic` or `client_secret_post` is negotiated at the
//! first token request and the one that works is remembered.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use secrecy::SecretString;

use super::secret::SecretSource;

use crate::error::{Error, ErrorKind};
use crate::oauth::client_auth::ClientAuthMethod;
use crate::oauth::token_request::ClientAuth;
use crate::token::Token;

/// What the client authenticates with, and how.
pub(super) enum Authentication {
    /// The client secret (read from its source at every token request), sent in a Basic
    /// header or in the form.
    Secret {
        secret: Arc<dyn SecretSource>,
        method: SecretMethod,
    },
    /// `client_secret_jwt`: a JWT client assertion (RFC 7523) signed with the client secret,
    /// read from its source at every token request.
    #[cfg(feature = "jwt-client-auth")]
    SecretJwt(Arc<dyn SecretSource>),
    /// `private_key_jwt`: a JWT client assertion (RFC 7523) signed with a private key.
    #[cfg(feature = "jwt-client-auth")]
    Assertion(crate::oauth::assertion::AssertionKey),
    /// `private_key_jwt`: a JWT client assertion signed by the user's signer (a KMS, an HSM).
    #[cfg(feature = "jwt-client-auth")]
    Signer(std::sync::Arc<dyn super::signer::JwtSigner>),
}

/// How the secret is sent: as configured, or as negotiated.
pub(super) enum SecretMethod {
    Configured(SecretEncoding),
    /// Not configured: empty until a token request succeeds, then the method that did.
    Negotiated(OnceLock<SecretEncoding>),
}

/// The two ways to send the secret itself (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SecretEncoding {
    Basic,
    Post,
}

impl SecretEncoding {
    fn method(self) -> ClientAuthMethod {
        match self {
            SecretEncoding::Basic => ClientAuthMethod::ClientSecretBasic,
            SecretEncoding::Post => ClientAuthMethod::ClientSecretPost,
        }
    }

    fn with(self, secret: &SecretString) -> ClientAuth<'_> {
        match self {
            SecretEncoding::Basic => ClientAuth::Basic(secret),
            SecretEncoding::Post => ClientAuth::Post(secret),
        }
    }

    /// Without a configured method: what the server metadata supports, else Basic first (the
    /// RFC's must-support), then the form body after a rejection, as Go's x/oauth2 does.
    fn candidates(supported: Option<&[String]>) -> &'static [SecretEncoding] {
        const BOTH: &[SecretEncoding] = &[SecretEncoding::Basic, SecretEncoding::Post];
        let Some(methods) = supported else {
            return BOTH;
        };
        let basic = methods.iter().any(|m| m == "client_secret_basic");
        let post = methods.iter().any(|m| m == "client_secret_post");
        match (basic, post) {
            (false, true) => &[SecretEncoding::Post],
            (true, false) => &[SecretEncoding::Basic],
            _ => BOTH,
        }
    }
}

impl Authentication {
    /// The method in use: the configured one, or the one that worked, or `None` before the
    /// first successful token request when none was configured.
    pub(super) fn method(&self) -> Option<ClientAuthMethod> {
        match self {
            Authentication::Secret {
                method: SecretMethod::Configured(encoding),
                ..
            } => Some(encoding.method()),
            Authentication::Secret {
                method: SecretMethod::Negotiated(learned),
                ..
            } => learned.get().map(|encoding| encoding.method()),
            #[cfg(feature = "jwt-client-auth")]
            Authentication::SecretJwt(_) => Some(ClientAuthMethod::ClientSecretJwt),
            #[cfg(feature = "jwt-client-auth")]
            Authentication::Signer(_) => Some(ClientAuthMethod::PrivateKeyJwt),
            #[cfg(feature = "jwt-client-auth")]
            Authentication::Assertion(key) => Some(match key {
                crate::oauth::assertion::AssertionKey::ClientSecret(_) => {
                    ClientAuthMethod::ClientSecretJwt
                }
                crate::oauth::assertion::AssertionKey::PrivateKey(_) => {
                    ClientAuthMethod::PrivateKeyJwt
                }
            }),
        }
    }

    /// Gets a token through `request`, which sends one token request with the client
    /// authentication it is given, using `secret` (read from the source by the caller; `None`
    /// for `private_key_jwt`). `supported` is the server metadata's
    /// `token_endpoint_auth_methods_supported`, when known.
    pub(super) async fn fetch_with<F, Fut>(
        &self,
        secret: Option<&SecretString>,
        supported: Option<&[String]>,
        request: &mut F,
    ) -> Result<Token, Error>
    where
        F: FnMut(ClientAuth<'_>) -> Fut,
        Fut: Future<Output = Result<Token, Error>>,
    {
        // Every method but `private_key_jwt` needs the secret the caller read.
        let secret = || secret.ok_or_else(|| Error::config("no client secret was read"));
        let (secret, learned) = match self {
            #[cfg(feature = "jwt-client-auth")]
            Authentication::Assertion(key) => return request(ClientAuth::Assertion(key)).await,
            // The assertion is signed asynchronously, before the request: see `rotation.rs`.
            #[cfg(feature = "jwt-client-auth")]
            Authentication::Signer(_) => {
                return Err(Error::config(
                    "a signer's assertion must be made beforehand",
                ))
            }
            #[cfg(feature = "jwt-client-auth")]
            Authentication::SecretJwt(_) => {
                let key = crate::oauth::assertion::AssertionKey::ClientSecret(secret()?.clone());
                return request(ClientAuth::Assertion(&key)).await;
            }
            Authentication::Secret {
                method: SecretMethod::Configured(encoding),
                ..
            } => return request(encoding.with(secret()?)).await,
            Authentication::Secret {
                method: SecretMethod::Negotiated(learned),
                ..
            } => (secret()?, learned),
        };
        if let Some(encoding) = learned.get() {
            return request(encoding.with(secret)).await;
        }
        // Not configured and not learned yet. The one that works is kept for the life of these
        // credentials.
        let mut last = None;
        for &encoding in SecretEncoding::candidates(supported) {
            let method = encoding.method();
            match request(encoding.with(secret)).await {
                Ok(token) => {
                    let _ = learned.set(encoding);
                    tracing::debug!(
                        method = method.as_str(),
                        "client authentication method detected"
                    );
                    return Ok(token);
                }
                Err(error) if rejected_client_auth(&error) => {
                    tracing::debug!(
                        method = method.as_str(),
                        "client authentication method rejected"
                    );
                    last = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or_else(|| Error::config("no client authentication method to try")))
    }
}

/// Whether the server rejected the client authentication itself (RFC 6749 §5.2
/// `invalid_client`, or a bare 401): only then is the other method worth a try. Other 400s
/// (`invalid_scope`, `invalid_request`) would fail the same way with either method.
pub(super) fn rejected_client_auth(error: &Error) -> bool {
    error.kind() == ErrorKind::TokenEndpoint
        && match error.oauth_error() {
            Some(oauth) => oauth.error == "invalid_client",
            None => error.status() == Some(http::StatusCode::UNAUTHORIZED),
        }
}

#[cfg(feature = "jwt-client-auth")]
impl Authentication {
    /// The `private_key_jwt` key, for a redacted `Debug`.
    pub(super) fn private_key(&self) -> Option<&crate::oauth::assertion::PrivateKey> {
        match self {
            Authentication::Assertion(crate::oauth::assertion::AssertionKey::PrivateKey(key)) => {
                Some(key)
            }
            _ => None,
        }
    }
}
