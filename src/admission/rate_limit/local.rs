//! The buckets of one `rate_limit` kept in this process: one TAT per key
//! (see [`gcra`]), in 16 shards, each a map behind its own lock, together
//! capped at `max_keys`.
//!
//! A key whose TAT has passed holds a full bucket, the same as a key never
//! seen, so dropping it loses nothing: that is how idle keys expire. A
//! shard that is full is swept of idle keys (at most once a second, so a
//! flood of new keys cannot make every request pay for a sweep); when it is
//! still full, a key it does not know shares one overflow bucket with every
//! other such key. Under a flood of made-up keys the known keys keep their
//! own buckets and the newcomers together get one key's rate, and memory
//! stays at `max_keys` entries.
//!
//! The own GCRA instead of governor's keyed limiter: governor inserts every
//! key it is asked about (no cap, and its `retain_recent` sweeps the whole
//! map), and the 429's fields need the wait, which is one subtraction here.
//! The check costs one hash, one uncontended lock and one clock read
//! (`benches/micro.rs`, `rate_limit`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config;

const SHARDS: usize = 16;
/// A full shard is swept of idle keys at most this often.
const FULL_SWEEP_EVERY: u64 = 1_000_000_000;
/// A shard that is not full is swept this often, to give back the memory of keys gone idle.
const IDLE_SWEEP_EVERY: u64 = 10_000_000_000;

/// GCRA, the generic cell rate algorithm (as governor and redis-cell keep
/// it): a key's state is one number, its theoretical arrival time (TAT). A
/// request at `now` passes when `TAT - now <= tolerance` (`(burst - 1) ×
/// interval`) and moves TAT on by one `interval` (`1 / requests_per_second`);
/// otherwise it waits `TAT - now - tolerance`. A TAT in the past counts as
/// `now` (a full bucket). `Ok` is the new TAT, `Err` the wait; all in one
/// unit (nanoseconds here, microseconds in the Redis script, which is this
/// function written in Lua).
pub fn gcra(tat: u64, now: u64, interval: u64, tolerance: u64) -> Result<u64, u64> {
    let t = tat.max(now);
    let ahead = t - now;
    if ahead > tolerance {
        return Err(ahead - tolerance);
    }
    Ok(t.saturating_add(interval))
}

/// A shard map's keys are keyed hashes already: used as they are.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type TatMap = HashMap<u64, u64, BuildHasherDefault<KeyHasher>>;

/// Token buckets of one `rate_limit` section, in this process.
pub struct LocalBuckets {
    interval: u64,
    tolerance: u64,
    shards: Box<[Mutex<Shard>]>,
    shard_cap: usize,
    /// The bucket of the keys turned away by a full shard.
    overflow: AtomicU64,
    base: Instant,
}

struct Shard {
    tats: TatMap,
    last_sweep: u64,
}

impl LocalBuckets {
    pub fn new(c: &config::RateLimit) -> LocalBuckets {
        let interval = (1e9 / c.requests_per_second)
            .round()
            .clamp(1.0, u64::MAX as f64) as u64;
        let burst = u64::from(c.burst().max(1));
        let shards = if c.max_keys >= 1024 { SHARDS } else { 1 };
        LocalBuckets {
            interval,
            tolerance: interval.saturating_mul(burst - 1),
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        tats: TatMap::default(),
                        last_sweep: 0,
                    })
                })
                .collect(),
            shard_cap: c.max_keys.div_ceil(shards).max(1),
            overflow: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    /// Take a token for `key` now; `Err` is the wait until one is there.
    pub fn check(&self, key: u64) -> Result<(), Duration> {
        self.check_at(key, self.base.elapsed().as_nanos() as u64)
    }

    /// As [`check`](Self::check), at `now` nanoseconds after the buckets were made.
    pub fn check_at(&self, key: u64, now: u64) -> Result<(), Duration> {
        let shard = &self.shards[shard_of(key, self.shards.len())];
        let Ok(mut s) = shard.lock() else {
            return Ok(());
        };
        if let Some(tat) = s.tats.get_mut(&key) {
            return self.take(tat, now);
        }
        let full = s.tats.len() >= self.shard_cap;
        let due = if full {
            FULL_SWEEP_EVERY
        } else {
            IDLE_SWEEP_EVERY
        };
        if now.saturating_sub(s.last_sweep) >= due {
            s.sweep(now);
        }
        if s.tats.len() >= self.shard_cap {
            drop(s);
            return self.take_overflow(now);
        }
        // A key not seen (or idle) has a full bucket: this request passes.
        let mut tat = now;
        let taken = self.take(&mut tat, now);
        s.tats.insert(key, tat);
        taken
    }

    fn take(&self, tat: &mut u64, now: u64) -> Result<(), Duration> {
        *tat = gcra(*tat, now, self.interval, self.tolerance).map_err(Duration::from_nanos)?;
        Ok(())
    }

    fn take_overflow(&self, now: u64) -> Result<(), Duration> {
        let mut cur = self.overflow.load(Ordering::Acquire);
        loop {
            let mut tat = cur;
            self.take(&mut tat, now)?;
            match self
                .overflow
                .compare_exchange_weak(cur, tat, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(seen) => cur = seen,
            }
        }
    }

    /// Keys tracked now (idle ones not yet swept included).
    pub fn live_keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.tats.len()))
            .sum()
    }
}

