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
    /// The smooth sequence, computed once per endpoint set (its length is
    /// the sum of the weights): a pick is a counter and an index.
    Sequence { order: Vec<u32>, next: AtomicUsize },
    /// Weights too large to lay out: nginx's running computation, locked.
    Weighted(Mutex<Vec<i64>>),
}

/// Longest sequence laid out in advance (4 bytes an entry).
const MAX_SEQUENCE: i64 = 1 << 16;

/// One step of smooth weighted round robin over `current`.
fn smooth_step(weights: &[i64], total: i64, current: &mut [i64]) -> usize {
    let mut best = 0;
    for i in 0..weights.len() {
        current[i] += weights[i];
        if current[i] > current[best] {
            best = i;
        }
    }
    current[best] -= total;
    best
}

impl RoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        let weights: Vec<i64> = weights.iter().map(|w| i64::from((*w).max(1))).collect();
        let total = weights.iter().sum();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let state = if uniform {
            // Start at a random place so many proxies don't all hit endpoint 0 first.
            State::Uniform(AtomicUsize::new(fastrand::usize(..weights.len().max(1))))
        } else if total <= MAX_SEQUENCE {
            let mut current = vec![0; weights.len()];
            let order = (0..total)
                .map(|_| smooth_step(&weights, total, &mut current) as u32)
                .collect();
            State::Sequence {
                order,
                next: AtomicUsize::new(0),
            }
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
            State::Sequence { order, next } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % order.len().max(1);
                order.get(i).map(|&e| e as usize)
            }
            State::Weighted(current) => {
                let mut current = current.lock().ok()?;
                Some(smooth_step(&self.weights, self.total, &mut current))
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
    fn large_weights_fall_back_to_the_running_computation() {
        // A sum of weights too large to lay out: same spread, computed per pick.
        let rr = RoundRobin::new(&[60_000, 20_000]);
        assert!(matches!(rr.state, State::Weighted(_)));
        let mut counts = [0; 2];
        for _ in 0..80_000 {
            counts[rr.pick().unwrap()] += 1;
        }
        assert_eq!(counts, [60_000, 20_000]);
    }

    #[test]
    fn empty_set_picks_nothing() {
        assert_eq!(RoundRobin::new(&[]).pick(), None);
    }
}
