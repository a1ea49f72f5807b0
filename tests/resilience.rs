//! Resilience end to end, under real faults (tests/support/flaky.rs): retries
//! with their conditions, budget, replay buffer and endpoint choice; the
//! circuit breaker; outlier ejection; active health checks and panic mode.
//!
//! Counts are exact where the backends make them so (failures are spread
//! evenly, not drawn at random); nothing here asserts on elapsed time, and
//! every wait is a bounded `eventually`.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, ensure};
use support::body::{self, pattern, Digest};
use support::faults::closed_port;
use support::flaky::{replicas, Failure, FlakyBackend};
use support::grpc_backend::{echo_client, EchoClient, EchoRequest};
use support::http_client::{header_str, HttpClient};
use support::scratch::ScratchDir;
use support::{eventually, within, Proto, Proxy};
use tonic::transport::Channel;

const UNAVAILABLE: u8 = 14;
const INTERNAL: u8 = 13;
const CLUSTER: &str = "backend";

// ---------------------------------------------------------------- setup

/// One listener, one route for every path, one cluster `backend`.
struct Setup {
    protocol: &'static str,
    endpoints: Vec<SocketAddr>,
    timeout: Option<&'static str>,
    retry: Option<String>,
    cluster: Vec<String>,
    access_log: Option<String>,
}

impl Setup {
    fn new(protocol: &'static str, endpoints: impl IntoIterator<Item = SocketAddr>) -> Setup {
        Setup {
            protocol,
            endpoints: endpoints.into_iter().collect(),
            timeout: Some("10s"),
            retry: None,
            cluster: Vec::new(),
            access_log: None,
        }
    }

    /// The route's `retry:` as a YAML flow mapping.
    fn retry(mut self, flow: &str) -> Setup {
        self.retry = Some(flow.to_string());
        self
    }

    fn timeout(mut self, t: &'static str) -> Setup {
        self.timeout = Some(t);
        self
    }

    /// One `key: value` line of the cluster.
    fn cluster(mut self, line: &str) -> Setup {
        self.cluster.push(line.to_string());
        self
    }

    fn access_log(mut self, path: &Path) -> Setup {
        self.access_log = Some(serde_json::json!(path.display().to_string()).to_string());
        self
    }

    fn render(&self) -> String {
        let mut y = String::from("admin:\n  address: 127.0.0.1:0\n");
        if let Some(p) = &self.access_log {
            y += &format!("access_log:\n  enabled: true\n  path: {p}\n");
        }
        y += "listeners:\n  - name: main\n    address: 127.0.0.1:0\n";
        y += "    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n";
        y += "          - match: { prefix: \"/\" }\n            cluster: backend\n";
        if let Some(t) = self.timeout {
            y += &format!("            timeout: {t}\n");
        }
        if let Some(r) = &self.retry {
            y += &format!("            retry: {r}\n");
        }
        y += &format!(
            "clusters:\n  - name: backend\n    protocol: {}\n    endpoints: [{}]\n",
            self.protocol,
            quoted(&self.endpoints)
        );
        for line in &self.cluster {
            y += &format!("    {line}\n");
        }
        y
    }

    async fn start(&self) -> anyhow::Result<Proxy> {
        Proxy::start(&self.render()).await
    }
}

fn quoted(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn addrs(backends: &[FlakyBackend]) -> Vec<SocketAddr> {
    backends.iter().map(FlakyBackend::addr).collect()
}

// ---------------------------------------------------------------- reading the proxy

async fn cluster_metric(proxy: &Proxy, name: &str) -> anyhow::Result<f64> {
    proxy.metric(name, &[("cluster", CLUSTER)]).await
}

async fn endpoints_in(proxy: &Proxy, state: &str) -> anyhow::Result<f64> {
    proxy
        .metric("skiff_endpoints", &[("cluster", CLUSTER), ("state", state)])
        .await
}

/// Health of each endpoint in `/clusters`, by address.
async fn health(proxy: &Proxy) -> anyhow::Result<BTreeMap<String, String>> {
    proxy
        .endpoints(CLUSTER, |e| {
            e["health"].as_str().unwrap_or_default().to_string()
        })
        .await
}

async fn health_of(proxy: &Proxy, b: &FlakyBackend) -> anyhow::Result<String> {
    let h = health(proxy).await?;
    h.get(&b.id())
        .cloned()
        .ok_or_else(|| anyhow!("{} not in /clusters: {h:?}", b.id()))
}

/// The access log's lines, parsed.
fn access_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

// ---------------------------------------------------------------- traffic

/// GET `path` through the proxy on `c`: status, `x-replica`, `x-skiff-error`.
async fn get(
    c: &mut HttpClient,
    path: &str,
) -> anyhow::Result<(u16, Option<String>, Option<String>)> {
    let (parts, _) = c.get(path).await?;
    Ok((
        parts.status.as_u16(),
        header_str(&parts.headers, "x-replica").map(str::to_owned),
        header_str(&parts.headers, "x-skiff-error").map(str::to_owned),
    ))
}

/// `n` GETs in a row; every one must come back 200. Returns how many each replica answered.
async fn gets_ok(proxy: &Proxy, n: usize) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    let mut by = BTreeMap::new();
    for i in 0..n {
        let (status, replica, error) = get(&mut c, &format!("/r/{i}")).await?;
        ensure!(
            status == 200,
            "request {i} of {n} got {status} (x-skiff-error {error:?}, x-replica {replica:?})"
        );
        *by.entry(replica.unwrap_or_default()).or_insert(0) += 1;
    }
    Ok(by)
}

