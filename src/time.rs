//! Bounds on durations: one place that keeps every `Instant` computed by the crate in range.
//!
//! Settings, lifetimes and server-supplied waits can be anything up to `Duration::MAX` ("never"),
//! and `Instant + Duration` panics on overflow. Every such duration passes through
//! [`clamp_to_century`] before it is added to an `Instant`.

use std::time::Duration;

/// Longest duration the crate computes with: a century is "never" for a token, and keeps every
/// `Instant` derived from it in range.
pub(crate) const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// One year, the default longest token lifetime believed.
pub(crate) const ONE_YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// `duration`, at most a [`CENTURY`].
pub(crate) fn clamp_to_century(duration: Duration) -> Duration {
    duration.min(CENTURY)
}

/// A number of seconds from an untrusted source (a JSON number, a header), as a duration of at
/// most a [`CENTURY`]; `None` for NaN, infinities and values that are not positive.
pub(crate) fn positive_seconds(seconds: f64) -> Option<Duration> {
    if !seconds.is_finite() || seconds <= 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(seconds.min(CENTURY.as_secs_f64())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_and_rejects() {
        assert_eq!(clamp_to_century(Duration::MAX), CENTURY);
        assert_eq!(
            clamp_to_century(Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert_eq!(positive_seconds(f64::INFINITY), None);
        assert_eq!(positive_seconds(f64::NAN), None);
        assert_eq!(positive_seconds(-1.0), None);
        assert_eq!(positive_seconds(0.0), None);
        assert_eq!(positive_seconds(1e300), Some(CENTURY));
        assert_eq!(positive_seconds(1.5), Some(Duration::from_millis(1500)));
    }
}
