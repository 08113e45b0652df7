//! The credential sets of one [`MultiAudienceLayer`](super::MultiAudienceLayer) and their
//! caches: the configured ones (the origin table and the default), fixed at build; and the
//! ones made on demand (from a request's [`CredentialSet`] extension or the per-origin rule),
//! in an immutable map that is replaced, copied, on every insertion (`arc_swap`), so that a
//! lookup takes no lock and allocates nothing. At most `max_sets` sets are made on demand.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::origin::{NormalOrigin, Origin};
use crate::cache::{TokenCache, TokenCacheBuilder};
use crate::client_credentials::{ClientCredentials, CredentialSet};
use crate::error::Error;

/// How long a set made on demand that has no token yet is kept at the bound: its first token
/// request may still be running.
const NEW_SET_GRACE: Duration = Duration::from_secs(60);

/// Makes the cache of a set from its credentials.
pub(super) type CacheSettings = Arc<dyn Fn(TokenCacheBuilder) -> TokenCacheBuilder + Send + Sync>;

/// Derives the credential set of an origin not in the table.
pub(super) type OriginRule = Arc<dyn Fn(&str) -> CredentialSet + Send + Sync>;

/// One credential set and its token cache, made on first use.
pub(super) struct SetCache {
    pub(super) set: CredentialSet,
    credentials: ClientCredentials,
    cache: OnceLock<TokenCache>,
    created: Instant,
}

impl SetCache {
    fn new(set: CredentialSet, base: &ClientCredentials) -> Result<Self, Error> {
        Ok(SetCache {
            credentials: base.for_credential_set(&set)?,
            set,
            cache: OnceLock::new(),
            created: Instant::now(),
        })
    }

    /// The set's cache, made now if this is its first use.
    #[inline]
    pub(super) fn cache(&self, settings: &CacheSettings) -> &TokenCache {
        self.cache
            .get_or_init(|| settings(TokenCache::builder(self.credentials.clone())).build())
    }

    /// Whether dropping this set now costs nothing: its token has expired (the next use would
    /// fetch one anyway), or it never got one and is past its first token request.
    fn is_idle(&self) -> bool {
        match self.cache.get() {
            // Judged by the cache's own expiry (a default or clamped lifetime included), not
            // the lifetime the server stated.
            Some(cache) if cache.cached().is_some() => !cache.has_unexpired_token(),
            _ => self.created.elapsed() >= NEW_SET_GRACE,
        }
    }
}

/// Origins by scheme, keyed by normal authority (so that a lookup needs only a `&str`).
#[derive(Clone, Default)]
struct Origins {
    http: HashMap<Box<str>, Arc<SetCache>>,
    https: HashMap<Box<str>, Arc<SetCache>>,
}

impl Origins {
    fn side(&self, secure: bool) -> &HashMap<Box<str>, Arc<SetCache>> {
        if secure {
            &self.https
        } else {
            &self.http
        }
    }

    fn len(&self) -> usize {
        self.http.len() + self.https.len()
    }

    fn insert(&mut self, origin: NormalOrigin, entry: Arc<SetCache>) {
        let side = if origin.secure {
            &mut self.https
        } else {
            &mut self.http
        };
        side.insert(origin.authority, entry);
    }

    /// The entry of `origin`; allocates only for a URI not spelled in normal form.
    #[inline]
    fn get(&self, origin: Origin<'_>) -> Option<&Arc<SetCache>> {
        let side = self.side(origin.secure);
        if side.is_empty() {
            return None;
        }
        match origin.as_normal() {
            Some(authority) => side.get(authority),
            None => side.get(&origin.normalized().authority),
        }
    }
}

/// The sets made on demand: replaced as a whole on every change.
#[derive(Clone, Default)]
struct OnDemand {
    by_set: HashMap<CredentialSet, Arc<SetCache>>,
    by_origin: Origins,
}

/// Everything the layer's services share.
pub(super) struct Registry {
    base: ClientCredentials,
    pub(super) settings: CacheSettings,
    /// The table's sets and the default, by set (for a request extension naming one of them).
    configured: HashMap<CredentialSet, Arc<SetCache>>,
    table: Origins,
    default: Option<Arc<SetCache>>,
    rule: Option<OriginRule>,
    on_demand: ArcSwap<OnDemand>,
    /// Serialises insertions (the cold path), so that none is lost to a concurrent copy.
    inserting: Mutex<()>,
    max_sets: usize,
}

