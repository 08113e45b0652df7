//! Behaviour against a real third-party authorization server: panva's `oidc-provider` 9.13.3,
//! run by `tests/oidc-provider/server.mjs` (see its README), one instance per test, with
//! `STRICT_CLIENT_AUTH=1` so that a client using the wrong authentication method is refused.
//!
//! Needs `node` and `npm ci --prefix tests/oidc-provider`. Without them each test prints a loud
//! skip notice and passes, unless `REQUIRE_OIDC_PROVIDER=1` (CI) makes it fail instead.

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use secrecy::ExposeSecret;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tower::{service_fn, Service, ServiceExt};
use tower_client_credentials::{
    BearerAuthLayer, ClientAuthMethod, ClientCredentials, ClientCredentialsBuilder, ErrorKind,
    TokenSource,
};

mod common;
use common::{hyper_client, jwt_part};

const BASIC_CLIENT: &str = "basic-client";
const BASIC_SECRET: &str = "basic secret:with%special&chars";
const POST_CLIENT: &str = "post-client";
const POST_SECRET: &str = "post-secret";
const RESOURCE: &str = "https://api.example.test";
const API_KEY: &str = "api-key-7d2e41";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `server.mjs`. Dropping it closes the server's stdin (it exits on EOF) and kills it.
struct OidcProvider {
    issuer: String,
    // Field order is drop order: stdin closes first, then the child is killed and reaped.
    _stdin: ChildStdin,
    _stdout: Lines<BufReader<ChildStdout>>,
    _child: Child,
}

impl OidcProvider {
    /// Starts the server, or returns `None` (after a loud notice) when node or the npm packages
    /// are missing and `REQUIRE_OIDC_PROVIDER` is not set. Any other failure panics.
    async fn start(test: &str) -> Option<Self> {
        Self::start_with(test, &[]).await
    }

    /// [`start`](Self::start) with extra environment variables for `server.mjs` (`TLS=1`).
    async fn start_with(test: &str, env: &[(&str, &str)]) -> Option<Self> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-provider");
        let node = Command::new("node")
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await;
        let missing = match node {
            Err(e) => Some(format!("`node` could not be run ({e})")),
            Ok(out) if !out.status.success() => {
                Some(format!("`node --version` failed ({})", out.status))
            }
            Ok(_)
                if !dir
                    .join("node_modules/oidc-provider/package.json")
                    .is_file() =>
            {
                Some(format!(
                    "{} is missing; run `npm ci --prefix tests/oidc-provider`",
                    dir.join("node_modules/oidc-provider").display()
                ))
            }
            Ok(_) => None,
        };
        if let Some(reason) = missing {
            let required = std::env::var("REQUIRE_OIDC_PROVIDER")
                .is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"));
            if required {
                panic!("REQUIRE_OIDC_PROVIDER is set but the oidc-provider harness cannot run: {reason}");
            }
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPED {test}: {reason}.\n\
                 !!! This test did NOT run against oidc-provider; set REQUIRE_OIDC_PROVIDER=1 to\n\
                 !!! make this a failure.\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            return None;
        }

        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .current_dir(&dir)
            .env("PORT", "0")
            .env("STRICT_CLIENT_AUTH", "1")
            .env_remove("OIDC_EXIT_ON_STDIN_EOF")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node tests/oidc-provider/server.mjs");
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let line = match tokio::time::timeout(START_TIMEOUT, stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                let status = child.wait().await;
                panic!("server.mjs exited before listening ({status:?}); see its stderr above")
            }
            Ok(Err(e)) => panic!("reading server.mjs stdout: {e}"),
            Err(_) => panic!("server.mjs did not print LISTENING within {START_TIMEOUT:?}"),
        };
        let issuer = line
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("unexpected first stdout line from server.mjs: {line:?}"))
            .trim()
            .to_string();
        Some(OidcProvider {
            issuer,
            _stdin: stdin,
            _stdout: stdout,
            _child: child,
        })
    }

    fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// Asks the server whether it considers `token` active (RFC 7662), authenticating as
    /// `basic-client`. Only opaque tokens can be introspected by oidc-provider.
    async fn introspect(&self, token: &str) -> serde_json::Value {
        let client = hyper_client();
        let basic = format!(
            "{}:{}",
            form_urlencoded::byte_serialize(BASIC_CLIENT.as_bytes()).collect::<String>(),
            form_urlencoded::byte_serialize(BASIC_SECRET.as_bytes()).collect::<String>()
        );
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .finish();
        let request = Request::post(format!("{}/token/introspection", self.issuer))
            .header(
                AUTHORIZATION,
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(basic)
                ),
            )
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }
}

/// Starts the server or skips the test (see [`OidcProvider::start`]).
macro_rules! provider_or_skip {
    ($test:literal) => {
        match OidcProvider::start($test).await {
            Some(provider) => provider,
            None => return,
        }
    };
}

/// The paths of the HTTP requests the credentials made, in order.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Recorder {
    fn token_requests(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == "/token")
            .count()
    }
}

/// Sends the credentials' token and discovery requests through a plain hyper-util client that
/// records each request's path, so a test can count what actually reached oidc-provider.
fn recorded(builder: ClientCredentialsBuilder, recorder: &Recorder) -> ClientCredentialsBuilder {
    let client = hyper_client();
    let recorder = recorder.clone();
    builder.http_client(service_fn(move |request: Request<Full<Bytes>>| {
        recorder
            .0
            .lock()
            .unwrap()
            .push(request.uri().path().to_string());
        client.request(request)
    }))
}

