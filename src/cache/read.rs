//! The per-request read path: is the cached token usable now?
//!
//! This is the hot path of the whole crate, and the one place its cost is stated: with a fresh
//! token cached, a check costs one atomic load and comparison (a per-service [`Reader`]: the
//! cache's count of token replacements against the one it saw; a service clone used once reads
//! through an `arc_swap` guard instead) and one read of the coarse monotonic clock (vDSO, about
//! 10 ns, no syscall) against the token's refresh point moved earlier by a safety margin
//! ([`CoarseDeadline`]); no allocation, lock, await or shared write. Only in the last second
//! (plus a tick) before the refresh point or expiry, or under tokio's paused clock, does the
//! precise clock decide. `benches/hot_path.rs` measures it against tower-http's
//! `SetRequestHeader` with static values (`benches/RESULTS.md`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

#[cfg(test)]
use http::HeaderValue;
use tokio::time::Instant;

use super::{metrics, Shared, TokenCache};
use crate::coarse_clock::CoarseDeadline;
use crate::token::Token;

/// The token being served, with the instants that decide whether it is usable.
pub(crate) struct Current {
    pub(super) token: Arc<Token>,
    pub(super) refresh_at: Instant,
    pub(super) expires_at: Instant,
    /// Tells apart two `Current`s of the same token (a postponed refresh point) from a new token.
    pub(super) generation: u64,
    /// `refresh_at` for the coarse clock: while it is ahead, the token is fresh (the hot path).
    fresh_until: CoarseDeadline,
}

impl Current {
    pub(super) fn new(
        token: Arc<Token>,
        refresh_at: Instant,
        expires_at: Instant,
        generation: u64,
    ) -> Self {
        Current {
            token,
            refresh_at,
            expires_at,
            generation,
            // `refresh_at` is never after `expires_at`: fresh by the coarse clock is unexpired.
            fresh_until: CoarseDeadline::before(refresh_at.min(expires_at)),
        }
    }

    /// Which token this is: equal for two `Current`s of the same token.
    #[inline(always)]
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn token(&self) -> &Token {
        &self.token
    }
}

/// The current token as [`TokenCache::current_guard`] holds it.
pub(crate) type CurrentGuard = arc_swap::Guard<Option<Arc<Current>>>;

/// A per-service view of the cache's current token: the token it last saw, and the count of
/// the cache's token replacements at that time. A check loads that count (one atomic load, no
/// write: the line stays shared by every core) and reloads the token only when it moved; all
/// of it inlined into the caller, unlike `arc_swap::Cache`, whose revalidation is a call.
#[derive(Clone)]
pub(crate) struct Reader {
    cache: TokenCache,
    /// `Shared::replaced` when `current` was loaded.
    seen: u64,
    /// `current`'s coarse refresh deadline and generation, copied: the fresh check
    /// ([`is_fresh`](Self::is_fresh)) reads only this reader and the replacement count, and
    /// follows no pointer to the token.
    fresh_until: CoarseDeadline,
    generation: u64,
    current: Option<Arc<Current>>,
}

impl Reader {
    #[inline(always)]
    fn load(&mut self) -> Option<&Current> {
        // Acquire: pairs with the release increment after each replacement, so a reader that
        // sees the new count loads the new token (or a later one).
        let replaced = self.cache.shared.replaced.load(Ordering::Acquire);
        if replaced != self.seen {
            self.reload(replaced);
        }
        self.current.as_deref()
    }

    /// The per-request check of a service that has read the cache before (the hot path): the
    /// token this reader holds is still the cache's, and fresh by the coarse clock. One atomic
    /// load and one coarse clock read; `false` sends the caller to [`TokenCache::usable`],
    /// which decides near the refresh point and starts the refresh ahead of expiry.
    #[inline(always)]
    pub(crate) fn is_fresh(&self) -> bool {
        // Acquire, as in `load`.
        self.cache.shared.replaced.load(Ordering::Acquire) == self.seen
            && self.fresh_until.is_ahead()
    }

    /// The generation of the token this reader holds (see [`Current::generation`]); meaningful
    /// after [`is_fresh`](Self::is_fresh) or [`TokenCache::usable`] said yes.
    #[inline(always)]
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    #[cold]
    #[inline(never)]
    fn reload(&mut self, replaced: u64) {
        self.set(replaced, self.cache.shared.current.load_full());
    }

