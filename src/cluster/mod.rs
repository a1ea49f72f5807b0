//! Clusters: a named set of endpoints, how to reach them, how to choose one.
//!
//! The endpoint set sits behind an `ArcSwap`: discovery replaces it whole
//! while requests in flight keep the endpoints they picked. An endpoint that
//! stays across a change keeps its connection pool and load figures; one that
//! leaves is retired — its connections finish what they carry, then close.

pub mod balance;
pub mod discovery;
pub mod endpoint;
pub mod passthrough;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::HeaderName;
use serde::Serialize;

use crate::config::{self, LbPolicy};
use crate::identity::CredentialStore;
use crate::metrics::{ClusterMetrics, Metrics};
use crate::resilience::breaker::Limits;
use crate::resilience::median::Median;
use crate::resilience::outlier::OutlierDetection;
use crate::upstream::{Connector, PoolConfig};
use balance::Balancer;
pub use endpoint::{Endpoint, EwmaSettings, InFlight};

pub use crate::config::UpstreamProtocol;

struct EndpointSet {
    /// Every endpoint discovery knows.
    all: Vec<Arc<Endpoint>>,
    /// What the balancer picks from: healthy and not ejected, or all of
    /// them in panic mode.
    endpoints: Vec<Arc<Endpoint>>,
    balancer: Balancer,
}

/// A named group of endpoints serving the same thing.
pub struct Cluster {
    pub name: Arc<str>,
    pub protocol: UpstreamProtocol,
    pub policy: LbPolicy,
    /// ring_hash: the request header whose value is hashed.
    pub hash_header: Option<HeaderName>,
    pub metrics: ClusterMetrics,
    pool: PoolConfig,
    ewma: EwmaSettings,
    endpoints: ArcSwap<EndpointSet>,
    /// Serialises changes of the endpoint set (discovery, health, ejection).
    writer: Mutex<()>,
    /// Set once discovery has answered (at once for static endpoints).
    discovered: AtomicBool,
    /// Circuit-breaker caps.
    pub limits: Arc<Limits>,
    outlier: Option<OutlierDetection>,
    panic_threshold: u32,
    /// Median latency of the cluster's responses.
    pub median_latency: Median,
    panicking: AtomicBool,
}

impl Cluster {
    /// Build a cluster from its validated config. Static endpoints are set
    /// here; a `dns:` cluster starts empty until [`discovery`] answers.
    /// A cluster whose connections follow its `tls` (mesh needs this
    /// workload's credential store); an error says why its TLS cannot be used.
    pub fn from_config(
        c: &config::Cluster,
        metrics: &Metrics,
        mesh: Option<&Arc<CredentialStore>>,
    ) -> Result<Self, String> {
        let connector = crate::tls::connector::for_cluster(c, mesh, metrics)?;
        // Mesh mTLS offers only h2 (ALPN), so the pool speaks HTTP/2 on it
        // whatever the downstream request spoke.
        let mesh_tls = c
            .tls
            .as_ref()
            .is_some_and(|t| t.mode == config::ClusterTlsMode::Mesh);
        let protocol = if mesh_tls {
            config::UpstreamProtocol::Http2
        } else {
            c.protocol
        };
        Ok(Cluster::with_connector(c, metrics, connector, protocol))
    }

    /// A cluster on plain TCP, whatever its `tls` says.
    pub fn plain(c: &config::Cluster, metrics: &Metrics) -> Self {
        Cluster::with_connector(c, metrics, Connector::tcp(), c.protocol)
    }

    fn with_connector(
        c: &config::Cluster,
        metrics: &Metrics,
        connector: Connector,
        protocol: config::UpstreamProtocol,
    ) -> Self {
        let limits = Arc::new(Limits::new(c.circuit_breaker.as_ref()));
        let pool = PoolConfig {
            connect_timeout: c.connect_timeout.get(),
            idle_timeout: c.pool.idle_timeout.get(),
            max_idle: c.pool.max_idle_per_endpoint,
            limits: limits.clone(),
            connector,
        };
        let ewma = c
            .peak_ewma
            .as_ref()
            .map_or_else(EwmaSettings::default, |p| EwmaSettings {
                default_rtt: p.default_rtt.get(),
                decay: p.decay.get(),
            });
        let cluster = Cluster {
            name: c.name.as_str().into(),
            protocol,
            policy: c.lb,
            hash_header: c
                .hash_header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            metrics: metrics.cluster(&c.name),
            pool,
            ewma,
            endpoints: ArcSwap::from_pointee(EndpointSet {
                all: Vec::new(),
                endpoints: Vec::new(),
                balancer: Balancer::new(c.lb, &[]),
            }),
            writer: Mutex::new(()),
            discovered: AtomicBool::new(false),
            limits,
            outlier: c
                .outlier_detection
                .as_ref()
                .map(OutlierDetection::from_config),
            panic_threshold: c.panic_threshold.unwrap_or(50).min(100),
            median_latency: Median::default(),
            panicking: AtomicBool::new(false),
        };
        if let Some(list) = &c.endpoints {
            // Addresses were checked by validation; one that fails here is skipped.
            let set = list
                .iter()
                .filter_map(|e| Some((e.address().parse().ok()?, e.weight())))
                .collect();
            cluster.set_endpoints(set);
        }
        cluster
    }

