//! The §5.2 error parser: a 4xx/5xx (or an error in a 200) with any body and wait headers.
#![no_main]

use bytes::Bytes;
use http::{header::RETRY_AFTER, HeaderValue, Response};
use libfuzzer_sys::fuzz_target;
use tower_client_credentials::__fuzz;

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&status, rest)) = data.split_first() else {
        return;
    };
    // 200 (GitHub's errors), else 400..=599.
    let status = if status == 0 {
        200
    } else {
        400 + u16::from(status) % 200
    };
    let (header, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..0], rest),
    };
    let mut response = Response::builder()
        .status(status)
        .body(Bytes::copy_from_slice(body))
        .unwrap();
    if let Ok(value) = HeaderValue::from_bytes(header) {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    match __fuzz::token_response(&response, false) {
        Ok(_) => assert_eq!(status, 200),
        Err(error) => {
            common::check_error(&error, body.len());
            if let Some(oauth) = error.oauth_error() {
                let _ = format!("{oauth:?} {}", oauth.error);
            }
            let _ = error.is_transient();
            let _ = error.retry_after();
        }
    }
});
