//! Micro-benchmarks of the pure parts on every request's path, and of
//! loading a large config.
//!
//! Run with `cargo bench --bench micro` (add a filter to run a part, e.g.
//! `cargo bench --bench micro -- route`).
//!
//! - route lookup at 10 / 1,000 / 10,000 routes, two ways: spread over
//!   virtual hosts of 10 routes (the hash lookup of the host does the work)
//!   and all in one virtual host (first match wins, so the last route costs
//!   a scan of all);
//! - round-robin pick over 10 / 100 / 1,000 endpoints, equal and unequal weights;
//! - parse + validate of a config with 1,000 clusters and 10,000 routes;
//! - the connection and request spans, with their level off (the default
//!   `info`, as `skiff run` sets it up) against no span, and on for reference.
//! - the HTTP/1.1 head scan over a request head, and over a body it steps over;
//! - admission: a rate-limit check (a known key, and a stream of new keys
//!   up to the cap), a request with a cached JWT, and the signature checks
//!   a token costs when it is not cached yet (RS256, PS256, ES256, EdDSA).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use skiff::cluster::balance::RoundRobin;
use skiff::router::{RequestInfo, Router};

/// A config of `vhosts` virtual hosts with `per_vhost` routes each, over
/// `clusters` clusters. Route `r` of host `v` matches `/pkg{v}.Service{r}/…`:
/// by the prefix `/pkg{v}.Service{r}/`, by the prefix without its slash
/// (`bare`), or by the exact path `/pkg{v}.Service{r}/Method` (`exact`).
fn config_yaml(vhosts: usize, per_vhost: usize, clusters: usize) -> String {
    config_yaml_as(vhosts, per_vhost, clusters, "slash")
}

fn config_yaml_as(vhosts: usize, per_vhost: usize, clusters: usize, kind: &str) -> String {
    let mut y = String::from(
        "admin: { address: 127.0.0.1:0 }\nlisteners:\n  - name: bench\n    address: 127.0.0.1:0\n    virtual_hosts:\n",
    );
    for v in 0..vhosts {
        y.push_str(&format!(
            "      - name: vh{v}\n        domains: [\"svc{v}\", \"svc{v}.ns.svc.cluster.local\"]\n        routes:\n"
        ));
        for r in 0..per_vhost {
            let matcher = match kind {
                "bare" => format!("prefix: \"/pkg{v}.Service{r}\""),
                "exact" => format!("path: \"/pkg{v}.Service{r}/Method\""),
                _ => format!("prefix: \"/pkg{v}.Service{r}/\""),
            };
            y.push_str(&format!(
                "          - {{ match: {{ {matcher} }}, cluster: c{} }}\n",
                (v * per_vhost + r) % clusters
            ));
        }
    }
    y.push_str("clusters:\n");
    for c in 0..clusters {
        y.push_str(&format!(
            "  - {{ name: c{c}, protocol: http2, endpoints: [\"127.0.0.1:{}\"] }}\n",
            10_000 + c % 50_000
        ));
    }
    y
}

fn router(vhosts: usize, per_vhost: usize) -> Router<()> {
    router_as(vhosts, per_vhost, "slash")
}

fn router_as(vhosts: usize, per_vhost: usize, kind: &str) -> Router<()> {
    let yaml = config_yaml_as(vhosts, per_vhost, 10, kind);
    let config = match skiff::config::load_str(&yaml, "bench") {
        Ok(c) => c,
        Err(e) => panic!("bench config invalid: {e}"),
    };
    match Router::build(&config.listeners[0], |_| Some(())) {
        Ok(r) => r,
        Err(e) => panic!("router: {e}"),
    }
}