    /// The endpoint for a request, by the cluster's balancing policy.
    pub fn pick(&self, headers: &http::HeaderMap) -> Option<Arc<Endpoint>> {
        let set = self.endpoints.load();
        let hash = self
            .hash_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .map(|v| balance::hash_key(v.as_bytes()));
        let i = set.balancer.pick(&set.endpoints, hash)?;
        set.endpoints.get(i).cloned()
    }

    /// Replace the endpoint set (from discovery or config). Endpoints whose
    /// address stays keep their pools, health and load; the others are retired.
    pub fn set_endpoints(&self, mut next: Vec<(SocketAddr, u32)>) {
        next.sort_unstable();
        next.dedup_by_key(|(a, _)| *a);
        let _w = self.writer.lock();
        let current = self.endpoints.load();
        let unchanged = self.is_discovered()
            && current.all.len() == next.len()
            && current
                .all
                .iter()
                .zip(&next)
                .all(|(e, (a, w))| e.addr == *a && e.weight() == (*w).max(1));
        if unchanged {
            // The same answer again: keep the balancer's state (smooth
            // round robin's position, the hash ring) as it is.
            return;
        }
        let mut old: HashMap<SocketAddr, &Arc<Endpoint>> =
            current.all.iter().map(|e| (e.addr, e)).collect();
        let all: Vec<Arc<Endpoint>> = next
            .iter()
            .map(|(addr, weight)| match old.remove(addr) {
                Some(e) => {
                    e.set_weight(*weight);
                    e.clone()
                }
                None => Arc::new(Endpoint::new(*addr, *weight, self.pool.clone(), &self.ewma)),
            })
            .collect();
        let changed = !old.is_empty() || all.len() != current.all.len();
        for gone in old.values() {
            gone.pool.retire();
        }
        self.publish(all);
        if changed {
            tracing::info!(
                cluster = %self.name,
                endpoints = ?next.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>(),
                "endpoints changed"
            );
        }
        self.discovered.store(true, Ordering::Release);
    }

    /// Rebuild what the balancer picks from after a health or ejection change.
    pub fn refresh_availability(&self) {
        let _w = self.writer.lock();
        let all = self.endpoints.load().all.clone();
        self.publish(all);
    }

    /// Store a new set over `all` (the writer lock is held): the available
    /// endpoints, or all of them when too few are available (panic mode).
    fn publish(&self, all: Vec<Arc<Endpoint>>) {
        let available: Vec<Arc<Endpoint>> =
            all.iter().filter(|e| e.is_available()).cloned().collect();
        let panic =
            !all.is_empty() && available.len() * 100 < all.len() * self.panic_threshold as usize;
        if panic != self.panicking.swap(panic, Ordering::AcqRel) {
            if panic {
                tracing::warn!(
                    cluster = %self.name,
                    available = available.len(),
                    total = all.len(),
                    "too few healthy endpoints: balancing over all of them (panic mode)"
                );
            } else {
                tracing::info!(cluster = %self.name, "enough healthy endpoints again: panic mode over");
            }
        }
        let endpoints = if panic { all.clone() } else { available };
        let ejected = all.iter().filter(|e| e.is_ejected()).count();
        let unhealthy = all.iter().filter(|e| !e.is_healthy()).count();
        let healthy = all.iter().filter(|e| e.is_available()).count();
        self.metrics.endpoints_healthy.set(healthy as i64);
        self.metrics.endpoints_unhealthy.set(unhealthy as i64);
        self.metrics.endpoints_ejected.set(ejected as i64);
        let balancer = Balancer::new(self.policy, &endpoints);
        self.endpoints.store(Arc::new(EndpointSet {
            all,
            endpoints,
            balancer,
        }));
    }

    /// Every endpoint's address and weight (to seed a rebuilt cluster).
    pub fn endpoint_addrs(&self) -> Vec<(SocketAddr, u32)> {
        self.endpoints
            .load()
            .all
            .iter()
            .map(|e| (e.addr, e.weight()))
            .collect()
    }

