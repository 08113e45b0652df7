//! Set-up shared by the behaviour tests: credentials for the loopback [`AuthServer`]'s clients,
//! a plain hyper-util client, and the scenarios more than one test file plays.

// Every test crate compiles its own copy of this module and uses only some of its helpers.
#![allow(dead_code)]

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tower_client_credentials::testing::{AuthServer, AuthServerBuilder};
use tower_client_credentials::{
    BoxError, ClientAuthMethod, ClientCredentials, ClientCredentialsBuilder, Error, TokenSource,
};

/// The scopes the tests that call the protected API ask for.
pub(crate) const API_SCOPES: [&str; 2] = ["role:app", "organization:read"];

/// A plain HTTP/1.1 hyper-util client, the service the layer wraps in most tests.
pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// See [`HttpClient`].
pub(crate) fn hyper_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The server's default client ([`AuthServer::CLIENT_ID`]) at `token_endpoint`, which need not
/// be the server's: tests point it at hosts the in-process client stands in for.
pub(crate) fn token_endpoint_builder(token_endpoint: &str) -> ClientCredentialsBuilder {
    ClientCredentials::builder()
        .token_endpoint(token_endpoint)
        .unwrap()
        .client_id(AuthServer::CLIENT_ID)
        .client_secret(AuthServer::CLIENT_SECRET)
}

/// The server's default client, knowing only the `issuer` (the token endpoint is discovered).
pub(crate) fn issuer_builder(issuer: &str) -> ClientCredentialsBuilder {
    ClientCredentials::builder()
        .issuer(issuer)
        .unwrap()
        .client_id(AuthServer::CLIENT_ID)
        .client_secret(AuthServer::CLIENT_SECRET)
}

/// The server's default client at `auth`'s token endpoint.
pub(crate) fn default_client(auth: &AuthServer) -> ClientCredentialsBuilder {
    token_endpoint_builder(&auth.token_endpoint())
}

/// Credentials as an API caller holds them: the default client asking for [`API_SCOPES`].
pub(crate) fn credentials(auth: &AuthServer) -> ClientCredentials {
    default_client(auth).scopes(API_SCOPES).build().unwrap()
}

/// Credentials that reach `auth` in-process (deterministic under tokio's paused clock) with an
/// explicit `client_secret_basic`, so that an `invalid_client` never triggers the fallback to
/// the form body.
pub(crate) fn in_process_credentials(auth: &AuthServer) -> ClientCredentials {
    default_client(auth)
        .auth_method(ClientAuthMethod::ClientSecretBasic)
        .http_client(auth.in_process_client())
        .build()
        .unwrap()
}

/// Starts `server` with its default client allowed `client_secret_post` only.
pub(crate) async fn start_with_post_only_client(server: AuthServerBuilder) -> AuthServer {
    server
        .client(
            AuthServer::CLIENT_ID,
            AuthServer::CLIENT_SECRET,
            Some(ClientAuthMethod::ClientSecretPost),
        )
        .start()
        .await
        .unwrap()
}

/// With no method configured and none advertised, `credentials` try Basic, fall back to the
/// form body when `auth` (started by [`start_with_post_only_client`]) refuses it, and remember
/// the method that worked.
pub(crate) async fn assert_falls_back_to_post_and_remembers(
    credentials: &ClientCredentials,
    auth: &AuthServer,
) {
    credentials.fetch_token().await.unwrap();
    assert_eq!(auth.token_requests(), 2, "basic first, then post");
    assert_eq!(
        credentials.auth_method(),
        Some(ClientAuthMethod::ClientSecretPost)
    );
    credentials.fetch_token().await.unwrap();
    assert_eq!(auth.token_requests(), 3, "post remembered");
}

/// `credentials` configured with an explicit method `auth` refuses get `invalid_client` after
/// one request: an explicit method is not second-guessed with a fallback.
pub(crate) async fn assert_explicit_method_is_not_second_guessed(
    credentials: &ClientCredentials,
    auth: &AuthServer,
) {
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.oauth_error().unwrap().error, "invalid_client");
    assert_eq!(auth.token_requests(), 1);
}

/// The crate's [`Error`] inside a layer's boxed error.
pub(crate) fn crate_error(error: BoxError) -> Error {
    match error.downcast::<Error>() {
        Ok(error) => *error,
        Err(other) => panic!("expected the crate's Error, got {other:?}"),
    }
}

/// The JSON of part `index` (0 header, 1 claims) of a JWT.
pub(crate) fn jwt_part(jwt: &str, index: usize) -> serde_json::Value {
    let part = jwt.split('.').nth(index).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url JWT part");
    serde_json::from_slice(&bytes).expect("JSON JWT part")
}

/// Lets spawned refresh tasks run without moving the (paused) clock.
pub(crate) async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}
