//! [`TokenStatus`]: what the cache can say about its token, for health and readiness checks.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::TokenCache;
use crate::error::Error;

/// Where a [`TokenCache`] stands; see [`TokenStatus::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenState {
    /// No valid token and no failure since the last success: nothing fetched yet, or the token
    /// expired or was invalidated and no request has needed a new one since.
    Empty,
    /// No valid token; a refresh is running and requests wait for it.
    Refreshing,
    /// A token valid now is cached and served. A refresh ahead of expiry may be running
    /// ([`TokenStatus::refreshing`]), or failing ([`TokenStatus::last_error`]).
    Valid,
    /// No valid token; the last refresh failed with an error that may pass (an outage, a 5xx,
    /// a 429). Requests fail fast until [`TokenStatus::next_attempt_in`].
    BackingOff,
    /// No valid token; the last refresh failed with an error that will not pass by itself
    /// (`invalid_client`, `invalid_scope`, ...: the configuration or the client's registration
    /// must change). Attempts continue on the longer permanent-failure schedule.
    Failed,
}

/// A snapshot of a [`TokenCache`] for health and readiness checks and status pages, from
/// [`TokenCache::status`]. It never holds the token.
///
/// More fields may be added (hence `#[non_exhaustive]`).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_client_credentials::{BoxFuture, Error, Token, TokenCache, TokenSource, TokenState};
///
/// struct Static;
/// impl TokenSource for Static {
///     fn fetch_token(&self) -> BoxFuture<'_, Result<Token, Error>> {
///         Box::pin(async {
///             Ok(Token::bearer("t0k3n", Some(Duration::from_secs(3600)))?.with_scope("role:app"))
///         })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let cache = TokenCache::new(Static);
/// assert_eq!(cache.status().state, TokenState::Empty);
/// cache.prefetch().await?;
/// let status = cache.status();
/// assert_eq!(status.state, TokenState::Valid);
/// assert_eq!(status.scope.as_deref(), Some("role:app"));
/// assert!(status.remaining_lifetime.unwrap() > Duration::from_secs(3500));
/// assert!(status.last_error.is_none());
/// println!("{status}"); // valid, expires in 3600 s (<date>), scope "role:app"
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TokenStatus {
    /// Where the cache stands.
    pub state: TokenState,
    /// When the cached token expires (as the cache computed it: clamped, from the monotonic
    /// clock), as wall-clock time; `None` without a token.
    pub expires_at: Option<SystemTime>,
    /// How long the cached token remains valid; zero once expired, `None` without a token.
    pub remaining_lifetime: Option<Duration>,
    /// The scopes granted with the cached token (space separated), if the server said.
    pub scope: Option<String>,
    /// Whether a refresh is running (also ahead of expiry, with a valid token).
    pub refreshing: bool,
    /// Failed refreshes since the last success.
    pub consecutive_failures: u32,
    /// The error of the last refresh, if it failed; [`Error::kind`] says what kind, and
    /// [`Error::is_transient`] whether waiting can fix it. It holds no secret.
    pub last_error: Option<Error>,
    /// When the next refresh may be attempted, while the cache backs off (zero when it is due);
    /// `None` when nothing holds it back.
    pub next_attempt_in: Option<Duration>,
}

impl TokenCache {
    /// A snapshot of the cache for health and readiness checks: state, expiry, granted scopes,
    /// the last error and when the next attempt is due; never the token.
    ///
    /// It takes the cache's refresh lock for a moment: call it from a health check, not per
    /// request. Starts nothing.
    pub fn status(&self) -> TokenStatus {
        let refresh = self.shared.lock_state().snapshot();
        let now = Instant::now();
        let current = self.shared.current.load();
        let token = current.as_ref();
        let remaining = token.map(|c| c.expires_at.saturating_duration_since(now));
        let valid = remaining.is_some_and(|r| !r.is_zero());
        let state = match (&refresh.last_error, refresh.refreshing) {
            _ if valid => TokenState::Valid,
            (_, true) => TokenState::Refreshing,
            (Some(error), false) if !error.is_transient() => TokenState::Failed,
            (Some(_), false) => TokenState::BackingOff,
            (None, false) => TokenState::Empty,
        };
        TokenStatus {
            state,
            expires_at: token.and_then(|c| {
                let wall_now = SystemTime::now();
                match c.expires_at.checked_duration_since(now) {
                    Some(ahead) => wall_now.checked_add(ahead),
                    None => wall_now.checked_sub(now - c.expires_at),
                }
            }),
            remaining_lifetime: remaining,
            scope: token.and_then(|c| c.token.scope()).map(str::to_owned),
            refreshing: refresh.refreshing,
            consecutive_failures: refresh.failures,
            next_attempt_in: refresh
                .not_before
                .map(|at| at.saturating_duration_since(now)),
            last_error: refresh.last_error,
        }
    }
}

impl std::fmt::Display for TokenStatus {
    /// One line for a log or a status page, e.g. `valid, expires in 3542 s (Wed, 25 Nov 2026
    /// 15:18:57 GMT), scope "role:app"` or `failed; last refresh failed: <error>; next attempt
    /// in 40 s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            TokenState::Empty => "no token",
            TokenState::Refreshing => "refreshing",
            TokenState::Valid => "valid",
            TokenState::BackingOff => "backing off",
            TokenState::Failed => "failed",
        };
        f.write_str(state)?;
        if let (TokenState::Valid, Some(remaining)) = (self.state, self.remaining_lifetime) {
            write!(f, ", expires in {} s", remaining.as_secs())?;
            if let Some(at) = self.expires_at {
                write!(f, " ({})", httpdate::fmt_http_date(at))?;
            }
            if let Some(scope) = &self.scope {
                write!(f, ", scope {scope:?}")?;
            }
            if self.refreshing {
                f.write_str(", refreshing")?;
            }
        }
        if let Some(error) = &self.last_error {
            write!(f, "; last refresh failed: {error}")?;
        }
        if let Some(next) = self.next_attempt_in {
            write!(f, "; next attempt in {} s", next.as_secs())?;
        }
        Ok(())
    }
}
