//! `PostgresStore` against a real PostgreSQL server, operation by operation (issue 21): what the
//! fleet cases of `tests/store_fleet.rs` rely on without seeing it directly. Each test starts
//! its own server (`fleet::PostgresServer`: initdb in a temporary directory, a free loopback
//! port, SCRAM password) and stops it.

mod fleet;

use std::time::{Duration, Instant};

use fleet::PostgresServer;
use tower_client_credentials::store::{PostgresStore, Record, Slot, StoreKey, TokenStore};

fn key(name: &str) -> StoreKey {
    StoreKey::builder("https://idp.example/token", name).build()
}

fn store(server: &PostgresServer) -> PostgresStore {
    PostgresStore::new(&server.url())
        .unwrap()
        .operation_timeout(Duration::from_secs(5))
}

/// Runs SQL as the server's superuser.
async fn sql(server: &PostgresServer, statement: &str) {
    let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(connection);
    client.batch_execute(statement).await.unwrap();
    drop(client);
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_appears_in_an_error_or_debug() {
    let server = PostgresServer::start();
    let wrong = server
        .url()
        .replace(PostgresServer::PASSWORD, "wrong-pass-5b1c");
    let store = PostgresStore::new(&wrong).unwrap();
    let error = store.load(&key("a")).await.unwrap_err().to_string();
    assert!(error.contains("28P01"), "names the failure: {error}");
    assert!(error.contains("127.0.0.1"), "names the server: {error}");
    assert!(!error.contains("wrong-pass-5b1c"), "{error}");
    for shown in [format!("{store:?}"), format!("{:?}", self::store(&server))] {
        assert!(!shown.contains("wrong-pass-5b1c") && !shown.contains(PostgresServer::PASSWORD));
    }
    // A connection string that does not parse: its password is not shown either.
    let error = PostgresStore::new("postgres://u:hunter2@host:notaport/db").unwrap_err();
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_compare_and_set_and_ages_come_from_the_database_clock() {
    let server = PostgresServer::start();
    let (a, b) = (store(&server), store(&server));
    let k = key("lease");
    let ttl = Duration::from_secs(5);

    let first = a.acquire_lease(&k, "owner-a", ttl).await.unwrap();
    assert!(first.acquired);
    assert!(first.stored.token.is_none() && first.stored.failure.is_none());
    assert!(!b.acquire_lease(&k, "owner-b", ttl).await.unwrap().acquired);
    assert!(!b.renew_lease(&k, "owner-b", ttl).await.unwrap());
    assert!(a.renew_lease(&k, "owner-a", ttl).await.unwrap());
    b.release_lease(&k, "owner-b").await.unwrap(); // not b's: no effect
    assert!(!b.acquire_lease(&k, "owner-b", ttl).await.unwrap().acquired);

    a.save(
        &k,
        Slot::Token,
        Record::new("fp-1", b"token one".to_vec()),
        ttl,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.release_lease(&k, "owner-a").await.unwrap();
    // The attempt that takes the lease also returns what is stored, with its age.
    let taken = b.acquire_lease(&k, "owner-b", ttl).await.unwrap();
    assert!(taken.acquired);
    let token = taken.stored.token.unwrap();
    assert_eq!(
        (token.fingerprint(), token.payload()),
        ("fp-1", &b"token one"[..])
    );
    let age = token.age().unwrap();
    assert!(
        age >= Duration::from_millis(250) && age < Duration::from_secs(3),
        "{age:?}"
    );

    // Compare-and-delete on the fingerprint.
    assert!(!a.remove_if(&k, Slot::Token, "fp-other").await.unwrap());
    assert!(a.load(&k).await.unwrap().token.is_some());
    assert!(a.remove_if(&k, Slot::Token, "fp-1").await.unwrap());
    assert!(a.load(&k).await.unwrap().token.is_none());

    // Entries and leases expire by the database's clock.
    let short = Duration::from_millis(200);
    a.save(
        &k,
        Slot::Failure,
        Record::new("failure", b"{}".to_vec()),
        short,
    )
    .await
    .unwrap();
    assert!(a.load(&k).await.unwrap().failure.is_some());
    b.release_lease(&k, "owner-b").await.unwrap();
    assert!(
        b.acquire_lease(&k, "owner-b", short)
            .await
            .unwrap()
            .acquired
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(a.load(&k).await.unwrap().failure.is_none());
    assert!(a.acquire_lease(&k, "owner-a", ttl).await.unwrap().acquired);
    // One row per store key, whatever happened to it.
    let rows = server.entries().await;
    assert!(
        rows.iter().all(|e| e.name.starts_with(k.as_str())),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_by_another_store_s_write_not_by_polling() {
    let server = PostgresServer::start();
    let (waiter, writer) = (store(&server), store(&server));
    let k = key("notify");
    waiter.load(&k).await.unwrap(); // starts the listening connection
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Listening, nothing written: the wait lasts its whole timeout (polling would return
    // within 50 ms).
    waiter.load(&k).await.unwrap();
    let started = Instant::now();
    waiter
        .changed(&k, Duration::from_millis(400))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(380),
        "{:?}",
        started.elapsed()
    );

    // A write by another store (another process's pool) wakes it at once.
    waiter.load(&k).await.unwrap();
    let write = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        writer
            .save(
                &k,
                Slot::Token,
                Record::new("fp", b"t".to_vec()),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        writer
    });
    let k = key("notify");
    let started = Instant::now();
    waiter.changed(&k, Duration::from_secs(10)).await.unwrap();
    let woke = started.elapsed();
    assert!(
        woke >= Duration::from_millis(250) && woke < Duration::from_secs(3),
        "{woke:?}"
    );
    let writer = write.await.unwrap();

    // A change between the read and the wait is not missed.
    waiter.load(&k).await.unwrap();
    writer.release_lease(&k, "nobody-holds-it").await.unwrap(); // no change: no notification
    writer
        .save(
            &k,
            Slot::Failure,
            Record::new("failure", b"{}".to_vec()),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    waiter.changed(&k, Duration::from_secs(10)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_or_a_missing_table_fails_the_operation_with_a_named_cause() {
    let server = PostgresServer::start();
    let k = key("ro");
    // Not allowed to create it, and missing: every operation fails, naming the table.
    let no_create = store(&server)
        .table("app.tokens")
        .unwrap()
        .create_table(false);
    let error = no_create.load(&k).await.unwrap_err().to_string();
    assert!(
        error.contains("app.tokens") && error.contains("does not exist"),
        "{error}"
    );

    store(&server).load(&k).await.unwrap(); // creates the default table
    sql(
        &server,
        "ALTER DATABASE postgres SET default_transaction_read_only = on",
    )
    .await;
    let read_only = store(&server);
    assert!(read_only.load(&k).await.unwrap().token.is_none());
    let error = read_only
        .save(
            &k,
            Slot::Token,
            Record::new("fp", b"secret-token-value".to_vec()),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("25006"), "read-only is named: {error}");
    assert!(!error.contains("secret-token-value"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_is_bounded() {
    let server = PostgresServer::start();
    let store = store(&server).max_connections(2);
    let k = key("pool");
    store.load(&k).await.unwrap();
    let backends = || async {
        let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(connection);
        let count: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = 'tower-client-credentials'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        drop(client);
        let _ = task.await;
        count
    };
    // 20 operations at once: at most two pooled connections, plus the listening one.
    let operations: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.load(&key("pool")).await.map(|_| ()) })
        })
        .collect();
    for operation in operations {
        operation.await.unwrap().unwrap();
    }
    let open = backends().await;
    assert!((1..=3).contains(&open), "{open} connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_connections_fails_the_operation_with_its_cause() {
    let server = PostgresServer::start();
    store(&server).load(&key("setup")).await.unwrap(); // creates the table
    sql(
        &server,
        "CREATE ROLE limited LOGIN PASSWORD 'limited-pass-3a9' CONNECTION LIMIT 0; \
         GRANT SELECT, INSERT, UPDATE ON tcc_token_store TO limited",
    )
    .await;
    let url = server.url().replace(
        &format!("tcc:{}", PostgresServer::PASSWORD),
        "limited:limited-pass-3a9",
    );
    let limited = PostgresStore::new(&url)
        .unwrap()
        .operation_timeout(Duration::from_secs(5));
    let started = Instant::now();
    let error = limited.load(&key("a")).await.unwrap_err().to_string();
    assert!(
        error.contains("53300"),
        "too many connections is named: {error}"
    );
    assert!(!error.contains("limited-pass-3a9"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A connection whose operation was cut short by the time limit may sit on a stalled socket: it
/// is closed, and the next operation gets a new one (a pool that took it back would hand it
/// out again, behind the stalled exchange).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_short_by_the_time_limit_is_not_reused() {
    let server = fleet::StoreServer::start(fleet::StoreKind::Postgres);
    let store = PostgresStore::new(&server.url())
        .unwrap()
        .max_connections(1);
    let k = key("stall");
    store.load(&k).await.unwrap();
    // The pool's backend: the store's connection whose last statement is not the LISTEN.
    let pool_backends = || async {
        let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(connection);
        let rows = client
            .query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE application_name = 'tower-client-credentials' \
                   AND query NOT LIKE 'LISTEN%'",
                &[],
            )
            .await
            .unwrap();
        drop(client);
        let _ = task.await;
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>()
    };
    let before = pool_backends().await;
    assert_eq!(before.len(), 1, "{before:?}");

    server.pause();
    let stalled = tokio::time::timeout(Duration::from_millis(300), store.load(&k)).await;
    server.resume();
    assert!(
        stalled.is_err(),
        "the stalled operation ran into the time limit"
    );

    let started = Instant::now();
    store.load(&k).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    // The old backend saw its client go; give it a moment to exit.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = pool_backends().await;
    while after.contains(&before[0]) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = pool_backends().await;
    }
    assert!(
        !after.contains(&before[0]),
        "reused: {before:?} -> {after:?}"
    );
    assert_eq!(after.len(), 1, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_while_the_fleet_runs_is_created_again() {
    let server = PostgresServer::start();
    let store = store(&server);
    let k = key("dropped");
    let ttl = Duration::from_secs(60);
    store
        .save(&k, Slot::Token, Record::new("fp", b"t".to_vec()), ttl)
        .await
        .unwrap();
    sql(&server, "DROP TABLE tcc_token_store").await;
    let error = store.load(&k).await.unwrap_err().to_string();
    assert!(error.contains("42P01"), "{error}");
    // The next operation creates it again (this one's fallback already happened).
    assert!(store.load(&k).await.unwrap().token.is_none());
    store
        .save(&k, Slot::Token, Record::new("fp", b"t".to_vec()), ttl)
        .await
        .unwrap();
    assert!(store.load(&k).await.unwrap().token.is_some());
}
