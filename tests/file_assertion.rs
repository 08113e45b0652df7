//! Client assertions the client does not sign (issue 23, workload identity): a "platform" (the
//! test) signs a short-lived JWT with its key and writes it to a file laid out as Kubernetes
//! projects a service-account token; `FileAssertion` sends it to the crate's loopback
//! authorization server, which verifies it with the platform's public key and accepts each
//! `jti` once. Also issue 19 defect 3: a `JwtSigner`'s assertion is not resent after a DPoP
//! nonce challenge. The same against panva's oidc-provider is in `tests/oidc_provider.rs`.
//!
//! Needs the feature `jwt-client-auth` (the test server verifies signatures with jsonwebtoken;
//! `FileAssertion` itself needs no feature). Unix only: the platform's file is laid out with
//! symbolic links, as Kubernetes lays it out.
#![cfg(unix)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use tower_client_credentials::client_credentials::{AssertionSource, FileAssertion};
use tower_client_credentials::testing::{AuthServer, Behavior};
use tower_client_credentials::{
    BoxFuture, ClientAuthMethod, ClientCredentials, ClientCredentialsBuilder, Error, ErrorKind,
    TokenSource,
};

mod common;
use common::jwt_part;

const CLIENT: &str = "workload";
const PLATFORM_KEY: &[u8] = include_bytes!("oidc-provider/test-platform-key.pem");
const PLATFORM_PUBLIC_KEY: &[u8] = include_bytes!("oidc-provider/test-platform-key.pub.pem");
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The platform: signs workload tokens for `CLIENT` (RFC 7523 §3 claims) and writes them as
/// the kubelet does, into a new directory swapped in by renaming the `..data` link.
struct Platform {
    dir: PathBuf,
    audience: String,
    version: u32,
}

