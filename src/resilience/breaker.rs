//! Circuit breaking: hard caps on what one cluster may take, so a slow
//! upstream cannot pile up requests and connections without bound. Over a
//! cap the request fails at once with 503 / UNAVAILABLE and flag `UO`,
//! counted in `skiff_overflow_total`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config;

/// The default of each cap, as in Envoy.
pub const DEFAULT_LIMIT: usize = 1024;

/// A cluster's caps and current counts.
#[derive(Debug)]
pub struct Limits {
    pub max_requests: usize,
    pub max_pending: usize,
    pub max_connections: usize,
    requests: AtomicUsize,
    pending: AtomicUsize,
    connections: AtomicUsize,
}

/// A slot taken under a cap, given back on drop.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<Limits>,
    which: Which,
}

#[derive(Debug, Clone, Copy)]
enum Which {
    Request,
    Pending,
    Connection,
}

impl Limits {
    pub fn new(c: Option<&config::CircuitBreaker>) -> Self {
        let get = |v: Option<u32>| v.map_or(DEFAULT_LIMIT, |v| v as usize);
        Limits {
            max_requests: get(c.and_then(|c| c.max_requests)),
            max_pending: get(c.and_then(|c| c.max_pending)),
            max_connections: get(c.and_then(|c| c.max_connections)),
            requests: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        }
    }

    /// Unlimited, for pools built without a cluster (tests, health checks).
    pub fn unlimited() -> Self {
        Limits {
            max_requests: usize::MAX,
            max_pending: usize::MAX,
            max_connections: usize::MAX,
            requests: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        }
    }

    fn take(self: &Arc<Self>, which: Which) -> Option<Permit> {
        let (count, max) = match which {
            Which::Request => (&self.requests, self.max_requests),
            Which::Pending => (&self.pending, self.max_pending),
            Which::Connection => (&self.connections, self.max_connections),
        };
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Permit {
            limits: self.clone(),
            which,
        })
    }

    /// An upstream request in flight (max_requests).
    pub fn request(self: &Arc<Self>) -> Option<Permit> {
        self.take(Which::Request)
    }

    /// A request waiting for a new connection (max_pending).
    pub fn pending(self: &Arc<Self>) -> Option<Permit> {
        self.take(Which::Pending)
    }

    /// An open upstream connection (max_connections).
    pub fn connection(self: &Arc<Self>) -> Option<Permit> {
        self.take(Which::Connection)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let count = match self.which {
            Which::Request => &self.limits.requests,
            Which::Pending => &self.limits.pending,
            Which::Connection => &self.limits.connections,
        };
        count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_permits_give_back() {
        let cfg = config::CircuitBreaker {
            max_requests: Some(2),
            max_pending: Some(1),
            max_connections: None,
        };
        let l = Arc::new(Limits::new(Some(&cfg)));
        let a = l.request().unwrap();
        let _b = l.request().unwrap();
        assert!(l.request().is_none(), "a third request overflows");
        drop(a);
        assert!(l.request().is_some(), "a finished request frees its slot");
        let _p = l.pending().unwrap();
        assert!(l.pending().is_none());
        assert_eq!(l.max_connections, DEFAULT_LIMIT);
    }
}
