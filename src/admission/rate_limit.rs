//! Rate limiting: a token bucket per key, kept as GCRA (the generic cell
//! rate algorithm, as governor and redis-cell do): one number per key, its
//! theoretical arrival time (TAT). A request at `now` passes when
//! `TAT - now <= (burst - 1) × interval`, and moves TAT on by one interval
//! (`1 / requests_per_second`); otherwise it waits `TAT - now - (burst - 1)
//! × interval`, the `Retry-After` of its 429.
//!
//! A key whose TAT has passed holds a full bucket, the same as a key never
//! seen, so dropping it loses nothing: that is how idle keys expire. The
//! keys sit in 16 shards, each a map behind its own lock, together capped
//! at `max_keys`. A shard that is full is swept of idle keys (at most once
//! a second, so a flood of new keys cannot make every request pay for a
//! sweep); when it is still full, a key it does not know shares one
//! overflow bucket with every other such key. Under a flood of made-up
//! keys the known keys keep their own buckets and the newcomers together
//! get one key's rate, and memory stays at `max_keys` entries.
//!
//! A key is one keyed 64-bit SipHash of the address or value (the process's
//! own random key, so nobody outside can aim two values at one bucket),
//! used as it is by the shard maps: one hash per check.
//!
//! The own GCRA instead of governor's keyed limiter: governor inserts every
//! key it is asked about (no cap, and its `retain_recent` sweeps the whole
//! map), and the 429's fields need the wait, which is one subtraction here.
//! The check costs one hash, one uncontended lock and one clock read
//! (`benches/micro.rs`, `rate_limit`).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName};
use std::collections::hash_map::RandomState;

use super::jwt::Verified;
use crate::config::{self, RateLimitKey};
use crate::error::RateLimitFields;

const SHARDS: usize = 16;
/// A full shard is swept of idle keys at most this often.
const FULL_SWEEP_EVERY: u64 = 1_000_000_000;
/// A shard that is not full is swept this often, to give back the memory of keys gone idle.
const IDLE_SWEEP_EVERY: u64 = 10_000_000_000;
/// What a key is made from, hashed in front of its bytes so an address,
/// a value and "missing" never share a bucket.
const TAG_IP: u8 = 0;
const TAG_VALUE: u8 = 1;
const TAG_MISSING: u8 = 2;

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

/// What a rate limit counts by, resolved.
pub enum KeySource {
    /// The TCP peer, or with `xff_trusted_hops: n` the address `n` entries
    /// from the right of `X-Forwarded-For`.
    ClientIp {
        xff_hops: Option<u32>,
    },
    Header(HeaderName),
    /// A kept claim of the verified token (its index in [`Verified`]).
    Claim(Option<usize>),
}

/// Token buckets of one `rate_limit` section.
pub struct RateLimiter {
    /// The settings these buckets were made for; a reload with the same keeps them.
    pub config: config::RateLimit,
    interval: u64,
    tolerance: u64,
    shards: Box<[Mutex<Shard>]>,
    shard_cap: usize,
    /// The bucket of the keys turned away by a full shard.
    overflow: AtomicU64,
    base: Instant,
    hasher: RandomState,
}

struct Shard {
    tats: TatMap,
    last_sweep: u64,
}

impl RateLimiter {
    pub fn new(c: &config::RateLimit) -> RateLimiter {
        let interval = (1e9 / c.requests_per_second)
            .round()
            .clamp(1.0, u64::MAX as f64) as u64;
        let burst = u64::from(c.burst().max(1));
        let shards = if c.max_keys >= 1024 { SHARDS } else { 1 };
        RateLimiter {
            config: c.clone(),
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
            hasher: RandomState::new(),
        }
    }

