//! Load balancing end to end, one statistical test per `lb:` policy: real
//! replicas on 127.0.0.2, 127.0.0.3, … (same port) that say who answered,
//! some made slow on purpose, and bounds on the spread rather than exact
//! counts wherever a policy draws at random.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, ensure};

use support::body;
use support::dns::DnsServer;
use support::http_client::{header_str, HttpClient};
use support::replica::{replicas, Replica};
use support::{eventually, Proto, Proxy};

// ---------------------------------------------------------------- proxy

/// A proxy with one cluster `web` (HTTP/2 upstream) behind every path;
/// `cluster` holds its other settings (YAML lines at cluster depth).
fn yaml(cluster: &str, top: &str) -> String {
    let mut y = format!("admin:\n  address: 127.0.0.1:0\n{top}");
    y += "listeners:\n  - name: main\n    address: 127.0.0.1:0\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: { prefix: \"/\" }\n            cluster: web\n            timeout: 10s\n";
    y += "clusters:\n  - name: web\n    protocol: http2\n";
    for line in cluster.lines() {
        y += &format!("    {line}\n");
    }
    y
}

/// `web` with static endpoints `(replica, weight)` and policy `lb`.
fn static_yaml(lb: &str, eps: &[(&Replica, u32)], extra: &str) -> String {
    let list: Vec<String> = eps
        .iter()
        .map(|(r, w)| format!("{{ address: \"{}\", weight: {w} }}", r.addr()))
        .collect();
    yaml(
        &format!("lb: {lb}\nendpoints: [{}]\n{extra}", list.join(", ")),
        "",
    )
}

/// Which replica answered.
fn who(parts: &http::response::Parts) -> anyhow::Result<String> {
    ensure!(parts.status == 200, "not answered by a replica: {parts:?}");
    header_str(&parts.headers, "x-replica")
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no x-replica: {parts:?}"))
}

/// Send `n` GETs over `conns` HTTP/2 connections at once (each one request
/// after another) and count the answers by replica. A failure fails the test.
async fn spread(
    proxy: SocketAddr,
    n: usize,
    conns: usize,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let next = next.clone();
        tasks.spawn(async move {
            let mut c = HttpClient::connect(proxy, Proto::H2).await?;
            let mut seen = BTreeMap::<String, u64>::new();
            while next.fetch_add(1, Ordering::SeqCst) < n {
                let (parts, _) = c.get("/").await?;
                *seen.entry(who(&parts)?).or_default() += 1;
            }
            anyhow::Ok(seen)
        });
    }
    let mut total = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        for (k, v) in r?? {
            *total.entry(k).or_default() += v;
        }
    }
    Ok(total)
}

fn count(seen: &BTreeMap<String, u64>, r: &Replica) -> u64 {
    seen.get(&r.id()).copied().unwrap_or(0)
}

