//! Where the client secret comes from: [`SecretSource`], read at every token request, so that a
//! rotated secret is used without a restart.
//!
//! The crate ships [`EnvSecret`] (an environment variable) and [`FileSecret`] (a file, such as a
//! Kubernetes secret volume, re-read at every token request); `client_secret("...")` on the
//! builder is a fixed source. Implement the trait for a secret manager.
//!
//! Token requests are rare (one per token lifetime, per credential set), so reading the source
//! each time costs nothing worth caching, and there is no window in which a replaced secret is
//! not yet seen. When the authorization server still answers `invalid_client`, the secret is
//! read once more ([`SecretSource::reload`]) and, if it changed, the request is made again
//! before the failure counts.
//!
//! # Example
//!
//! ```no_run
//! use tower_client_credentials::client_credentials::FileSecret;
//! use tower_client_credentials::ClientCredentials;
//!
//! # fn main() -> Result<(), tower_client_credentials::Error> {
//! let credentials = ClientCredentials::builder()
//!     .token_endpoint("https://idp.example/oauth2/default/v1/token")?
//!     .client_id("my-client")
//!     .client_secret_source(FileSecret::new("/var/run/secrets/idp/client-secret"))
//!     .build()?;
//! # Ok(())
//! # }
//! ```

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, ErrorKind};
use crate::source::BoxFuture;

/// Where the client secret comes from; read at every token request.
///
/// Implementations must not put the secret into an error, a log line or `Debug`. A failure
/// should be a [`SecretSourceError`] (through [`Error::secret_source`]) that names the source
/// (a variable name, a path, a secret's name in a vault), never its content.
///
/// # Example
///
/// A secret kept by a secret manager, fetched at every token request:
///
/// ```
/// use secrecy::SecretString;
/// use tower_client_credentials::client_credentials::SecretSource;
/// use tower_client_credentials::{BoxFuture, Error};
///
/// #[derive(Debug)]
/// struct Vault {
///     name: String,
/// }
///
/// impl SecretSource for Vault {
///     fn secret(&self) -> BoxFuture<'_, Result<SecretString, Error>> {
///         Box::pin(async move {
///             // A real implementation asks the secret manager here.
///             let fetched: Result<String, std::io::Error> = Ok("s3cret".to_string());
///             fetched
///                 .map(SecretString::from)
///                 .map_err(|e| Error::secret_source(format!("vault secret {}", self.name), e))
///         })
///     }
/// }
/// ```
pub trait SecretSource: fmt::Debug + Send + Sync + 'static {
    /// The current secret. Called once per token request.
    fn secret(&self) -> BoxFuture<'_, Result<SecretString, Error>>;

    /// The current secret, bypassing any cache the source keeps: called after the authorization
    /// server rejected the secret (`invalid_client`), before that failure counts. Default:
    /// [`secret`](Self::secret).
    fn reload(&self) -> BoxFuture<'_, Result<SecretString, Error>> {
        self.secret()
    }

    /// Whether the secret changed since it was last read, as far as a cheap check can tell
    /// (for [`FileSecret`], the file's identity, size and modification time). Asked by the
    /// token cache only while it backs off after a failure and a request finds no valid token:
    /// a change ends the backoff, and the next attempt starts a clean one. Must not block for
    /// long (it runs under the cache's lock); default `false`.
    fn changed(&self) -> bool {
        false
    }
}

impl<T: SecretSource + ?Sized> SecretSource for Arc<T> {
    fn secret(&self) -> BoxFuture<'_, Result<SecretString, Error>> {
        (**self).secret()
    }

    fn reload(&self) -> BoxFuture<'_, Result<SecretString, Error>> {
        (**self).reload()
    }

    fn changed(&self) -> bool {
        (**self).changed()
    }
}

/// Why a [`SecretSource`] could not give a secret (or an
/// [`AssertionSource`](super::AssertionSource) a usable assertion): which source, and what went
/// wrong, never the secret. The [`cause`](Error::cause) of the crate's [`Error`] (of kind
/// [`Configuration`](ErrorKind::Configuration)) when a source fails.
///
/// # Example
///
/// ```
/// use tower_client_credentials::client_credentials::SecretSourceError;
/// use tower_client_credentials::{Error, ErrorKind};
///
/// let error = Error::secret_source("environment variable IDP_SECRET", "it is not set");
/// assert_eq!(error.kind(), ErrorKind::Configuration);
/// let cause = error.cause().unwrap().downcast_ref::<SecretSourceError>().unwrap();
/// assert_eq!(cause.source_name(), "environment variable IDP_SECRET");
/// ```
#[derive(Debug, Clone)]
pub struct SecretSourceError {
    source_name: String,
    problem: String,
}

