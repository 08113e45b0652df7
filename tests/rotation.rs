//! Secret rotation against the crate's authorization server and protected API on loopback: the
//! secret file replaced (a Kubernetes-style link swap) while requests keep flowing, the old
//! secret revoked after the overlap; a source that caches re-read after `invalid_client`; a
//! replaced file ending a backoff; a failing source named in its error.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use secrecy::SecretString;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_client_credentials::client_credentials::{FileSecret, SecretSource, SecretSourceError};
use tower_client_credentials::layer::RetryUnauthorized;
use tower_client_credentials::testing::{ApiServer, AuthServer};
use tower_client_credentials::{
    BearerAuthLayer, BoxFuture, ClientAuthMethod, ClientCredentials, Error, ErrorKind, TokenCache,
    TokenSource,
};

mod common;
use common::{hyper_client, HttpClient};

const API_KEY: &str = "rotation-api-key";
const FIRST: &str = "first-secret:1";
const SECOND: &str = "second-secret:2";
const THIRD: &str = "third-secret:3";

/// A directory laid out as Kubernetes mounts a secret volume: `client-secret` is a link to
/// `..data/client-secret`, and `..data` a link to the current version's directory, swapped
/// atomically (a rename over it) on every update.
struct SecretVolume {
    dir: PathBuf,
    versions: u32,
}

impl SecretVolume {
    fn new(secret: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tcc-rotation-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut volume = SecretVolume { dir, versions: 0 };
        volume.update(secret);
        std::os::unix::fs::symlink("..data/client-secret", volume.path()).unwrap();
        volume
    }

    fn path(&self) -> PathBuf {
        self.dir.join("client-secret")
    }

    fn update(&mut self, secret: &str) {
        self.versions += 1;
        let version = format!("..v{}", self.versions);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        // With a line break, as `kubectl create secret --from-file` of an edited file has.
        std::fs::write(
            self.dir.join(&version).join("client-secret"),
            format!("{secret}\n"),
        )
        .unwrap();
        let staged = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &staged).unwrap();
        std::fs::rename(&staged, self.dir.join("..data")).unwrap();
    }
}

impl Drop for SecretVolume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server with its default client holding `secret`, `client_secret_basic` only (so that
/// every refusal is one request, no fallback to the form body).
async fn auth_server(secret: &str) -> AuthServer {
    AuthServer::builder()
        .client(
            AuthServer::CLIENT_ID,
            secret,
            Some(ClientAuthMethod::ClientSecretBasic),
        )
        .start()
        .await
        .unwrap()
}

fn credentials(auth: &AuthServer, source: impl SecretSource) -> ClientCredentials {
    ClientCredentials::builder()
        .token_endpoint(auth.token_endpoint())
        .unwrap()
        .client_id(AuthServer::CLIENT_ID)
        .client_secret_source(source)
        .auth_method(ClientAuthMethod::ClientSecretBasic)
        .build()
        .unwrap()
}

async fn get(mut client: RetryUnauthorized<HttpClient>, url: String) -> bool {
    let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    match client.ready().await {
        Ok(ready) => matches!(ready.call(request).await, Ok(r) if r.status() == StatusCode::OK),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_fails_no_request_and_costs_one_token_request_per_secret() {
    let auth = auth_server(FIRST).await;
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    let mut volume = SecretVolume::new(FIRST);
    let cache = TokenCache::builder(credentials(&auth, FileSecret::new(volume.path())))
        // Two rotations follow each other within the default 5 s.
        .min_invalidate_interval(Duration::from_millis(100))
        .build();
    let client = ServiceBuilder::new()
        .layer(
            BearerAuthLayer::from_cache(cache)
                .with_header("x-api-key", API_KEY)
                .unwrap()
                .retry_on_unauthorized(),
        )
        .service(hyper_client());

    // About 100 requests a second, each in its own task, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let stop = stop.clone();
        let url = api.url();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut requests = tokio::task::JoinSet::new();
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                requests.spawn(get(client.clone(), url.clone()));
            }
            let (mut sent, mut failed) = (0, 0);
            while let Some(ok) = requests.join_next().await {
                sent += 1;
                failed += usize::from(!ok.unwrap());
            }
            (sent, failed)
        }
    });

    tokio::time::sleep(Duration::from_millis(300)).await;
    for (old, new) in [(FIRST, SECOND), (SECOND, THIRD)] {
        // The overlap: the server accepts both, the file is replaced, requests go on with the
        // cached token.
        auth.add_client_secret(AuthServer::CLIENT_ID, new);
        volume.update(new);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The old secret is revoked, and the tokens issued with it: the API rejects the cached
        // token, and the one refresh that follows must read the new secret.
        auth.revoke_client_secret(AuthServer::CLIENT_ID, old);
        auth.revoke_all();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (sent, failed) = load.await.unwrap();

    let per_secret = [FIRST, SECOND, THIRD].map(|s| auth.token_requests_with_secret(s));
    println!(
        "rotation under load: {sent} requests, {failed} failed, token requests per secret \
         {per_secret:?}, {} rejected by the API and retried",
        api.rejected()
    );
    assert!(sent >= 50, "the load ran: {sent} requests");
    assert_eq!(failed, 0, "no request failed during the rotations");
    assert_eq!(per_secret, [1, 1, 1], "one token request per secret");
    assert_eq!(auth.token_requests(), 3);
    assert!(api.rejected() >= 2, "each revocation was seen by the API");
}

