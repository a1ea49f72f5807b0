//! Clusters: a named set of endpoints, how to reach them, how to choose one.
//!
//! The endpoint set sits behind an `ArcSwap` so discovery can replace it
//! while requests in flight keep the endpoints they picked.

pub mod balance;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config;
use crate::metrics::{ClusterMetrics, Metrics};
use crate::upstream::{Pool, PoolConfig};
use balance::RoundRobin;

pub use crate::config::UpstreamProtocol;

/// One upstream address with its pool and live statistics.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub pool: Pool,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, weight: u32, pool: PoolConfig) -> Self {
        Endpoint {
            addr,
            weight,
            pool: Pool::new(addr, pool),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Count a request as in flight on this endpoint until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// A request in flight on an endpoint.
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

struct EndpointSet {
    endpoints: Vec<Arc<Endpoint>>,
    balancer: RoundRobin,
}

impl EndpointSet {
    fn new(endpoints: Vec<Arc<Endpoint>>) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        EndpointSet {
            balancer: RoundRobin::new(&weights),
            endpoints,
        }
    }
}

/// A named group of endpoints serving the same thing.
pub struct Cluster {
    pub name: Arc<str>,
    pub protocol: UpstreamProtocol,
    pub metrics: ClusterMetrics,
    endpoints: ArcSwap<EndpointSet>,
}

impl Cluster {
    /// Build a cluster from its validated config. Endpoint addresses were
    /// checked by validation; one that fails to parse here is skipped.
    pub fn from_config(c: &config::Cluster, metrics: &Metrics) -> Self {
        let pool = PoolConfig {
            connect_timeout: c.connect_timeout.get(),
            idle_timeout: c.pool.idle_timeout.get(),
            max_idle: c.pool.max_idle_per_endpoint,
        };
        let endpoints = c
            .endpoints
            .iter()
            .flatten()
            .filter_map(|e| {
                let addr = e.address().parse().ok()?;
                Some(Arc::new(Endpoint::new(addr, e.weight(), pool.clone())))
            })
            .collect();
        Cluster {
            name: c.name.as_str().into(),
            protocol: c.protocol,
            metrics: metrics.cluster(&c.name),
            endpoints: ArcSwap::from_pointee(EndpointSet::new(endpoints)),
        }
    }

    /// The next endpoint by the cluster's balancing policy.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        let set = self.endpoints.load();
        let i = set.balancer.pick()?;
        set.endpoints.get(i).cloned()
    }

    /// The `/clusters` view of this cluster.
    pub fn status(&self) -> ClusterStatus {
        let set = self.endpoints.load();
        ClusterStatus {
            name: self.name.to_string(),
            protocol: self.protocol,
            endpoints: set
                .endpoints
                .iter()
                .map(|e| {
                    let (h2, h1_idle) = e.pool.connection_counts();
                    EndpointStatus {
                        address: e.addr.to_string(),
                        weight: e.weight,
                        health: "healthy",
                        in_flight: e.in_flight.load(Ordering::Relaxed),
                        requests_total: e.requests.load(Ordering::Relaxed),
                        failures_total: e.failures.load(Ordering::Relaxed),
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
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Serialize)]
pub struct EndpointStatus {
    pub address: String,
    pub weight: u32,
    pub health: &'static str,
    pub in_flight: usize,
    pub requests_total: u64,
    pub failures_total: u64,
    pub http2_connections: usize,
    pub http1_idle_connections: usize,
}
