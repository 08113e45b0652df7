//! The shared token cache: one current token, read lock-free; at most one refresh at a time;
//! refresh ahead of expiry; backoff after failures.
//!
//! # How a request meets the cache
//!
//! * **Fresh token** (before its jittered refresh point): one lock-free `ArcSwap` load, one
//!   coarse clock read and a clone of the prebuilt header value. No allocation, lock or await.
//! * **Refresh-ahead window** (after the refresh point, before expiry): same as fresh, and the
//!   first such request starts one background refresh. Nobody waits for it.
//! * **No valid token** (cold start, expired, invalidated): the request waits for the single
//!   in-flight refresh, starting it if needed. Every waiter gets the same result or error.
//! * **Backing off** (the last refresh failed, no valid token, the next attempt is not due): the
//!   request fails at once with [`ErrorKind::BackingOff`](crate::ErrorKind::BackingOff), carrying the last error and when the
//!   next attempt is due — unless [`TokenCacheBuilder::max_backoff_wait`] lets it wait for that
//!   attempt.
//!
//! # Failure behaviour
//!
//! A failed refresh is followed by exponential backoff with jitter (100 ms base, ×2, capped at
//! 30 s by default; each wait is a random point in the upper half of its step, so it is at least
//! half the step); an answer carrying `Retry-After` or Okta's `X-Rate-Limit-Reset` sets a
//! floor, capped by [`TokenCacheBuilder::max_retry_after`]. However many requests arrive, the
//! source sees at most one attempt per backoff step. A failed refresh never replaces a token
//! that is still valid: it keeps being served until it expires.
//!
//! A permanent failure (an error whose [`is_transient`](crate::Error::is_transient) is false:
//! `invalid_client`, `invalid_scope`, a bare 401, ...) is followed by a longer backoff of its
//! own: 5 s, doubling, capped at 5 minutes by default
//! ([`TokenCacheBuilder::permanent_backoff_base`], [`TokenCacheBuilder::max_permanent_backoff`]).
//! A refresh stopped because its tokio runtime shut down is not a failure: no backoff, and a
//! request waiting for it on another runtime starts it again there. Only the running refresh's
//! result counts: one given up on (its runtime no longer driven) changes nothing when it ends.
//! [`TokenCache::status`] reports all of this for health checks.
//!
//! # Token lifetimes
//!
//! The lifetime is taken from the token as the source gives it (for
//! [`ClientCredentials`](crate::ClientCredentials): `expires_in`, else the JWT `exp` claim, else
//! the configured default). Lifetimes over [`TokenCacheBuilder::max_lifetime`] (one year by
//! default) are clamped to it. The refresh margin is the larger of 30 s and 10 % of the lifetime,
//! capped at half of it, and the refresh point is moved earlier by a random part of up to half the
//! margin so that replicas started together do not refresh together. A token is never handed out
//! at or after its computed expiry.

mod builder;
mod metrics;
mod read;
mod refresh;
mod schedule;
mod status;
mod task;
#[cfg(test)]
mod tests;
mod wait;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use http::HeaderValue;

pub use self::builder::TokenCacheBuilder;
#[cfg(feature = "metrics")]
pub use self::metrics::metric;
pub(crate) use self::read::{CurrentGuard, Reader};
pub use self::status::{TokenState, TokenStatus};
pub(crate) use self::wait::TokenWait;

use self::builder::Config;
use self::read::Current;
use self::refresh::RefreshState;
use self::task::Flight;
use crate::error::Error;
use crate::source::TokenSource;
use crate::token::Token;

/// A token shared by every clone of a [`BearerAuthLayer`](crate::BearerAuthLayer) and of the
/// services it makes.
///
/// Clone it to share it (a reference count). Build it with [`TokenCache::builder`] to configure
/// refresh and failure behaviour, or let [`BearerAuthLayer::new`](crate::BearerAuthLayer::new)
/// make one with the defaults.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_client_credentials::{BoxFuture, Error, Token, TokenCache, TokenSource};
///
/// struct Static;
/// impl TokenSource for Static {
///     fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
///         Box::pin(async { Token::bearer("t0k3n", Some(Duration::from_secs(3600))) })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let cache = TokenCache::builder(Static)
///     .max_backoff(Duration::from_secs(10))
///     .build();
/// let token = cache.token().await?;
/// assert!(token.remaining_lifetime().unwrap() > Duration::from_secs(3500));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TokenCache {
    shared: Arc<Shared>,
}

