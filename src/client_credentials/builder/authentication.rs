//! How the builder turns its settings into one [`Authentication`]: the configured method with
//! exactly what it needs (a secret, a key, a signer, a certificate), or a secret whose method is
//! negotiated; and the built-in HTTP client that goes with it.

use super::*;

impl ClientCredentialsBuilder {
    /// The client authentication: the configured method with what it needs, or the secret
    /// with the method left to negotiate.
    pub(super) fn authentication(&mut self) -> Result<Authentication, Error> {
        #[cfg(feature = "mtls")]
        if self.identity.is_some()
            && !matches!(
                self.method,
                Some(ClientAuthMethod::TlsClientAuth | ClientAuthMethod::SelfSignedTlsClientAuth)
            )
        {
            return Err(Error::config(format!(
                "a client certificate was given with `.tls_client_auth(..)` or \
                 `.self_signed_tls_client_auth(..)`, but the client authentication method is \
                 now {}; drop one of the two",
                self.method.map_or("unset", ClientAuthMethod::as_str)
            )));
        }
        if let Some(source) = self.client_assertion_source.take() {
            return self.assertion_source(source);
        }
        let encoding = match self.method {
            None => None,
            Some(ClientAuthMethod::ClientSecretBasic) => Some(SecretEncoding::Basic),
            Some(ClientAuthMethod::ClientSecretPost) => Some(SecretEncoding::Post),
            Some(
                method @ (ClientAuthMethod::ClientSecretJwt | ClientAuthMethod::PrivateKeyJwt),
            ) => {
                #[cfg(not(feature = "jwt-client-auth"))]
                return Err(Error::config(format!(
                    "the client authentication method {} needs the cargo feature \
                     `jwt-client-auth` of tower-client-credentials",
                    method.as_str()
                )));
                #[cfg(feature = "jwt-client-auth")]
                return self.assertion(method);
            }
            Some(ClientAuthMethod::TlsClientAuth) => {
                return self.certificate(CertificateKind::CaIssued)
            }
            Some(ClientAuthMethod::SelfSignedTlsClientAuth) => {
                return self.certificate(CertificateKind::SelfSigned)
            }
        };
        let method = match encoding {
            Some(encoding) => SecretMethod::Configured(encoding),
            None => SecretMethod::Negotiated(Negotiation::default()),
        };
        let secret = self.secret()?.ok_or_else(no_secret)?;
        Ok(Authentication::Secret { secret, method })
    }

    /// The secret: the source given, or the fixed secret (checked now).
    fn secret(&mut self) -> Result<Option<ClientSecret>, Error> {
        if let Some(source) = self.client_secret_source.take() {
            return Ok(Some(ClientSecret::from_source(source)));
        }
        Ok(checked_secret(self.client_secret.take())?.map(ClientSecret::fixed))
    }

    /// `client_secret_jwt` needs the secret; `private_key_jwt` signs with the key alone (a
    /// secret given anyway is still checked).
    #[cfg(feature = "jwt-client-auth")]
    fn assertion(&mut self, method: ClientAuthMethod) -> Result<Authentication, Error> {
        use crate::oauth::assertion::AssertionKey;
        if method == ClientAuthMethod::PrivateKeyJwt {
            if let Some(signer) = self.signer.take() {
                self.secret()?;
                return Ok(Authentication::Signer(signer));
            }
            let key = self.private_key.take().ok_or_else(|| {
                Error::config(
                    "private_key_jwt needs a private key; set it with `.private_key_jwt(..)`",
                )
            })?;
            self.secret()?;
            Ok(Authentication::Assertion(AssertionKey::PrivateKey(key)))
        } else {
            Ok(Authentication::Secret {
                secret: self.secret()?.ok_or_else(no_secret)?,
                method: SecretMethod::Jwt,
            })
        }
    }
}

impl ClientCredentialsBuilder {
    /// A client assertion from a source is `private_key_jwt` as far as the server knows: a
    /// method set to anything else afterwards contradicts it (a secret given anyway is still
    /// checked, as for the other secretless methods).
    fn assertion_source(
        &mut self,
        source: Arc<dyn super::super::AssertionSource>,
    ) -> Result<Authentication, Error> {
        if self.method != Some(ClientAuthMethod::PrivateKeyJwt) {
            return Err(Error::config(format!(
                "a client assertion source was given with `.client_assertion_source(..)`, but \
                 the client authentication method is now {}; drop one of the two",
                self.method.map_or("unset", ClientAuthMethod::as_str)
            )));
        }
        self.secret()?;
        Ok(Authentication::AssertionSource(
            super::super::assertion_source::ClientAssertion::new(source),
        ))
    }

    /// The mTLS methods need a certificate, presented by the built-in client made with the
    /// identity, or by the caller's HTTP client; no secret (one given anyway is still checked).
    fn certificate(&mut self, kind: CertificateKind) -> Result<Authentication, Error> {
        #[cfg(feature = "mtls")]
        let identity = self.identity.take();
        #[cfg(not(feature = "mtls"))]
        let identity: Option<std::convert::Infallible> = None;
        let presented_by = match (identity, self.http.is_some()) {
            #[cfg(feature = "mtls")]
            (Some(identity), false) => CertificateHolder::Identity(identity),
            (Some(_), true) => {
                return Err(Error::config(
                    "a client certificate and an HTTP client were both given; the certificate \
                     would not be presented: give it to your HTTP client, or drop \
                     `.http_client(..)`",
                ))
            }
            (None, true) => CertificateHolder::CallersHttpClient,
            (None, false) => {
                let method = self.method.map_or("", ClientAuthMethod::as_str);
                return Err(Error::config(format!(
                    "{method} needs a client certificate; set it with `.tls_client_auth(identity)` \
                     or `.self_signed_tls_client_auth(identity)` (feature `mtls`), or pass an HTTP \
                     client that presents one with `.http_client(..)`"
                )));
            }
        };
        self.secret()?;
        Ok(Authentication::Certificate { kind, presented_by })
    }
}

fn no_secret() -> Error {
    Error::config("no client secret; set it with `.client_secret(..)`")
}

/// The secret, if given, after the checks that catch a copy-paste mistake.
fn checked_secret(secret: Option<SecretString>) -> Result<Option<SecretString>, Error> {
    if let Some(client_secret) = &secret {
        let secret = client_secret.expose_secret();
        if secret.is_empty() {
            return Err(Error::config(
                "the client secret is empty; set it with `.client_secret(..)`",
            ));
        }
        if secret.chars().any(char::is_control) {
            return Err(Error::config(
                "the client secret contains control characters; check for a stray newline",
            ));
        }
    }
    Ok(secret)
}

#[cfg(feature = "rustls")]
pub(super) fn default_client(connect_timeout: Duration) -> Result<HttpClient, Error> {
    HttpClient::default_client(connect_timeout)
}

#[cfg(not(feature = "rustls"))]
pub(super) fn default_client(_connect_timeout: Duration) -> Result<HttpClient, Error> {
    Err(Error::config(
        "no HTTP client for the token endpoint: enable the `rustls` feature or pass one with \
         `.http_client(..)`",
    ))
}