#[tokio::test]
async fn token_through_discovery() {
    let provider = provider_or_skip!("token_through_discovery");
    let credentials = ClientCredentials::builder()
        .issuer(&provider.issuer)
        .unwrap()
        .client_id(BASIC_CLIENT)
        .client_secret(BASIC_SECRET)
        .scopes(["api:read", "api:write"])
        .build()
        .unwrap();
    assert_eq!(credentials.token_endpoint(), None, "nothing fetched yet");
    credentials.discover().await.unwrap();
    assert_eq!(
        credentials.token_endpoint().map(|u| u.to_string()),
        Some(provider.token_endpoint())
    );
    let token = credentials.fetch_token().await.unwrap();
    assert!(!token.secret().expose_secret().is_empty());
    assert_eq!(token.lifetime(), Some(Duration::from_secs(300)));
    assert_eq!(token.scope(), Some("api:read api:write"));
    // Both methods are advertised: Basic is tried first and, with STRICT_CLIENT_AUTH, accepted.
    assert_eq!(
        credentials.auth_method(),
        Some(ClientAuthMethod::ClientSecretBasic)
    );
    let introspection = provider.introspect(token.secret().expose_secret()).await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], BASIC_CLIENT);
}

#[tokio::test]
async fn token_through_the_token_endpoint() {
    let provider = provider_or_skip!("token_through_the_token_endpoint");
    let credentials = ClientCredentials::builder()
        .token_endpoint(provider.token_endpoint())
        .unwrap()
        .client_id(POST_CLIENT)
        .client_secret(POST_SECRET)
        .auth_method(ClientAuthMethod::ClientSecretPost)
        .build()
        .unwrap();
    assert_eq!(
        credentials.token_endpoint().map(|u| u.to_string()),
        Some(provider.token_endpoint())
    );
    let token = credentials.fetch_token().await.unwrap();
    // No scope requested: oidc-provider grants none and sends no `scope` member.
    assert_eq!(token.scope(), None);
    assert_eq!(token.lifetime(), Some(Duration::from_secs(300)));
    let introspection = provider.introspect(token.secret().expose_secret()).await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], POST_CLIENT);
}

#[tokio::test]
async fn client_secret_basic_encodes_special_characters() {
    // RFC 6749 §2.3.1: id and secret are form-urlencoded before base64. oidc-provider answers a
    // raw `%sp` with 400 invalid_request, and STRICT_CLIENT_AUTH refuses the body method.
    let provider = provider_or_skip!("client_secret_basic_encodes_special_characters");
    let credentials = ClientCredentials::builder()
        .token_endpoint(provider.token_endpoint())
        .unwrap()
        .client_id(BASIC_CLIENT)
        .client_secret(BASIC_SECRET)
        .scopes(["api:read api:write"])
        .auth_method(ClientAuthMethod::ClientSecretBasic)
        .build()
        .unwrap();
    let token = credentials.fetch_token().await.unwrap();
    assert_eq!(token.scope(), Some("api:read api:write"));
    let introspection = provider.introspect(token.secret().expose_secret()).await;
    assert_eq!(introspection["active"], true, "{introspection}");
}

#[tokio::test]
async fn strict_server_refuses_the_wrong_explicit_method() {
    // Guards the other tests: STRICT_CLIENT_AUTH really tells the two methods apart, and an
    // explicit method is not second-guessed.
    let provider = provider_or_skip!("strict_server_refuses_the_wrong_explicit_method");
    for (id, secret, method) in [
        (
            BASIC_CLIENT,
            BASIC_SECRET,
            ClientAuthMethod::ClientSecretPost,
        ),
        (
            POST_CLIENT,
            POST_SECRET,
            ClientAuthMethod::ClientSecretBasic,
        ),
    ] {
        let recorder = Recorder::default();
        let credentials = recorded(
            ClientCredentials::builder()
                .token_endpoint(provider.token_endpoint())
                .unwrap()
                .client_id(id)
                .client_secret(secret)
                .auth_method(method),
            &recorder,
        )
        .build()
        .unwrap();
        let err = credentials.fetch_token().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TokenEndpoint, "{err}");
        let oauth = err.oauth_error().unwrap();
        assert_eq!(oauth.error, "invalid_client", "{err}");
        assert!(
            oauth
                .error_description
                .as_deref()
                .is_some_and(|d| d.contains("but used")),
            "{err}"
        );
        assert_eq!(recorder.token_requests(), 1, "no fallback for {id}");
    }
}

#[tokio::test]
async fn client_secret_post_explicit() {
    let provider = provider_or_skip!("client_secret_post_explicit");
    let credentials = ClientCredentials::builder()
        .issuer(&provider.issuer)
        .unwrap()
        .client_id(POST_CLIENT)
        .client_secret(POST_SECRET)
        .scopes(["api:read", "api:write"])
        .auth_method(ClientAuthMethod::ClientSecretPost)
        .build()
        .unwrap();
    let token = credentials.fetch_token().await.unwrap();
    assert_eq!(token.scope(), Some("api:read api:write"));
    assert_eq!(
        credentials.auth_method(),
        Some(ClientAuthMethod::ClientSecretPost)
    );
}

