//! Issue 19's combination matrix: {one API (`BearerAuthLayer`), several APIs
//! (`MultiAudienceLayer`)} × {Bearer, DPoP, certificate-bound (mTLS)} × {no retry,
//! `retry_on_unauthorized`} × {own cache, shared store on Redis}: 24 cells, one test each (so a
//! failing cell is named by nextest), all running the one body [`run`].
//!
//! Every cell goes through a hyper-util client to the crate's loopback servers, which check
//! what the cell promises:
//!
//! * the binding: a DPoP token is accepted only with a valid proof of the key it is bound to
//!   (`cnf.jkt`), a certificate-bound token only over a connection presenting the certificate
//!   it is bound to (`cnf.x5t#S256`, RFC 8705 §3); each guard is shown to bite, by sending the
//!   same token without the proof or the certificate, or with another key's proof;
//! * several APIs: each API accepts only tokens for its own audience (`aud`);
//! * the retry cells: the authorization server revokes every token; each request then sees one
//!   401 at most and succeeds; a cell without retry hands the 401 to the caller;
//! * the store cells: two replicas, each with its own credentials (the DPoP key and the
//!   certificate loaded from the same PEM, as two processes would), its own cache and its own
//!   `RedisStore` connection to one `redis-server` started on a free loopback port, make one
//!   token request per credential set between them, when they all start at once and after the
//!   revocation;
//!   in the DPoP and certificate cells a third replica of the same client with a key (or a
//!   certificate) of its own shares the store too, and must get tokens bound to its own key,
//!   never the others' (one more token request per set).
//!
//! The replicas are in one process: what the store shares goes through Redis, and nothing else
//! is shared (no cache, key object, identity object, nonce memory or connection pool), so
//! separate processes would test nothing more here (tests/store_redis.rs runs real fleets of
//! processes for the store's own behaviour).
//!
//! A cell the crate cannot serve must be refused when its layer is built, with an error naming
//! the combination: the table's `Expect::Refused` asserts that (none is refused today).
//!
//! Needs `redis-server` on the PATH (`.ci/setup` installs it).

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use secrecy::ExposeSecret;
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};
use tower_client_credentials::audience::MultiAudienceLayer;
use tower_client_credentials::dpop::{DpopAlgorithm, DpopKey};
use tower_client_credentials::mtls::ClientIdentity;
use tower_client_credentials::store::RedisStore;
use tower_client_credentials::testing::{ApiServer, AuthServer, ServerTls};
use tower_client_credentials::{
    BearerAuthLayer, BoxError, ClientCredentials, CredentialSet, Token, TokenCache,
};

const API_KEY: &str = "matrix-api-key";
const CA: &[u8] = include_bytes!("mtls/ca.pem");
const SERVER_CERT: &[u8] = include_bytes!("mtls/server.pem");
const SERVER_KEY: &[u8] = include_bytes!("mtls/server-key.pem");
const CLIENT_CERT: &[u8] = include_bytes!("mtls/client.pem");
const CLIENT_KEY: &[u8] = include_bytes!("mtls/client-key.pem");
/// Another certificate of the same CA, for a replica with a certificate of its own.
const OTHER_CLIENT_CERT: &[u8] = include_bytes!("mtls/other-client.pem");
const OTHER_CLIENT_KEY: &[u8] = include_bytes!("mtls/other-client-key.pem");
/// One ES256 key for every replica of a cell, as a fleet loads one PEM.
const DPOP_KEY: &[u8] = include_bytes!("keys/dpop-es256.pem");
/// The `tls_client_auth` client the certificate cells register.
const MTLS_CLIENT: &str = "mtls-client";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Apis {
    /// `BearerAuthLayer`, one API.
    One,
    /// `MultiAudienceLayer`, two APIs, one credential set (audience) each.
    Several,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Binding {
    Bearer,
    Dpop,
    /// `tls_client_auth`: the token is bound to the client certificate (RFC 8705).
    Certificate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    No,
    OnUnauthorized,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cache {
    /// One replica, its own cache.
    Own,
    /// Two replicas sharing a `RedisStore`.
    SharedRedis,
}

/// What a cell must do: work, or be refused when the layer is built with an error containing
/// every one of these fragments.
#[derive(Clone, Copy, Debug)]
#[allow(dead_code)] // No cell is refused today; the variant is how the table would say so.
enum Expect {
    Works,
    Refused(&'static [&'static str]),
}

#[derive(Clone, Copy, Debug)]
struct Cell {
    apis: Apis,
    binding: Binding,
    retry: Retry,
    cache: Cache,
    expect: Expect,
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} API(s) × {:?} × retry {:?} × cache {:?}",
            self.apis, self.binding, self.retry, self.cache
        )
    }
}

