//! Authorization server metadata (RFC 8414, OpenID Connect Discovery 1.0), the protocol side:
//! where the document may live, what it must say, and what the token request takes from it.
//! Fetching it, once, is the job of `client_credentials::token_endpoint`.
//!
//! Locations are tried in this order:
//!
//! 1. `https://host/.well-known/oauth-authorization-server/path` (RFC 8414 §3.1)
//! 2. `https://host/path/.well-known/oauth-authorization-server` (the form Okta serves)
//! 3. `https://host/path/.well-known/openid-configuration` (OpenID Connect Discovery §4)
//! 4. `https://host/.well-known/openid-configuration/path` (RFC 8414 §5)
//!
//! The document's `issuer` must be the configured issuer (RFC 8414 §3.3; a trailing `/` aside),
//! and its `token_endpoint` must pass the same `https` rule as a configured one.

use serde::Deserialize;

use crate::error::{Error, ErrorKind};
use crate::http::sanitize::clean;
use crate::http::url;

/// What the token request needs from the metadata.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) token_endpoint: http::Uri,
    pub(crate) auth_methods: Option<Vec<String>>,
    /// RFC 8705 §5 `mtls_endpoint_aliases.token_endpoint`: where a client authenticating with
    /// its certificate sends the token request.
    pub(crate) mtls_token_endpoint: Option<http::Uri>,
}

/// The parts of the metadata document the crate reads.
#[derive(Deserialize)]
pub(crate) struct Metadata {
    issuer: String,
    #[serde(default)]
    token_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    mtls_endpoint_aliases: Option<MtlsAliases>,
}

/// RFC 8705 §5: the endpoints a client authenticating with its certificate uses instead.
#[derive(Deserialize)]
pub(crate) struct MtlsAliases {
    #[serde(default)]
    token_endpoint: Option<String>,
}

/// The configured issuer, and whether plain `http` is allowed for what its metadata names.
pub(crate) struct Issuer {
    pub(crate) uri: http::Uri,
    allow_http: bool,
}

impl Issuer {
    pub(crate) fn new(uri: http::Uri, allow_http: bool) -> Self {
        Issuer { uri, allow_http }
    }

    /// The well-known URLs to try, in order, without duplicates.
    pub(crate) fn locations(&self) -> Vec<String> {
        let issuer = &self.uri;
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

    /// Checks the document found at `url` against this issuer and takes what the token request
    /// needs from it.
    pub(crate) fn check(&self, url: &str, metadata: Metadata) -> Result<Resolved, Error> {
        let configured = self.uri.to_string();
        if metadata.issuer.trim_end_matches('/') != configured.trim_end_matches('/') {
            return Err(Error::new(
                ErrorKind::Discovery,
                format!(
                    "the metadata at {url} is for issuer `{}`, not the configured `{configured}` \
                     (RFC 8414 §3.3); check the issuer URL",
                    clean(&metadata.issuer, 200)
                ),
            ));
        }
        let token_endpoint = metadata.token_endpoint.ok_or_else(|| {
            Error::new(
                ErrorKind::Discovery,
                format!("the metadata at {url} has no `token_endpoint`; configure `.token_endpoint(url)` directly"),
            )
        })?;
        let token_endpoint = url::parse_url(&token_endpoint, "token endpoint")
            .and_then(|uri| {
                url::check_scheme(&uri, self.allow_http, "token endpoint").map(|()| uri)
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
                let checked = url::parse_url(&alias, "mTLS token endpoint alias").and_then(|uri| {
                    url::check_scheme(&uri, self.allow_http, "mTLS token endpoint alias")
                        .map(|()| uri)
                });
                checked
                    .map_err(|e| tracing::warn!("the metadata at {url}: {e}; alias ignored"))
                    .ok()
            });
        Ok(Resolved {
            token_endpoint,
            auth_methods: metadata.token_endpoint_auth_methods_supported,
            mtls_token_endpoint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_in_order() {
        let issuer = Issuer::new("https://idm.example/oauth2/aus1".parse().unwrap(), false);
        assert_eq!(
            issuer.locations(),
            [
                "https://idm.example/.well-known/oauth-authorization-server/oauth2/aus1",
                "https://idm.example/oauth2/aus1/.well-known/oauth-authorization-server",
                "https://idm.example/oauth2/aus1/.well-known/openid-configuration",
                "https://idm.example/.well-known/openid-configuration/oauth2/aus1",
            ]
        );
        let issuer = Issuer::new("https://idm.example/".parse().unwrap(), false);
        assert_eq!(
            issuer.locations(),
            [
                "https://idm.example/.well-known/oauth-authorization-server",
                "https://idm.example/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn mtls_alias_is_read_and_an_unusable_one_ignored() {
        let issuer = Issuer::new("https://idm.example".parse().unwrap(), false);
        let meta = |alias: &str| Metadata {
            issuer: "https://idm.example".into(),
            token_endpoint: Some("https://idm.example/token".into()),
            token_endpoint_auth_methods_supported: None,
            mtls_endpoint_aliases: Some(MtlsAliases {
                token_endpoint: Some(alias.into()),
            }),
        };
        let resolved = issuer
            .check("u", meta("https://mtls.idm.example/token"))
            .unwrap();
        assert_eq!(
            resolved.mtls_token_endpoint.unwrap(),
            "https://mtls.idm.example/token"
        );
        let resolved = issuer
            .check("u", meta("http://mtls.idm.example/token"))
            .unwrap();
        assert!(resolved.mtls_token_endpoint.is_none());
        assert_eq!(resolved.token_endpoint, "https://idm.example/token");
    }

    #[test]
    fn issuer_must_match() {
        let d = Issuer::new("https://idm.example/oauth2/aus1".parse().unwrap(), false);
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

    #[test]
    fn a_hostile_issuer_cannot_forge_log_lines() {
        let d = Issuer::new("https://idm.example/oauth2/aus1".parse().unwrap(), false);
        let hostile =
            "https://evil.example/\r\n2025-01-01T00:00:00Z  INFO forged line\u{1b}[2K\u{2028}";
        let err = d
            .check(
                "u",
                Metadata {
                    issuer: hostile.into(),
                    token_endpoint: Some("https://idm.example/t".into()),
                    token_endpoint_auth_methods_supported: None,
                    mtls_endpoint_aliases: None,
                },
            )
            .unwrap_err();
        let shown = format!("{err} {err:?}");
        for c in ['\r', '\n', '\u{1b}', '\u{2028}'] {
            assert!(!shown.contains(c), "{c:?} in {shown}");
        }
        assert!(shown.contains("evil.example/\\r\\n2025"), "{shown}");
    }
}
