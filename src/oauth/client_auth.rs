//! How the client authenticates at the token endpoint: the methods a user chooses from, and the
//! encoding of the secret-based ones (RFC 6749 §2.3.1).

use base64::Engine as _;
use http::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::error::Error;

/// RFC 7521 §4.2 / RFC 7523 §2.2: the `client_assertion_type` for a JWT assertion (one the
/// crate signs with `jwt-client-auth`, or one from an `AssertionSource`).
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1, RFC 7523 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientAuthMethod {
    /// HTTP Basic with the form-urlencoded client id and secret (`client_secret_basic`).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    ClientSecretPost,
    /// A JWT client assertion signed with HS256 and the client secret (`client_secret_jwt`,
    /// RFC 7523 §2.2). Needs the cargo feature `jwt-client-auth`.
    ClientSecretJwt,
    /// A JWT client assertion signed with the client's private key (`private_key_jwt`,
    /// RFC 7523 §2.2); set the key with `ClientCredentialsBuilder::private_key_jwt`. Needs the
    /// cargo feature `jwt-client-auth`.
    PrivateKeyJwt,
    /// Mutual TLS with a certificate issued by a CA the server trusts (`tls_client_auth`,
    /// RFC 8705 §2.1); set the identity with `ClientCredentialsBuilder::tls_client_auth`
    /// (feature `mtls`), or choose it here with an HTTP client that presents the certificate.
    TlsClientAuth,
    /// Mutual TLS with a self-signed certificate registered with the client
    /// (`self_signed_tls_client_auth`, RFC 8705 §2.2); set the identity with
    /// `ClientCredentialsBuilder::self_signed_tls_client_auth` (feature `mtls`), or choose it
    /// here with an HTTP client that presents the certificate.
    SelfSignedTlsClientAuth,
}

impl ClientAuthMethod {
    /// The method's registered name (RFC 8414 `token_endpoint_auth_methods_supported`).
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
            ClientAuthMethod::ClientSecretPost => "client_secret_post",
            ClientAuthMethod::ClientSecretJwt => "client_secret_jwt",
            ClientAuthMethod::PrivateKeyJwt => "private_key_jwt",
            ClientAuthMethod::TlsClientAuth => "tls_client_auth",
            ClientAuthMethod::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
        }
    }
}

/// The algorithm that signs a `private_key_jwt` client assertion (RFC 7518 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JwtSigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256; an RSA private key (PKCS#1 or PKCS#8 PEM).
    RS256,
    /// ECDSA with P-256 and SHA-256; an EC P-256 private key in PKCS#8 PEM
    /// (`-----BEGIN PRIVATE KEY-----`).
    ES256,
}

impl JwtSigningAlgorithm {
    /// The JOSE name (`alg` header value), e.g. `RS256`.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtSigningAlgorithm::RS256 => "RS256",
            JwtSigningAlgorithm::ES256 => "ES256",
        }
    }
}

/// The `Authorization` value for `client_secret_basic`, marked sensitive.
pub(crate) fn basic_authorization(
    client_id: &str,
    client_secret: &SecretString,
) -> Result<HeaderValue, Error> {
    // RFC 6749 §2.3.1: both parts are form-urlencoded *before* base64. Servers decode them;
    // skipping this breaks secrets with `:`, `%`, `+` or non-ASCII.
    let mut credentials = String::new();
    credentials.extend(form_urlencoded::byte_serialize(client_id.as_bytes()));
    credentials.push(':');
    credentials.extend(form_urlencoded::byte_serialize(
        client_secret.expose_secret().as_bytes(),
    ));
    let credentials = SecretString::from(credentials);
    let encoded = SecretString::from(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials.expose_secret().as_bytes())
    ));
    let mut value = HeaderValue::from_str(encoded.expose_secret())
        .map_err(|_| Error::config("the client credentials cannot be sent in a header"))?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names() {
        assert_eq!(
            ClientAuthMethod::ClientSecretJwt.as_str(),
            "client_secret_jwt"
        );
        assert_eq!(ClientAuthMethod::PrivateKeyJwt.as_str(), "private_key_jwt");
        assert_eq!(ClientAuthMethod::TlsClientAuth.as_str(), "tls_client_auth");
        assert_eq!(
            ClientAuthMethod::SelfSignedTlsClientAuth.as_str(),
            "self_signed_tls_client_auth"
        );
    }
}
