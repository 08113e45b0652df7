//! Unit tests of the Redis store that need no server.

use redis::{ErrorKind, ServerErrorKind};

use super::sentinel::master_lost;
use super::*;

#[test]
fn urls_parse_without_network_and_never_show_the_password() {
    for url in [
        "redis://127.0.0.1:1",
        "redis://:hunter2@10.255.255.1:6379/3",
        "redis://user:hunter2@redis.invalid",
        "rediss://:hunter2@redis.invalid:6380",
    ] {
        let store = RedisStore::new(url).unwrap();
        assert!(!format!("{store:?}").contains("hunter2"), "{store:?}");
    }
    let err = RedisStore::new("http://:hunter2@example").unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let cluster =
        RedisStore::cluster(["redis://:hunter2@10.0.0.1", "redis://:hunter2@10.0.0.2"]).unwrap();
    assert!(!format!("{cluster:?}").contains("hunter2"));
    assert!(RedisStore::cluster(Vec::<String>::new()).is_err());
    let sentinel = RedisStore::sentinel(
        &["redis://:hunter2@10.0.0.1:26379", "redis://10.0.0.2:26379"],
        "tokens",
    )
    .unwrap();
    let shown = format!("{sentinel:?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("tokens"),
        "{shown}"
    );
    assert!(RedisStore::sentinel(&[], "tokens").is_err());
    assert!(RedisStore::sentinel(&["redis://10.0.0.1:26379"], "").is_err());
    assert!(
        RedisStore::sentinel(&["http://:hunter2@10.0.0.1"], "tokens")
            .is_err_and(|e| !e.to_string().contains("hunter2"))
    );
}

#[test]
fn behind_sentinel_a_lost_or_demoted_master_is_looked_up_again_a_missing_script_is_not() {
    use redis::RedisError;
    let lost = |kind, text| master_lost(&RedisError::from((kind, text)));
    assert!(lost(
        ErrorKind::Server(ServerErrorKind::ReadOnly),
        "READONLY"
    ));
    assert!(lost(
        ErrorKind::Server(ServerErrorKind::MasterDown),
        "MASTERDOWN"
    ));
    let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    assert!(master_lost(&RedisError::from(reset)));
    // EVALSHA's NOSCRIPT on a new master is answered by sending the script, on the same
    // connection; an error of the script's own is not the master's.
    assert!(!lost(
        ErrorKind::Server(ServerErrorKind::NoScript),
        "NOSCRIPT"
    ));
    assert!(!lost(
        ErrorKind::Server(ServerErrorKind::ResponseError),
        "ERR"
    ));
}

#[test]
fn keys_of_one_credential_set_share_a_hash_slot() {
    let store = RedisStore::new("redis://127.0.0.1").unwrap();
    let key = StoreKey::builder("https://idp.example/token", "c").build();
    let tag = format!("{{{}}}", key.as_str());
    for slot in ["token", "failure", "lease"] {
        let name = store.name(&key, slot);
        assert!(name.contains(&tag), "{name}");
        // The hash tag is the first `{...}` of the name: nothing before it has a brace.
        assert!(!name[..name.find('{').unwrap()].contains('}'));
    }
}

/// Issue 20 defect 8: the fingerprint is inside the AEAD, so an old ciphertext put behind
/// a new fingerprint does not decrypt; and ages come from the server's clock.
#[test]
fn values_are_sealed_with_their_key_slot_and_fingerprint() {
    let store = RedisStore::new("redis://127.0.0.1")
        .unwrap()
        .encryption_key([3; 32]);
    let key = StoreKey::builder("https://idp.example/token", "c").build();
    let other = StoreKey::builder("https://idp.example/token", "d").build();
    let record = Record::new("fp", b"the token".to_vec());
    let sealed = store.seal(&key, Slot::Token, &record).unwrap();
    assert!(!sealed.windows(9).any(|w| w == b"the token"));
    let stored = |fingerprint: &str, saved: u64, payload: &[u8]| {
        let mut value = format!("{fingerprint}:{saved}:").into_bytes();
        value.extend_from_slice(payload);
        Some(value)
    };
    let back = store
        .record(&key, Slot::Token, stored("fp", 1_000, &sealed), 3_500)
        .unwrap();
    assert_eq!(back.payload(), b"the token");
    assert_eq!(back.fingerprint(), "fp");
    assert_eq!(back.age(), Some(Duration::from_millis(2_500)));
    for (k, slot, fingerprint) in [
        (&other, Slot::Token, "fp"),
        (&key, Slot::Failure, "fp"),
        (&key, Slot::Token, "fp2"),
    ] {
        assert!(store
            .record(k, slot, stored(fingerprint, 1_000, &sealed), 3_500)
            .is_none());
    }
    let plain = RedisStore::new("redis://127.0.0.1").unwrap();
    let unsealed = plain.seal(&key, Slot::Token, &record).unwrap();
    assert!(store
        .record(&key, Slot::Token, stored("fp", 1, &unsealed), 2)
        .is_none());
    // A value written by an older version (`<fingerprint>:<payload>`) is ignored.
    assert!(plain
        .record(&key, Slot::Token, Some(b"fp:{\"v\":1}".to_vec()), 2)
        .is_none());
    // A save time ahead of "now" (a failover to a server whose clock is behind) is age 0.
    let young = plain
        .record(&key, Slot::Token, stored("fp", 9_000, b"x"), 2)
        .unwrap();
    assert_eq!(young.age(), Some(Duration::ZERO));
}
