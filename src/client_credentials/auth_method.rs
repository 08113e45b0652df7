//! How these credentials authenticate the client: decided at build, except that with a secret
//! and no configured method, `client_secret_basic` or `client_secret_post` is negotiated at the
//! first token request and the one that works is remembered. A JWT assertion needs its key, and
//! mutual TLS a certificate and no secret: the variants hold exactly what each needs.
//!
//! When both are refused, that is remembered too: each later fetch sends one request, with the
//! method the previous one did not try, instead of two. So a misconfigured client costs the
//! token endpoint (whose rate limit other applications may share) one request per attempt, and
//! a fix on either side (the secret, or the method the server allows) is still found within two
//! attempts.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use secrecy::SecretString;

use super::secret::SecretSource;

use crate::error::{Error, ErrorKind};
use crate::oauth::client_auth::ClientAuthMethod;
use crate::oauth::token_request::ClientAuth;
use crate::token::Token;

/// What the client authenticates with, and how.
pub(super) enum Authentication {
    /// The client secret (read from its source at every token request), and how it is sent:
    /// in a Basic header or in the form (configured or negotiated), or as the key of a
    /// `client_secret_jwt` assertion.
    Secret {
        secret: ClientSecret,
        method: SecretMethod,
    },
    /// `private_key_jwt`: a JWT client assertion (RFC 7523) signed with a private key.
    #[cfg(feature = "jwt-client-auth")]
    Assertion(crate::oauth::assertion::AssertionKey),
    /// `private_key_jwt`: a JWT client assertion signed by the user's signer (a KMS, an HSM).
    #[cfg(feature = "jwt-client-auth")]
    Signer(Arc<dyn super::signer::JwtSigner>),
    /// A client assertion signed by someone else (a platform's workload identity token), read
    /// from its source at every token request.
    AssertionSource(super::assertion_source::ClientAssertion),
    /// The TLS client certificate (RFC 8705 §2): it authenticates the connection; the form
    /// only names the client.
    Certificate {
        kind: CertificateKind,
        presented_by: CertificateHolder,
    },
}

/// The client secret: where it is read, and what names it in a shared store's key.
pub(super) struct ClientSecret {
    /// Read at every token request (and once more after `invalid_client`).
    pub(super) source: Arc<dyn SecretSource>,
    /// The HMAC key of the store key before the secret is read (see `store_identity`): the
    /// secret itself for `client_secret("..")` (it never changes), the source's name (its
    /// `Debug`, which a `SecretSource` must keep free of the secret) for a source. The cache
    /// keys the store by the value the source gives now instead
    /// (`ClientCredentials::current_store_key`); this one only says that a store may be used.
    #[cfg(feature = "store")]
    store_hmac_key: SecretString,
}

impl ClientSecret {
    /// A secret given as a value (`client_secret("..")`).
    pub(super) fn fixed(secret: SecretString) -> Self {
        ClientSecret {
            #[cfg(feature = "store")]
            store_hmac_key: secret.clone(),
            source: Arc::new(super::secret::FixedSecret(secret)),
        }
    }

    /// A secret read from `source`.
    pub(super) fn from_source(source: Arc<dyn SecretSource>) -> Self {
        ClientSecret {
            #[cfg(feature = "store")]
            store_hmac_key: SecretString::from(format!("secret source {source:?}")),
            source,
        }
    }
}

/// Which RFC 8705 method the certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CertificateKind {
    /// Issued by a CA the server trusts (`tls_client_auth`, §2.1).
    CaIssued,
    /// Self-signed and registered with the client (`self_signed_tls_client_auth`, §2.2).
    SelfSigned,
}

/// What presents the certificate on the token and discovery requests. `Debug` shows the
/// identity's thumbprint, never its key.
#[derive(Debug)]
pub(super) enum CertificateHolder {
    /// The built-in client, made with this identity (feature `mtls`).
    #[cfg(feature = "mtls")]
    Identity(crate::mtls::ClientIdentity),
    /// The HTTP client passed to `ClientCredentialsBuilder::http_client`.
    CallersHttpClient,
}

impl CertificateKind {
    fn method(self) -> ClientAuthMethod {
        match self {
            CertificateKind::CaIssued => ClientAuthMethod::TlsClientAuth,
            CertificateKind::SelfSigned => ClientAuthMethod::SelfSignedTlsClientAuth,
        }
    }
}

