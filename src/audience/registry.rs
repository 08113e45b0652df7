//! The credential sets of one [`MultiAudienceLayer`](super::MultiAudienceLayer) and their
//! caches: the configured ones (the origin table and the default), fixed at build; and the
//! ones made on demand (from a request's [`CredentialSet`] extension or the per-origin rule),
//! in an immutable map that is replaced, copied, when a set is made (`arc_swap`), so that a
//! lookup takes no lock and allocates nothing. At most `max_sets` sets are made on demand.
//!
//! The origins the per-origin rule has seen are remembered in a fixed table of slots
//! ([`RememberedOrigins`]): finding one is a hash and an atomic load; remembering one is one
//! atomic swap of its slot. No global lock and no map copy per origin, however many origins
//! come: past the table's size an origin replaces another in its slot (and is derived by the
//! rule again when it comes back), never a request that serialises every other.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
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
    /// Dropped at the bound (idle): a remembered origin that still points here is a miss.
    retired: AtomicBool,
}

impl SetCache {
    fn new(set: CredentialSet, base: &ClientCredentials) -> Result<Self, Error> {
        Ok(SetCache {
            credentials: base.for_credential_set(&set)?,
            set,
            cache: OnceLock::new(),
            created: Instant::now(),
            retired: AtomicBool::new(false),
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

/// The sets made on demand: replaced as a whole when a set is made or dropped.
#[derive(Clone, Default)]
struct OnDemand {
    by_set: HashMap<CredentialSet, Arc<SetCache>>,
}

/// One origin the rule has seen, and the set it derived.
struct Remembered {
    secure: bool,
    authority: Box<str>,
    entry: Arc<SetCache>,
}

/// The origins the rule has seen: groups of [`WAYS`] slots, and two groups per origin chosen
/// by its hash ("two choices": an origin goes to the emptier one, so that groups overflow only
/// when the table is nearly full). A lookup loads at most `2 × WAYS` slots (no lock, no
/// allocation); remembering an origin swaps one slot. The hash has fixed keys, so that the
/// table behaves the same in every run: origins chosen to collide only make each other be
/// derived by the rule again.
struct RememberedOrigins {
    slots: Box<[ArcSwapOption<Remembered>]>,
    /// `groups - 1`; the number of groups is a power of two.
    mask: usize,
}

/// Slots per group.
const WAYS: usize = 4;

impl RememberedOrigins {
    /// A table with room for at least `origins` (`WAYS` slots per origin, in groups).
    fn new(origins: usize) -> Self {
        let groups = origins.max(1).next_power_of_two();
        RememberedOrigins {
            slots: (0..groups * WAYS).map(|_| ArcSwapOption::empty()).collect(),
            mask: groups - 1,
        }
    }

    /// The first slots of the origin's two groups, and its hash.
    #[inline]
    fn groups(&self, secure: bool, authority: &str) -> ([usize; 2], u64) {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one((secure, authority));
        let first = (hash as usize & self.mask) * WAYS;
        let second = ((hash >> 32) as usize & self.mask) * WAYS;
        ([first, second], hash)
    }

    /// Calls `f` with the set remembered for the origin, or with `None`.
    #[inline]
    fn with<R>(
        &self,
        secure: bool,
        authority: &str,
        f: impl FnOnce(Option<&Arc<SetCache>>) -> R,
    ) -> R {
        let (starts, _) = self.groups(secure, authority);
        for start in starts {
            for slot in &self.slots[start..start + WAYS] {
                let guard = slot.load();
                if let Some(remembered) = &*guard {
                    if remembered.secure == secure
                        && &*remembered.authority == authority
                        && !remembered.entry.retired.load(Ordering::Relaxed)
                    {
                        return f(Some(&remembered.entry));
                    }
                }
            }
        }
        f(None)
    }

    /// Remembers `origin` → `entry`: in its own stale slot, else an empty or stale slot of its
    /// emptier group, else in place of one of its groups' origins.
    fn remember(&self, origin: &NormalOrigin, entry: &Arc<SetCache>) {
        let (starts, hash) = self.groups(origin.secure, &origin.authority);
        let group = |start: usize| &self.slots[start..start + WAYS];
        let is_free = |slot: &ArcSwapOption<Remembered>| {
            slot.load().as_ref().is_none_or(|r| {
                r.entry.retired.load(Ordering::Relaxed)
                    || (r.secure == origin.secure && r.authority == origin.authority)
            })
        };
        let free = |start: usize| group(start).iter().filter(|slot| is_free(slot)).count();
        let [first, second] = starts;
        let emptier = if free(second) > free(first) {
            second
        } else {
            first
        };
        let slot = group(emptier)
            .iter()
            .find(|slot| is_free(slot))
            .unwrap_or(&group(emptier)[(hash >> 62) as usize % WAYS]);
        slot.store(Some(Arc::new(Remembered {
            secure: origin.secure,
            authority: origin.authority.clone(),
            entry: entry.clone(),
        })));
    }
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
    remembered: RememberedOrigins,
    /// Serialises the making of sets (the cold path), so that none is lost to a concurrent
    /// copy. Never taken for an origin whose set exists.
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
            remembered: RememberedOrigins::new(max_origins(config.max_sets)),
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
                    let found = |entry: Option<&Arc<SetCache>>| match entry {
                        Some(entry) => f(Found::Set(entry)),
                        None => f(Found::Missing),
                    };
                    return match origin.as_normal() {
                        Some(authority) => self.remembered.with(origin.secure, authority, found),
                        // A URI not spelled in normal form (upper case, default port).
                        None => {
                            let normal = origin.normalized();
                            self.remembered
                                .with(normal.secure, &normal.authority, found)
                        }
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

    /// The cold path: the set of `key` when the lookup missed. For an origin: the rule derives
    /// its set, found among the sets (no lock) or made, and the origin is remembered (one slot
    /// swapped). Refuses when `max_sets` sets made on demand are all in use.
    pub(super) fn insert(&self, key: &Key<'_>) -> Result<Arc<SetCache>, Error> {
        match key {
            Key::Set(set) => self.entry_of(set, None),
            Key::Origin(origin) => {
                let normal = origin.normalized();
                let rule = self.rule.as_ref().ok_or_else(|| {
                    Error::config("no per-origin rule to make a credential set with")
                })?;
                let set = rule(&normal.to_string());
                let entry = self.entry_of(&set, Some(&normal))?;
                self.remembered.remember(&normal, &entry);
                Ok(entry)
            }
            Key::None => Err(Error::config("a request without an origin has no set")),
        }
    }

    /// The entry of `set`: configured, made on demand already (both without a lock), or made
    /// now under the lock, copying the map of sets.
    fn entry_of(
        &self,
        set: &CredentialSet,
        origin: Option<&NormalOrigin>,
    ) -> Result<Arc<SetCache>, Error> {
        if let Some(entry) = self.configured.get(set) {
            return Ok(entry.clone());
        }
        if let Some(entry) = self.on_demand.load().by_set.get(set) {
            return Ok(entry.clone());
        }
        let _inserting = self.inserting.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.on_demand.load_full();
        if let Some(entry) = current.by_set.get(set) {
            return Ok(entry.clone());
        }
        let mut next = (*current).clone();
        if next.by_set.len() >= self.max_sets {
            self.sweep(&mut next);
        }
        if next.by_set.len() >= self.max_sets {
            return Err(self.full_error(origin));
        }
        let made = Arc::new(SetCache::new(set.clone(), &self.base)?);
        next.by_set.insert(set.clone(), made.clone());
        self.on_demand.store(Arc::new(next));
        Ok(made)
    }

    /// Drops the sets made on demand that are idle; origins remembered for them become misses.
    fn sweep(&self, on_demand: &mut OnDemand) {
        let before = on_demand.by_set.len();
        on_demand.by_set.retain(|_, entry| {
            let idle = entry.is_idle();
            if idle {
                entry.retired.store(true, Ordering::Relaxed);
            }
            !idle
        });
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

/// How many origins the rule's table is sized for: a few per set the bound allows.
fn max_origins(max_sets: usize) -> usize {
    max_sets.saturating_mul(4).max(64)
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
