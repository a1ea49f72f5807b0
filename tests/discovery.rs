//! DNS discovery end to end: a DNS server inside the test whose records change
//! while traffic flows, replicas of one service on 127.0.0.2, 127.0.0.3, …
//! sharing a port (the pods behind a headless service), and the proxy between
//! a client and them. The set changes under load and no request may fail.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context as _};
use tokio::task::JoinHandle;

use support::dns::{Behaviour, DnsServer, Srv};
use support::http_backend::HttpBackend;
use support::http_client::{grpc_request, header_str, HttpClient};
use support::replica::{replicas, Replica};
use support::{eventually, metric_value, within, Proto, Proxy};

/// The service name the `web` cluster resolves.
const NAME: &str = "web.skiff.test";
/// The SRV name of the same service.
const SRV_NAME: &str = "_http._tcp.web.skiff.test";
/// `dns.refresh` of the tests (records carry a TTL of 1s too).
const REFRESH: Duration = Duration::from_secs(1);
/// How soon the traffic must follow a change of records (issue 4: refresh + 1s).
const FOLLOW: Duration = Duration::from_secs(REFRESH.as_secs() + 1);

// ---------------------------------------------------------------- traffic

/// What the clients saw.
#[derive(Clone, Debug, Default)]
struct Tally {
    /// Successful responses by the replica that answered.
    by_replica: BTreeMap<String, u64>,
    total: u64,
    failures: Vec<String>,
}

impl Tally {
    fn of(&self, r: &Replica) -> u64 {
        self.by_replica.get(&r.id()).copied().unwrap_or(0)
    }
}

/// Clients sending `GET /` through the proxy back to back, one over
/// HTTP/1.1 and one over HTTP/2, noting who answered and every failure.
struct Traffic {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Traffic {
    fn start(proxy: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let tasks = [Proto::H1, Proto::H2]
            .into_iter()
            .map(|p| tokio::spawn(client_loop(proxy, p, stop.clone(), tally.clone())))
            .collect();
        Traffic { stop, tally, tasks }
    }

