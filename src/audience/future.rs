//! [`ResponseFuture`] of [`MultiAudience`](super::MultiAudience).

/// Response future of [`MultiAudience`](super::MultiAudience): the pipeline's one
/// [`ResponseFuture`](crate::layer::ResponseFuture) (the inner service's future, a wait for
/// the set's token before the inner call, or an immediate error).
pub type ResponseFuture<F> = crate::layer::ResponseFuture<F>;
