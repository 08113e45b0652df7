//! The access token, as the cache keeps it.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::error::Error;
use crate::secret_header::SecretHeaderValue;

/// An access token with its lifetime.
///
/// The token text is kept as a [`SecretString`] (zeroized on drop) and `Debug` never prints it.
/// The prebuilt `Authorization` value is zeroized too, when the last copy of it (in a request
/// handed to the inner service, say) is dropped; copies the HTTP client makes while sending
/// (its write buffer) are beyond the crate's reach.
/// Expiry is monotonic ([`tokio::time::Instant`]), computed when the token was received.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_client_credentials::Token;
///
/// let token = Token::bearer("abc", Some(Duration::from_secs(3600)))?;
/// assert!(token.remaining_lifetime().unwrap() <= Duration::from_secs(3600));
/// assert!(!format!("{token:?}").contains("abc"));
/// # Ok::<(), tower_client_credentials::Error>(())
/// ```
#[derive(Clone)]
pub struct Token {
    access_token: SecretString,
    header: SecretHeaderValue,
    dpop_bound: bool,
    received_at: Instant,
    lifetime: Option<Duration>,
    scope: Option<String>,
    extra: serde_json::Map<String, serde_json::Value>,
    /// RFC 7638 thumbprint (`jkt`) of the DPoP key the token was requested with.
    dpop_thumbprint: Option<String>,
    /// `x5t#S256` of the client certificate the token was requested over.
    certificate_thumbprint: Option<String>,
}

impl Token {
    /// A bearer token that expires `lifetime` from now (`None`: no known expiry).
    ///
    /// Fails unless the token is an RFC 6750 §2.1 `b64token` (letters, digits, `-._~+/`, then
    /// any `=` padding): anything else (a space, a comma, a non-ASCII letter) would change what
    /// the `Authorization` header says. The error never quotes the token.
    pub fn bearer(
        access_token: impl Into<String>,
        lifetime: Option<Duration>,
    ) -> Result<Self, Error> {
        Self::with_scheme(access_token.into(), lifetime, false)
    }

    /// A DPoP-bound token (RFC 9449, `token_type` `DPoP`) that expires `lifetime` from now: sent
    /// as `Authorization: DPoP <token>`, with a proof from the key it is bound to (feature
    /// `dpop`, `BearerAuthLayer::dpop`).
    pub fn dpop(
        access_token: impl Into<String>,
        lifetime: Option<Duration>,
    ) -> Result<Self, Error> {
        Self::with_scheme(access_token.into(), lifetime, true)
    }

    fn with_scheme(
        access_token: String,
        lifetime: Option<Duration>,
        dpop_bound: bool,
    ) -> Result<Self, Error> {
        // A secret from the start, so that it is zeroized on every path, the error one included.
        let access_token = SecretString::from(access_token);
        let scheme = if dpop_bound { "DPoP" } else { "Bearer" };
        let header = authorization_header(scheme, access_token.expose_secret())?;
        let lifetime = lifetime.map(crate::time::clamp_to_century);
        Ok(Token {
            access_token,
            header,
            dpop_bound,
            received_at: Instant::now(),
            lifetime,
            scope: None,
            extra: serde_json::Map::new(),
            dpop_thumbprint: None,
            certificate_thumbprint: None,
        })
    }

    /// Sets the scopes the server granted (space separated, as in RFC 6749 §5.1).
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Starts the lifetime at `at` (the moment the token request was sent: the server's clock
    /// started no earlier, so expiry is never computed late by the round trip).
    pub(crate) fn with_received_at(mut self, at: Instant) -> Self {
        self.received_at = at;
        self
    }

    pub(crate) fn with_extra(mut self, extra: serde_json::Map<String, serde_json::Value>) -> Self {
        self.extra = extra;
        self
    }

    /// Records the DPoP key the token was requested with (its RFC 7638 thumbprint).
    #[cfg_attr(not(any(feature = "dpop", feature = "store")), allow(dead_code))]
    pub(crate) fn with_dpop_thumbprint(mut self, thumbprint: String) -> Self {
        self.dpop_thumbprint = Some(thumbprint);
        self
    }

    /// Records the client certificate the token was requested over (its `x5t#S256`).
    #[cfg_attr(not(any(feature = "dpop", feature = "store")), allow(dead_code))]
    pub(crate) fn with_certificate_thumbprint(mut self, thumbprint: String) -> Self {
        self.certificate_thumbprint = Some(thumbprint);
        self
    }

    /// The RFC 7638 JWK SHA-256 thumbprint (base64url) of the DPoP key this token was requested
    /// with: the `jkt` a DPoP-bound token's `cnf` claim names. `None` for a token fetched without
    /// a DPoP key (or made by hand with [`Token::bearer`] / [`Token::dpop`]).
    ///
    /// A token read from a shared store is only used by a cache whose source has the same key
    /// (replicas that load one PEM share one token).
    ///
    /// ```
    /// use tower_client_credentials::Token;
    ///
    /// let token = Token::dpop("abc", None)?;
    /// assert_eq!(token.dpop_thumbprint(), None);
    /// # Ok::<(), tower_client_credentials::Error>(())
    /// ```
    pub fn dpop_thumbprint(&self) -> Option<&str> {
        self.dpop_thumbprint.as_deref()
    }

    /// The `x5t#S256` (base64url SHA-256 of the DER) of the client certificate this token was
    /// requested over (RFC 8705 §3.1): what a certificate-bound token's `cnf` claim names.
    /// `None` when no certificate of the crate's own presented it.
    ///
    /// ```
    /// use tower_client_credentials::Token;
    ///
    /// let token = Token::bearer("abc", None)?;
    /// assert_eq!(token.certificate_thumbprint(), None);
    /// # Ok::<(), tower_client_credentials::Error>(())
    /// ```
    pub fn certificate_thumbprint(&self) -> Option<&str> {
        self.certificate_thumbprint.as_deref()
    }

    /// The access token itself. Handle with care: never log it.
    pub fn secret(&self) -> &SecretString {
        &self.access_token
    }

    /// The token type: `Bearer`, or `DPoP` for a token bound to a DPoP key.
    pub fn token_type(&self) -> &'static str {
        if self.dpop_bound {
            "DPoP"
        } else {
            "Bearer"
        }
    }