#[tokio::test]
async fn auto_detection_falls_back_to_post_and_remembers_it() {
    let provider = provider_or_skip!("auto_detection_falls_back_to_post_and_remembers_it");
    let recorder = Recorder::default();
    let credentials = recorded(
        ClientCredentials::builder()
            .issuer(&provider.issuer)
            .unwrap()
            .client_id(POST_CLIENT)
            .client_secret(POST_SECRET)
            .scopes(["api:read"]),
        &recorder,
    )
    .build()
    .unwrap();
    assert_eq!(credentials.auth_method(), None);
    let token = credentials.fetch_token().await.unwrap();
    assert_eq!(token.scope(), Some("api:read"));
    assert_eq!(
        credentials.auth_method(),
        Some(ClientAuthMethod::ClientSecretPost)
    );
    // Discovery lists both methods: Basic first (401 invalid_client from the strict server),
    // then the form body.
    assert_eq!(recorder.token_requests(), 2, "{:?}", recorder.0);
    credentials.fetch_token().await.unwrap();
    assert_eq!(
        recorder.token_requests(),
        3,
        "post remembered: {:?}",
        recorder.0
    );
    let paths = recorder.0.lock().unwrap().clone();
    assert!(
        paths[0].starts_with("/.well-known/"),
        "discovery first: {paths:?}"
    );
    assert_eq!(
        paths
            .iter()
            .filter(|p| p.starts_with("/.well-known/"))
            .count(),
        1,
        "metadata fetched once: {paths:?}"
    );
}

#[tokio::test]
async fn auto_detection_keeps_basic_for_basic_client() {
    let provider = provider_or_skip!("auto_detection_keeps_basic_for_basic_client");
    let recorder = Recorder::default();
    let credentials = recorded(
        ClientCredentials::builder()
            .token_endpoint(provider.token_endpoint())
            .unwrap()
            .client_id(BASIC_CLIENT)
            .client_secret(BASIC_SECRET),
        &recorder,
    )
    .build()
    .unwrap();
    credentials.fetch_token().await.unwrap();
    assert_eq!(
        credentials.auth_method(),
        Some(ClientAuthMethod::ClientSecretBasic)
    );
    assert_eq!(recorder.token_requests(), 1);
}

#[tokio::test]
async fn requested_scopes_are_granted() {
    let provider = provider_or_skip!("requested_scopes_are_granted");
    for (scopes, granted) in [
        (&["api:read", "api:write"][..], Some("api:read api:write")),
        (&["api:write"][..], Some("api:write")),
        // oidc-provider drops unknown scopes without an error.
        (&["api:admin"][..], None),
    ] {
        let credentials = ClientCredentials::builder()
            .token_endpoint(provider.token_endpoint())
            .unwrap()
            .client_id(BASIC_CLIENT)
            .client_secret(BASIC_SECRET)
            .scopes(scopes.iter().copied())
            .build()
            .unwrap();
        let token = credentials.fetch_token().await.unwrap();
        assert_eq!(token.scope(), granted, "requested {scopes:?}");
    }
}

#[tokio::test]
async fn resource_indicator_gives_a_jwt_for_that_audience() {
    let provider = provider_or_skip!("resource_indicator_gives_a_jwt_for_that_audience");
    for (id, secret) in [(BASIC_CLIENT, BASIC_SECRET), (POST_CLIENT, POST_SECRET)] {
        let credentials = ClientCredentials::builder()
            .issuer(&provider.issuer)
            .unwrap()
            .client_id(id)
            .client_secret(secret)
            .scopes(["api:read", "api:write"])
            .resource(RESOURCE)
            .build()
            .unwrap();
        let token = credentials.fetch_token().await.unwrap();
        let jwt = token.secret().expose_secret();
        assert_eq!(jwt.split('.').count(), 3, "a JWT access token");
        let header = jwt_part(jwt, 0);
        assert_eq!(header["typ"], "at+jwt", "{header}");
        let claims = jwt_part(jwt, 1);
        assert_eq!(claims["aud"], RESOURCE, "{claims}");
        assert_eq!(claims["client_id"], id, "{claims}");
        assert_eq!(claims["sub"], id, "{claims}");
        assert_eq!(claims["iss"], provider.issuer.as_str(), "{claims}");
        assert_eq!(claims["scope"], "api:read api:write", "{claims}");
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(exp - iat, 300, "{claims}");
        assert_eq!(token.lifetime(), Some(Duration::from_secs(300)));
        assert_eq!(token.scope(), Some("api:read api:write"));
    }
}

#[tokio::test]
async fn unknown_resource_is_invalid_target() {
    let provider = provider_or_skip!("unknown_resource_is_invalid_target");
    let credentials = ClientCredentials::builder()
        .token_endpoint(provider.token_endpoint())
        .unwrap()
        .client_id(BASIC_CLIENT)
        .client_secret(BASIC_SECRET)
        .auth_method(ClientAuthMethod::ClientSecretBasic)
        .resource("https://other.example.test")
        .build()
        .unwrap();
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TokenEndpoint, "{err}");
    assert_eq!(err.oauth_error().unwrap().error, "invalid_target");
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert!(!err.is_transient());
}

