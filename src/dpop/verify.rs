//! A DPoP proof verifier (RFC 9449 §4.3), for the crate's own test servers and tests: every
//! check a resource server or token endpoint makes, written independently of the signer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{self, UnparsedPublicKey};
use serde_json::Value;

/// How far a proof's `iat` may be from the verifier's clock, either way, in seconds.
pub(crate) const IAT_WINDOW_SECS: u64 = 60;

/// What a valid proof told the verifier.
#[derive(Debug, Clone)]
pub(crate) struct VerifiedProof {
    /// The RFC 7638 thumbprint of the proof's key.
    pub(crate) jkt: String,
    /// The proof's `nonce`, if any.
    pub(crate) nonce: Option<String>,
}

/// Verifies proofs and remembers their `jti`s for the `iat` window, so that a replayed proof
/// is rejected.
#[derive(Debug, Default)]
pub(crate) struct ProofVerifier {
    seen: Mutex<HashMap<String, u64>>,
}

impl ProofVerifier {
    /// Checks `proof` for a request of `method` to `htu` (scheme, host and path: no query or
    /// fragment) carrying `access_token` (`None` at a token endpoint). The error names the
    /// failed check.
    pub(crate) fn verify(
        &self,
        proof: &str,
        method: &str,
        htu: &str,
        access_token: Option<&str>,
    ) -> Result<VerifiedProof, &'static str> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let (signed, signature) = proof.rsplit_once('.').ok_or("not a JWS")?;
        let (header, claims) = signed.split_once('.').ok_or("not a JWS")?;
        let header = decode_json(header).ok_or("header is not base64url JSON")?;
        let claims = decode_json(claims).ok_or("claims are not base64url JSON")?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| "signature is not base64url")?;
        if header["typ"] != "dpop+jwt" {
            return Err("typ is not dpop+jwt");
        }
        let jwk = header.get("jwk").ok_or("no jwk header")?;
        if jwk.get("d").is_some() {
            return Err("the jwk holds a private key");
        }
        let alg = header["alg"].as_str().ok_or("no alg")?;
        verify_signature(alg, jwk, signed.as_bytes(), &signature)?;
        if claims["htm"] != method {
            return Err("htm does not match the request method");
        }
        if claims["htu"] != htu {
            return Err("htu does not match the request URI");
        }
        let iat = claims["iat"].as_u64().ok_or("no iat")?;
        if iat.abs_diff(now) > IAT_WINDOW_SECS {
            return Err("iat is outside the accepted window");
        }
        match (access_token, claims.get("ath")) {
            (Some(token), Some(ath)) => {
                let hash = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
                if *ath != URL_SAFE_NO_PAD.encode(hash.as_ref()) {
                    return Err("ath does not match the access token");
                }
            }
            (Some(_), None) => return Err("no ath"),
            (None, Some(_)) => return Err("ath at the token endpoint"),
            (None, None) => {}
        }
        let jti = claims["jti"]
            .as_str()
            .filter(|j| !j.is_empty())
            .ok_or("no jti")?;
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.retain(|_, at| at.abs_diff(now) <= 2 * IAT_WINDOW_SECS);
            if seen.insert(jti.to_string(), iat).is_some() {
                return Err("jti was already used (a replayed proof)");
            }
        }
        Ok(VerifiedProof {
            jkt: thumbprint(jwk).ok_or("the jwk lacks required members")?,
            nonce: claims["nonce"].as_str().map(str::to_string),
        })
    }
}

fn decode_json(part: &str) -> Option<Value> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

fn member(jwk: &Value, name: &str) -> Result<Vec<u8>, &'static str> {
    jwk[name]
        .as_str()
        .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
        .ok_or("a jwk member is missing or not base64url")
}

fn verify_signature(
    alg: &str,
    jwk: &Value,
    message: &[u8],
    signature: &[u8],
) -> Result<(), &'static str> {
    let bad = |_| "the signature does not verify with the jwk";
    match (alg, jwk["kty"].as_str()) {
        ("ES256", Some("EC")) if jwk["crv"] == "P-256" => {
            let mut point = vec![4];
            point.extend(member(jwk, "x")?);
            point.extend(member(jwk, "y")?);
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message, signature)
                .map_err(bad)
        }
        ("EdDSA", Some("OKP")) if jwk["crv"] == "Ed25519" => {
            UnparsedPublicKey::new(&signature::ED25519, member(jwk, "x")?)
                .verify(message, signature)
                .map_err(bad)
        }
        ("RS256" | "PS256", Some("RSA")) => {
            let key = signature::RsaPublicKeyComponents {
                n: member(jwk, "n")?,
                e: member(jwk, "e")?,
            };
            let params = if alg == "PS256" {
                &signature::RSA_PSS_2048_8192_SHA256
            } else {
                &signature::RSA_PKCS1_2048_8192_SHA256
            };
            key.verify(params, message, signature).map_err(bad)
        }
        _ => Err("unsupported alg or a jwk that does not fit it"),
    }
}

/// RFC 7638 thumbprint of a public JWK.
pub(crate) fn thumbprint(jwk: &Value) -> Option<String> {
    let s = |name: &str| jwk[name].as_str();
    // Required members only, in lexicographic order, no whitespace (base64url needs no escaping).
    let canonical = match s("kty")? {
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv")?,
            s("x")?,
            s("y")?
        ),
        "OKP" => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, s("crv")?, s("x")?),
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e")?, s("n")?),
        _ => return None,
    };
    let hash = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    Some(URL_SAFE_NO_PAD.encode(hash.as_ref()))
}

/// Why a DPoP request was refused by a test server.
#[derive(Debug)]
pub(crate) enum Rejection {
    /// The proof is valid but lacks the server's current nonce, which the answer carries.
    Nonce,
    /// The proof is missing, malformed, or fails a check.
    Invalid(&'static str),
}

/// The DPoP side of a test server (token endpoint or API): proof verification with replay
/// detection, and an optional nonce it requires.
#[derive(Debug, Default)]
pub(crate) struct DpopServer {
    verifier: ProofVerifier,
    nonce: Mutex<Option<String>>,
}

impl DpopServer {
    /// Requires `nonce` in every proof from now on (`None`: no nonce required).
    pub(crate) fn set_nonce(&self, nonce: Option<&str>) {
        *self.nonce.lock().unwrap_or_else(|e| e.into_inner()) = nonce.map(str::to_string);
    }

    /// The nonce currently required.
    pub(crate) fn nonce(&self) -> Option<String> {
        self.nonce.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Checks the request's `DPoP` header: `Ok(None)` without one, `Ok(Some(jkt))` for a
    /// valid proof carrying the required nonce.
    pub(crate) fn check(
        &self,
        headers: &http::HeaderMap,
        method: &str,
        htu: &str,
        access_token: Option<&str>,
    ) -> Result<Option<String>, Rejection> {
        let mut proofs = headers.get_all("dpop").iter();
        let Some(proof) = proofs.next() else {
            return Ok(None);
        };
        if proofs.next().is_some() {
            return Err(Rejection::Invalid("more than one DPoP header"));
        }
        let proof = proof
            .to_str()
            .map_err(|_| Rejection::Invalid("not ASCII"))?;
        let verified = self
            .verifier
            .verify(proof, method, htu, access_token)
            .map_err(Rejection::Invalid)?;
        match self.nonce() {
            Some(nonce) if verified.nonce.as_deref() != Some(nonce.as_str()) => {
                Err(Rejection::Nonce)
            }
            _ => Ok(Some(verified.jkt)),
        }
    }
}
