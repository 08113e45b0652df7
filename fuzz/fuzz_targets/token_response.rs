//! The §5.1 success parser: any 2xx body, with or without the JWT `exp` fallback.
#![no_main]

use bytes::Bytes;
use http::{header::CONTENT_TYPE, Response};
use libfuzzer_sys::fuzz_target;
use tower_client_credentials::__fuzz;

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let status = if flags & 0x80 != 0 { 203 } else { 200 };
    let response = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Bytes::copy_from_slice(body))
        .unwrap();
    match __fuzz::token_response(&response, flags & 1 == 1) {
        Ok(token) => {
            // A token that reached the cache must be one the Authorization header can carry.
            let _ = token.lifetime();
            let _ = token.expires_at();
            let _ = token.scopes().count();
            assert!(!format!("{token:?}").chars().any(char::is_control));
        }
        Err(error) => common::check_error(&error, body.len()),
    }
});
