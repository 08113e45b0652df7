//! A rotated secret without a restart: the secret is read from its [`SecretSource`] for every
//! token request, and when the server answers `invalid_client` it is read once more; a changed
//! value is tried at once, before the failure counts (the cache never sees it).
//!
//! This is what makes a rotation with overlapping secrets (Okta, Entra keep two active) cost no
//! failed request: the first token request after the file is replaced already sends the new
//! secret, and a source that caches is asked again (`reload`) when the old one is refused.

use std::future::Future;
use std::sync::Arc;

use secrecy::ExposeSecret;

use super::auth_method::{rejected_client_auth, Authentication};
use super::secret::SecretSource;
use crate::error::Error;
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
                let assertion = super::signer::client_assertion(
                    &**signer,
                    client_id,
                    &token_endpoint.to_string(),
                )
                .await?;
                return request(ClientAuth::SignedAssertion(&assertion)).await;
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
