//! Authorization server metadata (RFC 8414, OpenID Connect Discovery 1.0): find the token
//! endpoint and the supported client authentication methods from the issuer URL.
//!
//! The metadata is fetched once, at the first token request or on
//! [`ClientCredentials::discover`](crate::ClientCredentials::discover), and kept for the life of
//! the credentials. A failed fetch is not kept: the next token request (after the cache's
//! backoff) tries again. Locations are tried in this order, moving on after a 4xx answer or a
//! body that is not metadata:
//!
//! 1. `https://host/.well-known/oauth-authorization-server/path` (RFC 8414 §3.1)
//! 2. `https://host/path/.well-known/oauth-authorization-server` (the form Okta serves)
//! 3. `https://host/path/.well-known/openid-configuration` (OpenID Connect Discovery §4)
//! 4. `https://host/.well-known/openid-configuration/path` (RFC 8414 §5)
//!
//! The document's `issuer` must be the configured issuer (RFC 8414 §3.3; a trailing `/` aside),
//! and its `token_endpoint` must pass the same `https` rule as a configured one.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::ACCEPT;
use http::{Method, Request};
use http_body_util::Full;
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::error::{Error, ErrorKind};
use crate::transport::{self, redacted_uri, HttpClient};

/// What the token request needs from the metadata.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) token_endpoint: http::Uri,
    pub(crate) auth_methods: Option<Vec<String>>,
    /// RFC 8705 §5 `mtls_endpoint_aliases.token_endpoint`: where a client authenticating with
    /// its certificate sends the token request.
    pub(crate) mtls_token_endpoint: Option<http::Uri>,
}

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

    pub(crate) fn known(&self) -> Option<http::Uri> {
        match self {
            TokenEndpoint::Fixed(resolved) => Some(resolved.token_endpoint.clone()),
            TokenEndpoint::Discovered(d) => d.resolved.get().map(|r| r.token_endpoint.clone()),
        }
    }

    pub(crate) async fn resolve(&self, http: &HttpClient) -> Result<Arc<Resolved>, Error> {
        match self {
            TokenEndpoint::Fixed(resolved) => Ok(resolved.clone()),
            TokenEndpoint::Discovered(d) => {
                d.resolved.get_or_try_init(|| d.fetch(http)).await.cloned()
            }
        }
    }
}

pub(crate) struct Discovery {
    issuer: http::Uri,
    allow_http: bool,
    resolved: OnceCell<Arc<Resolved>>,
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    #[serde(default)]
    token_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    mtls_endpoint_aliases: Option<MtlsAliases>,
}

#[derive(Deserialize)]
struct MtlsAliases {
    #[serde(default)]
    token_endpoint: Option<String>,
}

impl Discovery {
    pub(crate) fn new(issuer: http::Uri, allow_http: bool) -> Self {
        Discovery {
            issuer,
            allow_http,
            resolved: OnceCell::new(),
        }
    }

    /// The well-known URLs to try, in order, without duplicates.
    pub(crate) fn locations(issuer: &http::Uri) -> Vec<String> {
        let scheme = issuer.scheme_str().unwrap_or("https");
        let authority = issuer.authority().map(|a| a.as_str()).unwrap_or("");
        let path = issuer.path().trim_end_matches('/');
        let base = format!("{scheme}://{authority}");
        let mut urls = vec![
            format!("{base}/.well-known/oauth-authorization-server{path}"),
            format!("{base}{path}/.well-known/oauth-authorization-server"),
            format!("{base}{path}/.well-known/openid-configuration"),
            format!("{base}/.well-known/openid-configuration{path}"),
        ];
        let mut seen = std::collections::HashSet::new();
        urls.retain(|u| seen.insert(u.clone()));
        urls
    }

    async fn fetch(&self, http: &HttpClient) -> Result<Arc<Resolved>, Error> {
        let mut tried = Vec::new();
        for url in Self::locations(&self.issuer) {
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
            let response = http.send(request).await.map_err(|e| {
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
                let retry_after =
                    crate::endpoint::retry_after(response.headers(), std::time::SystemTime::now());
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
            let resolved = self.check(&url, metadata)?;
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
                redacted_uri(&self.issuer),
                tried.join(", ")
            ),
        ))
    }

