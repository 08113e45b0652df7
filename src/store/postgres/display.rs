//! What errors and `Debug` show: the server and database, never a password.

use std::fmt;

use tokio_postgres::Config;

use super::PostgresStore;

/// `postgres://host:port/database` of a connection string, for messages: never the user name
/// or password (and for the `key=value` form, only that it is one).
pub(super) fn shown(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}")
        }
        None => "(key=value connection string)".to_owned(),
    }
}

pub(super) fn shown_config(config: &Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            let ports = config.get_ports();
            match ports.get(i).or(ports.first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    format!(
        "postgres://{}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// The failure as the database or the socket told it: the SQLSTATE and message of a database
/// error (not its DETAIL, which can quote a row's values), or the kind of a connection error.
pub(super) fn describe(shown: &str, error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!(
            "PostgreSQL at {shown}: {} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        ),
        None => {
            let cause = std::error::Error::source(error)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            format!("PostgreSQL at {shown}: {error}{cause}")
        }
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("server", &self.inner.shown)
            .field("table", &self.inner.table.channel)
            .field("encrypted", &self.inner.cipher.is_some())
            .field("lease_ttl", &self.inner.lease_ttl)
            .field("operation_timeout", &self.inner.operation_timeout)
            .field("max_connections", &self.inner.pool.max)
            .finish()
    }
}