/// A source that keeps what it read until asked to `reload`, as a secret-manager client with a
/// time-based cache would.
#[derive(Debug)]
struct CachingSource {
    upstream: Mutex<String>,
    cached: Mutex<Option<String>>,
    reloads: AtomicUsize,
}

impl CachingSource {
    fn new(secret: &str) -> Arc<Self> {
        Arc::new(CachingSource {
            upstream: Mutex::new(secret.to_string()),
            cached: Mutex::new(None),
            reloads: AtomicUsize::new(0),
        })
    }

    fn rotate(&self, secret: &str) {
        *self.upstream.lock().unwrap() = secret.to_string();
    }
}

impl SecretSource for CachingSource {
    fn secret(&self) -> BoxFuture<'_, Result<SecretString, Error>> {
        let mut cached = self.cached.lock().unwrap();
        let secret = cached
            .get_or_insert_with(|| self.upstream.lock().unwrap().clone())
            .clone();
        Box::pin(async move { Ok(SecretString::from(secret)) })
    }

    fn reload(&self) -> BoxFuture<'_, Result<SecretString, Error>> {
        self.reloads.fetch_add(1, Ordering::SeqCst);
        let secret = self.upstream.lock().unwrap().clone();
        *self.cached.lock().unwrap() = Some(secret.clone());
        Box::pin(async move { Ok(SecretString::from(secret)) })
    }
}

#[tokio::test]
async fn a_refused_secret_is_read_again_once_before_the_failure_counts() {
    let auth = auth_server(FIRST).await;
    let source = CachingSource::new(FIRST);
    let credentials = credentials(&auth, source.clone());
    credentials.fetch_token().await.unwrap();

    // Rotated upstream and at the server; the source still hands out its cached copy.
    auth.add_client_secret(AuthServer::CLIENT_ID, SECOND);
    auth.revoke_client_secret(AuthServer::CLIENT_ID, FIRST);
    source.rotate(SECOND);
    credentials.fetch_token().await.unwrap();
    assert_eq!(source.reloads.load(Ordering::SeqCst), 1);
    assert_eq!(auth.token_requests_with_secret(FIRST), 2, "one refused");
    assert_eq!(auth.token_requests_with_secret(SECOND), 1);

    // A secret that is wrong and stays wrong: read again once, not tried again.
    auth.revoke_client_secret(AuthServer::CLIENT_ID, SECOND);
    let error = credentials.fetch_token().await.unwrap_err();
    assert_eq!(error.oauth_error().unwrap().error, "invalid_client");
    assert_eq!(source.reloads.load(Ordering::SeqCst), 2);
    assert_eq!(auth.token_requests_with_secret(SECOND), 2);
}

#[tokio::test]
async fn a_replaced_secret_file_ends_the_backoff_at_once() {
    let auth = auth_server(SECOND).await;
    let mut volume = SecretVolume::new(FIRST);
    let cache = TokenCache::builder(credentials(&auth, FileSecret::new(volume.path())))
        // Long enough that only the change can explain a prompt second attempt.
        .backoff_base(Duration::from_secs(3600))
        .max_backoff(Duration::from_secs(3600))
        .build();
    let error = cache.token().await.unwrap_err();
    assert_eq!(error.oauth_error().unwrap().error, "invalid_client");
    let error = cache.token().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::BackingOff, "{error}");
    assert_eq!(auth.token_requests(), 1);

    volume.update(SECOND);
    cache.token().await.unwrap();
    assert_eq!(auth.token_requests_with_secret(FIRST), 1);
    assert_eq!(auth.token_requests_with_secret(SECOND), 1);
}

#[tokio::test]
async fn a_missing_secret_file_is_a_configuration_error_naming_the_path() {
    let auth = auth_server(FIRST).await;
    let path = Path::new("/nonexistent/tcc-rotation/client-secret");
    let error = credentials(&auth, FileSecret::new(path))
        .fetch_token()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Configuration);
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    let cause = error
        .cause()
        .and_then(|c| c.downcast_ref::<SecretSourceError>())
        .unwrap();
    assert_eq!(cause.source_name(), format!("file {}", path.display()));
    assert_eq!(auth.token_requests(), 0);
}