impl SecretSourceError {
    /// The cause naming `source_name` and `problem` (an assertion source's errors have it too).
    pub(super) fn new(source_name: String, problem: String) -> Self {
        SecretSourceError {
            source_name,
            problem,
        }
    }

    /// The source, as its implementation names it: `environment variable IDP_SECRET`, `file
    /// /var/run/secrets/idp/client-secret`.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// What went wrong.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl fmt::Display for SecretSourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source_name, self.problem)
    }
}

impl std::error::Error for SecretSourceError {}

impl Error {
    /// The error of a [`SecretSource`] that could not give a secret: a configuration error
    /// naming `source` and the `problem`, with a [`SecretSourceError`] as its cause.
    /// Neither may contain the secret.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_client_credentials::Error;
    ///
    /// let error = Error::secret_source("file /run/secrets/idp", "No such file or directory");
    /// assert_eq!(
    ///     error.to_string(),
    ///     "configuration error: the client secret from file /run/secrets/idp could not be \
    ///      read (No such file or directory); check that the source exists and holds the secret"
    /// );
    /// ```
    pub fn secret_source(source: impl fmt::Display, problem: impl fmt::Display) -> Error {
        let cause = SecretSourceError {
            source_name: source.to_string(),
            problem: problem.to_string(),
        };
        Error::new(
            ErrorKind::Configuration,
            format!(
                "the client secret from {} could not be read ({}); check that the source exists \
                 and holds the secret",
                cause.source_name, cause.problem
            ),
        )
        .with_source(cause)
    }
}

/// Checks a secret as read from `source`: the mistakes a copy-paste or an editor makes.
fn checked(source: &dyn fmt::Display, secret: SecretString) -> Result<SecretString, Error> {
    let text = secret.expose_secret();
    if text.is_empty() {
        return Err(Error::secret_source(source, "it is empty"));
    }
    if text.chars().any(char::is_control) {
        return Err(Error::secret_source(
            source,
            "it contains control characters (a line break inside it, or a stray carriage return)",
        ));
    }
    Ok(secret)
}

/// The secret given to `client_secret(..)`: never changes.
pub(super) struct FixedSecret(pub(super) SecretString);

impl SecretSource for FixedSecret {
    fn secret(&self) -> BoxFuture<'_, Result<SecretString, Error>> {
        let secret = self.0.clone();
        Box::pin(async move { Ok(secret) })
    }
}

impl fmt::Debug for FixedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The client secret in an environment variable, read at every token request.
///
/// A variable that is unset, empty, not UTF-8 or holds control characters is a configuration
/// error naming the variable.
///
/// # Example
///
/// ```
/// use tower_client_credentials::client_credentials::EnvSecret;
/// use tower_client_credentials::ClientCredentials;
///
/// # fn main() -> Result<(), tower_client_credentials::Error> {
/// let credentials = ClientCredentials::builder()
///     .token_endpoint("https://idp.example/oauth2/default/v1/token")?
///     .client_id("my-client")
///     .client_secret_source(EnvSecret::new("IDP_CLIENT_SECRET"))
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct EnvSecret {
    name: OsString,
}

impl EnvSecret {
    /// The secret in the environment variable `name`.
    pub fn new(name: impl Into<OsString>) -> Self {
        EnvSecret { name: name.into() }
    }

    fn read(&self) -> Result<SecretString, Error> {
        let source = format!("environment variable {}", self.name.to_string_lossy());
        let value = std::env::var_os(&self.name)
            .ok_or_else(|| Error::secret_source(&source, "it is not set"))?;
        let value = value
            .into_string()
            .map_err(|_| Error::secret_source(&source, "it is not valid UTF-8"))?;
        checked(&source, SecretString::from(value))
    }
}