#[tokio::test]
async fn wrong_secret_is_invalid_client_without_the_secret() {
    let provider = provider_or_skip!("wrong_secret_is_invalid_client_without_the_secret");
    const WRONG: &str = "wrong-secret-5b7f0c";
    for (id, method) in [
        (BASIC_CLIENT, Some(ClientAuthMethod::ClientSecretBasic)),
        (POST_CLIENT, Some(ClientAuthMethod::ClientSecretPost)),
        (POST_CLIENT, None),
    ] {
        let mut builder = ClientCredentials::builder()
            .issuer(&provider.issuer)
            .unwrap()
            .client_id(id)
            .client_secret(WRONG);
        if let Some(method) = method {
            builder = builder.auth_method(method);
        }
        let credentials = builder.build().unwrap();
        let err = credentials.fetch_token().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TokenEndpoint, "{err}");
        let oauth = err.oauth_error().unwrap();
        assert_eq!(oauth.error, "invalid_client", "{err}");
        assert_eq!(oauth.status, StatusCode::UNAUTHORIZED);
        assert!(!err.is_transient());
        let text = format!("{err} {err:?}");
        assert!(!text.contains(WRONG), "{text}");
        if method.is_none() {
            assert_eq!(credentials.auth_method(), None, "nothing worked");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_through_the_layer_share_one_token() {
    let provider = provider_or_skip!("concurrent_requests_through_the_layer_share_one_token");
    let recorder = Recorder::default();
    let credentials = recorded(
        ClientCredentials::builder()
            .issuer(&provider.issuer)
            .unwrap()
            .client_id(BASIC_CLIENT)
            .client_secret(BASIC_SECRET)
            .scopes(["api:read", "api:write"]),
        &recorder,
    )
    .build()
    .unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let api = {
        let seen = seen.clone();
        service_fn(move |request: Request<Full<Bytes>>| {
            let seen = seen.clone();
            async move {
                let headers = request.headers();
                let bearer = headers
                    .get(AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .filter(|t| !t.is_empty())
                    .map(str::to_string);
                let key_ok = headers.get("x-api-key").is_some_and(|v| v == API_KEY);
                let status = match bearer {
                    Some(token) if key_ok => {
                        seen.lock().unwrap().push(token);
                        StatusCode::OK
                    }
                    _ => StatusCode::UNAUTHORIZED,
                };
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .body(Full::<Bytes>::default())
                        .unwrap(),
                )
            }
        })
    };
    let layer = BearerAuthLayer::new(credentials.clone())
        .with_header("x-api-key", API_KEY)
        .unwrap();
    let client = tower::ServiceBuilder::new().layer(layer).service(api);

    const N: usize = 20;
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let mut client = client.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let request = Request::get(format!("http://api.example.test/items/{i}"))
                .body(Full::<Bytes>::default())
                .unwrap();
            client.ready().await?.call(request).await
        });
    }
    while let Some(result) = tasks.join_next().await {
        let response = result.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), N);
    assert!(
        seen.iter().all(|t| t == &seen[0]),
        "every request carried the same token"
    );
    assert_eq!(
        recorder.token_requests(),
        1,
        "one token request for {N} concurrent calls: {:?}",
        recorder.0
    );
    let introspection = provider.introspect(&seen[0]).await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], BASIC_CLIENT);
}

/// RFC 7523 JWT client authentication against oidc-provider (feature `jwt-client-auth`).
#[cfg(feature = "jwt-client-auth")]
mod jwt_client_auth {
    use super::*;
    use tower_client_credentials::JwtSigningAlgorithm;

    const SECRET_JWT_CLIENT: &str = "secret-jwt-client";
    const SECRET_JWT_SECRET: &str = "secret-jwt-secret-at-least-32-bytes-long!!";
    const KEY_JWT_CLIENT: &str = "key-jwt-client";
    const KEY_JWT_ES256_CLIENT: &str = "key-jwt-es256-client";
    /// Test-only keys; their public halves are registered in `server.mjs`.
    const RS256_KEY: &[u8] = include_bytes!("oidc-provider/test-client-key.pem");
    const ES256_KEY: &[u8] = include_bytes!("oidc-provider/test-es256-key.pem");
    /// Registered nowhere.
    const OTHER_KEY: &[u8] = include_bytes!("oidc-provider/test-other-key.pem");

    #[tokio::test]
    async fn client_secret_jwt_gets_a_token() {
        let provider = provider_or_skip!("client_secret_jwt_gets_a_token");
        let recorder = Recorder::default();
        let credentials = recorded(
            ClientCredentials::builder()
                .issuer(&provider.issuer)
                .unwrap()
                .client_id(SECRET_JWT_CLIENT)
                .client_secret(SECRET_JWT_SECRET)
                .scopes(["api:read"])
                .resource(RESOURCE)
                .auth_method(ClientAuthMethod::ClientSecretJwt),
            &recorder,
        )
        .build()
        .unwrap();
        let token = credentials.fetch_token().await.unwrap();
        let claims = jwt_part(token.secret().expose_secret(), 1);
        assert_eq!(claims["client_id"], SECRET_JWT_CLIENT);
        assert_eq!(claims["scope"], "api:read");
        // A second request needs a fresh assertion (oidc-provider refuses a replayed `jti`).
        let again = ClientCredentials::builder()
            .token_endpoint(provider.token_endpoint())
            .unwrap()
            .client_id(SECRET_JWT_CLIENT)
            .client_secret(SECRET_JWT_SECRET)
            .auth_method(ClientAuthMethod::ClientSecretJwt)
            .build()
            .unwrap();
        again.fetch_token().await.unwrap();
        again.fetch_token().await.unwrap();
        assert_eq!(recorder.token_requests(), 1);
    }

    #[tokio::test]
    async fn private_key_jwt_gets_a_token_with_rs256_and_es256() {
        let provider = provider_or_skip!("private_key_jwt_gets_a_token_with_rs256_and_es256");
        for (id, algorithm, pem, kid) in [
            (
                KEY_JWT_CLIENT,
                JwtSigningAlgorithm::RS256,
                RS256_KEY,
                Some("test-client-rs256"),
            ),
            (
                KEY_JWT_ES256_CLIENT,
                JwtSigningAlgorithm::ES256,
                ES256_KEY,
                None,
            ),
        ] {
            let credentials = ClientCredentials::builder()
                .token_endpoint(provider.token_endpoint())
                .unwrap()
                .client_id(id)
                .private_key_jwt(algorithm, pem, kid)
                .unwrap()
                .scopes(["api:read api:write"])
                .build()
                .unwrap();
            let token = credentials.fetch_token().await.unwrap();
            assert_eq!(token.scope(), Some("api:read api:write"), "{id}");
            let introspection = provider.introspect(token.secret().expose_secret()).await;
            assert_eq!(introspection["active"], true, "{introspection}");
            assert_eq!(introspection["client_id"], id);
            // Fresh assertion: a second request is not a replay.
            credentials.fetch_token().await.unwrap();
        }
    }

