//! `rate_limit.shared`: one budget per key across every replica, kept in
//! Redis. Each check runs one Lua script ([`GCRA_SCRIPT`], sent by its
//! SHA-1 with EVALSHA, and whole with EVAL only when Redis does not know it
//! yet) that reads the key's TAT, applies [`gcra`](super::local::gcra) on
//! Redis's own clock (so the replicas' clocks do not matter) and writes
//! the new TAT back with a `PX` expiry at the moment its bucket is full
//! again: an idle key vanishes from Redis by itself, as it does locally.
//! Redis runs a script atomically, so replicas taking from one key at once
//! never lose an update.
//!
//! The request path never waits on Redis for longer than `timeout`. A
//! [`RedisStore`] (one per URL, shared by every limit that names it, kept
//! across reloads) is up or down. While it is up, each check goes to Redis;
//! a check that times out or finds the connection broken marks it down.
//! While it is down, no check goes to Redis at all: the `fallback` decides
//! at once (`local`: this replica's own buckets; `allow`; `deny`), and one
//! background probe runs the same script on a key of its own, at once and after 50ms,
//! then backing off to every 2s (with jitter), until Redis answers; then the
//! store is up again. So an outage costs at most the requests in flight when
//! it began one `timeout` each, Redis sees one connection attempt per
//! probe however many requests arrive, and each change of state is logged
//! once (warn when Redis goes away, info when it is back), not per request.
//! Every check the fallback decides is counted in
//! `skiff_ratelimit_shared_fallback_total{listener, reason}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};

use super::{KeyMaterial, Verdict};
use crate::config::{self, RateLimitFallback};
use crate::metrics::Metrics;

/// One GCRA step for `KEYS[1]` (the same arithmetic as `local::gcra`), in
/// microseconds: `ARGV[1]` is the interval, `ARGV[2]` the tolerance
/// (`(burst - 1) × interval`). Returns `{1, 0}` when the request passes,
/// `{0, wait}` when it must wait `wait` microseconds. Microseconds keep
/// every number exact in Lua's doubles (2^53 µs is 285 years); the TAT is
/// written with `%d` so that it is never rounded to 14 digits.
pub const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local ahead = tat - now
if ahead > tolerance then
  return {0, ahead - tolerance}
end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
return {1, 0}
";

/// Where every key of a shared limit lives: `skiff:rl:<listener>:<scope>:<key>`.
const KEY_PREFIX: &str = "skiff:rl:";
/// The key the probe runs the script on (no listener's key has this form).
const PROBE_KEY: &str = "skiff:rl:probe";
/// The probe's own bound: off the request path, so it may wait longer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The first probe after Redis went away, then doubling up to the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A Redis error that does not mark the store down (a script error, a key
/// of another type) is logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

fn script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(GCRA_SCRIPT))
}

/// Why one check did not get an answer from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer within `timeout`.
    Timeout,
    /// Redis answered with an error, or the connection failed.
    Error(String),
    /// The store is down: Redis was not asked.
    Unreachable,
}

/// The connection to one Redis, and whether it answers.
pub struct RedisStore {
    /// The URL without its password, for logs.
    name: String,
    manager: ConnectionManager,
    up: AtomicBool,
    /// When a non-fatal error was last logged (ms after `base`; 0: never).
    error_logged: AtomicU64,
    base: Instant,
}

impl RedisStore {
    /// The store of `url`, down until its first probe answers (which starts
    /// now, in the background). Call inside the runtime.
    pub fn start(url: &str) -> Result<Arc<RedisStore>, String> {
        let name = redacted(url);
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(format!("Redis {name}: no runtime to connect from"));
        }
        let client = redis::Client::open(url).map_err(|e| format!("Redis {name}: {e}"))?;
        // Each connection attempt is bounded, and retried once; attempts
        // are paced by the probe's backoff.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(PROBE_TIMEOUT))
            .set_response_timeout(Some(PROBE_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(FIRST_BACKOFF)
            .set_max_delay(MAX_BACKOFF);
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("Redis {name}: {e}"))?;
        let store = Arc::new(RedisStore {
            name,
            manager,
            up: AtomicBool::new(false),
            error_logged: AtomicU64::new(0),
            base: Instant::now(),
        });
        store.probe_until_up(true);
        Ok(store)
    }

