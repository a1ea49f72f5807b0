//! Build the proxy from a [`Config`]: bind every socket first, then run.
//!
//! `build` does all the fallible work (binding listeners and the admin port,
//! building routers and clusters) and returns a [`Bound`] holding the real
//! addresses, so callers — `skiff run` and the tests alike — learn ports that
//! were given as `:0` before any traffic flows.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::access_log::AccessLog;
use crate::admin::{self, AdminState};
use crate::cluster::discovery::{self, dns::DnsResolver};
use crate::cluster::Cluster;
use crate::config::{Config, ListenerLimits, ListenerProtocol};
use crate::listener;
use crate::metrics::Metrics;
use crate::proxy::{ListenerState, Target};
use crate::resilience::health::{self, HealthCheck};
use crate::router::Router;

/// How long in-flight requests may take after a shutdown signal, unless configured.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `/ready` waits for every cluster's first discovery answer, unless configured.
pub const DEFAULT_DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the proxy could not be built from a validated config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot bind {what} on {addr}")]
    Bind {
        what: String,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the access log {path}")]
    AccessLog {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

struct BoundListener {
    name: String,
    addr: SocketAddr,
    socket: TcpListener,
    state: Arc<ListenerState>,
    limits: ListenerLimits,
    protocol: ListenerProtocol,
}

/// Everything bound and built, not yet serving.
pub struct Bound {
    admin_addr: SocketAddr,
    admin_socket: TcpListener,
    admin: Arc<AdminState>,
    listeners: Vec<BoundListener>,
    drain_timeout: Duration,
    discovery_timeout: Duration,
    /// Clusters whose endpoints come from DNS, with their config and the shared resolver.
    discovered: Vec<(Arc<Cluster>, crate::config::Cluster)>,
    resolver: Option<Arc<DnsResolver>>,
    health_checks: Vec<(Arc<Cluster>, HealthCheck)>,
}

impl Bound {
    /// The admin server's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The bound address of the listener called `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.addr)
    }

    /// Every listener's name and bound address, in config order.
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .map(|l| (l.name.clone(), l.addr))
            .collect()
    }

    /// Serve until `shutdown` completes (or `POST /shutdown`), then stop
    /// accepting, let in-flight requests finish (bounded by
    /// `runtime.drain_timeout`) and return.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BuildError> {
        let (drain_tx, drain_rx) = watch::channel(false);
        for l in self.listeners {
            let builder = listener::http_builder(&l.limits, l.protocol);
            tokio::spawn(listener::serve(
                l.socket,
                l.state,
                builder,
                drain_rx.clone(),
            ));
        }
        let (admin_stop, admin_stop_rx) = watch::channel(false);
        if let Some(resolver) = &self.resolver {
            for (cluster, cfg) in &self.discovered {
                discovery::start(cluster.clone(), cfg, resolver, admin_stop_rx.clone());
            }
        }
        for (cluster, hc) in &self.health_checks {
            tokio::spawn(health::run(
                cluster.clone(),
                hc.clone(),
                admin_stop_rx.clone(),
            ));
        }
        let admin_task = tokio::spawn(admin::serve(
            self.admin_socket,
            self.admin.clone(),
            admin_stop_rx.clone(),
        ));
        tokio::spawn(become_ready(
            self.admin.clone(),
            self.discovery_timeout,
            admin_stop_rx,
        ));
        tracing::info!("serving");

        tokio::select! {
            _ = shutdown => tracing::info!("shutdown signal received; draining"),
            _ = self.admin.shutdown.notified() => tracing::info!("shutdown requested on the admin port; draining"),
        }
        self.admin.draining.store(true, Ordering::Release);
        let _ = drain_tx.send(true);
        drop(drain_rx);
        // Every accept loop and connection holds a receiver; all gone = drained.
        if tokio::time::timeout(self.drain_timeout, drain_tx.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                timeout = ?self.drain_timeout,
                "drain timeout reached; closing the connections still open"
            );
        } else {
            tracing::info!("drained");
        }
        let _ = admin_stop.send(true);
        let _ = admin_task.await;
        Ok(())
    }
}

/// Report ready once every cluster has had its first discovery answer, or
/// after `timeout` with the clusters still empty named in the log.
async fn become_ready(admin: Arc<AdminState>, timeout: Duration, mut stop: watch::Receiver<bool>) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let waiting: Vec<&str> = admin
            .clusters
            .iter()
            .filter(|c| !c.is_discovered())
            .map(|c| &*c.name)
            .collect();
        if waiting.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                clusters = ?waiting,
                ?timeout,
                "no discovery answer yet for these clusters; reporting ready with them empty"
            );
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(25)) => {}
            _ = stop.changed() => return,
        }
    }
    if !*stop.borrow() {
        admin.ready.store(true, Ordering::Release);
        tracing::info!("ready");
    }
}

