//! A cheap, conservative clock for the per-request expiry check.
//!
//! Reading the precise monotonic clock (`Instant::now()`, vDSO `CLOCK_MONOTONIC`) costs 30–40 ns
//! on the project's VM, about an eighth of a whole request through the layer. Linux's
//! `CLOCK_MONOTONIC_COARSE` costs about 10 ns: it is the same monotonic time as of the last
//! timer tick the kernel handled, so it never leads the precise clock and lags it by about its
//! resolution (`clock_getres`, one tick: 1–10 ms). *About*: the lag is a tick plus the time the
//! kernel takes to handle it; on the project's VM (4 ms ticks) 1 % of reads lagged by 4.00–4.08
//! ms (`tests::the_coarse_clock_lags_…`), so a margin of exactly one resolution, as first
//! proposed, would serve a token up to 80 µs past its expiry. A [`CoarseDeadline`] is a deadline
//! of the precise clock moved into the coarse clock's terms and *earlier* by a safety margin of
//! at least the lag, so that
//!
//! > the coarse clock says "before the deadline" ⇒ the precise clock is before the deadline.
//!
//! Derivation. When the deadline `D` (precise) is converted, the coarse clock is read first (`c0`),
//! then the precise one (`p0`); `c0 ≤ p0` (coarse never leads, and was read earlier). The coarse
//! deadline is `c0 + (D − p0) − margin`. Later, at a check, the coarse clock reads `c1` while the
//! precise clock is at `p1 ≤ c1 + lag`. If `c1 < c0 + (D − p0) − margin`, then
//! `p1 ≤ c1 + lag < c0 − p0 + D − margin + lag ≤ D − margin + lag ≤ D` whenever `margin ≥ lag`.
//! `tests::coarse_before_deadline_implies_precise_before_deadline` hammers it with the real
//! clocks at a margin of two ticks.
//!
//! The margin used is the clock's resolution plus one second: the resolution and the handling
//! time for the proof, and room for ticks that a stalled (virtual) CPU handles late (Linux
//! catches up after a few missed ticks). It costs nothing: in the last second before a deadline
//! the caller decides with the precise clock.
//!
//! # tokio's paused clock
//!
//! The deadlines the cache keeps are `tokio::time::Instant`s, so that tests can drive them with
//! tokio's paused clock (`tokio::time::pause`, `advance`, `start_paused`). A paused tokio clock
//! moves only when the test moves it; the operating system's clocks do not follow. So the
//! conversion reads tokio's clock twice: equal readings mean it is paused (a running clock has
//! moved by at least a nanosecond between two reads), and then no coarse deadline is made: every
//! check of that token uses tokio's clock, exactly as before this module existed. A tokio clock
//! paused *after* a token was stored is not seen until the next token (or a new refresh point of
//! the same one); tests pause at the start, before any token exists (`start_paused = true`).
//! A false "paused" (a precise clock too coarse to tell two reads apart) only costs speed.
//!
//! Elsewhere than Linux and Android, no coarse clock is used: every check reads the precise clock.

use std::time::Duration;

use tokio::time::Instant;

/// A deadline in the coarse clock's terms, moved earlier by the safety margin: while
/// [`is_ahead`](Self::is_ahead), the precise clock is before the deadline it was made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CoarseDeadline(
    /// Nanoseconds of the coarse clock; 0: passed (or not known with the coarse clock).
    u64,
);

impl CoarseDeadline {
    /// Never ahead: every check decides with the precise clock.
    pub(crate) const PASSED: CoarseDeadline = CoarseDeadline(0);

    /// The coarse deadline for `deadline` with the production safety margin; [`PASSED`]
    /// (Self::PASSED) when there is no coarse clock, tokio's clock is paused, or less than the
    /// margin remains.
    pub(crate) fn before(deadline: Instant) -> CoarseDeadline {
        match margin() {
            Some(margin) => Self::with_margin(deadline, margin),
            None => Self::PASSED,
        }
    }

