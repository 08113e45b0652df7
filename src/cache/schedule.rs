//! Pure timing maths of the cache: when a token is refreshed and expires, and how long to back
//! off after a failure. No state, no clock reads: callers pass the instants and the randomness.

use std::time::Duration;

use tokio::time::Instant;

use super::builder::Config;

const DEFAULT_MIN_MARGIN: Duration = Duration::from_secs(30);

/// When a token received at `received` with `lifetime` (already clamped) is refreshed, and when
/// it expires. `random` is uniform in `0.0..1.0`: it moves the refresh point earlier by up to
/// `refresh_jitter` × the margin, so that replicas started together do not refresh together.
///
/// The margin is the configured one, else the larger of 30 s and 10 % of the lifetime; it is
/// always capped at half the lifetime, so a short-lived token is used for at least half of it.
pub(super) fn refresh_and_expiry(
    config: &Config,
    received: Instant,
    lifetime: Duration,
    random: f64,
) -> (Instant, Instant) {
    let expires_at = received + lifetime;
    let half = lifetime / 2;
    let margin = margin(config, lifetime);
    let jitter = margin.mul_f64(config.refresh_jitter * random);
    let lead = (margin + jitter).min(half.max(margin));
    (expires_at - lead, expires_at)
}

/// The refresh margin of a token of `lifetime` (already clamped), before jitter: the configured
/// one, else the larger of 30 s and 10 % of the lifetime, at most half the lifetime.
fn margin(config: &Config, lifetime: Duration) -> Duration {
    config
        .refresh_margin
        .unwrap_or_else(|| DEFAULT_MIN_MARGIN.max(lifetime / 10))
        .min(lifetime / 2)
}

/// The one lifetime policy for a token this cache did not fetch itself (one in a shared store):
/// how much longer it is worth adopting, judged exactly as the cache will judge it once adopted
/// (the believed lifetime, with `max_lifetime` and `default_lifetime`, from its receipt) and
/// ending at its refresh point (before jitter). Zero: not worth adopting. The store's coordinator
/// uses it to choose between a stored token and the lease, and for how long a token it writes
/// stays in the store, so a replica never adopts a token its cache then refuses.
#[cfg_attr(not(feature = "store"), allow(dead_code))] // its callers: the store, tests
pub(super) fn worth_adopting_for(config: &Config, token: &crate::Token, now: Instant) -> Duration {
    let lifetime = believed_lifetime(config, token.lifetime());
    let Some(expires_at) = token.received_at().checked_add(lifetime) else {
        return Duration::ZERO;
    };
    expires_at
        .saturating_duration_since(now)
        .saturating_sub(margin(config, lifetime))
}

/// The lifetime the cache believes: the source's, else the configured default, at most
/// `max_lifetime`.
pub(super) fn believed_lifetime(config: &Config, stated: Option<Duration>) -> Duration {
    stated
        .unwrap_or(config.default_lifetime)
        .min(config.max_lifetime)
}

/// How long to wait after the `failures`-th consecutive failure. `server_wait` is what the
/// server asked for (`Retry-After`, Okta's rate-limit reset): a floor, capped by
/// `max_retry_after`. `random` is uniform in `0.0..1.0`.
pub(super) fn backoff_delay(
    config: &Config,
    failures: u32,
    server_wait: Option<Duration>,
    random: f64,
) -> Duration {
    let step = exponential_step(
        config.backoff_base,
        config.backoff_factor,
        config.max_backoff,
        failures,
    );
    with_floor(config, equal_jitter(step, random), server_wait)
}

/// How long to wait after the `failures`-th permanent failure since the last success
/// (`invalid_client`, `invalid_scope`, a bare 401, ...: see
/// [`Error::is_transient`](crate::Error::is_transient)): `permanent_backoff_base`, doubling, at
/// most `max_permanent_backoff`, jittered like [`backoff_delay`], with the server's wait as a
/// floor. Such a failure needs a person to change the configuration or the client's
/// registration; the wait keeps a misconfigured client from spending the rate limit that an
/// identity provider shares between every app of an organisation.
pub(super) fn permanent_backoff_delay(
    config: &Config,
    failures: u32,
    server_wait: Option<Duration>,
    random: f64,
) -> Duration {
    let step = exponential_step(
        config.permanent_backoff_base,
        2,
        config.max_permanent_backoff,
        failures,
    );
    with_floor(config, equal_jitter(step, random), server_wait)
}

