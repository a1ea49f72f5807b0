//! Rate limits shared across replicas (`rate_limit.shared`), against a real
//! `redis-server` on a loopback port and the real `skiff` binary: one
//! budget per key whatever replica a request reaches, the same 429 as a
//! local limit, three gateways holding the configured rate together, and
//! Redis going away (killed, or paused so that it accepts but never
//! answers) and coming back: the fallback decides at once, no request hangs,
//! the change is logged once, and the shared budget is used again when
//! Redis answers.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};

use support::http_backend::HttpBackend;
use support::http_client::{header_str, http_get, HttpClient};
use support::process::SkiffProcess;
use support::redis_server::RedisServer;
use support::scratch::ScratchDir;
use support::{eventually, metric_value, peers, within, Proto};

/// The longest any request may take, Redis up, down or paused.
const REQUEST_BOUND: Duration = Duration::from_secs(2);

/// `skiff run` with one listener per `(name, rate_limit)` in front of `backend`.
struct Gateways {
    skiff: SkiffProcess,
    _dir: ScratchDir,
}

impl Gateways {
    async fn start(backend: SocketAddr, listeners: &[(&str, String)]) -> anyhow::Result<Gateways> {
        let mut yaml = String::from("admin: { address: 127.0.0.1:0 }\nlisteners:\n");
        for (name, limit) in listeners {
            yaml.push_str(&format!(
                "  - name: {name}
    address: 127.0.0.1:0
    rate_limit: {limit}
    virtual_hosts:
      - name: all
        domains: [\"*\"]
        routes:
          - match: {{ prefix: / }}
            cluster: backend
"
            ));
        }
        yaml.push_str(&format!(
            "clusters:\n  - name: backend\n    endpoints: [\"{backend}\"]\n"
        ));
        let dir = ScratchDir::new("rate-limit-shared")?;
        let config = dir.write("skiff.yaml", &yaml)?;
        let names: Vec<String> = listeners.iter().map(|(n, _)| n.to_string()).collect();
        let skiff = tokio::task::spawn_blocking(move || {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            SkiffProcess::start(&config, &names)
        })
        .await??;
        let gw = Gateways { skiff, _dir: dir };
        gw.wait_for_log("connected to Redis", 1).await?;
        Ok(gw)
    }

    fn addr(&self, listener: &str) -> anyhow::Result<SocketAddr> {
        self.skiff.listener(listener)
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let (_, _, text) = http_get(self.skiff.admin, "/metrics").await?;
        Ok(metric_value(&text, name, labels).unwrap_or(0.0))
    }

    /// Log lines that contain `text`.
    fn logged(&self, text: &str) -> usize {
        self.skiff
            .lines
            .snapshot()
            .iter()
            .filter(|l| l.contains(text))
            .count()
    }

    async fn wait_for_log(&self, text: &str, times: usize) -> anyhow::Result<()> {
        eventually(Duration::from_secs(15), || async {
            let n = self.logged(text);
            ensure!(
                n >= times,
                "`{text}` logged {n} times, not {times}:\n{}",
                self.skiff.lines.joined()
            );
            Ok(())
        })
        .await
    }
}

/// GET / on `c`, bounded by [`REQUEST_BOUND`].
async fn get(c: &mut HttpClient) -> anyhow::Result<http::response::Parts> {
    let started = Instant::now();
    let (parts, _) = within(REQUEST_BOUND, "a rate-limited request", c.get("/")).await?;
    ensure!(started.elapsed() < REQUEST_BOUND);
    Ok(parts)
}

fn shared(redis: &RedisServer, rest: &str) -> String {
    format!("{{ redis: \"{}\"{rest} }}", redis.url())
}

/// `redis-server` when it is there (else the test says why and passes, or
/// fails under `SKIFF_REQUIRE_PEERS=1`).
fn redis_server() -> anyhow::Result<Option<RedisServer>> {
    if !peers::redis_server() {
        return Ok(None);
    }
    RedisServer::start().map(Some)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_passes_then_429_with_a_retry_after_and_the_budget_is_one_across_replicas(
) -> anyhow::Result<()> {
    let Some(redis) = redis_server()? else {
        return Ok(());
    };
    let backend = HttpBackend::start().await?;
    let limit = format!(
        "{{ requests_per_second: 1, burst: 3, shared: {} }}",
        shared(&redis, "")
    );
    let a = Gateways::start(backend.addr(), &[("gateway", limit.clone())]).await?;
    let b = Gateways::start(backend.addr(), &[("gateway", limit)]).await?;
    let mut ca = HttpClient::connect(a.addr("gateway")?, Proto::H1).await?;
    for i in 0..3 {
        assert_eq!(get(&mut ca).await?.status, 200, "request {i} of the burst");
    }
    // The other replica takes from the same budget: nothing left.
    let mut cb = HttpClient::connect(b.addr("gateway")?, Proto::H2).await?;
    let parts = get(&mut cb).await?;
    assert_eq!(parts.status, 429);
    assert_eq!(
        header_str(&parts.headers, "x-skiff-error"),
        Some("rate_limited")
    );
    let retry: u64 = header_str(&parts.headers, "retry-after")
        .context("retry-after")?
        .parse()?;
    assert_eq!(retry, 1, "a token comes within the second");
    assert_eq!(
        header_str(&parts.headers, "ratelimit-policy"),
        Some("\"default\";q=1;w=1")
    );
    assert_eq!(
        header_str(&parts.headers, "ratelimit"),
        Some("\"default\";r=0;t=1")
    );
    assert_eq!(get(&mut ca).await?.status, 429);
    assert_eq!(
        b.metric("skiff_ratelimited_total", &[("listener", "gateway")])
            .await?,
        1.0
    );
    // One key in Redis, named by listener, scope and client address, that
    // expires when the bucket is full again (3 s at most).
    let mut conn = redis.connection()?;
    let key = "skiff:rl:gateway::ip:127.0.0.1";
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("skiff:rl:gateway:*")
        .query(&mut conn)?;
    assert_eq!(keys, [key]);
    let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut conn)?;
    assert!(ttl > 0 && ttl <= 3_000, "PTTL {ttl}");
    let tat: String = redis::cmd("GET").arg(key).query(&mut conn)?;
    assert!(
        tat.bytes().all(|b| b.is_ascii_digit()),
        "the TAT is written whole: {tat}"
    );
    // A client that waits as told gets through, on either replica.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(get(&mut cb).await?.status, 200);
    for gw in [&a, &b] {
        assert_eq!(
            gw.metric("skiff_ratelimit_shared_fallback_total", &[])
                .await?,
            0.0,
            "Redis answered every check"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_keeps_gcra_arithmetic_and_idle_keys_vanish() -> anyhow::Result<()> {
    use skiff::admission::rate_limit::shared::RedisStore;
    let Some(redis) = redis_server()? else {
        return Ok(());
    };
    let store = RedisStore::start(&redis.url()).map_err(anyhow::Error::msg)?;
    eventually(Duration::from_secs(10), || async {
        ensure!(store.is_up(), "not connected yet");
        Ok(())
    })
    .await?;
    let bound = Duration::from_secs(1);
    // 10 per second (100 ms interval), burst 3 (200 ms tolerance).
    let (interval, tolerance) = (100_000, 200_000);
    let key = "skiff:rl:test::ip:10.0.0.1";
    for i in 0..3 {
        let r = store.gcra(key, interval, tolerance, bound).await;
        assert_eq!(r, Ok(Ok(())), "request {i} of the burst");
    }
    let started = Instant::now();
    let wait = match store.gcra(key, interval, tolerance, bound).await {
        Ok(Err(wait)) => wait,
        other => anyhow::bail!("the fourth should wait: {other:?}"),
    };
    // One interval, less what passed since the burst.
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(100),
        "{wait:?}"
    );
    let mut conn = redis.connection()?;
    let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut conn)?;
    assert!(
        ttl > 0 && ttl <= 300,
        "expires when the bucket is full: {ttl}"
    );
    tokio::time::sleep(wait.saturating_sub(started.elapsed()) + Duration::from_millis(5)).await;
    assert_eq!(
        store.gcra(key, interval, tolerance, bound).await,
        Ok(Ok(()))
    );
    // Idle for a whole burst, the key is gone: a full bucket again.
    eventually(Duration::from_secs(5), || {
        let exists: Result<i64, _> = redis::cmd("EXISTS").arg(key).query(&mut conn);
        async move {
            ensure!(exists? == 0, "the key is still there");
            Ok(())
        }
    })
    .await?;
    for _ in 0..3 {
        assert_eq!(
            store.gcra(key, interval, tolerance, bound).await,
            Ok(Ok(()))
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_sharing_one_redis_admit_the_configured_rate_in_total() -> anyhow::Result<()>
{
    let Some(redis) = redis_server()? else {
        return Ok(());
    };
    let backend = HttpBackend::start().await?;
    const RATE: f64 = 50.0;
    // A burst of a few tokens absorbs the few milliseconds by which an
    // admitted request comes after its token was due (with burst 1 each
    // such delay is lost for good, and a loaded machine admits less).
    const BURST: f64 = 5.0;
    // A generous timeout: this test is about the shared budget, and a loaded
    // machine must not turn it into the local fallback.
    let limit = format!(
        "{{ requests_per_second: {RATE}, burst: {BURST}, shared: {} }}",
        shared(&redis, ", timeout: 500ms")
    );
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(Gateways::start(backend.addr(), &[("gateway", limit.clone())]).await?);
    }
    // Each gateway gets ~200 requests a second from its own client for 4 s:
    // 12 times the rate offered, 3 times over.
    let run = Duration::from_secs(4);
    let started = Instant::now();
    let mut clients = Vec::new();
    for gw in &gateways {
        let addr = gw.addr("gateway")?;
        clients.push(tokio::spawn(async move {
            let mut c = HttpClient::connect(addr, Proto::H1).await?;
            let (mut passed, mut limited) = (0u64, 0u64);
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while started.elapsed() < run {
                tick.tick().await;
                match get(&mut c).await?.status.as_u16() {
                    200 => passed += 1,
                    429 => limited += 1,
                    s => anyhow::bail!("unexpected status {s}"),
                }
            }
            anyhow::Ok((passed, limited))
        }));
    }
    let (mut passed, mut limited) = (0, 0);
    for c in clients {
        let (p, l) = c.await??;
        passed += p;
        limited += l;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = RATE * elapsed + BURST;
    println!(
        "3 gateways, {elapsed:.2} s: {passed} admitted, {limited} limited; expected {expected:.0}"
    );
    for gw in &gateways {
        assert_eq!(
            gw.metric("skiff_ratelimit_shared_fallback_total", &[])
                .await?,
            0.0,
            "every check reached Redis"
        );
    }
    ensure!(limited > passed, "the clients offered more than the rate");
    let ratio = passed as f64 / expected;
    ensure!(
        (0.9..=1.1).contains(&ratio),
        "{passed} admitted against {expected:.0} expected ({ratio:.3})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_each_fallback_applies_and_shared_mode_resumes_when_it_is_back(
) -> anyhow::Result<()> {
    let Some(mut redis) = redis_server()? else {
        return Ok(());
    };
    let backend = HttpBackend::start().await?;
    // One token every 2 s, burst 2: a third request within the test's
    // few seconds is limited, whoever counts it.
    let limit = |fallback: &str| {
        format!(
            "{{ requests_per_second: 0.5, burst: 2, shared: {} }}",
            shared(&redis, &format!(", fallback: {fallback}"))
        )
    };
    let gw = Gateways::start(
        backend.addr(),
        &[
            ("local", limit("local")),
            ("allow", limit("allow")),
            ("deny", limit("deny")),
        ],
    )
    .await?;
    let mut clients = Vec::new();
    for name in ["local", "allow", "deny"] {
        clients.push(HttpClient::connect(gw.addr(name)?, Proto::H1).await?);
    }
    // Shared mode: two pass, the third is limited, on each listener.
    for c in &mut clients {
        assert_eq!(get(c).await?.status, 200);
        assert_eq!(get(c).await?.status, 200);
        let parts = get(c).await?;
        assert_eq!(parts.status, 429);
        assert_eq!(header_str(&parts.headers, "retry-after"), Some("2"));
    }
    let [local, allow, deny] = &mut clients[..] else {
        unreachable!()
    };

    redis.stop();
    // local: this replica's own bucket, full (it was not used while Redis
    // answered), so two pass and the third is limited.
    assert_eq!(get(local).await?.status, 200);
    assert_eq!(get(local).await?.status, 200);
    let parts = get(local).await?;
    assert_eq!(parts.status, 429);
    assert_eq!(header_str(&parts.headers, "retry-after"), Some("2"));
    // allow: everything passes.
    for _ in 0..5 {
        assert_eq!(get(allow).await?.status, 200);
    }
    // deny: 429, come back in a second.
    for _ in 0..3 {
        let parts = get(deny).await?;
        assert_eq!(parts.status, 429);
        assert_eq!(
            header_str(&parts.headers, "x-skiff-error"),
            Some("rate_limited")
        );
        assert_eq!(header_str(&parts.headers, "retry-after"), Some("1"));
        assert_eq!(
            header_str(&parts.headers, "ratelimit-policy"),
            Some("\"default\";q=1;w=2")
        );
    }
    for name in ["local", "allow", "deny"] {
        let n = gw
            .metric(
                "skiff_ratelimit_shared_fallback_total",
                &[("listener", name)],
            )
            .await?;
        assert!(n >= 3.0, "{name}: {n} checks counted as fallen back");
    }
    // The three limits share one Redis, and its going away is logged once.
    assert_eq!(
        gw.logged("Redis does not answer"),
        1,
        "{}",
        gw.skiff.lines.joined()
    );

    redis.restart()?;
    gw.wait_for_log("Redis answers again", 1).await?;
    // Shared mode again: the budget is Redis's (empty after the restart,
    // so full), not the local bucket the local listener spent above.
    assert_eq!(get(local).await?.status, 200);
    assert_eq!(get(deny).await?.status, 200);
    assert_eq!(get(deny).await?.status, 200);
    assert_eq!(get(deny).await?.status, 429);
    let mut conn = redis.connection()?;
    let keys: Vec<String> = redis::cmd("KEYS").arg("skiff:rl:*").query(&mut conn)?;
    let mut keys: Vec<&str> = keys
        .iter()
        .map(String::as_str)
        .filter(|k| *k != "skiff:rl:probe")
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "skiff:rl:deny::ip:127.0.0.1",
            "skiff:rl:local::ip:127.0.0.1"
        ]
    );
    assert_eq!(gw.logged("Redis does not answer"), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_does_not_answer_costs_a_request_at_most_the_timeout() -> anyhow::Result<()> {
    let Some(redis) = redis_server()? else {
        return Ok(());
    };
    let backend = HttpBackend::start().await?;
    let limit = format!(
        "{{ requests_per_second: 100, burst: 100, shared: {} }}",
        shared(&redis, ", timeout: 50ms, fallback: allow")
    );
    let gw = Arc::new(Gateways::start(backend.addr(), &[("gateway", limit)]).await?);
    let mut c = HttpClient::connect(gw.addr("gateway")?, Proto::H1).await?;
    assert_eq!(get(&mut c).await?.status, 200);

    // Paused, Redis keeps its connections and answers nothing.
    redis.pause()?;
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(get(&mut c).await?.status, 200);
        slowest = slowest.max(started.elapsed());
    }
    println!("slowest request with Redis paused: {slowest:?}");
    let timeouts = gw
        .metric(
            "skiff_ratelimit_shared_fallback_total",
            &[("reason", "timeout")],
        )
        .await?;
    assert_eq!(timeouts, 1.0, "one check waited; the others did not ask");
    let unreachable = gw
        .metric(
            "skiff_ratelimit_shared_fallback_total",
            &[("reason", "unreachable")],
        )
        .await?;
    assert_eq!(unreachable, 19.0);

    redis.resume()?;
    gw.wait_for_log("Redis answers again", 1).await?;
    assert_eq!(get(&mut c).await?.status, 200);
    let after = gw
        .metric("skiff_ratelimit_shared_fallback_total", &[])
        .await?;
    assert_eq!(after, 20.0, "checks reach Redis again");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_redis_connection_and_the_budget() -> anyhow::Result<()> {
    let Some(redis) = redis_server()? else {
        return Ok(());
    };
    let backend = HttpBackend::start().await?;
    let yaml = |burst: u32, extra_cluster: &str| {
        format!(
            "admin: {{ address: 127.0.0.1:0 }}
listeners:
  - name: gateway
    address: 127.0.0.1:0
    rate_limit: {{ requests_per_second: 0.1, burst: {burst}, shared: {} }}
    virtual_hosts:
      - name: all
        domains: [\"*\"]
        routes:
          - match: {{ prefix: / }}
            cluster: backend
clusters:
  - name: backend
    endpoints: [\"{}\"]
{extra_cluster}",
            shared(&redis, ""),
            backend.addr()
        )
    };
    let proxy = support::Proxy::start_reloading(&yaml(2, "")).await?;
    let mut conn = redis.connection()?;
    let mut clients = || -> anyhow::Result<usize> {
        let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn)?;
        Ok(list.lines().count())
    };
    // The proxy's one connection, and the test's.
    eventually(Duration::from_secs(10), || {
        let n = clients();
        async move {
            ensure!(n? == 2, "the proxy has not connected yet");
            Ok(())
        }
    })
    .await?;
    let mut c = HttpClient::connect(proxy.addr(), Proto::H1).await?;
    assert_eq!(get(&mut c).await?.status, 200);

    // Another cluster: the limit is the same, its budget and connection stay.
    let other = "  - name: other\n    endpoints: [\"127.0.0.1:9\"]\n";
    proxy.reload(&yaml(2, other)).await?;
    assert_eq!(get(&mut c).await?.status, 200);
    assert_eq!(get(&mut c).await?.status, 429, "the budget carried over");
    assert_eq!(clients()?, 2, "the connection carried over");

    // Other settings make a new limit, on the same connection; the key's
    // TAT in Redis still counts (a larger burst lets one more through).
    proxy.reload(&yaml(3, other)).await?;
    assert_eq!(get(&mut c).await?.status, 200);
    assert_eq!(get(&mut c).await?.status, 429);
    assert_eq!(clients()?, 2);
    let (_, text) = proxy.admin_get("/metrics").await?;
    assert_eq!(
        metric_value(&text, "skiff_ratelimit_shared_fallback_total", &[]),
        Some(0.0)
    );
    Ok(())
}

/// What shared mode adds to a request's latency over a local limit: 2,000
/// sequential requests on one kept-alive connection to each of two
/// listeners of one skiff (a limit that never trips, local on one, shared
/// on the other), in alternating blocks of 100 so that the machine's drift
/// hits both alike. Prints p50 / p90 / p99; asserts nothing about time.
/// `SKIFF_BIN=target/release/skiff` measures a release build (BENCHMARKS.md,
/// "Shared rate limits").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored (BENCHMARKS.md)"]
async fn shared_mode_latency_over_local() -> anyhow::Result<()> {
    let Some(redis) = redis_server()? else {
        return Ok(());
    };
    let backend = HttpBackend::start().await?;
    let never = "requests_per_second: 1000000, burst: 1000000";
    let listeners = [
        ("local", format!("{{ {never} }}")),
        (
            "shared",
            format!("{{ {never}, shared: {} }}", shared(&redis, "")),
        ),
    ];
    let binary = std::env::var("SKIFF_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| support::process::SKIFF.into());
    let mut yaml = String::from("admin: { address: 127.0.0.1:0 }\nlisteners:\n");
    for (name, limit) in &listeners {
        yaml.push_str(&format!(
            "  - name: {name}\n    address: 127.0.0.1:0\n    rate_limit: {limit}\n    virtual_hosts: [{{ name: all, domains: [\"*\"], routes: [{{ cluster: backend }}] }}]\n"
        ));
    }
    yaml.push_str(&format!(
        "clusters:\n  - name: backend\n    endpoints: [\"{}\"]\n",
        backend.addr()
    ));
    let dir = ScratchDir::new("rate-limit-latency")?;
    let config = dir.write("skiff.yaml", &yaml)?;
    let skiff = tokio::task::spawn_blocking(move || {
        SkiffProcess::start_binary(&binary, &config, &["local", "shared"])
    })
    .await??;
    let gw = Gateways { skiff, _dir: dir };
    gw.wait_for_log("connected to Redis", 1).await?;
    let mut local = HttpClient::connect(gw.addr("local")?, Proto::H1).await?;
    let mut shared = HttpClient::connect(gw.addr("shared")?, Proto::H1).await?;
    let (mut l, mut s) = (Vec::new(), Vec::new());
    for round in 0..22 {
        for (c, out) in [(&mut local, &mut l), (&mut shared, &mut s)] {
            for _ in 0..100 {
                let started = Instant::now();
                ensure!(get(c).await?.status == 200);
                // The first two rounds warm up.
                if round >= 2 {
                    out.push(started.elapsed());
                }
            }
        }
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (l50, l90, l99) = (pct(&mut l, 0.5), pct(&mut l, 0.9), pct(&mut l, 0.99));
    let (s50, s90, s99) = (pct(&mut s, 0.5), pct(&mut s, 0.9), pct(&mut s, 0.99));
    println!(
        "{} requests each: local p50 {:.0} µs, p90 {:.0}, p99 {:.0}; shared p50 {:.0} µs, p90 {:.0}, p99 {:.0}; added p50 {:+.0} µs, p90 {:+.0}, p99 {:+.0}",
        l.len(),
        us(l50), us(l90), us(l99),
        us(s50), us(s90), us(s99),
        us(s50) - us(l50), us(s90) - us(l90), us(s99) - us(l99),
    );
    let fallbacks = gw
        .metric("skiff_ratelimit_shared_fallback_total", &[])
        .await?;
    assert_eq!(fallbacks, 0.0, "every shared check reached Redis");
    Ok(())
}
