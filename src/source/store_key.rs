//! The name a credential set has in a shared store.

use std::fmt;

use ring::hmac;

/// Identifies one credential set in a [`TokenStore`](crate::store::TokenStore): two caches share a
/// stored token only if their keys are equal.
///
/// It is a keyed hash (HMAC-SHA-256, the client secret as the key) of everything that makes the
/// set: the token endpoint or issuer, the client id, the configured client authentication
/// method, the scopes (split on spaces, sorted, without duplicates), the extra request
/// parameters (sorted), and what the tokens are bound to: the DPoP key's and the client
/// certificate's thumbprints. Neither the secret nor any of those parts can be read from it,
/// and a rotated secret gives a new key (tokens and failures of the old secret are not
/// reused). Two sets that differ in any part never share a token (the design's rule 11), and
/// replicas share a DPoP- or certificate-bound token only when they load the same key or
/// certificate (rule 14).
///
/// [`ClientCredentials`](crate::ClientCredentials) derives its key itself (see
/// [`TokenSource::store_key`](crate::TokenSource::store_key)); derive one with
/// [`StoreKey::builder`] for a token source of your own.
///
/// # Example
///
/// ```
/// use tower_client_credentials::store::StoreKey;
///
/// let key = StoreKey::builder("https://idp.example/oauth2/v1/token", "my-client")
///     .auth_method("client_secret_basic")
///     .scopes(["orders:read", "catalog:read"])
///     .param("audience", "api://orders")
///     .secret(b"my-client-secret")
///     .build();
/// let same = StoreKey::builder("https://idp.example/oauth2/v1/token", "my-client")
///     .auth_method("client_secret_basic")
///     .scopes(["catalog:read orders:read"])
///     .param("audience", "api://orders")
///     .secret(b"my-client-secret")
///     .build();
/// assert_eq!(key, same);
/// assert!(!key.as_str().contains("my-client"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StoreKey {
    /// 32 lowercase hex digits: the first 128 bits of the HMAC.
    digest: String,
    /// The binding the key was made for (also in the digest): a stored token must carry the
    /// same to be used.
    dpop_thumbprint: Option<String>,
    certificate_thumbprint: Option<String>,
}

/// Builds a [`StoreKey`]; get one from [`StoreKey::builder`].
pub struct StoreKeyBuilder {
    endpoint: String,
    client_id: String,
    auth_method: String,
    scopes: Vec<String>,
    params: Vec<(String, String)>,
    secret: Option<hmac::Key>,
    dpop_thumbprint: Option<String>,
    certificate_thumbprint: Option<String>,
}

impl StoreKey {
    /// Starts a key for the client `client_id` of the token endpoint (or issuer) `endpoint`.
    pub fn builder(endpoint: impl Into<String>, client_id: impl Into<String>) -> StoreKeyBuilder {
        StoreKeyBuilder {
            endpoint: endpoint.into(),
            client_id: client_id.into(),
            auth_method: String::new(),
            scopes: Vec::new(),
            params: Vec::new(),
            secret: None,
            dpop_thumbprint: None,
            certificate_thumbprint: None,
        }
    }

    /// The key as text (hex digits): what a store puts in its key names.
    pub fn as_str(&self) -> &str {
        &self.digest
    }

    /// The DPoP key thumbprint the key was made for ([`StoreKeyBuilder::dpop_thumbprint`]).
    pub fn dpop_thumbprint(&self) -> Option<&str> {
        self.dpop_thumbprint.as_deref()
    }

    /// The certificate thumbprint the key was made for
    /// ([`StoreKeyBuilder::certificate_thumbprint`]).
    pub fn certificate_thumbprint(&self) -> Option<&str> {
        self.certificate_thumbprint.as_deref()
    }
}

impl StoreKeyBuilder {
    /// The client authentication method as configured (e.g. `client_secret_basic`), not as
    /// negotiated: the key must not change after the first token request.
    pub fn auth_method(mut self, method: impl Into<String>) -> Self {
        self.auth_method = method.into();
        self
    }

