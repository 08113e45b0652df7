//! The signing hook for `private_key_jwt` (RFC 7523): [`JwtSigner`], so that the private key can
//! stay in a KMS or an HSM, and [`PemSigner`], the implementation for a PEM key in memory.
//!
//! The crate builds the JWS (header, claims, `BASE64URL(header).BASE64URL(claims)`) and asks
//! the signer only for the signature over those bytes. The same shape serves any JWT the crate
//! signs with the client's key (a DPoP proof is one more header and claim set over the same
//! hook). The whole module is the `jwt-client-auth` feature.

use std::fmt;
use std::time::SystemTime;

use base64::Engine as _;
use secrecy::SecretString;

use crate::error::Error;
use crate::oauth::assertion::{Claims, PrivateKey};
use crate::oauth::client_auth::JwtSigningAlgorithm;
use crate::source::BoxFuture;

/// Signs the JWTs the client authenticates with (`private_key_jwt`), with a key that may live
/// elsewhere: a cloud KMS, an HSM, a signing sidecar. Called once per token request.
///
/// `sign` gets the JWS signing input (ASCII `BASE64URL(header).BASE64URL(payload)`) and returns
/// the raw signature as JWS wants it (RFC 7518 §3): for `RS256` the RSASSA-PKCS1-v1_5 SHA-256
/// signature, for `ES256` the 64-byte `R || S` (not DER: convert what a KMS returns).
/// Errors must not contain key material.
///
/// # Example
///
/// A signer that asks a remote service; here it delegates to a [`PemSigner`]:
///
/// ```
/// use tower_client_credentials::client_credentials::{JwtSigner, PemSigner};
/// use tower_client_credentials::{BoxFuture, ClientCredentials, Error, JwtSigningAlgorithm};
///
/// #[derive(Debug)]
/// struct Kms {
///     // A real signer holds a KMS client and a key name.
///     key: PemSigner,
/// }
///
/// impl JwtSigner for Kms {
///     fn algorithm(&self) -> JwtSigningAlgorithm {
///         JwtSigningAlgorithm::RS256
///     }
///
///     fn key_id(&self) -> Option<&str> {
///         Some("kms-key-1")
///     }
///
///     fn sign<'a>(&'a self, signing_input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
///         // A real signer awaits the KMS here.
///         self.key.sign(signing_input)
///     }
/// }
///
/// # fn main() -> Result<(), Error> {
/// # let pem = include_bytes!("../../tests/oidc-provider/test-client-key.pem");
/// let kms = Kms { key: PemSigner::from_pem(JwtSigningAlgorithm::RS256, pem, None)? };
/// let credentials = ClientCredentials::builder()
///     .token_endpoint("https://idp.example/oauth2/default/v1/token")?
///     .client_id("my-client")
///     .private_key_jwt_signer(kms)
///     .build()?;
/// # Ok(())
/// # }
/// ```
pub trait JwtSigner: fmt::Debug + Send + Sync + 'static {
    /// The algorithm of the signatures (the JWS `alg` header).
    fn algorithm(&self) -> JwtSigningAlgorithm;

    /// The key's id, sent as the JWS `kid` header when given. Default none.
    fn key_id(&self) -> Option<&str> {
        None
    }

    /// The signature over `signing_input`.
    fn sign<'a>(&'a self, signing_input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, Error>>;
}

impl<T: JwtSigner + ?Sized> JwtSigner for std::sync::Arc<T> {
    fn algorithm(&self) -> JwtSigningAlgorithm {
        (**self).algorithm()
    }

    fn key_id(&self) -> Option<&str> {
        (**self).key_id()
    }

    fn sign<'a>(&'a self, signing_input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
        (**self).sign(signing_input)
    }
}

/// A [`JwtSigner`] with a PEM private key in memory (what
/// [`private_key_jwt`](crate::ClientCredentialsBuilder::private_key_jwt) uses): RSA (PKCS#1 or
/// PKCS#8) for `RS256`, EC P-256 in PKCS#8 for `ES256`. The key is never shown.
///
/// # Example
///
/// ```
/// use tower_client_credentials::client_credentials::{JwtSigner, PemSigner};
/// use tower_client_credentials::JwtSigningAlgorithm;
///
/// # fn main() -> Result<(), tower_client_credentials::Error> {
/// # let pem = include_bytes!("../../tests/oidc-provider/test-es256-key.pem");
/// let signer = PemSigner::from_pem(JwtSigningAlgorithm::ES256, pem, Some("key-1"))?;
/// assert_eq!(signer.key_id(), Some("key-1"));
/// assert!(!format!("{signer:?}").contains("PRIVATE"));
/// # Ok(())
/// # }
/// ```
pub struct PemSigner(PrivateKey);

impl PemSigner {
    /// Reads a PEM private key for `algorithm`, checking it with a trial signature; `kid` is
    /// the key id the server knows it by. Errors never quote the key.
    pub fn from_pem(
        algorithm: JwtSigningAlgorithm,
        pem: &[u8],
        kid: Option<&str>,
    ) -> Result<Self, Error> {
        PrivateKey::from_pem(algorithm, pem, kid).map(PemSigner)
    }
}

impl JwtSigner for PemSigner {
    fn algorithm(&self) -> JwtSigningAlgorithm {
        self.0.algorithm()
    }

    fn key_id(&self) -> Option<&str> {
        self.0.kid()
    }

    fn sign<'a>(&'a self, signing_input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
        let signature = self.0.sign_raw(signing_input);
        Box::pin(async move { signature })
    }
}

impl fmt::Debug for PemSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The client assertion for `client_id` at `token_endpoint`, made now and signed by `signer`.
pub(super) async fn client_assertion(
    signer: &dyn JwtSigner,
    client_id: &str,
    token_endpoint: &str,
) -> Result<SecretString, Error> {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut header = serde_json::json!({"typ": "JWT", "alg": signer.algorithm().as_str()});
    if let Some(kid) = signer.key_id() {
        header["kid"] = serde_json::json!(kid);
    }
    let claims = Claims::new(client_id, token_endpoint, SystemTime::now())?;
    let claims = serde_json::to_vec(&claims)
        .map_err(|_| Error::config("the client assertion's claims could not be encoded"))?;
    let input = format!(
        "{}.{}",
        engine.encode(header.to_string()),
        engine.encode(claims)
    );
    let signature = signer.sign(input.as_bytes()).await?;
    Ok(SecretString::from(format!(
        "{input}.{}",
        engine.encode(signature)
    )))
}
