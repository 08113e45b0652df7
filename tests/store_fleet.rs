//! A fleet of replicas sharing one token through a store (issues 13 and 21): every case is one
//! body, run on each store built in (`redis::…`, `redis_cluster::…`, `postgres::…`).
//!
//! Replicas are separate OS processes (see `fleet/mod.rs`); each test starts its own store
//! server on free loopback ports and stops it when done.

mod fleet;

use std::time::{Duration, Instant};

use fleet::{fleet, fleet_output, vars, Outcome, Replica, StoreKind, StoreServer, K};
use tower_client_credentials::testing::{AuthServer, Behavior};

/// The entry point of a replica process (see `fleet::replica_main`).
#[test]
fn replica() {
    fleet::replica_main();
}

/// Runs each case on one store kind: one test per case and store, one body per case.
macro_rules! cases_on {
    ($feature:literal, $module:ident, $kind:expr) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cold_start_of_six_processes_makes_one_token_request_and_a_late_one_none() {
                cold_start($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn over_several_lifetimes_a_fleet_makes_as_many_token_requests_as_one_process() {
                several_lifetimes($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_lease_holder_killed_mid_refresh_is_replaced_after_the_lease_ttl() {
                lease_holder_killed($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_store_stopped_mid_run_fails_no_request_and_sharing_resumes_after_restart()
            {
                outage($kind, Outage::Stopped).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_stalled_store_fails_no_request_and_sharing_resumes() {
                outage($kind, Outage::Stalled).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn replicas_with_skewed_wall_clocks_share_one_token() {
                skewed_clocks($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn invalid_client_for_the_whole_fleet_costs_no_more_requests_than_one_process() {
                invalid_client($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn with_an_encryption_key_no_stored_value_contains_the_token() {
                encrypted_at_rest($kind).await;
            }
        }
    };
}

cases_on!("redis", redis, StoreKind::Redis);
cases_on!("postgres", postgres, StoreKind::Postgres);

#[cfg(feature = "redis")]
mod redis_cluster {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_three_master_cluster_passes_the_cold_start_case() {
        cold_start(StoreKind::RedisCluster).await;
    }
}

/// Panics if a secret of `store`'s URL shows in what the replicas printed.
fn assert_no_password(store: &StoreServer, printed: &fleet::Output) {
    if let Some(password) = store.password() {
        assert!(
            !printed.stdout.contains(password) && !printed.stderr.contains(password),
            "the store's password appeared in a replica's output"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The cases.

async fn cold_start(kind: StoreKind) {
    let store = StoreServer::start(kind);
    let auth = AuthServer::start().await.unwrap();
    let without = AuthServer::start().await.unwrap();
    // A slow token endpoint, so that every replica arrives while the first request runs.
    auth.set_default_behavior(Some(Behavior::Delay(Duration::from_millis(300))));
    without.set_default_behavior(Some(Behavior::Delay(Duration::from_millis(300))));
    let (shared, alone) = tokio::join!(
        fleet_output(K, vars(&auth, Some(&store), "burst")),
        fleet(K, vars(&without, None, "burst")),
    );
    assert_no_password(&store, &shared.1);
    let every = Outcome {
        ok: K * 50,
        failed: 0,
    };
    assert_eq!(shared.0, every);
    assert_eq!(alone, every);
    println!(
        "{kind:?}: cold start, {K} processes x 50 requests: {} token request(s) with the store, \
         {} without",
        auth.token_requests(),
        without.token_requests()
    );
    assert_eq!(auth.token_requests(), 1);
    assert_eq!(without.token_requests(), K);

    let late = fleet(1, vars(&auth, Some(&store), "burst")).await;
    assert_eq!(late, Outcome { ok: 50, failed: 0 });
    assert_eq!(
        auth.token_requests(),
        1,
        "a late process reads the stored token"
    );
}

async fn several_lifetimes(kind: StoreKind) {
    let store = StoreServer::start(kind);
    let lifetime = Duration::from_secs(2);
    let (single, shared, alone) = (
        AuthServer::builder()
            .token_lifetime(lifetime)
            .start()
            .await
            .unwrap(),
        AuthServer::builder()
            .token_lifetime(lifetime)
            .start()
            .await
            .unwrap(),
        AuthServer::builder()
            .token_lifetime(lifetime)
            .start()
            .await
            .unwrap(),
    );
    let run = |auth: &AuthServer, store: Option<&StoreServer>| {
        let mut v = vars(auth, store, "steady");
        v.push(("TCC_MILLIS", "7000".to_string()));
        v
    };
    let (one, fleet_shared, fleet_alone) = tokio::join!(
        fleet(1, run(&single, None)),
        fleet(K, run(&shared, Some(&store))),
        fleet(K, run(&alone, None)),
    );
    for outcome in [one, fleet_shared, fleet_alone] {
        assert_eq!(outcome.failed, 0, "{outcome:?}");
    }
    println!(
        "{kind:?}: 7 s of 2 s tokens: one process {} token requests; {K} processes {} with the \
         store ({} requests, {} failed), {} without",
        single.token_requests(),
        shared.token_requests(),
        fleet_shared.ok + fleet_shared.failed,
        fleet_shared.failed,
        alone.token_requests()
    );
    assert!(single.token_requests() >= 3);
    assert!(
        shared.token_requests() <= single.token_requests() + 1,
        "{} with the store against {} for one process",
        shared.token_requests(),
        single.token_requests()
    );
    assert!(alone.token_requests() >= K * (single.token_requests() - 1));
}

async fn lease_holder_killed(kind: StoreKind) {
    let store = StoreServer::start(kind);
    let auth = AuthServer::start().await.unwrap();
    auth.set_default_behavior(Some(Behavior::Hang));
    let mut v = vars(&auth, Some(&store), "burst");
    v.push(("TCC_LEASE_MS", "2000".to_string()));
    let mut holder = Replica::start(&v);
    // Wait until the holder has the lease; its token request hangs (and is never answered, so
    // the server does not count it).
    store.wait_for(":lease", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed_at = Instant::now();
    holder.child.start_kill().unwrap(); // SIGKILL
    holder.child.wait().await.unwrap();
    auth.set_default_behavior(None);

    let started = Instant::now();
    let (outcome, _) = Replica::start(&v).finish().await;
    assert_eq!(outcome, Outcome { ok: 50, failed: 0 });
    assert_eq!(
        auth.token_requests(),
        1,
        "one answered token request: the new holder's"
    );
    println!(
        "{kind:?}: takeover: the next process got its token {} ms after the holder was killed \
         (lease 2000 ms)",
        killed_at.elapsed().as_millis()
    );
    // It waited for the dead holder's lease to expire rather than fetching at once.
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

/// How the store fails mid-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// The server stops (its connections close) and later starts again.
    Stopped,
    /// The server stalls (SIGSTOP: connections open, nothing answers) and later resumes.
    Stalled,
}

async fn outage(kind: StoreKind, outage: Outage) {
    let mut store = StoreServer::start(kind);
    let auth = AuthServer::builder()
        .token_lifetime(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let mut v = vars(&auth, Some(&store), "steady");
    v.push(("TCC_MILLIS", "9000".to_string()));
    if outage == Outage::Stalled {
        // A stall is felt only through the time limit: the default's order of magnitude.
        v.push(("TCC_OP_TIMEOUT_MS", "300".to_string()));
    }
    let replicas: Vec<_> = (0..3).map(|_| Replica::start(&v)).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    match outage {
        Outage::Stopped => store.stop(),
        Outage::Stalled => store.pause(),
    }
    let before_outage = auth.token_requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during_outage = auth.token_requests() - before_outage;
    match outage {
        Outage::Stopped => store.restart(),
        Outage::Stalled => store.resume(),
    }
    // Sharing resumes: a token is stored again (after the restart: PostgreSQL kept the rows
    // of before the outage, so wait for one written since), and a new process makes at most
    // the one refresh for everyone.
    let restarted = auth.token_requests();
    let deadline = Instant::now() + Duration::from_secs(8);
    while auth.token_requests() == restarted
        || !store
            .entries()
            .await
            .iter()
            .any(|e| e.name.ends_with(":token"))
    {
        assert!(
            Instant::now() < deadline,
            "no token was stored after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let requests = auth.token_requests();
    let late = fleet(1, vars(&auth, Some(&store), "burst")).await;
    assert_eq!(late, Outcome { ok: 50, failed: 0 });
    let late_requests = auth.token_requests() - requests;
    let mut total = Outcome::default();
    let mut warned = false;
    for replica in replicas {
        let (outcome, printed) = replica.finish().await;
        assert_no_password(&store, &printed);
        warned |= printed.stderr.contains("the token store failed");
        assert_eq!(outcome.failed, 0, "{outcome:?}");
        assert!(outcome.ok > 100);
        total.ok += outcome.ok;
        total.failed += outcome.failed;
    }
    println!(
        "{kind:?}: 3 processes, the store {outage:?} for 3 s: {} requests, {} failed; {during_outage} \
         token requests during the outage, {late_requests} for a process started after the \
         restart",
        total.ok + total.failed,
        total.failed
    );
    assert!(warned, "the outage was logged");
    assert!(during_outage >= 1, "the replicas fetched on their own");
    // A token stored moments before could be in its last tenth of life: then the late process
    // makes the one refresh for everyone.
    assert!(late_requests <= 1);
}

async fn invalid_client(kind: StoreKind) {
    let store = StoreServer::start(kind);
    let (single, shared, alone) = (
        AuthServer::start().await.unwrap(),
        AuthServer::start().await.unwrap(),
        AuthServer::start().await.unwrap(),
    );
    for auth in [&single, &shared, &alone] {
        auth.set_default_behavior(Some(Behavior::invalid_client()));
    }
    let run = |auth: &AuthServer, store: Option<&StoreServer>| {
        let mut v = vars(auth, store, "steady");
        v.push(("TCC_MILLIS", "4000".to_string()));
        v.push(("TCC_BACKOFF_MS", "400".to_string()));
        v.push(("TCC_MAX_BACKOFF_MS", "400".to_string()));
        v.push(("TCC_EXPECT_ERRORS", "1".to_string()));
        v
    };
    let (one, fleet_shared, _) = tokio::join!(
        fleet(1, run(&single, None)),
        fleet(K, run(&shared, Some(&store))),
        fleet(K, run(&alone, None)),
    );
    assert_eq!(one.ok + fleet_shared.ok, 0);
    println!(
        "{kind:?}: 4 s of invalid_client: one process {} token requests; {K} processes {} with \
         the store, {} without",
        single.token_requests(),
        shared.token_requests(),
        alone.token_requests()
    );
    // Each backoff step of 400 ms waits at least 200 ms: the most one process can make.
    let most_for_one = 4000 / 200 + 1;
    assert!(single.token_requests() <= most_for_one);
    assert!(
        shared.token_requests() <= most_for_one,
        "{} with the store",
        shared.token_requests()
    );
    assert!(alone.token_requests() > most_for_one);
}

async fn encrypted_at_rest(kind: StoreKind) {
    for encrypted in [true, false] {
        let store = StoreServer::start(kind);
        let auth = AuthServer::start().await.unwrap();
        let mut v = vars(&auth, Some(&store), "burst");
        v.push(("TCC_PRINT_TOKEN", "1".to_string()));
        v.push(("TCC_CONCURRENCY", "1".to_string()));
        if encrypted {
            v.push(("TCC_KEY", "k".to_string()));
        }
        let (outcome, printed) = Replica::start(&v).finish().await;
        assert_eq!(outcome.ok, 1);
        let token = printed
            .stdout
            .lines()
            .find_map(|l| l.split_once("TOKEN ").map(|(_, rest)| rest))
            .unwrap()
            .to_string();
        // A second process reads it back (so the stored value is usable, not garbage).
        let (second, again) = Replica::start(&v).finish().await;
        assert_eq!(second.ok, 1);
        assert!(again.stdout.contains(&token));
        assert_eq!(auth.token_requests(), 1);
        let stored = store.entries().await;
        let holds_token = stored
            .iter()
            .any(|e| e.value.windows(token.len()).any(|w| w == token.as_bytes()));
        assert!(stored.iter().any(|e| e.name.ends_with(":token")));
        assert_eq!(holds_token, !encrypted, "{kind:?}, encrypted: {encrypted}");
        assert!(stored
            .iter()
            .all(|e| !e.name.contains(AuthServer::CLIENT_ID)));
    }
}

/// Stored times are the store's, never a replica's wall clock: a replica whose clock is two
/// hours behind writes a token the others use, and one two hours ahead reads it, so the fleet
/// still makes one token request. (With wall-clock expiry times in the record, the first
/// replica's one-hour token would have expired an hour ago by everyone else's clock: each of
/// them would make a token request of its own.)
async fn skewed_clocks(kind: StoreKind) {
    let store = StoreServer::start(kind);
    let auth = AuthServer::start().await.unwrap();
    auth.set_default_behavior(Some(Behavior::Delay(Duration::from_millis(200))));
    let v = vars(&auth, Some(&store), "burst");
    let (behind, _) = Replica::start_skewed(&v, Some("-2h")).finish().await;
    assert_eq!(behind, Outcome { ok: 50, failed: 0 });
    assert_eq!(auth.token_requests(), 1);
    let on_time = fleet(K, v.clone()).await;
    let (ahead, _) = Replica::start_skewed(&v, Some("+2h")).finish().await;
    assert_eq!(
        on_time,
        Outcome {
            ok: K * 50,
            failed: 0
        }
    );
    assert_eq!(ahead, Outcome { ok: 50, failed: 0 });
    println!(
        "{kind:?}: one replica 2 h behind, {K} on time, one 2 h ahead: {} token request(s)",
        auth.token_requests()
    );
    assert_eq!(
        auth.token_requests(),
        1,
        "every replica used the stored token"
    );
}
