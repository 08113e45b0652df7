//! No failure path shows a secret: every error a hostile or broken authorization server, a bad
//! configuration or an outage can cause is driven with a distinctive client secret, access
//! token and API key, and `Display`, `Debug`, the whole `source()` chain, the `Debug` of every
//! public type involved and all `tracing` output at TRACE are searched for any form of them.
//!
//! One test in its own process: the tracing subscriber is global, so that spawned refresh tasks
//! and every dependency log into the same buffer.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use secrecy::ExposeSecret;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_client_credentials::testing::{ApiServer, AuthServer, Behavior};
use tower_client_credentials::{
    BearerAuthLayer, ClientAuthMethod, ClientCredentials, ClientCredentialsBuilder, Error,
    TokenCache, TokenSource,
};

mod common;
use common::hyper_client;

const CLIENT_ID: &str = "leak-test-client";
/// Every form of it starts with, or encodes, `LeakCanary`; `:`, `+`, `/`, `%` and `é` make
/// its form-encoded and base64 forms differ from the raw one.
const SECRET: &str = "LeakCanary:S3cret+/%é";
const TOKEN: &str = "LeakToken.eyJzdWIiOiJsZWFrIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
const API_KEY: &str = "LeakApiKey-5d1c";

/// Captured tracing output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Every form in which the secrets could appear.
fn forbidden() -> Vec<String> {
    let form = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic = format!("{}:{}", form(CLIENT_ID), form(SECRET));
    let mut forms = vec![
        "LeakCanary".to_string(),
        "S3cret".to_string(),
        "LeakToken".to_string(),
        "c2lnbmF0dXJlLXNpZ25hdHVyZQ".to_string(),
        "LeakApiKey".to_string(),
    ];
    for engine in [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        forms.push(engine.encode(&basic));
        forms.push(engine.encode(format!("{CLIENT_ID}:{SECRET}")));
    }
    forms
}

/// Everything that was shown, for one search at the end.
#[derive(Default)]
struct Shown(Vec<(String, String)>);

impl Shown {
    fn text(&mut self, what: &str, text: impl Into<String>) {
        self.0.push((what.to_string(), text.into()));
    }

    fn debug(&mut self, what: &str, value: &impl std::fmt::Debug) {
        self.text(what, format!("{value:?}"));
        self.text(what, format!("{value:#?}"));
    }

    /// `Display`, `Debug` and the whole `source()` chain of `error`.
    fn error(&mut self, what: &str, error: &(dyn std::error::Error + 'static)) {
        let mut next = Some(error);
        let mut depth = 0;
        while let Some(error) = next {
            self.text(&format!("{what} (source {depth})"), error.to_string());
            self.text(&format!("{what} (source {depth})"), format!("{error:?}"));
            next = error.source();
            depth += 1;
        }
    }

    fn crate_error(&mut self, what: &str, error: &Error) {
        self.error(what, error);
        self.debug(what, &error.oauth_error());
        if let Some(cause) = error.cause() {
            self.error(&format!("{what} cause"), cause);
        }
    }

    fn assert_clean(&self, extra: &[String]) {
        let mut forbidden = forbidden();
        forbidden.extend(extra.iter().cloned());
        if std::env::var_os("LEAK_TEST_DUMP").is_some() {
            for (what, text) in &self.0 {
                eprintln!("== {what}\n{text}");
            }
        }
        for (what, text) in &self.0 {
            for form in &forbidden {
                assert!(
                    !text.contains(form.as_str()),
                    "{what} shows `{form}`:\n{text}"
                );
            }
            // A client assertion is a JWT: none may be shown either.
            assert!(
                !text.contains("eyJ0eXAi") && !text.contains("eyJhbGci"),
                "{what}:\n{text}"
            );
        }
    }
}

fn builder(auth: &AuthServer) -> ClientCredentialsBuilder {
    ClientCredentials::builder()
        .token_endpoint(auth.token_endpoint())
        .unwrap()
        .client_id(CLIENT_ID)
        .client_secret(SECRET)
}

async fn fetch_error(shown: &mut Shown, what: &str, credentials: &ClientCredentials) -> Error {
    let error = credentials.fetch_token().await.unwrap_err();
    shown.crate_error(what, &error);
    shown.debug(what, credentials);
    error
}

#[tokio::test]
async fn no_failure_path_shows_a_secret() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .unwrap();
    let mut shown = Shown::default();
    let auth = AuthServer::builder()
        .client(CLIENT_ID, SECRET, None)
        .start()
        .await
        .unwrap();

