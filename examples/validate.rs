//! Checks a set of credentials end to end: gets a token (through RFC 8414 discovery when
//! `ISSUER` is set), then calls an API with it and the API key, and prints what happened. It
//! never prints the client secret, the token or the API key.
//!
//! ```text
//! ISSUER=https://idm.staging.floriday.io/oauth2/ausmw6b47z1BnlHkw0h7 \
//! CLIENT_ID=... CLIENT_SECRET=... API_KEY=... \
//! SCOPES="role:app organization:read" \
//! API_URL=https://api.staging.floriday.io/apps/organizations \
//! cargo run --example validate
//! ```
//!
//! * `ISSUER` or `TOKEN_ENDPOINT`: the authorization server (discovery) or its token endpoint.
//! * `CLIENT_ID`, `CLIENT_SECRET`, `API_KEY`: what the API provider issued.
//! * `SCOPES`: space separated; set it empty to get the server's default scopes.
//! * `API_URL`: an endpoint to `GET`, e.g. Floriday's
//!   `https://api.staging.floriday.io/suppliers-api-{version}/auth/key`,
//!   `.../customers-api-{version}/identities` (with your API version in place of `{version}`)
//!   or `https://api.staging.floriday.io/apps/organizations`.
//!
//! `cargo run --example validate -- --local` (or `VALIDATE_LOCAL=1`) runs the same check
//! against the crate's loopback authorization server and API, without credentials or network.
//!
//! Exit code: 0 when the API answered 2xx, 1 when the token or the API call failed, 2 when the
//! configuration is incomplete.

use std::process::ExitCode;

use bytes::Bytes;
use http::header::{ACCEPT, WWW_AUTHENTICATE};
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_client_credentials::testing::{ApiServer, AuthServer};
use tower_client_credentials::{BearerAuthLayer, BoxError, ClientCredentials};

/// What the check needs. No `Debug`: it holds the secret and the key.
struct Config {
    issuer: Option<String>,
    token_endpoint: Option<String>,
    client_id: String,
    client_secret: String,
    scopes: String,
    api_key: String,
    api_url: String,
}

