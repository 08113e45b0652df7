//! Client authentication with an assertion the client does not sign itself: a short-lived JWT a
//! platform gives the workload (workload identity), sent as the client assertion (RFC 7523
//! §2.2, RFC 7521 §4.2: `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`).
//!
//! A Kubernetes projected service-account token, Microsoft Entra workload identity
//! (`AZURE_FEDERATED_TOKEN_FILE`), AWS (`AWS_WEB_IDENTITY_TOKEN_FILE`) and GCP workload identity
//! federation each write such a JWT to a file and replace it before it expires (hourly or
//! faster). [`FileAssertion`] reads that file at every token request; implement
//! [`AssertionSource`] for another place (a metadata endpoint, a sidecar).
//!
//! Whatever the source, the crate checks what it gives before sending it: a value that is not
//! a signed JWT, has no `exp` or has expired is a configuration error naming the source, never
//! quoting the assertion. When the server answers `invalid_client`, the source is read once
//! more ([`AssertionSource::reload`]) and a changed assertion is tried before the failure
//! counts, as for a [`SecretSource`](super::SecretSource).
//!
//! # Example
//!
//! ```no_run
//! use tower_client_credentials::client_credentials::FileAssertion;
//! use tower_client_credentials::ClientCredentials;
//!
//! # fn main() -> Result<(), tower_client_credentials::Error> {
//! let credentials = ClientCredentials::builder()
//!     .token_endpoint("https://login.example/oauth2/v2.0/token")?
//!     .client_id("my-client")
//!     .client_assertion_source(FileAssertion::new("/var/run/secrets/tokens/idp-token"))
//!     .scopes(["api://orders/.default"])
//!     .build()?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};

use super::secret::{FileSecret, SecretSource, SecretSourceError};
use crate::error::{Error, ErrorKind};
use crate::source::BoxFuture;

/// Where the client assertion comes from: a JWT signed by someone else (the platform the
/// workload runs on), read at every token request and sent as the RFC 7523 client assertion.
///
/// Implementations must keep the assertion out of errors, logs and `Debug`: it is a bearer
/// credential until it expires. A failure should be an [`Error::assertion_source`] naming the
/// source, never its content. The crate checks every assertion a source gives (a signed JWT
/// with an `exp` in the future) before it is sent.
///
/// # Example
///
/// An assertion fetched from a local identity agent at every token request:
///
/// ```
/// use secrecy::SecretString;
/// use tower_client_credentials::client_credentials::AssertionSource;
/// use tower_client_credentials::{BoxFuture, Error};
///
/// #[derive(Debug)]
/// struct IdentityAgent {
///     url: String,
/// }
///
/// impl AssertionSource for IdentityAgent {
///     fn assertion(&self) -> BoxFuture<'_, Result<SecretString, Error>> {
///         Box::pin(async move {
///             // A real implementation asks the agent here.
///             let fetched: Result<String, std::io::Error> =
///                 Err(std::io::ErrorKind::ConnectionRefused.into());
///             fetched
///                 .map(SecretString::from)
///                 .map_err(|e| Error::assertion_source(self.name(), e))
///         })
///     }
///
///     fn name(&self) -> String {
///         format!("identity agent {}", self.url)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let agent = IdentityAgent { url: "http://127.0.0.1:9/token".into() };
/// let error = agent.assertion().await.unwrap_err();
/// assert!(error.to_string().contains("identity agent http://127.0.0.1:9/token"));
/// # }
/// ```
pub trait AssertionSource: fmt::Debug + Send + Sync + 'static {
    /// The current assertion (a compact JWS). Called once per token request, and once more
    /// for the retry a DPoP nonce challenge asks for.
    fn assertion(&self) -> BoxFuture<'_, Result<SecretString, Error>>;

    /// The current assertion, bypassing any cache the source keeps: called after the
    /// authorization server refused the assertion (`invalid_client`), before that failure
    /// counts. Default: [`assertion`](Self::assertion).
    fn reload(&self) -> BoxFuture<'_, Result<SecretString, Error>> {
        self.assertion()
    }

    /// Whether the assertion changed since it was last read, as far as a cheap check can tell
    /// (for [`FileAssertion`], the file's identity, size and modification time). Asked by the
    /// token cache only while it backs off after a failure: a change ends the backoff. Must not
    /// block for long; default `false`.
    fn changed(&self) -> bool {
        false
    }

    /// What names the source in errors and, with a shared token store, in the store key
    /// (with the client id): `file /var/run/secrets/tokens/idp-token`. Never the assertion, and
    /// stable across rotations (replicas reading the same file share their tokens). Default:
    /// the source's `Debug`.
    fn name(&self) -> String {
        format!("{self:?}")
    }
}