/// One `#[tokio::test]` per cell, each running [`run`], and [`CELLS`], the table.
macro_rules! cells {
    ($($name:ident: $apis:ident, $binding:ident, $retry:ident, $cache:ident => $expect:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                run(Cell {
                    apis: Apis::$apis,
                    binding: Binding::$binding,
                    retry: Retry::$retry,
                    cache: Cache::$cache,
                    expect: $expect,
                })
                .await;
            }
        )*

        /// Every cell, in the order of the README's table.
        const CELLS: &[Cell] = &[$(Cell {
            apis: Apis::$apis,
            binding: Binding::$binding,
            retry: Retry::$retry,
            cache: Cache::$cache,
            expect: $expect,
        }),*];
    };
}

cells! {
    one_bearer_no_retry_own_cache: One, Bearer, No, Own => Expect::Works;
    one_bearer_no_retry_redis: One, Bearer, No, SharedRedis => Expect::Works;
    one_bearer_retry_own_cache: One, Bearer, OnUnauthorized, Own => Expect::Works;
    one_bearer_retry_redis: One, Bearer, OnUnauthorized, SharedRedis => Expect::Works;
    one_dpop_no_retry_own_cache: One, Dpop, No, Own => Expect::Works;
    one_dpop_no_retry_redis: One, Dpop, No, SharedRedis => Expect::Works;
    one_dpop_retry_own_cache: One, Dpop, OnUnauthorized, Own => Expect::Works;
    one_dpop_retry_redis: One, Dpop, OnUnauthorized, SharedRedis => Expect::Works;
    one_mtls_no_retry_own_cache: One, Certificate, No, Own => Expect::Works;
    one_mtls_no_retry_redis: One, Certificate, No, SharedRedis => Expect::Works;
    one_mtls_retry_own_cache: One, Certificate, OnUnauthorized, Own => Expect::Works;
    one_mtls_retry_redis: One, Certificate, OnUnauthorized, SharedRedis => Expect::Works;
    several_bearer_no_retry_own_cache: Several, Bearer, No, Own => Expect::Works;
    several_bearer_no_retry_redis: Several, Bearer, No, SharedRedis => Expect::Works;
    several_bearer_retry_own_cache: Several, Bearer, OnUnauthorized, Own => Expect::Works;
    several_bearer_retry_redis: Several, Bearer, OnUnauthorized, SharedRedis => Expect::Works;
    several_dpop_no_retry_own_cache: Several, Dpop, No, Own => Expect::Works;
    several_dpop_no_retry_redis: Several, Dpop, No, SharedRedis => Expect::Works;
    several_dpop_retry_own_cache: Several, Dpop, OnUnauthorized, Own => Expect::Works;
    several_dpop_retry_redis: Several, Dpop, OnUnauthorized, SharedRedis => Expect::Works;
    several_mtls_no_retry_own_cache: Several, Certificate, No, Own => Expect::Works;
    several_mtls_no_retry_redis: Several, Certificate, No, SharedRedis => Expect::Works;
    several_mtls_retry_own_cache: Several, Certificate, OnUnauthorized, Own => Expect::Works;
    several_mtls_retry_redis: Several, Certificate, OnUnauthorized, SharedRedis => Expect::Works;
}

#[test]
fn the_table_has_every_cell_once() {
    assert_eq!(CELLS.len(), 24);
    for (i, a) in CELLS.iter().enumerate() {
        for b in &CELLS[i + 1..] {
            assert!(
                (a.apis, a.binding, a.retry, a.cache) != (b.apis, b.binding, b.retry, b.cache),
                "{a} twice"
            );
        }
    }
}

// ----- the body -----------------------------------------------------------------------------

type Body = Full<Bytes>;
type Connector = HttpsConnector<HttpConnector>;
/// A layered client, whatever the layers.
type Api = BoxCloneService<Request<Body>, Response<Incoming>, BoxError>;

/// The servers of one cell.
struct World {
    cell: Cell,
    auth: AuthServer,
    apis: Vec<ApiServer>,
    redis: Option<RedisServer>,
}