fn route_lookup(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let method = Method::POST;
    let mut group = c.benchmark_group("route");
    for total in [10usize, 1_000, 10_000] {
        // Spread: virtual hosts of 10 routes; ask for the last route of the last host.
        let vhosts = total / 10;
        let spread = router(vhosts, 10);
        let authority = format!("svc{}.ns.svc.cluster.local:50051", vhosts - 1);
        let path = format!("/pkg{}.Service9/Method", vhosts - 1);
        let req = RequestInfo {
            authority: &authority,
            path: &path,
            method: &method,
            headers: &headers,
        };
        assert!(spread.route(&req).is_some());
        group.bench_with_input(
            BenchmarkId::new("spread_over_vhosts", total),
            &req,
            |b, req| b.iter(|| black_box(spread.route(black_box(req)).is_some())),
        );
        drop(spread);

        // One virtual host: the last route is the worst case of first-match.
        let one = router(1, total);
        let path = format!("/pkg0.Service{}/Method", total - 1);
        let req = RequestInfo {
            authority: "svc0:50051",
            path: &path,
            method: &method,
            headers: &headers,
        };
        assert!(one.route(&req).is_some());
        group.bench_with_input(BenchmarkId::new("one_vhost_last", total), &req, |b, req| {
            b.iter(|| black_box(one.route(black_box(req)).is_some()))
        });
        let path = "/pkg0.Service0/Method";
        let req = RequestInfo { path, ..req };
        group.bench_with_input(
            BenchmarkId::new("one_vhost_first", total),
            &req,
            |b, req| b.iter(|| black_box(one.route(black_box(req)).is_some())),
        );
        drop(one);

        // One virtual host, the other two kinds of path match.
        let path = format!("/pkg0.Service{}/Method", total - 1);
        let req = RequestInfo { path: &path, ..req };
        for kind in ["bare", "exact"] {
            let one = router_as(1, total, kind);
            assert!(one.route(&req).is_some());
            group.bench_with_input(
                BenchmarkId::new(format!("one_vhost_last_{kind}"), total),
                &req,
                |b, req| b.iter(|| black_box(one.route(black_box(req)).is_some())),
            );
        }
    }
    group.finish();
}

fn balance_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_robin_pick");
    for n in [10usize, 100, 1_000] {
        let equal = RoundRobin::new(&vec![1; n]);
        group.bench_with_input(BenchmarkId::new("equal_weights", n), &equal, |b, rr| {
            b.iter(|| black_box(rr.pick()))
        });
        let weights: Vec<u32> = (0..n).map(|i| 1 + (i % 5) as u32).collect();
        let weighted = RoundRobin::new(&weights);
        group.bench_with_input(
            BenchmarkId::new("unequal_weights", n),
            &weighted,
            |b, rr| b.iter(|| black_box(rr.pick())),
        );
    }
    group.finish();
}

/// Every policy's `pick()` through the cluster's balancer, over real endpoints.
fn policy_pick(c: &mut Criterion) {
    use skiff::cluster::balance::{hash_key, Balancer};
    use skiff::cluster::{Endpoint, EwmaSettings};
    use skiff::config::LbPolicy;
    use skiff::resilience::breaker::Limits;
    use skiff::upstream::{Connector, PoolConfig};
    use std::sync::Arc;
    use std::time::Duration;

    let pool = PoolConfig {
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(60),
        max_idle: 0,
        limits: Arc::new(Limits::unlimited()),
        connector: Connector::tcp(),
    };
    let mut group = c.benchmark_group("pick");
    for n in [10usize, 100, 1_000] {
        let endpoints: Vec<Arc<Endpoint>> = (0..n)
            .map(|i| {
                let addr =
                    std::net::SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8], 8080));
                Arc::new(Endpoint::new(
                    addr,
                    1 + (i % 3) as u32,
                    pool.clone(),
                    &EwmaSettings::default(),
                ))
            })
            .collect();
        for (name, policy) in [
            ("round_robin", LbPolicy::RoundRobin),
            ("random", LbPolicy::Random),
            ("least_request", LbPolicy::LeastRequest),
            ("peak_ewma", LbPolicy::PeakEwma),
            ("ring_hash", LbPolicy::RingHash),
        ] {
            let balancer = Balancer::new(policy, &endpoints);
            let hash = Some(hash_key(b"user-42"));
            group.bench_with_input(BenchmarkId::new(name, n), &balancer, |b, bal| {
                b.iter(|| black_box(bal.pick(black_box(&endpoints), hash)))
            });
        }
    }
    group.finish();
}

fn config_load(c: &mut Criterion) {
    let yaml = config_yaml(1_000, 10, 1_000);
    let mut group = c.benchmark_group("config");
    group.sample_size(10);
    group.bench_function("load_str_1000_clusters_10000_routes", |b| {
        b.iter(|| black_box(skiff::config::load_str(black_box(&yaml), "bench").is_ok()))
    });
    group.finish();
}

#[path = "../tests/support/jwt.rs"]
#[allow(dead_code)] // the forged tokens are for the tests
mod keys;

