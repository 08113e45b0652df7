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
    //
    // Not an enum of the three cases: with the enum (and with the cases as plain fields beside
    // the inner future), every bearer request paid for the dispatch and the drop of the cases it
    // never has: `benches/hot_path.rs` 1.065-1.087 against 1.032-1.072 for this shape,
    // alternated on a quiet machine (`benches/RESULTS.md`). The cold cases are boxed: a DPoP
    // request allocates its proof anyway, and the others have not been sent.
    pub struct ResponseFuture<F> {
        // The inner service's future, once the request is sent (the fresh path: at once).
        #[pin]
        future: Option<F>,
        // Anything else: the proof's watch, the wait for the token, the error. One pointer, so
        // the fresh path checks and drops one word.
        cold: Option<Box<Cold<F>>>,
    }
}

/// The cases of a [`ResponseFuture`] that are not a bearer request already sent.
struct Cold<F> {
    watch: Option<Watch>,
    not_sent: NotSent<F>,
}

/// [`ResponseFuture`] before the inner call (its cold cases).
enum NotSent<F> {
    /// Sent, or being sent: `future` is set.
    Sent,
    Waiting(Waiting<F>),
    /// `None` once handed out.
    Failed(Option<Error>),
}

impl<F> ResponseFuture<F> {
    #[inline]
    pub(crate) fn new(future: F, watch: Option<Watch>) -> Self {
        ResponseFuture {
            future: Some(future),
            cold: watch.map(|watch| {
                Box::new(Cold {
                    watch: Some(watch),
                    not_sent: NotSent::Sent,
                })
            }),
        }
    }

    pub(crate) fn waiting(wait: Waiting<F>) -> Self {
        ResponseFuture {
            future: None,
            cold: Some(Box::new(Cold {
                watch: None,
                not_sent: NotSent::Waiting(wait),
            })),
        }
    }

    pub(crate) fn failed(error: Error) -> Self {
        ResponseFuture {
            future: None,
            cold: Some(Box::new(Cold {
                watch: None,
                not_sent: NotSent::Failed(Some(error)),
            })),
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
        let this = self.project();
        match this.cold {
            // Every bearer request: the response moves straight from the inner future to the
            // caller.
            None => match this.future.as_pin_mut() {
                Some(future) => future.poll(cx).map_err(Into::into),
                None => Poll::Ready(Err(Box::new(polled_after_completion()))),
            },
            Some(cold) => poll_cold(this.future, cold, cx),
        }
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

/// [`ResponseFuture::poll`] off the bearer path: waiting for the token, failed, or proven.
#[cold]
#[inline(never)]
fn poll_cold<F, R, E>(
    mut future: Pin<&mut Option<F>>,
    cold: &mut Cold<F>,
    cx: &mut Context<'_>,
) -> Poll<Result<R, BoxError>>
where
    F: Future<Output = Result<R, E>>,
    R: ResponseHeaders,
    E: Into<BoxError>,
{
    match &mut cold.not_sent {
        NotSent::Waiting(wait) => match ready!(wait.as_mut().poll(cx)) {
            Ok((inner, watch)) => {
                cold.not_sent = NotSent::Sent;
                cold.watch = watch;
                future.set(Some(inner));
            }
            Err(error) => {
                cold.not_sent = NotSent::Failed(None);
                return Poll::Ready(Err(Box::new(error)));
            }
        },
        NotSent::Failed(error) => {
            let error = error.take().unwrap_or_else(polled_after_completion);
            return Poll::Ready(Err(Box::new(error)));
        }
        NotSent::Sent => {}
    }
    let Some(inner) = future.as_pin_mut() else {
        // Sent, yet no inner future: only a future made by none of the constructors.
        return Poll::Ready(Err(Box::new(polled_after_completion())));
    };
    let polled = inner.poll(cx);
    match &cold.watch {
        Some(watch) => observed(watch, polled),
        None => polled.map_err(Into::into),
    }
}

fn polled_after_completion() -> Error {
    Error::config("the response future was polled after it completed")
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