    fn tally(&self) -> Tally {
        self.tally.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Wait until `n` more responses arrived (bounded).
    async fn wait_more(&self, n: u64) -> anyhow::Result<Tally> {
        let start = self.tally().total;
        eventually(Duration::from_secs(20), || async {
            let t = self.tally();
            ensure!(
                t.total >= start + n,
                "{} of {n} more responses; {} failed, last: {:?}",
                t.total - start,
                t.failures.len(),
                t.failures.last()
            );
            Ok(t)
        })
        .await
    }

    /// Wait until `n` more responses arrived; every one of `replicas` must
    /// have answered some of them (`when`: what the test is doing).
    async fn wait_each_answers(
        &self,
        n: u64,
        replicas: &[Replica],
        when: &str,
    ) -> anyhow::Result<()> {
        let a = self.tally();
        let b = self.wait_more(n).await?;
        for x in replicas {
            ensure!(
                b.of(x) > a.of(x),
                "{when}: {} got no traffic: {b:?}",
                x.id()
            );
        }
        Ok(())
    }

    /// Wait until `n` more requests were answered, well or not (bounded).
    async fn wait_attempts(&self, n: u64) -> anyhow::Result<Tally> {
        let count = |t: &Tally| t.total + t.failures.len() as u64;
        let start = count(&self.tally());
        eventually(Duration::from_secs(20), || async {
            let t = self.tally();
            ensure!(
                count(&t) >= start + n,
                "{} of {n} more requests",
                count(&t) - start
            );
            Ok(t)
        })
        .await
    }

    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(35), t).await;
        }
        self.tally.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

async fn client_loop(
    proxy: SocketAddr,
    proto: Proto,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) {
    let mut client: Option<HttpClient> = None;
    while !stop.load(Ordering::SeqCst) {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match HttpClient::connect(proxy, proto).await {
                Ok(c) => client.insert(c),
                Err(e) => {
                    note(&tally, Err(format!("{proto:?} connect: {e:#}")));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let outcome = match c.get("/").await {
            Ok((parts, _)) if parts.status == 200 => {
                match header_str(&parts.headers, "x-replica") {
                    Some(r) => Ok(r.to_string()),
                    None => Err(format!("{proto:?}: 200 without x-replica: {parts:?}")),
                }
            }
            Ok((parts, body)) => Err(format!(
                "{proto:?}: {} x-skiff-error={:?} {:?}",
                parts.status,
                header_str(&parts.headers, "x-skiff-error"),
                body.text()
            )),
            Err(e) => {
                client = None;
                Err(format!("{proto:?}: {e:#}"))
            }
        };
        note(&tally, outcome);
        // A breath between requests leaves CPU for the proxy's discovery.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn note(tally: &Mutex<Tally>, outcome: Result<String, String>) {
    if let Ok(mut t) = tally.lock() {
        match outcome {
            Ok(r) => {
                t.total += 1;
                *t.by_replica.entry(r).or_default() += 1;
            }
            Err(e) => t.failures.push(e),
        }
    }
}

// ---------------------------------------------------------------- proxy

/// A proxy whose routes send `/static/` to a static cluster at `static_ep`
/// (when given) and everything else to the `dns:` cluster `web`, whose
/// settings are `web` (YAML lines at cluster depth).
fn yaml(dns: &DnsServer, web: &str, static_ep: Option<SocketAddr>, runtime: &str) -> String {
    let mut y = format!(
        "admin:\n  address: 127.0.0.1:0\n{runtime}resolver:\n  servers: [\"{}\"]\n",
        dns.addr()
    );
    y += "listeners:\n  - name: main\n    address: 127.0.0.1:0\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n";
    if static_ep.is_some() {
        y += "          - match: { prefix: \"/static/\" }\n            cluster: static\n            timeout: 10s\n";
    }
    y += "          - match: { prefix: \"/\" }\n            cluster: web\n            timeout: 10s\n";
    y += "clusters:\n  - name: web\n    protocol: http2\n";
    for line in web.lines() {
        y += &format!("    {line}\n");
    }
    if let Some(ep) = static_ep {
        y += &format!("  - name: static\n    protocol: http1\n    endpoints: [\"{ep}\"]\n");
    }
    y
}

/// `dns:` of `web` for `NAME` at `port`, refreshed every second.
fn dns_a(port: u16) -> String {
    format!("dns: {{ name: {NAME}, port: {port}, refresh: 1s }}")
}

/// A DNS server answering `NAME` with `ips`, TTL 1s.
async fn dns_with(ips: &[Ipv4Addr]) -> anyhow::Result<DnsServer> {
    let dns = DnsServer::empty().await?;
    dns.set_ttl(1);
    dns.set_a(NAME, ips);
    Ok(dns)
}

/// The proxy of [`yaml`] with `web` on [`dns_a`]`(port)`, once ready.
async fn ready_proxy(dns: &DnsServer, port: u16) -> anyhow::Result<Proxy> {
    let proxy = Proxy::start(&yaml(dns, &dns_a(port), None, "")).await?;
    proxy.wait_ready().await?;
    Ok(proxy)
}

/// The endpoint addresses of cluster `name` in `/clusters`, with their weights.
async fn endpoints(proxy: &Proxy, name: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    proxy
        .endpoints(name, |e| e["weight"].as_u64().unwrap_or(0))
        .await
}

/// `(replica, weight)` pairs as [`endpoints`] shows them.
fn weights(eps: &[(&Replica, u64)]) -> BTreeMap<String, u64> {
    eps.iter().map(|(r, w)| (r.id(), *w)).collect()
}

/// Wait until `/clusters` shows exactly `want` (replica, weight) for `web`.
async fn wait_weights(proxy: &Proxy, want: &[(&Replica, u64)]) -> anyhow::Result<()> {
    let want = weights(want);
    eventually(FOLLOW, || async {
        let eps = endpoints(proxy, "web").await?;
        ensure!(eps == want, "/clusters shows {eps:?}, want {want:?}");
        Ok(())
    })
    .await
}

/// Wait until `/clusters` lists exactly `want` (addresses) for `web`.
async fn wait_endpoints(proxy: &Proxy, want: &[&Replica], limit: Duration) -> anyhow::Result<()> {
    let want: BTreeSet<String> = want.iter().map(|r| r.id()).collect();
    eventually(limit, || async {
        let got: BTreeSet<String> = endpoints(proxy, "web").await?.into_keys().collect();
        ensure!(got == want, "/clusters shows {got:?}, want {want:?}");
        Ok(())
    })
    .await
}

/// `n` GETs of `/` on `c`, each answered 200, counted by the replica that answered.
async fn count_replies(c: &mut HttpClient, n: usize) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut seen = BTreeMap::<String, u32>::new();
    for _ in 0..n {
        let (parts, body) = c.get("/").await?;
        ensure!(parts.status == 200, "{parts:?} {}", body.text());
        *seen
            .entry(
                header_str(&parts.headers, "x-replica")
                    .unwrap_or("?")
                    .to_string(),
            )
            .or_default() += 1;
    }
    Ok(seen)
}

async fn dns_failures(proxy: &Proxy) -> anyhow::Result<f64> {
    proxy
        .metric(
            "skiff_dns_resolutions_total",
            &[("cluster", "web"), ("result", "failure")],
        )
        .await
}

// ---------------------------------------------------------------- tests

/// Scale 1 → 3 → 2 under load with `upstream` (http1 | http2) toward the replicas.
async fn scale_1_3_2(upstream: &str) -> anyhow::Result<()> {
    let mut r = replicas(3).await?;
    let dns = dns_with(&[r[0].v4()]).await?;
    let y = yaml(&dns, &dns_a(r[0].addr().port()), None, "")
        .replace("protocol: http2", &format!("protocol: {upstream}"));
    let proxy = Proxy::start(&y).await?;
    proxy.wait_ready().await?;

    let traffic = Traffic::start(proxy.addr());
    let t = traffic.wait_more(50).await?;
    ensure!(t.of(&r[0]) >= 50, "one replica: all traffic to it: {t:?}");

    // Scale out, 1 → 3: both new replicas get traffic within refresh + 1s.
    let before = traffic.tally();
    dns.set_a(NAME, &[r[0].v4(), r[1].v4(), r[2].v4()]);
    eventually(FOLLOW, || async {
        let t = traffic.tally();
        for new in &r[1..] {
            ensure!(
                t.of(new) > before.of(new),
                "no traffic yet to {}: {t:?}",
                new.id()
            );
        }
        Ok(())
    })
    .await
    .context("scale out 1 → 3 not followed within refresh + 1s")?;
    let a = traffic.tally();
    let b = traffic.wait_more(300).await?;
    for x in &r {
        let share = b.of(x) - a.of(x);
        ensure!(
            share >= 60,
            "3 replicas, round robin: {} got {share} of 300",
            x.id()
        );
    }

    // Scale in, 3 → 2: the first replica leaves (it keeps serving, as a
    // terminating pod does, so a request it gets is not a failure but a miss).
    dns.set_a(NAME, &[r[1].v4(), r[2].v4()]);
    wait_endpoints(&proxy, &[&r[1], &r[2]], FOLLOW)
        .await
        .context("scale in 3 → 2 not followed within refresh + 1s")?;
    // Requests that picked it just before the change may still arrive.
    traffic.wait_more(20).await?;
    let gone = r[0].served();
    let a = traffic.tally();
    let b = traffic.wait_more(300).await?;
    assert_eq!(
        r[0].served(),
        gone,
        "the removed replica still gets requests"
    );
    for x in &r[1..] {
        ensure!(
            b.of(x) - a.of(x) >= 90,
            "{} got {} of 300",
            x.id(),
            b.of(x) - a.of(x)
        );
    }

    // The pod is gone for good (listener and connections): nothing notices.
    drop(r.remove(0));
    traffic
        .wait_each_answers(200, &r, "with the pod gone")
        .await?;

    let t = traffic.stop().await;
    assert!(
        t.failures.is_empty(),
        "{upstream} upstream: {} of {} requests failed while the replicas changed; first: {:?}",
        t.failures.len(),
        t.total + t.failures.len() as u64,
        t.failures.iter().take(5).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_dns_as_replicas_scale_1_3_2_without_a_failed_request_http2(
) -> anyhow::Result<()> {
    scale_1_3_2("http2").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_dns_as_replicas_scale_1_3_2_without_a_failed_request_http1(
) -> anyhow::Result<()> {
    scale_1_3_2("http1").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_shorter_than_refresh_brings_the_next_lookup_sooner() -> anyhow::Result<()> {
    let r = replicas(2).await?;
    let dns = dns_with(&[r[0].v4()]).await?;
    let web = format!(
        "dns: {{ name: {NAME}, port: {}, refresh: 60s }}",
        r[0].addr().port()
    );
    let proxy = Proxy::start(&yaml(&dns, &web, None, "")).await?;
    proxy.wait_ready().await?;
    wait_endpoints(&proxy, &[&r[0]], Duration::from_secs(5)).await?;

    dns.set_a(NAME, &[r[1].v4()]);
    // The TTL (1s) is the refresh here, not the 60s of the config.
    wait_endpoints(&proxy, &[&r[1]], FOLLOW)
        .await
        .context("a 1s TTL must bring the next lookup within 1s + 1s, not after refresh: 60s")?;
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    let (parts, _) = c.get("/").await?;
    assert_eq!(
        header_str(&parts.headers, "x-replica"),
        Some(r[1].id().as_str())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_of_zero_does_not_make_the_lookups_spin() -> anyhow::Result<()> {
    let r = replicas(1).await?;
    let dns = DnsServer::empty().await?;
    dns.set_ttl(0);
    dns.set_a(NAME, &[r[0].v4()]);
    let web = format!(
        "dns: {{ name: {NAME}, port: {}, refresh: 5s }}",
        r[0].addr().port()
    );
    let proxy = Proxy::start(&yaml(&dns, &web, None, "")).await?;
    proxy.wait_ready().await?;

    // Lookups are floored at 500ms: over 3s at most ~6 lookups (A and AAAA
    // each), not thousands; and some, since TTL 0 asks for fresh answers.
    let before = dns.queries(NAME);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let asked = dns.queries(NAME) - before;
    assert!(
        (2..=20).contains(&asked),
        "{asked} queries in 3s with TTL 0 (want a lookup every ~500ms: ~12)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_and_aaaa_records_both_become_endpoints() -> anyhow::Result<()> {
    // One replica on 127.0.0.2:P, one on [::1]:P.
    let mut pair = None;
    for _ in 0..10 {
        let v4 = Replica::start(SocketAddr::from(([127, 0, 0, 2], 0))).await?;
        let six = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), v4.addr().port());
        if let Ok(v6) = Replica::start(six).await {
            pair = Some((v4, v6));
            break;
        }
    }
    let (v4, v6) = pair.ok_or_else(|| anyhow!("no port free on 127.0.0.2 and ::1"))?;
    let dns = DnsServer::empty().await?;
    dns.set_ttl(1);
    dns.set_ips(NAME, &[v4.ip(), v6.ip()]);
    let proxy = ready_proxy(&dns, v4.addr().port()).await?;
    wait_endpoints(&proxy, &[&v4, &v6], Duration::from_secs(5)).await?;

    let mut c = HttpClient::connect(proxy.addr(), Proto::H1).await?;
    let seen = count_replies(&mut c, 20).await?;
    assert_eq!(seen.get(&v4.id()), Some(&10), "{seen:?}");
    assert_eq!(seen.get(&v6.id()), Some(&10), "{seen:?}");

    // No A records left, only AAAA: the IPv6 endpoint alone, not an empty cluster.
    dns.set_a(NAME, &[]);
    wait_endpoints(&proxy, &[&v6], FOLLOW).await?;
    let (parts, _) = c.get("/").await?;
    assert_eq!(
        header_str(&parts.headers, "x-replica"),
        Some(v6.id().as_str())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_ports_weights_and_priorities() -> anyhow::Result<()> {
    // Each replica on its own port: the ports can only come from SRV.
    let r1 = Replica::start(SocketAddr::from(([127, 0, 0, 2], 0))).await?;
    let r2 = Replica::start(SocketAddr::from(([127, 0, 0, 3], 0))).await?;
    let r3 = Replica::start(SocketAddr::from(([127, 0, 0, 4], 0))).await?;
    let dns = DnsServer::empty().await?;
    dns.set_ttl(1);
    for (host, r) in [
        ("r1.web.skiff.test", &r1),
        ("r2.web.skiff.test", &r2),
        ("r3.web.skiff.test", &r3),
    ] {
        dns.set_a(host, &[r.v4()]);
    }
    dns.set_srv(
        SRV_NAME,
        &[
            Srv::new(10, 3, r1.addr().port(), "r1.web.skiff.test"),
            Srv::new(10, 1, r2.addr().port(), "r2.web.skiff.test"),
            // A worse priority: used only when every better one is gone.
            Srv::new(20, 1, r3.addr().port(), "r3.web.skiff.test"),
        ],
    );
    let web = format!("dns: {{ srv: {SRV_NAME}, refresh: 1s }}");
    let proxy = Proxy::start(&yaml(&dns, &web, None, "")).await?;
    proxy.wait_ready().await?;
    let eps = endpoints(&proxy, "web").await?;
    assert_eq!(
        eps,
        weights(&[(&r1, 3), (&r2, 1)]),
        "endpoints (address → weight) from the best SRV priority"
    );

    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    let seen = count_replies(&mut c, 400).await?;
    let (n1, n2) = (
        seen.get(&r1.id()).copied().unwrap_or(0),
        seen.get(&r2.id()).copied().unwrap_or(0),
    );
    // Weighted round robin 3:1 → 300:100; allow 10% of the total.
    assert!(
        (260..=340).contains(&n1) && n1 + n2 == 400,
        "SRV weights 3:1 over 400 requests: got {seen:?}"
    );
    assert_eq!(
        r3.served(),
        0,
        "priority 20 must get nothing while priority 10 answers"
    );

    // Without glue in the answer, the targets are looked up one by one; the
    // set follows the new records (r1 leaves, r3 joins at weight 2).
    dns.set_srv_glue(false);
    dns.set_srv(
        SRV_NAME,
        &[
            Srv::new(10, 1, r2.addr().port(), "r2.web.skiff.test"),
            Srv::new(10, 2, r3.addr().port(), "r3.web.skiff.test"),
        ],
    );
    wait_weights(&proxy, &[(&r2, 1), (&r3, 2)]).await?;

    // Only the weights change: the same endpoints take the new ones.
    dns.set_srv(
        SRV_NAME,
        &[
            Srv::new(10, 4, r2.addr().port(), "r2.web.skiff.test"),
            Srv::new(10, 1, r3.addr().port(), "r3.web.skiff.test"),
        ],
    );
    wait_weights(&proxy, &[(&r2, 4), (&r3, 1)]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_uses_the_next_priority_when_no_target_of_the_best_one_resolves() -> anyhow::Result<()>
{
    // RFC 2782: a client tries the lowest-numbered priority it can reach. A
    // target with no address cannot be reached, so priority 20 serves.
    let backup = Replica::start(SocketAddr::from(([127, 0, 0, 3], 0))).await?;
    let dns = DnsServer::empty().await?;
    dns.set_ttl(1);
    dns.set_a("backup.web.skiff.test", &[backup.v4()]);
    dns.set_srv(
        SRV_NAME,
        &[
            // A stale record: its target name is gone (NXDOMAIN).
            Srv::new(10, 1, backup.addr().port(), "gone.web.skiff.test"),
            Srv::new(20, 1, backup.addr().port(), "backup.web.skiff.test"),
        ],
    );
    let web = format!("dns: {{ srv: {SRV_NAME}, refresh: 1s }}");
    let proxy = Proxy::start(&yaml(&dns, &web, None, "")).await?;
    proxy.wait_ready().await?;
    wait_endpoints(&proxy, &[&backup], Duration::from_secs(5))
        .await
        .context("the priority-20 target must serve while no priority-10 target resolves")?;
    let mut c = HttpClient::connect(proxy.addr(), Proto::H1).await?;
    let (parts, body) = c.get("/").await?;
    assert_eq!(parts.status, 200, "{}", body.text());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_without_records_falls_back_to_a_records_when_name_and_port_are_given(
) -> anyhow::Result<()> {
    let r = replicas(3).await?;
    let port = r[0].addr().port();
    let dns = dns_with(&[r[0].v4()]).await?;
    // `web` may fall back; `bare` (srv only) has nothing to fall back to.
    let web = format!("dns: {{ srv: {SRV_NAME}, name: {NAME}, port: {port}, refresh: 1s }}");
    let mut y = yaml(&dns, &web, None, "");
    y = y.replace(
        "          - match: { prefix: \"/\" }",
        "          - match: { prefix: \"/bare/\" }\n            cluster: bare\n          - match: { prefix: \"/\" }",
    );
    y += &format!(
        "  - name: bare\n    protocol: http2\n    dns: {{ srv: {SRV_NAME}, refresh: 1s }}\n"
    );
    let proxy = Proxy::start(&y).await?;
    proxy.wait_ready().await?;

    // The SRV name does not exist (NXDOMAIN): A records of `name`, at `port`.
    wait_endpoints(&proxy, &[&r[0]], Duration::from_secs(5)).await?;
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    let (parts, _) = c.get("/").await?;
    assert_eq!(
        header_str(&parts.headers, "x-replica"),
        Some(r[0].id().as_str())
    );
    assert!(
        endpoints(&proxy, "bare").await?.is_empty(),
        "srv only, no records: empty"
    );
    let (parts, _) = c.get("/bare/x").await?;
    assert_eq!(parts.status, 503, "an empty cluster: {parts:?}");

    // The SRV name exists without SRV records (NOERROR, no answer): still A,
    // and the A records are followed as they change.
    dns.set_a(SRV_NAME, &[]);
    dns.set_a(NAME, &[r[1].v4()]);
    wait_endpoints(&proxy, &[&r[1]], FOLLOW).await?;

    // SRV records appear: they win over the fallback.
    dns.set_a("r3.web.skiff.test", &[r[2].v4()]);
    dns.set_srv(SRV_NAME, &[Srv::new(10, 1, port, "r3.web.skiff.test")]);
    wait_endpoints(&proxy, &[&r[2]], FOLLOW).await?;
    let (parts, _) = c.get("/").await?;
    assert_eq!(
        header_str(&parts.headers, "x-replica"),
        Some(r[2].id().as_str())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lookup_keeps_the_last_endpoints_and_counts_the_failure() -> anyhow::Result<()> {
    let r = replicas(2).await?;
    let dns = dns_with(&[r[0].v4(), r[1].v4()]).await?;
    let proxy = ready_proxy(&dns, r[0].addr().port()).await?;
    let traffic = Traffic::start(proxy.addr());
    traffic.wait_more(50).await?;
    ensure!(dns_failures(&proxy).await? == 0.0, "no failure yet");

    // SERVFAIL: counted as failures, endpoints kept, traffic flows to both.
    dns.set_behaviour(Behaviour::ServFail);
    eventually(Duration::from_secs(10), || async {
        let f = dns_failures(&proxy).await?;
        ensure!(
            f >= 2.0,
            "skiff_dns_resolutions_total{{result=\"failure\"}} = {f}"
        );
        Ok(())
    })
    .await?;
    traffic
        .wait_each_answers(200, &r, "during SERVFAIL")
        .await?;
    wait_endpoints(&proxy, &[&r[0], &r[1]], Duration::from_secs(1)).await?;
    let healthy = proxy
        .metric(
            "skiff_endpoints",
            &[("cluster", "web"), ("state", "healthy")],
        )
        .await?;
    assert_eq!(
        healthy, 2.0,
        "skiff_endpoints{{state=\"healthy\"}} during SERVFAIL"
    );

    // No answer at all (a dead server): the lookups time out, same outcome.
    let before = dns_failures(&proxy).await?;
    dns.set_behaviour(Behaviour::Silent);
    eventually(Duration::from_secs(20), || async {
        let f = dns_failures(&proxy).await?;
        ensure!(
            f > before,
            "no failure counted for a silent server yet ({f})"
        );
        Ok(())
    })
    .await?;
    traffic
        .wait_each_answers(200, &r, "while DNS is silent")
        .await?;

    // DNS answers again, with one replica fewer: followed.
    dns.set_a(NAME, &[r[1].v4()]);
    dns.set_behaviour(Behaviour::Answer);
    wait_endpoints(&proxy, &[&r[1]], Duration::from_secs(15)).await?;

    let t = traffic.stop().await;
    assert!(
        t.failures.is_empty(),
        "{} requests failed while DNS was failing; first: {:?}",
        t.failures.len(),
        t.failures.iter().take(5).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_empties_the_cluster_and_other_clusters_keep_working() -> anyhow::Result<()> {
    let r = replicas(1).await?;
    let static_backend = HttpBackend::start().await?;
    let dns = dns_with(&[r[0].v4()]).await?;
    let proxy = Proxy::start(&yaml(
        &dns,
        &dns_a(r[0].addr().port()),
        Some(static_backend.addr()),
        "",
    ))
    .await?;
    proxy.wait_ready().await?;
    let mut h1 = HttpClient::connect(proxy.addr(), Proto::H1).await?;
    let (parts, _) = h1.get("/").await?;
    assert_eq!(parts.status, 200);

    dns.remove(NAME);
    eventually(FOLLOW, || async {
        ensure!(
            endpoints(&proxy, "web").await?.is_empty(),
            "web still has endpoints"
        );
        Ok(())
    })
    .await
    .context("NXDOMAIN must empty the cluster within refresh + 1s")?;

    for proto in [Proto::H1, Proto::H2] {
        let mut c = HttpClient::connect(proxy.addr(), proto).await?;
        let (parts, body) = c.get("/x").await?;
        assert_eq!(parts.status, 503, "{proto:?}: {}", body.text());
        assert_eq!(
            header_str(&parts.headers, "x-skiff-error"),
            Some("no_healthy_upstream"),
            "{proto:?}: {:?}",
            parts.headers
        );
    }
    let mut g = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    let req = grpc_request(&g, "/skiff.test.Echo/Unary")?;
    let (parts, _) = g.exchange(req).await?;
    assert_eq!(parts.status, 200, "gRPC errors are HTTP 200: {parts:?}");
    assert_eq!(
        header_str(&parts.headers, "grpc-status"),
        Some("14"),
        "{parts:?}"
    );
    assert_eq!(
        header_str(&parts.headers, "x-skiff-error"),
        Some("no_healthy_upstream")
    );

    // The static cluster is not touched.
    for _ in 0..5 {
        let (parts, body) = h1.get("/static/ok").await?;
        assert_eq!(parts.status, 200, "static cluster: {}", body.text());
    }
    let text = proxy.metrics().await?;
    let empty = metric_value(
        &text,
        "skiff_dns_resolutions_total",
        &[("cluster", "web"), ("result", "empty")],
    );
    assert!(
        empty.is_some_and(|v| v >= 1.0),
        "result=\"empty\" counted: {empty:?}"
    );
    let healthy = metric_value(
        &text,
        "skiff_endpoints",
        &[("cluster", "web"), ("state", "healthy")],
    );
    assert_eq!(healthy, Some(0.0));
    let static_healthy = metric_value(
        &text,
        "skiff_endpoints",
        &[("cluster", "static"), ("state", "healthy")],
    );
    assert_eq!(static_healthy, Some(1.0));

    // The name comes back: so does the traffic.
    dns.set_a(NAME, &[r[0].v4()]);
    eventually(FOLLOW, || async {
        let mut c = HttpClient::connect(proxy.addr(), Proto::H1).await?;
        let (parts, _) = c.get("/").await?;
        ensure!(parts.status == 200, "still {}", parts.status);
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_first_dns_answer() -> anyhow::Result<()> {
    let r = replicas(1).await?;
    let dns = dns_with(&[r[0].v4()]).await?;
    dns.set_behaviour(Behaviour::Silent);
    let proxy = Proxy::start(&yaml(
        &dns,
        &dns_a(r[0].addr().port()),
        None,
        "runtime:\n  discovery_timeout: 60s\n",
    ))
    .await?;

    // While DNS has not answered: not ready, and it says why. Checked a few
    // times over a second and a half, long enough for lookups to be on their way.
    for _ in 0..6 {
        let (status, body) = proxy.admin_get("/ready").await?;
        assert_eq!(status, 503, "ready before any DNS answer: {body}");
        let web = proxy.cluster("web").await?;
        assert_eq!(web["discovered"], false, "{web}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ensure!(dns.queries(NAME) > 0, "the proxy never asked");

    dns.set_behaviour(Behaviour::Answer);
    proxy.wait_ready().await?;
    let web = proxy.cluster("web").await?;
    assert_eq!(web["discovered"], true, "{web}");
    wait_endpoints(&proxy, &[&r[0]], Duration::from_secs(1)).await?;
    let mut c = HttpClient::connect(proxy.addr(), Proto::H1).await?;
    let (parts, _) = c.get("/").await?;
    assert_eq!(parts.status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_the_discovery_timeout_with_the_cluster_empty() -> anyhow::Result<()> {
    let dns = DnsServer::empty().await?;
    dns.set_a(NAME, &[Ipv4Addr::new(127, 0, 0, 2)]);
    dns.set_behaviour(Behaviour::Silent);
    let proxy = Proxy::start(&yaml(
        &dns,
        &dns_a(9),
        None,
        "runtime:\n  discovery_timeout: 1s\n",
    ))
    .await?;
    let (status, body) = proxy.admin_get("/ready").await?;
    assert_eq!(status, 503, "ready before any DNS answer: {body}");

    // The start-up bound passes: ready, with the cluster empty and marked so.
    proxy.wait_ready().await?;
    let web = proxy.cluster("web").await?;
    assert_eq!(web["discovered"], false, "{web}");
    assert_eq!(web["endpoints"], serde_json::json!([]), "{web}");
    let mut c = HttpClient::connect(proxy.addr(), Proto::H1).await?;
    let (parts, _) = c.get("/").await?;
    assert_eq!(parts.status, 503);
    assert_eq!(
        header_str(&parts.headers, "x-skiff-error"),
        Some("no_healthy_upstream")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_view_and_endpoint_gauge_follow_the_set() -> anyhow::Result<()> {
    let r = replicas(3).await?;
    let dns = dns_with(&[r[0].v4(), r[1].v4()]).await?;
    let proxy = ready_proxy(&dns, r[0].addr().port()).await?;

    let steps: [&[&Replica]; 3] = [&[&r[0], &r[1]], &[&r[0], &r[1], &r[2]], &[&r[2]]];
    for step in steps {
        let ips: Vec<Ipv4Addr> = step.iter().map(|x| x.v4()).collect();
        dns.set_a(NAME, &ips);
        wait_endpoints(&proxy, step, FOLLOW).await?;
        eventually(Duration::from_secs(1), || async {
            let g = proxy
                .metric(
                    "skiff_endpoints",
                    &[("cluster", "web"), ("state", "healthy")],
                )
                .await?;
            ensure!(
                g == step.len() as f64,
                "skiff_endpoints = {g}, want {}",
                step.len()
            );
            Ok(())
        })
        .await?;
    }

    // The per-endpoint figures: address, weight, in flight, latency, total, health.
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    for _ in 0..10 {
        let (parts, _) = c.get("/").await?;
        ensure!(parts.status == 200);
    }
    let web = proxy.cluster("web").await?;
    let ep = &web["endpoints"][0];
    assert_eq!(ep["address"], r[2].id(), "{web}");
    assert_eq!(ep["weight"], 1, "{ep}");
    assert_eq!(ep["in_flight"], 0, "{ep}");
    assert!(ep["latency_ms"].as_f64().is_some_and(|l| l >= 0.0), "{ep}");
    assert!(
        ep["requests_total"].as_u64().is_some_and(|n| n >= 10),
        "{ep}"
    );
    assert_eq!(ep["health"], "healthy", "{ep}");
    let ok = proxy
        .metric(
            "skiff_dns_resolutions_total",
            &[("cluster", "web"), ("result", "success")],
        )
        .await?;
    assert!(ok >= 3.0, "result=\"success\" = {ok}");
    Ok(())
}

/// A request in flight on an endpoint that DNS removes completes, and the
/// removed endpoint's connections close after it.
async fn removed_endpoint_finishes_its_request(upstream: &str) -> anyhow::Result<()> {
    let r = replicas(2).await?;
    let dns = dns_with(&[r[0].v4()]).await?;
    let y = yaml(&dns, &dns_a(r[0].addr().port()), None, "")
        .replace("protocol: http2", &format!("protocol: {upstream}"));
    let proxy = Proxy::start(&y).await?;
    proxy.wait_ready().await?;

    let addr = proxy.addr();
    let slow = tokio::spawn(async move {
        let mut c = HttpClient::connect(addr, Proto::H2).await?;
        let (parts, body) = c.get("/?delay_ms=3000").await?;
        anyhow::Ok((parts, body.text()))
    });
    eventually(Duration::from_secs(5), || async {
        ensure!(
            r[0].served() == 1,
            "the slow request has not reached the replica"
        );
        Ok(())
    })
    .await?;

    dns.set_a(NAME, &[r[1].v4()]);
    wait_endpoints(&proxy, &[&r[1]], FOLLOW).await?;
    let mut c = HttpClient::connect(proxy.addr(), Proto::H1).await?;
    for _ in 0..5 {
        let (parts, _) = c.get("/").await?;
        assert_eq!(
            header_str(&parts.headers, "x-replica"),
            Some(r[1].id().as_str())
        );
    }

    let (parts, text) = within(Duration::from_secs(10), "the slow request", async {
        slow.await?
    })
    .await?;
    assert_eq!(
        parts.status, 200,
        "the request on the removed endpoint: {text}"
    );
    assert_eq!(
        header_str(&parts.headers, "x-replica"),
        Some(r[0].id().as_str())
    );
    assert_eq!(text, "ok");

    eventually(Duration::from_secs(5), || async {
        let n = r[0].connections();
        ensure!(
            n == 0,
            "{n} connection(s) to the removed replica still open"
        );
        Ok(())
    })
    .await
    .context("a retired endpoint's connections close once their requests end")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_endpoint_finishes_its_request_http2() -> anyhow::Result<()> {
    removed_endpoint_finishes_its_request("http2").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_endpoint_finishes_its_request_http1() -> anyhow::Result<()> {
    removed_endpoint_finishes_its_request("http1").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_dns_server_answers_like_a_real_one() -> anyhow::Result<()> {
    // The harness itself: raw queries pin what the other tests rely on.
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    let dns = DnsServer::empty().await?;
    dns.set_a(
        NAME,
        &[Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)],
    );
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let ask = |name: &str, t: RecordType| -> anyhow::Result<Vec<u8>> {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name)?, t));
        Ok(m.to_vec()?)
    };
    let mut buf = [0u8; 1500];
    for (name, t, code, answers) in [
        ("web.skiff.test.", RecordType::A, ResponseCode::NoError, 2),
        (
            "WEB.skiff.test.",
            RecordType::AAAA,
            ResponseCode::NoError,
            0,
        ),
        ("nope.skiff.test.", RecordType::A, ResponseCode::NXDomain, 0),
    ] {
        sock.send_to(&ask(name, t)?, dns.addr()).await?;
        let (n, _) = within(Duration::from_secs(2), "DNS answer", async {
            Ok(sock.recv_from(&mut buf).await?)
        })
        .await?;
        let m = Message::from_vec(&buf[..n])?;
        assert_eq!(m.metadata.response_code, code, "{name} {t}");
        assert_eq!(m.answers.len(), answers, "{name} {t}");
    }
    dns.set_behaviour(Behaviour::ServFail);
    sock.send_to(&ask("web.skiff.test.", RecordType::A)?, dns.addr())
        .await?;
    let (n, _) = within(Duration::from_secs(2), "DNS answer", async {
        Ok(sock.recv_from(&mut buf).await?)
    })
    .await?;
    assert_eq!(
        Message::from_vec(&buf[..n])?.metadata.response_code,
        ResponseCode::ServFail
    );
    assert_eq!(dns.queries(NAME), 3, "nope.skiff.test is another name");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_that_stay_keep_their_connection_across_changes() -> anyhow::Result<()> {
    let r = replicas(3).await?;
    let dns = dns_with(&[r[0].v4()]).await?;
    let proxy = ready_proxy(&dns, r[0].addr().port()).await?;
    let traffic = Traffic::start(proxy.addr());
    traffic.wait_more(50).await?;
    let first = r[0].accepted();

    // Refreshes with the same answer, then replicas joining and leaving
    // around it: its one HTTP/2 connection serves throughout.
    for set in [
        &[&r[0]][..],
        &[&r[0], &r[1]],
        &[&r[0], &r[1], &r[2]],
        &[&r[0], &r[2]],
        &[&r[0]],
    ] {
        let ips: Vec<Ipv4Addr> = set.iter().map(|x| x.v4()).collect();
        dns.set_a(NAME, &ips);
        wait_endpoints(&proxy, set, FOLLOW).await?;
        traffic.wait_more(100).await?;
    }
    let t = traffic.stop().await;
    assert!(
        t.failures.is_empty(),
        "{:?}",
        &t.failures[..t.failures.len().min(5)]
    );
    assert_eq!(
        r[0].accepted(),
        first,
        "the replica that stayed got new connections: its pool was not kept"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_comes_over_tcp() -> anyhow::Result<()> {
    // 150 A records (2.4 KB) do not fit a UDP answer: the server sets TC and
    // the resolver asks again over TCP, as for a big headless service.
    let dns = DnsServer::empty().await?;
    let ips: Vec<Ipv4Addr> = (0..150u8).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect();
    dns.set_a(NAME, &ips);
    let proxy = ready_proxy(&dns, 9).await?;
    let eps = endpoints(&proxy, "web").await?;
    assert_eq!(eps.len(), 150, "{eps:?}");
    assert!(dns.tcp_queries() > 0, "the answer never went over TCP");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_resolver_server_is_skipped_for_a_live_one() -> anyhow::Result<()> {
    let r = replicas(1).await?;
    let dead = DnsServer::empty().await?;
    dead.set_behaviour(Behaviour::Silent);
    let live = DnsServer::empty().await?;
    live.set_a(NAME, &[r[0].v4()]);
    let y = yaml(&live, &dns_a(r[0].addr().port()), None, "").replace(
        &format!("servers: [\"{}\"]", live.addr()),
        &format!("servers: [\"{}\", \"{}\"]", dead.addr(), live.addr()),
    );
    let proxy = Proxy::start(&y).await?;
    proxy.wait_ready().await?;
    let web = proxy.cluster("web").await?;
    assert_eq!(web["discovered"], true, "{web}");
    wait_endpoints(&proxy, &[&r[0]], Duration::from_secs(1)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_longer_than_refresh_does_not_delay_the_next_lookup() -> anyhow::Result<()> {
    // `refresh` is the upper bound: a record cached for 5 minutes somewhere
    // must not hold the proxy to it.
    let r = replicas(2).await?;
    let dns = DnsServer::empty().await?;
    dns.set_ttl(300);
    dns.set_a(NAME, &[r[0].v4()]);
    let proxy = ready_proxy(&dns, r[0].addr().port()).await?;
    wait_endpoints(&proxy, &[&r[0]], Duration::from_secs(1)).await?;
    dns.set_a(NAME, &[r[1].v4()]);
    wait_endpoints(&proxy, &[&r[1]], FOLLOW)
        .await
        .context("refresh: 1s must win over a TTL of 300s")?;
    Ok(())
}

/// A reload that changes a `dns:` cluster's settings must not drop its
/// endpoints: the rebuilt cluster needs them before it takes traffic (Envoy
/// "warms" a new cluster the same way). `dns_down`: DNS stops answering just
/// before the reload; else it answers, 300ms late.
async fn reload_keeps_a_dns_cluster_serving(dns_down: bool) -> anyhow::Result<()> {
    let r = replicas(1).await?;
    let dns = dns_with(&[r[0].v4()]).await?;
    let before = yaml(&dns, &dns_a(r[0].addr().port()), None, "");
    let after = before.replace("refresh: 1s", "refresh: 2s");
    let proxy = Proxy::start_reloading(&before).await?;
    proxy.wait_ready().await?;
    let traffic = Traffic::start(proxy.addr());
    traffic.wait_more(50).await?;

    if dns_down {
        // The running cluster keeps its endpoints through the outage...
        dns.set_behaviour(Behaviour::Silent);
    } else {
        dns.set_delay(Duration::from_millis(300));
    }
    proxy.reload(&after).await?;
    // ...and so must the one the reload builds.
    traffic.wait_attempts(200).await?;
    let t = traffic.stop().await;
    assert!(
        t.failures.is_empty(),
        "a reload changing `refresh` (DNS {}): {} of {} requests failed; first: {:?}",
        if dns_down {
            "down"
        } else {
            "answering 300ms late"
        },
        t.failures.len(),
        t.total + t.failures.len() as u64,
        t.failures.iter().take(3).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changing_a_dns_cluster_drops_no_request() -> anyhow::Result<()> {
    reload_keeps_a_dns_cluster_serving(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_a_dns_outage_keeps_the_last_endpoints() -> anyhow::Result<()> {
    reload_keeps_a_dns_cluster_serving(true).await
}
