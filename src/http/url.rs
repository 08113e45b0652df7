//! URL rules for the token endpoint and the issuer: absolute, no credentials in the URL, `https`
//! unless loopback or allowed, and the redacted form used in errors and logs.

use crate::error::Error;

/// The URI without any query (which could hold credentials a user put there).
pub(crate) fn redacted_uri(uri: &http::Uri) -> String {
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => {
            // Userinfo is not allowed in http::Uri authority for requests, but strip it anyway.
            let host = authority.as_str().rsplit('@').next().unwrap_or("");
            format!("{scheme}://{host}{}", uri.path())
        }
        _ => uri.path().to_string(),
    }
}

/// Whether `uri` may be used: `https`, or `http` to a loopback host, or `http` when allowed.
pub(crate) fn check_scheme(uri: &http::Uri, allow_http: bool, what: &str) -> Result<(), Error> {
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if allow_http || is_loopback(uri.host().unwrap_or("")) => Ok(()),
        Some("http") => Err(Error::config(format!(
            "the {what} {} uses plain http, which would send credentials in clear text; use \
             https, or call `allow_http()` to accept the risk",
            redacted_uri(uri)
        ))),
        _ => Err(Error::config(format!(
            "the {what} must be an absolute http(s) URL, got {}",
            redacted_uri(uri)
        ))),
    }
}

/// Whether `host` is `localhost` or a loopback IP address.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Parses a configured URL (`what` names it in errors): absolute, with a host, without userinfo.
pub(crate) fn parse_url(url: &str, what: &str) -> Result<http::Uri, Error> {
    let uri: http::Uri = url.trim().parse().map_err(|e| {
        Error::config(format!(
            "the {what} is not a valid URL ({e}); expected something like \
             https://idp.example/oauth2/default/v1/token"
        ))
    })?;
    if uri.scheme().is_none() || uri.host().is_none_or(str::is_empty) {
        return Err(Error::config(format!(
            "the {what} must be an absolute URL with a scheme and a host, got {}",
            redacted_uri(&uri)
        )));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(Error::config(format!(
            "the {what} must not carry credentials in the URL; use `client_id` and \
             `client_secret`"
        )));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_http_is_allowed_other_http_is_not() {
        let ok = |u: &str| check_scheme(&u.parse().unwrap(), false, "token endpoint").is_ok();
        assert!(ok("https://idp.example/token"));
        assert!(ok("http://127.0.0.1:8080/token"));
        assert!(ok("http://127.9.9.9/token"));
        assert!(ok("http://localhost/token"));
        assert!(ok("http://[::1]:80/token"));
        assert!(!ok("http://idp.example/token"));
        assert!(!ok("http://10.0.0.1/token"));
        assert!(!ok("ftp://idp.example/token"));
        assert!(check_scheme(&"http://idp.example/t".parse().unwrap(), true, "x").is_ok());
    }

    #[test]
    fn urls_are_checked() {
        assert!(parse_url("not a url", "token endpoint").is_err());
        assert!(parse_url("/relative", "token endpoint").is_err());
        let err = parse_url("https://user:pw@idp.example/t", "token endpoint").unwrap_err();
        assert!(!err.to_string().contains("pw"));
        assert!(parse_url(" https://idp.example/t ", "token endpoint").is_ok());
    }

    #[test]
    fn redaction_drops_query() {
        let uri: http::Uri = "https://idp.example/t?secret=x".parse().unwrap();
        assert_eq!(redacted_uri(&uri), "https://idp.example/t");
    }
}