/// What every clone of a [`TokenCache`] shares.
struct Shared {
    /// The token being served, read lock-free; replaced only through
    /// [`replace_current`](Shared::replace_current).
    current: ArcSwapOption<Current>,
    /// How many times `current` was replaced: what a [`Reader`] compares to know its token is
    /// still the current one.
    replaced: AtomicU64,
    source: Arc<dyn TokenSource>,
    config: Config,
    /// The running refresh, for callers that join it without the mutex (see `wait.rs`); the
    /// mutex's state decides which refresh runs.
    flight: ArcSwapOption<Flight>,
    /// Refresh and backoff state; never locked on the read path, nor by a caller joining a
    /// running refresh.
    refresh: Mutex<RefreshState>,
    /// Coordinates refreshes with other processes through a shared store (feature `store`).
    #[cfg(feature = "store")]
    store: Option<Arc<crate::store::Coordinator>>,
}

impl TokenCache {
    /// A cache over `source` with the default settings.
    pub fn new(source: impl TokenSource) -> Self {
        Self::builder(source).build()
    }

    /// Starts configuring a cache over `source`.
    pub fn builder(source: impl TokenSource) -> TokenCacheBuilder {
        TokenCacheBuilder::new(Arc::new(source))
    }

    fn from_parts(
        source: Arc<dyn TokenSource>,
        config: Config,
        #[cfg(feature = "store")] store: Option<Arc<crate::store::Coordinator>>,
    ) -> Self {
        TokenCache {
            shared: Arc::new(Shared {
                current: ArcSwapOption::empty(),
                replaced: AtomicU64::new(0),
                flight: ArcSwapOption::empty(),
                source,
                config,
                refresh: Mutex::new(RefreshState::default()),
                #[cfg(feature = "store")]
                store,
            }),
        }
    }

    /// A token valid now: the cached one, or the result of the (single, shared) refresh.
    ///
    /// Fails fast with [`ErrorKind::BackingOff`](crate::ErrorKind::BackingOff) when the last
    /// refresh failed and the next attempt is not due (see the [module docs](crate::cache)). Must
    /// be called within a tokio runtime when a refresh is needed (outside one it fails with
    /// [`ErrorKind::Configuration`](crate::ErrorKind::Configuration)): the refresh runs as a task
    /// of its own, so dropping this future cancels nothing for the other waiters.
    pub async fn token(&self) -> Result<Token, Error> {
        self.usable_or_refreshed().await.map(|t| (*t).clone())
    }

    /// A token valid now, shared, waiting for the refresh if needed.
    pub(crate) async fn wait_for_token(&self) -> Result<Arc<Token>, Error> {
        self.usable_or_refreshed().await
    }

    /// The `Authorization` value of a token valid now, waiting for the refresh if needed.
    #[cfg(test)]
    pub(crate) async fn wait_for_header(&self) -> Result<HeaderValue, Error> {
        self.usable_or_refreshed().await.map(|t| t.header().clone())
    }

    /// The cached token, valid or not, without refreshing.
    pub fn cached(&self) -> Option<Token> {
        self.shared
            .current
            .load()
            .as_ref()
            .map(|c| (*c.token).clone())
    }

    /// The `Authorization` value of the cached token, valid or not, without refreshing.
    pub(crate) fn cached_header(&self) -> Option<HeaderValue> {
        self.shared
            .current
            .load()
            .as_ref()
            .map(|c| c.token.header().clone())
    }

    /// Drops `token` if it is still the cached one and starts one refresh for everyone; call it
    /// when the API rejected `token` (HTTP 401).
    ///
    /// A newer token that another caller already fetched is kept. Concurrent invalidations of
    /// the same token coalesce into one refresh, and invalidations are rate-limited
    /// ([`TokenCacheBuilder::min_invalidate_interval`]) so that an API that rejects every token
    /// cannot turn into a flood of token requests. Returns whether the token was dropped.
    pub fn invalidate(&self, token: &Token) -> bool {
        self.invalidate_header(token.header())
    }

    /// Fetches a token now if none is valid, so that the first request does not wait; with
    /// background refresh on, this also starts the refresh schedule.
    pub async fn prefetch(&self) -> Result<(), Error> {
        self.usable_or_refreshed().await.map(drop)
    }
}

impl Shared {
    /// Replaces the current token; readers see it at their next check.
    fn replace_current(&self, current: Option<Arc<Current>>) {
        self.current.store(current);
        // After the store (release): a reader that sees this count loads the new token.
        self.replaced.fetch_add(1, Ordering::Release);
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.shared.current.load();
        f.debug_struct("TokenCache")
            .field("token", &current.as_ref().map(|c| &c.token))
            .field("config", &self.shared.config)
            .finish()
    }
}
