use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::BoxError;
use crate::source::BoxFuture;

/// Response future of [`RetryUnauthorized`](super::RetryUnauthorized): the first attempt and,
/// after a rejected token, the one retry.
pub struct ResponseFuture<R> {
    // Boxed: the retry awaits the cache and a second call of the inner service, a state machine
    // whose size depends on the inner future; the retry layer is opt-in and off the hot path.
    inner: BoxFuture<'static, Result<R, BoxError>>,
}

impl<R> ResponseFuture<R> {
    pub(super) fn new(inner: impl Future<Output = Result<R, BoxError>> + Send + 'static) -> Self {
        ResponseFuture {
            inner: Box::pin(inner),
        }
    }
}

impl<R> Future for ResponseFuture<R> {
    type Output = Result<R, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<R> fmt::Debug for ResponseFuture<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
