//! `RedisStore` against a real Redis, operation by operation, and the store-model regressions
//! that need one (the fleet cases, every store alike, are in `tests/store_fleet.rs`). Each test
//! starts its own `redis-server` (`fleet::RedisServer`) on a free loopback port and stops it.

mod fleet;

use fleet::RedisServer;
use tower_client_credentials::testing::AuthServer;
use tower_client_credentials::{ClientAuthMethod, TokenCache};

// ---------------------------------------------------------------------------------------------
// The store's own operations on a real Redis (branch store-model): self-contained, one server.

mod store_operations {
    use std::time::{Duration, Instant};

    use tower_client_credentials::store::{Record, RedisStore, Slot, StoreKey, TokenStore};

    use super::RedisServer;

    /// Waiters hear at once: `changed` resolves when another connection (another process)
    /// saves, removes or releases, not after its timeout; without Redis it is a bounded sleep.
    /// Ages and the atomic lease attempt come from the server (`TIME` inside the scripts).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changed_is_announced_by_writes_and_ages_are_the_servers() {
        let mut redis = RedisServer::start();
        let (a, b) = (
            RedisStore::new(&redis.url()).unwrap(),
            RedisStore::new(&redis.url()).unwrap(),
        );
        let key = StoreKey::builder("https://idp.example/token", "pubsub").build();
        // Each of a save, a compare-and-delete and a release wakes a waiter at once.
        let writes: [&str; 3] = ["save", "remove", "release"];
        let owner = "owner-a";
        for write in writes {
            let (waiting, waiting_key) = (a.clone(), key.clone());
            let waiter = tokio::spawn(async move {
                let started = Instant::now();
                waiting
                    .changed(&waiting_key, Duration::from_secs(5))
                    .await
                    .unwrap();
                started.elapsed()
            });
            // Subscribed (one round trip) well before the write.
            tokio::time::sleep(Duration::from_millis(300)).await;
            match write {
                "save" => {
                    let record = Record::new("fp-1", b"payload".to_vec());
                    b.save(&key, Slot::Token, record, Duration::from_secs(60))
                        .await
                        .unwrap();
                }
                "remove" => assert!(b.remove_if(&key, Slot::Token, "fp-1").await.unwrap()),
                _ => b.release_lease(&key, owner).await.unwrap(),
            }
            let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .unwrap()
                .unwrap();
            assert!(
                waited < Duration::from_secs(2),
                "{write}: woken after {waited:?}, not by the write"
            );
            if write == "remove" {
                // The lease for the release case, with both entries read in the same step.
                let record = Record::new("fp-2", b"second".to_vec());
                b.save(&key, Slot::Token, record, Duration::from_secs(60))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let attempt = a
                    .acquire_lease(&key, owner, Duration::from_secs(10))
                    .await
                    .unwrap();
                assert!(attempt.acquired);
                let token = attempt.stored.token.unwrap();
                assert_eq!(token.fingerprint(), "fp-2");
                assert_eq!(token.payload(), b"second");
                let age = token.age().unwrap();
                assert!(
                    age >= Duration::from_millis(250) && age < Duration::from_secs(5),
                    "{age:?}"
                );
                let other = b
                    .acquire_lease(&key, "owner-b", Duration::from_secs(10))
                    .await
                    .unwrap();
                assert!(!other.acquired);
                assert_eq!(other.stored.token.unwrap().fingerprint(), "fp-2");
            }
        }
        // Redis gone: a bounded sleep, no error.
        redis.stop();
        let fresh = RedisStore::new(&redis.url()).unwrap();
        let started = Instant::now();
        fresh
            .changed(&key, Duration::from_millis(300))
            .await
            .unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(290) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }

    fn credentials(auth: &super::AuthServer) -> tower_client_credentials::ClientCredentialsBuilder {
        tower_client_credentials::ClientCredentials::builder()
            .token_endpoint(auth.token_endpoint())
            .unwrap()
            .client_id(super::AuthServer::CLIENT_ID)
            .client_secret(super::AuthServer::CLIENT_SECRET)
            .auth_method(super::ClientAuthMethod::ClientSecretBasic)
    }

    /// Issue 19 defect 1 on a real Redis: replicas that load one DPoP key share one DPoP token
    /// (read back as DPoP, bound to that key), and a replica with a key of its own gets its
    /// own token; each token is bound (per the server) to the key of the replica using it.
    #[cfg(feature = "dpop")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_share_a_dpop_token_only_with_the_same_key() {
        use tower_client_credentials::dpop::DpopKey;
        let redis = RedisServer::start();
        let auth = super::AuthServer::start().await.unwrap();
        let replica = |key: &DpopKey| {
            let credentials = credentials(&auth).dpop(key.clone()).build().unwrap();
            super::TokenCache::builder(credentials)
                .store(RedisStore::new(&redis.url()).unwrap())
                .build()
        };
        let (shared, own) = (DpopKey::generate().unwrap(), DpopKey::generate().unwrap());
        let first = replica(&shared).token().await.unwrap();
        let second = replica(&shared).token().await.unwrap();
        assert_eq!(auth.token_requests(), 1);
        assert!(second.is_dpop(), "read back as {}", second.token_type());
        assert_eq!(second.dpop_thumbprint(), Some(shared.thumbprint()));
        use secrecy::ExposeSecret;
        let text = |t: &tower_client_credentials::Token| t.secret().expose_secret().to_owned();
        assert_eq!(text(&first), text(&second));
        assert_eq!(
            auth.dpop_jkt(&text(&second)).as_deref(),
            Some(shared.thumbprint())
        );
        let other = replica(&own).token().await.unwrap();
        assert_eq!(auth.token_requests(), 2);
        assert_ne!(text(&other), text(&first));
        assert_eq!(
            auth.dpop_jkt(&text(&other)).as_deref(),
            Some(own.thumbprint())
        );
    }

    /// Issue 19 defect 2 on a real Redis: a fleet restarted with a `max_lifetime` shorter than
    /// the provider's lifetime does not adopt a stored token past the cap (its caches would
    /// refuse it): one replica fetches, the others adopt that one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fleet_restarted_with_a_short_max_lifetime_fetches_and_shares() {
        let redis = RedisServer::start();
        let auth = super::AuthServer::start().await.unwrap();
        let replica = |max_lifetime: Option<Duration>| {
            let mut cache = super::TokenCache::builder(credentials(&auth).build().unwrap())
                .store(RedisStore::new(&redis.url()).unwrap());
            if let Some(max) = max_lifetime {
                cache = cache.max_lifetime(max);
            }
            cache.build()
        };
        // Before the restart: one-hour tokens, no cap.
        replica(None).token().await.unwrap();
        assert_eq!(auth.token_requests(), 1);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        // After: capped at 2 s, so the stored token (2.5 s old) is past its believed life.
        let capped = Some(Duration::from_secs(2));
        let started = Instant::now();
        let token = replica(capped).token().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(auth.token_requests(), 2);
        assert_eq!(token.lifetime(), Some(Duration::from_secs(3600)));
        // The next replica adopts it: still within its capped life.
        replica(capped).token().await.unwrap();
        assert_eq!(auth.token_requests(), 2);
    }

    /// A Redis user whose ACL allows no channel: writes still work (their announcements are
    /// best effort), and waiters poll.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_channel_permission_writes_work_and_waiters_poll() {
        let redis = RedisServer::start();
        let created = redis.command(&[
            "ACL",
            "SETUSER",
            "limited",
            "on",
            ">pw",
            "~*",
            "+@all",
            "resetchannels",
        ]);
        assert_eq!(created.as_deref(), Some("+OK"));
        let url = redis.url().replace("redis://", "redis://limited:pw@");
        let store = RedisStore::new(&url).unwrap();
        let key = StoreKey::builder("https://idp.example/token", "acl").build();
        let record = Record::new("fp", b"payload".to_vec());
        store
            .save(&key, Slot::Token, record, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(store.load(&key).await.unwrap().token.is_some());
        let started = Instant::now();
        store
            .changed(&key, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(290));
        assert!(store.remove_if(&key, Slot::Token, "fp").await.unwrap());
    }
}
