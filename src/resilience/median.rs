//! The cluster's median latency, as the retry logic asks of it: "is there
//! still time for another try?" (a retry that cannot finish before the
//! deadline would only turn the real error into DEADLINE_EXCEEDED).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A streaming estimate of the median (frugal streaming: step 1% toward
/// each sample), with no buffer of samples. The step trades precision for
/// speed: after a latency change it takes about 70 responses to move the
/// estimate by a factor of two.
#[derive(Default)]
pub struct Median(AtomicU64);

impl Median {
    pub fn observe(&self, d: Duration) {
        let x = d.as_secs_f64();
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let m = f64::from_bits(bits);
                let next = if m == 0.0 {
                    x
                } else if x > m {
                    m * 1.01
                } else if x < m {
                    m / 1.01
                } else {
                    m
                };
                Some(next.to_bits())
            });
    }

    pub fn get(&self) -> Duration {
        Duration::from_secs_f64(f64::from_bits(self.0.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_the_first_sample_and_steps_one_percent() {
        let m = Median::default();
        assert_eq!(m.get(), Duration::ZERO);
        m.observe(Duration::from_millis(100));
        assert_eq!(m.get(), Duration::from_millis(100));
        m.observe(Duration::from_secs(10));
        let up = m.get().as_secs_f64();
        assert!((up - 0.101).abs() < 1e-9, "{up}");
        for _ in 0..1000 {
            m.observe(Duration::from_millis(20));
        }
        let settled = m.get().as_secs_f64();
        assert!((0.0198..=0.0202).contains(&settled), "{settled}");
    }
}