    /// The signing hook: the key stays with the signer (as in a KMS), which is asked once per
    /// token request, asynchronously.
    #[tokio::test]
    async fn private_key_jwt_with_an_async_signer() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tower_client_credentials::client_credentials::{JwtSigner, PemSigner};
        use tower_client_credentials::{BoxFuture, Error};

        #[derive(Debug)]
        struct RemoteSigner {
            key: PemSigner,
            calls: AtomicUsize,
        }

        impl JwtSigner for RemoteSigner {
            fn algorithm(&self) -> JwtSigningAlgorithm {
                self.key.algorithm()
            }
            fn key_id(&self) -> Option<&str> {
                self.key.key_id()
            }
            fn sign<'a>(&'a self, input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
                Box::pin(async move {
                    self.calls.fetch_add(1, Ordering::SeqCst);
                    // A round trip to the KMS.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    self.key.sign(input).await
                })
            }
        }

        let provider = provider_or_skip!("private_key_jwt_with_an_async_signer");
        for (id, algorithm, pem, kid) in [
            (
                KEY_JWT_CLIENT,
                JwtSigningAlgorithm::RS256,
                RS256_KEY,
                Some("test-client-rs256"),
            ),
            (
                KEY_JWT_ES256_CLIENT,
                JwtSigningAlgorithm::ES256,
                ES256_KEY,
                None,
            ),
        ] {
            let signer = Arc::new(RemoteSigner {
                key: PemSigner::from_pem(algorithm, pem, kid).unwrap(),
                calls: AtomicUsize::new(0),
            });
            let credentials = ClientCredentials::builder()
                .token_endpoint(provider.token_endpoint())
                .unwrap()
                .client_id(id)
                .private_key_jwt_signer(signer.clone())
                .scopes(["api:read"])
                .build()
                .unwrap();
            assert_eq!(
                credentials.auth_method(),
                Some(ClientAuthMethod::PrivateKeyJwt)
            );
            let token = credentials.fetch_token().await.unwrap();
            let introspection = provider.introspect(token.secret().expose_secret()).await;
            assert_eq!(introspection["active"], true, "{introspection}");
            assert_eq!(introspection["client_id"], id);
            credentials.fetch_token().await.unwrap();
            assert_eq!(signer.calls.load(Ordering::SeqCst), 2, "{id}");
        }
    }

    /// Issue 23: a workload identity token from a file. The test plays the platform: it signs a
    /// short-lived JWT with the platform's key (whose public half `workload-client` registers)
    /// and writes it to the file as the kubelet does, rotating it between token requests.
    /// oidc-provider accepts each `jti` once, so every success proves the file was read again.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_file_assertion_from_the_platform_gets_a_token_and_follows_its_rotation() {
        use tower_client_credentials::client_credentials::FileAssertion;
        const WORKLOAD_CLIENT: &str = "workload-client";
        const PLATFORM_KEY: &[u8] = include_bytes!("oidc-provider/test-platform-key.pem");

        let provider = provider_or_skip!(
            "a_file_assertion_from_the_platform_gets_a_token_and_follows_its_rotation"
        );
        let dir = std::env::temp_dir().join(format!(
            "tcc-oidc-platform-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
        let mut version = 0;
        let mut rotate = || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let claims = serde_json::json!({
                "iss": WORKLOAD_CLIENT,
                "sub": WORKLOAD_CLIENT,
                "aud": provider.token_endpoint(),
                "iat": now,
                "exp": now + 300,
                "jti": format!("{:032x}", fastrand::u128(..)),
            });
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            header.kid = Some("platform".into());
            let token = jsonwebtoken::encode(
                &header,
                &claims,
                &jsonwebtoken::EncodingKey::from_rsa_pem(PLATFORM_KEY).unwrap(),
            )
            .unwrap();
            version += 1;
            let data = format!("..2026_{version}");
            std::fs::create_dir(dir.join(&data)).unwrap();
            std::fs::write(dir.join(&data).join("token"), &token).unwrap();
            std::os::unix::fs::symlink(&data, dir.join("..data_tmp")).unwrap();
            std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
            token
        };
        let recorder = Recorder::default();
        let credentials = recorded(
            ClientCredentials::builder()
                .issuer(&provider.issuer)
                .unwrap()
                .client_id(WORKLOAD_CLIENT)
                .client_assertion_source(FileAssertion::new(dir.join("token")))
                .scopes(["api:read"]),
            &recorder,
        )
        .build()
        .unwrap();
        for round in 1..=3 {
            rotate();
            let access = credentials.fetch_token().await.unwrap();
            let introspection = provider.introspect(access.secret().expose_secret()).await;
            assert_eq!(introspection["active"], true, "{introspection}");
            assert_eq!(introspection["client_id"], WORKLOAD_CLIENT);
            assert_eq!(recorder.token_requests(), round);
        }
        // Not rotated: oidc-provider refuses the replay; the file is read once more, unchanged,
        // so the refusal is the error, after one request, never quoting the assertion.
        let token = std::fs::read_to_string(dir.join("token")).unwrap();
        let error = credentials.fetch_token().await.unwrap_err();
        assert_eq!(
            error.oauth_error().unwrap().error,
            "invalid_client",
            "{error}"
        );
        assert_eq!(recorder.token_requests(), 4);
        let signature = token.rsplit('.').next().unwrap();
        assert!(!format!("{error} {error:?}").contains(signature));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn wrong_secret_or_key_is_invalid_client() {
        let provider = provider_or_skip!("wrong_secret_or_key_is_invalid_client");
        const WRONG: &str = "wrong-secret-but-long-enough-for-hs256-0123";
        let wrong_secret = ClientCredentials::builder()
            .token_endpoint(provider.token_endpoint())
            .unwrap()
            .client_id(SECRET_JWT_CLIENT)
            .client_secret(WRONG)
            .auth_method(ClientAuthMethod::ClientSecretJwt)
            .build()
            .unwrap();
        let wrong_key = ClientCredentials::builder()
            .token_endpoint(provider.token_endpoint())
            .unwrap()
            .client_id(KEY_JWT_CLIENT)
            .private_key_jwt(JwtSigningAlgorithm::RS256, OTHER_KEY, None)
            .unwrap()
            .build()
            .unwrap();
        // The right secret, but a client registered for private_key_jwt.
        let wrong_method = ClientCredentials::builder()
            .token_endpoint(provider.token_endpoint())
            .unwrap()
            .client_id(KEY_JWT_CLIENT)
            .client_secret(SECRET_JWT_SECRET)
            .auth_method(ClientAuthMethod::ClientSecretJwt)
            .build()
            .unwrap();
        for credentials in [wrong_secret, wrong_key, wrong_method] {
            let err = credentials.fetch_token().await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::TokenEndpoint, "{err}");
            let oauth = err.oauth_error().unwrap();
            assert_eq!(oauth.error, "invalid_client", "{err}");
            assert_eq!(oauth.status, StatusCode::UNAUTHORIZED);
            let text = format!("{err} {err:?} {credentials:?}");
            assert!(
                !text.contains(WRONG) && !text.contains("PRIVATE KEY"),
                "{text}"
            );
        }
    }
}

