//! Secret rotation at the test server: a client may have more than one accepted secret (Okta
//! and Entra keep two during a rotation), any of them can be revoked, and the server counts
//! the token requests that presented each secret.

use std::collections::{HashMap, HashSet};

use super::auth_server::{AuthServer, Client, State};
use super::lock;

/// The rotation state of a server's clients.
#[derive(Default)]
pub(super) struct Rotation {
    /// Secrets accepted besides the one a client was registered with.
    added: HashMap<String, Vec<String>>,
    /// `(client id, secret)` pairs no longer accepted.
    revoked: HashSet<(String, String)>,
    /// Token requests that presented each secret (Basic or form body), accepted or not.
    presented: HashMap<String, usize>,
}

impl AuthServer {
    /// Accepts `secret` for `client_id` as well as the secrets it already has, as an
    /// authorization server does during a rotation.
    ///
    /// ```
    /// use tower_client_credentials::testing::AuthServer;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let server = AuthServer::start().await?;
    /// server.add_client_secret(AuthServer::CLIENT_ID, "the-next-secret");
    /// server.revoke_client_secret(AuthServer::CLIENT_ID, AuthServer::CLIENT_SECRET);
    /// assert_eq!(server.token_requests_with_secret("the-next-secret"), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn add_client_secret(&self, client_id: &str, secret: &str) {
        let state = self.handle();
        let mut rotation = lock(&state.rotation);
        rotation
            .revoked
            .remove(&(client_id.to_string(), secret.to_string()));
        rotation
            .added
            .entry(client_id.to_string())
            .or_default()
            .push(secret.to_string());
    }

    /// Stops accepting `secret` for `client_id` (tokens already issued stay valid; see
    /// [`revoke_all`](Self::revoke_all)). See [`add_client_secret`](Self::add_client_secret).
    pub fn revoke_client_secret(&self, client_id: &str, secret: &str) {
        lock(&self.handle().rotation)
            .revoked
            .insert((client_id.to_string(), secret.to_string()));
    }

    /// How many token requests presented `secret` (in a Basic header or the form body),
    /// whether it was accepted or not. See [`add_client_secret`](Self::add_client_secret).
    pub fn token_requests_with_secret(&self, secret: &str) -> usize {
        lock(&self.handle().rotation)
            .presented
            .get(secret)
            .copied()
            .unwrap_or(0)
    }
}

impl State {
    /// Whether `secret` is one `client` (registered as `client_id`) may use now; counts it as
    /// presented.
    pub(super) fn secret_accepted(&self, client_id: &str, client: &Client, secret: &str) -> bool {
        let mut rotation = lock(&self.rotation);
        *rotation.presented.entry(secret.to_string()).or_default() += 1;
        let known = client.secret == secret
            || rotation
                .added
                .get(client_id)
                .is_some_and(|added| added.iter().any(|s| s == secret));
        known
            && !rotation
                .revoked
                .contains(&(client_id.to_string(), secret.to_string()))
    }
}