    fn set(&mut self, seen: u64, current: Option<Arc<Current>>) {
        (self.fresh_until, self.generation) = match &current {
            Some(current) => (current.fresh_until, current.generation),
            None => (CoarseDeadline::PASSED, 0),
        };
        self.seen = seen;
        self.current = current;
    }
}

impl TokenCache {
    /// A reader for [`usable_header`](Self::usable_header), one per service.
    pub(crate) fn reader(&self) -> Reader {
        let seen = self.shared.replaced.load(Ordering::Acquire);
        let mut reader = Reader {
            cache: self.clone(),
            seen,
            fresh_until: CoarseDeadline::PASSED,
            generation: 0,
            current: None,
        };
        reader.set(seen, self.shared.current.load_full());
        reader
    }

    /// The cached token if it is usable now (the hot path, see the module docs). Past the
    /// token's refresh point this also starts the one refresh ahead of expiry, which nobody
    /// waits for.
    #[inline(always)]
    pub(crate) fn usable<'r>(&self, reader: &'r mut Reader) -> Option<&'r Current> {
        debug_assert!(Arc::ptr_eq(&self.shared, &reader.cache.shared));
        self.usable_starting_refresh_ahead(reader.load()?)
    }

    /// The current token as a guard: for a caller with no [`Reader`] (a service clone used
    /// once). A guard takes a slot of this thread's own, not a reference count shared with
    /// every other core, so a storm of clones does not bounce one cache line between them.
    #[inline(always)]
    pub(crate) fn current_guard(&self) -> CurrentGuard {
        self.shared.current.load()
    }

    /// [`usable`](Self::usable) for the token in `guard` (see
    /// [`current_guard`](Self::current_guard)).
    #[inline(always)]
    pub(crate) fn usable_in<'g>(&self, guard: &'g CurrentGuard) -> Option<&'g Current> {
        self.usable_starting_refresh_ahead(guard.as_ref()?)
    }

    /// The `Authorization` value of the cached token if it is usable now; see
    /// [`usable`](Self::usable).
    #[cfg(test)]
    pub(crate) fn usable_header(&self, reader: &mut Reader) -> Option<HeaderValue> {
        Some(self.usable(reader)?.token.header().clone())
    }

    /// `current` if it is usable now; past its refresh point, also starts the refresh ahead of
    /// expiry. The one place that decides whether a cached token may be sent.
    #[inline(always)]
    pub(super) fn usable_starting_refresh_ahead<'a>(
        &self,
        current: &'a Current,
    ) -> Option<&'a Current> {
        // Coarse clock before `fresh_until` ⇒ precise clock before `refresh_at` (see
        // `coarse_clock`).
        if current.fresh_until.is_ahead() {
            return Some(current);
        }
        self.usable_by_precise_clock(current)
    }

    /// Near the refresh point or expiry, or under tokio's paused clock: the precise clock
    /// decides.
    #[inline(never)]
    fn usable_by_precise_clock<'a>(&self, current: &'a Current) -> Option<&'a Current> {
        let now = Instant::now();
        if now < current.refresh_at {
            return Some(current);
        }
        self.past_refresh_point(current, now)
    }

    #[cold]
    fn past_refresh_point<'a>(&self, current: &'a Current, now: Instant) -> Option<&'a Current> {
        if now >= current.expires_at {
            return None;
        }
        metrics::served_during_refresh_ahead();
        self.shared.refresh_ahead(current.generation);
        Some(current)
    }
}

impl TokenCache {
    /// Whether a token that has not expired (by the cache's own reckoning) is cached. No side
    /// effect.
    pub(crate) fn has_unexpired_token(&self) -> bool {
        self.shared.unexpired_token().is_some()
    }
}

impl Shared {
    /// The cached token if it has not expired, with no side effect (no refresh ahead).
    pub(super) fn unexpired_token(&self) -> Option<Arc<Token>> {
        let current = self.current.load();
        let current = current.as_ref()?;
        (Instant::now() < current.expires_at).then(|| current.token.clone())
    }

    /// Whether `token` is still the cached token and has not expired. Asked by every waiter of
    /// a refresh: the coarse clock answers for a fresh token, the precise one near expiry.
    pub(super) fn is_cached_and_unexpired(&self, token: &Arc<Token>) -> bool {
        self.current.load().as_ref().is_some_and(|current| {
            Arc::ptr_eq(&current.token, token)
                && (current.fresh_until.is_ahead() || Instant::now() < current.expires_at)
        })
    }
}