/// The multi-audience layer against oidc-provider's resource indicators (RFC 8707): each
/// origin's requests carry a JWT whose `aud` is that origin's resource, one token request per
/// resource.
#[tokio::test]
async fn multi_audience_layer_gets_a_token_per_resource() {
    use tower::Layer as _;
    use tower_client_credentials::audience::MultiAudienceLayer;
    use tower_client_credentials::client_credentials::CredentialSet;

    const SECOND_RESOURCE: &str = "https://api-b.example.test";
    let provider = provider_or_skip!("multi_audience_layer_gets_a_token_per_resource");
    let credentials = ClientCredentials::builder()
        .issuer(&provider.issuer)
        .unwrap()
        .client_id(BASIC_CLIENT)
        .client_secret(BASIC_SECRET)
        .build()
        .unwrap();
    let set = |resource: &str| {
        CredentialSet::new()
            .resource(resource)
            .scopes(["api:read", "api:write"])
    };
    let layer = MultiAudienceLayer::builder(credentials)
        .origin(RESOURCE, set(RESOURCE))
        .origin(SECOND_RESOURCE, set(SECOND_RESOURCE))
        .refuse_unknown_origins()
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut client = layer.layer(service_fn({
        let seen = seen.clone();
        move |request: Request<Full<Bytes>>| {
            let token = request.headers()[AUTHORIZATION]
                .to_str()
                .unwrap()
                .to_string();
            let aud = jwt_part(token.strip_prefix("Bearer ").unwrap(), 1)["aud"].clone();
            seen.lock().unwrap().push((request.uri().to_string(), aud));
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
        }
    }));
    for _ in 0..2 {
        for origin in [RESOURCE, SECOND_RESOURCE] {
            let request = Request::get(format!("{origin}/items"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            client.ready().await.unwrap().call(request).await.unwrap();
        }
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    for (uri, aud) in seen.iter() {
        assert!(
            uri.starts_with(aud.as_str().unwrap()),
            "{uri} got aud {aud}"
        );
    }
    assert_eq!(layer.sets_in_use(), 2);
    let first = layer.cache(&set(RESOURCE)).unwrap().cached().unwrap();
    let second = layer
        .cache(&set(SECOND_RESOURCE))
        .unwrap()
        .cached()
        .unwrap();
    assert_ne!(
        first.secret().expose_secret(),
        second.secret().expose_secret()
    );
}

/// RFC 9449 DPoP against oidc-provider (feature `dpop`): its `dPoP` feature verifies the token
/// request's proof (signature, `htm`, `htu`, `iat`, `jti`, nonce) and binds the token to the key.
#[cfg(feature = "dpop")]
mod dpop {
    use super::*;
    use tower_client_credentials::dpop::{DpopAlgorithm, DpopKey};

    const DPOP_CLIENT: &str = "dpop-client";
    const DPOP_SECRET: &str = "dpop-secret";
    const DPOP_NONCE_CLIENT: &str = "dpop-nonce-client";
    const DPOP_NONCE_SECRET: &str = "dpop-nonce-secret";

    fn dpop_credentials(
        provider: &OidcProvider,
        recorder: &Recorder,
        (id, secret): (&str, &str),
        key: &DpopKey,
    ) -> ClientCredentialsBuilder {
        recorded(
            ClientCredentials::builder()
                .token_endpoint(provider.token_endpoint())
                .unwrap()
                .client_id(id)
                .client_secret(secret)
                .scopes(["api:read"])
                .dpop(key.clone()),
            recorder,
        )
    }

    /// RFC 7638 thumbprint of the `jwk` in a proof's header, computed here independently.
    fn proof_jkt(proof: &str) -> String {
        let jwk = &jwt_part(proof, 0)["jwk"];
        let canonical = match jwk["kty"].as_str().unwrap() {
            "EC" => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                jwk["crv"].as_str().unwrap(),
                jwk["x"].as_str().unwrap(),
                jwk["y"].as_str().unwrap()
            ),
            "OKP" => format!(
                r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
                jwk["crv"].as_str().unwrap(),
                jwk["x"].as_str().unwrap()
            ),
            other => panic!("unexpected kty {other}"),
        };
        let hash = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash.as_ref())
    }

    #[tokio::test]
    async fn a_dpop_bound_token_is_obtained_and_used() {
        let provider = provider_or_skip!("a_dpop_bound_token_is_obtained_and_used");
        for key in [
            DpopKey::generate().unwrap(),
            DpopKey::generate_with(DpopAlgorithm::EdDSA).unwrap(),
        ] {
            let recorder = Recorder::default();
            let credentials =
                dpop_credentials(&provider, &recorder, (DPOP_CLIENT, DPOP_SECRET), &key)
                    .build()
                    .unwrap();
            // The API side: what the layer sends, checked against what oidc-provider bound.
            let seen = Arc::new(Mutex::new(None::<(String, String)>));
            let api = {
                let seen = seen.clone();
                service_fn(move |request: Request<Full<Bytes>>| {
                    let header = |name| request.headers()[name].to_str().unwrap().to_string();
                    *seen.lock().unwrap() = Some((header("authorization"), header("dpop")));
                    async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
                })
            };
            let layer = BearerAuthLayer::new(credentials).dpop(key.clone());
            let mut client = tower::ServiceBuilder::new().layer(layer).service(api);
            let request = Request::post("https://api.example.test/items?x=1")
                .body(Full::<Bytes>::default())
                .unwrap();
            client.ready().await.unwrap().call(request).await.unwrap();
            assert_eq!(recorder.token_requests(), 1);

            let (authorization, proof) = seen.lock().unwrap().take().unwrap();
            let token = authorization
                .strip_prefix("DPoP ")
                .expect("a DPoP authorization");
            let introspection = provider.introspect(token).await;
            assert_eq!(introspection["active"], true, "{introspection}");
            assert_eq!(introspection["token_type"], "DPoP", "{introspection}");
            assert_eq!(
                introspection["cnf"]["jkt"],
                key.thumbprint(),
                "{introspection}"
            );
            let claims = jwt_part(&proof, 1);
            assert_eq!(claims["htm"], "POST");
            assert_eq!(claims["htu"], "https://api.example.test/items");
            let ath = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            assert_eq!(
                claims["ath"],
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ath.as_ref())
            );
            assert_eq!(proof_jkt(&proof), key.thumbprint());
        }
    }

    #[tokio::test]
    async fn a_dpop_bound_jwt_carries_cnf_jkt() {
        let provider = provider_or_skip!("a_dpop_bound_jwt_carries_cnf_jkt");
        let key = DpopKey::generate().unwrap();
        let recorder = Recorder::default();
        let credentials = dpop_credentials(&provider, &recorder, (DPOP_CLIENT, DPOP_SECRET), &key)
            .resource(RESOURCE)
            .build()
            .unwrap();
        let token = credentials.fetch_token().await.unwrap();
        assert!(token.is_dpop());
        let claims = jwt_part(token.secret().expose_secret(), 1);
        assert_eq!(claims["cnf"]["jkt"], key.thumbprint(), "{claims}");
        assert_eq!(claims["aud"], RESOURCE);
    }

    #[tokio::test]
    async fn a_nonce_challenge_is_answered_and_the_nonce_kept() {
        let provider = provider_or_skip!("a_nonce_challenge_is_answered_and_the_nonce_kept");
        let key = DpopKey::generate().unwrap();
        let recorder = Recorder::default();
        let credentials = dpop_credentials(
            &provider,
            &recorder,
            (DPOP_NONCE_CLIENT, DPOP_NONCE_SECRET),
            &key,
        )
        .build()
        .unwrap();
        let token = credentials.fetch_token().await.unwrap();
        assert_eq!(
            recorder.token_requests(),
            2,
            "use_dpop_nonce, then the retry"
        );
        let introspection = provider.introspect(token.secret().expose_secret()).await;
        assert_eq!(
            introspection["cnf"]["jkt"],
            key.thumbprint(),
            "{introspection}"
        );
        // The nonce from the answer serves the next request at once.
        credentials.fetch_token().await.unwrap();
        assert_eq!(recorder.token_requests(), 3);
    }

    /// Issue 19 defect 3: a `JwtSigner` (a key in a KMS) and a DPoP nonce. oidc-provider
    /// authenticates the client before it checks the proof, so the first request uses up the
    /// assertion's `jti`; the retry after `use_dpop_nonce` must carry a new assertion. Before
    /// the fix it resent the first: `invalid_client` at the first fetch.
    #[cfg(feature = "jwt-client-auth")]
    #[tokio::test]
    async fn a_signer_and_a_nonce_get_a_token_with_a_new_assertion_for_the_retry() {
        use tower_client_credentials::client_credentials::PemSigner;
        use tower_client_credentials::JwtSigningAlgorithm;
        const RS256_KEY: &[u8] = include_bytes!("oidc-provider/test-client-key.pem");

        let provider = provider_or_skip!(
            "a_signer_and_a_nonce_get_a_token_with_a_new_assertion_for_the_retry"
        );
        let key = DpopKey::generate().unwrap();
        let signer = PemSigner::from_pem(
            JwtSigningAlgorithm::RS256,
            RS256_KEY,
            Some("test-client-rs256"),
        )
        .unwrap();
        let recorder = Recorder::default();
        let credentials = recorded(
            ClientCredentials::builder()
                .token_endpoint(provider.token_endpoint())
                .unwrap()
                .client_id("key-jwt-dpop-nonce-client")
                .private_key_jwt_signer(signer)
                .scopes(["api:read"])
                .dpop(key.clone()),
            &recorder,
        )
        .build()
        .unwrap();
        let token = credentials.fetch_token().await.unwrap();
        assert!(token.is_dpop());
        assert_eq!(
            recorder.token_requests(),
            2,
            "use_dpop_nonce, then the retry"
        );
        let introspection = provider.introspect(token.secret().expose_secret()).await;
        assert_eq!(
            introspection["cnf"]["jkt"],
            key.thumbprint(),
            "{introspection}"
        );
        credentials.fetch_token().await.unwrap();
        assert_eq!(recorder.token_requests(), 3, "the nonce is kept");
    }

    #[tokio::test]
    async fn without_a_proof_the_dpop_client_is_refused() {
        let provider = provider_or_skip!("without_a_proof_the_dpop_client_is_refused");
        let credentials = ClientCredentials::builder()
            .token_endpoint(provider.token_endpoint())
            .unwrap()
            .client_id(DPOP_CLIENT)
            .client_secret(DPOP_SECRET)
            .build()
            .unwrap();
        let error = credentials.fetch_token().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::TokenEndpoint, "{error}");
        // oidc-provider 9 answers a missing proof for a `dpop_bound_access_tokens` client so.
        assert_eq!(
            error.oauth_error().unwrap().error,
            "invalid_grant",
            "{error}"
        );
    }
}

