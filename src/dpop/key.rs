//! The DPoP key and the proofs it signs (RFC 9449 §4).

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{HeaderValue, Method, Uri};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::PrivateKeyDer;

use super::nonce::NonceStore;
use crate::error::Error;

/// The JWS algorithm a [`DpopKey`] signs its proofs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DpopAlgorithm {
    /// ECDSA on P-256 with SHA-256: the default, and the one every DPoP server supports.
    ES256,
    /// RSASSA-PSS with SHA-256 (RSA keys of 2048 to 8192 bits).
    PS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RSA keys of 2048 to 8192 bits).
    RS256,
    /// Ed25519 (`alg` `EdDSA`, RFC 8037).
    EdDSA,
}

impl DpopAlgorithm {
    /// The JWS `alg` name, as in `dpop_signing_alg_values_supported`.
    pub fn as_str(self) -> &'static str {
        match self {
            DpopAlgorithm::ES256 => "ES256",
            DpopAlgorithm::PS256 => "PS256",
            DpopAlgorithm::RS256 => "RS256",
            DpopAlgorithm::EdDSA => "EdDSA",
        }
    }
}

/// A DPoP key pair (RFC 9449): signs a fresh proof for every token request and every API
/// request, and binds the tokens the server issues to its public key.
///
/// Generate one with [`generate`](Self::generate) (ES256, the default) or load one from PEM
/// with [`from_pem`](Self::from_pem). Cheap to clone: clones share the key and the server
/// nonces learned so far (per origin, from every `DPoP-Nonce` response header).
///
/// The private key never leaves the value: `Debug` shows the algorithm and the public key
/// thumbprint only, and errors never quote the key. The PEM and DER buffers read by
/// [`from_pem`](Self::from_pem) are zeroized on drop; the key inside *ring* is not (*ring*
/// offers no zeroizing), so keep the process's memory as protected as for any TLS key.
///
/// # Example
///
/// ```
/// use tower_client_credentials::dpop::{DpopAlgorithm, DpopKey};
///
/// let key = DpopKey::generate()?;
/// assert_eq!(key.algorithm(), DpopAlgorithm::ES256);
/// // The JWK SHA-256 thumbprint (RFC 7638), what a bound token's `cnf.jkt` names.
/// assert_eq!(key.thumbprint().len(), 43);
/// assert!(!format!("{key:?}").contains("PRIVATE"));
/// # Ok::<(), tower_client_credentials::Error>(())
/// ```
#[derive(Clone)]
pub struct DpopKey {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    signer: Signer,
    algorithm: DpopAlgorithm,
    /// base64url of the JOSE header, the same for every proof of this key: `typ`, `alg`, `jwk`.
    encoded_header: String,
    thumbprint: String,
    rng: SystemRandom,
    nonces: NonceStore,
}

enum Signer {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair, &'static dyn signature::RsaEncoding),
    Ed25519(Ed25519KeyPair),
}

impl DpopKey {
    /// A new random ES256 (P-256) key.
    pub fn generate() -> Result<Self, Error> {
        Self::generate_with(DpopAlgorithm::ES256)
    }