/// What a request is matched by.
pub(super) enum Key<'a> {
    /// A [`CredentialSet`] request extension.
    Set(&'a CredentialSet),
    /// The request URI's origin.
    Origin(Origin<'a>),
    /// Neither (a relative URI): the default set.
    None,
}

impl Key<'_> {
    #[inline]
    pub(super) fn of<B>(request: &http::Request<B>) -> Key<'_> {
        if let Some(set) = request.extensions().get::<CredentialSet>() {
            return Key::Set(set);
        }
        match Origin::of(request.uri()) {
            Some(origin) => Key::Origin(origin),
            None => Key::None,
        }
    }
}

/// The outcome of a lookup that takes no lock.
pub(super) enum Found<'a> {
    Set(&'a Arc<SetCache>),
    /// Not made yet: [`Registry::insert`] makes it (or says why not).
    Missing,
    Refused(Error),
}

pub(super) struct RegistryConfig {
    pub(super) base: ClientCredentials,
    pub(super) settings: CacheSettings,
    pub(super) table: Vec<(NormalOrigin, CredentialSet)>,
    pub(super) default: Option<CredentialSet>,
    pub(super) rule: Option<OriginRule>,
    pub(super) max_sets: usize,
}

impl Registry {
    pub(super) fn new(config: RegistryConfig) -> Result<Self, Error> {
        let mut configured: HashMap<CredentialSet, Arc<SetCache>> = HashMap::new();
        let mut entry = |set: CredentialSet| -> Result<Arc<SetCache>, Error> {
            if let Some(existing) = configured.get(&set) {
                return Ok(existing.clone());
            }
            let made = Arc::new(SetCache::new(set.clone(), &config.base)?);
            configured.insert(set, made.clone());
            Ok(made)
        };
        let mut table = Origins::default();
        for (origin, set) in config.table {
            table.insert(origin, entry(set)?);
        }
        let default = config.default.map(&mut entry).transpose()?;
        Ok(Registry {
            base: config.base,
            settings: config.settings,
            configured,
            table,
            default,
            rule: config.rule,
            on_demand: ArcSwap::from_pointee(OnDemand::default()),
            inserting: Mutex::new(()),
            max_sets: config.max_sets,
        })
    }

