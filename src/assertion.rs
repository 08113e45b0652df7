//! RFC 7523 client assertions: the JWT a client signs to authenticate at the token endpoint
//! (`client_secret_jwt`, `private_key_jwt`), behind the `jwt-client-auth` feature.

use std::fmt;
use std::time::SystemTime;

use secrecy::SecretString;

use crate::endpoint::ClientAuthMethod;
use crate::error::Error;

/// RFC 7521 §4.2 / RFC 7523 §2.2: the `client_assertion_type` for a JWT assertion.
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long an assertion is valid after it is made.
pub(crate) const LIFETIME_SECS: u64 = 60;

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

/// The claims of a client assertion (RFC 7523 §3).
#[cfg_attr(not(feature = "jwt-client-auth"), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Claims {
    pub(crate) iss: String,
    pub(crate) sub: String,
    pub(crate) aud: String,
    pub(crate) jti: String,
    pub(crate) iat: u64,
    pub(crate) exp: u64,
}

#[cfg_attr(not(feature = "jwt-client-auth"), allow(dead_code))]
impl Claims {
    /// The claims for `client_id` at `token_endpoint`, made at `now`: a fresh 128-bit `jti`.
    pub(crate) fn new(client_id: &str, token_endpoint: &str, now: SystemTime) -> Self {
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Claims {
            iss: client_id.to_string(),
            sub: client_id.to_string(),
            aud: token_endpoint.to_string(),
            jti: format!("{:032x}", fastrand::u128(..)),
            iat,
            exp: iat + LIFETIME_SECS,
        }
    }
}

/// A private key for `private_key_jwt`. The key material is never shown.
#[cfg(feature = "jwt-client-auth")]
pub(crate) struct PrivateKey {
    algorithm: JwtSigningAlgorithm,
    kid: Option<String>,
    key: jsonwebtoken::EncodingKey,
}

/// Without the `jwt-client-auth` feature there are no private keys.
#[cfg(not(feature = "jwt-client-auth"))]
pub(crate) enum PrivateKey {}

#[cfg(feature = "jwt-client-auth")]
impl PrivateKey {
    /// Reads a PEM private key and checks, by signing a throw-away JWT, that it fits
    /// `algorithm`. Errors never quote the key.
    pub(crate) fn from_pem(
        algorithm: JwtSigningAlgorithm,
        pem: &[u8],
        kid: Option<&str>,
    ) -> Result<Self, Error> {
        let key = match algorithm {
            JwtSigningAlgorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(pem),
            JwtSigningAlgorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(pem),
        }
        .map_err(|_| unusable(algorithm))?;
        if let Some(kid) = kid {
            if kid.is_empty() || kid.chars().any(char::is_control) {
                return Err(Error::config(
                    "the private key's `kid` is empty or contains control characters",
                ));
            }
        }
        let key = PrivateKey {
            algorithm,
            kid: kid.map(str::to_string),
            key,
        };
        // ring only parses the key when it signs: catch a wrong key type now, not at the first
        // token request.
        key.sign(&Claims::new(
            "probe",
            "https://probe.invalid/",
            SystemTime::now(),
        ))
        .map_err(|_| unusable(algorithm))?;
        Ok(key)
    }

    fn sign(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        let algorithm = match self.algorithm {
            JwtSigningAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            JwtSigningAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
        };
        let mut header = jsonwebtoken::Header::new(algorithm);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.key)
    }
}

#[cfg(feature = "jwt-client-auth")]
fn unusable(algorithm: JwtSigningAlgorithm) -> Error {
    let expected = match algorithm {
        JwtSigningAlgorithm::RS256 => "an RSA private key in PEM (PKCS#1 or PKCS#8)",
        JwtSigningAlgorithm::ES256 => {
            "an EC P-256 private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`)"
        }
    };
    Error::config(format!(
        "the private key for {} is not usable; expected {expected}",
        algorithm.as_str()
    ))
}

impl fmt::Debug for PrivateKey {
    #[cfg(feature = "jwt-client-auth")]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .field("key", &"[redacted]")
            .finish()
    }

    #[cfg(not(feature = "jwt-client-auth"))]
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

/// The signed client assertion for `method` (one of the JWT methods), made at `now`.
#[cfg(feature = "jwt-client-auth")]
pub(crate) fn client_assertion(
    method: ClientAuthMethod,
    client_id: &str,
    client_secret: Option<&SecretString>,
    private_key: Option<&PrivateKey>,
    token_endpoint: &str,
    now: SystemTime,
) -> Result<SecretString, Error> {
    use secrecy::ExposeSecret;
    let claims = Claims::new(client_id, token_endpoint, now);
    let signed = match method {
        ClientAuthMethod::ClientSecretJwt => {
            let secret = client_secret.ok_or_else(|| {
                Error::config("client_secret_jwt needs a client secret; set `.client_secret(..)`")
            })?;
            let key = jsonwebtoken::EncodingKey::from_secret(secret.expose_secret().as_bytes());
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &key,
            )
        }
        ClientAuthMethod::PrivateKeyJwt => {
            let key = private_key.ok_or_else(|| {
                Error::config("private_key_jwt needs a private key; set `.private_key_jwt(..)`")
            })?;
            key.sign(&claims)
        }
        other => {
            return Err(Error::config(format!(
                "{} does not use a client assertion",
                other.as_str()
            )))
        }
    };
    // jsonwebtoken's errors name a kind, never the key; still, keep only a fixed message.
    signed
        .map(SecretString::from)
        .map_err(|_| Error::config("the client assertion could not be signed"))
}

/// Without the `jwt-client-auth` feature: a configuration error naming the feature.
#[cfg(not(feature = "jwt-client-auth"))]
pub(crate) fn client_assertion(
    method: ClientAuthMethod,
    _client_id: &str,
    _client_secret: Option<&SecretString>,
    _private_key: Option<&PrivateKey>,
    _token_endpoint: &str,
    _now: SystemTime,
) -> Result<SecretString, Error> {
    Err(feature_missing(method))
}

/// The error for a JWT method chosen without the `jwt-client-auth` feature.
#[cfg_attr(feature = "jwt-client-auth", allow(dead_code))]
pub(crate) fn feature_missing(method: ClientAuthMethod) -> Error {
    Error::config(format!(
        "the client authentication method {} needs the cargo feature `jwt-client-auth` of \
         tower-client-credentials",
        method.as_str()
    ))
}
