//! The server's requested wait before the next attempt: `Retry-After` (RFC 9110 §10.2.3), else
//! Okta's `X-Rate-Limit-Reset` once `X-Rate-Limit-Remaining` is exhausted.

use std::time::{Duration, SystemTime};

use http::header::HeaderMap;

/// The longest wait handed on from a server, whatever it asked: the default of the cache's
/// `max_retry_after`, so that a hostile or broken server cannot make a caller that honours
/// [`Error::retry_after`](crate::Error::retry_after) wait for years.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The server's requested wait, at most [`MAX_RETRY_AFTER`]: `Retry-After` (seconds or HTTP
/// date), else Okta's `X-Rate-Limit-Reset` (UTC epoch seconds) when the rate limit is exhausted.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    requested_wait(headers, now).map(|wait| wait.min(MAX_RETRY_AFTER))
}

fn requested_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(value) = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        if let Ok(date) = httpdate::parse_http_date(value) {
            return Some(date.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    let reset = headers
        .get("x-rate-limit-reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())?;
    let remaining = headers
        .get("x-rate-limit-remaining")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if remaining.is_some_and(|r| r > 0) {
        return None;
    }
    let reset = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(reset))?;
    Some(reset.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn an_absurd_rate_limit_reset_does_not_panic() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-rate-limit-reset",
            HeaderValue::from_static("18446744073709551615"),
        );
        headers.insert("x-rate-limit-remaining", HeaderValue::from_static("0"));
        let _ = retry_after(&headers, SystemTime::now());
        headers.insert(
            "retry-after",
            HeaderValue::from_static("99999999999999999999"),
        );
        let _ = retry_after(&headers, SystemTime::now());
    }

    #[test]
    fn every_form_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let far = now + Duration::from_secs(7_973 * 365 * 86_400);
        for (name, value) in [
            ("retry-after", "99999999".to_string()),
            (
                "retry-after",
                httpdate::fmt_http_date(now + Duration::from_secs(86_400)),
            ),
            ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT".to_string()),
            (
                "x-rate-limit-reset",
                far.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    .to_string(),
            ),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_str(&value).unwrap());
            headers.insert("x-rate-limit-remaining", HeaderValue::from_static("0"));
            assert_eq!(
                retry_after(&headers, now),
                Some(MAX_RETRY_AFTER),
                "{name}: {value}"
            );
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        headers.insert(
            "retry-after",
            HeaderValue::from_str(&httpdate::fmt_http_date(now + Duration::from_secs(20))).unwrap(),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(20)));
        let mut headers = HeaderMap::new();
        headers.insert("x-rate-limit-reset", HeaderValue::from_static("1000042"));
        headers.insert("x-rate-limit-remaining", HeaderValue::from_static("0"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(42)));
    }
}