/// RFC 8705 mutual TLS against oidc-provider served over https (`TLS=1`, feature `mtls`): its
/// `mTLS` feature with `tlsClientAuth`, `selfSignedTlsClientAuth` and
/// `certificateBoundAccessTokens`. Test certificates: `tests/mtls/` (made with openssl).
#[cfg(feature = "mtls")]
mod mtls {
    use super::*;
    use tower_client_credentials::mtls::ClientIdentity;

    const CA: &[u8] = include_bytes!("mtls/ca.pem");

    fn identity(cert: &[u8], key: &[u8]) -> ClientIdentity {
        ClientIdentity::from_pem(cert, key)
            .unwrap()
            .with_root_certificates_pem(CA)
            .unwrap()
    }

    fn ca_issued() -> ClientIdentity {
        identity(
            include_bytes!("mtls/client.pem"),
            include_bytes!("mtls/client-key.pem"),
        )
    }

    fn self_signed() -> ClientIdentity {
        identity(
            include_bytes!("mtls/self-signed.pem"),
            include_bytes!("mtls/self-signed-key.pem"),
        )
    }

    #[tokio::test]
    async fn tls_client_auth_gets_a_certificate_bound_token_through_the_alias() {
        let provider = OidcProvider::start_with(
            "tls_client_auth_gets_a_certificate_bound_token_through_the_alias",
            &[("TLS", "1")],
        )
        .await;
        let Some(provider) = provider else { return };
        assert!(provider.issuer.starts_with("https://"));
        for (client_id, identity, credentials) in [
            ("mtls-client", ca_issued(), None),
            ("self-signed-mtls-client", self_signed(), Some(())),
        ] {
            let builder = ClientCredentials::builder()
                .issuer(&provider.issuer)
                .unwrap()
                .client_id(client_id)
                .resource(RESOURCE)
                .scopes(["api:read"]);
            let builder = match credentials {
                None => builder.tls_client_auth(identity.clone()),
                Some(()) => builder.self_signed_tls_client_auth(identity.clone()),
            };
            let credentials = builder.build().unwrap();
            // server.mjs refuses certificate-authenticated requests at the plain token
            // endpoint: a token means the `mtls_endpoint_aliases` one was used.
            let token = credentials.fetch_token().await.unwrap();
            let claims = jwt_part(token.secret().expose_secret(), 1);
            assert_eq!(claims["client_id"], client_id, "{claims}");
            assert_eq!(claims["cnf"]["x5t#S256"], identity.thumbprint(), "{claims}");
        }
    }

