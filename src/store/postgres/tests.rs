use super::*;

#[test]
fn connection_strings_parse_without_network_and_never_show_the_password() {
    for url in [
        "postgres://tcc:hunter2@db.internal/app",
        "postgresql://tcc:hunter2@10.0.0.1:6432/app?sslmode=require",
        "host=db.internal user=tcc password=hunter2 dbname=app",
    ] {
        let store = PostgresStore::new(url).unwrap();
        let shown = format!("{store:?}");
        assert!(
            !shown.contains("hunter2")
                && (shown.contains("db.internal") || shown.contains("10.0.0.1")),
            "{shown}"
        );
    }
    for bad in [
        "postgres://tcc:hunter2@db.internal:notaport/app",
        "host=db.internal password=hunter2 sslmode=sometimes",
        "postgres://tcc:hunter2@/app",
    ] {
        let error = PostgresStore::new(bad).unwrap_err().to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }
}

#[test]
fn table_names_are_identifiers_or_refused() {
    let table = Table::parse("auth.token_store").unwrap();
    assert_eq!(table.quoted, "\"auth\".\"token_store\"");
    assert_eq!(table.channel, "auth.token_store");
    for bad in [
        "",
        "a.b.c",
        "x;DROP TABLE y",
        "t\"",
        "1abc",
        "a..b",
        &"x".repeat(64),
    ] {
        assert!(Table::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn settings_have_floors_and_apply_to_a_shared_store_as_a_copy() {
    let store = PostgresStore::new("postgres://db.internal/app")
        .unwrap()
        .lease_ttl(Duration::ZERO)
        .operation_timeout(Duration::ZERO)
        .max_connections(0);
    assert_eq!(TokenStore::lease_ttl(&store), Duration::from_millis(100));
    assert_eq!(
        TokenStore::operation_timeout(&store),
        Duration::from_millis(1)
    );
    assert_eq!(store.inner.pool.max, 1);
    let shared = store.clone();
    let changed = store.lease_ttl(Duration::from_secs(3));
    assert_eq!(TokenStore::lease_ttl(&changed), Duration::from_secs(3));
    assert_eq!(TokenStore::lease_ttl(&shared), Duration::from_millis(100));
}
