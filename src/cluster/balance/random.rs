//! Weighted random choice: a cumulative-weight table and a binary search,
//! O(log n) a pick and no shared state to contend on.

/// Picks indices at random in proportion to their weights.
pub struct WeightedRandom {
    /// Running totals of the weights; empty when there are no endpoints.
    cumulative: Vec<u64>,
    uniform: bool,
}

impl WeightedRandom {
    pub fn new(weights: &[u32]) -> Self {
        let mut total = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                total += u64::from((*w).max(1));
                total
            })
            .collect();
        WeightedRandom {
            cumulative,
            uniform: weights.windows(2).all(|w| w[0] == w[1]),
        }
    }

    pub fn len(&self) -> usize {
        self.cumulative.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cumulative.is_empty()
    }

    pub fn pick(&self) -> Option<usize> {
        let total = *self.cumulative.last()?;
        if self.uniform {
            return Some(fastrand::usize(..self.cumulative.len()));
        }
        let r = fastrand::u64(..total);
        // The first running total above r.
        Some(self.cumulative.partition_point(|&c| c <= r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_follows_weights() {
        fastrand::seed(7);
        let r = WeightedRandom::new(&[1, 2, 7]);
        let mut counts = [0u32; 3];
        for _ in 0..100_000 {
            counts[r.pick().unwrap()] += 1;
        }
        // Expected 10k / 20k / 70k; allow ±1.5% of the total.
        for (got, want) in counts.iter().zip([10_000, 20_000, 70_000]) {
            assert!((i64::from(*got) - want).abs() < 1_500, "{counts:?}");
        }
    }

    #[test]
    fn uniform_and_empty() {
        let r = WeightedRandom::new(&[3, 3]);
        let mut seen = [false; 2];
        for _ in 0..100 {
            seen[r.pick().unwrap()] = true;
        }
        assert_eq!(seen, [true, true]);
        assert_eq!(WeightedRandom::new(&[]).pick(), None);
    }
}
