//! Whether a downstream connection is in use: requests in flight on it and
//! when the last one ended, so an idle HTTP/2 connection can be closed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// One connection's activity.
pub struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `start` when the connection last became idle.
    idle_since_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    /// A request arrived; it counts until the guard drops (its response stream ended).
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    /// Whether no request is in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// How long no request has been in flight; zero while one is.
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        self.start.elapsed().saturating_sub(since)
    }
}

/// A request in flight on a connection.
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = a.start.elapsed().as_millis() as u64;
        a.idle_since_ms.store(ms, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_request_end() {
        let a = Activity::new();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            a.idle_for(),
            Duration::from_secs(5),
            "idle since the connection opened"
        );
        let g = a.request();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            a.idle_for(),
            Duration::ZERO,
            "busy while a request is in flight"
        );
        drop(g);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(a.idle_for(), Duration::from_secs(3));
    }
}
