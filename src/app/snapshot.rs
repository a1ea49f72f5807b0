//! The runtime state built from one config: clusters and, per listener, the
//! state its requests read. A reload builds a new snapshot next to the old
//! one, reusing every cluster whose config did not change (its pools,
//! health and ejections survive), and swaps it in.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::BuildError;
use crate::access_log::AccessLog;
use crate::admission::authorization::Policy;
use crate::admission::jwks::{self, Jwks};
use crate::admission::rate_limit::shared::{SharedBudget, Stores};
use crate::admission::rate_limit::RateLimiter;
use crate::admission::Admission;
use crate::cluster::discovery::{self, dns::DnsResolver};
use crate::cluster::passthrough::Passthrough;
use crate::cluster::Cluster;
use crate::config::{self, Config, ListenerTlsMode};
use crate::identity::store::log_reload;
use crate::identity::{CredentialPaths, CredentialStore};
use crate::listener::state::{ListenerState, Target};
use crate::listener::{self, InboundTls, Serving};
use crate::metrics::Metrics;
use crate::resilience::health::{self, HealthCheck};
use crate::router::Router;
use crate::tls::server::ServerTls;
use crate::tls::terminate::{CertKeyPaths, EdgeCerts, SniCert};

/// A cluster and its background tasks (discovery, health checks), which
/// stop when the handle is dropped.
pub struct ClusterHandle {
    pub cluster: Arc<Cluster>,
    pub config: config::Cluster,
    _stop: watch::Sender<bool>,
}

impl ClusterHandle {
    fn start(
        cfg: &config::Cluster,
        metrics: &Metrics,
        resolver: &Option<Arc<DnsResolver>>,
        seed: Option<Vec<(std::net::SocketAddr, u32)>>,
        mesh: Option<&Arc<CredentialStore>>,
    ) -> Result<Self, BuildError> {
        let cluster = Arc::new(
            Cluster::from_config(cfg, metrics, mesh)
                .map_err(|e| BuildError::Invalid(format!("cluster {}: tls: {e}", cfg.name)))?,
        );
        if let Some(seed) = seed {
            cluster.set_endpoints(seed);
        }
        let (stop, stop_rx) = watch::channel(false);
        if let Some(resolver) = resolver {
            discovery::start(cluster.clone(), cfg, resolver, stop_rx.clone());
        }
        if let Some(hc) = &cfg.health_check {
            tokio::spawn(health::run(
                cluster.clone(),
                HealthCheck::from_config(hc),
                stop_rx,
            ));
        }
        Ok(ClusterHandle {
            cluster,
            config: cfg.clone(),
            _stop: stop,
        })
    }
}

/// A `jwt:` listener's key set and the task that keeps it current, which
/// stops when the handle is dropped.
pub struct JwksHandle {
    pub jwks: Arc<Jwks>,
    config: config::JwksSource,
    /// The cluster a `uri` is fetched through.
    cluster: Option<Arc<Cluster>>,
    _stop: watch::Sender<bool>,
}

impl JwksHandle {
    /// The key set of listener `l` (which has `jwt`), reusing `old`'s when
    /// its source is unchanged, else seeded from it until the first load.
    fn get(
        l: &config::Listener,
        jwt: &config::Jwt,
        clusters: &HashMap<String, Arc<ClusterHandle>>,
        old: Option<&Arc<JwksHandle>>,
    ) -> Result<Arc<JwksHandle>, BuildError> {
        let cluster = |name: &str| clusters.get(name).map(|h| h.cluster.clone());
        let through = jwt.jwks.cluster.as_deref().and_then(cluster);
        let same_source = old.filter(|o| o.config == jwt.jwks);
        let same_cluster = |o: &&Arc<JwksHandle>| match (&o.cluster, &through) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if let Some(o) = same_source.filter(same_cluster) {
            return Ok(o.clone());
        }
        let source = jwks::source_of(&jwt.jwks, cluster)
            .map_err(|e| BuildError::Invalid(format!("listener {}: {e}", l.name)))?;
        let jwks = Arc::new(Jwks::new(&l.name, &source));
        if let Some(o) = same_source {
            jwks.seed(&o.jwks);
        }
        let (stop, stop_rx) = watch::channel(false);
        jwks::start(jwks.clone(), source, stop_rx);
        Ok(Arc::new(JwksHandle {
            jwks,
            config: jwt.jwks.clone(),
            cluster: through,
            _stop: stop,
        }))
    }
}