    /// Whether the token is bound to a DPoP key (`token_type` `DPoP`).
    pub fn is_dpop(&self) -> bool {
        self.dpop_bound
    }

    /// The prebuilt `Authorization: Bearer ...` (or `DPoP ...`) value, marked sensitive.
    pub(crate) fn header(&self) -> &HeaderValue {
        self.header.shared()
    }

    /// The prebuilt `Authorization` value, from which a service makes its own copy.
    pub(crate) fn secret_header(&self) -> &SecretHeaderValue {
        &self.header
    }

    /// The lifetime the server gave the token when it was received (`None`: unknown).
    pub fn lifetime(&self) -> Option<Duration> {
        self.lifetime
    }

    /// The instant the token expires, as the client computes it.
    pub fn expires_at(&self) -> Option<Instant> {
        self.lifetime.and_then(|l| self.received_at.checked_add(l))
    }

    /// How long the token remains valid from now (`None`: unknown; zero: expired).
    pub fn remaining_lifetime(&self) -> Option<Duration> {
        self.expires_at()
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// The instant the token was received.
    pub fn received_at(&self) -> Instant {
        self.received_at
    }

    /// The granted scopes as the server returned them, if it did.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The granted scopes, split on spaces.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
    }

    /// Fields of the token response this crate does not interpret, kept as received.
    pub fn extra(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.extra
    }

    /// How long this process has held the token (since it was received): with the lifetime,
    /// how a token is written to a store shared with other processes, whose clocks (wall or
    /// monotonic) are unrelated to ours.
    #[cfg(feature = "store")]
    pub(crate) fn held_for(&self) -> Duration {
        Instant::now().saturating_duration_since(self.received_at)
    }

    /// A token read from a store, received `held` ago (the writer's holding time plus the
    /// record's age by the store's clock). Should this process's monotonic clock not reach back
    /// that far, the lifetime starts now, shortened by `held`: a token is never believed to
    /// live longer than it was issued for.
    #[cfg(feature = "store")]
    pub(crate) fn held_since(mut self, held: Duration) -> Self {
        let now = Instant::now();
        match now.checked_sub(held) {
            Some(at) => self.received_at = at,
            None => {
                self.received_at = now;
                self.lifetime = self.lifetime.map(|l| l.saturating_sub(held));
            }
        }
        self
    }