impl<T: AssertionSource + ?Sized> AssertionSource for Arc<T> {
    fn assertion(&self) -> BoxFuture<'_, Result<SecretString, Error>> {
        (**self).assertion()
    }

    fn reload(&self) -> BoxFuture<'_, Result<SecretString, Error>> {
        (**self).reload()
    }

    fn changed(&self) -> bool {
        (**self).changed()
    }

    fn name(&self) -> String {
        (**self).name()
    }
}

impl Error {
    /// The error of an [`AssertionSource`] that could not give a usable assertion: a
    /// configuration error naming `source` and the `problem`, with a [`SecretSourceError`] as
    /// its cause. Neither may contain the assertion.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_client_credentials::{Error, ErrorKind};
    ///
    /// let error = Error::assertion_source("file /var/run/secrets/tokens/idp-token", "it is empty");
    /// assert_eq!(error.kind(), ErrorKind::Configuration);
    /// assert_eq!(
    ///     error.to_string(),
    ///     "configuration error: the client assertion from file \
    ///      /var/run/secrets/tokens/idp-token is not usable (it is empty); check that the \
    ///      platform writes a current JWT there"
    /// );
    /// ```
    pub fn assertion_source(source: impl fmt::Display, problem: impl fmt::Display) -> Error {
        let cause = SecretSourceError::new(source.to_string(), problem.to_string());
        Error::new(
            ErrorKind::Configuration,
            format!(
                "the client assertion from {} is not usable ({}); check that the platform \
                 writes a current JWT there",
                cause.source_name(),
                cause.problem()
            ),
        )
        .with_source(cause)
    }
}

/// The client assertion in a file, read at every token request: a Kubernetes projected
/// service-account token, `AZURE_FEDERATED_TOKEN_FILE`, `AWS_WEB_IDENTITY_TOKEN_FILE`, a file a
/// sidecar writes.
///
/// Read as [`FileSecret`] reads a secret: symbolic links are followed at every read, so a
/// Kubernetes volume update (an atomic swap of the `..data` link) is seen at the next token
/// request and a file replaced by rename is never read half-written; one trailing line break
/// is dropped. A file that is missing, unreadable or empty, or that holds no signed JWT, or one
/// whose `exp` has passed, is a configuration error naming the path, never quoting the file.
/// `Debug` shows the path only.
///
/// # Example
///
/// ```
/// use tower_client_credentials::client_credentials::{AssertionSource, FileAssertion};
/// use tower_client_credentials::ClientCredentials;
///
/// # fn main() -> Result<(), tower_client_credentials::Error> {
/// let source = FileAssertion::new("/var/run/secrets/tokens/idp-token");
/// assert_eq!(source.name(), "file /var/run/secrets/tokens/idp-token");
/// let credentials = ClientCredentials::builder()
///     .token_endpoint("https://login.example/oauth2/v2.0/token")?
///     .client_id("my-client")
///     .client_assertion_source(source)
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct FileAssertion {
    file: FileSecret,
}

