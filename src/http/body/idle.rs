//! The stream idle timeout of a response on its way to the client.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The stream idle timeout: fires when neither the response (frames out)
/// nor the request (bytes in) moved for `timeout`. Activity only records
/// the time; the timer is re-armed when it fires, not on every frame.
pub struct IdleTimer {
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    last_activity: Instant,
    request_bytes: Arc<AtomicU64>,
    seen_request_bytes: u64,
}

impl IdleTimer {
    pub fn new(timeout: Duration, request_bytes: Arc<AtomicU64>) -> Self {
        let now = Instant::now();
        IdleTimer {
            timeout,
            sleep: Box::pin(tokio::time::sleep_until(now + timeout)),
            last_activity: now,
            seen_request_bytes: request_bytes.load(Ordering::Relaxed),
            request_bytes,
        }
    }

    pub(super) fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    /// True once nothing has moved for the whole timeout.
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = Instant::now();
            let bytes = self.request_bytes.load(Ordering::Relaxed);
            if bytes != self.seen_request_bytes {
                self.seen_request_bytes = bytes;
                self.last_activity = now;
            }
            let until = self.last_activity + self.timeout;
            if until <= now {
                return true;
            }
            self.sleep.as_mut().reset(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expired(t: &mut IdleTimer) -> bool {
        let waker = std::task::Waker::noop();
        t.poll_expired(&mut Context::from_waker(waker))
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timer_fires_only_when_nothing_moves() {
        let bytes = Arc::new(AtomicU64::new(0));
        let mut t = IdleTimer::new(Duration::from_secs(10), bytes.clone());
        tokio::time::advance(Duration::from_secs(6)).await;
        t.touch(); // a response frame
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!expired(&mut t), "a frame 6 s ago keeps the stream alive");
        tokio::time::advance(Duration::from_secs(3)).await;
        bytes.store(100, Ordering::Relaxed); // the client sent something
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!expired(&mut t), "request bytes count as activity");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(expired(&mut t), "ten quiet seconds end it");
    }
}