    /// Scopes; each may hold several, separated by spaces. Order and duplicates do not matter.
    pub fn scopes<I, T>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        for scope in scopes {
            self.scopes
                .extend(scope.as_ref().split_whitespace().map(str::to_owned));
        }
        self
    }

    /// An extra request parameter (`audience`, `resource`, ...). Order does not matter.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// The client secret (or other key material): the HMAC key. Without one the key is a keyed
    /// hash with an empty key, which still separates credential sets but not secret rotations.
    pub fn secret(mut self, secret: &[u8]) -> Self {
        self.secret = Some(hmac::Key::new(hmac::HMAC_SHA256, secret));
        self
    }

    /// The RFC 7638 thumbprint of the DPoP key the tokens are bound to
    /// ([`DpopKey::thumbprint`](crate::dpop::DpopKey::thumbprint), feature `dpop`): only
    /// sources with the same key share them, and a stored token is used only if it carries
    /// the same ([`Token::dpop_thumbprint`](crate::Token::dpop_thumbprint)).
    ///
    /// ```
    /// use tower_client_credentials::store::StoreKey;
    ///
    /// let key = |jkt: &str| StoreKey::builder("https://idp.example/token", "c").dpop_thumbprint(jkt).build();
    /// assert_ne!(key("jkt-a"), key("jkt-b"));
    /// assert_eq!(key("jkt-a").dpop_thumbprint(), Some("jkt-a"));
    /// ```
    pub fn dpop_thumbprint(mut self, thumbprint: impl Into<String>) -> Self {
        self.dpop_thumbprint = Some(thumbprint.into());
        self
    }

    /// The `x5t#S256` of the client certificate the tokens are bound to (RFC 8705 §3.1;
    /// [`ClientIdentity::thumbprint`](crate::mtls::ClientIdentity::thumbprint), feature
    /// `mtls`): only sources presenting the same certificate share them.
    ///
    /// ```
    /// use tower_client_credentials::store::StoreKey;
    ///
    /// let key = StoreKey::builder("https://idp.example/token", "c")
    ///     .certificate_thumbprint("q3hWbHAiHtI6sTlFqNp3dTs8KXJCm1Hm3ZOAf2_Yp5E")
    ///     .build();
    /// assert_ne!(key, StoreKey::builder("https://idp.example/token", "c").build());
    /// ```
    pub fn certificate_thumbprint(mut self, thumbprint: impl Into<String>) -> Self {
        self.certificate_thumbprint = Some(thumbprint.into());
        self
    }

    /// Derives the key.
    pub fn build(mut self) -> StoreKey {
        self.scopes.sort();
        self.scopes.dedup();
        self.params.sort();
        let key = self
            .secret
            .unwrap_or_else(|| hmac::Key::new(hmac::HMAC_SHA256, &[]));
        let mut context = hmac::Context::with_key(&key);
        // Every part is length-prefixed, so that no two different sets encode alike
        // (`a b` + `c` is not `a` + `b c`).
        let mut part = |label: &str, value: &str| {
            for bytes in [label.as_bytes(), value.as_bytes()] {
                context.update(&(bytes.len() as u64).to_be_bytes());
                context.update(bytes);
            }
        };
        part("version", "1");
        part("endpoint", &self.endpoint);
        part("client_id", &self.client_id);
        part("auth_method", &self.auth_method);
        for scope in &self.scopes {
            part("scope", scope);
        }
        for (name, value) in &self.params {
            part("param", name);
            part("value", value);
        }
        if let Some(jkt) = &self.dpop_thumbprint {
            part("jkt", jkt);
        }
        if let Some(x5t) = &self.certificate_thumbprint {
            part("x5t#S256", x5t);
        }
        let tag = context.sign();
        StoreKey {
            digest: hex(&tag.as_ref()[..16]),
            dpop_thumbprint: self.dpop_thumbprint,
            certificate_thumbprint: self.certificate_thumbprint,
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StoreKey").field(&self.digest).finish()
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.digest)
    }
}

impl fmt::Debug for StoreKeyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreKeyBuilder")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("auth_method", &self.auth_method)
            .field("scopes", &self.scopes)
            .field("params", &self.params)
            .field("dpop_thumbprint", &self.dpop_thumbprint)
            .field("certificate_thumbprint", &self.certificate_thumbprint)
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> StoreKeyBuilder {
        StoreKey::builder("https://idp.example/token", "client")
            .auth_method("client_secret_basic")
            .scopes(["a b"])
            .param("audience", "x")
            .secret(b"secret")
    }

    #[test]
    fn order_of_scopes_and_params_does_not_matter() {
        let one = base().scopes(["c"]).param("resource", "r").build();
        let two = StoreKey::builder("https://idp.example/token", "client")
            .auth_method("client_secret_basic")
            .param("resource", "r")
            .scopes(["c", "b a", "a"])
            .param("audience", "x")
            .secret(b"secret")
            .build();
        assert_eq!(one, two);
        assert_eq!(one.as_str().len(), 32);
    }

    #[test]
    fn every_part_separates_sets() {
        let reference = base().build();
        let variants = [
            StoreKey::builder("https://idp.example/other", "client")
                .auth_method("client_secret_basic")
                .scopes(["a b"])
                .param("audience", "x")
                .secret(b"secret")
                .build(),
            StoreKey::builder("https://idp.example/token", "client2")
                .auth_method("client_secret_basic")
                .scopes(["a b"])
                .param("audience", "x")
                .secret(b"secret")
                .build(),
            base().auth_method("client_secret_post").build(),
            base().scopes(["c"]).build(),
            base().param("audience", "y").build(),
            base().secret(b"rotated").build(),
            base().dpop_thumbprint("jkt").build(),
            base().certificate_thumbprint("x5t").build(),
            base()
                .dpop_thumbprint("jkt")
                .certificate_thumbprint("x5t")
                .build(),
            // Length prefixes: moving a boundary changes the key.
            StoreKey::builder("https://idp.example/tokenc", "lient")
                .auth_method("client_secret_basic")
                .scopes(["a b"])
                .param("audience", "x")
                .secret(b"secret")
                .build(),
        ];
        for variant in variants {
            assert_ne!(variant, reference);
        }
    }

    #[test]
    fn nothing_readable_leaks() {
        let builder = || base().secret(b"hunter2-xyzzy");
        let key = builder().build();
        let shown = format!("{key:?} {key} {:?}", builder());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!key.as_str().contains("client"));
        assert!(key.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