/// Reads a replica's cached token of each API.
type Tokens = Box<dyn Fn() -> Vec<Option<Token>> + Send + Sync>;

/// One replica: its layered client and a way to read its cached token per API.
struct Replica {
    api: Api,
    tokens: Tokens,
    /// Its DPoP key and certificate (used or not, as the cell says).
    key: DpopKey,
    identity: ClientIdentity,
    /// Replicas of one group hold the same key and certificate (from one PEM) and share
    /// tokens; group 1 is the replica with its own.
    group: usize,
}

async fn run(cell: Cell) {
    let world = World::start(cell).await;
    let replicas = match world.replicas() {
        Ok(replicas) => {
            if let Expect::Refused(fragments) = cell.expect {
                panic!("{cell}: the table says refused ({fragments:?}) but the layer was built");
            }
            replicas
        }
        Err(error) => match cell.expect {
            Expect::Refused(fragments) => {
                let message = error.to_string();
                for fragment in fragments {
                    assert!(
                        message.contains(fragment),
                        "{cell}: the refusal does not say {fragment:?}: {message}"
                    );
                }
                return;
            }
            Expect::Works => panic!("{cell}: the layer was refused: {error}"),
        },
    };
    let sets = world.apis.len();
    let groups = 1 + replicas.iter().map(|r| r.group).max().unwrap_or(0);

    // Every replica calls every API, all replicas at once: the first token of each set (and
    // binding) is fetched once for all, the others wait for it (the store's lease).
    for (i, api) in world.apis.iter().enumerate() {
        let mut calls = tokio::task::JoinSet::new();
        for (r, replica) in replicas.iter().enumerate() {
            let (client, url) = (replica.api.clone(), api.url());
            calls.spawn(async move { (r, call_url(client, url).await) });
        }
        while let Some(joined) = calls.join_next().await {
            let (r, status) = joined.expect("a call panicked");
            assert_eq!(status, StatusCode::OK, "{cell}: replica {r}, API {i}");
        }
    }
    let rejected: usize = world.apis.iter().map(ApiServer::rejected).sum();
    assert_eq!(rejected, 0, "{cell}: a fresh token was refused");
    assert_eq!(
        world.auth.token_requests(),
        sets * groups,
        "{cell}: one token request per credential set and binding, for all replicas"
    );
    world.check_binding(&replicas).await;

    match cell.retry {
        Retry::OnUnauthorized => {
            world.auth.revoke_all();
            for (r, replica) in replicas.iter().enumerate() {
                for (i, api) in world.apis.iter().enumerate() {
                    let before = api.rejected();
                    let status = call(&replica.api, api).await;
                    let refused = api.rejected() - before;
                    assert_eq!(status, StatusCode::OK, "{cell}: replica {r}, API {i}");
                    // The first replica of a group carries the revoked token (one 401); a
                    // replica after it may find the group's new token in the store.
                    assert!(refused <= 1, "{cell}: {refused} refusals for one request");
                    let first_of_group = replicas[..r].iter().all(|o| o.group != replica.group);
                    if first_of_group {
                        assert_eq!(refused, 1, "{cell}: the revoked token was not sent");
                    }
                }
            }
            assert_eq!(
                world.auth.token_requests(),
                2 * sets * groups,
                "{cell}: after the revocation, one new token per credential set and binding"
            );
            world.check_binding(&replicas).await;
        }
        Retry::No => {
            // Without the retry, the API's 401 is the caller's answer: nothing resends.
            world.auth.revoke_all();
            let api = &world.apis[0];
            let before = api.rejected();
            let status = call(&replicas[0].api, api).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{cell}");
            assert_eq!(
                api.rejected() - before,
                1,
                "{cell}: resent without a retry layer"
            );
        }
    }
}

/// `GET {api}/v1/items` through `client`: its status.
async fn call(client: &Api, api: &ApiServer) -> StatusCode {
    call_url(client.clone(), api.url()).await
}

/// `GET {base}/v1/items` through `client`: its status.
async fn call_url(client: Api, base: String) -> StatusCode {
    let request = Request::get(format!("{base}/v1/items"))
        .body(Body::default())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), client.oneshot(request))
        .await
        .expect("the request did not finish in 20 s")
        .unwrap_or_else(|error| panic!("the request failed: {error}"));
    let status = response.status();
    let _ = response.into_body().collect().await;
    status
}

/// The audience of API `i`'s credential set.
fn audience(i: usize) -> String {
    format!("https://api-{i}.matrix.example")
}