/// What admission adds to a request: the rate-limit check alone, and the
/// whole `admit` (JWT from the cache, forwarded claims, rate limit).
#[allow(clippy::unwrap_used)] // set-up that cannot fail
fn admission(c: &mut Criterion) {
    use futures_util::FutureExt as _;
    use http::HeaderValue;
    use jsonwebtoken::Algorithm;
    use skiff::admission::jwks::{Jwks, Source};
    use skiff::admission::jwt::JwtAuth;
    use skiff::admission::rate_limit::RateLimiter;
    use skiff::admission::Admission;
    use std::net::IpAddr;
    use std::sync::Arc;

    let mut group = c.benchmark_group("rate_limit");
    // A rate that never trips: every check passes and updates the bucket.
    let never: skiff::config::RateLimit =
        serde_yaml::from_str("{ requests_per_second: 1000000, burst: 1000000 }").unwrap();
    let rl = RateLimiter::new(&never);
    let source = rl.key_source(|_| None);
    let peer: IpAddr = "10.1.2.3".parse().unwrap();
    let headers = HeaderMap::new();
    group.bench_function("check_client_ip", |b| {
        b.iter(|| {
            let key = rl.key(&source, black_box(peer), &headers, None);
            black_box(rl.check(key).is_ok())
        })
    });
    let by_header: skiff::config::RateLimit = serde_yaml::from_str(
        "{ requests_per_second: 1000000, burst: 1000000, key: \"header:x-api-key\" }",
    )
    .unwrap();
    let rh = RateLimiter::new(&by_header);
    let hsource = rh.key_source(|_| None);
    let mut with_key = HeaderMap::new();
    with_key.insert(
        "x-api-key",
        HeaderValue::from_static("key-0123456789abcdef"),
    );
    group.bench_function("check_header", |b| {
        b.iter(|| {
            let key = rh.key(&hsource, peer, black_box(&with_key), None);
            black_box(rh.check(key).is_ok())
        })
    });
    // Every check a key not seen before, cycling through 100,000 (the cap).
    let fresh: Vec<u64> = (0..100_000u32)
        .map(|i| rl.value_key(&i.to_le_bytes()))
        .collect();
    let mut n = 0;
    group.bench_function("check_new_keys", |b| {
        b.iter(|| {
            n = (n + 1) % fresh.len();
            black_box(rl.check(black_box(fresh[n])).is_ok())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("jwt");
    let rsa = keys::TestKey::rsa("rs", Algorithm::RS256);
    let ps = keys::TestKey::rsa("ps", Algorithm::PS256);
    let es = keys::TestKey::es256("es");
    let ed = keys::TestKey::ed25519("ed");
    let jwks = Arc::new(Jwks::new("bench", &Source::File("/none".into())));
    jwks.load(keys::jwks(&[&rsa, &ps, &es, &ed]).as_bytes())
        .unwrap();
    let listener: skiff::config::Listener = serde_yaml::from_str(
        "name: bench\naddress: 127.0.0.1:0\njwt: { issuer: iss, audiences: [aud], jwks: { file: /none }, forward_claims: { sub: x-user } }\nrate_limit: { requests_per_second: 1000000, burst: 1000000, key: \"claim:sub\" }\nvirtual_hosts: [{ name: all, domains: [\"*\"], routes: [{ cluster: c }] }]",
    )
    .unwrap();
    let metrics = skiff::metrics::Metrics::new().unwrap();
    let mut limiters = |_: &str, c: &skiff::config::RateLimit| Ok(Arc::new(RateLimiter::new(c)));
    let admission = Admission::build(&listener, Some(jwks.clone()), &mut limiters, &metrics)
        .unwrap()
        .unwrap();
    let token = rsa.sign(&keys::claims("iss", "aud", 3600, "user-42"));
    let mut request = HeaderMap::new();
    request.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    group.bench_function("admit_cached_rs256_with_claim_rate_limit", |b| {
        b.iter(|| {
            let mut h = request.clone();
            let admitted = admission.admit(Some(0), peer, &mut h).now_or_never();
            black_box(matches!(admitted, Some(Ok(()))))
        })
    });
    let auth = JwtAuth::new(
        listener.jwt.as_ref().unwrap(),
        jwks.clone(),
        &[],
        Vec::new(),
    )
    .unwrap();
    let set = jwks.current().unwrap();
    for key in [&rsa, &ps, &es, &ed] {
        let token = key.sign(&keys::claims("iss", "aud", 3600, "user-42"));
        group.bench_function(format!("verify_uncached_{:?}", key.alg), |b| {
            b.iter(|| black_box(auth.verify(black_box(&token), &set).is_ok()))
        });
    }
    group.finish();
}

/// One poll of `fut`, as a connection's task polls a request's future.
fn poll_once<F: std::future::Future>(fut: F) -> bool {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    fut.as_mut().poll(&mut cx).is_ready()
}

/// What the listener does per request and per connection for its spans:
/// build the span, run the request's future in it (entered and left on
/// each poll), drop it. With the level off (the default `info`, the
/// subscriber `skiff run` installs) against no span at all; and with it on,
/// formatting to nowhere, for reference.
fn spans(c: &mut Criterion) {
    use skiff::listener::state::ConnInfo;
    use skiff::listener::{connection_span, request_span};
    use tracing::Instrument;
    use tracing_subscriber::EnvFilter;

    let production = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .finish();
    if tracing::subscriber::set_global_default(production).is_err() {
        panic!("a global subscriber was already set");
    }
    // What makes a debug span's callsite give up at its first check.
    assert_eq!(
        tracing::level_filters::LevelFilter::current(),
        tracing::level_filters::LevelFilter::INFO
    );
    let mut req = http::Request::post("/pkg.Service/Method")
        .header(http::header::HOST, "svc.ns.svc.cluster.local:50051")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap_or_default();
    skiff::http::headers::ensure_request_id(req.headers_mut());
    let conn = ConnInfo {
        client: std::net::SocketAddr::from(([10, 0, 0, 7], 41234)),
        orig_dst: Some(std::net::SocketAddr::from(([10, 0, 1, 9], 50051))),
        peer: None,
        tls: None,
    };

    let mut group = c.benchmark_group("span");
    group.bench_function("request/none", |b| {
        b.iter(|| black_box(poll_once(std::future::ready(black_box(1)))))
    });
    group.bench_function("request/off", |b| {
        b.iter(|| {
            let span = request_span(black_box(&req));
            black_box(poll_once(std::future::ready(black_box(1)).instrument(span)))
        })
    });
    group.bench_function("connection/off", |b| {
        b.iter(|| {
            let span = connection_span(black_box("inbound"), black_box(&conn));
            black_box(poll_once(std::future::ready(black_box(1)).instrument(span)))
        })
    });
    // For reference: the cost once `skiff=debug` turns them on.
    let debug = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("debug"))
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(debug, || {
        group.bench_function("request/on", |b| {
            b.iter(|| {
                let span = request_span(black_box(&req));
                black_box(poll_once(std::future::ready(black_box(1)).instrument(span)))
            })
        });
        group.bench_function("connection/on", |b| {
            b.iter(|| {
                let span = connection_span(black_box("inbound"), black_box(&conn));
                black_box(poll_once(std::future::ready(black_box(1)).instrument(span)))
            })
        });
    });
    group.finish();
}

/// The HTTP/1.1 head scan (`listener/head_scan.rs`) over what a keep-alive
/// connection reads: a typical request head (a browser-sized GET of about
/// 400 bytes) and a POST with a 64 KiB Content-Length body, which is
/// stepped over, not read.
fn head_scan(c: &mut Criterion) {
    use skiff::listener::head_scan::{Scanner, Verdict};
    let get = b"GET /api/v1/orders?page=2 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\nAccept: application/json\r\nAccept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\nCookie: session=0123456789abcdef0123456789abcdef\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n".to_vec();
    let mut post = b"POST /upload HTTP/1.1\r\nHost: shop.example\r\nContent-Type: application/octet-stream\r\nContent-Length: 65536\r\n\r\n".to_vec();
    post.resize(post.len() + 65536, b'x');
    let mut group = c.benchmark_group("head_scan");
    for (name, bytes) in [("get_head", &get), ("post_64k_body", &post)] {
        group.bench_with_input(BenchmarkId::new(name, bytes.len()), bytes, |b, bytes| {
            let mut scanner = Scanner::new(std::sync::Arc::new(Verdict::default()));
            b.iter(|| scanner.feed(black_box(bytes)))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    route_lookup,
    balance_pick,
    policy_pick,
    config_load,
    admission,
    spans,
    head_scan
);
criterion_main!(benches);