    /// The URL, without its password.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether checks go to Redis now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// One GCRA step for `key` in Redis (intervals in microseconds), bounded
    /// by `timeout`: `Ok(Ok(()))` passes, `Ok(Err(wait))` is over the limit.
    /// Not asked while the store is down; a timeout or a broken connection
    /// marks it down.
    pub async fn gcra(
        self: &Arc<Self>,
        key: &str,
        interval_us: u64,
        tolerance_us: u64,
        timeout: Duration,
    ) -> Result<Result<(), Duration>, Failure> {
        if !self.is_up() {
            return Err(Failure::Unreachable);
        }
        match self.run(key, interval_us, tolerance_us, timeout).await {
            Ok(r) => Ok(r),
            Err(Attempt::Timeout) => {
                self.mark_down(&format!("no answer within {timeout:?}"));
                Err(Failure::Timeout)
            }
            Err(Attempt::Error(e)) => {
                let what = e.to_string();
                if fatal(&e) {
                    self.mark_down(&what);
                } else {
                    self.log_error(&what);
                }
                Err(Failure::Error(what))
            }
        }
    }

    async fn run(
        &self,
        key: &str,
        interval_us: u64,
        tolerance_us: u64,
        timeout: Duration,
    ) -> Result<Result<(), Duration>, Attempt> {
        let mut conn = self.manager.clone();
        let mut invocation = script().key(key);
        invocation.arg(interval_us).arg(tolerance_us);
        let call = invocation.invoke_async::<(i64, i64)>(&mut conn);
        match tokio::time::timeout(timeout, call).await {
            Err(_) => Err(Attempt::Timeout),
            Ok(Err(e)) => Err(Attempt::Error(e)),
            Ok(Ok((1, _))) => Ok(Ok(())),
            Ok(Ok((_, wait))) => Ok(Err(Duration::from_micros(wait.max(0) as u64))),
        }
    }

    /// Up → down: log it once and start the probe (only the one that made
    /// the change does either).
    fn mark_down(self: &Arc<Self>, why: &str) {
        if self
            .up
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::warn!(redis = %self.name, "shared rate limits: Redis does not answer ({why}); each limit uses its fallback until it does");
            self.probe_until_up(false);
        }
    }

    /// Probe with backoff until Redis answers, then mark the store up. At
    /// start (`starting`) the first failure is logged; later the warning
    /// of `mark_down` already said so.
    fn probe_until_up(self: &Arc<Self>, starting: bool) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut delay = FIRST_BACKOFF;
            let mut told = !starting;
            loop {
                let Some(store) = weak.upgrade() else {
                    return;
                };
                match store.run(PROBE_KEY, 1, 0, PROBE_TIMEOUT).await {
                    Ok(_) => {
                        store.up.store(true, Ordering::Release);
                        if told {
                            tracing::info!(redis = %store.name, "shared rate limits: Redis answers again; one budget per key across replicas");
                        } else {
                            tracing::info!(redis = %store.name, "shared rate limits: connected to Redis");
                        }
                        return;
                    }
                    Err(e) if !told => {
                        tracing::warn!(redis = %store.name, "shared rate limits: Redis does not answer ({}); each limit uses its fallback until it does", e.describe(PROBE_TIMEOUT));
                        told = true;
                    }
                    Err(e) => {
                        tracing::debug!(redis = %store.name, "shared rate limits: probe: {}", e.describe(PROBE_TIMEOUT));
                    }
                }
                drop(store);
                // Half the delay, plus up to as much again at random.
                let wait = delay / 2 + delay.mul_f64(fastrand::f64() / 2.0);
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        });
    }

    fn log_error(&self, what: &str) {
        let now = (self.base.elapsed().as_millis() as u64).max(1);
        let last = self.error_logged.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= ERROR_LOG_EVERY.as_millis() as u64;
        if due
            && self
                .error_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(redis = %self.name, "shared rate limits: Redis refused a check ({what}); the fallback decided it (logged at most once a minute)");
        }
    }
}

enum Attempt {
    Timeout,
    Error(RedisError),
}

impl Attempt {
    fn describe(&self, timeout: Duration) -> String {
        match self {
            Attempt::Timeout => format!("no answer within {timeout:?}"),
            Attempt::Error(e) => e.to_string(),
        }
    }
}

