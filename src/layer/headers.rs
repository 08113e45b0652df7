use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use crate::error::Error;
use crate::secret_header::SecretHeaderValue;

/// The token header and the fixed extra headers (such as `x-api-key`) of a layer, shared by every
/// service it makes and by the reqwest middleware. Values are marked sensitive and zeroized when
/// the last copy drops ([`SecretHeaderValue`]); `Debug` shows the names only.
///
/// Names are kept as interned `&'static str`s and made into a `HeaderName` per request with
/// `HeaderName::from_static`: that is a few comparisons inlined into the caller, where cloning a
/// stored custom `HeaderName` is an indirect call through `Bytes`' vtable whose result is moved
/// in pieces (`benches/hot_path.rs`, arm `bound_owned_values_stored_name`: 4–6 % of a request).
#[derive(Clone)]
pub(crate) struct ExtraHeaders(Arc<[(&'static str, SecretHeaderValue)]>);

impl Default for ExtraHeaders {
    fn default() -> Self {
        ExtraHeaders(Arc::from(Vec::new()))
    }
}

impl ExtraHeaders {
    /// These headers with `name: value` given as text to the layer method `method`
    /// (`with_header`, `header`): checked once here for every layer, without echoing a value.
    pub(crate) fn with_text(&self, method: &str, name: &str, value: &str) -> Result<Self, Error> {
        let parsed = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
            // The name is not echoed: with the arguments swapped it would be the API key.
            Error::config(format!(
                "the header name given to `{method}` ({} characters) is not a valid HTTP \
                 header name; check that the name comes first and the value second",
                name.chars().count()
            ))
        })?;
        // What `HeaderValue::from_str` accepts (visible ASCII and tabs), without its copy.
        if !value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            return Err(invalid_value(&parsed));
        }
        self.with_checked(parsed, value.as_bytes())
    }

    /// These headers with `name` set to a copy of `value`, unless the name is one the
    /// pipeline sets itself (`authorization`, `dpop`).
    pub(crate) fn with_checked(&self, name: HeaderName, value: &[u8]) -> Result<Self, Error> {
        if name == AUTHORIZATION || name == "dpop" {
            return Err(Error::config(format!(
                "the `{name}` header is set by the layer (from the token, or the DPoP proof); \
                 add other headers"
            )));
        }
        self.with(&name, value).map_err(|_| invalid_value(&name))
    }

    /// These headers with `name` set to a copy of `value` (replacing a header of the same name).
    pub(crate) fn with(
        &self,
        name: &HeaderName,
        value: &[u8],
    ) -> Result<Self, http::header::InvalidHeaderValue> {
        let name = interned(name);
        let mut headers: Vec<_> = self.0.iter().filter(|(n, _)| *n != name).cloned().collect();
        headers.push((name, SecretHeaderValue::new(value.to_vec())?));
        Ok(ExtraHeaders(headers.into()))
    }

    /// Inserts `authorization` with the token's value, then the extra headers: reference-count
    /// bumps and inserts only.
    #[inline]
    pub(crate) fn insert_with_authorization(&self, headers: &mut HeaderMap, token: HeaderValue) {
        headers.insert(AUTHORIZATION, token);
        for (name, value) in self.0.iter() {
            headers.insert(HeaderName::from_static(name), value.shared().clone());
        }
    }

    #[cfg(all(test, feature = "reqwest"))]
    pub(crate) fn names_and_values(&self) -> Vec<(HeaderName, HeaderValue)> {
        self.0
            .iter()
            .map(|(name, value)| (HeaderName::from_static(name), value.shared().clone()))
            .collect()
    }

    #[cfg(all(test, feature = "reqwest"))]
    pub(crate) fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

fn invalid_value(name: &HeaderName) -> Error {
    Error::config(format!(
        "the value for the `{name}` header is not a valid HTTP header value; check it for line \
         breaks or other control characters"
    ))
}

impl fmt::Debug for ExtraHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

/// One service's own copies of the headers it adds, for one token: cloning them per request
/// bumps reference counts that only this service uses (see [`SecretHeaderValue::own_copy`]), and
/// the names are static strings, which have no count at all (see [`ExtraHeaders`] for why they
/// are not kept as `HeaderName`s). Made once per token per service.
pub(crate) struct OwnHeaders {
    /// The token these copies are of (its generation in the cache).
    pub(crate) generation: u64,
    authorization: HeaderValue,
    extra: Box<[(&'static str, HeaderValue)]>,
}

impl OwnHeaders {
    pub(crate) fn new(generation: u64, token: &SecretHeaderValue, extra: &ExtraHeaders) -> Self {
        OwnHeaders {
            generation,
            authorization: token.own_copy(),
            extra: extra
                .0
                .iter()
                .map(|(name, value)| (*name, value.own_copy()))
                .collect(),
        }
    }

    /// Inserts `authorization`, then the extra headers (the fresh path: inlined).
    #[inline(always)]
    pub(crate) fn insert(&self, headers: &mut HeaderMap) {
        headers.insert(AUTHORIZATION, self.authorization.clone());
        for (name, value) in self.extra.iter() {
            headers.insert(HeaderName::from_static(name), value.clone());
        }
    }
}

/// The text of `name` as a `&'static str`, from which `HeaderName::from_static` makes a name
/// whose clones and drops are plain copies: a custom name made at run time
/// (`HeaderName::from_bytes`) is reference counted, and every request would bump its count on a
/// cache line shared by all cores. Names are not secret; each distinct name is leaked once per
/// process (a layer is configured with a handful).
fn interned(name: &HeaderName) -> &'static str {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    match names.iter().find(|known| **known == name.as_str()) {
        Some(known) => known,
        None => {
            // Valid for `HeaderName::from_static`: the text of a `HeaderName`, which is
            // lowercase.
            let leaked: &'static str = Box::leak(name.as_str().into());
            names.push(leaked);
            leaked
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_names_are_equal_and_made_once() {
        let a = interned(&HeaderName::from_bytes(b"X-Api-Key").unwrap());
        let b = interned(&HeaderName::from_static("x-api-key"));
        assert_eq!(a, "x-api-key");
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert_eq!(
            HeaderName::from_static(interned(&AUTHORIZATION)),
            AUTHORIZATION
        );
    }

    #[test]
    fn own_headers_insert_the_same_as_the_shared_ones() {
        let extra = ExtraHeaders::default()
            .with(&HeaderName::from_static("x-api-key"), b"k3y")
            .unwrap();
        let token = SecretHeaderValue::new(b"Bearer t0k".to_vec()).unwrap();
        let (mut shared, mut own) = (HeaderMap::new(), HeaderMap::new());
        extra.insert_with_authorization(&mut shared, token.shared().clone());
        OwnHeaders::new(7, &token, &extra).insert(&mut own);
        assert_eq!(shared, own);
        assert!(own.values().all(HeaderValue::is_sensitive));
        assert_eq!(own.len(), 2);
    }
}