    fn with_margin(deadline: Instant, margin: Duration) -> CoarseDeadline {
        // The order of the reads is what the proof in the module docs needs: coarse first.
        let coarse = now_nanos();
        let precise = Instant::now();
        if Instant::now() == precise {
            // tokio's clock is paused (see the module docs).
            return Self::PASSED;
        }
        let remaining = deadline.saturating_duration_since(precise);
        match remaining.checked_sub(margin) {
            Some(ahead) if !ahead.is_zero() => {
                let ahead = u64::try_from(ahead.as_nanos()).unwrap_or(u64::MAX);
                CoarseDeadline(coarse.saturating_add(ahead))
            }
            _ => Self::PASSED,
        }
    }

    /// Whether the coarse clock is before this deadline; then the precise clock is before the
    /// deadline this was made from. About 10 ns, no syscall.
    #[inline(always)]
    pub(crate) fn is_ahead(self) -> bool {
        imp::ENABLED && now_nanos() < self.0
    }
}

/// The safety margin, once per process: `None` when there is no usable coarse clock.
fn margin() -> Option<Duration> {
    static MARGIN: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *MARGIN.get_or_init(|| {
        let resolution = imp::resolution()?;
        // A clock that ticks more coarsely than this would serve too few requests to be worth it,
        // and is not what Linux documents; stay with the precise clock.
        (resolution <= Duration::from_millis(100)).then(|| resolution + LATE_TICK_ALLOWANCE)
    })
}

/// Added to the resolution: covers the time the kernel takes to handle a tick, and ticks a
/// stalled (virtual) CPU handles late.
const LATE_TICK_ALLOWANCE: Duration = Duration::from_secs(1);