    /// A new random key for `algorithm`: ES256 or EdDSA (RSA keys cannot be generated here;
    /// load one with [`from_pem`](Self::from_pem)).
    pub fn generate_with(algorithm: DpopAlgorithm) -> Result<Self, Error> {
        let rng = SystemRandom::new();
        let failed = || Error::config("the system random generator failed to make a DPoP key");
        let pkcs8 = match algorithm {
            DpopAlgorithm::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| failed())?
            }
            DpopAlgorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| failed())?,
            DpopAlgorithm::PS256 | DpopAlgorithm::RS256 => {
                return Err(Error::config(format!(
                    "{} DPoP keys cannot be generated; load one with `DpopKey::from_pem`, or \
                     generate an ES256 key",
                    algorithm.as_str()
                )))
            }
        };
        Self::from_der(algorithm, pkcs8.as_ref(), rng)
    }

    /// Loads a private key from PEM: for ES256 an EC P-256 key in PKCS#8
    /// (`-----BEGIN PRIVATE KEY-----`), for PS256 and RS256 an RSA key (PKCS#8 or PKCS#1), for
    /// EdDSA an Ed25519 key in PKCS#8.
    pub fn from_pem(algorithm: DpopAlgorithm, pem: &[u8]) -> Result<Self, Error> {
        let mut key = PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
            Error::config(format!(
                "the {} DPoP key is not a PEM private key; expected `-----BEGIN PRIVATE KEY-----`",
                algorithm.as_str()
            ))
        })?;
        let made = Self::from_der(algorithm, key.secret_der(), SystemRandom::new());
        // The decoded DER is ours; what the type's docs promise (as for `ClientIdentity`): it
        // does not outlive the call, whether *ring* accepted the key or not.
        zeroize::Zeroize::zeroize(&mut key);
        made
    }

    fn from_der(algorithm: DpopAlgorithm, der: &[u8], rng: SystemRandom) -> Result<Self, Error> {
        let rejected = |e: ring::error::KeyRejected| {
            Error::config(format!(
                "the DPoP key is not a valid {} private key ({e}); check the algorithm and that \
                 the key is PKCS#8",
                algorithm.as_str()
            ))
        };
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let (signer, jwk, thumbprint_input) = match algorithm {
            DpopAlgorithm::ES256 => {
                let pair = EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &rng,
                )
                .map_err(rejected)?;
                // An uncompressed point: 0x04, then x and y of 32 bytes each.
                let point = pair.public_key().as_ref();
                let (x, y) = (b64(&point[1..33]), b64(&point[33..65]));
                // RFC 7638 §3.2: the required members, in lexicographic order, no whitespace.
                let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
                (Signer::Ecdsa(pair), canonical.clone(), canonical)
            }
            DpopAlgorithm::EdDSA => {
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(rejected)?;
                let x = b64(pair.public_key().as_ref());
                let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
                (Signer::Ed25519(pair), canonical.clone(), canonical)
            }
            DpopAlgorithm::PS256 | DpopAlgorithm::RS256 => {
                let pair = RsaKeyPair::from_pkcs8(der)
                    .or_else(|_| RsaKeyPair::from_der(der))
                    .map_err(rejected)?;
                let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
                let strip = |bytes: &[u8]| {
                    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
                    b64(&bytes[start..])
                };
                let (n, e) = (strip(&public.n), strip(&public.e));
                let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
                let encoding: &'static dyn signature::RsaEncoding =
                    if algorithm == DpopAlgorithm::PS256 {
                        &signature::RSA_PSS_SHA256
                    } else {
                        &signature::RSA_PKCS1_SHA256
                    };
                (Signer::Rsa(pair, encoding), canonical.clone(), canonical)
            }
        };
        let thumbprint =
            b64(ring::digest::digest(&ring::digest::SHA256, thumbprint_input.as_bytes()).as_ref());
        let header = format!(
            r#"{{"typ":"dpop+jwt","alg":"{}","jwk":{jwk}}}"#,
            algorithm.as_str()
        );
        let key = DpopKey {
            inner: Arc::new(KeyInner {
                signer,
                algorithm,
                encoded_header: b64(header.as_bytes()),
                thumbprint,
                rng,
                nonces: NonceStore::default(),
            }),
        };
        // A trial signature, so that a key ring accepts but cannot use fails here, not per request.
        key.sign_jws("{}")?;
        Ok(key)
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> DpopAlgorithm {
        self.inner.algorithm
    }

    /// The base64url SHA-256 JWK thumbprint of the public key (RFC 7638): the `jkt` that a
    /// token bound to this key carries in its `cnf` claim (RFC 9449 §6).
    pub fn thumbprint(&self) -> &str {
        &self.inner.thumbprint
    }

    /// The server nonces learned so far, per origin.
    pub(crate) fn nonces(&self) -> &NonceStore {
        &self.inner.nonces
    }

    /// A proof for a request of `method` to `uri` (its user info, query and fragment left out
    /// of `htu`, RFC 9449 §4.2),
    /// with the nonce last given by the URI's origin, and `ath` when `access_token` is given:
    /// the value of a `DPoP` header, marked sensitive.
    pub fn proof(
        &self,
        method: &Method,
        uri: &Uri,
        access_token: Option<&str>,
    ) -> Result<HeaderValue, Error> {
        let (scheme, authority) = match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => (scheme, authority.as_str()),
            _ => {
                return Err(Error::config(
                    "a DPoP proof needs the request's absolute URI (scheme and host); for a \
                     client that sends only the path (a tonic Channel), set the origin with \
                     `DpopAuthLayer::origin`",
                ))
            }
        };
        self.proof_parts(method, scheme, authority, uri.path(), access_token)
    }

    /// [`proof`](Self::proof) with the URI in parts (so a path-only request can be given an
    /// origin without building a `Uri`).
    pub(crate) fn proof_parts(
        &self,
        method: &Method,
        scheme: &str,
        authority: &str,
        path: &str,
        access_token: Option<&str>,
    ) -> Result<HeaderValue, Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        // RFC 9449 §4.2 and §11.1: `jti` must not be guessable or collide, since a server's
        // replay cache keys on it: 128 bits from the system CSPRNG (the one that signs).
        let mut jti = [0u8; 16];
        ring::rand::SecureRandom::fill(&self.inner.rng, &mut jti).map_err(|_| {
            Error::config("the system random generator failed to make a DPoP proof `jti`")
        })?;
        // RFC 9449 §4.2: `htu` is the URI without query and fragment, and user info is no part
        // of what the server sees as the target (and a password must not be signed into a JWT
        // sent to the API, which stores or logs it).
        let authority = super::nonce::host_port(authority);
        let mut claims = String::with_capacity(160 + path.len() + authority.len());
        claims.push_str(r#"{"jti":""#);
        URL_SAFE_NO_PAD.encode_string(jti, &mut claims);
        claims.push_str(r#"","htm":"#);
        push_json_string(&mut claims, method.as_str());
        claims.push_str(r#","htu":"#);
        let path = if path.is_empty() { "/" } else { path };
        push_json_string(&mut claims, &format!("{scheme}://{authority}{path}"));
        claims.push_str(r#","iat":"#);
        claims.push_str(&now.to_string());
        if let Some(token) = access_token {
            let hash = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            claims.push_str(r#","ath":""#);
            URL_SAFE_NO_PAD.encode_string(hash.as_ref(), &mut claims);
            claims.push('"');
        }
        self.inner.nonces.with_nonce(scheme, authority, |nonce| {
            claims.push_str(r#","nonce":"#);
            push_json_string(&mut claims, nonce);
        });
        claims.push('}');
        let jws = self.sign_jws(&claims)?;
        let mut value = HeaderValue::try_from(jws).map_err(|_| {
            Error::config("the DPoP proof is not a valid header value (a bug: please report it)")
        })?;
        value.set_sensitive(true);
        Ok(value)
    }

    fn sign_jws(&self, claims: &str) -> Result<String, Error> {
        let inner = &*self.inner;
        let mut jws =
            String::with_capacity(inner.encoded_header.len() + claims.len() * 4 / 3 + 700);
        jws.push_str(&inner.encoded_header);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(claims.as_bytes(), &mut jws);
        let failed = || Error::config("signing the DPoP proof failed; check the DPoP key");
        let signature = match &inner.signer {
            Signer::Ecdsa(pair) => pair
                .sign(&inner.rng, jws.as_bytes())
                .map_err(|_| failed())?,
            Signer::Ed25519(pair) => pair.sign(jws.as_bytes()),
            Signer::Rsa(pair, encoding) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(*encoding, &inner.rng, jws.as_bytes(), &mut signature)
                    .map_err(|_| failed())?;
                jws.push('.');
                URL_SAFE_NO_PAD.encode_string(&signature, &mut jws);
                return Ok(jws);
            }
        };
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jws);
        Ok(jws)
    }
}

/// Appends `text` as a JSON string literal.
fn push_json_string(out: &mut String, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        // Rare (URIs and methods never need escaping); serde_json knows every rule.
        out.push_str(&serde_json::Value::from(text).to_string());
    }
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("algorithm", &self.inner.algorithm)
            .field("thumbprint", &self.inner.thumbprint)
            .field("private_key", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests;
