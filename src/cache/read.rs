//! The per-request read path: is the cached token usable now?
//!
//! This is the hot path of the whole crate, and the one place its cost is stated: with a fresh
//! token cached, a request costs one atomic pointer comparison (a per-service `arc_swap::Cache`
//! of the shared slot), one monotonic clock read (vDSO, no syscall) and a reference-count bump of
//! the prebuilt `Authorization` value; no allocation, lock or await. `benches/hot_path.rs`
//! measures it against tower-http's `SetRequestHeader` with static values (`benches/RESULTS.md`).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::time::Instant;

use super::{metrics, Shared, TokenCache};
use crate::token::Token;

/// The token being served, with the instants that decide whether it is usable.
pub(super) struct Current {
    pub(super) token: Arc<Token>,
    pub(super) refresh_at: Instant,
    pub(super) expires_at: Instant,
    /// Tells apart two `Current`s of the same token (a postponed refresh point) from a new token.
    pub(super) generation: u64,
}

/// A per-service view of the cache's current token: an `arc_swap::Cache`, whose load is one
/// atomic pointer comparison with the shared slot (cheaper than a fresh `ArcSwap` load).
pub(crate) struct Reader(arc_swap::Cache<Arc<ArcSwapOption<Current>>, Option<Arc<Current>>>);

impl Clone for Reader {
    fn clone(&self) -> Self {
        Reader(self.0.clone())
    }
}

impl TokenCache {
    /// A reader for [`usable_header`](Self::usable_header), one per service.
    pub(crate) fn reader(&self) -> Reader {
        Reader(arc_swap::Cache::new(self.shared.current.clone()))
    }

    /// The `Authorization` value of the cached token if it is usable now (the hot path, see the
    /// module docs). Past the token's refresh point this also starts the one refresh ahead of
    /// expiry, which nobody waits for.
    #[inline(always)]
    pub(crate) fn usable_header(&self, reader: &mut Reader) -> Option<HeaderValue> {
        let current = reader.0.load();
        Some(
            self.usable_starting_refresh_ahead(current.as_ref()?)?
                .token
                .header()
                .clone(),
        )
    }

    /// `current` if it is usable now; past its refresh point, also starts the refresh ahead of
    /// expiry. The one place that decides whether a cached token may be sent.
    #[inline(always)]
    pub(super) fn usable_starting_refresh_ahead<'a>(
        &self,
        current: &'a Current,
    ) -> Option<&'a Current> {
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

impl Shared {
    /// The cached token if it has not expired, with no side effect (no refresh ahead).
    pub(super) fn unexpired_token(&self) -> Option<Arc<Token>> {
        let current = self.current.load();
        let current = current.as_ref()?;
        (Instant::now() < current.expires_at).then(|| current.token.clone())
    }

    /// Whether `token` is still the cached token and has not expired.
    pub(super) fn is_cached_and_unexpired(&self, token: &Arc<Token>) -> bool {
        self.current.load().as_ref().is_some_and(|current| {
            Arc::ptr_eq(&current.token, token) && Instant::now() < current.expires_at
        })
    }
}
