//! Server-provided DPoP nonces (RFC 9449 §8, §9), one per origin.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderMap;

/// The `DPoP-Nonce` response header.
pub(crate) const DPOP_NONCE: &str = "dpop-nonce";

/// At most this many origins are remembered; the oldest is forgotten first. A client talks to
/// a token endpoint and a few APIs: the bound only stops a misbehaving caller from growing it.
const MAX_ORIGINS: usize = 32;
/// A nonce longer than this is ignored (RFC 9449 sets no limit; servers use tens of bytes).
const MAX_NONCE_LEN: usize = 1024;

/// The last nonce each origin gave. Reads (every proof) are a lock-free load and a short scan;
/// writes (only when a server hands out a new nonce) copy the small table.
#[derive(Default)]
pub(crate) struct NonceStore {
    entries: ArcSwap<Vec<Entry>>,
}

struct Entry {
    scheme: Box<str>,
    authority: Box<str>,
    nonce: Arc<str>,
}

impl NonceStore {
    /// Calls `use_nonce` with the origin's current nonce, if there is one.
    pub(crate) fn with_nonce(&self, scheme: &str, authority: &str, use_nonce: impl FnOnce(&str)) {
        let authority = host_port(authority);
        let entries = self.entries.load();
        if let Some(entry) = entries.iter().find(|e| e.matches(scheme, authority)) {
            use_nonce(&entry.nonce);
        }
    }

    /// Stores the `DPoP-Nonce` of a response from the origin, if it carries a valid one that
    /// differs from the stored one. Returns whether it carried a valid one at all.
    pub(crate) fn update_from(&self, scheme: &str, authority: &str, headers: &HeaderMap) -> bool {
        let authority = host_port(authority);
        let Some(nonce) = valid_nonce(headers) else {
            return false;
        };
        let current = self.entries.load();
        if current
            .iter()
            .any(|e| e.matches(scheme, authority) && &*e.nonce == nonce)
        {
            return true;
        }
        let nonce: Arc<str> = Arc::from(nonce);
        self.entries.rcu(|entries| {
            let mut next: Vec<Entry> = entries
                .iter()
                .filter(|e| !e.matches(scheme, authority))
                .map(|e| Entry {
                    scheme: e.scheme.clone(),
                    authority: e.authority.clone(),
                    nonce: e.nonce.clone(),
                })
                .collect();
            if next.len() >= MAX_ORIGINS {
                next.remove(0);
            }
            next.push(Entry {
                scheme: scheme.to_ascii_lowercase().into(),
                authority: authority.to_ascii_lowercase().into(),
                nonce: nonce.clone(),
            });
            next
        });
        true
    }

    #[cfg(test)]
    pub(crate) fn get(&self, scheme: &str, authority: &str) -> Option<String> {
        let mut found = None;
        self.with_nonce(scheme, authority, |n| found = Some(n.to_string()));
        found
    }
}

impl Entry {
    fn matches(&self, scheme: &str, authority: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme) && self.authority.eq_ignore_ascii_case(authority)
    }
}

/// `authority` without its user info: an origin is its scheme, host and port, and the nonces of
/// `https://user@api.example` are those of `https://api.example`.
pub(crate) fn host_port(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, rest)| rest)
}

/// The response's `DPoP-Nonce`, if it carries a valid one: what a retry after a nonce
/// challenge needs (without it, the retry would be refused the same way).
pub(crate) fn valid_nonce(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(DPOP_NONCE)
        .and_then(|v| v.to_str().ok())
        .filter(|n| is_valid_nonce(n))
}

/// RFC 9449 §8.1: `nonce = 1*NQCHAR`, NQCHAR = %x21 / %x23-5B / %x5D-7E. Anything else could
/// break the proof's JSON or smuggle text into it.
fn is_valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce.len() <= MAX_NONCE_LEN
        && nonce
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

impl fmt::Debug for NonceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Origins only: a nonce is short-lived, but still not for logs.
        f.debug_list()
            .entries(
                self.entries
                    .load()
                    .iter()
                    .map(|e| format!("{}://{}", e.scheme, e.authority)),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(nonce: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(DPOP_NONCE, nonce.parse().unwrap());
        headers
    }

    #[test]
    fn nonces_are_per_origin_and_refreshed() {
        let store = NonceStore::default();
        assert!(store.update_from("https", "as.example", &headers("n1")));
        assert!(store.update_from("https", "api.example:8443", &headers("a1")));
        assert_eq!(store.get("HTTPS", "AS.example").as_deref(), Some("n1"));
        assert!(store.update_from("https", "as.example", &headers("n2")));
        assert_eq!(store.get("https", "as.example").as_deref(), Some("n2"));
        assert_eq!(
            store.get("https", "api.example:8443").as_deref(),
            Some("a1")
        );
        assert_eq!(store.get("http", "as.example"), None);
        assert!(!store.update_from("https", "as.example", &HeaderMap::new()));
        assert_eq!(store.get("https", "as.example").as_deref(), Some("n2"));
    }

    #[test]
    fn invalid_nonces_are_ignored_and_origins_bounded() {
        let store = NonceStore::default();
        assert!(!store.update_from("https", "a", &headers(r#"has"quote"#)));
        assert!(!store.update_from("https", "a", &headers("has space")));
        assert_eq!(store.get("https", "a"), None);
        for i in 0..(MAX_ORIGINS + 5) {
            store.update_from("https", &format!("h{i}"), &headers("n"));
        }
        assert_eq!(store.entries.load().len(), MAX_ORIGINS);
        assert_eq!(store.get("https", "h0"), None);
        assert!(store
            .get("https", &format!("h{}", MAX_ORIGINS + 4))
            .is_some());
        assert!(!format!("{store:?}").contains("\"n\""));
    }
}