    fn check(&self, url: &str, metadata: Metadata) -> Result<Resolved, Error> {
        let configured = self.issuer.to_string();
        if metadata.issuer.trim_end_matches('/') != configured.trim_end_matches('/') {
            return Err(Error::new(
                ErrorKind::Discovery,
                format!(
                    "the metadata at {url} is for issuer `{}`, not the configured `{configured}` \
                     (RFC 8414 §3.3); check the issuer URL",
                    metadata.issuer.chars().take(200).collect::<String>()
                ),
            ));
        }
        let token_endpoint = metadata.token_endpoint.ok_or_else(|| {
            Error::new(
                ErrorKind::Discovery,
                format!("the metadata at {url} has no `token_endpoint`; configure `.token_endpoint(url)` directly"),
            )
        })?;
        let token_endpoint = transport::parse_url(&token_endpoint, "token endpoint")
            .and_then(|uri| {
                transport::check_scheme(&uri, self.allow_http, "token endpoint").map(|()| uri)
            })
            .map_err(|e| {
                Error::new(
                    ErrorKind::Discovery,
                    format!("the metadata at {url} names an unusable token endpoint: {e}"),
                )
            })?;
        // Only mTLS clients use the alias: an unusable one is logged and ignored, not an error
        // for every other client of the server.
        let mtls_token_endpoint = metadata
            .mtls_endpoint_aliases
            .and_then(|aliases| aliases.token_endpoint)
            .and_then(|alias| {
                let uri = transport::parse_url(&alias, "mTLS token endpoint alias").ok()?;
                transport::check_scheme(&uri, self.allow_http, "mTLS token endpoint alias").ok()?;
                Some(uri)
            });
        Ok(Resolved {
            token_endpoint,
            auth_methods: metadata.token_endpoint_auth_methods_supported,
            mtls_token_endpoint,
        })
    }
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenEndpoint::Fixed(r) => write!(f, "{}", redacted_uri(&r.token_endpoint)),
            TokenEndpoint::Discovered(d) => write!(f, "issuer {}", redacted_uri(&d.issuer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_in_order() {
        let issuer = "https://idm.example/oauth2/aus1".parse().unwrap();
        assert_eq!(
            Discovery::locations(&issuer),
            [
                "https://idm.example/.well-known/oauth-authorization-server/oauth2/aus1",
                "https://idm.example/oauth2/aus1/.well-known/oauth-authorization-server",
                "https://idm.example/oauth2/aus1/.well-known/openid-configuration",
                "https://idm.example/.well-known/openid-configuration/oauth2/aus1",
            ]
        );
        let issuer = "https://idm.example/".parse().unwrap();
        assert_eq!(
            Discovery::locations(&issuer),
            [
                "https://idm.example/.well-known/oauth-authorization-server",
                "https://idm.example/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn mtls_alias_is_read_and_an_unusable_one_ignored() {
        let d = Discovery::new("https://idm.example".parse().unwrap(), false);
        let meta = |alias: &str| Metadata {
            issuer: "https://idm.example".into(),
            token_endpoint: Some("https://idm.example/token".into()),
            token_endpoint_auth_methods_supported: None,
            mtls_endpoint_aliases: Some(MtlsAliases {
                token_endpoint: Some(alias.into()),
            }),
        };
        let resolved = d
            .check("u", meta("https://mtls.idm.example/token"))
            .unwrap();
        assert_eq!(
            resolved.mtls_token_endpoint.unwrap(),
            "https://mtls.idm.example/token"
        );
        let resolved = d.check("u", meta("http://mtls.idm.example/token")).unwrap();
        assert!(resolved.mtls_token_endpoint.is_none());
        assert_eq!(resolved.token_endpoint, "https://idm.example/token");
    }

    #[test]
    fn issuer_must_match() {
        let d = Discovery::new("https://idm.example/oauth2/aus1".parse().unwrap(), false);
        let meta = |issuer: &str, endpoint: &str| Metadata {
            issuer: issuer.into(),
            token_endpoint: Some(endpoint.into()),
            token_endpoint_auth_methods_supported: None,
            mtls_endpoint_aliases: None,
        };
        assert!(d
            .check(
                "u",
                meta("https://idm.example/oauth2/aus1/", "https://idm.example/t")
            )
            .is_ok());
        let err = d
            .check("u", meta("https://evil.example/", "https://idm.example/t"))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Discovery);
        assert!(
            err.to_string().contains("evil.example")
                && err.to_string().contains("idm.example/oauth2/aus1")
        );
        let err = d
            .check(
                "u",
                meta("https://idm.example/oauth2/aus1", "http://idm.example/t"),
            )
            .unwrap_err();
        assert!(err.to_string().contains("http"), "{err}");
    }
}
