//! Stage 6 of the request pipeline (see `ARCHITECTURE.md`): judge a response to an
//! authenticated request, and say whether one more attempt can succeed. Written once, for the
//! tower retry service over any authenticating service and for the reqwest middleware.

use std::sync::{Arc, OnceLock};

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use http::{Request, StatusCode};
use tower_service::Service;

use crate::cache::TokenCache;
use crate::error::BoxError;

/// What an authenticated request carried: the token (as its `Authorization` value), the cache
/// it came from, and whether a DPoP proof went with it.
#[derive(Clone)]
#[doc(hidden)]
pub struct Sent {
    pub(crate) cache: TokenCache,
    pub(crate) header: HeaderValue,
    pub(crate) proof: bool,
}

impl Sent {
    /// What `headers` (an authenticated request's) carry.
    pub(crate) fn of(cache: &TokenCache, headers: &HeaderMap, proof: bool) -> Option<Sent> {
        Some(Sent {
            cache: cache.clone(),
            header: headers.get(AUTHORIZATION)?.clone(),
            proof,
        })
    }
}

/// What was sent, known when the request was handed on, or once a wait for its token ends.
#[doc(hidden)]
pub enum Report {
    /// Nothing was sent (the request failed before the inner service).
    None,
    Now(Sent),
    /// The request waits for its token; the wait fills this in before sending.
    Later(Arc<OnceLock<Sent>>),
}

impl Report {
    pub(crate) fn get(&self) -> Option<&Sent> {
        match self {
            Report::None => None,
            Report::Now(sent) => Some(sent),
            Report::Later(slot) => slot.get(),
        }
    }
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is not shown.
        f.debug_struct("Sent")
            .field("proof", &self.proof)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Report").field(&self.get()).finish()
    }
}

impl From<Option<Sent>> for Report {
    fn from(sent: Option<Sent>) -> Self {
        sent.map_or(Report::None, Report::Now)
    }
}

/// What to do with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand it to the caller.
    Return,
    /// A DPoP nonce challenge that brought its nonce (stored by the bind stage's watch): send
    /// the request once more, same token, new proof.
    Resend,
    /// The token was rejected and a newer one is (or will be) cached: send once more with it.
    Refresh,
}

/// Judges `status` and `headers` of the response to a request that carried `sent`; on a
/// rejected token, invalidates it (rate-limited by the cache).
pub(crate) fn judge(
    sent: &Sent,
    status: StatusCode,
    headers: &HeaderMap,
    rejected: &dyn Fn(StatusCode, &HeaderMap) -> bool,
) -> Verdict {
    // RFC 9449 §9: a DPoP nonce challenge. The token is fine; the proof lacked the nonce the
    // response carries. Without a proof sent, or without a nonce given, a second attempt would
    // be refused the same way: the body is not sent again for it.
    if cfg!(feature = "dpop") && crate::http::challenge::is_dpop_nonce_challenge(status, headers) {
        return if sent.proof && carries_nonce(headers) {
            Verdict::Resend
        } else {
            Verdict::Return
        };
    }
    if !rejected(status, headers) {
        return Verdict::Return;
    }
    let invalidated = sent.cache.invalidate_header(&sent.header);
    let newer = sent.cache.cached_header().as_ref() != Some(&sent.header);
    if invalidated || newer {
        Verdict::Refresh
    } else {
        // Rate-limited and no newer token: the rejection goes back to the caller.
        Verdict::Return
    }
}

fn carries_nonce(headers: &HeaderMap) -> bool {
    #[cfg(feature = "dpop")]
    return crate::dpop::valid_nonce(headers).is_some();
    #[cfg(not(feature = "dpop"))]
    {
        let _ = headers;
        false
    }
}

pub(crate) mod sealed {
    use super::*;

    /// A service of the pipeline that the retry stage can wrap: it authenticates requests and
    /// reports what it sent. Implemented by [`BearerAuth`](crate::BearerAuth) and
    /// [`MultiAudience`](crate::audience::MultiAudience); not for other types.
    pub trait Authenticate<B>: Service<Request<B>, Error = BoxError> + Clone {
        /// Like `call`, and also reports what was sent.
        #[doc(hidden)]
        fn call_reporting(&mut self, request: Request<B>) -> (Self::Future, Report);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::header::WWW_AUTHENTICATE;

    use super::*;
    use crate::{BoxFuture, Error, Token, TokenSource};

    struct Static;

    impl TokenSource for Static {
        fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
            Box::pin(async { Token::dpop("t0k3n", Some(Duration::from_secs(60))) })
        }
    }

    fn sent(proof: bool) -> Sent {
        Sent {
            cache: TokenCache::new(Static),
            header: HeaderValue::from_static("DPoP t0k3n"),
            proof,
        }
    }

    #[cfg_attr(not(feature = "dpop"), allow(dead_code))]
    fn challenge(nonce: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"DPoP error="use_dpop_nonce""#),
        );
        if let Some(nonce) = nonce {
            headers.insert("dpop-nonce", nonce.parse().unwrap());
        }
        headers
    }

    #[test]
    #[cfg(feature = "dpop")]
    fn a_nonce_challenge_is_resent_only_with_a_proof_and_a_nonce() {
        let always = |_: StatusCode, _: &HeaderMap| true;
        let status = StatusCode::UNAUTHORIZED;
        let verdict = |proof, nonce| judge(&sent(proof), status, &challenge(nonce), &always);
        assert_eq!(verdict(true, Some("n-1")), Verdict::Resend);
        // Defect 19.7: no nonce to put in the next proof, so no second attempt.
        assert_eq!(verdict(true, None), Verdict::Return);
        assert_eq!(verdict(true, Some("bad nonce")), Verdict::Return);
        // No proof was sent: a nonce cannot help.
        assert_eq!(verdict(false, Some("n-1")), Verdict::Return);
    }

    #[test]
    fn a_response_the_predicate_does_not_reject_is_returned() {
        let never = |_: StatusCode, _: &HeaderMap| false;
        let headers = HeaderMap::new();
        let verdict = judge(&sent(false), StatusCode::UNAUTHORIZED, &headers, &never);
        assert_eq!(verdict, Verdict::Return);
    }
}