    /// Every endpoint, available or not (for health checks and `/clusters`).
    pub fn all_endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints.load().all.clone()
    }

    /// Record how a try on `ep` went, for outlier detection: enough failures
    /// in a row eject it for a while.
    pub fn report(self: &Arc<Self>, ep: &Arc<Endpoint>, failure: bool) {
        let Some(od) = &self.outlier else { return };
        let run = ep.record_outcome(failure);
        if run < od.consecutive_failures {
            return;
        }
        let set = self.endpoints.load();
        let ejected = set.all.iter().filter(|e| e.is_ejected()).count();
        if !od.may_eject(ejected, set.all.len()) {
            return;
        }
        let Some(times) = ep.eject() else { return };
        let duration = od.ejection_time(times);
        self.metrics.outlier_ejections.inc();
        tracing::warn!(
            cluster = %self.name, endpoint = %ep.addr, failures = run, ?duration, times,
            "endpoint ejected after consecutive failures"
        );
        self.refresh_availability();
        let (cluster, ep) = (Arc::downgrade(self), Arc::downgrade(ep));
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            if let (Some(cluster), Some(ep)) = (cluster.upgrade(), ep.upgrade()) {
                ep.uneject();
                tracing::info!(cluster = %cluster.name, endpoint = %ep.addr, "endpoint back from ejection");
                cluster.refresh_availability();
            }
        });
    }

    /// The next endpoint by the policy, unless it was tried already: then
    /// one of the untried available endpoints, at random; if every one was
    /// tried, the policy's pick.
    pub fn pick_avoiding(
        &self,
        headers: &http::HeaderMap,
        tried: &[SocketAddr],
    ) -> Option<Arc<Endpoint>> {
        let pick = self.pick(headers)?;
        if !tried.contains(&pick.addr) {
            return Some(pick);
        }
        let set = self.endpoints.load();
        let untried: Vec<&Arc<Endpoint>> = set
            .endpoints
            .iter()
            .filter(|e| !tried.contains(&e.addr))
            .collect();
        if untried.is_empty() {
            return Some(pick);
        }
        untried
            .get(fastrand::usize(..untried.len()))
            .map(|e| (*e).clone())
    }

    /// An endpoint with this cluster's pool settings, outside its set
    /// (the passthrough cluster's destinations).
    pub fn new_endpoint(&self, addr: SocketAddr) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(addr, 1, self.pool.clone(), &self.ewma))
    }

    /// Discovery has answered at least once.
    pub fn is_discovered(&self) -> bool {
        self.discovered.load(Ordering::Acquire)
    }

    /// Endpoints known, available or not.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.load().all.len()
    }

    /// The `/clusters` view of this cluster.
    pub fn status(&self) -> ClusterStatus {
        let set = self.endpoints.load();
        let now = tokio::time::Instant::now();
        ClusterStatus {
            name: self.name.to_string(),
            protocol: self.protocol,
            lb: self.policy,
            discovered: self.is_discovered(),
            panic_mode: self.panicking.load(Ordering::Relaxed),
            requests_in_flight: self.limits.requests(),
            connections: self.limits.connections(),
            endpoints: set
                .all
                .iter()
                .map(|e| {
                    let (h2, h1_idle) = e.pool.connection_counts();
                    EndpointStatus {
                        address: e.addr.to_string(),
                        weight: e.weight(),
                        health: if e.is_ejected() {
                            "ejected"
                        } else if e.is_healthy() {
                            "healthy"
                        } else {
                            "unhealthy"
                        },
                        in_flight: e.in_flight(),
                        latency_ms: (e.latency.estimate(now) / 1e4).round() / 100.0,
                        requests_total: e.requests(),
                        failures_total: e.failures(),
                        http2_connections: h2,
                        http1_idle_connections: h1_idle,
                    }
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
pub struct ClusterStatus {
    pub name: String,
    pub protocol: UpstreamProtocol,
    pub lb: LbPolicy,
    /// False until discovery's first answer.
    pub discovered: bool,
    /// Balancing over all endpoints because too few are healthy.
    pub panic_mode: bool,
    pub requests_in_flight: usize,
    pub connections: usize,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Serialize)]
pub struct EndpointStatus {
    pub address: String,
    pub weight: u32,
    pub health: &'static str,
    pub in_flight: usize,
    /// The peak EWMA latency estimate, in milliseconds.
    pub latency_ms: f64,
    pub requests_total: u64,
    pub failures_total: u64,
    pub http2_connections: usize,
    pub http1_idle_connections: usize,
}
