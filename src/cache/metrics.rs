//! What the cache records through the `metrics` facade (feature `metrics`). Every recording
//! call site in the cache is one line; the feature gate lives here only, and without the feature
//! the recorders compile to nothing.

use std::time::Duration;

/// Names of the metrics recorded with the `metrics` feature, through the `metrics` facade.
#[cfg(feature = "metrics")]
pub mod metric {
    /// Counter: token requests (calls of the token source), label `outcome` = `success` |
    /// `failure`.
    pub const TOKEN_REQUESTS: &str = "tower_client_credentials_token_requests_total";
    /// Histogram: duration of a token request in seconds, failures included.
    pub const REFRESH_DURATION: &str = "tower_client_credentials_refresh_duration_seconds";
    /// Counter: callers that found no valid token and waited for a refresh.
    pub const WAITERS: &str = "tower_client_credentials_refresh_waiters_total";
    /// Counter: refreshes started ahead of expiry.
    pub const REFRESH_AHEAD: &str = "tower_client_credentials_refresh_ahead_total";
    /// Counter: requests served with a token in its refresh-ahead window (past its refresh
    /// point). A rising count with no new token means refreshes are failing.
    pub const SERVED_DURING_REFRESH_AHEAD: &str =
        "tower_client_credentials_served_during_refresh_ahead_total";
    /// Gauge: Unix time (seconds) at which the current token expires; the remaining lifetime
    /// is this minus the current time.
    pub const TOKEN_EXPIRY: &str = "tower_client_credentials_token_expiry_timestamp_seconds";
    /// Gauge: lifetime in seconds of the current token when it was received.
    pub const TOKEN_LIFETIME: &str = "tower_client_credentials_token_lifetime_seconds";
}

/// A call of the token source ended, after `elapsed`.
pub(super) fn token_request(succeeded: bool, elapsed: Duration) {
    #[cfg(feature = "metrics")]
    {
        let outcome = if succeeded { "success" } else { "failure" };
        metrics::counter!(metric::TOKEN_REQUESTS, "outcome" => outcome).increment(1);
        metrics::histogram!(metric::REFRESH_DURATION).record(elapsed.as_secs_f64());
    }
    let _ = (succeeded, elapsed);
}

/// A caller found no valid token and waits for a refresh.
pub(super) fn waiter() {
    #[cfg(feature = "metrics")]
    metrics::counter!(metric::WAITERS).increment(1);
}

/// A refresh was started ahead of expiry.
pub(super) fn refresh_ahead_started() {
    #[cfg(feature = "metrics")]
    metrics::counter!(metric::REFRESH_AHEAD).increment(1);
}

/// A request was served with a token past its refresh point.
pub(super) fn served_during_refresh_ahead() {
    #[cfg(feature = "metrics")]
    metrics::counter!(metric::SERVED_DURING_REFRESH_AHEAD).increment(1);
}

/// A new token with `lifetime` left was stored.
pub(super) fn new_token(lifetime: Duration) {
    #[cfg(feature = "metrics")]
    {
        // An expiry timestamp rather than a "remaining lifetime" gauge, which would go stale
        // between refreshes: remaining = expiry − now, at any moment.
        let expiry = std::time::SystemTime::now() + lifetime;
        let epoch = expiry
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        metrics::gauge!(metric::TOKEN_EXPIRY).set(epoch.as_secs_f64());
        metrics::gauge!(metric::TOKEN_LIFETIME).set(lifetime.as_secs_f64());
    }
    let _ = lifetime;
}
