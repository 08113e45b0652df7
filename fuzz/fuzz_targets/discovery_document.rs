//! The RFC 8414 metadata document: any body, against a few configured issuers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_client_credentials::__fuzz;

mod common;

const ISSUERS: [&str; 4] = [
    "https://auth.example.com",
    "https://auth.example.com/oauth2/default",
    "http://127.0.0.1:8080/realms/x/",
    "https://example.com:8443/a/b",
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let issuer: http::Uri = ISSUERS[usize::from(flags & 3)].parse().unwrap();
    let allow_http = flags & 4 != 0;
    let url = "https://auth.example.com/.well-known/oauth-authorization-server";
    match __fuzz::discovery_document(&issuer, allow_http, url, body) {
        Ok(endpoint) => {
            assert!(endpoint.scheme_str() == Some("https") || allow_http);
        }
        Err(error) => common::check_error(&error, body.len()),
    }
});
