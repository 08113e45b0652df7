//! [`CredentialSet`]: what one token is for (scopes, audience, resources, other parameters), and
//! [`ClientCredentials::for_credential_set`], the same client asking for another set.
//!
//! Design rule 11: a token belongs to one credential set; two sets never share a cache. The
//! set is a value (hashable, cheap to clone) so that a layer serving several APIs can key its
//! caches by it.

use std::fmt;
use std::sync::Arc;

use super::{ClientCredentials, Inner};
use crate::error::Error;

/// What a token is requested for: scopes, an `audience` (Auth0, Okta), RFC 8707 `resource`
/// indicators (Entra, oidc-provider) and other form parameters. Two equal sets are the same
/// set, whatever the order their scopes and resources were given in.
///
/// Cheap to clone (a reference count). Used by
/// [`ClientCredentials::for_credential_set`] and by the
/// [`MultiAudienceLayer`](crate::audience::MultiAudienceLayer), which keeps one token cache per
/// set; as a request extension it picks the set for that request.
///
/// # Example
///
/// ```
/// use tower_client_credentials::client_credentials::CredentialSet;
///
/// let orders = CredentialSet::new()
///     .audience("https://orders.example")
///     .scopes(["orders:read", "orders:write"]);
/// let same = CredentialSet::new()
///     .scopes(["orders:write orders:read"])
///     .audience("https://orders.example");
/// assert_eq!(orders, same);
/// assert_ne!(orders, CredentialSet::new().audience("https://orders.example"));
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct CredentialSet(Arc<Parts>);

#[derive(Clone, Default, PartialEq, Eq, Hash)]
struct Parts {
    /// Sorted and without duplicates: the scope *set*.
    scopes: Vec<String>,
    audience: Option<String>,
    /// Sorted and without duplicates.
    resources: Vec<String>,
    /// Sorted by name, then value.
    params: Vec<(String, String)>,
}

impl CredentialSet {
    /// An empty set: no scope, audience, resource or parameter (the authorization server's
    /// defaults).
    pub fn new() -> Self {
        CredentialSet::default()
    }