impl World {
    async fn start(cell: Cell) -> World {
        let tls = ServerTls::from_pem(SERVER_CERT, SERVER_KEY, CA).unwrap();
        let identity = ClientIdentity::from_pem(CLIENT_CERT, CLIENT_KEY).unwrap();
        let other = ClientIdentity::from_pem(OTHER_CLIENT_CERT, OTHER_CLIENT_KEY).unwrap();
        let certificate = cell.binding == Binding::Certificate;
        let mut auth =
            AuthServer::builder().client(AuthServer::CLIENT_ID, AuthServer::CLIENT_SECRET, None);
        if certificate {
            // One client, two certificates: the fleet's and the one of the replica with its own.
            auth = auth
                .tls_client(MTLS_CLIENT, &identity.thumbprint())
                .tls_client(MTLS_CLIENT, &other.thumbprint())
                .tls(tls.clone());
        }
        let auth = auth.start().await.unwrap();
        let count = match cell.apis {
            Apis::One => 1,
            Apis::Several => 2,
        };
        let mut apis = Vec::new();
        for i in 0..count {
            let api = if certificate {
                ApiServer::start_tls(&auth, API_KEY, &tls).await.unwrap()
            } else {
                ApiServer::start(&auth, API_KEY).await.unwrap()
            };
            api.require_audience(Some(&audience(i)));
            apis.push(api);
        }
        let redis = (cell.cache == Cache::SharedRedis).then(RedisServer::start);
        World {
            cell,
            auth,
            apis,
            redis,
        }
    }

    /// The replicas of the cell: one with its own cache; two sharing the Redis store, and in
    /// the DPoP and certificate cells a third with its own key or certificate.
    fn replicas(&self) -> Result<Vec<Replica>, BoxError> {
        let groups: &[usize] = match (self.cell.cache, self.cell.binding) {
            (Cache::Own, _) => &[0],
            (Cache::SharedRedis, Binding::Bearer) => &[0, 0],
            (Cache::SharedRedis, Binding::Dpop | Binding::Certificate) => &[0, 0, 1],
        };
        groups.iter().map(|group| self.replica(*group)).collect()
    }

    /// One replica as a process of its own would make it: its own DPoP key object and
    /// certificate (group 0: from the fleet's PEMs; group 1: its own), credentials, store
    /// connection, cache and client.
    fn replica(&self, group: usize) -> Result<Replica, BoxError> {
        let cell = self.cell;
        let (key, identity) = match group {
            0 => (
                DpopKey::from_pem(DpopAlgorithm::ES256, DPOP_KEY)?,
                ClientIdentity::from_pem(CLIENT_CERT, CLIENT_KEY)?,
            ),
            _ => (
                DpopKey::generate()?,
                ClientIdentity::from_pem(OTHER_CLIENT_CERT, OTHER_CLIENT_KEY)?,
            ),
        };
        let identity = identity.with_root_certificates_pem(CA)?;
        let builder = ClientCredentials::builder().token_endpoint(self.auth.token_endpoint())?;
        let mut builder = match cell.binding {
            Binding::Certificate => builder
                .client_id(MTLS_CLIENT)
                .tls_client_auth(identity.clone()),
            Binding::Bearer | Binding::Dpop => builder
                .client_id(AuthServer::CLIENT_ID)
                .client_secret(AuthServer::CLIENT_SECRET),
        };
        if cell.binding == Binding::Dpop {
            builder = builder.dpop(key.clone());
        }
        if cell.apis == Apis::One {
            builder = builder.audience(audience(0));
        }
        let credentials = builder.build()?;
        let store = match &self.redis {
            Some(redis) => Some(RedisStore::new(&redis.url())?),
            None => None,
        };
        let client = match cell.binding {
            Binding::Certificate => https_client(Some(&identity)),
            Binding::Bearer | Binding::Dpop => https_client(None),
        };

        let (api, tokens): (Api, Tokens) = match cell.apis {
            Apis::One => {
                let mut cache = TokenCache::builder(credentials);
                if let Some(store) = store {
                    cache = cache.store(store);
                }
                let cache = cache.build();
                let auth =
                    BearerAuthLayer::from_cache(cache.clone()).with_header("x-api-key", API_KEY)?;
                let api = match (cell.binding, cell.retry) {
                    (Binding::Dpop, Retry::No) => boxed(auth.dpop(key.clone()), client),
                    (Binding::Dpop, Retry::OnUnauthorized) => {
                        boxed(auth.dpop(key.clone()).retry_on_unauthorized(), client)
                    }
                    (_, Retry::No) => boxed(auth, client),
                    (_, Retry::OnUnauthorized) => boxed(auth.retry_on_unauthorized(), client),
                };
                (api, Box::new(move || vec![cache.cached()]))
            }
            Apis::Several => {
                let sets: Vec<CredentialSet> = (0..self.apis.len())
                    .map(|i| CredentialSet::new().audience(audience(i)))
                    .collect();
                let mut builder = MultiAudienceLayer::builder(credentials)
                    .refuse_unknown_origins()
                    .header("x-api-key", API_KEY)?;
                for (api, set) in self.apis.iter().zip(&sets) {
                    builder = builder.origin(&api.url(), set.clone());
                }
                if let Some(store) = store {
                    builder = builder.cache_settings(move |cache| cache.store(store.clone()));
                }
                if cell.binding == Binding::Dpop {
                    builder = builder.dpop(key.clone());
                }
                let layer = builder.build()?;
                let api = match cell.retry {
                    Retry::No => boxed(layer.clone(), client),
                    Retry::OnUnauthorized => boxed(layer.clone().retry_on_unauthorized(), client),
                };
                let tokens = move || {
                    sets.iter()
                        .map(|set| layer.cache(set).and_then(|cache| cache.cached()))
                        .collect()
                };
                (api, Box::new(tokens))
            }
        };
        Ok(Replica {
            api,
            tokens,
            key,
            identity,
            group,
        })
    }

