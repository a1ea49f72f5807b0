//! Consistent hashing on a ring (ketama-style): each endpoint owns points on
//! a 64-bit ring in proportion to its weight, and a request goes to the first
//! point at or after the hash of its key. When one of N endpoints leaves,
//! only the keys on its points move — about 1/N of them.
//!
//! The hash is fixed (FNV-1a with a final avalanche mix), not std's hasher,
//! so every proxy in the fleet maps a key to the same endpoint, across
//! versions too.

/// Points per unit of weight. An endpoint's points depend on its own address
/// and weight only, never on the rest of the set, or a change would move
/// keys between endpoints that stayed.
const POINTS_PER_WEIGHT: u64 = 160;
/// The ring's largest size; past it every endpoint's share is scaled down.
const MAX_RING: u64 = 1 << 20;

/// A stable 64-bit hash of `bytes`.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser spreads FNV's weak low bits over the word.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

pub struct Ring {
    /// (point, endpoint index), sorted by point.
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// `keys` name the endpoints (their addresses) so that an endpoint keeps
    /// its points however the set around it changes.
    pub fn new(keys: &[String], weights: &[u32]) -> Self {
        let weight = |i: usize| u64::from(weights.get(i).copied().unwrap_or(1).max(1));
        let total: u64 = (0..keys.len()).map(|i| weight(i) * POINTS_PER_WEIGHT).sum();
        let scale = if total > MAX_RING {
            MAX_RING as f64 / total as f64
        } else {
            1.0
        };
        let mut points = Vec::with_capacity(total.min(MAX_RING) as usize + keys.len());
        for (i, key) in keys.iter().enumerate() {
            let n = ((weight(i) * POINTS_PER_WEIGHT) as f64 * scale).max(1.0) as u64;
            let mut buf = Vec::with_capacity(key.len() + 12);
            for p in 0..n {
                buf.clear();
                buf.extend_from_slice(key.as_bytes());
                buf.push(b'_');
                buf.extend_from_slice(p.to_string().as_bytes());
                points.push((hash_key(&buf), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let i = self.points.partition_point(|(p, _)| *p < hash);
        let (_, idx) = self.points.get(i).or_else(|| self.points.first())?;
        Some(*idx as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(addrs: &[&str]) -> (Ring, Vec<String>) {
        let keys: Vec<String> = addrs.iter().map(|s| s.to_string()).collect();
        (Ring::new(&keys, &vec![1; keys.len()]), keys)
    }

    #[test]
    fn same_key_same_endpoint_and_even_spread() {
        let (r, keys) = ring(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]);
        let mut counts = vec![0u32; keys.len()];
        for u in 0..20_000 {
            let h = hash_key(format!("user-{u}").as_bytes());
            let a = r.pick(h).unwrap();
            assert_eq!(r.pick(h), Some(a));
            counts[a] += 1;
        }
        for c in &counts {
            assert!((3_500..6_500).contains(c), "uneven: {counts:?}");
        }
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        let all = [
            "10.0.0.1:80",
            "10.0.0.2:80",
            "10.0.0.3:80",
            "10.0.0.4:80",
            "10.0.0.5:80",
        ];
        let (before, kb) = ring(&all);
        let (after, ka) = ring(&all[..4]); // 10.0.0.5 leaves
        let mut moved = 0;
        let n = 20_000;
        for u in 0..n {
            let h = hash_key(format!("user-{u}").as_bytes());
            let b = &kb[before.pick(h).unwrap()];
            let a = &ka[after.pick(h).unwrap()];
            if a != b {
                moved += 1;
                assert_eq!(b, "10.0.0.5:80", "only the leaving endpoint's keys move");
            }
        }
        // About 1/5 of the keys were on the leaving endpoint.
        assert!(
            (n / 5 - 1_000..n / 5 + 1_000).contains(&moved),
            "moved {moved}"
        );
    }

    #[test]
    fn weights_give_more_points() {
        let keys = vec!["a:1".to_string(), "b:1".to_string()];
        let r = Ring::new(&keys, &[3, 1]);
        let a = (0..20_000)
            .filter(|u| r.pick(hash_key(format!("k{u}").as_bytes())) == Some(0))
            .count();
        assert!((13_500..16_500).contains(&a), "a got {a} of 20000");
    }

    const PINNED_EMPTY: u64 = 0xf52a_15e9_a9b5_e89b;
    const PINNED_USER_1: u64 = 0xc499_b5f8_a721_df58;

    #[test]
    fn hash_is_stable() {
        // Pinned values: changing the hash would reshuffle every fleet's keys.
        assert_eq!(hash_key(b""), PINNED_EMPTY);
        assert_eq!(hash_key(b"user-1"), PINNED_USER_1);
    }
}