    #[tokio::test]
    async fn the_api_client_presents_the_same_certificate() {
        let provider = OidcProvider::start_with(
            "the_api_client_presents_the_same_certificate",
            &[("TLS", "1")],
        )
        .await;
        let Some(provider) = provider else { return };
        let identity = ca_issued();
        let credentials = ClientCredentials::builder()
            .issuer(&provider.issuer)
            .unwrap()
            .client_id("mtls-client")
            .tls_client_auth(identity.clone())
            .build()
            .unwrap();
        // The one line: a hyper-util client with the same identity, here calling the server's
        // introspection endpoint over mutual TLS with the bound (opaque) token.
        let api_client = identity.hyper_client::<Full<Bytes>>().unwrap();
        let token = credentials.fetch_token().await.unwrap();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{BASIC_CLIENT}:{}",
            form_urlencoded::byte_serialize(BASIC_SECRET.as_bytes()).collect::<String>()
        ));
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token.secret().expose_secret())
            .finish();
        let request = Request::post(format!("{}/token/introspection", provider.issuer))
            .header(AUTHORIZATION, format!("Basic {basic}"))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = api_client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let introspection: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(introspection["active"], true, "{introspection}");
        assert_eq!(
            introspection["cnf"]["x5t#S256"],
            identity.thumbprint(),
            "{introspection}"
        );
    }

    #[tokio::test]
    async fn a_certificate_the_client_did_not_register_is_invalid_client() {
        let provider = OidcProvider::start_with(
            "a_certificate_the_client_did_not_register_is_invalid_client",
            &[("TLS", "1")],
        )
        .await;
        let Some(provider) = provider else { return };
        let credentials = ClientCredentials::builder()
            .issuer(&provider.issuer)
            .unwrap()
            .client_id("mtls-client")
            .tls_client_auth(self_signed())
            .build()
            .unwrap();
        let error = credentials.fetch_token().await.unwrap_err();
        assert_eq!(
            error.oauth_error().unwrap().error,
            "invalid_client",
            "{error}"
        );
    }
}
