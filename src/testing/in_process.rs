//! [`InProcessClient`]: the loopback server's logic without its socket.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use http_body::Body;

use super::response::Reply;
use super::router::route;
use super::state::State;

/// A tower service that hands requests to an [`AuthServer`](super::AuthServer) in-process; see
/// [`AuthServer::in_process_client`](super::AuthServer::in_process_client).
#[derive(Clone)]
pub struct InProcessClient {
    pub(super) state: Arc<State>,
}

impl<B> tower_service::Service<Request<B>> for InProcessClient
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<crate::BoxError>,
{
    type Response = Reply;
    type Error = Infallible;
    type Future = crate::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move { Ok(route(state, request).await) })
    }
}

impl fmt::Debug for InProcessClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessClient").finish_non_exhaustive()
    }
}