    // Bad configuration.
    let configured = [
        ClientCredentials::builder()
            .token_endpoint(format!("https://{CLIENT_ID}:{SECRET}@idp.example/token"))
            .map(drop),
        builder(&auth)
            .client_secret(format!("{SECRET}\n"))
            .build()
            .map(drop),
        builder(&auth)
            .param("client_secret", SECRET)
            .build()
            .map(drop),
        builder(&auth)
            .param("client_assertion", TOKEN)
            .build()
            .map(drop),
        BearerAuthLayer::new(builder(&auth).build().unwrap())
            .with_header("x-api-key", format!("{API_KEY}\r\n"))
            .map(drop),
        BearerAuthLayer::new(builder(&auth).build().unwrap())
            .with_header(format!("x-{API_KEY}:"), API_KEY)
            .map(drop),
    ];
    for (i, result) in configured.into_iter().enumerate() {
        shown.crate_error(&format!("configuration {i}"), &result.unwrap_err());
    }
    shown.debug(
        "builder",
        &builder(&auth)
            .scope("a")
            .auth_method(ClientAuthMethod::ClientSecretPost),
    );

    // Endpoint down, the secret in the URL's query.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let down = ClientCredentials::builder()
        .token_endpoint(format!("http://{closed}/token?client_secret={SECRET}"))
        .unwrap()
        .client_id(CLIENT_ID)
        .client_secret(SECRET)
        .build()
        .unwrap();
    fetch_error(&mut shown, "endpoint down", &down).await;

    // §5.2 errors, echoed secrets, redirects, garbage, oversized: with each method.
    let garbage = format!("<html>{SECRET} {TOKEN}</html>");
    let oversized = format!(
        "{{\"access_token\":\"{TOKEN}\",\"padding\":\"{}\"}}",
        "x".repeat(70 * 1024)
    );
    let behaviors = [
        Behavior::invalid_client(),
        Behavior::OAuthError(StatusCode::BAD_REQUEST, "invalid_scope"),
        Behavior::server_error(),
        Behavior::EchoCredentials,
        Behavior::RedirectWithCredentials,
        Behavior::Redirect(format!(
            "https://idp.example/?secret={SECRET}&token={TOKEN}"
        )),
        Behavior::garbage(),
        Behavior::Raw(StatusCode::OK, "text/plain", garbage.clone()),
        Behavior::Raw(StatusCode::UNAUTHORIZED, "text/plain", garbage.clone()),
        Behavior::Raw(StatusCode::OK, "application/json", oversized),
        Behavior::Raw(
            StatusCode::OK,
            "application/json",
            format!("{{\"access_token\":\"{TOKEN}\",\"token_type\":\"{SECRET}\"}}"),
        ),
        Behavior::Raw(
            StatusCode::OK,
            "application/json",
            format!("{{\"access_token\":\"{TOKEN} {SECRET}\"}}"),
        ),
        Behavior::Raw(
            StatusCode::OK,
            "application/json",
            format!("{{\"access_token\":\"{TOKEN}\",\"expires_in\":{{\"{SECRET}\":1}}}}"),
        ),
    ];
    let mut methods = vec![
        ClientAuthMethod::ClientSecretBasic,
        ClientAuthMethod::ClientSecretPost,
    ];
    if cfg!(feature = "jwt-client-auth") {
        methods.push(ClientAuthMethod::ClientSecretJwt);
    }
    for method in methods {
        let credentials = builder(&auth).auth_method(method).build().unwrap();
        for behavior in &behaviors {
            auth.push_behavior([behavior.clone()]);
            fetch_error(
                &mut shown,
                &format!("{method:?} {behavior:?}"),
                &credentials,
            )
            .await;
        }
    }
    // The negotiation, both methods refused by echoing servers.
    let negotiated = builder(&auth).build().unwrap();
    auth.push_behavior([Behavior::EchoCredentials, Behavior::RedirectWithCredentials]);
    fetch_error(&mut shown, "negotiation", &negotiated).await;

