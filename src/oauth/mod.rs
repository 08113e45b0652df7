//! The OAuth2 protocol, free of I/O: client authentication (RFC 6749 §2.3, RFC 7523), the token
//! request and its answer (RFC 6749 §4.4, §5), and authorization server metadata (RFC 8414).

#[cfg(feature = "jwt-client-auth")]
pub(crate) mod assertion;
pub(crate) mod client_auth;
pub(crate) mod discovery;
pub(crate) mod token_request;
pub(crate) mod token_response;
