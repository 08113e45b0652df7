//! Header values that carry a secret (the `Authorization` value, an API key): zeroized when the
//! last copy is dropped, and copied per service so that requests on different cores share no
//! written memory.
//!
//! An `http::HeaderValue` is a `bytes::Bytes`, which cannot be zeroized in place, but can be
//! backed by an owner of our choosing ([`Bytes::from_owner`]) that is dropped with the last
//! clone. Here that owner holds the one heap copy of the secret bytes, which are zeroized when
//! the last owner goes. Every clone of such a `HeaderValue`, including those inside requests
//! handed to the inner service, keeps the bytes alive; the bytes are wiped when the token (or
//! layer) and every request that carried them are gone. What this cannot reach: copies made by
//! others, such as an HTTP/1 client's write buffer or an HPACK encoder (the values are marked
//! sensitive, so HPACK does not index them).
//!
//! [`own_copy`](SecretHeaderValue::own_copy) makes another `HeaderValue` over the same bytes
//! with its *own* reference count, alone on its cache lines: a service that keeps one bumps a
//! counter no other core writes, where clones of one shared value would bounce one cache line
//! between all cores on every request (`benches/contention.rs`).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::InvalidHeaderValue;
use http::HeaderValue;
use zeroize::Zeroizing;

/// The secret bytes, zeroized when the last holder drops them.
type SecretBytes = Arc<Zeroizing<Box<[u8]>>>;

/// A header value holding a secret: see the [module docs](self).
#[derive(Clone)]
pub(crate) struct SecretHeaderValue {
    bytes: SecretBytes,
    /// A copy to clone when a service has none of its own (a clone used once, the reqwest
    /// middleware, the 401 retry).
    shared: HeaderValue,
}

/// The owner behind one copy's `Bytes`. `bytes` stores its reference count in the same
/// allocation as the owner; aligning the owner to 128 bytes (two cache lines: adjacent-line
/// prefetchers fetch pairs) makes that allocation start on a 128-byte boundary and span whole
/// pairs, so no other allocation, and no other copy's count, shares its lines.
#[repr(align(128))]
struct OwnCount(SecretBytes);

impl AsRef<[u8]> for OwnCount {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl SecretHeaderValue {
    /// A sensitive header value of `value`, which is zeroized when the last copy drops (also
    /// when `value` is not a valid header value).
    pub(crate) fn new(value: Vec<u8>) -> Result<Self, InvalidHeaderValue> {
        let bytes: SecretBytes = Arc::new(Zeroizing::new(value.into_boxed_slice()));
        let shared = copy(&bytes)?;
        Ok(SecretHeaderValue { bytes, shared })
    }

    /// A copy all holders share.
    #[inline]
    pub(crate) fn shared(&self) -> &HeaderValue {
        &self.shared
    }

    /// A new copy with its own reference count (one allocation).
    pub(crate) fn own_copy(&self) -> HeaderValue {
        // Cannot fail: the same bytes were accepted by `new`.
        copy(&self.bytes).unwrap_or_else(|_| self.shared.clone())
    }
}

fn copy(bytes: &SecretBytes) -> Result<HeaderValue, InvalidHeaderValue> {
    let mut value = HeaderValue::from_maybe_shared(Bytes::from_owner(OwnCount(bytes.clone())))?;
    value.set_sensitive(true);
    Ok(value)
}

impl PartialEq<HeaderValue> for SecretHeaderValue {
    fn eq(&self, other: &HeaderValue) -> bool {
        self.shared == *other
    }
}

impl fmt::Debug for SecretHeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sensitive")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;

    use super::*;

    #[test]
    fn copies_carry_the_value_sensitive() {
        let value = SecretHeaderValue::new(b"Bearer abc".to_vec()).unwrap();
        for copy in [value.shared().clone(), value.own_copy()] {
            assert_eq!(copy, "Bearer abc");
            assert!(copy.is_sensitive());
        }
        assert!(SecretHeaderValue::new(b"Bearer a\nb".to_vec()).is_err());
    }

    #[test]
    fn own_copies_count_references_apart_from_each_other() {
        let value = SecretHeaderValue::new(b"Bearer abc".to_vec()).unwrap();
        let (a, b) = (value.own_copy(), value.own_copy());
        // Same bytes, not the same buffer header: the counts live in different allocations.
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
        assert_eq!(a, b);
    }

    #[test]
    fn the_bytes_live_until_the_last_copy_and_then_go() {
        let value = SecretHeaderValue::new(b"Bearer abc".to_vec()).unwrap();
        let weak: Weak<Zeroizing<Box<[u8]>>> = Arc::downgrade(&value.bytes);
        let in_a_request = value.own_copy();
        let clone_in_a_request = value.shared().clone();
        drop(value);
        assert!(weak.upgrade().is_some());
        drop(in_a_request);
        assert!(weak.upgrade().is_some());
        assert_eq!(clone_in_a_request, "Bearer abc");
        drop(clone_in_a_request);
        // Gone, and `Zeroizing` wiped them on the way (zeroize's own tests cover the wiping).
        assert!(weak.upgrade().is_none());
    }
}
