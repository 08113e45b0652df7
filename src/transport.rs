//! The HTTP client for token and discovery requests, with the safe defaults of the design:
//! a total timeout on every request, no redirects followed, response bodies capped.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use tower_service::Service;

use crate::error::{BoxError, Error, ErrorKind};
use crate::source::BoxFuture;

/// Default time limit for one token or discovery request, connection included.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time limit for establishing a connection (built-in client only).
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on the size of a token or discovery response body.
pub(crate) const DEFAULT_MAX_RESPONSE_SIZE: usize = 64 * 1024;

/// A type-erased HTTP client: sends a request, returns the status, headers and whole body.
trait SendRequest: Send + Sync {
    fn send(
        &self,
        request: Request<Full<Bytes>>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Response<Bytes>, Error>>;
}

struct ServiceClient<S>(S);

impl<S, B> SendRequest for ServiceClient<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn send(
        &self,
        request: Request<Full<Bytes>>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Response<Bytes>, Error>> {
        let mut service = self.0.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(|e| transport_error("the HTTP client is not ready", e.into()))?;
            let response = service
                .call(request)
                .await
                .map_err(|e| transport_error("the request could not be sent", e.into()))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, limit).collect().await.map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    Error::new(
                        ErrorKind::Transport,
                        format!(
                            "the response body is larger than {limit} bytes; check the URL, or \
                             raise the limit with `max_response_size`"
                        ),
                    )
                    .with_status(parts.status)
                } else {
                    transport_error("the response body could not be read", e)
                }
            })?;
            Ok(Response::from_parts(parts, body.to_bytes()))
        })
    }
}

fn transport_error(what: &str, source: BoxError) -> Error {
    // The source (hyper, rustls, io) names the cause; it never holds our request body.
    Error::new(
        ErrorKind::Transport,
        format!("{what}: {source}; check the URL, the network and TLS settings"),
    )
    .with_source(source)
}

/// The client used for token and discovery requests.
#[derive(Clone)]
pub(crate) struct HttpClient {
    inner: Arc<dyn SendRequest>,
    timeout: Duration,
    max_response_size: usize,
}

impl HttpClient {
    pub(crate) fn from_service<S, B>(service: S) -> Self
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        HttpClient {
            inner: Arc::new(ServiceClient(service)),
            timeout: DEFAULT_TIMEOUT,
            max_response_size: DEFAULT_MAX_RESPONSE_SIZE,
        }
    }

    /// The built-in client: hyper-util over rustls with the webpki roots, HTTP/1.1 and HTTP/2.
    #[cfg(feature = "rustls")]
    pub(crate) fn default_client(connect_timeout: Duration) -> Result<Self, Error> {
        use hyper_util::client::legacy::{connect::HttpConnector, Client};
        use hyper_util::rt::TokioExecutor;

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| Error::config(format!("TLS could not be set up: {e}")))?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        Ok(Self::from_service(client))
    }

    pub(crate) fn with_limits(mut self, timeout: Duration, max_response_size: usize) -> Self {
        self.timeout = timeout;
        self.max_response_size = max_response_size;
        self
    }

    /// Sends `request`; a redirect is an error (never followed), so is a timeout.
    pub(crate) async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, Error> {
        let uri = request.uri().clone();
        let response = tokio::time::timeout(
            self.timeout,
            self.inner.send(request, self.max_response_size),
        )
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Transport,
                format!(
                    "{} did not answer within {} ms; check that it is reachable, or raise the \
                     limit with `timeout`",
                    redacted_uri(&uri),
                    self.timeout.as_millis()
                ),
            )
        })??;
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(|l| l.chars().take(300).collect::<String>())
                .unwrap_or_else(|| "(none)".to_string());
            return Err(Error::new(
                ErrorKind::Transport,
                format!(
                    "{} answered with a redirect ({}) to {location}; redirects are not followed: \
                     configure the final URL",
                    redacted_uri(&uri),
                    response.status()
                ),
            )
            .with_status(response.status()));
        }
        Ok(response)
    }
}

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

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .field("max_response_size", &self.max_response_size)
            .finish_non_exhaustive()
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

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

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