/// Errors that say Redis cannot be used now, not that one key is wrong.
fn fatal(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// `redis://user:secret@host:port/0` → `redis://user:***@host:port/0`.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((auth, host)) => {
            let user = auth.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// The Redis stores of one config, by URL.
#[derive(Default)]
pub struct Stores(HashMap<String, Arc<RedisStore>>);

impl Stores {
    /// The store of `url`: this config's, else `previous`'s (its connection
    /// and state carry over a reload), else a new one.
    pub fn get(&mut self, url: &str, previous: Option<&Stores>) -> Result<Arc<RedisStore>, String> {
        if let Some(s) = self.0.get(url) {
            return Ok(s.clone());
        }
        let store = match previous.and_then(|p| p.0.get(url)) {
            Some(s) => s.clone(),
            None => RedisStore::start(url)?,
        };
        self.0.insert(url.to_string(), store.clone());
        Ok(store)
    }

    /// Keep the store of a limiter carried over from the previous config.
    pub fn keep(&mut self, limiter: &super::RateLimiter) {
        if let (Some(shared), Some(c)) = (limiter.shared(), &limiter.config.shared) {
            self.0
                .entry(c.redis.clone())
                .or_insert_with(|| shared.store.clone());
        }
    }
}

/// The checks the fallback decided, by reason.
struct FallbackCounters {
    timeout: IntCounter,
    error: IntCounter,
    unreachable: IntCounter,
}

/// One `rate_limit`'s budget in Redis.
pub struct SharedBudget {
    store: Arc<RedisStore>,
    /// `skiff:rl:<listener>:<scope>:`.
    prefix: String,
    interval_us: u64,
    tolerance_us: u64,
    timeout: Duration,
    fallback: RateLimitFallback,
    counters: FallbackCounters,
}

impl SharedBudget {
    /// The budget of `c` (which has `shared`) on `listener`, section `scope`
    /// (`""` for the listener's own, else its route), kept in `store`.
    pub fn new(
        c: &config::RateLimit,
        shared: &config::SharedRateLimit,
        store: Arc<RedisStore>,
        listener: &str,
        scope: &str,
        metrics: &Metrics,
    ) -> SharedBudget {
        let interval_us = (1e6 / c.requests_per_second)
            .round()
            .clamp(1.0, (1u64 << 50) as f64) as u64;
        let burst = u64::from(c.burst().max(1));
        let counter = |reason| metrics.ratelimit_shared_fallback(listener, reason);
        SharedBudget {
            store,
            prefix: format!("{KEY_PREFIX}{listener}:{scope}:"),
            interval_us,
            tolerance_us: interval_us.saturating_mul(burst - 1),
            timeout: shared.timeout.get(),
            fallback: shared.fallback,
            counters: FallbackCounters {
                timeout: counter("timeout"),
                error: counter("error"),
                unreachable: counter("unreachable"),
            },
        }
    }

    /// Its Redis.
    pub fn store(&self) -> &Arc<RedisStore> {
        &self.store
    }

    /// The Redis key of a request: the address as text (`ip:10.0.0.1`), or
    /// the first 128 bits of a SHA-256 of the value (`v:<hex>`: API keys
    /// and user ids are not written into Redis), or `none`.
    pub fn redis_key(&self, m: KeyMaterial<'_>) -> String {
        let mut key = self.prefix.clone();
        match m {
            KeyMaterial::Ip(ip) => {
                key.push_str("ip:");
                key.push_str(&ip.to_canonical().to_string());
            }
            KeyMaterial::Value(v) => {
                key.push_str("v:");
                let digest = ring::digest::digest(&ring::digest::SHA256, v);
                for b in &digest.as_ref()[..16] {
                    key.push(hex_digit(b >> 4));
                    key.push(hex_digit(b & 0xf));
                }
            }
            KeyMaterial::Missing => key.push_str("none"),
        }
        key
    }

    /// Take a token from `key`'s budget; when Redis does not answer, the
    /// fallback decides (`local` runs the local bucket's check).
    pub async fn check(&self, key: &str, local: impl FnOnce() -> Result<(), Duration>) -> Verdict {
        let failure = match self
            .store
            .gcra(key, self.interval_us, self.tolerance_us, self.timeout)
            .await
        {
            Ok(r) => return r.into(),
            Err(f) => f,
        };
        match failure {
            Failure::Timeout => self.counters.timeout.inc(),
            Failure::Error(_) => self.counters.error.inc(),
            Failure::Unreachable => self.counters.unreachable.inc(),
        }
        match self.fallback {
            RateLimitFallback::Local => local().into(),
            RateLimitFallback::Allow => Verdict::Pass,
            RateLimitFallback::Deny => Verdict::Unavailable,
        }
    }
}

fn hex_digit(n: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(n & 0xf)])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_the_logs() {
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redacted("redis://app:s3cret@redis:6379/2"),
            "redis://app:***@redis:6379/2"
        );
        assert_eq!(redacted("redis://:s3cret@redis"), "redis://:***@redis");
    }

    #[tokio::test]
    async fn keys_are_namespaced_and_values_hashed() {
        let metrics = Metrics::new().unwrap();
        let c: config::RateLimit = serde_yaml::from_str(
            "{ requests_per_second: 4, burst: 3, shared: { redis: \"redis://127.0.0.1:1\" } }",
        )
        .unwrap();
        let shared = c.shared.clone().unwrap();
        let store = RedisStore::start(&shared.redis).unwrap();
        let b = SharedBudget::new(&c, &shared, store, "gw", "shop/#0", &metrics);
        assert_eq!(b.interval_us, 250_000);
        assert_eq!(b.tolerance_us, 500_000);
        assert_eq!(b.timeout, Duration::from_millis(25));
        let v4: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            b.redis_key(KeyMaterial::Ip(v4)),
            "skiff:rl:gw:shop/#0:ip:10.0.0.1"
        );
        assert_eq!(
            b.redis_key(KeyMaterial::Ip(mapped)),
            b.redis_key(KeyMaterial::Ip(v4))
        );
        let k = b.redis_key(KeyMaterial::Value(b"key-1"));
        assert!(k.starts_with("skiff:rl:gw:shop/#0:v:"), "{k}");
        assert_eq!(k.len(), "skiff:rl:gw:shop/#0:v:".len() + 32);
        assert!(!k.contains("key-1"));
        assert_ne!(k, b.redis_key(KeyMaterial::Value(b"key-2")));
        assert_eq!(
            b.redis_key(KeyMaterial::Missing),
            "skiff:rl:gw:shop/#0:none"
        );
    }

    #[tokio::test]
    async fn with_redis_away_the_fallback_decides_at_once() {
        // Port 1 on loopback: nothing listens, the store never comes up.
        let metrics = Metrics::new().unwrap();
        let store = RedisStore::start("redis://127.0.0.1:1").unwrap();
        for (fallback, want) in [
            ("local", Verdict::Pass),
            ("allow", Verdict::Pass),
            ("deny", Verdict::Unavailable),
        ] {
            let c: config::RateLimit = serde_yaml::from_str(&format!(
                "{{ requests_per_second: 1, burst: 1, shared: {{ redis: \"redis://127.0.0.1:1\", fallback: {fallback} }} }}"
            ))
            .unwrap();
            let shared = c.shared.clone().unwrap();
            let b = SharedBudget::new(&c, &shared, store.clone(), fallback, "", &metrics);
            let key = b.redis_key(KeyMaterial::Missing);
            let local = crate::admission::rate_limit::local::LocalBuckets::new(&c);
            let started = Instant::now();
            assert_eq!(b.check(&key, || local.check(1)).await, want, "{fallback}");
            assert!(started.elapsed() < Duration::from_secs(1));
            if fallback == "local" {
                // The local bucket (burst 1) is spent by the first check.
                assert!(matches!(
                    b.check(&key, || local.check(1)).await,
                    Verdict::Limited(_)
                ));
            }
        }
        assert!(!store.is_up());
        let text = {
            use prometheus::Encoder as _;
            let mut buf = Vec::new();
            prometheus::TextEncoder::new()
                .encode(&metrics.registry.gather(), &mut buf)
                .unwrap();
            String::from_utf8(buf).unwrap()
        };
        assert!(
            text.contains(
                "skiff_ratelimit_shared_fallback_total{listener=\"local\",reason=\"unreachable\"} 2"
            ),
            "{text}"
        );
    }
}
