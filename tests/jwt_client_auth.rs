//! RFC 7523 JWT client authentication (feature `jwt-client-auth`) against the crate's loopback
//! authorization server: `client_secret_jwt` on the wire and its verification. The same methods
//! against panva's oidc-provider are in `tests/oidc_provider.rs`.

use secrecy::ExposeSecret;
use tower_client_credentials::testing::AuthServer;
use tower_client_credentials::{
    ClientAuthMethod, ClientCredentials, ErrorKind, JwtSigningAlgorithm, TokenSource,
};

mod common;
use common::{issuer_builder, jwt_part};

const CLIENT: &str = "jwt-client";
const SECRET: &str = "jwt-client-secret-of-at-least-32-bytes";

async fn server() -> AuthServer {
    AuthServer::builder()
        .client(CLIENT, SECRET, Some(ClientAuthMethod::ClientSecretJwt))
        .client(AuthServer::CLIENT_ID, AuthServer::CLIENT_SECRET, None)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn client_secret_jwt_on_the_wire() {
    let server = server().await;
    let credentials = ClientCredentials::builder()
        .token_endpoint(server.token_endpoint())
        .unwrap()
        .client_id(CLIENT)
        .client_secret(SECRET)
        .scope("read")
        .auth_method(ClientAuthMethod::ClientSecretJwt)
        .build()
        .unwrap();
    let token = credentials.fetch_token().await.unwrap();
    assert!(server.is_valid_token(token.secret().expose_secret()));
    assert_eq!(
        credentials.auth_method(),
        Some(ClientAuthMethod::ClientSecretJwt)
    );

    let seen = server.last_request().unwrap();
    assert_eq!(seen.method, Some(ClientAuthMethod::ClientSecretJwt));
    let field = |name: &str| {
        seen.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(field("grant_type").as_deref(), Some("client_credentials"));
    assert_eq!(field("scope").as_deref(), Some("read"));
    assert_eq!(field("client_id").as_deref(), Some(CLIENT));
    assert_eq!(
        field("client_assertion_type").as_deref(),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    assert_eq!(field("client_secret"), None, "the secret never travels");
    let jwt = field("client_assertion").expect("client_assertion");
    assert!(!jwt.contains(SECRET));

    let header = jwt_part(&jwt, 0);
    assert_eq!(header["alg"], "HS256");
    assert_eq!(header["typ"], "JWT");
    let claims = jwt_part(&jwt, 1);
    assert_eq!(claims["iss"], CLIENT);
    assert_eq!(claims["sub"], CLIENT);
    assert_eq!(claims["aud"], server.token_endpoint().as_str());
    assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 60);
    // The signature is HS256 over the client secret.
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&[server.token_endpoint()]);
    jsonwebtoken::decode::<serde_json::Value>(
        &jwt,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &validation,
    )
    .unwrap();

    // A fresh assertion per token request.
    credentials.fetch_token().await.unwrap();
    let again = server.last_request().unwrap();
    let again = again
        .form
        .iter()
        .find(|(k, _)| k == "client_assertion")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_ne!(jwt_part(&again, 1)["jti"], claims["jti"]);
    assert_eq!(server.token_requests(), 2);
}

#[tokio::test]
async fn the_server_checks_the_assertion() {
    let server = server().await;
    let builder = || {
        ClientCredentials::builder()
            .token_endpoint(server.token_endpoint())
            .unwrap()
            .client_id(CLIENT)
            .auth_method(ClientAuthMethod::ClientSecretJwt)
    };
    // The wrong secret: invalid_client, and the error does not quote it.
    let credentials = builder()
        .client_secret("not-the-secret-but-just-as-long-!!!!!")
        .build()
        .unwrap();
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TokenEndpoint, "{err}");
    assert_eq!(err.oauth_error().unwrap().error, "invalid_client");
    assert!(!err.to_string().contains("not-the-secret"));
    assert_eq!(
        server.token_requests(),
        1,
        "an explicit method is not retried"
    );

    // The wrong audience: the assertion is made for another server's URL (another port, same
    // path) but reaches this one.
    let other = AuthServer::builder()
        .client(CLIENT, SECRET, Some(ClientAuthMethod::ClientSecretJwt))
        .start()
        .await
        .unwrap();
    let misdirected = ClientCredentials::builder()
        .token_endpoint(other.token_endpoint())
        .unwrap()
        .client_id(CLIENT)
        .client_secret(SECRET)
        .auth_method(ClientAuthMethod::ClientSecretJwt)
        .http_client(server.in_process_client())
        .build()
        .unwrap();
    let err = misdirected.fetch_token().await.unwrap_err();
    assert_eq!(other.token_requests(), 0);
    assert_eq!(
        err.oauth_error().map(|o| o.error.as_str()),
        Some("invalid_client"),
        "{err}"
    );

    // A client registered for client_secret_jwt may not use the plain methods.
    let err = ClientCredentials::builder()
        .token_endpoint(server.token_endpoint())
        .unwrap()
        .client_id(CLIENT)
        .client_secret(SECRET)
        .auth_method(ClientAuthMethod::ClientSecretPost)
        .build()
        .unwrap()
        .fetch_token()
        .await
        .unwrap_err();
    assert_eq!(err.oauth_error().unwrap().error, "invalid_client");
}

#[tokio::test]
async fn auto_detection_never_picks_a_jwt_method() {
    let server = AuthServer::builder()
        .advertised_auth_methods(Some(&["client_secret_jwt", "client_secret_post"]))
        .start()
        .await
        .unwrap();
    let credentials = issuer_builder(&server.issuer()).build().unwrap();
    credentials.fetch_token().await.unwrap();
    assert_eq!(
        credentials.auth_method(),
        Some(ClientAuthMethod::ClientSecretPost)
    );
}

#[tokio::test]
async fn private_key_jwt_is_refused_by_the_local_server() {
    // AuthServer registers no client keys; oidc-provider covers private_key_jwt.
    let server = server().await;
    let credentials = ClientCredentials::builder()
        .token_endpoint(server.token_endpoint())
        .unwrap()
        .client_id(CLIENT)
        .private_key_jwt(
            JwtSigningAlgorithm::RS256,
            include_bytes!("oidc-provider/test-client-key.pem"),
            None,
        )
        .unwrap()
        .build()
        .unwrap();
    let err = credentials.fetch_token().await.unwrap_err();
    assert_eq!(err.oauth_error().unwrap().error, "invalid_client");
    let seen = server.last_request().unwrap();
    assert_eq!(seen.method, Some(ClientAuthMethod::PrivateKeyJwt));
    assert!(!format!("{credentials:?}").contains("PRIVATE KEY"));
}
