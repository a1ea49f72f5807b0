//! Clusters: a named set of endpoints, how to reach them, how to choose one.
//!
//! The endpoint set sits behind an `ArcSwap`: discovery replaces it whole
//! while requests in flight keep the endpoints they picked. An endpoint that
//! stays across a change keeps its connection pool and load figures; one that
//! leaves is retired — its connections finish what they carry, then close.

pub mod balance;
pub mod discovery;
pub mod endpoint;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderName;
use serde::Serialize;

use crate::config::{self, LbPolicy};
use crate::metrics::{ClusterMetrics, Metrics};
use crate::upstream::PoolConfig;
use balance::Balancer;
pub use endpoint::{Endpoint, EwmaSettings, InFlight};

pub use crate::config::UpstreamProtocol;

struct EndpointSet {
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
    /// Set once discovery has answered (at once for static endpoints).
    discovered: AtomicBool,
}

impl Cluster {
    /// Build a cluster from its validated config. Static endpoints are set
    /// here; a `dns:` cluster starts empty until [`discovery`] answers.
    pub fn from_config(c: &config::Cluster, metrics: &Metrics) -> Self {
        let pool = PoolConfig {
            connect_timeout: c.connect_timeout.get(),
            idle_timeout: c.pool.idle_timeout.get(),
            max_idle: c.pool.max_idle_per_endpoint,
        };
        let ewma = c.peak_ewma.as_ref().map_or_else(EwmaSettings::default, |p| EwmaSettings {
            default_rtt: p.default_rtt.get(),
            decay: p.decay.get(),
        });
        let cluster = Cluster {
            name: c.name.as_str().into(),
            protocol: c.protocol,
            policy: c.lb,
            hash_header: c
                .hash_header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            metrics: metrics.cluster(&c.name),
            pool,
            ewma,
            endpoints: ArcSwap::from_pointee(EndpointSet {
                endpoints: Vec::new(),
                balancer: Balancer::new(c.lb, &[]),
            }),
            discovered: AtomicBool::new(false),
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
    /// address stays keep their pools; the others are retired.
    pub fn set_endpoints(&self, mut next: Vec<(SocketAddr, u32)>) {
        next.sort_unstable();
        next.dedup_by_key(|(a, _)| *a);
        let current = self.endpoints.load();
        let mut old: HashMap<SocketAddr, &Arc<Endpoint>> =
            current.endpoints.iter().map(|e| (e.addr, e)).collect();
        let endpoints: Vec<Arc<Endpoint>> = next
            .iter()
            .map(|(addr, weight)| match old.remove(addr) {
                Some(e) => {
                    e.set_weight(*weight);
                    e.clone()
                }
                None => Arc::new(Endpoint::new(*addr, *weight, self.pool.clone(), &self.ewma)),
            })
            .collect();
        let changed = !old.is_empty() || endpoints.len() != current.endpoints.len();
        for gone in old.values() {
            gone.pool.retire();
        }
        self.metrics.endpoints_healthy.set(endpoints.len() as i64);
        let balancer = Balancer::new(self.policy, &endpoints);
        self.endpoints.store(Arc::new(EndpointSet {
            endpoints,
            balancer,
        }));
        if changed {
            tracing::info!(
                cluster = %self.name,
                endpoints = ?next.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>(),
                "endpoints changed"
            );
        }
        self.discovered.store(true, Ordering::Release);
    }

    /// Discovery has answered at least once.
    pub fn is_discovered(&self) -> bool {
        self.discovered.load(Ordering::Acquire)
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.load().endpoints.len()
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
            endpoints: set
                .endpoints
                .iter()
                .map(|e| {
                    let (h2, h1_idle) = e.pool.connection_counts();
                    EndpointStatus {
                        address: e.addr.to_string(),
                        weight: e.weight(),
                        health: "healthy",
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