    // Wrong issuer, and a metadata document quoting the secret.
    let wrong = AuthServer::builder()
        .client(CLIENT_ID, SECRET, None)
        .wrong_issuer()
        .start()
        .await
        .unwrap();
    let discovered = ClientCredentials::builder()
        .issuer(wrong.issuer())
        .unwrap()
        .client_id(CLIENT_ID)
        .client_secret(SECRET)
        .build()
        .unwrap();
    fetch_error(&mut shown, "wrong issuer", &discovered).await;
    wrong.push_discovery_behavior([Behavior::Redirect(format!(
        "https://idp.example/?secret={SECRET}"
    ))]);
    fetch_error(&mut shown, "metadata redirect", &discovered).await;

    // Backing off after a failure, through the cache and the layer.
    auth.set_default_behavior(Some(Behavior::EchoCredentials));
    let cache = TokenCache::builder(builder(&auth).build().unwrap())
        .backoff_base(Duration::from_secs(60))
        .build();
    let first = cache.token().await.unwrap_err();
    shown.crate_error("cache, first failure", &first);
    let backing_off = cache.token().await.unwrap_err();
    shown.crate_error("cache, backing off", &backing_off);
    shown.debug("cache", &cache);
    let layer = BearerAuthLayer::from_cache(cache.clone())
        .with_header("x-api-key", API_KEY)
        .unwrap();
    shown.debug("layer", &layer);
    let mut service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(hyper_client());
    shown.debug("service", &service);
    let request = Request::get(auth.issuer())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let error = service
        .ready()
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap_err();
    shown.error("layer, backing off", &*error);
    auth.set_default_behavior(None);

    // The 401 retry: the first token (the distinctive one) is refused by the API.
    let api = ApiServer::start(&auth, API_KEY).await.unwrap();
    auth.push_behavior([Behavior::Raw(
        StatusCode::OK,
        "application/json",
        format!("{{\"access_token\":\"{TOKEN}\",\"token_type\":\"Bearer\",\"expires_in\":3600}}"),
    )]);
    let retry = BearerAuthLayer::new(builder(&auth).build().unwrap())
        .with_header("x-api-key", API_KEY)
        .unwrap()
        .retry_on_unauthorized();
    shown.debug("retry layer", &retry);
    let mut service = ServiceBuilder::new().layer(retry).service(hyper_client());
    shown.debug("retry service", &service);
    let request = Request::get(api.url())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    shown.debug("retried response", &response);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    shown.text("retried response body", String::from_utf8_lossy(&body));
    let token = BearerAuthLayer::new(builder(&auth).build().unwrap())
        .cache()
        .token()
        .await
        .unwrap();
    shown.debug("token", &token);
    let issued = token.secret().expose_secret().to_string();
    shown.debug("auth server", &auth);
    shown.debug("api server", &api);
    shown.debug("request seen", &auth.last_request());

    // Let spawned tasks log, then search everything.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let log = captured.text();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "nothing captured:\n{log}"
    );
    shown.text("tracing output", log);
    let signature = issued.rsplit('.').next().unwrap_or_default().to_string();
    shown.assert_clean(&[issued, signature]);
}
