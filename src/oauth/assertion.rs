//! RFC 7523 client assertions: the JWT a client signs to authenticate at the token endpoint
//! (`client_secret_jwt`, `private_key_jwt`). The whole module is the `jwt-client-auth` feature.

use std::fmt;
use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};

use crate::error::Error;
use crate::oauth::client_auth::JwtSigningAlgorithm;

/// How long an assertion is valid after it is made.
pub(crate) const LIFETIME_SECS: u64 = 60;

/// The claims of a client assertion (RFC 7523 §3).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Claims {
    pub(crate) iss: String,
    pub(crate) sub: String,
    pub(crate) aud: String,
    pub(crate) jti: String,
    pub(crate) iat: u64,
    pub(crate) exp: u64,
}

impl Claims {
    /// The claims for `client_id` at `token_endpoint`, made at `now`: a fresh 128-bit `jti`.
    pub(crate) fn new(
        client_id: &str,
        token_endpoint: &str,
        now: SystemTime,
    ) -> Result<Self, Error> {
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Ok(Claims {
            iss: client_id.to_string(),
            sub: client_id.to_string(),
            aud: token_endpoint.to_string(),
            jti: random_jti()?,
            iat,
            exp: iat + LIFETIME_SECS,
        })
    }
}

/// 128 bits from the operating system's CSPRNG, as 32 hex digits. A server that refuses a
/// replayed `jti` (RFC 7523 §3) keeps the ones it saw: they must be unguessable and must not
/// collide, which a small-state PRNG (fastrand's 64 bits) does not promise.
fn random_jti() -> Result<String, Error> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| {
            Error::config(
                "the operating system's random number generator failed; a client assertion \
                 needs a random `jti`",
            )
        })?;
    Ok(format!("{:032x}", u128::from_be_bytes(bytes)))
}

/// What signs the assertion: the client secret (`client_secret_jwt`, HS256) or the client's
/// private key (`private_key_jwt`).
#[derive(Debug)]
pub(crate) enum AssertionKey {
    /// HS256 with the client secret.
    ClientSecret(SecretString),
    /// `private_key_jwt`: the client's private key.
    PrivateKey(PrivateKey),
}

/// A private key for `private_key_jwt`. The key material is never shown.
pub(crate) struct PrivateKey {
    algorithm: JwtSigningAlgorithm,
    kid: Option<String>,
    key: jsonwebtoken::EncodingKey,
}

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
        )?)
        .map_err(|_| unusable(algorithm))?;
        Ok(key)
    }

    /// The algorithm the key signs with.
    pub(crate) fn algorithm(&self) -> JwtSigningAlgorithm {
        self.algorithm
    }

    /// The key id, if given.
    pub(crate) fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The raw JWS signature over `input` (for `client_credentials::PemSigner`).
    pub(crate) fn sign_raw(&self, input: &[u8]) -> Result<Vec<u8>, Error> {
        let algorithm = match self.algorithm {
            JwtSigningAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            JwtSigningAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
        };
        use base64::Engine as _;
        jsonwebtoken::crypto::sign(input, &self.key, algorithm)
            .ok()
            .and_then(|signature| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(signature)
                    .ok()
            })
            .ok_or_else(|| Error::config("the client assertion could not be signed"))
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
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// The client assertion for `client_id` at `token_endpoint`, signed with `key`, made at `now`.
pub(crate) fn client_assertion(
    key: &AssertionKey,
    client_id: &str,
    token_endpoint: &str,
    now: SystemTime,
) -> Result<SecretString, Error> {
    let claims = Claims::new(client_id, token_endpoint, now)?;
    let signed = match key {
        AssertionKey::ClientSecret(secret) => jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.expose_secret().as_bytes()),
        ),
        AssertionKey::PrivateKey(key) => key.sign(&claims),
    };
    // jsonwebtoken's errors name a kind, never the key; still, keep only a fixed message.
    signed
        .map(SecretString::from)
        .map_err(|_| Error::config("the client assertion could not be signed"))
}

#[cfg(test)]
mod tests;