impl Shard {
    /// Drop the keys whose bucket is full again; give memory back when
    /// the map has shrunk well below what it holds room for.
    fn sweep(&mut self, now: u64) {
        self.tats.retain(|_, tat| *tat > now);
        if self.tats.capacity() > 4 * self.tats.len().max(64) {
            self.tats.shrink_to_fit();
        }
        self.last_sweep = now;
    }
}

/// The shard of a key: bits the maps use least (their index takes the low
/// bits, their tags the top seven).
fn shard_of(key: u64, shards: usize) -> usize {
    (key >> 40) as usize % shards
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn buckets(yaml: &str) -> LocalBuckets {
        LocalBuckets::new(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn gcra_arithmetic() {
        // interval 100, burst 3 (tolerance 200): three pass at once.
        let (i, tol) = (100, 200);
        let t1 = gcra(0, 1000, i, tol).unwrap();
        assert_eq!(t1, 1100, "a TAT in the past counts as now");
        let t2 = gcra(t1, 1000, i, tol).unwrap();
        let t3 = gcra(t2, 1000, i, tol).unwrap();
        assert_eq!(t3, 1300);
        assert_eq!(
            gcra(t3, 1000, i, tol),
            Err(100),
            "the fourth waits one interval"
        );
        assert_eq!(gcra(t3, 1040, i, tol), Err(60));
        assert_eq!(gcra(t3, 1100, i, tol), Ok(1400));
        // Idle for the whole burst: the bucket is full again.
        assert_eq!(gcra(t3, 5000, i, tol), Ok(5100));
        // Burst 1: no tolerance, one every interval.
        assert_eq!(gcra(1100, 1000, i, 0), Err(100));
        assert_eq!(gcra(u64::MAX, 0, 1, u64::MAX), Ok(u64::MAX), "saturates");
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let rl = buckets("{ requests_per_second: 10, burst: 5 }");
        for _ in 0..5 {
            assert_eq!(rl.check_at(1, SEC), Ok(()));
        }
        // The sixth waits one interval (100ms).
        assert_eq!(rl.check_at(1, SEC), Err(Duration::from_millis(100)));
        assert_eq!(
            rl.check_at(1, SEC + 40_000_000),
            Err(Duration::from_millis(60))
        );
        assert_eq!(rl.check_at(1, SEC + 100_000_000), Ok(()));
        assert!(rl.check_at(1, SEC + 100_000_000).is_err());
        // Another key has its own bucket.
        assert_eq!(rl.check_at(2, SEC), Ok(()));
        // After burst × interval idle, the bucket is full again.
        for _ in 0..5 {
            assert_eq!(rl.check_at(1, 3 * SEC), Ok(()));
        }
        assert!(rl.check_at(1, 3 * SEC).is_err());
    }

    #[test]
    fn fractional_rates_and_default_burst() {
        let rl = buckets("{ requests_per_second: 0.5 }");
        assert_eq!(rl.check_at(7, 0), Ok(()));
        assert_eq!(rl.check_at(7, 0), Err(Duration::from_secs(2)));
    }

    #[test]
    fn idle_keys_expire_and_the_cap_holds_under_a_flood() {
        let rl = buckets("{ requests_per_second: 1, burst: 1, max_keys: 100 }");
        // A flood of new keys within one second: 100 get buckets, the rest
        // share the overflow bucket (one passes, the others wait).
        let mut passed = 0;
        for k in 0..10_000u64 {
            passed += usize::from(rl.check_at(k, SEC).is_ok());
        }
        assert_eq!(rl.live_keys(), 100);
        assert_eq!(passed, 101);
        // A known key keeps its own bucket meanwhile.
        assert!(rl.check_at(5, SEC).is_err(), "its token is spent");
        assert!(rl.check_at(5, 2 * SEC).is_ok(), "and it comes back");
        // Seconds later every bucket is full again: new keys are tracked.
        assert!(rl.check_at(50_000, 10 * SEC).is_ok());
        assert!(rl.live_keys() <= 2, "{}", rl.live_keys());
    }

    #[test]
    fn idle_keys_are_swept_while_the_map_is_not_full() {
        let rl = buckets("{ requests_per_second: 100, burst: 1, max_keys: 1000 }");
        for k in 0..500u64 {
            rl.check_at(k, SEC).unwrap();
        }
        assert_eq!(rl.live_keys(), 500);
        rl.check_at(99_999, 20 * SEC).unwrap();
        assert_eq!(rl.live_keys(), 1);
    }
}
