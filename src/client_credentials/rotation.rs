//! A rotated secret without a restart: the secret is read from its [`SecretSource`] for every
//! token request, and when the server answers `invalid_client` it is read once more; a changed
//! value is tried at once, before the failure counts (the cache never sees it).
//!
//! This is what makes a rotation with overlapping secrets (Okta, Entra keep two active) cost no
//! failed request: the first token request after the file is replaced already sends the new
//! secret, and a source that caches is asked again (`reload`) when the old one is refused.

use std::future::Future;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use super::assertion_source::ClientAssertion;
use super::auth_method::{rejected_client_auth, Authentication};
use super::secret::SecretSource;
use crate::error::{Error, ErrorKind};
use crate::oauth::token_request::ClientAuth;
use crate::token::Token;

impl Authentication {
    /// Where the secret comes from; `None` without a secret (a private key, a signer, a
    /// certificate).
    pub(super) fn secret_source(&self) -> Option<&Arc<dyn SecretSource>> {
        match self {
            Authentication::Secret { secret, .. } => Some(&secret.source),
            _ => None,
        }
    }

    /// Where the client assertion comes from; `None` unless it is read from a source.
    pub(super) fn assertion_source(&self) -> Option<&ClientAssertion> {
        match self {
            Authentication::AssertionSource(assertion) => Some(assertion),
            _ => None,
        }
    }

    /// Gets a token through `request` (one token request with the client authentication it is
    /// given) with the current secret; after `invalid_client`, once more with a re-read secret
    /// if it changed. `supported`: the server metadata's `token_endpoint_auth_methods_supported`;
    /// `client_id` and `token_endpoint`: the claims of an assertion a `JwtSigner` signs.
    pub(super) async fn fetch<F, Fut>(
        &self,
        supported: Option<&[String]>,
        (client_id, token_endpoint): (&str, &http::Uri),
        mut request: F,
    ) -> Result<Token, Error>
    where
        F: FnMut(ClientAuth<'_>) -> Fut,
        Fut: Future<Output = Result<Token, Error>>,
    {
        let (source, method) = match self {
            Authentication::Secret { secret, method } => (&secret.source, method),
            #[cfg(feature = "jwt-client-auth")]
            Authentication::Assertion(key) => return request(ClientAuth::Assertion(key)).await,
            #[cfg(feature = "jwt-client-auth")]
            Authentication::Signer(signer) => {
                // RFC 7523 §3: `aud` is the token endpoint, exactly the URL the request goes to.
                let aud = token_endpoint.to_string();
                let sign = || super::signer::client_assertion(&**signer, client_id, &aud);
                let first = sign().await?;
                return with_new_assertion_on_nonce(&first, sign, &mut request).await;
            }
            Authentication::AssertionSource(assertion) => {
                return assertion.fetch(&mut request).await;
            }
            Authentication::Certificate { .. } => {
                return request(ClientAuth::Certificate).await;
            }
        };
        #[cfg(not(feature = "jwt-client-auth"))]
        let _ = (client_id, token_endpoint);
        // Every request of this attempt (and the redaction of its answers) uses this value.
        let secret = source.secret().await?;
        let error = match method.fetch(&secret, supported, &mut request).await {
            Err(error) if rejected_client_auth(&error) => error,
            done => return done,
        };
        let reloaded = match source.reload().await {
            Ok(reloaded) => reloaded,
            // The refusal is what the caller (and the backoff) must see, not the re-read's error.
            Err(reload_error) => {
                tracing::warn!(
                    source = ?source,
                    error = %reload_error,
                    "the client secret was refused, and reading it again failed"
                );
                return Err(error);
            }
        };
        if reloaded.expose_secret() == secret.expose_secret() {
            return Err(error);
        }
        drop(secret);
        tracing::info!(
            source = ?source,
            "the client secret was refused and has changed since it was read; trying the new one"
        );
        // The old secret's refusals say nothing about the new one: every method is tried again.
        method.forget_refusals();
        method.fetch(&reloaded, supported, &mut request).await
    }
}

impl ClientAssertion {
    /// Gets a token through `request` with the assertion the source gives now; after
    /// `invalid_client`, once more with a re-read assertion if it changed (the platform
    /// rotated the file between the read and the refusal).
    async fn fetch<F, Fut>(&self, request: &mut F) -> Result<Token, Error>
    where
        F: FnMut(ClientAuth<'_>) -> Fut,
        Fut: Future<Output = Result<Token, Error>>,
    {
        let assertion = self.read().await?;
        let error = match with_new_assertion_on_nonce(&assertion, || self.read(), request).await {
            Err(error) if rejected_client_auth(&error) => error,
            done => return done,
        };
        let reloaded = match self.reload().await {
            Ok(reloaded) => reloaded,
            // The refusal is what the caller (and the backoff) must see; the re-read's error
            // (an expired file, say) is logged, naming the source and never the assertion.
            Err(reload_error) => {
                tracing::warn!(
                    source = ?self,
                    error = %reload_error,
                    "the client assertion was refused, and reading it again failed"
                );
                return Err(error);
            }
        };
        if reloaded.expose_secret() == assertion.expose_secret() {
            return Err(error);
        }
        drop(assertion);
        tracing::info!(
            source = ?self,
            "the client assertion was refused and has changed since it was read; trying the new one"
        );
        with_new_assertion_on_nonce(&reloaded, || self.read(), request).await
    }
}

/// One token request with the client assertion `first`; when the server answers with a DPoP
/// nonce challenge, one more with an assertion from `next`. Never `first` again: a server that
/// authenticates the client before it checks the proof (oidc-provider, Okta) has used up its
/// `jti` and refuses it as a replay (RFC 7523 §3), which would make every nonce rotation a
/// permanent `invalid_client` (issue 19, defect 3).
async fn with_new_assertion_on_nonce<N, NFut, F, Fut>(
    first: &SecretString,
    mut next: N,
    request: &mut F,
) -> Result<Token, Error>
where
    N: FnMut() -> NFut,
    NFut: Future<Output = Result<SecretString, Error>>,
    F: FnMut(ClientAuth<'_>) -> Fut,
    Fut: Future<Output = Result<Token, Error>>,
{
    match request(ClientAuth::SignedAssertion(first)).await {
        Err(error) if is_dpop_nonce_challenge(&error) => {
            tracing::debug!(
                "token endpoint asked for a DPoP nonce; retrying once with it and a new client \
                 assertion"
            );
        }
        done => return done,
    }
    let assertion = next().await?;
    request(ClientAuth::SignedAssertion(&assertion)).await
}

/// RFC 9449 §8: the token endpoint's `use_dpop_nonce` error (the request recorded the nonce
/// that came with it). A server that asks without sending a nonce (which §8 requires it to)
/// costs one more request, no more: the retry is made once.
fn is_dpop_nonce_challenge(error: &Error) -> bool {
    error.kind() == ErrorKind::TokenEndpoint
        && error
            .oauth_error()
            .is_some_and(|oauth| oauth.error == "use_dpop_nonce")
}