impl Platform {
    fn new(audience: &str) -> Platform {
        let dir = std::env::temp_dir().join(format!(
            "tcc-platform-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
        Platform {
            dir,
            audience: audience.to_string(),
            version: 0,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("token")
    }

    /// A token valid for `lifetime_secs` from now (negative: already expired).
    fn sign(&self, lifetime_secs: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = serde_json::json!({
            "iss": CLIENT,
            "sub": CLIENT,
            "aud": self.audience,
            "iat": now,
            "exp": now + lifetime_secs,
            "jti": format!("{:032x}", fastrand::u128(..)),
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("platform".into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_rsa_pem(PLATFORM_KEY).unwrap(),
        )
        .unwrap()
    }

    /// Writes `token` (with a trailing newline, as some platforms do) and swaps it in.
    fn write(&mut self, token: &str) {
        self.version += 1;
        let version = format!("..2026_12_06_{}", self.version);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        std::fs::write(self.dir.join(&version).join("token"), format!("{token}\n")).unwrap();
        std::os::unix::fs::symlink(&version, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
    }

    /// Signs a fresh token, writes it, and returns it.
    fn rotate(&mut self) -> String {
        let token = self.sign(600);
        self.write(&token);
        token
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn server() -> AuthServer {
    AuthServer::builder()
        .private_key_jwt_client(CLIENT, PLATFORM_PUBLIC_KEY)
        .refuse_replayed_assertions()
        .start()
        .await
        .unwrap()
}

fn builder(server: &AuthServer) -> ClientCredentialsBuilder {
    ClientCredentials::builder()
        .token_endpoint(server.token_endpoint())
        .unwrap()
        .client_id(CLIENT)
}

fn sent_assertion(server: &AuthServer) -> Option<String> {
    let seen = server.last_request()?;
    seen.form
        .iter()
        .find(|(k, _)| k == "client_assertion")
        .map(|(_, v)| v.clone())
}

#[tokio::test]
async fn the_file_is_sent_as_the_client_assertion_and_read_at_every_token_request() {
    let server = server().await;
    let mut platform = Platform::new(&server.token_endpoint());
    let first = platform.rotate();
    let credentials = builder(&server)
        .client_assertion_source(FileAssertion::new(platform.path()))
        .scope("read")
        .build()
        .unwrap();
    assert_eq!(
        credentials.auth_method(),
        Some(ClientAuthMethod::PrivateKeyJwt)
    );
    let token = credentials.fetch_token().await.unwrap();
    assert!(server.is_valid_token(token.secret().expose_secret()));

    // RFC 7523 §2.2 on the wire: the file's JWT as it is, without its line break.
    let seen = server.last_request().unwrap();
    let field = |name: &str| {
        seen.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(field("grant_type"), Some("client_credentials"));
    assert_eq!(field("client_assertion_type"), Some(JWT_BEARER));
    assert_eq!(field("client_assertion"), Some(first.as_str()));
    assert_eq!(field("client_id"), Some(CLIENT));
    assert_eq!(field("client_secret"), None);
    assert_eq!(seen.method, Some(ClientAuthMethod::PrivateKeyJwt));

    // The platform rotates the file between token requests: the next one sends the new token
    // (the server accepts each `jti` once, so a stale read would be refused).
    for _ in 0..3 {
        let rotated = platform.rotate();
        credentials.fetch_token().await.unwrap();
        assert_eq!(sent_assertion(&server).as_deref(), Some(rotated.as_str()));
    }
    assert_eq!(server.token_requests(), 4);
}

#[tokio::test]
async fn an_expired_or_malformed_file_is_a_configuration_error_naming_the_file() {
    let server = server().await;
    let mut platform = Platform::new(&server.token_endpoint());
    let expired = platform.sign(-30);
    platform.write(&expired);
    let credentials = builder(&server)
        .client_assertion_source(FileAssertion::new(platform.path()))
        .build()
        .unwrap();
    let error = credentials.fetch_token().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Configuration);
    let shown = format!("{error} {error:?}");
    assert!(
        shown.contains(&platform.path().display().to_string()),
        "{shown}"
    );
    assert!(shown.contains("expired"), "{shown}");
    let signature = expired.rsplit('.').next().unwrap();
    assert!(!shown.contains(signature), "{shown}");
    assert_eq!(server.token_requests(), 0, "checked before it is sent");

    // A client secret put where the token should be.
    platform.write("not-a-jwt-but-a-client-secret");
    let error = credentials.fetch_token().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Configuration);
    assert!(error.to_string().contains("not a JWT"), "{error}");
    assert!(!format!("{error:?}").contains("client-secret"), "{error:?}");
    assert_eq!(server.token_requests(), 0);

    // The platform catches up: no restart needed.
    platform.rotate();
    credentials.fetch_token().await.unwrap();
}

/// Wraps a `FileAssertion`; after its next read, the platform writes `then` (the rotation
/// happens while the token request is in flight).
#[derive(Debug)]
struct RotatedDuringRequest {
    file: FileAssertion,
    then: Arc<Mutex<Option<(PathBuf, String)>>>,
}

impl AssertionSource for RotatedDuringRequest {
    fn assertion(&self) -> BoxFuture<'_, Result<SecretString, Error>> {
        Box::pin(async move {
            let read = self.file.assertion().await;
            if let Some((path, token)) = self.then.lock().unwrap().take() {
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, token).unwrap();
                std::fs::rename(tmp, path).unwrap();
            }
            read
        })
    }

    fn name(&self) -> String {
        self.file.name()
    }
}

#[tokio::test]
async fn invalid_client_rereads_the_file_once_before_the_failure_counts() {
    let server = server().await;
    let mut platform = Platform::new(&server.token_endpoint());
    let path = platform.path();
    let used = platform.rotate();
    let then = Arc::new(Mutex::new(None));
    let credentials = builder(&server)
        .client_assertion_source(RotatedDuringRequest {
            file: FileAssertion::new(&path),
            then: then.clone(),
        })
        .build()
        .unwrap();
    credentials.fetch_token().await.unwrap();
    assert_eq!(server.token_requests(), 1);

    // The server refuses the file's token (its `jti` is used up, as an expired or revoked one
    // would be); the platform has written a new one since it was read: it is tried at once.
    let fresh = platform.sign(600);
    *then.lock().unwrap() = Some((path.clone(), fresh.clone()));
    credentials.fetch_token().await.unwrap();
    assert_eq!(
        server.token_requests(),
        3,
        "the refusal, then the re-read file"
    );
    assert_eq!(sent_assertion(&server).as_deref(), Some(fresh.as_str()));

    // Unchanged after the refusal: one request, and the refusal is the error.
    platform.write(&used);
    let error = credentials.fetch_token().await.unwrap_err();
    assert_eq!(error.oauth_error().unwrap().error, "invalid_client");
    assert_eq!(server.token_requests(), 4);
    assert!(!error.to_string().contains(&used[..40]));
}

#[tokio::test]
async fn the_assertion_stays_out_of_errors_and_debug() {
    let server = server().await;
    let mut platform = Platform::new(&server.token_endpoint());
    let token = platform.rotate();
    let credentials = builder(&server)
        .client_assertion_source(FileAssertion::new(platform.path()))
        .build()
        .unwrap();
    // A careless server quotes the assertion back in its error.
    server.push_behavior([Behavior::EchoCredentials]);
    let error = credentials.fetch_token().await.unwrap_err();
    let signature = token.rsplit('.').next().unwrap();
    for shown in [
        format!("{error}"),
        format!("{error:?}"),
        format!("{credentials:?}"),
    ] {
        assert!(!shown.contains(&token), "{shown}");
        assert!(!shown.contains(signature), "{shown}");
    }
    assert!(format!("{credentials:?}").contains("token"));
}

#[cfg(feature = "store")]
#[test]
fn the_store_key_is_the_client_and_the_file_never_the_assertion() {
    let mut platform = Platform::new("https://idp.example/token");
    let first = platform.rotate();
    let credentials = |path: PathBuf| {
        ClientCredentials::builder()
            .token_endpoint("https://idp.example/token")
            .unwrap()
            .client_id(CLIENT)
            .client_assertion_source(FileAssertion::new(path))
            .build()
            .unwrap()
    };
    let before = credentials(platform.path()).store_key().unwrap();
    platform.rotate();
    let after = credentials(platform.path()).store_key().unwrap();
    assert_eq!(
        before.to_string(),
        after.to_string(),
        "stable across rotations"
    );
    assert!(!format!("{before:?} {before}").contains(&first[..40]));
    let other = credentials(platform.dir.join("other")).store_key().unwrap();
    assert_ne!(before.to_string(), other.to_string());
}

/// Issue 23 × DPoP: the token is bound to the key; the nonce retry reads the file again.
#[cfg(feature = "dpop")]
#[tokio::test]
async fn a_file_assertion_composes_with_dpop_and_its_nonce() {
    use tower_client_credentials::dpop::DpopKey;
    let server = AuthServer::builder()
        .private_key_jwt_client(CLIENT, PLATFORM_PUBLIC_KEY)
        .start()
        .await
        .unwrap();
    server.require_dpop_nonce(Some("as-nonce-1"));
    let mut platform = Platform::new(&server.token_endpoint());
    platform.rotate();
    let key = DpopKey::generate().unwrap();
    let credentials = builder(&server)
        .client_assertion_source(FileAssertion::new(platform.path()))
        .dpop(key.clone())
        .build()
        .unwrap();
    let token = credentials.fetch_token().await.unwrap();
    assert!(token.is_dpop());
    assert_eq!(
        server.dpop_jkt(token.secret().expose_secret()).as_deref(),
        Some(key.thumbprint())
    );
    assert_eq!(server.token_requests(), 2, "the challenge, then the retry");
}

/// Issue 19 defect 3: with a `JwtSigner` (a key in a KMS) and a server that wants a DPoP
/// nonce and accepts each assertion `jti` once, the retry after `use_dpop_nonce` must carry a
/// new assertion. On the main branch before the fix it resent the first one, refused as a
/// replay: `invalid_client`, a permanent failure at the first fetch and at every nonce rotation.
#[cfg(feature = "dpop")]
#[tokio::test]
async fn a_signer_signs_a_new_assertion_for_the_dpop_nonce_retry() {
    use tower_client_credentials::client_credentials::PemSigner;
    use tower_client_credentials::dpop::DpopKey;
    use tower_client_credentials::JwtSigningAlgorithm;

    #[derive(Debug)]
    struct Kms(PemSigner, Arc<Mutex<usize>>);
    impl tower_client_credentials::client_credentials::JwtSigner for Kms {
        fn algorithm(&self) -> JwtSigningAlgorithm {
            JwtSigningAlgorithm::RS256
        }
        fn sign<'a>(&'a self, input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
            *self.1.lock().unwrap() += 1;
            self.0.sign(input)
        }
    }

    let server = AuthServer::builder()
        .private_key_jwt_client(CLIENT, PLATFORM_PUBLIC_KEY)
        .refuse_replayed_assertions()
        .start()
        .await
        .unwrap();
    server.require_dpop_nonce(Some("as-nonce-1"));
    let signatures = Arc::new(Mutex::new(0));
    let signer = PemSigner::from_pem(JwtSigningAlgorithm::RS256, PLATFORM_KEY, None).unwrap();
    let credentials = builder(&server)
        .private_key_jwt_signer(Kms(signer, signatures.clone()))
        .dpop(DpopKey::generate().unwrap())
        .build()
        .unwrap();
    let token = credentials.fetch_token().await.unwrap();
    assert!(token.is_dpop());
    assert_eq!(server.token_requests(), 2, "the challenge, then the retry");
    assert_eq!(*signatures.lock().unwrap(), 2, "one signature per request");
    let retry_jti = jwt_part(&sent_assertion(&server).unwrap(), 1)["jti"].clone();

    // The nonce rotates: again one challenge and one retry, each with its own assertion.
    server.require_dpop_nonce(Some("as-nonce-2"));
    credentials.fetch_token().await.unwrap();
    assert_eq!(server.token_requests(), 4);
    assert_eq!(*signatures.lock().unwrap(), 4);
    assert_ne!(
        jwt_part(&sent_assertion(&server).unwrap(), 1)["jti"],
        retry_jti
    );

    // Without a challenge, one request and one signature.
    credentials.fetch_token().await.unwrap();
    assert_eq!(server.token_requests(), 5);
    assert_eq!(*signatures.lock().unwrap(), 5);
}

/// An expired file (the platform stopped refreshing it) sends the cache into backoff without a
/// token request; the platform's next rotation ends the backoff at once.
#[tokio::test]
async fn a_rotated_file_ends_the_backoff_after_an_expired_one() {
    use tower_client_credentials::TokenCache;
    let server = server().await;
    let mut platform = Platform::new(&server.token_endpoint());
    platform.write(&platform.sign(-5));
    let cache = TokenCache::builder(
        builder(&server)
            .client_assertion_source(FileAssertion::new(platform.path()))
            .build()
            .unwrap(),
    )
    // Long enough that only the change can explain a prompt second attempt.
    .backoff_base(Duration::from_secs(3600))
    .max_backoff(Duration::from_secs(3600))
    .permanent_backoff_base(Duration::from_secs(3600))
    .max_permanent_backoff(Duration::from_secs(3600))
    .build();
    let error = cache.token().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Configuration, "{error}");
    let error = cache.token().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::BackingOff, "{error}");
    assert_eq!(server.token_requests(), 0);

    let fresh = platform.rotate();
    cache.token().await.unwrap();
    assert_eq!(server.token_requests(), 1);
    assert_eq!(sent_assertion(&server).as_deref(), Some(fresh.as_str()));
}

/// Issue 23 × the shared store: two replicas reading the same projected file are one
/// credential set; the second takes the first's token from Redis, with no token request (the
/// server would refuse its replayed assertion anyway).
#[cfg(feature = "redis")]
#[tokio::test]
async fn replicas_reading_the_same_file_share_one_token_through_redis() {
    use std::process::{Command, Stdio};
    use tower_client_credentials::store::RedisStore;
    use tower_client_credentials::TokenCache;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _redis = Killed(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (see .ci/setup)"),
    );
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let server = server().await;
    let mut platform = Platform::new(&server.token_endpoint());
    let token = platform.rotate();
    let replica = || {
        let store = RedisStore::new(&url)
            .unwrap()
            .operation_timeout(Duration::from_secs(2));
        TokenCache::builder(
            builder(&server)
                .client_assertion_source(FileAssertion::new(platform.path()))
                .build()
                .unwrap(),
        )
        .store(store)
        .build()
    };
    let first = replica().token().await.unwrap();
    let second = replica().token().await.unwrap();
    assert_eq!(
        first.secret().expose_secret(),
        second.secret().expose_secret()
    );
    assert_eq!(server.token_requests(), 1);

    // No key in Redis names the assertion.
    let mut redis = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::{Read, Write};
    redis.write_all(b"KEYS *\r\n").unwrap();
    redis
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut reply = vec![0; 4096];
    let n = redis.read(&mut reply).unwrap();
    let keys = String::from_utf8_lossy(&reply[..n]);
    assert!(keys.starts_with('*') && keys != "*0\r\n", "{keys}");
    assert!(
        !keys.contains(&token[..20]) && !keys.contains("tcc-platform"),
        "{keys}"
    );
}
