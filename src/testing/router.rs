//! Where a request to an [`AuthServer`](super::AuthServer) goes: the token endpoint, the
//! metadata document at the locations served, or a 404.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{Request, StatusCode};
use http_body::Body;

use super::behaviour::misbehave;
use super::lock;
use super::response::{json, Reply};
use super::state::{MetadataLocation, State};

/// Records the path and hands the request to the token endpoint, the metadata endpoint, or
/// answers 404.
pub(super) async fn route<B>(state: Arc<State>, request: Request<B>) -> Reply
where
    B: Body + Send,
    B::Data: Send,
    B::Error: Into<crate::BoxError>,
{
    let path = request.uri().path().to_string();
    lock(&state.request_paths).push(path.clone());
    let issuer = &state.issuer_path;
    if path == format!("{issuer}/v1/token") {
        return state.token(request).await;
    }
    // With an empty issuer path two forms name the same URL: serve it if either is served.
    let served = state.locations.iter().any(|location| {
        let served_path = match location {
            MetadataLocation::Rfc8414 => {
                format!("/.well-known/oauth-authorization-server{issuer}")
            }
            MetadataLocation::Okta => {
                format!("{issuer}/.well-known/oauth-authorization-server")
            }
            MetadataLocation::OpenId => format!("{issuer}/.well-known/openid-configuration"),
            MetadataLocation::OpenIdInserted => {
                format!("/.well-known/openid-configuration{issuer}")
            }
        };
        served_path == path
    });
    if served {
        metadata(&state).await
    } else {
        json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found"}),
        )
    }
}

/// The RFC 8414 metadata document (or the next scripted discovery answer), counted.
async fn metadata(state: &State) -> Reply {
    state.discovery_requests.fetch_add(1, Ordering::SeqCst);
    let behavior = lock(&state.discovery_script).pop_front();
    if let Some(response) = misbehave(behavior.as_ref(), "").await {
        return response;
    }
    let issuer = state.issuer_url();
    let mut document = serde_json::json!({
        "issuer": if state.wrong_issuer { "https://attacker.example/oauth2/default".to_string() } else { issuer.clone() },
        "token_endpoint": format!("{issuer}/v1/token"),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": ["token"],
    });
    if let Some(methods) = &state.advertised_methods {
        document["token_endpoint_auth_methods_supported"] = serde_json::json!(methods);
    }
    json(StatusCode::OK, document)
}
