use std::fmt;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

/// The token header and the fixed extra headers (such as `x-api-key`) of a layer, shared by every
/// service it makes and by the reqwest middleware. Values are marked sensitive; `Debug` shows
/// the names only.
#[derive(Clone)]
pub(crate) struct ExtraHeaders(Arc<[(HeaderName, HeaderValue)]>);

impl Default for ExtraHeaders {
    fn default() -> Self {
        ExtraHeaders(Arc::from(Vec::new()))
    }
}

impl ExtraHeaders {
    /// These headers with `name` set to `value` (replacing a header of the same name).
    pub(crate) fn with(&self, name: HeaderName, value: HeaderValue) -> Self {
        let mut headers: Vec<_> = self.0.iter().filter(|(n, _)| *n != name).cloned().collect();
        headers.push((name, value));
        ExtraHeaders(headers.into())
    }

    /// Inserts `authorization` with the token's value, then the extra headers: reference-count
    /// bumps and inserts only.
    #[inline]
    pub(crate) fn insert_with_authorization(&self, headers: &mut HeaderMap, token: HeaderValue) {
        headers.insert(AUTHORIZATION, token);
        for (name, value) in self.0.iter() {
            headers.insert(name.clone(), value.clone());
        }
    }

    #[cfg(all(test, feature = "reqwest"))]
    pub(crate) fn as_slice(&self) -> &[(HeaderName, HeaderValue)] {
        &self.0
    }

    #[cfg(all(test, feature = "reqwest"))]
    pub(crate) fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for ExtraHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name.as_str()))
            .finish()
    }
}
