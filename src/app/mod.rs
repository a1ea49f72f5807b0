//! Build the proxy from a [`Config`]: bind every socket first, then run.
//!
//! `build` does all the fallible work (binding listeners and the admin port,
//! building routers and clusters) and returns a [`Bound`] holding the real
//! addresses, so callers — `skiff run` and the tests alike — learn ports that
//! were given as `:0` before any traffic flows. `Bound::run` serves, reloads
//! the config when asked, and drains on shutdown.

mod reload;
pub(crate) mod snapshot;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::access_log::AccessLog;
use crate::admin::{self, AdminState};
use crate::config::{self, Config, Direction};
use crate::listener::{self, state::ListenerState};
use crate::metrics::Metrics;
use snapshot::Snapshot;

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

/// A listener socket bound but not yet accepting.
struct BoundListener {
    name: String,
    address: String,
    addr: SocketAddr,
    socket: TcpListener,
}

/// A listener accepting connections.
struct Running {
    name: String,
    address: String,
    addr: SocketAddr,
    direction: Direction,
    state: Arc<ArcSwap<ListenerState>>,
    stop: watch::Sender<bool>,
    open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// Everything bound and built, not yet serving.
pub struct Bound {
    admin_addr: SocketAddr,
    admin_socket: TcpListener,
    admin: Arc<AdminState>,
    metrics: Metrics,
    access_log: Option<Arc<AccessLog>>,
    snapshot: Snapshot,
    listeners: Vec<BoundListener>,
    reloads: reload::Trigger,
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

    /// Reload from `path` when it changes (watched; a ConfigMap's `..data`
    /// symlink swap counts) and on SIGHUP, whose handler is installed now.
    pub fn reload_from(mut self, path: impl Into<PathBuf>) -> Self {
        let path: PathBuf = path.into();
        self.reloads = reload::Trigger::new(Some(&path));
        self
    }

    /// Serve until `shutdown` completes (or `POST /shutdown`), then drain
    /// (see [`config::Drain`]) and return.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BuildError> {
        let Bound {
            admin_socket,
            admin,
            metrics,
            access_log,
            mut snapshot,
            listeners,
            mut reloads,
            ..
        } = self;
        let mut running: Vec<Running> = Vec::new();
        for (l, (cfg, state)) in listeners.into_iter().zip(&snapshot.listeners) {
            running.push(start_listener(l, cfg.direction, state.clone()));
        }
        let (admin_stop, admin_stop_rx) = watch::channel(false);
        let admin_task = tokio::spawn(admin::serve(
            admin_socket,
            admin.clone(),
            admin_stop_rx.clone(),
        ));
        let discovery_timeout = discovery_timeout(&snapshot.config);
        tokio::spawn(become_ready(
            admin.clone(),
            discovery_timeout,
            admin_stop_rx,
        ));
        tracing::info!("serving");

        tokio::pin!(shutdown);
        let mut drained = false;
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("shutdown signal received; draining");
                    break;
                }
                _ = admin.shutdown.notified() => {
                    tracing::info!("shutdown requested on the admin port; draining");
                    break;
                }
                _ = admin.drain.notified(), if !drained => {
                    tracing::info!("drain requested on the admin port");
                    drain(&admin, &snapshot.config.drain, &running).await;
                    drained = true;
                }
                Some(path) = reloads.next(), if !drained => {
                    reload::apply(&path, &mut snapshot, &mut running, &admin, &metrics, &access_log).await;
                }
            }
        }
        if !drained {
            drain(&admin, &snapshot.config.drain, &running).await;
        }
        let _ = admin_stop.send(true);
        let _ = admin_task.await;
        Ok(())
    }
}

fn start_listener(l: BoundListener, direction: Direction, state: Arc<ListenerState>) -> Running {
    let state = Arc::new(ArcSwap::new(state));
    let (stop, stop_rx) = watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(listener::serve(
        l.socket,
        state.clone(),
        stop_rx,
        open.clone(),
    ));
    Running {
        name: l.name,
        address: l.address,
        addr: l.addr,
        direction,
        state,
        stop,
        open,
        task,
    }
}

