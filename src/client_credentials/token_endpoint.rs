//! Where the token endpoint comes from: configured, or found once through the issuer's metadata.
//!
//! The metadata is fetched at the first token request or on
//! [`ClientCredentials::discover`](crate::ClientCredentials::discover), and kept for the life of
//! the credentials. A failed fetch is not kept: the next token request (after the cache's
//! backoff) tries again. The locations are tried in order (see `oauth::discovery`), moving on
//! after a 4xx answer or a body that is not metadata.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::ACCEPT;
use http::{Method, Request};
use http_body_util::Full;
use tokio::sync::OnceCell;

use crate::error::{Error, ErrorKind};
use crate::http::retry_after::retry_after;
use crate::http::sanitize::Secrets;
use crate::http::url::redacted_uri;
use crate::http::HttpClient;
use crate::oauth::discovery::{Issuer, Metadata, Resolved};

/// Where the token endpoint comes from.
pub(crate) enum TokenEndpoint {
    Fixed(Arc<Resolved>),
    Discovered(Discovery),
}

impl TokenEndpoint {
    pub(crate) fn fixed(uri: http::Uri) -> Self {
        TokenEndpoint::Fixed(Arc::new(Resolved {
            token_endpoint: uri,
            auth_methods: None,
            mtls_token_endpoint: None,
        }))
    }

    pub(crate) fn discovered(issuer: Issuer) -> Self {
        TokenEndpoint::Discovered(Discovery {
            issuer,
            resolved: OnceCell::new(),
        })
    }

    /// The configured URL (token endpoint or issuer) with what it is: what identifies the
    /// authorization server before discovery (part of the store key of `ClientCredentials`).
    #[cfg(feature = "store")]
    pub(crate) fn configured(&self) -> String {
        match self {
            TokenEndpoint::Fixed(resolved) => format!("token_endpoint {}", resolved.token_endpoint),
            TokenEndpoint::Discovered(d) => format!("issuer {}", d.issuer.uri),
        }
    }

    pub(crate) fn known(&self) -> Option<http::Uri> {
        match self {
            TokenEndpoint::Fixed(resolved) => Some(resolved.token_endpoint.clone()),
            TokenEndpoint::Discovered(d) => d.resolved.get().map(|r| r.token_endpoint.clone()),
        }
    }

    /// The token endpoint, discovering it first if needed, by `deadline` (that of the token
    /// fetch it is part of).
    pub(crate) async fn resolve(
        &self,
        http: &HttpClient,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<Resolved>, Error> {
        match self {
            TokenEndpoint::Fixed(resolved) => Ok(resolved.clone()),
            TokenEndpoint::Discovered(d) => d
                .resolved
                .get_or_try_init(|| d.fetch(http, deadline))
                .await
                .cloned(),
        }
    }
}

/// The issuer and, once fetched, what its metadata says.
pub(crate) struct Discovery {
    issuer: Issuer,
    resolved: OnceCell<Arc<Resolved>>,
}

impl Discovery {
    async fn fetch(
        &self,
        http: &HttpClient,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<Resolved>, Error> {
        let mut tried = Vec::new();
        for url in self.issuer.locations() {
            let uri: http::Uri = url.parse().map_err(|e| {
                Error::new(ErrorKind::Discovery, format!("bad metadata URL {url}: {e}"))
            })?;
            let request = Request::builder()
                .method(Method::GET)
                .uri(uri)
                .header(ACCEPT, "application/json")
                .body(Full::new(Bytes::new()))
                .map_err(|e| {
                    Error::new(ErrorKind::Discovery, format!("bad metadata request: {e}"))
                })?;
            // A metadata request carries no secret; the sanitiser still cleans what comes back.
            let response = http
                .send(request, deadline, &Secrets::none())
                .await
                .map_err(|e| {
                    // The status (a redirect's) is kept.
                    let error = Error::new(
                        ErrorKind::Discovery,
                        format!(
                            "the metadata at {url} could not be fetched: {}",
                            e.message()
                        ),
                    );
                    match e.status() {
                        Some(status) => error.with_status(status),
                        None => error,
                    }
                    .with_source(e)
                })?;
            let status = response.status();
            if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
                let retry_after = retry_after(response.headers(), std::time::SystemTime::now());
                return Err(Error::new(
                    ErrorKind::Discovery,
                    format!("the metadata at {url} answered HTTP {status}; check the authorization server's health"),
                )
                .with_status(status)
                .with_retry_after(retry_after));
            }
            if !status.is_success() {
                tried.push(format!("{url} (HTTP {})", status.as_u16()));
                continue;
            }
            let metadata: Metadata = match serde_json::from_slice(response.body()) {
                Ok(metadata) => metadata,
                Err(_) => {
                    tried.push(format!("{url} (not a metadata document)"));
                    continue;
                }
            };
            let resolved = self.issuer.check(&url, metadata)?;
            tracing::info!(
                metadata_url = %url,
                token_endpoint = %redacted_uri(&resolved.token_endpoint),
                "authorization server metadata found"
            );
            return Ok(Arc::new(resolved));
        }
        Err(Error::new(
            ErrorKind::Discovery,
            format!(
                "no authorization server metadata for issuer {}; tried {}; check the issuer URL, \
                 or configure `.token_endpoint(url)` directly",
                redacted_uri(&self.issuer.uri),
                tried.join(", ")
            ),
        ))
    }
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenEndpoint::Fixed(r) => write!(f, "{}", redacted_uri(&r.token_endpoint)),
            TokenEndpoint::Discovered(d) => write!(f, "issuer {}", redacted_uri(&d.issuer.uri)),
        }
    }
}