    /// Adds scopes; each may itself hold several space-separated scopes.
    pub fn scopes<I, T>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let parts = Arc::make_mut(&mut self.0);
        for scope in scopes {
            parts
                .scopes
                .extend(scope.as_ref().split_whitespace().map(str::to_string));
        }
        parts.scopes.sort();
        parts.scopes.dedup();
        self
    }

    /// Adds one scope (or several, space-separated).
    pub fn scope(self, scope: impl AsRef<str>) -> Self {
        self.scopes([scope])
    }

    /// Sets `audience` (Auth0, Okta custom authorization servers).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.0).audience = Some(audience.into());
        self
    }

    /// Adds an RFC 8707 `resource` indicator; may be given several times.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        let parts = Arc::make_mut(&mut self.0);
        parts.resources.push(resource.into());
        parts.resources.sort();
        parts.resources.dedup();
        self
    }

    /// Adds another form parameter. The names the crate sets (`grant_type`, `scope`,
    /// `client_id`, `client_secret`, `client_assertion`, `client_assertion_type`) and the ones
    /// with their own method (`audience`, `resource`) are refused when the set is used.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let parts = Arc::make_mut(&mut self.0);
        parts.params.push((name.into(), value.into()));
        parts.params.sort();
        self
    }

    /// The audience, if set.
    pub fn get_audience(&self) -> Option<&str> {
        self.0.audience.as_deref()
    }

    /// The resource indicators, sorted.
    pub fn get_resources(&self) -> impl Iterator<Item = &str> {
        self.0.resources.iter().map(String::as_str)
    }

    /// The scopes, sorted.
    pub fn get_scopes(&self) -> impl Iterator<Item = &str> {
        self.0.scopes.iter().map(String::as_str)
    }

    /// The `scope` form value, or `None` for no scope.
    fn scope_value(&self) -> Option<String> {
        (!self.0.scopes.is_empty()).then(|| self.0.scopes.join(" "))
    }

    /// The other form parameters: audience, resources, then the rest.
    fn form_params(&self) -> Vec<(String, String)> {
        let parts = &self.0;
        let mut params = Vec::new();
        if let Some(audience) = &parts.audience {
            params.push(("audience".to_string(), audience.clone()));
        }
        for resource in &parts.resources {
            params.push(("resource".to_string(), resource.clone()));
        }
        params.extend(parts.params.iter().cloned());
        params
    }

    /// The mistakes `build` would refuse: a scope with characters RFC 6749 §3.3 does not
    /// allow, a parameter the crate sets itself.
    fn check(&self) -> Result<(), Error> {
        for scope in &self.0.scopes {
            if !scope
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
            {
                return Err(Error::config(format!(
                    "the credential set's scope `{}` has characters RFC 6749 does not allow",
                    scope.escape_debug()
                )));
            }
        }
        for (name, _) in &self.0.params {
            // A set names its audience and resources with their own methods.
            if crate::oauth::token_request::is_set_by_the_crate(name)
                || matches!(name.as_str(), "audience" | "resource")
            {
                return Err(Error::config(format!(
                    "the form parameter `{name}` cannot be a credential set's `param`; use its \
                     own method (`scopes`, `audience`, `resource`) or let the crate set it"
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CredentialSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = &self.0;
        let mut debug = f.debug_struct("CredentialSet");
        debug.field("scopes", &parts.scopes);
        if let Some(audience) = &parts.audience {
            debug.field("audience", audience);
        }
        if !parts.resources.is_empty() {
            debug.field("resources", &parts.resources);
        }
        // Parameter values may be anything the user put there: names only.
        if !parts.params.is_empty() {
            let names: Vec<&str> = parts.params.iter().map(|(n, _)| n.as_str()).collect();
            debug.field("params", &names);
        }
        debug.finish()
    }
}

impl ClientCredentials {
    /// The same client asking for another credential set: `set`'s scopes and parameters
    /// replace these credentials' own; the token endpoint (and its discovery), the client
    /// authentication (the secret source, the negotiated method) and the HTTP client are
    /// shared. Give each result its own [`TokenCache`](crate::TokenCache): tokens of two sets
    /// must never be mixed.
    ///
    /// Fails if a scope of `set` has characters RFC 6749 does not allow, or a parameter is one
    /// the crate sets.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_client_credentials::client_credentials::CredentialSet;
    /// use tower_client_credentials::ClientCredentials;
    ///
    /// # fn main() -> Result<(), tower_client_credentials::Error> {
    /// let credentials = ClientCredentials::builder()
    ///     .token_endpoint("https://idp.example/oauth2/default/v1/token")?
    ///     .client_id("my-client")
    ///     .client_secret("my-secret")
    ///     .build()?;
    /// let for_orders = credentials.for_credential_set(
    ///     &CredentialSet::new().audience("https://orders.example").scope("orders:read"),
    /// )?;
    /// assert_eq!(for_orders.client_id(), "my-client");
    /// # Ok(())
    /// # }
    /// ```
    pub fn for_credential_set(&self, set: &CredentialSet) -> Result<ClientCredentials, Error> {
        set.check()?;
        let inner = &self.inner;
        Ok(ClientCredentials {
            inner: Arc::new(Inner {
                endpoint: inner.endpoint.clone(),
                client_id: inner.client_id.clone(),
                authentication: inner.authentication.clone(),
                scope: set.scope_value(),
                params: set.form_params(),
                http: inner.http.clone(),
                expiry_from_jwt: inner.expiry_from_jwt,
                // One key for the client: every set's tokens are bound to it.
                #[cfg(feature = "dpop")]
                dpop: inner.dpop.clone(),
            }),
        })
    }

    /// These credentials' own scopes and parameters as a [`CredentialSet`]: the set a
    /// [`MultiAudienceLayer`](crate::audience::MultiAudienceLayer) uses by default.
    ///
    /// ```
    /// use tower_client_credentials::ClientCredentials;
    ///
    /// # fn main() -> Result<(), tower_client_credentials::Error> {
    /// let credentials = ClientCredentials::builder()
    ///     .token_endpoint("https://idp.example/oauth2/default/v1/token")?
    ///     .client_id("my-client")
    ///     .client_secret("my-secret")
    ///     .scopes(["b", "a"])
    ///     .audience("https://api.example")
    ///     .build()?;
    /// let set = credentials.credential_set();
    /// assert_eq!(set.get_scopes().collect::<Vec<_>>(), ["a", "b"]);
    /// assert_eq!(set.get_audience(), Some("https://api.example"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn credential_set(&self) -> CredentialSet {
        let inner = &self.inner;
        let mut set = CredentialSet::new();
        if let Some(scope) = &inner.scope {
            set = set.scope(scope);
        }
        for (name, value) in &inner.params {
            set = match name.as_str() {
                "audience" => set.audience(value.clone()),
                "resource" => set.resource(value.clone()),
                _ => set.param(name.clone(), value.clone()),
            };
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> ClientCredentials {
        ClientCredentials::builder()
            .token_endpoint("https://idp.example/oauth2/default/v1/token")
            .unwrap()
            .client_id("id")
            .client_secret("secret")
            .scopes(["base"])
            .build()
            .unwrap()
    }

    #[test]
    fn a_set_replaces_scope_and_params_and_shares_the_rest() {
        let base = credentials();
        let set = CredentialSet::new()
            .scopes(["b a", "a"])
            .audience("aud")
            .resource("https://r2")
            .resource("https://r1")
            .param("x", "1");
        let derived = base.for_credential_set(&set).unwrap();
        assert_eq!(derived.inner.scope.as_deref(), Some("a b"));
        assert_eq!(
            derived.inner.params,
            [
                ("audience".to_string(), "aud".to_string()),
                ("resource".to_string(), "https://r1".to_string()),
                ("resource".to_string(), "https://r2".to_string()),
                ("x".to_string(), "1".to_string()),
            ]
        );
        assert!(Arc::ptr_eq(
            &base.inner.authentication,
            &derived.inner.authentication
        ));
        assert!(Arc::ptr_eq(&base.inner.endpoint, &derived.inner.endpoint));
        assert_eq!(derived.credential_set(), set);
    }

    #[test]
    fn bad_sets_are_refused_by_name() {
        let base = credentials();
        let err = base
            .for_credential_set(&CredentialSet::new().param("client_secret", "x"))
            .unwrap_err();
        assert!(err.to_string().contains("client_secret"), "{err}");
        let err = base
            .for_credential_set(&CredentialSet::new().scope("bad\"scope"))
            .unwrap_err();
        assert!(err.to_string().contains("RFC 6749"), "{err}");
    }
}
