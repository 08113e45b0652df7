//! The JWT `exp` fallback: any access token, JWT-shaped or not.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use tower_client_credentials::__fuzz;

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    if let Some(exp) = __fuzz::jwt_expiry(&token) {
        // 2100-01-01: later is not an expiry but an overflow waiting to happen.
        assert!(exp <= UNIX_EPOCH + Duration::from_secs(4_102_444_800));
    }
    // Also as a base64url payload, so that most inputs reach the JSON claims.
    let mut jwt = String::from("eyJhbGciOiJub25lIn0.");
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for chunk in data.chunks(3) {
        let mut n = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            n |= u32::from(b) << (16 - 8 * i);
        }
        for i in 0..=chunk.len() {
            jwt.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    jwt.push_str(".sig");
    if let Some(exp) = __fuzz::jwt_expiry(&jwt) {
        assert!(exp <= UNIX_EPOCH + Duration::from_secs(4_102_444_800));
    }
});
