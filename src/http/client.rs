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
use crate::http::sanitize::Secrets;
use crate::http::url::redacted_uri;
use crate::source::BoxFuture;

/// Default time limit for one whole token fetch: discovery, every request of the method
/// negotiation, connections included.
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
    /// The time limit of one whole token fetch (see [`HttpClient::deadline`]).
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

    /// When a token fetch starting now must be over: one deadline for discovery and every
    /// request of the method negotiation, so that their time limits do not add up.
    pub(crate) fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + crate::time::clamp_to_century(self.timeout)
    }

    /// Sends `request`, giving up at `deadline`; a redirect is an error (never followed). Server
    /// text kept in an error (a `Location`) is cleaned of `secrets` and control characters.
    pub(crate) async fn send(
        &self,
        request: Request<Full<Bytes>>,
        deadline: tokio::time::Instant,
        secrets: &Secrets,
    ) -> Result<Response<Bytes>, Error> {
        let uri = request.uri().clone();
        let response =
            tokio::time::timeout_at(deadline, self.inner.send(request, self.max_response_size))
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorKind::Transport,
                        format!(
                    "{} did not answer before the token fetch's time limit of {} ms ran out \
                     (one limit for discovery and every request of a fetch); check that it is \
                     reachable, or raise the limit with `timeout`",
                    redacted_uri(&uri),
                    self.timeout.as_millis()
                ),
                    )
                })??;
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .map(|l| redacted_location(&String::from_utf8_lossy(l.as_bytes()), secrets))
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

/// A redirect's `Location` as an error may show it: without its query and fragment (where a
/// server would put credentials or a token it echoes), cleaned of `secrets`.
fn redacted_location(location: &str, secrets: &Secrets) -> String {
    match location.find(['?', '#']) {
        Some(end) => format!("{}?[query redacted]", secrets.clean(&location[..end], 300)),
        None => secrets.clean(location, 300),
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

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn a_location_is_shown_without_its_query_or_any_secret() {
        let secrets = Secrets::client_secret("id", &SecretString::from("Sekrit-Value"));
        assert_eq!(
            redacted_location("https://idp.example/cb?token=abc&secret=x#f", &secrets),
            "https://idp.example/cb?[query redacted]"
        );
        assert_eq!(
            redacted_location("https://idp.example/Sekrit-Value/\r\nx", &secrets),
            "https://idp.example/[redacted]/\\r\\nx"
        );
    }
}