    /// Finds the set of `key` without a lock or allocation (for a URI in normal form), and
    /// hands it to `f`: the set is only borrowed, from the configured table or the current
    /// snapshot of the sets made on demand.
    #[inline]
    pub(super) fn with_set<R>(&self, key: &Key<'_>, f: impl FnOnce(Found<'_>) -> R) -> R {
        match key {
            Key::Set(set) => {
                if let Some(entry) = self.configured.get(*set) {
                    return f(Found::Set(entry));
                }
                let on_demand = self.on_demand.load();
                match on_demand.by_set.get(*set) {
                    Some(entry) => f(Found::Set(entry)),
                    None => f(Found::Missing),
                }
            }
            Key::Origin(origin) => {
                if let Some(entry) = self.table.get(*origin) {
                    return f(Found::Set(entry));
                }
                if self.rule.is_some() {
                    let on_demand = self.on_demand.load();
                    return match on_demand.by_origin.get(*origin) {
                        Some(entry) => f(Found::Set(entry)),
                        None => f(Found::Missing),
                    };
                }
                f(self.default_or_refuse(Some(*origin)))
            }
            Key::None => f(self.default_or_refuse(None)),
        }
    }

    fn default_or_refuse(&self, origin: Option<Origin<'_>>) -> Found<'_> {
        match &self.default {
            Some(entry) => Found::Set(entry),
            None => Found::Refused(match origin {
                Some(origin) => Error::config(format!(
                    "no credential set for the origin {}; add it to the table with `.origin(..)`, \
                     or set a default set",
                    origin.normalized()
                )),
                None => Error::config(
                    "the request URI has no origin (a relative URI) and no default credential \
                     set is configured; use absolute URIs, a `CredentialSet` request \
                     extension, or set a default set",
                ),
            }),
        }
    }

    /// The cold path: makes the set of `key` (under a lock, copying the map), or finds that
    /// another caller just did. Refuses when `max_sets` sets made on demand are all in use.
    pub(super) fn insert(&self, key: &Key<'_>) -> Result<Arc<SetCache>, Error> {
        let _inserting = self.inserting.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.on_demand.load_full();
        let (set, origin) = match key {
            Key::Set(set) => ((*set).clone(), None),
            Key::Origin(origin) => {
                if let Some(entry) = current.by_origin.get(*origin) {
                    return Ok(entry.clone());
                }
                let normal = origin.normalized();
                let rule = self.rule.as_ref().ok_or_else(|| {
                    Error::config("no per-origin rule to make a credential set with")
                })?;
                (rule(&normal.to_string()), Some(normal))
            }
            Key::None => return Err(Error::config("a request without an origin has no set")),
        };
        if let Some(entry) = current.by_set.get(&set) {
            if origin.is_none() {
                return Ok(entry.clone());
            }
        }
        let mut next = (*current).clone();
        let entry = match next.by_set.get(&set).or_else(|| self.configured.get(&set)) {
            Some(existing) => existing.clone(),
            None => {
                if next.by_set.len() >= self.max_sets {
                    self.sweep(&mut next);
                }
                if next.by_set.len() >= self.max_sets {
                    return Err(self.full_error(origin.as_ref()));
                }
                let made = Arc::new(SetCache::new(set.clone(), &self.base)?);
                next.by_set.insert(set, made.clone());
                made
            }
        };
        if let Some(origin) = origin {
            // Many origins may map to one set (a rule that returns the same set for every
            // tenant): the remembered origins are bounded too, or origins from user input would
            // grow the map (and its copy per insertion) without end. Past the bound, an origin
            // is resolved through the rule on each request instead of remembered.
            if next.by_origin.len() >= self.max_origins() {
                self.sweep(&mut next);
            }
            if next.by_origin.len() < self.max_origins() {
                next.by_origin.insert(origin, entry.clone());
            }
        }
        self.on_demand.store(Arc::new(next));
        Ok(entry)
    }

    /// How many origins are remembered: a few per set the bound allows.
    fn max_origins(&self) -> usize {
        self.max_sets.saturating_mul(4).max(64)
    }

    /// Drops the sets made on demand that are idle, and the origins that led to them.
    fn sweep(&self, on_demand: &mut OnDemand) {
        let before = on_demand.by_set.len();
        on_demand.by_set.retain(|_, entry| !entry.is_idle());
        let kept = &on_demand.by_set;
        let live =
            |entry: &Arc<SetCache>| kept.get(&entry.set).is_some_and(|k| Arc::ptr_eq(k, entry));
        on_demand.by_origin.http.retain(|_, entry| live(entry));
        on_demand.by_origin.https.retain(|_, entry| live(entry));
        tracing::debug!(
            dropped = before - on_demand.by_set.len(),
            "idle credential sets dropped at the bound"
        );
    }

    fn full_error(&self, origin: Option<&NormalOrigin>) -> Error {
        let what = match origin {
            Some(origin) => format!("for the origin {origin}"),
            None => "for a request's `CredentialSet` extension".to_string(),
        };
        Error::config(format!(
            "no new credential set {what}: the layer already holds its bound of {} sets made on \
             demand, each with a valid token; raise `.max_sets(..)`, or check what makes so many \
             distinct sets (an origin or audience taken from user input?)",
            self.max_sets
        ))
    }

    /// How many sets have a cache now: configured ones used so far, and those made on demand.
    pub(super) fn sets_in_use(&self) -> usize {
        let configured = self
            .configured
            .values()
            .filter(|entry| entry.cache.get().is_some())
            .count();
        configured + self.on_demand.load().by_set.len()
    }

    /// The cache of `set`, if it has one.
    pub(super) fn cache_of(&self, set: &CredentialSet) -> Option<TokenCache> {
        let on_demand = self.on_demand.load();
        self.configured
            .get(set)
            .or_else(|| on_demand.by_set.get(set))
            .and_then(|entry| entry.cache.get().cloned())
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table: Vec<String> = self
            .table
            .https
            .keys()
            .map(|a| format!("https://{a}"))
            .chain(self.table.http.keys().map(|a| format!("http://{a}")))
            .collect();
        f.debug_struct("Registry")
            .field("client_id", &self.base.client_id())
            .field("origins", &table)
            .field("default", &self.default.as_ref().map(|d| &d.set))
            .field("per_origin_rule", &self.rule.is_some())
            .field("sets_in_use", &self.sets_in_use())
            .field("max_sets", &self.max_sets)
            .finish()
    }
}
