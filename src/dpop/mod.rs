//! DPoP (RFC 9449): tokens bound to a key the client holds, so that a stolen token is useless
//! without the key (feature `dpop`).
//!
//! One [`DpopKey`] does both halves:
//!
//! * the token request carries a `DPoP` proof and the server binds the token it issues to the
//!   key (`token_type` `DPoP`, `cnf.jkt` in the token): set it with
//!   [`ClientCredentialsBuilder::dpop`](crate::ClientCredentialsBuilder::dpop);
//! * every API request carries `Authorization: DPoP <token>` and a fresh proof for its method
//!   and URI, bound to the token by `ath`: [`BearerAuthLayer::dpop`](crate::BearerAuthLayer::dpop)
//!   makes the [`DpopAuthLayer`].
//!
//! Server nonces (RFC 9449 §8, §9) are handled for you: the `DPoP-Nonce` of every response is
//! kept per origin and put in the next proof to that origin; a token endpoint's
//! `use_dpop_nonce` error is answered by one retry with the new nonce, and an API's
//! `WWW-Authenticate: DPoP error="use_dpop_nonce"` with a `DPoP-Nonce` by one retry through
//! [`BearerAuthLayer::retry_on_unauthorized`](crate::BearerAuthLayer::retry_on_unauthorized)
//! (any [`ReplayableBody`](crate::retry::ReplayableBody)). A layer without the retry does not
//! retry: the challenge reaches the caller and the next request to that origin carries the
//! nonce; see [its docs](DpopAuthLayer#nonce-challenges-from-the-api). Several APIs get proofs
//! the same way: [`MultiAudienceLayerBuilder::dpop`](crate::audience::MultiAudienceLayerBuilder::dpop).
//!
//! Keys, proofs and nonces never appear in errors, `Debug` or logs.
//!
//! # Example
//!
//! ```no_run
//! use tower::ServiceBuilder;
//! use tower_client_credentials::dpop::DpopKey;
//! use tower_client_credentials::{BearerAuthLayer, ClientCredentials};
//! # use http_body_util::Full; use bytes::Bytes;
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # let hyper_client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
//! #     .build_http::<Full<Bytes>>();
//! let key = DpopKey::generate()?; // ES256; or DpopKey::from_pem(DpopAlgorithm::ES256, pem)?
//! let credentials = ClientCredentials::builder()
//!     .issuer("https://idp.example/oauth2/default")?
//!     .client_id("my-client-id")
//!     .client_secret("my-client-secret")
//!     .dpop(key.clone())
//!     .build()?;
//!
//! let client = ServiceBuilder::new()
//!     .layer(BearerAuthLayer::new(credentials).dpop(key).retry_on_unauthorized())
//!     .service(hyper_client);
//! # let _ = client;
//! # Ok(())
//! # }
//! ```

mod key;
mod nonce;
mod service;
#[cfg(any(test, feature = "test-util"))]
pub(crate) mod verify;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;

pub use self::key::{DpopAlgorithm, DpopKey};
pub(crate) use self::nonce::valid_nonce;
pub use self::service::{DpopAuthLayer, DpopProof, DpopResponseFuture, DpopRetryLayer};
pub(crate) use self::service::{NonceWatch, ProofStage};

use crate::error::Error;

/// Whether an API response is a DPoP nonce challenge (RFC 9449 §9): 401 with
/// `WWW-Authenticate: DPoP ... error="use_dpop_nonce"`. The retry layer sends such a request once
/// more, with the nonce the response carried, and leaves the token alone.
pub fn is_nonce_challenge(status: StatusCode, headers: &HeaderMap) -> bool {
    crate::http::challenge::is_dpop_nonce_challenge(status, headers)
}

/// Adds a proof (no `ath`) to a token request.
pub(crate) fn sign_token_request(
    key: &DpopKey,
    request: &mut Request<Full<Bytes>>,
) -> Result<(), Error> {
    let proof = key.proof(&Method::POST, request.uri(), None)?;
    request.headers_mut().insert(service::DPOP.clone(), proof);
    Ok(())
}

/// Keeps the token endpoint's `DPoP-Nonce`, and says whether the response is a
/// `use_dpop_nonce` error (RFC 9449 §8) that a retry with the new nonce answers.
pub(crate) fn is_token_nonce_challenge(
    key: &DpopKey,
    endpoint: &Uri,
    response: &Response<Bytes>,
) -> bool {
    let (Some(scheme), Some(authority)) = (endpoint.scheme_str(), endpoint.authority()) else {
        return false;
    };
    let has_nonce = key
        .nonces()
        .update_from(scheme, authority.as_str(), response.headers());
    #[derive(serde::Deserialize)]
    struct ErrorCode<'a> {
        error: &'a str,
    }
    has_nonce
        && response.status().is_client_error()
        && serde_json::from_slice::<ErrorCode<'_>>(response.body())
            .is_ok_and(|body| body.error == "use_dpop_nonce")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::WWW_AUTHENTICATE;

    #[test]
    fn nonce_challenges_are_recognised() {
        let mut headers = HeaderMap::new();
        headers.insert(
            WWW_AUTHENTICATE,
            r#"DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof""#
                .parse()
                .unwrap(),
        );
        assert!(is_nonce_challenge(StatusCode::UNAUTHORIZED, &headers));
        assert!(!is_nonce_challenge(StatusCode::FORBIDDEN, &headers));
        headers.insert(
            WWW_AUTHENTICATE,
            r#"Bearer error="invalid_token""#.parse().unwrap(),
        );
        assert!(!is_nonce_challenge(StatusCode::UNAUTHORIZED, &headers));
    }

    #[test]
    fn token_endpoint_nonce_error_is_a_challenge_only_with_a_nonce() {
        let key = DpopKey::generate().unwrap();
        let endpoint: Uri = "https://as.example/token".parse().unwrap();
        let response = |nonce: Option<&str>, body: &str| {
            let mut builder = Response::builder().status(400);
            if let Some(nonce) = nonce {
                builder = builder.header("dpop-nonce", nonce);
            }
            builder.body(Bytes::from(body.to_string())).unwrap()
        };
        let challenge = r#"{"error":"use_dpop_nonce","error_description":"nonce required"}"#;
        assert!(!is_token_nonce_challenge(
            &key,
            &endpoint,
            &response(None, challenge)
        ));
        assert!(is_token_nonce_challenge(
            &key,
            &endpoint,
            &response(Some("n-1"), challenge)
        ));
        assert_eq!(
            key.nonces().get("https", "as.example").as_deref(),
            Some("n-1")
        );
        let other = r#"{"error":"invalid_client"}"#;
        assert!(!is_token_nonce_challenge(
            &key,
            &endpoint,
            &response(Some("n-2"), other)
        ));
        assert_eq!(
            key.nonces().get("https", "as.example").as_deref(),
            Some("n-2")
        );
    }
}
