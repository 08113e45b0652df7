//! Encryption of stored values at rest, for every store implementation: AES-256-GCM (ring), a
//! random 96-bit nonce per value, and as associated data the store key, the slot and the
//! record's fingerprint. A value copied to another credential set's key or slot does not
//! decrypt, and neither does an old ciphertext put behind a new fingerprint (the fingerprint
//! is what compare-and-delete and the "rejected token" check go by: a rejected token must not
//! come back under the fingerprint of another one).

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use super::{Record, Slot, StoreKey};

/// Marks an encrypted value, so that a plain value (written before a key was configured) is
/// recognised and ignored rather than "decrypted".
const MAGIC: &[u8] = b"enc1";

/// An AES-256-GCM key. `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct Cipher {
    key: std::sync::Arc<LessSafeKey>,
    random: SystemRandom,
}

impl Cipher {
    pub(crate) fn new(key: [u8; 32]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, &key).expect("AES-256 keys are 32 bytes");
        Cipher {
            key: std::sync::Arc::new(LessSafeKey::new(unbound)),
            random: SystemRandom::new(),
        }
    }

    /// `enc1 || nonce || ciphertext || tag`. `None` only if the system's random source fails,
    /// in which case nothing is stored.
    pub(crate) fn seal(&self, associated: &[u8], plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    /// The plain value, or `None` if `sealed` is not a value this key sealed for `associated`
    /// (another key, another store key, tampered, or not encrypted at all).
    pub(crate) fn open(&self, associated: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let rest = sealed.strip_prefix(MAGIC)?;
        if rest.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(associated), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }
}

impl Cipher {
    /// Seals `record`'s payload for `key`'s `slot`, bound to its fingerprint.
    pub(crate) fn seal_record(
        &self,
        key: &StoreKey,
        slot: Slot,
        record: &Record,
    ) -> Option<Vec<u8>> {
        self.seal(
            &associated_data(key, slot, record.fingerprint()),
            record.payload(),
        )
    }

    /// The plain payload of a value stored for `key`'s `slot` under `fingerprint`, or `None`
    /// (another key, another slot, another fingerprint, tampered, not encrypted).
    pub(crate) fn open_record(
        &self,
        key: &StoreKey,
        slot: Slot,
        fingerprint: &str,
        sealed: &[u8],
    ) -> Option<Vec<u8>> {
        self.open(&associated_data(key, slot, fingerprint), sealed)
    }
}

/// `tcc-v2 || key || slot || fingerprint`, each part length-prefixed so that no two differ
/// only in where one part ends.
fn associated_data(key: &StoreKey, slot: Slot, fingerprint: &str) -> Vec<u8> {
    let slot = match slot {
        Slot::Token => "token",
        Slot::Failure => "failure",
    };
    let mut out = Vec::with_capacity(64 + fingerprint.len());
    for part in ["tcc-v2", key.as_str(), slot, fingerprint] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher(AES-256-GCM, [redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let cipher = Cipher::new([7; 32]);
        let sealed = cipher.seal(b"key-a", b"the token").unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"the token"));
        assert_eq!(cipher.open(b"key-a", &sealed).unwrap(), b"the token");
        // A fresh nonce every time.
        assert_ne!(sealed, cipher.seal(b"key-a", b"the token").unwrap());
    }

    #[test]
    fn tampering_another_key_or_another_place_fails() {
        let cipher = Cipher::new([7; 32]);
        let sealed = cipher.seal(b"key-a", b"the token").unwrap();
        for i in MAGIC.len()..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 1;
            assert!(cipher.open(b"key-a", &tampered).is_none(), "byte {i}");
        }
        assert!(cipher.open(b"key-b", &sealed).is_none());
        assert!(Cipher::new([8; 32]).open(b"key-a", &sealed).is_none());
        assert!(cipher.open(b"key-a", b"{\"plain\":true}").is_none());
        assert!(cipher.open(b"key-a", b"enc1short").is_none());
        assert!(!format!("{cipher:?}").contains('7'));
    }

    /// Issue 20 defect 8: the fingerprint is inside the AEAD. A ciphertext sealed under one
    /// fingerprint (an old, rejected token) does not open behind another (a new token's).
    #[test]
    fn a_record_opens_only_under_its_own_key_slot_and_fingerprint() {
        let cipher = Cipher::new([9; 32]);
        let key = StoreKey::builder("https://idp.example/token", "c").build();
        let other = StoreKey::builder("https://idp.example/token", "d").build();
        let record = Record::new("fp-old", b"old token".to_vec());
        let sealed = cipher.seal_record(&key, Slot::Token, &record).unwrap();
        assert_eq!(
            cipher
                .open_record(&key, Slot::Token, "fp-old", &sealed)
                .unwrap(),
            b"old token"
        );
        assert!(cipher
            .open_record(&key, Slot::Token, "fp-new", &sealed)
            .is_none());
        assert!(cipher
            .open_record(&key, Slot::Failure, "fp-old", &sealed)
            .is_none());
        assert!(cipher
            .open_record(&other, Slot::Token, "fp-old", &sealed)
            .is_none());
    }
}
