//! Rate limiting (docs/config.md, `rate_limit`): a token bucket per key,
//! kept as GCRA ([`local::gcra`]: one number per key). Without `shared`
//! the buckets are this process's own ([`local`]); with `shared` each key
//! has one budget in Redis that every replica takes from ([`shared`]), and
//! when Redis does not answer within `timeout` the `fallback` decides (the
//! local buckets by default), so a request never waits on Redis for longer.
//!
//! A local key is one keyed 64-bit SipHash of the address or value (the
//! process's own random key, so nobody outside can aim two values at one
//! bucket), used as it is by the shard maps: one hash per check. A Redis
//! key must be the same in every replica, so it names the address, or a
//! SHA-256 of the value ([`shared::SharedBudget::redis_key`]).

pub mod local;
pub mod shared;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderName};

use super::jwt::Verified;
use crate::config::{self, RateLimitKey};
use crate::error::RateLimitFields;
use local::LocalBuckets;
use shared::SharedBudget;

/// What a key is made from, hashed in front of its bytes so an address,
/// a value and "missing" never share a bucket.
const TAG_IP: u8 = 0;
const TAG_VALUE: u8 = 1;
const TAG_MISSING: u8 = 2;

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

/// What one request is counted by, before it is hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMaterial<'a> {
    Ip(IpAddr),
    Value(&'a [u8]),
    /// No such header or claim: all such requests share one bucket.
    Missing,
}

/// What a check decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Over the limit: a token is there after this wait.
    Limited(Duration),
    /// `fallback: deny` while the shared budget's Redis does not answer.
    Unavailable,
}

impl From<Result<(), Duration>> for Verdict {
    fn from(r: Result<(), Duration>) -> Verdict {
        match r {
            Ok(()) => Verdict::Pass,
            Err(wait) => Verdict::Limited(wait),
        }
    }
}

/// The buckets of one `rate_limit` section: local, and with `shared` the
/// budget in Redis (the local buckets then serve `fallback: local`).
pub struct RateLimiter {
    /// The settings these buckets were made for; a reload with the same keeps them.
    pub config: config::RateLimit,
    local: LocalBuckets,
    shared: Option<SharedBudget>,
    hasher: RandomState,
}

impl RateLimiter {
    /// Buckets in this process only (`shared` is not looked at).
    pub fn new(c: &config::RateLimit) -> RateLimiter {
        RateLimiter {
            config: c.clone(),
            local: LocalBuckets::new(c),
            shared: None,
            hasher: RandomState::new(),
        }
    }

    /// Buckets whose budget is kept in Redis.
    pub fn with_shared(c: &config::RateLimit, shared: SharedBudget) -> RateLimiter {
        RateLimiter {
            shared: Some(shared),
            ..RateLimiter::new(c)
        }
    }

    /// The shared budget, with `shared`.
    pub fn shared(&self) -> Option<&SharedBudget> {
        self.shared.as_ref()
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

    /// What a request is counted by.
    pub fn material<'a>(
        &self,
        source: &KeySource,
        client: IpAddr,
        headers: &'a HeaderMap,
        token: Option<&'a Verified>,
    ) -> KeyMaterial<'a> {
        let value = match source {
            KeySource::ClientIp { xff_hops: None } => return KeyMaterial::Ip(client),
            KeySource::ClientIp {
                xff_hops: Some(hops),
            } => {
                return KeyMaterial::Ip(forwarded_client(headers, *hops).unwrap_or(client));
            }
            KeySource::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            KeySource::Claim(index) => index.and_then(|i| token?.claim(i)).map(|v| v.as_bytes()),
        };
        value.map_or(KeyMaterial::Missing, KeyMaterial::Value)
    }

    /// A request's local key.
    pub fn key(
        &self,
        source: &KeySource,
        client: IpAddr,
        headers: &HeaderMap,
        token: Option<&Verified>,
    ) -> u64 {
        self.local_key(self.material(source, client, headers, token))
    }

    /// The local key of `m`.
    pub fn local_key(&self, m: KeyMaterial<'_>) -> u64 {
        match m {
            KeyMaterial::Ip(ip) => self.ip_key(ip),
            KeyMaterial::Value(v) => self.value_key(v),
            KeyMaterial::Missing => self.hasher.hash_one(TAG_MISSING),
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

    /// Take a token for local `key` now; `Err` is the wait until one is there.
    pub fn check(&self, key: u64) -> Result<(), Duration> {
        self.local.check(key)
    }

    /// As [`check`](Self::check), at `now` nanoseconds after the limiter was made.
    pub fn check_at(&self, key: u64, now: u64) -> Result<(), Duration> {
        self.local.check_at(key, now)
    }

    /// Take a token for the request: from the shared budget with `shared`
    /// (the fallback deciding when Redis does not answer in time), else
    /// from the local bucket.
    pub async fn decide(
        &self,
        source: &KeySource,
        client: IpAddr,
        headers: &HeaderMap,
        token: Option<&Verified>,
    ) -> Verdict {
        let material = self.material(source, client, headers, token);
        let local = self.local_key(material);
        match &self.shared {
            None => self.local.check(local).into(),
            Some(shared) => {
                let key = shared.redis_key(material);
                shared.check(&key, || self.local.check(local)).await
            }
        }
    }

    /// Local keys tracked now (idle ones not yet swept included).
    pub fn live_keys(&self) -> usize {
        self.local.live_keys()
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

    fn limiter(yaml: &str) -> RateLimiter {
        RateLimiter::new(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn fields_of_whole_and_fractional_rates() {
        let rl = limiter("{ requests_per_second: 0.5 }");
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
    fn a_local_limiter_decides_without_waiting() {
        use futures_util::FutureExt as _;
        let rl = limiter("{ requests_per_second: 1, burst: 2 }");
        let src = rl.key_source(|_| None);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let h = HeaderMap::new();
        let decide = || rl.decide(&src, peer, &h, None).now_or_never().unwrap();
        assert_eq!(decide(), Verdict::Pass);
        assert_eq!(decide(), Verdict::Pass);
        assert!(matches!(decide(), Verdict::Limited(w) if w > Duration::from_millis(900)));
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
        assert_eq!(rl.material(&src, peer, &a, None), KeyMaterial::Value(b"a"));
        assert_eq!(
            rl.material(&src, peer, &HeaderMap::new(), None),
            KeyMaterial::Missing
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
