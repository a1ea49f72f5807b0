//! One upstream address: its connection pool and the live load figures the
//! balancers read (requests in flight, a peak-sensitive latency estimate).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::upstream::{Pool, PoolConfig};

/// A peak-sensitive moving average of response latency, as in Finagle and
/// linkerd2-proxy: a slower sample replaces the estimate at once (peaks count
/// fully), faster ones pull it down gradually, and without samples it decays
/// toward zero so an endpoint nobody picks gets probed again.
pub struct PeakEwma {
    decay_ns: f64,
    state: Mutex<(f64, Instant)>,
}

impl PeakEwma {
    pub fn new(default_rtt: Duration, decay: Duration) -> Self {
        PeakEwma {
            decay_ns: (decay.as_nanos() as f64).max(1.0),
            state: Mutex::new((default_rtt.as_nanos() as f64, Instant::now())),
        }
    }

    /// The estimate in nanoseconds at `now`.
    pub fn estimate(&self, now: Instant) -> f64 {
        let Ok(s) = self.state.lock() else { return 0.0 };
        let elapsed = now.saturating_duration_since(s.1).as_nanos() as f64;
        s.0 * (-elapsed / self.decay_ns).exp()
    }

    pub fn observe(&self, rtt: Duration, now: Instant) {
        let Ok(mut s) = self.state.lock() else { return };
        let rtt = rtt.as_nanos() as f64;
        let elapsed = now.saturating_duration_since(s.1).as_nanos() as f64;
        let w = (-elapsed / self.decay_ns).exp();
        let decayed = s.0 * w;
        s.0 = if rtt > decayed {
            rtt
        } else {
            decayed + rtt * (1.0 - w)
        };
        s.1 = now;
    }
}

/// One upstream address with its pool and live statistics.
pub struct Endpoint {
    pub addr: SocketAddr,
    weight: AtomicU32,
    pub pool: Pool,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    pub latency: PeakEwma,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, weight: u32, pool: PoolConfig, ewma: &EwmaSettings) -> Self {
        Endpoint {
            addr,
            weight: AtomicU32::new(weight.max(1)),
            pool: Pool::new(addr, pool),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency: PeakEwma::new(ewma.default_rtt, ewma.decay),
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub(super) fn set_weight(&self, w: u32) {
        self.weight.store(w.max(1), Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
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

    /// Time from sending a request to its response head.
    pub fn record_latency(&self, rtt: Duration) {
        self.latency.observe(rtt, Instant::now());
    }
}

/// The peak EWMA parameters of a cluster.
#[derive(Clone, Copy, Debug)]
pub struct EwmaSettings {
    pub default_rtt: Duration,
    pub decay: Duration,
}

impl Default for EwmaSettings {
    fn default() -> Self {
        EwmaSettings {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_count_at_once_and_decay_over_time() {
        let t0 = Instant::now();
        let e = PeakEwma::new(Duration::from_millis(10), Duration::from_secs(10));
        e.observe(Duration::from_millis(100), t0);
        assert!((e.estimate(t0) - 100e6).abs() < 1.0, "a peak replaces the estimate");
        // A faster sample right away barely moves it...
        e.observe(Duration::from_millis(1), t0);
        assert!(e.estimate(t0) > 99e6);
        // ...and after one decay period without samples it has fallen to ~1/e.
        let later = t0 + Duration::from_secs(10);
        let est = e.estimate(later);
        assert!((est / 100e6 - (-1f64).exp()).abs() < 0.01, "{est}");
    }
}