    /// What the tokens of every replica are bound to, and that the servers hold them to it.
    async fn check_binding(&self, replicas: &[Replica]) {
        let cell = self.cell;
        let per_replica: Vec<Vec<Token>> = replicas
            .iter()
            .map(|replica| {
                (replica.tokens)()
                    .into_iter()
                    .map(|token| token.unwrap_or_else(|| panic!("{cell}: no cached token")))
                    .collect()
            })
            .collect();
        let secret = |token: &Token| token.secret().expose_secret().to_string();
        // The replicas of a group share one token per set; other groups' and other sets'
        // tokens differ.
        for (a, replica_a) in replicas.iter().enumerate() {
            for (b, replica_b) in replicas.iter().enumerate().skip(a + 1) {
                let same = per_replica[a]
                    .iter()
                    .zip(&per_replica[b])
                    .map(|(x, y)| secret(x) == secret(y));
                for same in same {
                    if replica_a.group == replica_b.group {
                        assert!(same, "{cell}: replicas {a} and {b} do not share the tokens");
                    } else {
                        assert!(
                            !same,
                            "{cell}: replica {b} uses a token bound to another key"
                        );
                    }
                }
            }
        }
        if let [a, b] = &per_replica[0][..] {
            assert_ne!(secret(a), secret(b), "{cell}: two APIs got one token");
        }
        for (replica, tokens) in replicas.iter().zip(&per_replica) {
            self.check_replica_binding(replica, tokens).await;
        }
    }