/// This workload's mesh identity (top-level `tls`): the credential store
/// and the task that re-reads its files, which stops when this is dropped.
pub struct MeshIdentity {
    pub store: Arc<CredentialStore>,
    config: config::MeshTls,
    watch: tokio::task::JoinHandle<()>,
}

impl MeshIdentity {
    /// Load the files and watch them. At startup (`first`), files that do
    /// not hold a usable identity yet are logged and waited for (`/ready`
    /// fails meanwhile); on a reload that changes `tls:`, they refuse the
    /// reload, so a working identity is never replaced by a broken one.
    fn start(
        cfg: &config::MeshTls,
        metrics: &Metrics,
        first: bool,
    ) -> Result<MeshIdentity, BuildError> {
        let paths = CredentialPaths {
            cert: cfg.cert.clone().into(),
            key: cfg.key.clone().into(),
            ca: cfg.ca.clone().into(),
        };
        let store = match first {
            true => {
                let (store, error) = CredentialStore::start(paths);
                if let Some(e) = error {
                    tracing::warn!(
                        error = %e,
                        "no usable TLS credentials yet; not ready until the files hold a valid SVID"
                    );
                }
                Arc::new(store)
            }
            false => Arc::new(
                CredentialStore::load(paths)
                    .map_err(|e| BuildError::Invalid(format!("tls: {e}")))?,
            ),
        };
        let expiry = metrics.tls_cert_expiry.clone();
        match store.current() {
            Some(loaded) => {
                tracing::info!(
                    identity = %loaded.identity(),
                    expiry = %humantime::format_rfc3339_seconds(loaded.expiry()),
                    "TLS credentials loaded"
                );
                expiry.set(gauge_value(loaded.expiry_unix_seconds()));
            }
            None => expiry.set(0),
        }
        let (ok, failed) = (
            metrics.tls_credential_reloads_success.clone(),
            metrics.tls_credential_reloads_failure.clone(),
        );
        let watched = store.clone();
        let watch = tokio::spawn(async move {
            watched
                .watch(CREDENTIALS_POLL, |result| {
                    log_reload(result);
                    match result {
                        Ok(c) => {
                            ok.inc();
                            expiry.set(gauge_value(c.expiry_unix_seconds()));
                        }
                        Err(_) => failed.inc(),
                    }
                })
                .await;
        });
        Ok(MeshIdentity {
            store,
            config: cfg.clone(),
            watch,
        })
    }
}