    /// The key source of these settings; `claim` finds a kept claim's index.
    pub fn key_source(&self, claim: impl Fn(&str) -> Option<usize>) -> KeySource {
        match RateLimitKey::parse(&self.config.key) {
            Ok(RateLimitKey::Header(h)) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => KeySource::Header(name),
                Err(_) => KeySource::Claim(None),
            },
            Ok(RateLimitKey::Claim(c)) => KeySource::Claim(claim(&c)),
            _ => KeySource::ClientIp {
                xff_hops: self.config.xff_trusted_hops,
            },
        }
    }

    /// A request's key.
    pub fn key(
        &self,
        source: &KeySource,
        client: IpAddr,
        headers: &HeaderMap,
        token: Option<&Verified>,
    ) -> u64 {
        let value = match source {
            KeySource::ClientIp { xff_hops: None } => return self.ip_key(client),
            KeySource::ClientIp {
                xff_hops: Some(hops),
            } => return self.ip_key(forwarded_client(headers, *hops).unwrap_or(client)),
            KeySource::Header(name) => headers.get(name),
            KeySource::Claim(index) => index.and_then(|i| token?.claim(i)),
        };
        match value {
            Some(v) => self.value_key(v.as_bytes()),
            // Requests without the header or claim share one bucket.
            None => self.hasher.hash_one(TAG_MISSING),
        }
    }

    /// The key of a client address.
    pub fn ip_key(&self, ip: IpAddr) -> u64 {
        let bits = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
            IpAddr::V6(v6) => v6.to_bits(),
        };
        self.hasher.hash_one((TAG_IP, bits))
    }

    /// The key of a header or claim value.
    pub fn value_key(&self, bytes: &[u8]) -> u64 {
        self.hasher.hash_one((TAG_VALUE, bytes))
    }

    /// Take a token for `key` now; `Err` is the wait until one is there.
    pub fn check(&self, key: u64) -> Result<(), Duration> {
        self.check_at(key, self.base.elapsed().as_nanos() as u64)
    }

    /// As [`check`](Self::check), at `now` nanoseconds after the limiter was made.
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
        let t = (*tat).max(now);
        let ahead = t - now;
        if ahead > self.tolerance {
            return Err(Duration::from_nanos(ahead - self.tolerance));
        }
        *tat = t.saturating_add(self.interval);
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

    /// The IETF fields of a 429 from these settings: the sustained rate as
    /// `q` requests per `w` seconds, nothing remaining.
    pub fn fields(&self) -> RateLimitFields {
        let rate = self.config.requests_per_second;
        let window = if rate >= 1.0 {
            1
        } else {
            (1.0 / rate).ceil() as u64
        };
        RateLimitFields {
            quota: ((rate * window as f64).floor() as u64).max(1),
            window_secs: window,
            remaining: 0,
        }
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

/// The address `hops` entries from the right of `X-Forwarded-For` (each
/// trusted proxy appends the address it saw), over every such header in
/// order; `None` when there are fewer entries or that one is no address.
pub fn forwarded_client(headers: &HeaderMap, hops: u32) -> Option<IpAddr> {
    let hops = usize::try_from(hops).ok()?.checked_sub(1)?;
    let mut entries: Vec<&str> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        entries.extend(v.to_str().ok()?.split(',').map(str::trim));
    }
    let entry = *entries.iter().rev().nth(hops)?;
    parse_forwarded_addr(entry)
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:5678`.
fn parse_forwarded_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')?.split(']').next()?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const SEC: u64 = 1_000_000_000;

    fn limiter(yaml: &str) -> RateLimiter {
        RateLimiter::new(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let rl = limiter("{ requests_per_second: 10, burst: 5 }");
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
        let rl = limiter("{ requests_per_second: 0.5 }");
        assert_eq!(rl.check_at(7, 0), Ok(()));
        assert_eq!(rl.check_at(7, 0), Err(Duration::from_secs(2)));
        assert_eq!(
            rl.fields(),
            RateLimitFields {
                quota: 1,
                window_secs: 2,
                remaining: 0
            }
        );
        let rl = limiter("{ requests_per_second: 100, burst: 200 }");
        assert_eq!(rl.fields().quota, 100);
        assert_eq!(rl.fields().window_secs, 1);
    }

    #[test]
    fn idle_keys_expire_and_the_cap_holds_under_a_flood() {
        let rl = limiter("{ requests_per_second: 1, burst: 1, max_keys: 100 }");
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
        let rl = limiter("{ requests_per_second: 100, burst: 1, max_keys: 1000 }");
        for k in 0..500u64 {
            rl.check_at(k, SEC).unwrap();
        }
        assert_eq!(rl.live_keys(), 500);
        rl.check_at(99_999, 20 * SEC).unwrap();
        assert_eq!(rl.live_keys(), 1);
    }

    #[test]
    fn keys_come_from_the_peer_a_trusted_hop_a_header_or_a_claim() {
        let rl = limiter("{ requests_per_second: 1, key: client_ip }");
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        let plain = rl.key_source(|_| None);
        assert_eq!(
            rl.key(&plain, peer, &h, None),
            rl.ip_key(peer),
            "the header is not trusted"
        );

        let rl = limiter("{ requests_per_second: 1, xff_trusted_hops: 2 }");
        let src = rl.key_source(|_| None);
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 1.2.3.4"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("10.1.1.1:80"));
        assert_eq!(
            rl.key(&src, peer, &h, None),
            rl.ip_key("1.2.3.4".parse().unwrap())
        );
        let mut short = HeaderMap::new();
        short.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        assert_eq!(
            rl.key(&src, peer, &short, None),
            rl.ip_key(peer),
            "fewer hops than trusted"
        );

        let rl = limiter("{ requests_per_second: 1, key: \"header:x-api-key\" }");
        let src = rl.key_source(|_| None);
        let mut a = HeaderMap::new();
        a.insert("x-api-key", HeaderValue::from_static("a"));
        let mut b = HeaderMap::new();
        b.insert("x-api-key", HeaderValue::from_static("b"));
        let ka = rl.key(&src, peer, &a, None);
        assert_ne!(ka, rl.key(&src, peer, &b, None));
        assert_eq!(ka, rl.key(&src, "10.9.9.9".parse().unwrap(), &a, None));
        let missing = rl.key(&src, peer, &HeaderMap::new(), None);
        assert_ne!(missing, ka);
        let elsewhere: IpAddr = "10.9.9.9".parse().unwrap();
        assert_eq!(missing, rl.key(&src, elsewhere, &HeaderMap::new(), None));
        assert_ne!(
            rl.value_key(b""),
            missing,
            "an empty value is not a missing one"
        );
    }

    #[test]
    fn forwarded_addresses() {
        for (text, want) in [
            ("1.2.3.4", "1.2.3.4"),
            ("1.2.3.4:5678", "1.2.3.4"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
        ] {
            assert_eq!(
                parse_forwarded_addr(text),
                Some(want.parse().unwrap()),
                "{text}"
            );
        }
        assert_eq!(parse_forwarded_addr("unknown"), None);
        assert_eq!(parse_forwarded_addr(""), None);
    }
}
