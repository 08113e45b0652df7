//! Stage 3 of the request pipeline (see `ARCHITECTURE.md`): bind the token to the request. A
//! DPoP-bound token gets a fresh proof for the request's method and URI (RFC 9449 §7.1); a
//! bearer token passes unchanged. Written once, for [`BearerAuth`](super::BearerAuth),
//! [`MultiAudience`](crate::audience::MultiAudience) and the reqwest middleware.
//!
//! The stage also refuses what cannot work: a DPoP-bound token through a layer that has no key
//! to prove it with, or one bound to another key than the layer's.

use std::fmt;

use http::{HeaderMap, Method, Uri};

use crate::error::Error;
use crate::token::Token;

/// How a layer binds tokens to requests: with a DPoP key (and, for requests that carry only a
/// path, the origin to put in `htu`), or not at all. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Binding {
    #[cfg(feature = "dpop")]
    pub(crate) dpop: Option<crate::dpop::ProofStage>,
}

/// What the response of a proven request is read for afterwards: the `DPoP-Nonce` its origin
/// hands out, kept for the next proof to that origin. Without the feature `dpop`, never made.
pub(crate) struct Watch {
    /// Boxed: an `Option<Watch>` travels through the service's and the wait's code on every
    /// request, bearer ones included, and a pointer keeps it to one word (the proof itself
    /// allocates anyway).
    #[cfg(feature = "dpop")]
    inner: Box<crate::dpop::NonceWatch>,
    #[cfg(not(feature = "dpop"))]
    _never: std::convert::Infallible,
}

impl Watch {
    /// Reads the response's headers (keeps its `DPoP-Nonce`).
    #[inline]
    pub(crate) fn observe(&self, headers: &HeaderMap) {
        #[cfg(feature = "dpop")]
        self.inner.observe(headers);
        #[cfg(not(feature = "dpop"))]
        {
            let _ = headers;
            match self._never {}
        }
    }
}

impl Binding {
    /// Whether `token` needs a proof from this stage: `false` for a bearer token, `true` for a
    /// DPoP-bound one this layer can prove; an error for a DPoP-bound token the layer cannot
    /// prove (no key, or the token is bound to another key).
    #[inline]
    pub(crate) fn needs_proof(&self, token: &Token) -> Result<bool, Error> {
        if !token.is_dpop() {
            return Ok(false);
        }
        #[cfg(feature = "dpop")]
        if let Some(stage) = &self.dpop {
            stage.check(token)?;
            return Ok(true);
        }
        Err(Error::config(
            "the token is DPoP-bound (token_type DPoP) and this layer has no DPoP key to prove \
             it with, so every request would be refused by the API; add `.dpop(key)` to the \
             layer (BearerAuthLayer, MultiAudienceLayer builder) with the key given to \
             `ClientCredentialsBuilder::dpop` (feature `dpop`), and make a reqwest middleware \
             from that layer (`BearerAuthMiddleware::dpop`); the request was not sent",
        ))
    }

    /// Adds the proof for a request of `method` to `uri` carrying `token` (which
    /// [`needs_proof`](Self::needs_proof) said needs one).
    pub(crate) fn prove(
        &self,
        token: &Token,
        method: &Method,
        uri: &Uri,
        headers: &mut HeaderMap,
    ) -> Result<Watch, Error> {
        #[cfg(feature = "dpop")]
        if let Some(stage) = &self.dpop {
            return stage.prove(token, method, uri, headers).map(|inner| Watch {
                inner: Box::new(inner),
            });
        }
        let _ = (token, method, uri, headers);
        Err(Error::config(
            "a DPoP proof was needed without a DPoP key (a bug: please report it)",
        ))
    }

    /// [`prove`](Self::prove) with the URI in parts (the reqwest middleware has a `Url`).
    #[cfg(feature = "reqwest")]
    pub(crate) fn prove_parts(
        &self,
        token: &Token,
        method: &Method,
        (scheme, authority, path): (&str, &str, &str),
        headers: &mut HeaderMap,
    ) -> Result<Watch, Error> {
        #[cfg(feature = "dpop")]
        if let Some(stage) = &self.dpop {
            return stage
                .prove_parts(token, method, (scheme, authority, path), headers)
                .map(|inner| Watch {
                    inner: Box::new(inner),
                });
        }
        let _ = (token, method, scheme, authority, path, headers);
        Err(Error::config(
            "a DPoP proof was needed without a DPoP key (a bug: please report it)",
        ))
    }

    /// The thumbprint of the layer's DPoP key, if it has one.
    pub(crate) fn dpop_thumbprint(&self) -> Option<&str> {
        #[cfg(feature = "dpop")]
        if let Some(stage) = &self.dpop {
            return stage.key.as_ref().map(|key| key.thumbprint());
        }
        None
    }
}

impl fmt::Debug for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dpop_thumbprint() {
            Some(jkt) => write!(f, "DPoP(jkt {jkt})"),
            None => f.write_str("none"),
        }
    }
}

/// The configuration check both layers run where the credentials are known: the DPoP key of
/// the credentials (`source_jkt`, the thumbprint of the key given to
/// `ClientCredentialsBuilder::dpop`) and the layer's must be one key, or the tokens cannot be
/// proven (RFC 9449 §6: a token is bound to the thumbprint it was issued for).
pub(crate) fn check_keys(
    layer: &str,
    source_jkt: Option<&str>,
    layer_jkt: Option<&str>,
) -> Result<(), Error> {
    match (source_jkt, layer_jkt) {
        (None, None) => Ok(()),
        (Some(source), Some(own)) if source == own => Ok(()),
        (Some(_), Some(_)) => Err(Error::config(format!(
            "the DPoP key given to the `{layer}` with `.dpop(key)` is not the one given to \
             `ClientCredentialsBuilder::dpop` (their RFC 7638 thumbprints differ), so every \
             token would be bound to a key the layer cannot prove; give both the same `DpopKey` \
             (a clone, or one PEM loaded once)"
        ))),
        (Some(_), None) => Err(Error::config(format!(
            "the credentials have a DPoP key (`ClientCredentialsBuilder::dpop`), so their \
             tokens are DPoP-bound, but the `{layer}` has no DPoP proof stage; add `.dpop(key)` to \
             it with the same key"
        ))),
        (None, Some(_)) => Err(Error::config(format!(
            "the `{layer}` has a DPoP key (`.dpop(key)`) but the credentials have none, so the \
             authorization server issues Bearer tokens and no proof would ever be sent; give \
             the same key to `ClientCredentialsBuilder::dpop`, or drop `.dpop(key)`"
        ))),
    }
}

#[cfg(feature = "dpop")]
/// Refuses a DPoP-bound token bound to another key than `jkt` (the layer's): the API would
/// refuse every proof for it.
pub(crate) fn check_token_binding(token: &Token, jkt: &str) -> Result<(), Error> {
    match token.dpop_thumbprint() {
        Some(bound) if bound != jkt => Err(Error::config(
            "the token is bound to another DPoP key than the layer's (RFC 7638 thumbprints \
             differ), so the API would refuse every proof for it; give the layer's `.dpop(key)` \
             the key given to `ClientCredentialsBuilder::dpop` (one `DpopKey`, or one PEM); the \
             request was not sent",
        )),
        // Bound to this key, or a token whose source did not say (a custom `TokenSource`).
        _ => Ok(()),
    }
}