    /// The `exp` claim of the token if it is a JWT, read without verifying anything. Used only to
    /// learn a lifetime the server did not state.
    pub(crate) fn jwt_expiry_unverified(access_token: &str) -> Option<std::time::SystemTime> {
        let mut parts = access_token.split('.');
        let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || payload.len() > 16 * 1024 {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        #[derive(serde::Deserialize)]
        struct Claims {
            exp: Option<serde_json::Number>,
        }
        let claims: Claims = serde_json::from_slice(&bytes).ok()?;
        let exp = claims.exp?.as_f64()?;
        if !(0.0..=4_102_444_800.0).contains(&exp) {
            return None;
        }
        Some(std::time::UNIX_EPOCH + Duration::from_secs(exp as u64))
    }
}

pub(crate) fn authorization_header(
    scheme: &str,
    access_token: &str,
) -> Result<SecretHeaderValue, Error> {
    if access_token.is_empty() {
        return Err(Error::new(
            crate::ErrorKind::InvalidTokenResponse,
            "the access token is empty",
        ));
    }
    if !is_b64token(access_token) {
        // Never echo the token: say only what is wrong with it.
        return Err(Error::new(
            crate::ErrorKind::InvalidTokenResponse,
            "the access token is not an RFC 6750 b64token (letters, digits, `-._~+/`, then `=` \
             padding), so an `Authorization` header cannot carry it; check the token endpoint \
             and its token format",
        ));
    }
    // Zeroized with the header value (see `SecretHeaderValue`), also if it is rejected.
    let mut value = Vec::with_capacity(scheme.len() + 1 + access_token.len());
    value.extend_from_slice(scheme.as_bytes());
    value.push(b' ');
    value.extend_from_slice(access_token.as_bytes());
    SecretHeaderValue::new(value).map_err(|_| {
        // Never echo the token: say only what is wrong with it.
        Error::new(
            crate::ErrorKind::InvalidTokenResponse,
            "the access token holds characters that are not allowed in an HTTP header",
        )
    })
}

/// RFC 6750 §2.1: `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(text: &str) -> bool {
    let body = text.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type())
            .field("lifetime", &self.lifetime)
            .field("remaining_lifetime", &self.remaining_lifetime())
            .field("scope", &self.scope)
            .field("dpop_thumbprint", &self.dpop_thumbprint)
            .field("certificate_thumbprint", &self.certificate_thumbprint)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{}",
            e.encode(r#"{"alg":"RS256"}"#),
            e.encode(payload),
            e.encode("sig")
        )
    }

    #[test]
    fn header_is_sensitive_and_prefixed() {
        let token = Token::bearer("abc.def", None).unwrap();
        assert_eq!(token.header(), "Bearer abc.def");
        assert!(token.header().is_sensitive());
    }

    #[test]
    fn dpop_tokens_get_their_scheme() {
        let token = Token::dpop("abc.def", None).unwrap();
        assert_eq!(token.header(), "DPoP abc.def");
        assert!(token.header().is_sensitive() && token.is_dpop());
        assert_eq!(token.token_type(), "DPoP");
        assert_eq!(Token::bearer("x", None).unwrap().token_type(), "Bearer");
    }

    #[test]
    fn bad_token_text_is_an_error_without_the_token() {
        let err = Token::bearer("secret\ntoken", None).unwrap_err();
        assert!(!err.to_string().contains("secret"));
        assert!(Token::bearer("", None).is_err());
    }

    #[test]
    fn only_b64tokens_are_accepted() {
        for good in ["abc", "a-b.c_d~e+f/g==", "eyJ0.eyJ1.c2ln", "Zm9v="] {
            assert!(Token::bearer(good, None).is_ok(), "{good}");
        }
        for bad in [
            "zqx ök én",
            "ZQX, Basic Zm9vOmJhcg==",
            "zqx\ten",
            "zqx en",
            "zqx=b",
            "===",
            "zqx\"en",
            "zqx;en",
        ] {
            let err = Token::bearer(bad, None).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidTokenResponse, "{bad}");
            let shown = format!("{err} {err:?}");
            assert!(!shown.to_lowercase().contains("zqx"), "{shown}");
        }
    }

    #[test]
    fn jwt_exp_is_read_unverified() {
        let exp = Token::jwt_expiry_unverified(&jwt(r#"{"exp":2000000000,"sub":"x"}"#)).unwrap();
        assert_eq!(
            exp,
            std::time::UNIX_EPOCH + Duration::from_secs(2_000_000_000)
        );
        assert!(Token::jwt_expiry_unverified(&jwt(r#"{"sub":"x"}"#)).is_none());
        assert!(Token::jwt_expiry_unverified("opaque-token").is_none());
        assert!(Token::jwt_expiry_unverified("a.!!!.c").is_none());
        assert!(Token::jwt_expiry_unverified(&jwt(r#"{"exp":-5}"#)).is_none());
        assert!(Token::jwt_expiry_unverified(&jwt(r#"{"exp":"soon"}"#)).is_none());
    }

    #[cfg(feature = "store")]
    #[tokio::test(start_paused = true)]
    async fn holding_time_round_trip_keeps_expiry() {
        let token = Token::bearer("abc", Some(Duration::from_secs(300))).unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(token.held_for(), Duration::from_secs(20));
        let back = Token::bearer("abc", Some(Duration::from_secs(300)))
            .unwrap()
            .held_since(token.held_for() + Duration::from_secs(5));
        assert_eq!(back.remaining_lifetime(), Some(Duration::from_secs(275)));
    }

    #[test]
    fn debug_redacts() {
        let token = Token::bearer("very-secret-token", Some(Duration::from_secs(5)))
            .unwrap()
            .with_scope("a b");
        let dbg = format!("{token:?}");
        assert!(!dbg.contains("very-secret-token"), "{dbg}");
        assert_eq!(token.scopes().collect::<Vec<_>>(), ["a", "b"]);
    }
}