impl Config {
    /// Reads the environment; `Err` lists what is missing or wrong.
    fn from_env() -> Result<Config, Vec<String>> {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut problems = Vec::new();
        let mut required = |name: &str| {
            var(name).unwrap_or_else(|| {
                problems.push(format!("{name} is not set"));
                String::new()
            })
        };
        let client_id = required("CLIENT_ID");
        let client_secret = required("CLIENT_SECRET");
        let api_key = required("API_KEY");
        let api_url = required("API_URL");
        let (issuer, token_endpoint) = (var("ISSUER"), var("TOKEN_ENDPOINT"));
        match (&issuer, &token_endpoint) {
            (None, None) => problems.push("ISSUER or TOKEN_ENDPOINT is not set".to_string()),
            (Some(_), Some(_)) => {
                problems.push("set ISSUER or TOKEN_ENDPOINT, not both".to_string())
            }
            _ => {}
        }
        // SCOPES may be set empty (the server's default scopes), but it must be set.
        let scopes = match std::env::var("SCOPES") {
            Ok(scopes) => scopes,
            Err(_) => {
                problems.push(
                    "SCOPES is not set (space separated; set it empty for the server's default \
                     scopes)"
                        .to_string(),
                );
                String::new()
            }
        };
        if api_url.contains("{version}") {
            problems.push("API_URL contains `{version}`: put the API version there".to_string());
        }
        if problems.is_empty() {
            Ok(Config {
                issuer,
                token_endpoint,
                client_id,
                client_secret,
                scopes,
                api_key,
                api_url,
            })
        } else {
            Err(problems)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("see the top of examples/validate.rs; `--local` runs against loopback servers");
        return ExitCode::SUCCESS;
    }
    let local = std::env::args().any(|a| a == "--local")
        || std::env::var("VALIDATE_LOCAL").is_ok_and(|v| v == "1");
    if local {
        return match run_local().await {
            Ok(code) => code,
            Err(error) => {
                eprintln!("the local servers could not start: {error}");
                ExitCode::FAILURE
            }
        };
    }
    match Config::from_env() {
        Ok(config) => validate(config).await,
        Err(problems) => {
            for problem in problems {
                eprintln!("validate: {problem}");
            }
            eprintln!("validate: see the top of examples/validate.rs for the variables");
            ExitCode::from(2)
        }
    }
}

/// The check against the crate's loopback authorization server and API.
async fn run_local() -> Result<ExitCode, BoxError> {
    let api_key = "local-api-key";
    let auth = AuthServer::start().await?;
    let api = ApiServer::start(&auth, api_key).await?;
    println!("local mode: authorization server and API on 127.0.0.1");
    let config = Config {
        issuer: Some(auth.issuer()),
        token_endpoint: None,
        client_id: AuthServer::CLIENT_ID.to_string(),
        client_secret: AuthServer::CLIENT_SECRET.to_string(),
        scopes: "role:app organization:read".to_string(),
        api_key: api_key.to_string(),
        api_url: format!("{}/apps/organizations", api.url()),
    };
    let code = validate(config).await;
    println!(
        "(the local authorization server saw {} metadata and {} token request(s))",
        auth.discovery_requests(),
        auth.token_requests()
    );
    Ok(code)
}

async fn validate(config: Config) -> ExitCode {
    match check(&config).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            // The crate's errors never hold the secret, a token or the key.
            eprintln!("validate: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Gets a token, calls the API; `Ok(false)` if the API did not answer 2xx.
async fn check(config: &Config) -> Result<bool, BoxError> {
    let builder = match (&config.issuer, &config.token_endpoint) {
        (Some(issuer), _) => {
            println!("issuer:           {issuer} (RFC 8414 / OpenID discovery)");
            ClientCredentials::builder().issuer(issuer)?
        }
        (None, Some(endpoint)) => ClientCredentials::builder().token_endpoint(endpoint)?,
        (None, None) => return Err("no ISSUER or TOKEN_ENDPOINT".into()),
    };
    let credentials = builder
        .client_id(config.client_id.as_str())
        .client_secret(config.client_secret.as_str())
        .scopes([config.scopes.as_str()])
        .build()?;
    println!("client id:        {}", credentials.client_id());

    let layer =
        BearerAuthLayer::new(credentials.clone()).with_header("x-api-key", &config.api_key)?;
    // The token, through the same cache the API call below uses: one token request in all.
    let token = layer.cache().token().await?;
    let endpoint = credentials
        .token_endpoint()
        .map(|u| u.to_string())
        .unwrap_or_else(|| "(unknown)".to_string());
    println!("token endpoint:   {endpoint}");
    if let Some(method) = credentials.auth_method() {
        println!("auth method:      {}", method.as_str());
    }
    match token.scope() {
        Some(scope) if !scope.is_empty() => println!("granted scopes:   {scope}"),
        _ => println!("granted scopes:   (the server did not say)"),
    }
    match token.remaining_lifetime() {
        Some(left) => println!("token lifetime:   {} s remaining", left.as_secs()),
        None => println!("token lifetime:   unknown (no expires_in, not a JWT)"),
    }

    // The health-check view of the same cache: state, expiry as wall-clock time, scopes.
    println!("token status:     {}", layer.cache().status());

    let mut client = ServiceBuilder::new().layer(layer).service(api_client()?);
    let request = Request::get(config.api_url.as_str())
        .header(ACCEPT, "application/json")
        .body(Full::<Bytes>::default())?;
    let shown_url = {
        let uri = request.uri();
        format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("?"),
            uri.authority().map(|a| a.as_str()).unwrap_or("?"),
            uri.path()
        )
    };
    let response = client.ready().await?.call(request).await?;
    let status = response.status();
    println!("API:              GET {shown_url} -> {status}");
    if let Some(challenge) = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
    {
        println!("API challenge:    {challenge}");
    }
    Ok(status.is_success())
}

/// The client for the API call: hyper-util over rustls (webpki roots), plain http allowed so
/// that `--local` works.
#[cfg(feature = "rustls")]
fn api_client() -> Result<
    Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    BoxError,
> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// Without the `rustls` feature: plain http only (enough for `--local`).
#[cfg(not(feature = "rustls"))]
fn api_client(
) -> Result<Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>, BoxError> {
    Ok(Client::builder(TokioExecutor::new()).build_http())
}