impl SecretSource for EnvSecret {
    fn secret(&self) -> BoxFuture<'_, Result<SecretString, Error>> {
        Box::pin(async move { self.read() })
    }
}

/// The client secret in a file, read at every token request: a Kubernetes secret volume, a
/// Docker secret, a file a sidecar writes.
///
/// One line break at the end of the file is not part of the secret (editors and `echo` add
/// one). Reading follows symbolic links at every read, so a Kubernetes volume update (an atomic
/// swap of the `..data` link) is seen at the next token request, and a file replaced by rename
/// is never seen half-written. A file that is missing, unreadable, empty or not UTF-8 is a
/// configuration error naming the path.
///
/// Between reads, [`changed`](SecretSource::changed) compares the file's identity, size and
/// modification time with those of the last read, so that a cache backing off after a wrong
/// secret tries again as soon as the file is replaced.
///
/// # Example
///
/// ```
/// use tower_client_credentials::client_credentials::FileSecret;
/// use tower_client_credentials::ClientCredentials;
///
/// # fn main() -> Result<(), tower_client_credentials::Error> {
/// let credentials = ClientCredentials::builder()
///     .token_endpoint("https://idp.example/oauth2/default/v1/token")?
///     .client_id("my-client")
///     .client_secret_source(FileSecret::new("/var/run/secrets/idp/client-secret"))
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct FileSecret {
    path: Arc<Path>,
    /// The file as the last read found it: `None` before the first read, `Some(None)` when it
    /// could not be opened.
    last_read: Arc<Mutex<Option<Option<FileStamp>>>>,
}

/// What tells two versions of a file apart without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    device: u64,
    #[cfg(unix)]
    inode: u64,
}

impl FileStamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt as _;
        FileStamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            #[cfg(unix)]
            device: metadata.dev(),
            #[cfg(unix)]
            inode: metadata.ino(),
        }
    }
}

impl FileSecret {
    /// The secret in the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSecret {
            path: Arc::from(path.into()),
            last_read: Arc::new(Mutex::new(None)),
        }
    }

    /// The path read.
    ///
    /// ```
    /// use tower_client_credentials::client_credentials::FileSecret;
    ///
    /// let source = FileSecret::new("/var/run/secrets/idp/client-secret");
    /// assert_eq!(source.path().file_name().unwrap(), "client-secret");
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn source_name(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn record(&self, stamp: Option<FileStamp>) {
        *self.last_read.lock().unwrap_or_else(|e| e.into_inner()) = Some(stamp);
    }

    /// Reads the file (blocking: run off the async threads).
    fn read_blocking(&self) -> Result<SecretString, Error> {
        use std::io::Read as _;
        let source = self.source_name();
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) => {
                self.record(None);
                return Err(Error::secret_source(&source, e));
            }
        };
        // The stamp of the file actually opened (the target of the links as they were then).
        let stamp = file.metadata().ok().map(|m| FileStamp::of(&m));
        let mut bytes = Vec::new();
        let read = file.read_to_end(&mut bytes);
        self.record(stamp);
        if let Err(e) = read {
            secrecy::zeroize::Zeroize::zeroize(&mut bytes);
            return Err(Error::secret_source(&source, e));
        }
        let mut text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                secrecy::zeroize::Zeroize::zeroize(&mut e.into_bytes());
                return Err(Error::secret_source(&source, "it is not valid UTF-8"));
            }
        };
        // Shortened in place, so no copy of the secret is left behind.
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        checked(&source, SecretString::from(text))
    }
}

impl SecretSource for FileSecret {
    fn secret(&self) -> BoxFuture<'_, Result<SecretString, Error>> {
        let this = self.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || this.read_blocking()).await {
                Ok(result) => result,
                Err(_) => Err(Error::secret_source(
                    self.source_name(),
                    "the blocking read was cancelled (is the runtime shutting down?)",
                )),
            }
        })
    }

    fn changed(&self) -> bool {
        let last = self
            .last_read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(last) = last else {
            return false;
        };
        let now = std::fs::metadata(&self.path)
            .ok()
            .map(|m| FileStamp::of(&m));
        now != last
    }
}

impl fmt::Debug for FileSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSecret")
            .field("path", &self.path)
            .finish()
    }
}

#[cfg(test)]
mod tests;