impl Drop for MeshIdentity {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// A `terminate` listener's certificates (a default one and those chosen by
/// SNI) and the task that re-reads their files, which stops when this is
/// dropped. Kept across reloads that leave the listener's `tls` as it is.
pub struct EdgeTls {
    pub certs: Arc<EdgeCerts>,
    config: config::ListenerTls,
    watch: tokio::task::JoinHandle<()>,
}

impl EdgeTls {
    /// Load every file of listener `listener`'s `tls` (an error names the
    /// file and what is wrong) and watch them.
    fn start(listener: &str, cfg: &config::ListenerTls) -> Result<EdgeTls, BuildError> {
        let paths = |cert: &str, key: &str| CertKeyPaths {
            cert: cert.into(),
            key: key.into(),
        };
        let default = paths(
            cfg.cert.as_deref().unwrap_or_default(),
            cfg.key.as_deref().unwrap_or_default(),
        );
        let sni = cfg
            .sni
            .iter()
            .map(|s| SniCert {
                domains: s.domains.clone(),
                files: paths(&s.cert, &s.key),
            })
            .collect();
        let certs = Arc::new(
            EdgeCerts::load(default, sni)
                .map_err(|e| BuildError::Invalid(format!("listener {listener}: tls: {e}")))?,
        );
        tracing::info!(
            listener,
            certificates = cfg.sni.len() + 1,
            "edge TLS certificates loaded"
        );
        let (watched, name) = (certs.clone(), listener.to_string());
        let watch = tokio::spawn(async move {
            watched
                .watch(CREDENTIALS_POLL, |result| match result {
                    Ok(()) => tracing::info!(listener = %name, "edge TLS certificates reloaded"),
                    Err(e) => tracing::warn!(
                        listener = %name,
                        error = %e,
                        "edge TLS certificates refused; the ones in use stay"
                    ),
                })
                .await;
        });
        Ok(EdgeTls {
            certs,
            config: cfg.clone(),
            watch,
        })
    }
}

impl Drop for EdgeTls {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// How often the credential files are read for changes.
const CREDENTIALS_POLL: std::time::Duration = std::time::Duration::from_secs(1);

fn gauge_value(seconds: u64) -> i64 {
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

pub struct Snapshot {
    pub config: Arc<Config>,
    /// This workload's mesh identity, kept across reloads that leave `tls:`
    /// as it is (its watch goes on; a changed `tls:` loads anew).
    pub mesh: Option<Arc<MeshIdentity>>,
    pub clusters: HashMap<String, Arc<ClusterHandle>>,
    /// Per listener (in config order): its config and request state.
    pub listeners: Vec<(config::Listener, Arc<ListenerState>)>,
    /// The DNS resolver of the `dns:` clusters, kept across reloads that
    /// leave `resolver:` as it is.
    resolver: Option<Arc<DnsResolver>>,
    /// The key sets of `jwt:` listeners, by listener name.
    jwks: HashMap<String, Arc<JwksHandle>>,
    /// Rate-limit buckets by listener and scope, kept across reloads that
    /// leave their settings as they are.
    limiters: HashMap<String, Arc<RateLimiter>>,
    /// The certificates of `terminate` listeners, by listener name.
    edge: HashMap<String, Arc<EdgeTls>>,
    /// The Redis stores of shared rate limits, by URL, kept across reloads.
    redis: Stores,
}

impl Snapshot {
    /// Build the state of `config`, reusing `old`'s unchanged clusters.
    /// Background tasks start here, so call it inside the runtime.
    pub fn build(
        config: Config,
        metrics: &Metrics,
        access_log: &Option<Arc<AccessLog>>,
        old: Option<&Snapshot>,
    ) -> Result<Snapshot, BuildError> {
        let needs_dns = config.clusters.iter().any(|c| c.dns.is_some());
        let resolver_changed = old.is_none_or(|o| {
            serde_json::to_value(&o.config.resolver).ok()
                != serde_json::to_value(&config.resolver).ok()
        });
        let kept = old
            .filter(|_| !resolver_changed)
            .and_then(|o| o.resolver.clone());
        let resolver = match (needs_dns, kept) {
            (false, _) => None,
            (true, Some(r)) => Some(r),
            (true, None) => Some(Arc::new(
                DnsResolver::new(config.resolver.as_ref()).map_err(BuildError::Invalid)?,
            )),
        };
        let mesh = match &config.tls {
            None => None,
            Some(cfg) => match old.and_then(|o| o.mesh.clone()) {
                Some(kept) if kept.config == *cfg => Some(kept),
                _ => Some(Arc::new(MeshIdentity::start(cfg, metrics, old.is_none())?)),
            },
        };
        if mesh.is_none() {
            metrics.tls_cert_expiry.set(0);
        }
        let mesh_changed = old.is_some_and(|o| match (&o.mesh, &mesh) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            (None, None) => false,
            _ => true,
        });
        let mut clusters = HashMap::new();
        for c in &config.clusters {
            let reused = old
                .and_then(|o| o.clusters.get(&c.name))
                .filter(|_| !(c.dns.is_some() && resolver_changed))
                .filter(|h| same(&h.config, c))
                // A mesh cluster holds the store it was built with.
                .filter(|_| c.tls.is_none() || !mesh_changed)
                .cloned();
            let handle = match reused {
                Some(h) => h,
                None => {
                    // A rebuilt DNS cluster starts from the endpoints its
                    // predecessor knew, not empty, until its own first answer.
                    let seed = old
                        .and_then(|o| o.clusters.get(&c.name))
                        .filter(|prev| c.dns.is_some() && prev.cluster.is_discovered())
                        .map(|prev| prev.cluster.endpoint_addrs());
                    let store = mesh.as_ref().map(|m| &m.store);
                    Arc::new(ClusterHandle::start(c, metrics, &resolver, seed, store)?)
                }
            };
            clusters.insert(c.name.clone(), handle);
        }
        let mut listeners = Vec::new();
        let mut jwks = HashMap::new();
        let mut limiters = HashMap::new();
        let mut edge = HashMap::new();
        let mut redis = Stores::default();
        for l in &config.listeners {
            let edge_tls = match l
                .tls
                .as_ref()
                .filter(|t| t.mode == ListenerTlsMode::Terminate)
            {
                Some(cfg) => {
                    let kept = old
                        .and_then(|o| o.edge.get(&l.name))
                        .filter(|e| e.config == *cfg)
                        .cloned();
                    let e = match kept {
                        Some(e) => e,
                        None => Arc::new(EdgeTls::start(&l.name, cfg)?),
                    };
                    edge.insert(l.name.clone(), e.clone());
                    Some(e)
                }
                None => None,
            };
            let keys = match &l.jwt {
                Some(jwt) => {
                    let before = old.and_then(|o| o.jwks.get(&l.name));
                    let h = JwksHandle::get(l, jwt, &clusters, before)?;
                    jwks.insert(l.name.clone(), h.clone());
                    Some(h.jwks.clone())
                }
                None => None,
            };
            let mut limiter = |scope: &str, c: &config::RateLimit| {
                let id = format!("{}\u{0}{scope}", l.name);
                let kept = old
                    .and_then(|o| o.limiters.get(&id))
                    .filter(|r| r.config == *c)
                    .cloned();
                let r = match kept {
                    Some(r) => {
                        redis.keep(&r);
                        r
                    }
                    None => Arc::new(match &c.shared {
                        None => RateLimiter::new(c),
                        Some(s) => {
                            let store = redis.get(&s.redis, old.map(|o| &o.redis))?;
                            let budget = SharedBudget::new(c, s, store, &l.name, scope, metrics);
                            RateLimiter::with_shared(c, budget)
                        }
                    }),
                };
                limiters.insert(id, r.clone());
                Ok(r)
            };
            let admission = Admission::build(l, keys, &mut limiter, metrics)
                .map_err(|e| BuildError::Invalid(format!("listener {}: {e}", l.name)))?;
            listeners.push((
                l.clone(),
                Arc::new(listener_state(
                    l,
                    &clusters,
                    metrics,
                    access_log,
                    admission.map(Arc::new),
                    mesh.as_ref().map(|m| &m.store),
                    edge_tls.as_ref().map(|e| &e.certs),
                )?),
            ));
        }
        Ok(Snapshot {
            config: Arc::new(config),
            mesh,
            clusters,
            listeners,
            resolver,
            jwks,
            limiters,
            edge,
            redis,
        })
    }

    /// The key sets of the `jwt:` listeners, for readiness.
    pub fn jwks_list(&self) -> Vec<Arc<Jwks>> {
        self.jwks.values().map(|h| h.jwks.clone()).collect()
    }

    /// The credential store, for `/certs`.
    pub fn credentials(&self) -> Option<Arc<CredentialStore>> {
        self.mesh.as_ref().map(|m| m.store.clone())
    }

    /// Whether a listener (`tls.mode` strict or permissive) or a cluster
    /// (`tls.mode: mesh`) needs the mesh identity: then `/ready` fails
    /// while it is not usable.
    pub fn needs_identity(&self) -> bool {
        let listener = self
            .config
            .listeners
            .iter()
            .any(|l| l.tls.as_ref().is_some_and(|t| t.mode.needs_mesh_identity()));
        let cluster = self.config.clusters.iter().any(|c| {
            c.tls
                .as_ref()
                .is_some_and(|t| t.mode == config::ClusterTlsMode::Mesh)
        });
        listener || cluster
    }

    /// The clusters, sorted by name, for the admin endpoints.
    pub fn cluster_list(&self) -> Vec<Arc<Cluster>> {
        let mut v: Vec<Arc<Cluster>> = self.clusters.values().map(|h| h.cluster.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

fn same(a: &config::Cluster, b: &config::Cluster) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

fn listener_state(
    l: &config::Listener,
    clusters: &HashMap<String, Arc<ClusterHandle>>,
    metrics: &Metrics,
    access_log: &Option<Arc<AccessLog>>,
    admission: Option<Arc<Admission>>,
    mesh: Option<&Arc<CredentialStore>>,
    edge: Option<&Arc<EdgeCerts>>,
) -> Result<ListenerState, BuildError> {
    let mode = l.tls.as_ref().map(|t| t.mode).unwrap_or_default();
    let invalid =
        |e: &dyn std::fmt::Display| BuildError::Invalid(format!("listener {}: {e}", l.name));
    let server = match (mode, mesh, edge) {
        (ListenerTlsMode::Disabled, _, _) => None,
        (ListenerTlsMode::Terminate, _, Some(certs)) => {
            Some(ServerTls::terminate(certs.clone()).map_err(|e| invalid(&format!("tls: {e}")))?)
        }
        (ListenerTlsMode::Terminate, _, None) => {
            return Err(invalid(&"tls.mode terminate needs its certificates"))
        }
        (ListenerTlsMode::Strict | ListenerTlsMode::Permissive, Some(store), _) => {
            Some(ServerTls::mesh(store.clone()).map_err(|e| invalid(&format!("tls: {e}")))?)
        }
        (ListenerTlsMode::Strict | ListenerTlsMode::Permissive, None, _) => {
            return Err(invalid(&"tls.mode needs the top-level tls identity"))
        }
    };
    let tls = server.map(|server| InboundTls {
        plaintext: mode == ListenerTlsMode::Permissive,
        server,
        metrics: metrics.clone(),
        listener: l.name.as_str().into(),
    });
    let mut per_cluster: HashMap<String, Target> = HashMap::new();
    let router = Router::build(l, |name| {
        if let Some(t) = per_cluster.get(name) {
            return Some(t.clone());
        }
        let t = Target {
            cluster: clusters.get(name)?.cluster.clone(),
            metrics: Arc::new(metrics.route(&l.name, name)),
        };
        per_cluster.insert(name.to_owned(), t.clone());
        Some(t)
    })
    .map_err(|e| BuildError::Invalid(format!("listener {}: {e}", l.name)))?;
    let passthrough = (l.transparent && l.passthrough).then(|| Passthrough::new(&l.name, metrics));
    Ok(ListenerState {
        name: l.name.as_str().into(),
        router,
        metrics: metrics.listener(&l.name),
        unrouted: Arc::new(metrics.route(&l.name, "")),
        access_log: access_log.clone(),
        authorization: l.authorization.as_deref().map(Policy::from_config),
        max_header_bytes: l.limits.max_header_bytes,
        stream_idle_timeout: l.limits.stream_idle_timeout.get(),
        serving: Arc::new(Serving {
            protocol: l.protocol,
            http1: listener::http1_builder(&l.limits),
            h2: listener::h2_settings(&l.limits),
            transparent: l.transparent,
            passthrough: l.passthrough,
            opaque_ports: l.opaque_ports.clone(),
            detect_timeout: l.limits.detect_timeout.get(),
            connection_idle_timeout: l.limits.connection_idle_timeout.get(),
            max_connections: l.limits.max_connections,
            connect_timeout: std::time::Duration::from_secs(1),
            tls,
        }),
        passthrough,
        admission,
    })
}
