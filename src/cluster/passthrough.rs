//! The passthrough cluster of a transparent listener: requests that match no
//! route go to the connection's original destination, with one pooled
//! endpoint per destination, made on demand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::{Cluster, Endpoint};
use crate::config;
use crate::metrics::{Metrics, RouteMetrics};

/// Destinations kept pooled at once; past it the oldest is retired.
const MAX_DESTINATIONS: usize = 1024;

pub struct Passthrough {
    pub cluster: Arc<Cluster>,
    pub metrics: Arc<RouteMetrics>,
    endpoints: Mutex<HashMap<SocketAddr, Arc<Endpoint>>>,
}

impl Passthrough {
    pub const CLUSTER: &'static str = "passthrough";

    pub fn new(listener: &str, metrics: &Metrics) -> Self {
        let cfg = config::Cluster::with_defaults(Self::CLUSTER);
        Passthrough {
            cluster: Arc::new(Cluster::plain(&cfg, metrics)),
            metrics: Arc::new(metrics.route(listener, Self::CLUSTER)),
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    /// The pooled endpoint for `dst`.
    pub fn endpoint(&self, dst: SocketAddr) -> Arc<Endpoint> {
        let Ok(mut map) = self.endpoints.lock() else {
            return self.cluster.new_endpoint(dst);
        };
        if let Some(e) = map.get(&dst) {
            return e.clone();
        }
        if map.len() >= MAX_DESTINATIONS {
            // Forget an idle destination; its pool closes once its requests end.
            let idle = map
                .iter()
                .find(|(_, e)| e.in_flight() == 0)
                .map(|(a, _)| *a);
            if let Some(e) = idle.and_then(|a| map.remove(&a)) {
                e.pool.retire();
            }
        }
        let e = self.cluster.new_endpoint(dst);
        map.insert(dst, e.clone());
        e
    }
}
