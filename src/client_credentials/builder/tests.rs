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

/// A stand-in for a caller's HTTP client that presents a certificate; never called here.
fn never_called(_: Request<Full<Bytes>>) -> CallersAnswer {
    std::future::ready(Ok(Response::new(Full::new(Bytes::new()))))
}

type CallersAnswer = std::future::Ready<Result<Response<Full<Bytes>>, std::convert::Infallible>>;
type CallersHttpClient = tower::util::ServiceFn<fn(Request<Full<Bytes>>) -> CallersAnswer>;

fn callers_http_client() -> CallersHttpClient {
    tower::service_fn(never_called)
}

#[test]
fn mtls_methods_need_a_certificate_and_no_secret() {
    let no_secret = || {
        ClientCredentials::builder()
            .token_endpoint("https://idp.example/token")
            .unwrap()
            .client_id("id")
    };
    let err = no_secret()
        .auth_method(ClientAuthMethod::TlsClientAuth)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert!(
        err.to_string()
            .contains("tls_client_auth needs a client certificate"),
        "{err}"
    );
    for method in [
        ClientAuthMethod::TlsClientAuth,
        ClientAuthMethod::SelfSignedTlsClientAuth,
    ] {
        let credentials = no_secret()
            .auth_method(method)
            .http_client(callers_http_client())
            .build()
            .unwrap();
        assert_eq!(credentials.auth_method(), Some(method));
        assert!(format!("{credentials:?}").contains("CallersHttpClient"));
    }
    // A secret given anyway is still checked, and never kept.
    let err = no_secret()
        .client_secret("")
        .auth_method(ClientAuthMethod::TlsClientAuth)
        .http_client(callers_http_client())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("secret is empty"), "{err}");
}

#[cfg(feature = "mtls")]
#[test]
fn an_identity_is_presented_only_with_an_mtls_method_and_the_built_in_client() {
    let identity = crate::mtls::ClientIdentity::from_pem(
        include_bytes!("../../../tests/mtls/client.pem"),
        include_bytes!("../../../tests/mtls/client-key.pem"),
    )
    .unwrap();
    let credentials = builder().tls_client_auth(identity.clone()).build().unwrap();
    assert_eq!(
        credentials.auth_method(),
        Some(ClientAuthMethod::TlsClientAuth)
    );
    let shown = format!("{credentials:?}");
    assert!(shown.contains(&identity.thumbprint()), "{shown}");
    assert!(!shown.contains("top-secret-value"));
    let err = builder()
        .tls_client_auth(identity.clone())
        .http_client(callers_http_client())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("both given"), "{err}");
    let err = builder()
        .self_signed_tls_client_auth(identity)
        .auth_method(ClientAuthMethod::ClientSecretBasic)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("client_secret_basic"), "{err}");
}

/// Issue 23: a client assertion source is `private_key_jwt` without any cargo feature; a method
/// set afterwards that contradicts it is refused by name, and a key given later replaces it.
#[test]
fn a_client_assertion_source_is_private_key_jwt_and_a_contradiction_is_named() {
    use crate::client_credentials::FileAssertion;
    let source = || FileAssertion::new("/var/run/secrets/tokens/idp-token");
    let bare = || {
        ClientCredentials::builder()
            .token_endpoint("https://idp.example/oauth2/default/v1/token")
            .unwrap()
            .client_id("id")
    };
    let credentials = bare().client_assertion_source(source()).build().unwrap();
    assert_eq!(
        credentials.auth_method(),
        Some(ClientAuthMethod::PrivateKeyJwt)
    );
    let shown = format!("{credentials:?}");
    assert!(
        shown.contains("file /var/run/secrets/tokens/idp-token"),
        "{shown}"
    );

    let err = bare()
        .client_assertion_source(source())
        .auth_method(ClientAuthMethod::ClientSecretBasic)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert!(
        err.to_string().contains(".client_assertion_source(..)")
            && err.to_string().contains("client_secret_basic"),
        "{err}"
    );

    #[cfg(feature = "jwt-client-auth")]
    {
        let pem = include_bytes!("../../../tests/oidc-provider/test-client-key.pem");
        let credentials = bare()
            .client_assertion_source(source())
            .private_key_jwt(crate::JwtSigningAlgorithm::RS256, pem, None)
            .unwrap()
            .build()
            .unwrap();
        assert!(!format!("{credentials:?}").contains("idp-token"));
    }
}
