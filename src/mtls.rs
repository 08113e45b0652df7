//! Mutual TLS (RFC 8705, feature `mtls`): a client certificate for the token endpoint
//! (`tls_client_auth`, `self_signed_tls_client_auth`), and the same identity for the API
//! client, so that certificate-bound tokens (`cnf.x5t#S256`) are accepted there.
//!
//! # Example
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::ServiceBuilder;
//! use tower_client_credentials::mtls::ClientIdentity;
//! use tower_client_credentials::{BearerAuthLayer, ClientCredentials};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let identity = ClientIdentity::from_pem(
//!     &std::fs::read("client-chain.pem")?,
//!     &std::fs::read("client-key.pem")?,
//! )?;
//! let credentials = ClientCredentials::builder()
//!     .issuer("https://idp.example")?
//!     .client_id("my-client")
//!     .tls_client_auth(identity.clone()) // or .self_signed_tls_client_auth(..)
//!     .build()?;
//! // The API sees the same certificate: the one line.
//! let api_client = identity.hyper_client::<Full<Bytes>>()?;
//! let client = ServiceBuilder::new()
//!     .layer(BearerAuthLayer::new(credentials))
//!     .service(api_client);
//! # let _ = client;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

/// A client certificate chain and its private key (PEM), with optional extra trust anchors for
/// the servers (a private CA). Cheap to clone; `Debug` shows the leaf's thumbprint only, and
/// its own copy of the key is zeroized on drop (copies rustls makes for a connection are rustls').
#[derive(Clone)]
pub struct ClientIdentity {
    inner: Arc<Inner>,
}

struct Inner {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    extra_roots: Vec<CertificateDer<'static>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // What the type's docs promise: the key's bytes do not outlive the identity. (Copies
        // handed to rustls for a connection are rustls' to wipe.)
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl ClientIdentity {
    /// The certificate chain (leaf first) and the private key (PKCS#8, PKCS#1 or SEC1), in PEM.
    /// Checked here: a key that does not fit the leaf certificate is an error.
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Error::config("the client certificate chain is not valid PEM"))?;
        if chain.is_empty() {
            return Err(Error::config(
                "no certificate in the client certificate PEM; expected \
                 `-----BEGIN CERTIFICATE-----`",
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
            Error::config("the client key is not a PEM private key (PKCS#8, PKCS#1 or SEC1)")
        })?;
        let identity = ClientIdentity {
            inner: Arc::new(Inner {
                chain,
                key,
                extra_roots: Vec::new(),
            }),
        };
        identity.rustls_config()?;
        Ok(identity)
    }

    /// Also trusts the CA certificates in `pem` (besides the webpki roots) for the servers this
    /// identity talks to: a private CA, or a test one.
    pub fn with_root_certificates_pem(self, pem: &[u8]) -> Result<Self, Error> {
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Error::config("the root certificates are not valid PEM"))?;
        if roots.is_empty() {
            return Err(Error::config("no certificate in the root certificate PEM"));
        }
        let inner = &*self.inner;
        let identity = ClientIdentity {
            inner: Arc::new(Inner {
                chain: inner.chain.clone(),
                key: inner.key.clone_key(),
                extra_roots: inner.extra_roots.iter().cloned().chain(roots).collect(),
            }),
        };
        identity.rustls_config()?;
        Ok(identity)
    }

    /// The base64url SHA-256 thumbprint of the leaf certificate: the `x5t#S256` a
    /// certificate-bound token carries in its `cnf` claim (RFC 8705 §3.1).
    pub fn thumbprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.inner.chain[0]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
    }

    /// A rustls client configuration presenting this identity, trusting the webpki roots and
    /// the extra roots.
    pub fn rustls_config(&self) -> Result<rustls::ClientConfig, Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for root in &self.inner.extra_roots {
            roots.add(root.clone()).map_err(|e| {
                Error::config(format!("a root certificate was refused by rustls: {e}"))
            })?;
        }
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("TLS could not be set up: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(self.inner.chain.clone(), self.inner.key.clone_key())
        .map_err(|e| {
            Error::config(format!(
                "the client certificate and key were refused ({e}); check that the key belongs \
                 to the first certificate of the chain"
            ))
        })
    }

    /// An HTTPS connector (HTTP/1.1 and HTTP/2; plain `http` URLs allowed) presenting this
    /// identity.
    pub fn https_connector(&self) -> Result<HttpsConnector<HttpConnector>, Error> {
        self.connector(None)
    }

    /// The client for token and discovery requests, as the built-in one but with this identity.
    pub(crate) fn token_client(
        &self,
        connect_timeout: std::time::Duration,
    ) -> Result<crate::http::HttpClient, Error> {
        let client: Client<_, http_body_util::Full<bytes::Bytes>> =
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(std::time::Duration::from_secs(60))
                .build(self.connector(Some(connect_timeout))?);
        Ok(crate::http::HttpClient::from_service(client))
    }

    fn connector(
        &self,
        connect_timeout: Option<std::time::Duration>,
    ) -> Result<HttpsConnector<HttpConnector>, Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(connect_timeout);
        Ok(hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.rustls_config()?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http))
    }

    /// A hyper-util client presenting this identity: for the API of certificate-bound tokens,
    /// which must see the certificate the token was issued to.
    pub fn hyper_client<B>(&self) -> Result<Client<HttpsConnector<HttpConnector>, B>, Error>
    where
        B: http_body::Body + Send,
        B::Data: Send,
    {
        Ok(Client::builder(TokioExecutor::new()).build(self.https_connector()?))
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certificates", &self.inner.chain.len())
            .field("x5t#S256", &self.thumbprint())
            .field("private_key", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &[u8] = include_bytes!("../tests/mtls/client.pem");
    const CLIENT_KEY: &[u8] = include_bytes!("../tests/mtls/client-key.pem");
    const OTHER_KEY: &[u8] = include_bytes!("../tests/mtls/self-signed-key.pem");
    const CA: &[u8] = include_bytes!("../tests/mtls/ca.pem");

    #[test]
    fn identity_is_checked_and_redacted() {
        let identity = ClientIdentity::from_pem(CLIENT, CLIENT_KEY)
            .unwrap()
            .with_root_certificates_pem(CA)
            .unwrap();
        assert_eq!(identity.thumbprint().len(), 43);
        let debug = format!("{identity:?}");
        assert!(
            debug.contains("[redacted]") && !debug.contains("BEGIN"),
            "{debug}"
        );
        let err = ClientIdentity::from_pem(CLIENT, OTHER_KEY).unwrap_err();
        assert!(err.to_string().contains("belongs"), "{err}");
        let err = ClientIdentity::from_pem(b"nothing", CLIENT_KEY).unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
        assert!(!err.to_string().contains("PRIVATE"), "{err}");
    }
}
