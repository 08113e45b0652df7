//! [`ServerTls`]: TLS for the loopback servers (feature `mtls`), with optional client
//! certificates, so that tests can authenticate clients with `tls_client_auth` and check
//! certificate-bound tokens (RFC 8705).

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

/// The certificate a loopback server presents and the CA whose client certificates it accepts.
/// A client certificate is optional: a connection without one is served, and the endpoints
/// decide (the token endpoint then wants another client authentication, the API refuses
/// certificate-bound tokens).
///
/// # Example
///
/// ```
/// use tower_client_credentials::testing::{AuthServer, ServerTls};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let tls = ServerTls::from_pem(
///     include_bytes!("../../tests/mtls/server.pem"),
///     include_bytes!("../../tests/mtls/server-key.pem"),
///     include_bytes!("../../tests/mtls/ca.pem"),
/// )?;
/// let server = AuthServer::builder().tls(tls).start().await?;
/// assert!(server.token_endpoint().starts_with("https://127.0.0.1:"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ServerTls {
    pub(super) acceptor: super::listener::Tls,
}

impl ServerTls {
    /// The server's certificate chain (leaf first) and key, and the CA certificates that
    /// client certificates must chain to, all PEM.
    pub fn from_pem(
        cert_chain_pem: &[u8],
        key_pem: &[u8],
        client_ca_pem: &[u8],
    ) -> Result<Self, Error> {
        let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Error::config("the server certificate chain is not valid PEM"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|_| Error::config("the server key is not a PEM private key"))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(client_ca_pem) {
            let ca = ca.map_err(|_| Error::config("the client CA is not valid PEM"))?;
            roots
                .add(ca)
                .map_err(|e| Error::config(format!("the client CA was refused by rustls: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::config(format!("the client CA cannot verify clients: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config(format!("TLS could not be set up: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| Error::config(format!("the server certificate was refused: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            acceptor: super::listener::Tls(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        })
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}