/// How the secret is used: sent as configured or as negotiated, or as an assertion's key.
pub(super) enum SecretMethod {
    Configured(SecretEncoding),
    /// Not configured: what the negotiation has learned so far.
    Negotiated(Negotiation),
    /// `client_secret_jwt`: a JWT client assertion (RFC 7523) signed (HS256) with the secret.
    #[cfg(feature = "jwt-client-auth")]
    Jwt,
}

/// What the negotiation of the secret's encoding has learned. The cache runs one fetch at a
/// time; an atomic keeps concurrent direct callers safe (the worst they can do is repeat a try).
#[derive(Debug, Default)]
pub(super) struct Negotiation(AtomicU8);

/// What a [`Negotiation`] knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Learned {
    /// Nothing yet: try every candidate.
    Nothing,
    /// This encoding worked: use it, and only it, from now on.
    Works(SecretEncoding),
    /// Every candidate was refused: try one per fetch, this one next.
    AllRefusedTryNext(SecretEncoding),
}

impl Negotiation {
    fn get(&self) -> Learned {
        match self.0.load(Ordering::Acquire) {
            1 => Learned::Works(SecretEncoding::Basic),
            2 => Learned::Works(SecretEncoding::Post),
            3 => Learned::AllRefusedTryNext(SecretEncoding::Basic),
            4 => Learned::AllRefusedTryNext(SecretEncoding::Post),
            _ => Learned::Nothing,
        }
    }

    fn set(&self, learned: Learned) {
        let value = match learned {
            Learned::Nothing => 0,
            Learned::Works(SecretEncoding::Basic) => 1,
            Learned::Works(SecretEncoding::Post) => 2,
            Learned::AllRefusedTryNext(SecretEncoding::Basic) => 3,
            Learned::AllRefusedTryNext(SecretEncoding::Post) => 4,
        };
        self.0.store(value, Ordering::Release);
    }

    /// Forgets that every candidate was refused (a method that worked is kept): what the
    /// refusals of one secret taught says nothing about the next one.
    fn forget_refusals(&self) {
        if matches!(self.get(), Learned::AllRefusedTryNext(_)) {
            self.set(Learned::Nothing);
        }
    }

    /// The encoding that worked, if one did.
    fn works(&self) -> Option<SecretEncoding> {
        match self.get() {
            Learned::Works(encoding) => Some(encoding),
            _ => None,
        }
    }
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
            Authentication::Secret { method, .. } => method.in_use(),
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
            Authentication::AssertionSource(_) => Some(ClientAuthMethod::PrivateKeyJwt),
            Authentication::Certificate { kind, .. } => Some(kind.method()),
        }
    }

    /// What names this authentication in a shared store's key: the configured method
    /// (`negotiated` when none is: the key must not change once one is detected), and what
    /// keys the hash, if anything does (a private key or a certificate is not hashed).
    ///
    /// With a secret, the hash is keyed by what was fixed at build (see
    /// [`ClientSecret::store_hmac_key`]): the secret itself for `client_secret("..")`, the
    /// source's name for a [`SecretSource`]. That is the key known without reading the source
    /// (which is asynchronous and may fail); before each use of the store the cache asks for
    /// the key keyed by the secret the source gives now (`current_store_key`), so a rotated
    /// secret gets a new key and its predecessor's failures do not hold it up.
    #[cfg(feature = "store")]
    pub(super) fn store_identity(&self) -> (&'static str, Option<&SecretString>) {
        match self {
            Authentication::Secret { secret, method } => {
                let name = match method {
                    SecretMethod::Configured(encoding) => encoding.method().as_str(),
                    SecretMethod::Negotiated(_) => "negotiated",
                    #[cfg(feature = "jwt-client-auth")]
                    SecretMethod::Jwt => ClientAuthMethod::ClientSecretJwt.as_str(),
                };
                (name, Some(&secret.store_hmac_key))
            }
            #[cfg(feature = "jwt-client-auth")]
            Authentication::Assertion(key) => match key {
                crate::oauth::assertion::AssertionKey::ClientSecret(secret) => {
                    (ClientAuthMethod::ClientSecretJwt.as_str(), Some(secret))
                }
                crate::oauth::assertion::AssertionKey::PrivateKey(_) => {
                    (ClientAuthMethod::PrivateKeyJwt.as_str(), None)
                }
            },
            #[cfg(feature = "jwt-client-auth")]
            Authentication::Signer(_) => (ClientAuthMethod::PrivateKeyJwt.as_str(), None),
            // Keyed by the source's name: the assertion changes at every rotation.
            Authentication::AssertionSource(assertion) => (
                ClientAuthMethod::PrivateKeyJwt.as_str(),
                Some(&assertion.store_hmac_key),
            ),
            Authentication::Certificate { kind, .. } => (kind.method().as_str(), None),
        }
    }

    /// Whether the client authenticates with its TLS certificate: its token requests go to the
    /// metadata's `mtls_endpoint_aliases` token endpoint when there is one (RFC 8705 §5).
    pub(super) fn is_certificate(&self) -> bool {
        matches!(self, Authentication::Certificate { .. })
    }
}

