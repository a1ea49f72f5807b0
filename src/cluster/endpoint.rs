//! One upstream address: its connection pool and the live load figures the
//! balancers read (requests in flight, a peak-sensitive latency estimate).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
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
    /// Active health checking's verdict (true until a check says otherwise).
    healthy: AtomicBool,
    checks_passed: AtomicU32,
    checks_failed: AtomicU32,
    /// Outlier detection: out of balancing until un-ejected.
    ejected: AtomicBool,
    consecutive_failures: AtomicU32,
    times_ejected: AtomicU32,
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
            healthy: AtomicBool::new(true),
            checks_passed: AtomicU32::new(0),
            checks_failed: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            times_ejected: AtomicU32::new(0),
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

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// Whether the balancer may pick this endpoint (outside panic mode).
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    /// Record one health check; true when the verdict changed.
    pub fn record_check(&self, ok: bool, healthy_threshold: u32, unhealthy_threshold: u32) -> bool {
        if ok {
            self.checks_failed.store(0, Ordering::Relaxed);
            let n = self.checks_passed.fetch_add(1, Ordering::Relaxed) + 1;
            n >= healthy_threshold && !self.healthy.swap(true, Ordering::AcqRel)
        } else {
            self.checks_passed.store(0, Ordering::Relaxed);
            let n = self.checks_failed.fetch_add(1, Ordering::Relaxed) + 1;
            n >= unhealthy_threshold && self.healthy.swap(false, Ordering::AcqRel)
        }
    }

    /// Count a success or failure; returns the run of consecutive failures.
    pub(super) fn record_outcome(&self, failure: bool) -> u32 {
        if failure {
            self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.consecutive_failures.store(0, Ordering::Release);
            0
        }
    }

    /// Eject; returns how many times this endpoint has been ejected, or
    /// `None` if it already was.
    pub(super) fn eject(&self) -> Option<u32> {
        if self.ejected.swap(true, Ordering::AcqRel) {
            return None;
        }
        self.consecutive_failures.store(0, Ordering::Release);
        Some(self.times_ejected.fetch_add(1, Ordering::AcqRel) + 1)
    }

    pub(super) fn uneject(&self) {
        self.ejected.store(false, Ordering::Release);
    }

    /// Time from sending a request to its response head.
    pub fn record_latency(&self, rtt: Duration, now: Instant) {
        self.latency.observe(rtt, now);
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
        assert!(
            (e.estimate(t0) - 100e6).abs() < 1.0,
            "a peak replaces the estimate"
        );
        // A faster sample right away barely moves it...
        e.observe(Duration::from_millis(1), t0);
        assert!(e.estimate(t0) > 99e6);
        // ...and after one decay period without samples it has fallen to ~1/e.
        let later = t0 + Duration::from_secs(10);
        let est = e.estimate(later);
        assert!((est / 100e6 - (-1f64).exp()).abs() < 0.01, "{est}");
    }
}
