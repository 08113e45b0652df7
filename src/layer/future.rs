use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::error::{BoxError, Error};

pin_project! {
    /// Response future of [`BearerAuth`](super::BearerAuth): the inner service's future, or an
    /// immediate token error.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] future: F },
        Failed { error: Option<Error> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Inner { future },
        }
    }

    pub(crate) fn failed(error: Error) -> Self {
        ResponseFuture {
            kind: Kind::Failed { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx).map_err(Into::into),
            KindProj::Failed { error } => match error.take() {
                Some(error) => Poll::Ready(Err(Box::new(error))),
                None => Poll::Ready(Err(Box::new(Error::new(
                    crate::ErrorKind::Configuration,
                    "the response future was polled after it completed",
                )))),
            },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
