//! [`ResponseFuture`] of [`MultiAudience`](super::MultiAudience).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::error::{BoxError, Error, ErrorKind};

pin_project! {
    /// Response future of [`MultiAudience`](super::MultiAudience): the inner service's future
    /// (the set's token was fresh), a wait for the set's token and then the inner call, or an
    /// immediate error.
    pub struct ResponseFuture<F, R> {
        #[pin]
        kind: Kind<F, R>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, R> {
        Inner { #[pin] future: F },
        Waiting { future: Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>> },
        Failed { error: Option<Error> },
    }
}

impl<F, R> ResponseFuture<F, R> {
    pub(super) fn new(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Inner { future },
        }
    }

    pub(super) fn waiting(
        future: Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Waiting { future },
        }
    }

    pub(super) fn failed(error: Error) -> Self {
        ResponseFuture {
            kind: Kind::Failed { error: Some(error) },
        }
    }
}

impl<F, R, E> Future for ResponseFuture<F, R>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx).map_err(Into::into),
            KindProj::Waiting { future } => future.as_mut().poll(cx),
            KindProj::Failed { error } => {
                Poll::Ready(Err(Box::new(error.take().unwrap_or_else(|| {
                    Error::new(
                        ErrorKind::Configuration,
                        "the response future was polled after it completed",
                    )
                }))))
            }
        }
    }
}

impl<F, R> fmt::Debug for ResponseFuture<F, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
