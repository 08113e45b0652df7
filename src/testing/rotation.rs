//! Secret rotation at the test server: a client may have more than one accepted secret (Okta
//! and Entra keep two during a rotation), any of them can be revoked, and the server counts
//! the token requests that presented each secret. The [`AuthServer`](super::AuthServer)
//! methods that drive it are `add_client_secret`, `revoke_client_secret` and
//! `token_requests_with_secret`.

use super::lock;
use super::state::{Client, Rotation, State};

impl Rotation {
    /// Accepts `secret` for `client_id` as well (again, if it was revoked).
    pub(super) fn add(&mut self, client_id: &str, secret: &str) {
        self.revoked
            .remove(&(client_id.to_string(), secret.to_string()));
        self.added
            .entry(client_id.to_string())
            .or_default()
            .push(secret.to_string());
    }

    /// Stops accepting `secret` for `client_id`.
    pub(super) fn revoke(&mut self, client_id: &str, secret: &str) {
        self.revoked
            .insert((client_id.to_string(), secret.to_string()));
    }

    /// How many token requests presented `secret`, accepted or not.
    pub(super) fn presented(&self, secret: &str) -> usize {
        self.presented.get(secret).copied().unwrap_or(0)
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
