//! Properties of the timing maths over every configuration the builder accepts (each duration
//! clamped to a century, jitter in `0.0..=1.0`, factor at least 1): nothing overflows, a token
//! is refreshed before it expires and used for at least half its lifetime, and no later input
//! moves a point backwards.

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;
use crate::time::CENTURY;

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..=CENTURY.as_secs()).prop_map(Duration::from_secs),
        (0u64..=10_000).prop_map(Duration::from_millis),
        Just(CENTURY),
        Just(Duration::ZERO),
    ]
}

prop_compose! {
    fn config()(
        refresh_margin in prop::option::of(duration()),
        refresh_jitter in 0.0f64..=1.0,
        default_lifetime in duration(),
        max_lifetime in duration(),
        backoff_base in duration(),
        backoff_factor in 1u32..=u32::MAX,
        max_backoff in duration(),
        max_retry_after in duration(),
    ) -> Config {
        Config {
            refresh_margin,
            refresh_jitter,
            default_lifetime,
            max_lifetime,
            backoff_base,
            backoff_factor,
            max_backoff,
            max_retry_after,
            ..Config::default()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn refresh_comes_before_expiry_and_after_half_the_lifetime(
        config in config(),
        stated in prop::option::of(duration()),
        longer in duration(),
        random in 0.0f64..1.0,
    ) {
        let received = Instant::now();
        let lifetime = believed_lifetime(&config, stated);
        prop_assert!(lifetime <= config.max_lifetime);
        let (refresh, expires) = refresh_and_expiry(&config, received, lifetime, random);
        prop_assert_eq!(expires, received + lifetime);
        prop_assert!(refresh <= expires);
        prop_assert!(refresh >= received + lifetime / 2);
        // A longer lifetime never expires earlier, nor refreshes earlier than half of it.
        let longer = (lifetime + longer).min(CENTURY);
        let (refresh_longer, expires_longer) = refresh_and_expiry(&config, received, longer, random);
        prop_assert!(expires_longer >= expires);
        prop_assert!(refresh_longer >= received + longer / 2);
        // Later received, later points.
        let later = received + Duration::from_secs(1);
        let (refresh_later, expires_later) = refresh_and_expiry(&config, later, lifetime, random);
        prop_assert!(refresh_later >= refresh && expires_later >= expires);
    }

    #[test]
    fn backoff_is_bounded_and_never_shrinks_as_failures_grow(
        config in config(),
        failures in any::<u32>(),
        server_wait in prop::option::of(prop_oneof![duration(), Just(Duration::MAX)]),
        random in 0.0f64..1.0,
    ) {
        let delay = backoff_delay(&config, failures, server_wait, random);
        prop_assert!(delay <= config.max_backoff.max(config.max_retry_after));
        let next = backoff_delay(&config, failures.saturating_add(1), server_wait, random);
        prop_assert!(next >= delay, "{:?} then {:?}", delay, next);
        // Every wait can be added to now.
        prop_assert!(Instant::now().checked_add(delay).is_some());
    }
}