#[inline(always)]
fn now_nanos() -> u64 {
    imp::now_nanos()
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use std::time::Duration;

    use rustix::time::{clock_getres, clock_gettime, ClockId};

    pub(super) const ENABLED: bool = true;

    /// `CLOCK_MONOTONIC_COARSE` in nanoseconds (vDSO: no syscall).
    #[inline(always)]
    pub(super) fn now_nanos() -> u64 {
        let now = clock_gettime(ClockId::MonotonicCoarse);
        // Monotonic time is time since boot: non-negative, and 2^64 ns is 584 years.
        (now.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(now.tv_nsec as u64)
    }

    /// The clock's resolution, `None` if the kernel reports a nonsensical one.
    pub(super) fn resolution() -> Option<Duration> {
        let resolution = clock_getres(ClockId::MonotonicCoarse);
        let nanos = u64::try_from(resolution.tv_nsec).ok()?;
        let secs = u64::try_from(resolution.tv_sec).ok()?;
        let resolution = Duration::from_secs(secs) + Duration::from_nanos(nanos);
        (!resolution.is_zero()).then_some(resolution)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    use std::time::Duration;

    pub(super) const ENABLED: bool = false;

    #[inline(always)]
    pub(super) fn now_nanos() -> u64 {
        0
    }

    pub(super) fn resolution() -> Option<Duration> {
        None
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use rustix::time::{clock_gettime, ClockId};

    use super::*;

    /// The resolution the kernel reports.
    fn resolution() -> Duration {
        imp::resolution().expect("CLOCK_MONOTONIC_COARSE has a resolution")
    }

    /// The clock in nanoseconds that `std::time::Instant` reads on Linux.
    fn precise_nanos() -> u64 {
        let now = clock_gettime(ClockId::Monotonic);
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    }

    #[test]
    fn coarse_before_deadline_implies_precise_before_deadline() {
        // Hammers the check around deadlines placed at random points within a few ticks, with a
        // margin of two ticks (the production margin is a second larger): every time the coarse
        // clock says "ahead", the precise clock must be before the deadline. One tick would not
        // do: the coarse clock lags by up to a tick *plus* the time the kernel takes to handle
        // the tick (tens of microseconds on the project's VM, see the next test).
        let margin = resolution() * 2;
        let mut ahead_seen = 0_u64;
        let mut deadlines = 0_u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(1500) {
            let offset = margin.mul_f64(1.0 + 2.0 * fastrand::f64());
            let deadline = Instant::now() + offset;
            let coarse = CoarseDeadline::with_margin(deadline, margin);
            deadlines += 1;
            loop {
                // The precise clock at the moment of the coarse read lies between these two
                // reads; a thread preempted in between widens the window, so only a tight
                // window proves anything, and a wide one is skipped.
                let before = Instant::now();
                let ahead = coarse.is_ahead();
                let after = Instant::now();
                if !ahead {
                    break;
                }
                assert!(
                    before < deadline,
                    "the coarse clock said ahead {:?} after the deadline",
                    before - deadline
                );
                if after - before < Duration::from_micros(20) {
                    assert!(
                        after < deadline,
                        "the coarse clock said ahead {:?} after the deadline",
                        after - deadline
                    );
                    ahead_seen += 1;
                }
            }
        }
        assert!(deadlines > 100, "only {deadlines} deadlines were tried");
        // Not vacuous: the coarse check said "ahead" many times close to the deadlines.
        assert!(
            ahead_seen > 10 * deadlines,
            "the coarse check said ahead only {ahead_seen} times over {deadlines} deadlines"
        );
    }

    #[test]
    fn the_coarse_clock_lags_the_precise_clock_within_the_margin_and_never_leads_it() {
        // The assumption of the proof, observed: both are the kernel's monotonic time (std's
        // `Instant` is `CLOCK_MONOTONIC` on Linux), the coarse one as of the last tick handled.
        // Reads whose bracketing precise reads are more than 2 µs apart (the thread was
        // preempted) say nothing about the lag and are skipped.
        let started = std::time::Instant::now();
        let (mut max_lag, mut samples) = (0, 0_u64);
        while started.elapsed() < Duration::from_millis(300) {
            let before = precise_nanos();
            let coarse = imp::now_nanos();
            let after = precise_nanos();
            assert!(coarse <= after, "coarse led by {} ns", coarse - after);
            if after - before < 2_000 {
                max_lag = max_lag.max(after - coarse);
                samples += 1;
            }
        }
        eprintln!(
            "largest lag {max_lag} ns over {samples} samples; resolution {:?}",
            resolution()
        );
        assert!(samples > 1000);
        assert!(Duration::from_nanos(max_lag) < margin().unwrap());
    }

    #[test]
    fn production_margin_is_the_resolution_plus_the_late_tick_allowance() {
        assert_eq!(margin(), Some(resolution() + LATE_TICK_ALLOWANCE));
        assert!(resolution() <= Duration::from_millis(100));
    }

    #[test]
    fn deadlines_within_the_margin_are_passed() {
        let margin = Duration::from_millis(50);
        assert_eq!(
            CoarseDeadline::with_margin(Instant::now() + margin / 2, margin),
            CoarseDeadline::PASSED
        );
        assert_eq!(
            CoarseDeadline::with_margin(Instant::now(), margin),
            CoarseDeadline::PASSED
        );
        assert!(!CoarseDeadline::PASSED.is_ahead());
        let far = CoarseDeadline::with_margin(Instant::now() + Duration::from_secs(60), margin);
        assert!(far.is_ahead());
        // A century away (the crate's longest duration) neither overflows nor wraps.
        let century = CoarseDeadline::with_margin(Instant::now() + crate::time::CENTURY, margin);
        assert!(century.is_ahead());
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_tokio_clock_gets_no_coarse_deadline() {
        let deadline = Instant::now() + Duration::from_secs(3600);
        assert_eq!(CoarseDeadline::before(deadline), CoarseDeadline::PASSED);
        tokio::time::resume();
        assert!(CoarseDeadline::before(deadline).is_ahead());
    }
}