/// `n` unary gRPC calls in a row; every one must succeed.
async fn calls_ok(
    client: &mut EchoClient<Channel>,
    n: usize,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut by = BTreeMap::new();
    for i in 0..n {
        let resp = client
            .unary(EchoRequest {
                payload: format!("call {i}").into_bytes(),
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow!("call {i} of {n} failed: {s:?}"))?;
        let replica = resp
            .metadata()
            .get("x-replica")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        ensure!(
            resp.get_ref().payload == format!("call {i}").into_bytes(),
            "call {i}: wrong payload"
        );
        *by.entry(replica).or_insert(0) += 1;
    }
    Ok(by)
}

fn attempts_seen(b: &FlakyBackend) -> Vec<Option<u32>> {
    b.seen().iter().map(|s| s.attempt).collect()
}

const LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- retries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_failing_half_its_calls_costs_at_most_one_call_in_a_thousand(
) -> anyhow::Result<()> {
    let reps = replicas(3).await?;
    reps[0].fail_percent(50, Failure::GrpcTrailersOnly(UNAVAILABLE));
    let log = ScratchDir::new("resilience-1000")?;
    let log_path = log.path().join("access.log");
    let proxy = Setup::new("http2", addrs(&reps))
        .retry(
            "{ attempts: 3, on: [unavailable], backoff: { base: 1ms, max: 10ms }, \
             budget: { ratio: 1.0, min_per_second: 100 } }",
        )
        .access_log(&log_path)
        .start()
        .await?;

    const CALLS: usize = 1000;
    const CLIENTS: usize = 10;
    let client = echo_client(proxy.addr()).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..CLIENTS {
        let mut client = client.clone();
        tasks.spawn(async move {
            let mut failed = Vec::new();
            for i in 0..CALLS / CLIENTS {
                let req = EchoRequest {
                    payload: format!("{t}-{i}").into_bytes(),
                    ..Default::default()
                };
                match client.unary(req).await {
                    Ok(r) if r.get_ref().payload == format!("{t}-{i}").into_bytes() => {}
                    Ok(_) => failed.push(format!("{t}-{i}: wrong payload")),
                    Err(s) => failed.push(format!("{t}-{i}: {s:?}")),
                }
            }
            failed
        });
    }
    let mut failed = Vec::new();
    within(LIMIT, "1000 calls", async {
        while let Some(r) = tasks.join_next().await {
            failed.extend(r?);
        }
        Ok(())
    })
    .await?;

    let injected = reps[0].seen().iter().filter(|s| s.failed.is_some()).count();
    let retries = cluster_metric(&proxy, "skiff_retries_total").await?;
    eprintln!(
        "{} failed of {CALLS}; {injected} failures injected; {retries} retries; served {:?}",
        failed.len(),
        reps.iter().map(FlakyBackend::served).collect::<Vec<_>>()
    );
    assert!(
        failed.len() <= 1,
        "{} of {CALLS} calls failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(
        injected >= 100,
        "the bad replica should have failed many calls: {injected}"
    );
    assert!(
        retries >= (injected - failed.len()) as f64,
        "every injected failure but the final ones was retried: {retries} retries, {injected} failures"
    );
    // Every try carried its number, from 1 to 3.
    for r in &reps {
        for a in attempts_seen(r) {
            assert!(
                matches!(a, Some(1..=3)),
                "x-skiff-attempt-count {a:?} at {}",
                r.id()
            );
        }
    }
    // The access log says how many tries a request took.
    eventually(Duration::from_secs(10), || async {
        let lines = access_lines(&log_path);
        ensure!(lines.len() >= CALLS, "{} access log lines", lines.len());
        let retried = lines.iter().filter(|l| l["attempts"] == 2).count();
        ensure!(retried > 0, "no access log line with attempts 2");
        ensure!(
            lines.iter().all(|l| l["attempts"].as_u64().is_some()),
            "a line without attempts"
        );
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_in_trailers_after_a_head_without_message_is_retried() -> anyhow::Result<()> {
    let b = FlakyBackend::start().await?;
    let proxy = Setup::new("http2", [b.addr()])
        .retry("{ attempts: 3, on: [unavailable], backoff: { base: 1ms, max: 5ms } }")
        .start()
        .await?;
    let mut client = echo_client(proxy.addr()).await?;
    let cases = [
        (
            "head, then trailers 20ms later",
            Failure::GrpcAfterHeaders(UNAVAILABLE, Duration::from_millis(20)),
        ),
        (
            "head and trailers at once",
            Failure::GrpcAfterHeaders(UNAVAILABLE, Duration::ZERO),
        ),
        ("trailers-only", Failure::GrpcTrailersOnly(UNAVAILABLE)),
    ];
    for (what, failure) in cases {
        let before = b.seen().len();
        b.fail_next(1, failure);
        let resp = client
            .unary(EchoRequest {
                payload: b"hello".to_vec(),
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow!("{what}: the client should get OK, got {s:?}"))?;
        let seen = b.seen()[before..].to_vec();
        let tries: Vec<_> = seen.iter().map(|s| (s.attempt, s.failed)).collect();
        assert_eq!(
            tries,
            vec![(Some(1), Some(failure)), (Some(2), None)],
            "{what}: the upstream should see try 1 fail and try 2 answer"
        );
        assert_eq!(
            resp.get_ref()
                .seen_headers
                .get("x-skiff-attempt-count")
                .map(String::as_str),
            Some("2"),
            "{what}: the answer came from try 2"
        );
        assert_eq!(resp.get_ref().payload, b"hello", "{what}: body replayed");
    }

    // A status the route does not list is not retried...
    let before = b.seen().len();
    b.fail_next(
        1,
        Failure::GrpcAfterHeaders(INTERNAL, Duration::from_millis(5)),
    );
    let status = support::grpc_backend::status_of(client.unary(EchoRequest::default()).await)?;
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert_eq!(b.seen().len() - before, 1, "INTERNAL is not listed");

    // ...nor is one whose trailers come after the proxy stopped holding the
    // response (it streams on; the client gets the app's status).
    let before = b.seen().len();
    b.fail_next(
        1,
        Failure::GrpcAfterHeaders(UNAVAILABLE, Duration::from_millis(1500)),
    );
    let status = support::grpc_backend::status_of(client.unary(EchoRequest::default()).await)?;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.metadata().get("x-skiff-error").is_none(),
        "the app's own status, not the proxy's: {status:?}"
    );
    assert_eq!(
        b.seen().len() - before,
        1,
        "trailers later than the hold bound are not waited for"
    );
    Ok(())
}

/// Counts what a steady stream of clients saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    failures: Vec<String>,
}

/// gRPC and plain-HTTP clients calling in a loop until `stop`.
fn start_traffic(
    proxy: SocketAddr,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) -> tokio::task::JoinSet<anyhow::Result<()>> {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..3 {
        let (stop, tally) = (stop.clone(), tally.clone());
        tasks.spawn(async move {
            let mut client = echo_client(proxy).await?;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let req = EchoRequest {
                    payload: format!("grpc {t}-{i}").into_bytes(),
                    ..Default::default()
                };
                let outcome = match client.unary(req).await {
                    Ok(_) => Ok(()),
                    Err(s) => Err(format!("gRPC {t}-{i}: {s:?}")),
                };
                note(&tally, outcome);
            }
            Ok(())
        });
    }
    for t in 0..3 {
        let (stop, tally) = (stop.clone(), tally.clone());
        tasks.spawn(async move {
            let mut c = HttpClient::connect(proxy, Proto::H2).await?;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let outcome = match get(&mut c, &format!("/http/{t}/{i}")).await {
                    Ok((200, _, _)) => Ok(()),
                    Ok((s, r, e)) => Err(format!(
                        "GET {t}-{i}: {s} x-skiff-error {e:?} x-replica {r:?}"
                    )),
                    Err(e) => Err(format!("GET {t}-{i}: {e:#}")),
                };
                note(&tally, outcome);
            }
            Ok(())
        });
    }
    tasks
}

fn note(tally: &Mutex<Tally>, outcome: Result<(), String>) {
    if let Ok(mut t) = tally.lock() {
        match outcome {
            Ok(()) => t.ok += 1,
            Err(e) => t.failures.push(e),
        }
    }
}

async fn wait_ok(tally: &Mutex<Tally>, at_least: u64) -> anyhow::Result<u64> {
    eventually(LIMIT, || async {
        let ok = tally.lock().map(|t| t.ok).unwrap_or(0);
        ensure!(
            ok >= at_least,
            "{ok} successes so far, waiting for {at_least}"
        );
        Ok(ok)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_traffic_flows_fails_no_request() -> anyhow::Result<()> {
    let reps = replicas(3).await?;
    for r in &reps {
        // Requests are caught in the app, before the response head, when it dies.
        r.set_latency(Duration::from_millis(5));
    }
    let proxy = Setup::new("http2", addrs(&reps))
        .retry(
            "{ attempts: 3, on: [connect-failure, refused-stream, reset, unavailable], \
             backoff: { base: 5ms, max: 50ms } }",
        )
        .cluster("outlier_detection: { consecutive_failures: 3, base_ejection_time: 1s }")
        .start()
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = start_traffic(proxy.addr(), stop.clone(), tally.clone());

    let ok = wait_ok(&tally, 200).await?;
    let victim = &reps[1];
    let in_flight = victim.in_flight();
    victim.kill().await?;
    let ok = wait_ok(&tally, ok + 300).await?;
    // It comes back on the same address and gets traffic again.
    let served = victim.served();
    victim.revive().await?;
    eventually(Duration::from_secs(20), || async {
        ensure!(
            victim.served() > served,
            "the revived replica got no traffic yet"
        );
        Ok(())
    })
    .await?;
    wait_ok(&tally, ok + 100).await?;
    stop.store(true, Ordering::Relaxed);
    within(LIMIT, "traffic to stop", async {
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        Ok(())
    })
    .await?;

    let ejections = cluster_metric(&proxy, "skiff_outlier_ejections_total").await?;
    let t = tally.lock().map_err(|_| anyhow!("poisoned"))?;
    eprintln!(
        "{} ok, {} failed; {in_flight} in flight at the kill; ejections {ejections}; served {:?}",
        t.ok,
        t.failures.len(),
        reps.iter().map(FlakyBackend::served).collect::<Vec<_>>()
    );
    assert!(
        t.failures.is_empty(),
        "{} requests failed, e.g. {:?}",
        t.failures.len(),
        &t.failures[..t.failures.len().min(10)]
    );
    assert!(
        ejections >= 1.0,
        "the dead replica should have been ejected"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_is_timed_out_per_try_then_ejected_then_let_back() -> anyhow::Result<()> {
    let reps = replicas(3).await?;
    let hole = &reps[0];
    hole.set_black_hole(true);
    let proxy = Setup::new("http2", addrs(&reps))
        .timeout("5s")
        .retry(
            "{ attempts: 3, per_try_timeout: 200ms, on: [reset], backoff: { base: 1ms, max: 5ms } }",
        )
        .cluster(
            "outlier_detection: { consecutive_failures: 2, base_ejection_time: 3s, max_ejection_percent: 34 }",
        )
        .start()
        .await?;
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;

    // Every request is answered by another replica; the hole times out
    // until it is ejected.
    let mut sent = 0;
    while cluster_metric(&proxy, "skiff_outlier_ejections_total").await? < 1.0 {
        ensure!(
            sent < 30,
            "no ejection after {sent} requests; the hole saw {}",
            hole.served()
        );
        let (status, replica, error) = get(&mut c, &format!("/r/{sent}")).await?;
        assert_eq!(
            status, 200,
            "request {sent}: x-skiff-error {error:?} (per-try timeout should move on)"
        );
        assert_ne!(replica.as_deref(), Some(hole.id().as_str()));
        sent += 1;
    }
    assert!(hole.served() >= 2, "the hole was tried: {}", hole.served());
    let timeouts = proxy
        .metric(
            "skiff_upstream_attempts_total",
            &[("cluster", CLUSTER), ("result", "timeout")],
        )
        .await?;
    assert!(timeouts >= 2.0, "per-try timeouts counted: {timeouts}");
    let moved_on = reps[1..]
        .iter()
        .flat_map(|r| r.seen())
        .filter(|s| s.attempt == Some(2))
        .count();
    assert!(
        moved_on >= 2,
        "tries after a timeout went elsewhere: {moved_on}"
    );

    // Ejected: /clusters and the gauge say so, and it gets no traffic.
    assert_eq!(health_of(&proxy, hole).await?, "ejected");
    assert_eq!(endpoints_in(&proxy, "ejected").await?, 1.0);
    let before = hole.served();
    gets_ok(&proxy, 10).await?;
    if health_of(&proxy, hole).await? == "ejected" {
        assert_eq!(hole.served(), before, "an ejected endpoint got traffic");
    }

    // The app recovers; after base_ejection_time the endpoint is back in.
    hole.set_black_hole(false);
    eventually(Duration::from_secs(15), || async {
        let h = health_of(&proxy, hole).await?;
        ensure!(h == "healthy", "still {h}");
        Ok(())
    })
    .await?;
    assert_eq!(endpoints_in(&proxy, "ejected").await?, 0.0);
    eventually(Duration::from_secs(10), || async {
        let by = gets_ok(&proxy, 6).await?;
        ensure!(by.contains_key(&hole.id()), "not back in rotation: {by:?}");
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_holds_when_every_replica_fails() -> anyhow::Result<()> {
    let reps = replicas(2).await?;
    for r in &reps {
        r.fail_always(Failure::Status(503));
    }
    const RATIO: f64 = 0.2;
    const MIN_PER_SECOND: f64 = 1.0;
    const WINDOW_SECS: f64 = 10.0;
    let proxy = Setup::new("http2", addrs(&reps))
        .retry(&format!(
            "{{ attempts: 5, on: [5xx], backoff: {{ base: 1ms, max: 2ms }}, \
             budget: {{ ratio: {RATIO}, min_per_second: {MIN_PER_SECOND} }} }}"
        ))
        .start()
        .await?;

    const REQUESTS: usize = 300;
    const CLIENTS: usize = 6;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..CLIENTS {
        let addr = proxy.addr();
        tasks.spawn(async move {
            let mut c = HttpClient::connect(addr, Proto::H2).await?;
            let mut statuses = Vec::new();
            for i in 0..REQUESTS / CLIENTS {
                let (status, _, error) = get(&mut c, &format!("/{t}/{i}")).await?;
                statuses.push((status, error));
            }
            anyhow::Ok(statuses)
        });
    }
    let mut statuses = Vec::new();
    within(LIMIT, "requests", async {
        while let Some(r) = tasks.join_next().await {
            statuses.extend(r??);
        }
        Ok(())
    })
    .await?;
    assert!(
        statuses.iter().all(|s| *s == (503, None)),
        "every request gets the app's 503: {:?}",
        statuses.iter().find(|s| **s != (503, None))
    );

    let upstream: u64 = reps.iter().map(FlakyBackend::served).sum();
    let bound = REQUESTS as f64 * (1.0 + RATIO) + MIN_PER_SECOND * WINDOW_SECS;
    let retries = cluster_metric(&proxy, "skiff_retries_total").await?;
    let exhausted = cluster_metric(&proxy, "skiff_retry_budget_exhausted_total").await?;
    eprintln!(
        "{REQUESTS} requests -> {upstream} upstream (bound {bound}); {retries} retries; budget exhausted {exhausted} times"
    );
    assert!(
        upstream as f64 <= bound,
        "the upstream saw {upstream} tries for {REQUESTS} requests; the budget allows at most {bound}"
    );
    assert!(
        upstream > REQUESTS as u64,
        "some retries should have been allowed"
    );
    assert_eq!(
        retries,
        (upstream - REQUESTS as u64) as f64,
        "skiff_retries_total counts the tries beyond the first"
    );
    assert!(exhausted > 0.0, "skiff_retry_budget_exhausted_total");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_retried_only_when_it_never_reached_the_app_unless_the_route_opts_in(
) -> anyhow::Result<()> {
    let plain = FlakyBackend::start().await?;
    plain.fail_always(Failure::Status(503));
    let opted_in = FlakyBackend::start().await?;
    opted_in.fail_always(Failure::Status(503));
    let alive = FlakyBackend::start().await?;
    let dead = closed_port().await?;
    let route = |prefix: &str, cluster: &str, extra: &str| {
        format!(
            "          - match: {{ prefix: \"{prefix}\" }}\n            cluster: {cluster}\n            \
             retry: {{ attempts: 3, on: [5xx], backoff: {{ base: 1ms, max: 5ms }}{extra} }}\n"
        )
    };
    let cluster = |name: &str, eps: &[SocketAddr]| {
        format!(
            "  - name: {name}\n    protocol: http1\n    endpoints: [{}]\n",
            quoted(eps)
        )
    };
    let yaml = format!(
        "admin:\n  address: 127.0.0.1:0\nlisteners:\n  - name: main\n    address: 127.0.0.1:0\n    \
         virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n{}{}{}clusters:\n{}{}{}",
        route("/plain/", "plain", ""),
        route("/opted-in/", "opted_in", ", non_idempotent: true"),
        route("/half-dead/", "half_dead", ""),
        cluster("plain", &[plain.addr()]),
        cluster("opted_in", &[opted_in.addr()]),
        cluster("half_dead", &[dead, alive.addr()]),
    );
    let proxy = Proxy::start(&yaml).await?;
    let mut c = HttpClient::connect(proxy.addr(), Proto::H1).await?;
    let form = bytes::Bytes::from_static(b"order=42&qty=1");
    let send = |c: &HttpClient, method: &str, path: &str| {
        c.request(method, path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body::full(form.clone()))
    };

    // 503 from the app: POST and PATCH may have done something, not retried.
    for method in ["POST", "PATCH"] {
        let before = plain.served();
        let req = send(&c, method, "/plain/order")?;
        let (parts, _) = c.exchange(req).await?;
        assert_eq!(parts.status, 503);
        assert_eq!(
            plain.served() - before,
            1,
            "{method} answered 503 by the app must not be retried"
        );
    }
    // The control: an idempotent method is.
    let before = plain.served();
    let req = send(&c, "PUT", "/plain/order")?;
    let (parts, _) = c.exchange(req).await?;
    assert_eq!(parts.status, 503);
    assert_eq!(plain.served() - before, 3, "PUT is retried on 503");

    // The route opts in: POST is retried on 503, the same body every time.
    let req = send(&c, "POST", "/opted-in/order")?;
    let (parts, _) = c.exchange(req).await?;
    assert_eq!(parts.status, 503);
    let seen = opted_in.seen();
    assert_eq!(
        seen.iter().map(|s| s.attempt).collect::<Vec<_>>(),
        vec![Some(1), Some(2), Some(3)],
        "non_idempotent: true retries POST"
    );
    assert!(seen.iter().all(|s| s.body == Digest::of(&form)));

    // A connect failure never reached the app: POST is retried elsewhere.
    for i in 0..6 {
        let req = send(&c, "POST", &format!("/half-dead/{i}"))?;
        let (parts, body) = c.exchange(req).await?;
        assert_eq!(
            parts.status,
            200,
            "POST {i}: {:?} {}",
            header_str(&parts.headers, "x-skiff-error"),
            body.text()
        );
    }
    let connect_failures = proxy
        .metric(
            "skiff_upstream_attempts_total",
            &[("cluster", "half_dead"), ("result", "connect_failure")],
        )
        .await?;
    assert!(
        connect_failures >= 1.0,
        "the dead endpoint was tried: {connect_failures}"
    );
    let seen = alive.seen();
    assert_eq!(seen.len(), 6, "each POST reached the app once");
    assert!(seen.iter().all(|s| s.body == Digest::of(&form)));
    assert!(
        seen.iter().any(|s| s.attempt == Some(2)),
        "some POSTs were retries: {:?}",
        seen.iter().map(|s| s.attempt).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_larger_than_the_replay_buffer_is_not_retried() -> anyhow::Result<()> {
    let b = FlakyBackend::start().await?;
    b.fail_always(Failure::Status(503));
    let proxy = Setup::new("http1", [b.addr()])
        .retry(
            "{ attempts: 3, on: [5xx], backoff: { base: 1ms, max: 5ms }, replay_buffer_bytes: 1024 }",
        )
        .start()
        .await?;
    let skipped = || async {
        proxy
            .metric(
                "skiff_retries_skipped_total",
                &[("cluster", CLUSTER), ("reason", "body_too_large")],
            )
            .await
    };
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    // What, body length, frame size, tries expected.
    let cases = [
        ("512 bytes", 512u64, 512u64, 3u64),
        ("4 KiB in one frame", 4096, 4096, 1),
        ("4 KiB in 512-byte frames", 4096, 512, 1),
    ];
    let mut want_skipped = 0.0;
    for (what, len, frame, tries) in cases {
        let make = || {
            if frame == len {
                body::full(pattern(0, len as usize))
            } else {
                body::streaming_pattern(len, frame as usize, None)
            }
        };
        let before = b.seen().len();
        let req = c.request("PUT", "/upload").body(make())?;
        let (parts, _) = c.exchange(req).await?;
        assert_eq!(parts.status, 503, "{what}: the app's answer stands");
        assert_eq!(
            header_str(&parts.headers, "x-skiff-error"),
            None,
            "{what}: the app's 503"
        );
        let seen = b.seen()[before..].to_vec();
        assert_eq!(seen.len() as u64, tries, "{what}: tries");
        for s in &seen {
            assert_eq!(
                s.body,
                Digest::of_pattern(len),
                "{what}: try {:?} got the whole body",
                s.attempt
            );
        }
        if tries == 1 {
            want_skipped += 1.0;
        }
        assert_eq!(skipped().await?, want_skipped, "{what}: skipped retries");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_is_started_without_time_for_it() -> anyhow::Result<()> {
    // Every try takes 600ms and fails; the route allows 1s. After the first
    // try there is less time left than the cluster's median latency: the
    // app's 503 comes back instead of a certain timeout.
    let b = FlakyBackend::start().await?;
    b.fail_always(Failure::Status(503));
    b.set_latency(Duration::from_millis(600));
    let proxy = Setup::new("http2", [b.addr()])
        .timeout("1s")
        .retry("{ attempts: 3, on: [5xx], backoff: { base: 1ms, max: 2ms } }")
        .start()
        .await?;
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    let (status, _, error) = get(&mut c, "/slow").await?;
    assert_eq!((status, error), (503, None), "the app's answer, not a 504");
    assert_eq!(b.served(), 1, "no second try");
    let skipped = proxy
        .metric(
            "skiff_retries_skipped_total",
            &[("cluster", CLUSTER), ("reason", "deadline")],
        )
        .await?;
    assert_eq!(
        skipped, 1.0,
        "skiff_retries_skipped_total{{reason=deadline}}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_before_the_response_is_retried_but_not_one_in_the_middle_of_it(
) -> anyhow::Result<()> {
    let b = FlakyBackend::start().await?;
    let proxy = Setup::new("http2", [b.addr()])
        .retry("{ attempts: 3, on: [reset], backoff: { base: 1ms, max: 5ms } }")
        .start()
        .await?;
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;

    // Reset before any response byte: tried again.
    b.fail_next(1, Failure::Reset);
    let (status, _, error) = get(&mut c, "/reset-early").await?;
    assert_eq!((status, error), (200, None));
    assert_eq!(attempts_seen(&b), vec![Some(1), Some(2)]);

    // Reset after the head and some body went to the client: the client sees
    // the stream break; no second try.
    b.fail_next(1, Failure::ResetMidStream);
    let got = c.get("/reset-late").await;
    assert!(
        got.is_err(),
        "a response cut by the upstream must not look whole: {:?}",
        got.map(|(p, b)| (p.status, b.text()))
    );
    assert_eq!(b.served(), 3, "not retried once bytes went out");

    // gRPC alike: the call fails, once.
    let mut client = echo_client(proxy.addr()).await?;
    b.fail_next(1, Failure::ResetMidStream);
    let status = support::grpc_backend::status_of(client.unary(EchoRequest::default()).await)?;
    assert_ne!(status.code(), tonic::Code::Ok, "{status:?}");
    assert_eq!(b.served(), 4, "not retried once bytes went out");
    b.fail_next(1, Failure::Reset);
    calls_ok(&mut client, 1).await?;
    assert_eq!(b.served(), 6, "a gRPC reset before the head is retried");
    Ok(())
}

async fn retry_goes_to_the_other_endpoint(lb: &str) -> anyhow::Result<()> {
    let bad = FlakyBackend::start().await?;
    bad.fail_always(Failure::Status(503));
    let good = FlakyBackend::start().await?;
    let mut setup = Setup::new("http2", [bad.addr(), good.addr()])
        .retry(
            "{ attempts: 2, on: [5xx], backoff: { base: 1ms, max: 2ms }, \
             budget: { ratio: 1.0, min_per_second: 100 } }",
        )
        .cluster(&format!("lb: {lb}"));
    if lb == "ring_hash" {
        setup = setup.cluster("hash_header: x-user");
    }
    let proxy = setup.start().await?;
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    let mut failed = Vec::new();
    const REQUESTS: usize = 60;
    for i in 0..REQUESTS {
        let req = c
            .request("GET", &format!("/r/{i}"))
            .header("x-user", format!("user-{i}"))
            .body(body::empty())?;
        let (parts, _) = c.exchange(req).await?;
        if parts.status != 200 {
            failed.push(i);
        }
    }
    let bad_attempts = attempts_seen(&bad);
    let retried_on_good = good.seen().iter().filter(|s| s.attempt == Some(2)).count();
    eprintln!(
        "lb {lb}: bad saw {} tries, good saw {} ({retried_on_good} retries); failed: {failed:?}",
        bad.served(),
        good.served()
    );
    assert!(
        bad.served() > 0,
        "lb {lb}: the failing endpoint was never picked first"
    );
    assert!(
        failed.is_empty(),
        "lb {lb}: {} of {REQUESTS} requests failed although the other endpoint was free: {failed:?}; \
         attempt numbers at the failing endpoint: {bad_attempts:?}",
        failed.len()
    );
    assert!(
        bad_attempts.iter().all(|a| *a == Some(1)),
        "lb {lb}: a retry went back to the endpoint that just failed: {bad_attempts:?}"
    );
    assert_eq!(retried_on_good as u64, bad.served(), "lb {lb}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_avoids_the_endpoint_already_tried_round_robin() -> anyhow::Result<()> {
    retry_goes_to_the_other_endpoint("round_robin").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_avoids_the_endpoint_already_tried_random() -> anyhow::Result<()> {
    retry_goes_to_the_other_endpoint("random").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_avoids_the_endpoint_already_tried_least_request() -> anyhow::Result<()> {
    retry_goes_to_the_other_endpoint("least_request").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_avoids_the_endpoint_already_tried_ring_hash() -> anyhow::Result<()> {
    retry_goes_to_the_other_endpoint("ring_hash").await
}

// ---------------------------------------------------------------- outlier detection

/// Without a retry policy, an endpoint answering every call with
/// UNAVAILABLE is ejected after `consecutive_failures` of them.
async fn grpc_failures_eject(failure: Failure) -> anyhow::Result<()> {
    let reps = replicas(3).await?;
    let bad = &reps[0];
    bad.fail_always(failure);
    let proxy = Setup::new("http2", addrs(&reps))
        .cluster("outlier_detection: { consecutive_failures: 3, base_ejection_time: 30s }")
        .start()
        .await?;
    let mut client = echo_client(proxy.addr()).await?;
    let mut calls = 0;
    while cluster_metric(&proxy, "skiff_outlier_ejections_total").await? < 1.0 {
        ensure!(
            calls < 30,
            "{failure:?}: no ejection after {calls} calls, {} of them failed by {}",
            bad.served(),
            bad.id()
        );
        let _ = client.unary(EchoRequest::default()).await;
        calls += 1;
    }
    assert_eq!(health_of(&proxy, bad).await?, "ejected", "{failure:?}");
    let before = bad.served();
    calls_ok(&mut client, 10).await?;
    assert_eq!(bad.served(), before, "{failure:?}: ejected, yet called");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_trailers_only_counts_toward_ejection() -> anyhow::Result<()> {
    grpc_failures_eject(Failure::GrpcTrailersOnly(UNAVAILABLE)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_in_trailers_after_a_head_counts_toward_ejection() -> anyhow::Result<()> {
    grpc_failures_eject(Failure::GrpcAfterHeaders(UNAVAILABLE, Duration::ZERO)).await
}

// ---------------------------------------------------------------- circuit breaker

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_requests_the_circuit_breaker_answers_503_overflow() -> anyhow::Result<()> {
    let b = FlakyBackend::start().await?;
    b.set_black_hole(true); // hold every request until released
    let log = ScratchDir::new("resilience-breaker")?;
    let log_path = log.path().join("access.log");
    let proxy = Setup::new("http2", [b.addr()])
        .cluster("circuit_breaker: { max_requests: 2 }")
        .access_log(&log_path)
        .start()
        .await?;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..5 {
        let addr = proxy.addr();
        tasks.spawn(async move {
            let mut c = HttpClient::connect(addr, Proto::H2).await?;
            get(&mut c, &format!("/held/{i}")).await
        });
    }
    // Two are held by the app; three come back at once.
    let mut done = Vec::new();
    within(LIMIT, "three overflows", async {
        while done.len() < 3 {
            match tasks.join_next().await {
                Some(r) => done.push(r??),
                None => break,
            }
        }
        Ok(())
    })
    .await?;
    for (status, replica, error) in &done {
        assert_eq!(
            (*status, error.as_deref(), replica),
            (503, Some("overflow"), &None),
            "over the limit"
        );
    }
    // The two with a slot reach the app (perhaps after the overflows came back).
    eventually(Duration::from_secs(10), || async {
        let n = b.in_flight();
        ensure!(n == 2, "{n} requests held by the app");
        Ok(())
    })
    .await?;
    let view = proxy.cluster(CLUSTER).await?;
    assert_eq!(view["requests_in_flight"], 2, "{view}");

    // gRPC gets UNAVAILABLE, marked as the proxy's.
    let mut client = echo_client(proxy.addr()).await?;
    let status = support::grpc_backend::status_of(client.unary(EchoRequest::default()).await)?;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get("x-skiff-error")
            .and_then(|v| v.to_str().ok()),
        Some("overflow"),
        "{status:?}"
    );

    // Released, the two held ones finish; the slots are free again.
    b.set_black_hole(false);
    within(LIMIT, "held requests", async {
        while let Some(r) = tasks.join_next().await {
            let (status, _, error) = r??;
            ensure!(status == 200, "a held request got {status} {error:?}");
        }
        Ok(())
    })
    .await?;
    eventually(Duration::from_secs(10), || async {
        let view = proxy.cluster(CLUSTER).await?;
        ensure!(view["requests_in_flight"] == 0, "{view}");
        Ok(())
    })
    .await?;
    gets_ok(&proxy, 3).await?;
    assert_eq!(b.served(), 5, "2 held + 3 after");
    assert!(
        attempts_seen(&b).iter().all(Option::is_none),
        "no x-skiff-attempt-count without a retry policy"
    );
    assert_eq!(cluster_metric(&proxy, "skiff_overflow_total").await?, 4.0);
    eventually(Duration::from_secs(10), || async {
        let uo = access_lines(&log_path)
            .iter()
            .filter(|l| l["flag"] == "UO")
            .count();
        ensure!(uo == 4, "{uo} access log lines flagged UO");
        Ok(())
    })
    .await?;
    Ok(())
}

// ---------------------------------------------------------------- health

/// Wait until the gauge and `/clusters` agree on `unhealthy` endpoints and panic mode.
async fn wait_health(
    proxy: &Proxy,
    unhealthy: &[&FlakyBackend],
    panic: bool,
) -> anyhow::Result<()> {
    let want: Vec<String> = unhealthy.iter().map(|b| b.id()).collect();
    eventually(Duration::from_secs(10), || async {
        let h = health(proxy).await?;
        let bad: Vec<String> = h
            .iter()
            .filter(|(_, v)| v.as_str() == "unhealthy")
            .map(|(k, _)| k.clone())
            .collect();
        ensure!(bad == want, "unhealthy {bad:?}, want {want:?}: {h:?}");
        let gauge = endpoints_in(proxy, "unhealthy").await?;
        ensure!(
            gauge == want.len() as f64,
            "skiff_endpoints{{state=unhealthy}} {gauge}"
        );
        let healthy = endpoints_in(proxy, "healthy").await?;
        ensure!(
            healthy == (h.len() - want.len()) as f64,
            "skiff_endpoints{{state=healthy}} {healthy}"
        );
        let view = proxy.cluster(CLUSTER).await?;
        ensure!(view["panic_mode"] == panic, "panic_mode: {view}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_panic_threshold_traffic_spreads_over_every_endpoint() -> anyhow::Result<()> {
    let reps = replicas(3).await?;
    let proxy = Setup::new("http2", addrs(&reps))
        .cluster(
            "health_check: { http: { path: /healthz }, interval: 200ms, timeout: 1s, \
             unhealthy_threshold: 1, healthy_threshold: 1 }",
        )
        .cluster("panic_threshold: 50")
        .start()
        .await?;
    wait_health(&proxy, &[], false).await?;

    // 2 of 3 healthy (67%): the unhealthy one gets nothing.
    reps[0].set_healthy(false);
    wait_health(&proxy, &[&reps[0]], false).await?;
    let by = gets_ok(&proxy, 30).await?;
    assert!(
        !by.contains_key(&reps[0].id()),
        "unhealthy got traffic: {by:?}"
    );

    // 1 of 3 healthy (33% < 50%): panic, balance over all of them.
    reps[1].set_healthy(false);
    wait_health(&proxy, &[&reps[0], &reps[1]], true).await?;
    let by = gets_ok(&proxy, 60).await?;
    for r in &reps {
        assert!(
            by.get(&r.id()).is_some_and(|n| *n > 0),
            "in panic mode every endpoint gets traffic: {by:?}"
        );
    }

    // Healthy again: panic over.
    reps[0].set_healthy(true);
    reps[1].set_healthy(true);
    wait_health(&proxy, &[], false).await?;
    let by = gets_ok(&proxy, 30).await?;
    assert_eq!(by.len(), 3, "{by:?}");
    Ok(())
}

/// `n` gRPC calls when there is a client, else `n` GETs.
async fn traffic(
    proxy: &Proxy,
    client: Option<&mut EchoClient<Channel>>,
    n: usize,
) -> anyhow::Result<BTreeMap<String, u64>> {
    match client {
        Some(c) => calls_ok(c, n).await,
        None => gets_ok(proxy, n).await,
    }
}

async fn health_checks_move_traffic(grpc: bool) -> anyhow::Result<()> {
    let reps = replicas(3).await?;
    let (protocol, probe) = if grpc {
        ("http2", "grpc: { service: skiff.test.Echo }")
    } else {
        ("http1", "http: { path: /healthz }")
    };
    let proxy = Setup::new(protocol, addrs(&reps))
        .cluster(&format!(
            "health_check: {{ {probe}, interval: 200ms, timeout: 1s, unhealthy_threshold: 2, healthy_threshold: 2 }}"
        ))
        .start()
        .await?;
    let mut client = if grpc {
        Some(echo_client(proxy.addr()).await?)
    } else {
        None
    };
    wait_health(&proxy, &[], false).await?;
    let by = traffic(&proxy, client.as_mut(), 30).await?;
    assert_eq!(by.len(), 3, "all three serve at first: {by:?}");

    let flaky = &reps[2];
    flaky.set_healthy(false);
    wait_health(&proxy, &[flaky], false).await?;
    let by = traffic(&proxy, client.as_mut(), 30).await?;
    assert!(
        !by.contains_key(&flaky.id()),
        "unhealthy got traffic: {by:?}"
    );

    flaky.set_healthy(true);
    wait_health(&proxy, &[], false).await?;
    let by = traffic(&proxy, client.as_mut(), 30).await?;
    assert!(
        by.contains_key(&flaky.id()),
        "recovered endpoint back in: {by:?}"
    );

    for r in &reps {
        assert!(r.health_checks() >= 2, "{} was checked", r.id());
        if grpc {
            let services = r.health_services();
            assert!(
                services.iter().all(|s| s == "skiff.test.Echo"),
                "the configured service is asked about: {services:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_checks_take_an_endpoint_out_and_back() -> anyhow::Result<()> {
    health_checks_move_traffic(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_take_an_endpoint_out_and_back() -> anyhow::Result<()> {
    health_checks_move_traffic(true).await
}
