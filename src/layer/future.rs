use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderMap, Response};
use pin_project_lite::pin_project;

use super::bind::Watch;
use crate::error::{BoxError, Error};

/// The response of a service under the layer, as the pipeline reads it: the headers, where a
/// proof's origin hands out its next `DPoP-Nonce` (RFC 9449 §8). Implemented for
/// [`http::Response`] (every HTTP client: hyper, tonic, axum) and `()`; implement it for
/// another response type to put the layer over a service that returns one.
///
/// ```
/// use http::HeaderMap;
/// use tower_client_credentials::layer::ResponseHeaders;
///
/// struct Reply { headers: HeaderMap, body: Vec<u8> }
///
/// impl ResponseHeaders for Reply {
///     fn response_headers(&self) -> Option<&HeaderMap> {
///         Some(&self.headers)
///     }
/// }
/// # let reply = Reply { headers: HeaderMap::new(), body: Vec::new() };
/// # assert!(reply.response_headers().is_some() && reply.body.is_empty());
/// ```
pub trait ResponseHeaders {
    /// The response's headers, if it has any.
    fn response_headers(&self) -> Option<&HeaderMap>;
}

impl<B> ResponseHeaders for Response<B> {
    #[inline]
    fn response_headers(&self) -> Option<&HeaderMap> {
        Some(self.headers())
    }
}

impl ResponseHeaders for () {
    #[inline]
    fn response_headers(&self) -> Option<&HeaderMap> {
        None
    }
}

/// The cold start of a request whose token was not cached yet: waits for it, binds it, and
/// calls the inner service, giving its future (and the proof's watch) back.
pub(crate) type Waiting<F> =
    Pin<Box<dyn Future<Output = Result<(F, Option<Watch>), Error>> + Send>>;

pin_project! {
    /// Response future of every service of the pipeline ([`BearerAuth`](super::BearerAuth),
    /// [`MultiAudience`](crate::audience::MultiAudience), with or without a DPoP key): the inner
    /// service's future (reading the response's `DPoP-Nonce` when the request carried a
    /// proof), a wait for the token before the inner call, or an immediate error.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] future: F, watch: Option<Watch> },
        Waiting { wait: Waiting<F> },
        Failed { error: Option<Error> },
    }
}

impl<F> ResponseFuture<F> {
    #[inline]
    pub(crate) fn new(future: F, watch: Option<Watch>) -> Self {
        ResponseFuture {
            kind: Kind::Inner { future, watch },
        }
    }

    pub(crate) fn waiting(wait: Waiting<F>) -> Self {
        ResponseFuture {
            kind: Kind::Waiting { wait },
        }
    }

    pub(crate) fn failed(error: Error) -> Self {
        ResponseFuture {
            kind: Kind::Failed { error: Some(error) },
        }
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<R, E>>,
    R: ResponseHeaders,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        // The inner future, every request's case, first and alone: the response moves straight
        // from the inner future to the caller (a loop over every state made copies of it).
        if let KindProj::Inner { future, watch } = kind.as_mut().project() {
            let polled = future.poll(cx);
            if let Some(watch) = watch {
                return observed(watch, polled);
            }
            // Moved straight on: a response whose address is never taken is not copied out to
            // the stack first (the bearer path).
            return polled.map_err(Into::into);
        }
        poll_not_sent(kind, cx)
    }
}

/// `polled`, after reading the response of a proven request (its `DPoP-Nonce`).
#[inline(never)]
fn observed<R, E>(watch: &Watch, polled: Poll<Result<R, E>>) -> Poll<Result<R, BoxError>>
where
    R: ResponseHeaders,
    E: Into<BoxError>,
{
    if let Poll::Ready(Ok(response)) = &polled {
        if let Some(headers) = response.response_headers() {
            watch.observe(headers);
        }
    }
    polled.map_err(Into::into)
}

/// [`ResponseFuture::poll`] before the inner call: waiting for the token, or failed.
#[cold]
#[inline(never)]
fn poll_not_sent<F, R, E>(
    mut kind: Pin<&mut Kind<F>>,
    cx: &mut Context<'_>,
) -> Poll<Result<R, BoxError>>
where
    F: Future<Output = Result<R, E>>,
    R: ResponseHeaders,
    E: Into<BoxError>,
{
    loop {
        match kind.as_mut().project() {
            KindProj::Inner { future, watch } => {
                let polled = future.poll(cx);
                return match watch {
                    Some(watch) => observed(watch, polled),
                    None => polled.map_err(Into::into),
                };
            }
            KindProj::Waiting { wait } => match ready!(wait.as_mut().poll(cx)) {
                Ok((future, watch)) => kind.set(Kind::Inner { future, watch }),
                Err(error) => kind.set(Kind::Failed { error: Some(error) }),
            },
            KindProj::Failed { error } => {
                return Poll::Ready(Err(Box::new(error.take().unwrap_or_else(|| {
                    Error::config("the response future was polled after it completed")
                }))))
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