    /// What `replica`'s tokens (one per API) are bound to, and that the servers hold them to it.
    async fn check_replica_binding(&self, replica: &Replica, tokens: &[Token]) {
        let cell = self.cell;
        let secret = |token: &Token| token.secret().expose_secret().to_string();
        let key = &replica.key;
        for (i, token) in tokens.iter().enumerate() {
            let api = &self.apis[i];
            let value = secret(token);
            let jkt = self.auth.dpop_jkt(&value);
            let x5t = self.auth.certificate_bound(&value);
            match cell.binding {
                Binding::Bearer => {
                    assert_eq!(token.token_type(), "Bearer", "{cell}");
                    assert_eq!((jkt, x5t), (None, None), "{cell}: a bound token");
                    // Guard: the API holds a token to its audience.
                    if let [first, second] = &self.apis[..] {
                        let other = if i == 0 { second } else { first };
                        let status = raw(other, Some(("Bearer", &value)), None, None).await;
                        assert_eq!(
                            status,
                            StatusCode::UNAUTHORIZED,
                            "{cell}: another API's token"
                        );
                    }
                }
                Binding::Dpop => {
                    assert_eq!(token.token_type(), "DPoP", "{cell}");
                    assert_eq!(jkt.as_deref(), Some(key.thumbprint()), "{cell}");
                    assert_eq!(x5t, None, "{cell}");
                    // Guards: the token without a proof, as a bearer token, and with a proof of
                    // another key, is refused.
                    let status = raw(api, Some(("DPoP", &value)), None, None).await;
                    assert_eq!(
                        status,
                        StatusCode::UNAUTHORIZED,
                        "{cell}: DPoP token, no proof"
                    );
                    let status = raw(api, Some(("Bearer", &value)), None, None).await;
                    assert_eq!(
                        status,
                        StatusCode::UNAUTHORIZED,
                        "{cell}: DPoP token as Bearer"
                    );
                    let other = DpopKey::generate().unwrap();
                    let status = raw(api, Some(("DPoP", &value)), Some(&other), None).await;
                    assert_eq!(
                        status,
                        StatusCode::UNAUTHORIZED,
                        "{cell}: another key's proof"
                    );
                    // And with the right key's proof, made here, it is accepted: the guards
                    // above failed for the binding, not for the request's shape.
                    let status = raw(api, Some(("DPoP", &value)), Some(key), None).await;
                    assert_eq!(status, StatusCode::OK, "{cell}: the right proof");
                }
                Binding::Certificate => {
                    assert_eq!(token.token_type(), "Bearer", "{cell}");
                    assert_eq!(x5t, Some(replica.identity.thumbprint()), "{cell}");
                    assert_eq!(jkt, None, "{cell}");
                    // Guard: the same token over TLS without the certificate is refused, and
                    // accepted with it.
                    let status = raw(api, Some(("Bearer", &value)), None, None).await;
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{cell}: no certificate");
                    let status =
                        raw(api, Some(("Bearer", &value)), None, Some(&replica.identity)).await;
                    assert_eq!(status, StatusCode::OK, "{cell}: with the certificate");
                }
            }
        }
    }
}

/// `GET {api}/v1/items` with `authorization` (scheme, token), the API key, an optional proof by
/// `proof_key` and an optional client certificate, outside any layer: the servers' own guards.
async fn raw(
    api: &ApiServer,
    authorization: Option<(&str, &str)>,
    proof_key: Option<&DpopKey>,
    identity: Option<&ClientIdentity>,
) -> StatusCode {
    let uri: Uri = format!("{}/v1/items", api.url()).parse().unwrap();
    let mut request = Request::get(uri.clone()).header("x-api-key", API_KEY);
    if let Some((scheme, token)) = authorization {
        request = request.header(header::AUTHORIZATION, format!("{scheme} {token}"));
        if let Some(key) = proof_key {
            request = request.header("dpop", key.proof(&Method::GET, &uri, Some(token)).unwrap());
        }
    }
    let response = https_client(identity)
        .request(request.body(Body::default()).unwrap())
        .await
        .unwrap();
    response.status()
}

/// A hyper-util client over rustls trusting the test CA, presenting `identity` if given
/// (plain `http` URLs allowed).
fn https_client(identity: Option<&ClientIdentity>) -> Client<Connector, Body> {
    match identity {
        Some(identity) => identity.hyper_client().unwrap(),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in rustls::pki_types::pem::PemObject::pem_slice_iter(CA) {
                roots.add(ca.unwrap()).unwrap();
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            Client::builder(TokioExecutor::new()).build(connector)
        }
    }
}

/// `layer` over `client`, boxed so that every cell's stack has one type.
fn boxed<L>(layer: L, client: Client<Connector, Body>) -> Api
where
    L: Layer<Client<Connector, Body>>,
    L::Service: Service<Request<Body>, Response = Response<Incoming>> + Clone + Send + 'static,
    <L::Service as Service<Request<Body>>>::Error: Into<BoxError>,
    <L::Service as Service<Request<Body>>>::Future: Send + 'static,
{
    BoxCloneService::new(layer.layer(client).map_err(Into::into))
}

// ----- redis-server -------------------------------------------------------------------------

/// A `redis-server` on a free loopback port, killed on drop (as tests/store_redis.rs starts
/// its servers).
struct RedisServer {
    port: u16,
    process: Child,
    dir: std::path::PathBuf,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let dir = std::env::temp_dir().join(format!("tcc-matrix-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let process = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (see .ci/setup)");
        let server = RedisServer { port, process, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.pong() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pong(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 16];
        stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok()
            && stream
                .read(&mut reply)
                .is_ok_and(|n| reply[..n].starts_with(b"+PONG"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
