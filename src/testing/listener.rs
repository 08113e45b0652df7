//! The accept loop both loopback servers run, over plain TCP or (feature `mtls`) TLS with an
//! optional client certificate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::response::Reply;

/// Answers one request with the server's shared state.
pub(super) type Handler<T> = fn(Arc<T>, Request<Incoming>) -> crate::BoxFuture<'static, Reply>;

/// What the connection a request came on told the server, put in the request's extensions by
/// the TLS accept loop (a request without it came over plain TCP, or in-process).
#[derive(Debug, Clone, Default)]
pub(super) struct Connection {
    /// The base64url SHA-256 of the client certificate the TLS handshake presented (the
    /// `x5t#S256` of RFC 8705 §3.1), if one was.
    pub(super) certificate_thumbprint: Option<String>,
}

impl Connection {
    /// The client certificate's thumbprint, if the request came over TLS with one.
    pub(super) fn certificate_of<B>(request: &Request<B>) -> Option<String> {
        request
            .extensions()
            .get::<Connection>()
            .and_then(|c| c.certificate_thumbprint.clone())
    }
}

/// Serves `handler` on `127.0.0.1:0` with HTTP/1.1 and HTTP/2; every connection ends with the
/// task. With `tls`, every connection is a TLS one first.
pub(super) async fn serve<T: Send + Sync + 'static>(
    state: Arc<T>,
    handler: Handler<T>,
    tls: Option<Tls>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            let tls = tls.clone();
            connections.spawn(async move {
                match tls {
                    None => serve_connection(stream, state, handler, None).await,
                    #[cfg(feature = "mtls")]
                    Some(tls) => {
                        // A failed handshake (no trusted certificate, a client that gave up)
                        // ends this connection only.
                        let Ok(Ok(stream)) =
                            tokio::time::timeout(Duration::from_secs(10), tls.0.accept(stream))
                                .await
                        else {
                            return;
                        };
                        let certificate_thumbprint = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map(|leaf| thumbprint(leaf.as_ref()));
                        let connection = Connection {
                            certificate_thumbprint,
                        };
                        serve_connection(stream, state, handler, Some(connection)).await
                    }
                    #[cfg(not(feature = "mtls"))]
                    Some(never) => match never {},
                }
            });
            // Reap finished connections so the set does not grow without bound.
            while connections.try_join_next().is_some() {}
        }
    });
    Ok((addr, task))
}

async fn serve_connection<T, I>(
    stream: I,
    state: Arc<T>,
    handler: Handler<T>,
    connection: Option<Connection>,
) where
    T: Send + Sync + 'static,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let state = state.clone();
        if let Some(connection) = &connection {
            request.extensions_mut().insert(connection.clone());
        }
        async move { Ok::<_, Infallible>(handler(state, request).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The TLS acceptor of a server (feature `mtls`); without the feature, no server has one.
#[cfg(feature = "mtls")]
#[derive(Clone)]
pub(super) struct Tls(pub(super) tokio_rustls::TlsAcceptor);

#[cfg(feature = "mtls")]
impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

/// Without the feature `mtls` no server speaks TLS.
#[cfg(not(feature = "mtls"))]
#[derive(Clone, Debug)]
pub(super) enum Tls {}

/// RFC 8705 §3.1: base64url (no padding) of the SHA-256 of the certificate's DER.
#[cfg(feature = "mtls")]
fn thumbprint(der: &[u8]) -> String {
    use base64::Engine as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}