/// `base × factor^(failures − 1)`, at most `max`, without overflow.
fn exponential_step(base: Duration, factor: u32, max: Duration, failures: u32) -> Duration {
    let exp = factor
        .checked_pow(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(exp).min(max)
}

/// A random point in the upper half of `step` ("equal jitter"), not in the whole of it ("full
/// jitter"): replicas still spread out, and every step waits at least half its length, which is
/// what bounds the attempts an outage can cause (full jitter allows a run of near-zero waits,
/// so no such bound holds).
fn equal_jitter(step: Duration, random: f64) -> Duration {
    step / 2 + (step / 2).mul_f64(random)
}

/// The server's wait, capped by `max_retry_after`, as a floor under `delay`.
fn with_floor(config: &Config, delay: Duration, server_wait: Option<Duration>) -> Duration {
    match server_wait {
        Some(server) => delay.max(server.min(config.max_retry_after)),
        None => delay,
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    fn margin_and_lifetime(config: &Config, lifetime: u64) -> (u64, u64) {
        let now = Instant::now();
        let lifetime = believed_lifetime(config, Some(Duration::from_secs(lifetime)));
        let (refresh, expires) = refresh_and_expiry(config, now, lifetime, 0.0);
        ((expires - refresh).as_secs(), (expires - now).as_secs())
    }

    #[test]
    fn margin_rules() {
        let config = Config::default();
        assert_eq!(margin_and_lifetime(&config, 3600), (360, 3600)); // 10 %
        assert_eq!(margin_and_lifetime(&config, 120), (30, 120)); // 30 s floor
        assert_eq!(margin_and_lifetime(&config, 20), (10, 20)); // capped at half
        let century = 100 * 365 * 24 * 3600;
        assert_eq!(margin_and_lifetime(&config, century).1, 365 * 24 * 3600); // a year at most
    }

    /// Issue 19 defect 2: the store and the cache judge a token by the same rule, `max_lifetime`
    /// and `default_lifetime` included.
    #[tokio::test(start_paused = true)]
    async fn a_token_is_worth_adopting_until_its_refresh_point_under_the_caps() {
        let token = crate::Token::bearer("t", Some(Duration::from_secs(3600))).unwrap();
        let config = Config::default();
        let now = Instant::now();
        assert_eq!(
            worth_adopting_for(&config, &token, now),
            Duration::from_secs(3600 - 360)
        );
        let capped = Config {
            max_lifetime: Duration::from_secs(300),
            ..Config::default()
        };
        assert_eq!(
            worth_adopting_for(&capped, &token, now),
            Duration::from_secs(300 - 30)
        );
        tokio::time::advance(Duration::from_secs(280)).await;
        assert_eq!(
            worth_adopting_for(&capped, &token, Instant::now()),
            Duration::ZERO
        );
        let unknown = crate::Token::bearer("t", None).unwrap();
        let short_default = Config {
            default_lifetime: Duration::from_secs(100),
            ..Config::default()
        };
        assert_eq!(
            worth_adopting_for(&short_default, &unknown, Instant::now()),
            Duration::from_secs(100 - 30)
        );
    }

    #[test]
    fn jitter_moves_the_refresh_point_earlier_but_not_past_half_the_lifetime() {
        let config = Config::default();
        let now = Instant::now();
        let lifetime = Duration::from_secs(3600);
        let (plain, _) = refresh_and_expiry(&config, now, lifetime, 0.0);
        let (jittered, expires) = refresh_and_expiry(&config, now, lifetime, 0.999);
        assert!(jittered < plain);
        assert!(expires - jittered <= lifetime / 2);
    }

    #[test]
    fn backoff_doubles_within_equal_jitter_and_honours_the_server() {
        let config = Config::default();
        for failures in 1..=12 {
            let step = Duration::from_millis(100)
                .saturating_mul(2u32.pow(failures - 1))
                .min(Duration::from_secs(30));
            let low = backoff_delay(&config, failures, None, 0.0);
            let high = backoff_delay(&config, failures, None, 0.999_999);
            assert_eq!(low, step / 2);
            assert!(high <= step && high > step / 2, "{failures}: {high:?}");
        }
        let server = Some(Duration::from_secs(20));
        assert_eq!(
            backoff_delay(&config, 1, server, 0.5),
            Duration::from_secs(20)
        );
        let absurd = Some(Duration::from_secs(1_000_000));
        assert_eq!(
            backoff_delay(&config, 1, absurd, 0.5),
            config.max_retry_after
        );
        assert!(backoff_delay(&config, u32::MAX, None, 0.5) <= config.max_backoff);
    }

    #[test]
    fn permanent_backoff_doubles_from_seconds_to_minutes_within_equal_jitter() {
        let config = Config::default();
        let expected_steps = [5, 10, 20, 40, 80, 160, 300, 300, 300];
        for (k, step) in expected_steps.into_iter().enumerate() {
            let step = Duration::from_secs(step);
            let failures = k as u32 + 1;
            let low = permanent_backoff_delay(&config, failures, None, 0.0);
            let high = permanent_backoff_delay(&config, failures, None, 0.999_999);
            assert_eq!(low, step / 2, "{failures}");
            assert!(high <= step && high > step / 2, "{failures}: {high:?}");
        }
        // Always longer than the transient schedule's step for the same count.
        for failures in 1..=40 {
            assert!(
                permanent_backoff_delay(&config, failures, None, 0.0)
                    >= backoff_delay(&config, failures, None, 0.999_999),
                "{failures}"
            );
        }
        // The server's wait is a floor, capped; huge counts and settings do not overflow.
        let server = Some(Duration::from_secs(600));
        assert_eq!(
            permanent_backoff_delay(&config, 1, server, 0.0),
            config.max_retry_after
        );
        assert!(permanent_backoff_delay(&config, u32::MAX, None, 0.5) <= Duration::from_secs(300));
        let config = Config {
            permanent_backoff_base: Duration::MAX,
            max_permanent_backoff: Duration::MAX,
            ..Config::default()
        };
        permanent_backoff_delay(&config, u32::MAX, None, 0.999);
    }
}