/// The stop sequence (docs/config.md, `drain`): readiness fails at once; inbound
/// listeners keep accepting for `delay`, then stop and ask their connections
/// to finish (GOAWAY / `Connection: close`); outbound listeners keep serving
/// the app until it closes its connections; all within `timeout`.
async fn drain(admin: &AdminState, d: &config::Drain, running: &[Running]) {
    admin.draining.store(true, Ordering::Release);
    let deadline = Instant::now() + d.timeout.get();
    let (inbound, outbound): (Vec<&Running>, Vec<&Running>) = running
        .iter()
        .partition(|r| r.direction == Direction::Inbound);
    if !inbound.is_empty() {
        tokio::time::sleep_until(deadline.min(Instant::now() + d.delay.get())).await;
        for r in &inbound {
            let _ = r.stop.send(true);
        }
        tracing::info!("inbound listeners stopped; finishing their requests");
        wait_closed(&inbound, deadline).await;
    }
    // The app may still be finishing its own work and calling out.
    wait_closed(&outbound, deadline).await;
    for r in &outbound {
        let _ = r.stop.send(true);
    }
    wait_closed(&outbound, deadline).await;
    let left: usize = running.iter().map(|r| r.open.load(Ordering::Acquire)).sum();
    if left > 0 {
        tracing::warn!(connections = left, timeout = %d.timeout, "drain timeout reached; closing what is still open");
    } else {
        tracing::info!("drained");
    }
    for r in running {
        let _ = r.stop.send(true);
        r.task.abort();
    }
}

/// Wait until the listeners have no open connection, or `deadline`.
async fn wait_closed(listeners: &[&Running], deadline: Instant) {
    while listeners.iter().any(|r| r.open.load(Ordering::Acquire) > 0) && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn discovery_timeout(c: &Config) -> Duration {
    c.runtime
        .discovery_timeout
        .map_or(DEFAULT_DISCOVERY_TIMEOUT, |d| d.get())
}

/// Report ready once every cluster has had its first discovery answer, or
/// after `timeout` with the clusters still empty named in the log.
async fn become_ready(admin: Arc<AdminState>, timeout: Duration, mut stop: watch::Receiver<bool>) {
    let deadline = Instant::now() + timeout;
    loop {
        let clusters = admin.clusters.load();
        let waiting: Vec<&str> = clusters
            .iter()
            .filter(|c| !c.is_discovered())
            .map(|c| &*c.name)
            .collect();
        if waiting.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
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
        listeners.push(bind_listener(l)?);
    }
    let admin_socket = bind(&config.admin.address, "admin")?;
    let admin_addr = local_addr(&admin_socket, &config.admin.address, "admin")?;
    tracing::info!(listener = "admin", address = %admin_addr, "admin bound");

    let snapshot = Snapshot::build(config, &metrics, &access_log, None)?;
    let admin = Arc::new(AdminState {
        registry: metrics.registry.clone(),
        config: ArcSwap::new(snapshot.config.clone()),
        clusters: ArcSwap::from_pointee(snapshot.cluster_list()),
        ready: Default::default(),
        jwks: ArcSwap::from_pointee(snapshot.jwks_list()),
        draining: Default::default(),
        shutdown: Notify::new(),
        drain: Notify::new(),
        certs: arc_swap::ArcSwapOption::new(snapshot.credentials()),
        needs_identity: snapshot.needs_identity().into(),
    });
    Ok(Bound {
        admin_addr,
        admin_socket,
        admin,
        metrics,
        access_log,
        snapshot,
        listeners,
        reloads: reload::Trigger::new(None),
    })
}

fn bind_listener(l: &config::Listener) -> Result<BoundListener, BuildError> {
    let what = format!("listener {}", l.name);
    let socket = bind(&l.address, &what)?;
    let addr = local_addr(&socket, &l.address, &what)?;
    tracing::info!(listener = %l.name, address = %addr, "listener bound");
    Ok(BoundListener {
        name: l.name.clone(),
        address: l.address.clone(),
        addr,
        socket,
    })
}

fn bind(address: &str, what: &str) -> Result<TcpListener, BuildError> {
    let addr: SocketAddr = address
        .parse()
        .map_err(|_| BuildError::Invalid(format!("{what}: address {address:?} is not ip:port")))?;
    listener::bind(addr).map_err(|source| BuildError::Bind {
        what: what.to_owned(),
        addr: address.to_owned(),
        source,
    })
}

fn local_addr(socket: &TcpListener, address: &str, what: &str) -> Result<SocketAddr, BuildError> {
    socket.local_addr().map_err(|source| BuildError::Bind {
        what: what.to_owned(),
        addr: address.to_owned(),
        source,
    })
}
