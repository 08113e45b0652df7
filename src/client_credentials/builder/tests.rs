//! What `build` refuses, and that no secret shows.

use super::*;
use crate::error::ErrorKind;

fn builder() -> ClientCredentialsBuilder {
    ClientCredentials::builder()
        .token_endpoint("https://idp.example/oauth2/default/v1/token")
        .unwrap()
        .client_id("id")
        .client_secret("top-secret-value")
}

#[test]
fn build_errors_name_what_to_fix() {
    let err = ClientCredentials::builder()
        .client_secret("x")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("client id"), "{err}");
    let err = builder().client_id("").build().unwrap_err();
    assert!(err.to_string().contains("client id is empty"));
    let err = ClientCredentials::builder()
        .client_id("a")
        .client_secret("b")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("token endpoint"));
    let err = builder().scopes(["bad\"scope"]).build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    let err = builder()
        .param("grant_type", "password")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("grant_type"));
    let err = ClientCredentials::builder()
        .token_endpoint("http://idp.example/token")
        .unwrap()
        .client_id("id")
        .client_secret("s")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("allow_http"));
}

#[test]
fn secret_never_shows() {
    let credentials = builder().build().unwrap();
    assert!(!format!("{credentials:?}").contains("top-secret-value"));
    let b = builder();
    assert!(!format!("{b:?}").contains("top-secret-value"));
    let err = builder()
        .client_secret("line\nbreak-secret")
        .build()
        .unwrap_err();
    assert!(!err.to_string().contains("break-secret"));
}

#[cfg(not(feature = "jwt-client-auth"))]
#[test]
fn jwt_methods_without_the_feature_fail_at_build() {
    for method in [
        ClientAuthMethod::ClientSecretJwt,
        ClientAuthMethod::PrivateKeyJwt,
    ] {
        let err = builder().auth_method(method).build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.to_string().contains("`jwt-client-auth`"), "{err}");
        assert!(err.to_string().contains(method.as_str()), "{err}");
    }
}

#[cfg(feature = "jwt-client-auth")]
#[test]
fn jwt_method_configuration() {
    use crate::JwtSigningAlgorithm;
    let pem = include_bytes!("../../../tests/oidc-provider/test-client-key.pem");
    let no_secret = || {
        ClientCredentials::builder()
            .token_endpoint("https://idp.example/token")
            .unwrap()
            .client_id("id")
    };
    // private_key_jwt needs no secret, and its key never shows.
    let credentials = no_secret()
        .private_key_jwt(JwtSigningAlgorithm::RS256, pem, Some("k1"))
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(
        credentials.auth_method(),
        Some(ClientAuthMethod::PrivateKeyJwt)
    );
    let debug = format!("{credentials:?}");
    assert!(
        debug.contains("[redacted]") && !debug.contains("MII"),
        "{debug}"
    );
    // The method without a key, client_secret_jwt without a secret: named errors.
    let err = no_secret()
        .auth_method(ClientAuthMethod::PrivateKeyJwt)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("private_key_jwt"), "{err}");
    let err = no_secret()
        .auth_method(ClientAuthMethod::ClientSecretJwt)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("client secret"), "{err}");
    // Every other method still needs the secret, key or not.
    let err = no_secret()
        .private_key_jwt(JwtSigningAlgorithm::RS256, pem, None)
        .unwrap()
        .auth_method(ClientAuthMethod::ClientSecretPost)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("client secret"), "{err}");
    let err = builder()
        .param("client_assertion", "x")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("client_assertion"), "{err}");
}