impl FileAssertion {
    /// The assertion in the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileAssertion {
            file: FileSecret::new(path),
        }
    }

    /// The path read.
    ///
    /// ```
    /// use tower_client_credentials::client_credentials::FileAssertion;
    ///
    /// let source = FileAssertion::new("/var/run/secrets/tokens/idp-token");
    /// assert_eq!(source.path().file_name().unwrap(), "idp-token");
    /// ```
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl AssertionSource for FileAssertion {
    fn assertion(&self) -> BoxFuture<'_, Result<SecretString, Error>> {
        Box::pin(async move {
            // The file is read as a secret file is; only the wording of its errors differs.
            self.file.secret().await.map_err(|error| {
                match error
                    .cause()
                    .and_then(|c| c.downcast_ref::<SecretSourceError>())
                {
                    Some(cause) => Error::assertion_source(cause.source_name(), cause.problem()),
                    None => error,
                }
            })
        })
    }

    fn changed(&self) -> bool {
        self.file.changed()
    }

    fn name(&self) -> String {
        format!("file {}", self.path().display())
    }
}

impl fmt::Debug for FileAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileAssertion")
            .field("path", &self.path())
            .finish()
    }
}

/// The assertion source of the credentials, with its name fixed when they are built.
pub(super) struct ClientAssertion {
    source: Arc<dyn AssertionSource>,
    name: String,
    /// The HMAC key of the store key: the source's name, never an assertion (it changes at
    /// every rotation, and is a credential).
    #[cfg(feature = "store")]
    pub(super) store_hmac_key: SecretString,
}

impl ClientAssertion {
    pub(super) fn new(source: Arc<dyn AssertionSource>) -> Self {
        let name = source.name();
        ClientAssertion {
            #[cfg(feature = "store")]
            store_hmac_key: SecretString::from(format!("assertion source {name}")),
            source,
            name,
        }
    }

    /// The current assertion, checked.
    pub(super) async fn read(&self) -> Result<SecretString, Error> {
        checked(
            &self.name,
            self.source.assertion().await?,
            SystemTime::now(),
        )
    }

    /// The assertion read again after a refusal, checked.
    pub(super) async fn reload(&self) -> Result<SecretString, Error> {
        checked(&self.name, self.source.reload().await?, SystemTime::now())
    }

    pub(super) fn changed(&self) -> bool {
        self.source.changed()
    }
}

impl fmt::Debug for ClientAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// `assertion` as `source` gave it, if it can be sent at `now`: a compact JWS (three base64url
/// parts, a header with a real `alg`, a claims object) whose `exp` (RFC 7523 §3 requires one)
/// is still ahead. The errors say what is wrong with it, never what it holds.
fn checked(source: &str, assertion: SecretString, now: SystemTime) -> Result<SecretString, Error> {
    let fail = |problem: &str| Err(Error::assertion_source(source, problem));
    let text = assertion.expose_secret();
    if text.is_empty() {
        return fail("it is empty");
    }
    let parts: Vec<&str> = text.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return fail(if parts.len() == 5 {
            "it is an encrypted JWT (JWE, five parts); the token endpoint needs a signed one \
             (JWS, three parts)"
        } else {
            "it is not a JWT (three base64url parts separated by dots)"
        });
    };
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let json = |part: &str| {
        engine
            .decode(part)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .filter(serde_json::Value::is_object)
    };
    let Some(header) = json(header) else {
        return fail("its header is not base64url-encoded JSON: it is not a JWT");
    };
    match header["alg"].as_str() {
        Some(alg) if !alg.eq_ignore_ascii_case("none") => {}
        _ => return fail("it is not signed (its header has no `alg`, or `alg` is `none`)"),
    }
    if signature.is_empty() || engine.decode(signature).is_err() {
        return fail("its signature is missing or not base64url");
    }
    let Some(claims) = json(claims) else {
        return fail("its claims are not base64url-encoded JSON: it is not a JWT");
    };
    let Some(exp) = claims["exp"].as_f64() else {
        return fail("it has no numeric `exp` claim, which RFC 7523 §3 requires");
    };
    let expires = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(exp.clamp(0.0, 1e11));
    if expires <= now {
        let ago = now.duration_since(expires).unwrap_or_default().as_secs();
        return fail(&format!(
            "it expired at {} ({ago} s ago)",
            httpdate::fmt_http_date(expires)
        ));
    }
    Ok(assertion)
}

#[cfg(test)]
mod tests;
