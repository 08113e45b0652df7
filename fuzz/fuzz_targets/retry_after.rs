//! `Retry-After` and Okta's `X-Rate-Limit-Remaining` / `X-Rate-Limit-Reset`: any values, at
//! any clock.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tower_client_credentials::__fuzz;

/// The longest wait the crate hands out for the seconds form; every form must respect it.
const CAP: Duration = Duration::from_secs(86_400);

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (clock, rest) = data.split_at(8);
    // Any wall clock from 1970 to about 2106.
    let now = UNIX_EPOCH
        + Duration::from_secs(u64::from(u32::from_le_bytes(
            clock[..4].try_into().unwrap(),
        )));
    let mut headers = HeaderMap::new();
    let names = [
        "retry-after",
        "x-rate-limit-remaining",
        "x-rate-limit-reset",
    ];
    for (name, value) in names.iter().zip(rest.split(|&b| b == b'\n')) {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(*name, value);
        }
    }
    if let Some(wait) = __fuzz::retry_after(&headers, now) {
        // `FUZZ_NO_CAP=1` looks for panics only, while an uncapped wait is a known defect.
        static CHECK_CAP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *CHECK_CAP.get_or_init(|| std::env::var_os("FUZZ_NO_CAP").is_none()) {
            assert!(
                wait <= CAP,
                "uncapped wait {wait:?} for {headers:?} at {now:?}"
            );
        }
    }
    let _ = __fuzz::retry_after(&headers, SystemTime::now());
});
