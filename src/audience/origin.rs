//! Origins (scheme, host, port) as the table knows them, and as a request's URI gives them:
//! read from the URI without allocating; normalised (lower case, no user info, no default port)
//! only when the URI's form differs from the normal one.

use std::fmt;

use crate::error::Error;

/// A request's origin as its URI spells it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Origin<'a> {
    pub(super) secure: bool,
    authority: &'a str,
}

impl<'a> Origin<'a> {
    /// The origin of `uri`, if it has an `http` or `https` scheme and an authority.
    #[inline]
    pub(super) fn of(uri: &'a http::Uri) -> Option<Self> {
        let secure = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        Some(Origin {
            secure,
            authority: uri.authority()?.as_str(),
        })
    }

    /// The authority as the tables key it, when the URI spells it that way already (the
    /// common case: no allocation).
    #[inline]
    pub(super) fn as_normal(&self) -> Option<&'a str> {
        let a = self.authority;
        let default_port = if self.secure { ":443" } else { ":80" };
        let normal = !a.contains('@')
            && !a.ends_with(default_port)
            && !a.bytes().any(|b| b.is_ascii_uppercase());
        normal.then_some(a)
    }

    /// The normal form, allocated: for a URI spelled differently, and for new table entries.
    pub(super) fn normalized(&self) -> NormalOrigin {
        let a = self.authority;
        let host_port = a.rsplit_once('@').map_or(a, |(_, rest)| rest);
        let default_port = if self.secure { ":443" } else { ":80" };
        let host_port = host_port.strip_suffix(default_port).unwrap_or(host_port);
        NormalOrigin {
            secure: self.secure,
            authority: host_port.to_ascii_lowercase().into_boxed_str(),
        }
    }
}

/// An origin in normal form: the key of the origin tables.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct NormalOrigin {
    pub(super) secure: bool,
    pub(super) authority: Box<str>,
}

impl NormalOrigin {
    /// Parses a configured origin such as `https://api-a.example` or `http://127.0.0.1:8080`
    /// (a trailing `/` is allowed; a path, query or user info is not).
    pub(super) fn parse(origin: &str) -> Result<Self, Error> {
        let refused = |why: &str| {
            // User info may hold a password: such an origin is not echoed.
            let shown = if origin.contains('@') {
                "an origin with user info".to_string()
            } else {
                format!("`{}`", origin.escape_debug())
            };
            Error::config(format!(
                "{shown} is not an origin ({why}); give the scheme, host and port only, e.g. \
                 `https://api.example`"
            ))
        };
        let uri: http::Uri = origin.parse().map_err(|_| refused("not a URL"))?;
        let parsed = Origin::of(&uri).ok_or_else(|| refused("not http or https"))?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(refused("it has user info"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(refused("it has a path or query"));
        }
        Ok(parsed.normalized())
    }
}

impl fmt::Display for NormalOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.secure { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(uri: &str) -> (Option<String>, String) {
        let uri: http::Uri = uri.parse().unwrap();
        let origin = Origin::of(&uri).unwrap();
        (
            origin.as_normal().map(str::to_string),
            origin.normalized().to_string(),
        )
    }

    #[test]
    fn normal_uris_need_no_allocation_and_others_are_normalised() {
        assert_eq!(
            origin("https://api-a.example/v1/x?y"),
            (Some("api-a.example".into()), "https://api-a.example".into())
        );
        assert_eq!(
            origin("https://API-A.example:443/"),
            (None, "https://api-a.example".into())
        );
        assert_eq!(
            origin("http://user:pw@127.0.0.1:8080/"),
            (None, "http://127.0.0.1:8080".into())
        );
        assert_eq!(origin("http://h:443/").1, "http://h:443");
        let relative: http::Uri = "/just/a/path".parse().unwrap();
        assert!(Origin::of(&relative).is_none());
    }

    #[test]
    fn configured_origins_are_checked() {
        assert_eq!(
            NormalOrigin::parse("https://Api.example:443/")
                .unwrap()
                .to_string(),
            "https://api.example"
        );
        for bad in [
            "api.example",
            "ftp://api.example",
            "https://api.example/v1",
            "https://u:p@api.example",
        ] {
            let err = NormalOrigin::parse(bad).unwrap_err();
            assert!(err.to_string().contains("not an origin"), "{bad}: {err}");
        }
    }
}