impl SecretMethod {
    /// Before a new secret is tried: a negotiation starts over with every candidate.
    pub(super) fn forget_refusals(&self) {
        if let SecretMethod::Negotiated(learned) = self {
            learned.forget_refusals();
        }
    }

    /// The method in use: the configured one, or the one that worked, or `None` before the
    /// first successful token request when none was configured.
    fn in_use(&self) -> Option<ClientAuthMethod> {
        match self {
            SecretMethod::Configured(encoding) => Some(encoding.method()),
            SecretMethod::Negotiated(learned) => learned.works().map(|encoding| encoding.method()),
            #[cfg(feature = "jwt-client-auth")]
            SecretMethod::Jwt => Some(ClientAuthMethod::ClientSecretJwt),
        }
    }

    /// Gets a token through `request`, which sends one token request with the client
    /// authentication it is given, using `secret`: the value THIS attempt read from the source
    /// (the request's redaction set is made from it too). `supported` is the server metadata's
    /// `token_endpoint_auth_methods_supported`, when known.
    pub(super) async fn fetch<F, Fut>(
        &self,
        secret: &SecretString,
        supported: Option<&[String]>,
        request: &mut F,
    ) -> Result<Token, Error>
    where
        F: FnMut(ClientAuth<'_>) -> Fut,
        Fut: Future<Output = Result<Token, Error>>,
    {
        let learned = match self {
            SecretMethod::Configured(encoding) => return request(encoding.with(secret)).await,
            #[cfg(feature = "jwt-client-auth")]
            SecretMethod::Jwt => {
                let key = crate::oauth::assertion::AssertionKey::ClientSecret(secret.clone());
                return request(ClientAuth::Assertion(&key)).await;
            }
            SecretMethod::Negotiated(learned) => learned,
        };
        let candidates = SecretEncoding::candidates(supported);
        let to_try: &[SecretEncoding] = match learned.get() {
            Learned::Works(encoding) => return request(encoding.with(secret)).await,
            Learned::Nothing => candidates,
            // Both were refused before: one request per fetch, alternating.
            Learned::AllRefusedTryNext(encoding) => std::slice::from_ref(
                candidates
                    .iter()
                    .find(|&&c| c == encoding)
                    .unwrap_or(&candidates[0]),
            ),
        };
        // The one that works is kept for the life of these credentials.
        let mut last = None;
        for &encoding in to_try {
            let method = encoding.method();
            match request(encoding.with(secret)).await {
                Ok(token) => {
                    learned.set(Learned::Works(encoding));
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
                    last = Some((encoding, error));
                }
                Err(error) => return Err(error),
            }
        }
        let Some((refused, error)) = last else {
            return Err(Error::config("no client authentication method to try"));
        };
        let next = candidates
            .iter()
            .copied()
            .find(|&c| c != refused)
            .unwrap_or(refused);
        if learned.get() == Learned::Nothing {
            tracing::debug!(
                "every client authentication method was refused; later attempts send one \
                 request each, alternating"
            );
        }
        learned.set(Learned::AllRefusedTryNext(next));
        Err(error)
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

impl Authentication {
    /// The `x5t#S256` of the certificate the crate's own client presents, which a
    /// certificate-bound token is bound to; `None` without one (no certificate, or one the
    /// caller's HTTP client presents, which the crate cannot see).
    pub(super) fn certificate_thumbprint(&self) -> Option<String> {
        match self {
            #[cfg(feature = "mtls")]
            Authentication::Certificate {
                presented_by: CertificateHolder::Identity(identity),
                ..
            } => Some(identity.thumbprint()),
            _ => None,
        }
    }

    /// Whether the token requests present a certificate the crate cannot see (the caller's
    /// HTTP client's): its tokens may be bound to it, so they cannot be shared by store key.
    #[cfg(feature = "store")]
    pub(super) fn certificate_unknown(&self) -> bool {
        matches!(
            self,
            Authentication::Certificate {
                presented_by: CertificateHolder::CallersHttpClient,
                ..
            }
        )
    }

    /// What presents the client certificate, for `Debug`.
    pub(super) fn certificate_holder(&self) -> Option<&CertificateHolder> {
        match self {
            Authentication::Certificate { presented_by, .. } => Some(presented_by),
            _ => None,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn negotiated() -> Authentication {
        Authentication::Secret {
            secret: ClientSecret::fixed(SecretString::from("secret")),
            method: SecretMethod::Negotiated(Negotiation::default()),
        }
    }

    /// One fetch as `Authentication::fetch` makes it, with the secret the source gives.
    async fn fetch<F, Fut>(auth: &Authentication, mut request: F) -> Result<Token, Error>
    where
        F: FnMut(ClientAuth<'_>) -> Fut,
        Fut: Future<Output = Result<Token, Error>>,
    {
        let Authentication::Secret { secret, method } = auth else {
            unreachable!("a secret is configured")
        };
        let secret = secret.source.secret().await?;
        method.fetch(&secret, None, &mut request).await
    }

    fn refused() -> Error {
        Error::new(ErrorKind::TokenEndpoint, "who are you")
            .with_status(http::StatusCode::UNAUTHORIZED)
    }

    /// Runs one fetch against a server that refuses every request, and returns the methods
    /// it saw.
    async fn fetch_refused(auth: &Authentication) -> Vec<SecretEncoding> {
        let seen = Mutex::new(Vec::new());
        let result = fetch(auth, |client_auth| {
            seen.lock().unwrap().push(match client_auth {
                ClientAuth::Basic(_) => SecretEncoding::Basic,
                ClientAuth::Post(_) => SecretEncoding::Post,
                #[cfg(feature = "jwt-client-auth")]
                ClientAuth::Assertion(_) => unreachable!(),
                ClientAuth::SignedAssertion(_) => unreachable!(),
                ClientAuth::Certificate => unreachable!(),
            });
            async { Err(refused()) }
        })
        .await;
        assert_eq!(
            result.unwrap_err().status(),
            Some(http::StatusCode::UNAUTHORIZED)
        );
        seen.into_inner().unwrap()
    }

    #[tokio::test]
    async fn once_both_methods_are_refused_each_attempt_sends_one_request() {
        use SecretEncoding::{Basic, Post};
        let auth = negotiated();
        assert_eq!(fetch_refused(&auth).await, [Basic, Post]);
        assert_eq!(fetch_refused(&auth).await, [Basic]);
        assert_eq!(fetch_refused(&auth).await, [Post]);
        assert_eq!(fetch_refused(&auth).await, [Basic]);
        assert_eq!(auth.method(), None);
        // A success is remembered, and ends the alternation.
        let token = fetch(&auth, |_| async { Token::bearer("t", None) }).await;
        assert!(token.is_ok());
        assert_eq!(auth.method(), Some(ClientAuthMethod::ClientSecretPost));
    }

    #[tokio::test]
    async fn a_new_secret_is_tried_with_every_method_again() {
        let auth = negotiated();
        assert_eq!(
            fetch_refused(&auth).await,
            [SecretEncoding::Basic, SecretEncoding::Post]
        );
        assert_eq!(fetch_refused(&auth).await.len(), 1, "refusals remembered");
        let Authentication::Secret { method, .. } = &auth else {
            unreachable!()
        };
        // What the rotation does before it tries a re-read secret.
        method.forget_refusals();
        assert_eq!(
            fetch_refused(&auth).await,
            [SecretEncoding::Basic, SecretEncoding::Post]
        );
    }
}
