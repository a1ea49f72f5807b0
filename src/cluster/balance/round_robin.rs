//! Endpoint selection. Smooth weighted round robin, as nginx does it: every
//! endpoint gets its share in proportion to its weight, interleaved, never in
//! bursts to one endpoint.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Picks an index among endpoints of the given weights.
pub struct RoundRobin {
    weights: Vec<i64>,
    total: i64,
    state: State,
}

enum State {
    /// All weights equal: a counter is enough, with no lock.
    Uniform(AtomicUsize),
    Weighted(Mutex<Vec<i64>>),
}

impl RoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        let weights: Vec<i64> = weights.iter().map(|w| i64::from((*w).max(1))).collect();
        let total = weights.iter().sum();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let state = if uniform {
            // Start at a random place so many proxies don't all hit endpoint 0 first.
            State::Uniform(AtomicUsize::new(fastrand::usize(..weights.len().max(1))))
        } else {
            State::Weighted(Mutex::new(vec![0; weights.len()]))
        };
        RoundRobin {
            weights,
            total,
            state,
        }
    }

    /// The next endpoint's index, or `None` when there are none.
    pub fn pick(&self) -> Option<usize> {
        let n = self.weights.len();
        if n == 0 {
            return None;
        }
        match &self.state {
            State::Uniform(next) => Some(next.fetch_add(1, Ordering::Relaxed) % n),
            State::Weighted(current) => {
                let mut current = current.lock().ok()?;
                let mut best = 0;
                for i in 0..n {
                    current[i] += self.weights[i];
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= self.total;
                Some(best)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_cycles_through_all() {
        let rr = RoundRobin::new(&[1, 1, 1]);
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[rr.pick().unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn weighted_is_proportional_and_smooth() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|_| rr.pick().unwrap()).collect();
        // nginx's smooth sequence for 5:1:1 — never more than a run of 3 of the heavy one
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
        let mut counts = [0; 3];
        for _ in 0..700 {
            counts[rr.pick().unwrap()] += 1;
        }
        assert_eq!(counts, [500, 100, 100]);
    }

    #[test]
    fn empty_set_picks_nothing() {
        assert_eq!(RoundRobin::new(&[]).pick(), None);
    }
}