// ---------------------------------------------------------------- round_robin

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_gives_every_endpoint_the_same_share() -> anyhow::Result<()> {
    let r = replicas(3).await?;
    let proxy = Proxy::start(&static_yaml(
        "round_robin",
        &[(&r[0], 1), (&r[1], 1), (&r[2], 1)],
        "",
    ))
    .await?;
    let seen = spread(proxy.addr(), 300, 3).await?;
    // A shared counter: exactly one turn each, however the requests interleave.
    for x in &r {
        assert_eq!(
            count(&seen, x),
            100,
            "300 requests over 3 equal endpoints: {seen:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_weighted_3_to_1_is_proportional_and_smooth() -> anyhow::Result<()> {
    let r = replicas(2).await?;
    let proxy = Proxy::start(&static_yaml("round_robin", &[(&r[0], 3), (&r[1], 1)], "")).await?;
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    let mut order = Vec::new();
    for _ in 0..400 {
        let (parts, _) = c.get("/").await?;
        order.push(who(&parts)?);
    }
    let heavy = order.iter().filter(|w| **w == r[0].id()).count();
    assert_eq!(heavy, 300, "weights 3:1 over 400 requests");
    // Smooth: the heavy endpoint never gets a burst longer than its weight.
    let longest = order
        .split(|w| *w == r[1].id())
        .map(<[String]>::len)
        .max()
        .unwrap_or(0);
    assert!(
        longest <= 3,
        "a run of {longest} requests to the weight-3 endpoint"
    );
    Ok(())
}

// ---------------------------------------------------------------- random

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_follows_the_weights() -> anyhow::Result<()> {
    let r = replicas(3).await?;
    let proxy = Proxy::start(&static_yaml(
        "random",
        &[(&r[0], 2), (&r[1], 1), (&r[2], 1)],
        "",
    ))
    .await?;
    let seen = spread(proxy.addr(), 2000, 4).await?;
    // Expected 1000 / 500 / 500; a standard deviation is ~22, allow ±100.
    let want = [1000u64, 500, 500];
    for (x, want) in r.iter().zip(want) {
        let got = count(&seen, x);
        assert!(
            got.abs_diff(want) <= 100,
            "weights 2:1:1 over 2000 random picks: {} got {got}, want ~{want}: {seen:?}",
            x.id()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- least_request

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_less_to_the_endpoint_that_holds_requests_longer() -> anyhow::Result<()>
{
    let r = replicas(2).await?;
    r[0].set_delay(Duration::from_millis(200));
    r[1].set_delay(Duration::from_millis(10));
    let proxy = Proxy::start(&static_yaml("least_request", &[(&r[0], 1), (&r[1], 1)], "")).await?;
    // 8 requests at a time: the slow endpoint's requests pile up in flight,
    // so it wins fewer of the comparisons (round robin would give it half).
    let seen = spread(proxy.addr(), 400, 8).await?;
    let slow = count(&seen, &r[0]);
    assert!(
        slow * 4 < 400,
        "the endpoint 20x slower got {slow} of 400 (want < 25%): {seen:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_honours_weights() -> anyhow::Result<()> {
    let r = replicas(2).await?;
    for x in &r {
        x.set_delay(Duration::from_millis(20));
    }
    let proxy = Proxy::start(&static_yaml("least_request", &[(&r[0], 3), (&r[1], 1)], "")).await?;
    // Load per unit of weight is compared: at equal speed the weight-3
    // endpoint carries about three times the requests in flight, so ~75%.
    let seen = spread(proxy.addr(), 600, 8).await?;
    let heavy = count(&seen, &r[0]);
    assert!(
        (360..=540).contains(&heavy),
        "weights 3:1 at equal speed: the weight-3 endpoint got {heavy} of 600 (want ~450): {seen:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------- peak_ewma

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_sends_most_traffic_away_from_a_10x_slower_endpoint() -> anyhow::Result<()> {
    let r = replicas(2).await?;
    r[0].set_delay(Duration::from_millis(100));
    r[1].set_delay(Duration::from_millis(10));
    let proxy = Proxy::start(&static_yaml(
        "peak_ewma",
        &[(&r[0], 1), (&r[1], 1)],
        "peak_ewma: { decay: 2s, default_rtt: 10ms }\n",
    ))
    .await?;
    let seen = spread(proxy.addr(), 300, 4).await?;
    let fast = count(&seen, &r[1]);
    assert!(
        fast * 100 > 300 * 70,
        "the fast endpoint got {fast} of 300 (want > 70%): {seen:?}"
    );

    // /clusters shows the estimates that made the choice.
    let (_, body) = proxy.admin_get("/clusters").await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let latency = |r: &Replica| {
        v["clusters"][0]["endpoints"]
            .as_array()
            .and_then(|eps| eps.iter().find(|e| e["address"] == r.id()))
            .and_then(|e| e["latency_ms"].as_f64())
    };
    let (slow_ms, fast_ms) = (latency(&r[0]), latency(&r[1]));
    assert!(
        matches!((slow_ms, fast_ms), (Some(s), Some(f)) if s > f),
        "latency estimates: slow {slow_ms:?}, fast {fast_ms:?}: {body}"
    );
    Ok(())
}

// ---------------------------------------------------------------- ring_hash

/// GET with `x-user-id: key` (or without), answered by which replica.
async fn get_as(c: &mut HttpClient, key: Option<&str>) -> anyhow::Result<String> {
    let mut req = c.request("GET", "/");
    if let Some(k) = key {
        req = req.header("x-user-id", k);
    }
    let (parts, _) = c.exchange(req.body(body::empty())?).await?;
    who(&parts)
}

/// Ask for each of `keys` again on `c`, after `leaving` left: how many
/// moved from their `home`. Only the keys `leaving` had may move.
async fn moved_keys(
    c: &mut HttpClient,
    keys: &[String],
    home: &BTreeMap<String, String>,
    leaving: &Replica,
) -> anyhow::Result<usize> {
    let mut moved = 0;
    for k in keys {
        let now = get_as(c, Some(k)).await?;
        let was = &home[k];
        if now != *was {
            moved += 1;
            assert_eq!(
                *was,
                leaving.id(),
                "{k} moved from {was} to {now}, though {was} stayed"
            );
        }
    }
    Ok(moved)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_keeps_keys_sticky_and_moves_about_one_nth_when_one_leaves() -> anyhow::Result<()>
{
    const KEYS: usize = 400;
    let r = replicas(4).await?;
    let name = "web.skiff.test";
    let dns = DnsServer::empty().await?;
    dns.set_ttl(1);
    dns.set_a(name, &r.iter().map(Replica::v4).collect::<Vec<_>>());
    let cluster = format!(
        "lb: ring_hash\nhash_header: x-user-id\ndns: {{ name: {name}, port: {}, refresh: 1s }}\n",
        r[0].addr().port()
    );
    let top = format!("resolver:\n  servers: [\"{}\"]\n", dns.addr());
    let proxy = Proxy::start(&yaml(&cluster, &top)).await?;
    proxy.wait_ready().await?;

    // Every key lands on one replica, whichever connection asks, every time.
    let keys: Vec<String> = (0..KEYS).map(|u| format!("user-{u}")).collect();
    let mut a = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    let mut b = HttpClient::connect(proxy.addr(), Proto::H1).await?;
    let mut home = BTreeMap::<String, String>::new();
    for k in &keys {
        let first = get_as(&mut a, Some(k)).await?;
        for _ in 0..2 {
            let again = get_as(&mut b, Some(k)).await?;
            assert_eq!(
                again, first,
                "{k} moved from {first} to {again} with nothing changed"
            );
        }
        home.insert(k.clone(), first);
    }
    // Keys spread over every replica: ~100 each, at least half of that.
    let mut per = BTreeMap::<String, usize>::new();
    for h in home.values() {
        *per.entry(h.clone()).or_default() += 1;
    }
    for x in &r {
        let n = per.get(&x.id()).copied().unwrap_or(0);
        assert!(n >= KEYS / 8, "{} owns {n} of {KEYS} keys: {per:?}", x.id());
    }

    // One of four leaves: only its keys move, about a quarter of them.
    let leaving = &r[3];
    dns.set_a(name, &r[..3].iter().map(Replica::v4).collect::<Vec<_>>());
    eventually(Duration::from_secs(2), || async {
        let (_, body) = proxy.admin_get("/clusters").await?;
        ensure!(!body.contains(&leaving.id()), "still listed: {body}");
        Ok(())
    })
    .await?;
    let served_before = leaving.served();
    let moved = moved_keys(&mut a, &keys, &home, leaving).await?;
    let owned = per.get(&leaving.id()).copied().unwrap_or(0);
    assert_eq!(moved, owned, "exactly the leaving replica's keys move");
    assert!(
        (KEYS / 10..=KEYS * 2 / 5).contains(&moved),
        "{moved} of {KEYS} keys moved when 1 of 4 endpoints left (want ~1/4)"
    );
    assert_eq!(
        leaving.served(),
        served_before,
        "the removed replica got requests"
    );

    // Without the header: still answered, spread at random over the rest.
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        seen.insert(get_as(&mut b, None).await?);
    }
    assert!(
        seen.len() >= 2,
        "40 requests without x-user-id all went to {seen:?}"
    );
    assert!(!seen.contains(&leaving.id()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_maps_keys_alike_in_every_proxy_whatever_the_endpoint_order() -> anyhow::Result<()>
{
    // Two sidecars of a fleet, their endpoints listed in opposite orders:
    // a key must land on the same replica through either.
    let r = replicas(4).await?;
    let forward: Vec<(&Replica, u32)> = r.iter().map(|x| (x, 1)).collect();
    let backward: Vec<(&Replica, u32)> = r.iter().rev().map(|x| (x, 1)).collect();
    let extra = "hash_header: x-user-id\n";
    let p1 = Proxy::start(&static_yaml("ring_hash", &forward, extra)).await?;
    let p2 = Proxy::start(&static_yaml("ring_hash", &backward, extra)).await?;
    let mut c1 = HttpClient::connect(p1.addr(), Proto::H2).await?;
    let mut c2 = HttpClient::connect(p2.addr(), Proto::H2).await?;
    let mut used = BTreeSet::new();
    for u in 0..100 {
        let k = format!("user-{u}");
        let (a, b) = (
            get_as(&mut c1, Some(&k)).await?,
            get_as(&mut c2, Some(&k)).await?,
        );
        assert_eq!(a, b, "{k}: one proxy sends it to {a}, the other to {b}");
        used.insert(a);
    }
    assert_eq!(used.len(), 4, "100 keys over 4 replicas used only {used:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_moves_only_the_keys_of_an_endpoint_removed_from_the_config() -> anyhow::Result<()>
{
    const KEYS: usize = 400;
    let r = replicas(4).await?;
    let extra = "hash_header: x-user-id\n";
    let all: Vec<(&Replica, u32)> = r.iter().map(|x| (x, 1)).collect();
    let proxy = Proxy::start_reloading(&static_yaml("ring_hash", &all, extra)).await?;
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    let keys: Vec<String> = (0..KEYS).map(|u| format!("user-{u}")).collect();
    let mut home = BTreeMap::<String, String>::new();
    for k in &keys {
        home.insert(k.clone(), get_as(&mut c, Some(k)).await?);
    }

    // r[1] leaves the endpoint list (not the last one: the order must not matter).
    let leaving = &r[1];
    let rest: Vec<(&Replica, u32)> = all
        .iter()
        .copied()
        .filter(|(x, _)| x.id() != leaving.id())
        .collect();
    proxy
        .reload(&static_yaml("ring_hash", &rest, extra))
        .await?;
    let moved = moved_keys(&mut c, &keys, &home, leaving).await?;
    let owned = home.values().filter(|h| **h == leaving.id()).count();
    assert_eq!(moved, owned, "exactly the removed endpoint's keys move");
    assert!(
        (KEYS / 10..=KEYS * 2 / 5).contains(&moved),
        "{moved} of {KEYS} keys moved when 1 of 4 endpoints left the config (want ~1/4)"
    );
    Ok(())
}