/// Bind every socket and build the runtime state for a validated `config`.
pub async fn build(config: Config) -> Result<Bound, BuildError> {
    let metrics = Metrics::new().map_err(|e| BuildError::Invalid(format!("metrics: {e}")))?;

    let clusters: HashMap<String, Arc<Cluster>> = config
        .clusters
        .iter()
        .map(|c| (c.name.clone(), Arc::new(Cluster::from_config(c, &metrics))))
        .collect();

    let discovered: Vec<(Arc<Cluster>, crate::config::Cluster)> = config
        .clusters
        .iter()
        .filter(|c| c.dns.is_some())
        .filter_map(|c| Some((clusters.get(&c.name)?.clone(), c.clone())))
        .collect();
    let resolver = if discovered.is_empty() {
        None
    } else {
        Some(Arc::new(
            DnsResolver::new(config.resolver.as_ref()).map_err(BuildError::Invalid)?,
        ))
    };

    let health_checks: Vec<(Arc<Cluster>, HealthCheck)> = config
        .clusters
        .iter()
        .filter_map(|c| {
            let hc = c.health_check.as_ref()?;
            Some((clusters.get(&c.name)?.clone(), HealthCheck::from_config(hc)))
        })
        .collect();

    let access_log = match &config.access_log {
        Some(cfg) if cfg.enabled => Some(Arc::new(AccessLog::open(cfg).map_err(|source| {
            BuildError::AccessLog {
                path: cfg.path.clone(),
                source,
            }
        })?)),
        _ => None,
    };

    let mut listeners = Vec::new();
    for l in &config.listeners {
        let mut per_cluster: HashMap<String, Target> = HashMap::new();
        let router = Router::build(l, |name| {
            if let Some(t) = per_cluster.get(name) {
                return Some(t.clone());
            }
            let cluster = clusters.get(name)?.clone();
            let t = Target {
                metrics: Arc::new(metrics.route(&l.name, name)),
                cluster,
            };
            per_cluster.insert(name.to_owned(), t.clone());
            Some(t)
        })
        .map_err(|e| BuildError::Invalid(format!("listener {}: {e}", l.name)))?;
        let addr: SocketAddr = parse_addr(&l.address, &l.name)?;
        let socket = listener::bind(addr).map_err(|source| BuildError::Bind {
            what: format!("listener {}", l.name),
            addr: l.address.clone(),
            source,
        })?;
        let addr = socket.local_addr().map_err(|source| BuildError::Bind {
            what: format!("listener {}", l.name),
            addr: l.address.clone(),
            source,
        })?;
        tracing::info!(listener = %l.name, address = %addr, "listener bound");
        let state = Arc::new(ListenerState {
            name: l.name.as_str().into(),
            router,
            metrics: metrics.listener(&l.name),
            unrouted: Arc::new(metrics.route(&l.name, "")),
            access_log: access_log.clone(),
            max_header_bytes: l.limits.max_header_bytes,
            stream_idle_timeout: l.limits.stream_idle_timeout.get(),
        });
        listeners.push(BoundListener {
            name: l.name.clone(),
            addr,
            socket,
            state,
            limits: l.limits.clone(),
            protocol: l.protocol,
        });
    }

    let admin_addr = parse_addr(&config.admin.address, "admin")?;
    let admin_socket = listener::bind(admin_addr).map_err(|source| BuildError::Bind {
        what: "admin".into(),
        addr: config.admin.address.clone(),
        source,
    })?;
    let admin_addr = admin_socket
        .local_addr()
        .map_err(|source| BuildError::Bind {
            what: "admin".into(),
            addr: config.admin.address.clone(),
            source,
        })?;
    tracing::info!(listener = "admin", address = %admin_addr, "admin bound");

    let mut cluster_list: Vec<Arc<Cluster>> = clusters.into_values().collect();
    cluster_list.sort_by(|a, b| a.name.cmp(&b.name));
    let drain_timeout = config
        .runtime
        .drain_timeout
        .map_or(DEFAULT_DRAIN_TIMEOUT, |d| d.get());
    let discovery_timeout = config
        .runtime
        .discovery_timeout
        .map_or(DEFAULT_DISCOVERY_TIMEOUT, |d| d.get());
    let admin = Arc::new(AdminState {
        registry: metrics.registry.clone(),
        config: Arc::new(config),
        clusters: cluster_list,
        ready: Default::default(),
        draining: Default::default(),
        shutdown: Notify::new(),
    });
    Ok(Bound {
        admin_addr,
        admin_socket,
        admin,
        listeners,
        drain_timeout,
        discovery_timeout,
        discovered,
        resolver,
        health_checks,
    })
}

fn parse_addr(s: &str, what: &str) -> Result<SocketAddr, BuildError> {
    s.parse()
        .map_err(|_| BuildError::Invalid(format!("{what}: address {s:?} is not ip:port")))
}
