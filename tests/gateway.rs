//! The gateway role: a listener with `jwt` and `rate_limit`, run as the real
//! `skiff` binary (docs/architecture.md, "Admission"). Tokens of each
//! algorithm pass and their claims reach the app; forged and broken tokens
//! get 401 with their reason; the key set follows its file and its URI
//! without a restart and survives its server going away; a burst passes
//! and the excess gets 429 with a `Retry-After` that holds; keys are
//! independent; 100,000 keys keep memory bounded; gRPC clients get their
//! status codes.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::Algorithm;
use serde_json::json;
use tokio::net::TcpListener;

use support::body;
use support::grpc_backend::{echo_client, status_of, EchoRequest, GrpcBackend};
use support::http_backend::HttpBackend;
use support::http_client::{header_str, http_get, HttpClient};
use support::jwt::{self as keys, claims, TestKey};
use support::process::SkiffProcess;
use support::scratch::ScratchDir;
use support::{eventually, metric_value, AbortOnDrop, Proto, Proxy};

const ISS: &str = "https://auth.shop.test";
const AUD: &str = "shop-api";

/// `skiff run` of `yaml`, with its listener `gateway`.
struct Gateway {
    skiff: SkiffProcess,
    addr: SocketAddr,
    dir: ScratchDir,
}

impl Gateway {
    async fn start(yaml: String, dir: ScratchDir) -> anyhow::Result<Gateway> {
        let config = dir.write("skiff.yaml", &yaml)?;
        let skiff = tokio::task::spawn_blocking(move || SkiffProcess::start(&config, &["gateway"]))
            .await??;
        let addr = skiff.listener("gateway")?;
        Ok(Gateway { skiff, addr, dir })
    }

    /// GET `path` with `headers` over a new connection of `proto`.
    async fn get(
        &self,
        proto: Proto,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(http::response::Parts, String)> {
        let mut c = HttpClient::connect(self.addr, proto).await?;
        let mut req = c.request("GET", path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (parts, body) = c.exchange(req.body(body::empty())?).await?;
        Ok((parts, body.text()))
    }

    async fn get_with_token(&self, token: &str) -> anyhow::Result<(http::response::Parts, String)> {
        let bearer = format!("Bearer {token}");
        self.get(Proto::H1, "/headers", &[("authorization", &bearer)])
            .await
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let (_, _, text) = http_get(self.skiff.admin, "/metrics").await?;
        Ok(metric_value(&text, name, labels).unwrap_or(0.0))
    }

    async fn ready(&self) -> anyhow::Result<(u16, String)> {
        let (status, _, body) = http_get(self.skiff.admin, "/ready").await?;
        Ok((status.as_u16(), body))
    }
}

/// A gateway listener: `/public/` is a public route (when there is `jwt`),
/// everything else goes to `backend`; `listener_extra` holds its `jwt` and
/// `rate_limit` lines, `clusters_extra` more clusters.
fn config(
    backend: SocketAddr,
    listener_extra: &str,
    route_extra: &str,
    clusters_extra: &str,
) -> String {
    let public = if listener_extra.contains("jwt:") {
        "          - match: { prefix: /public/ }\n            cluster: backend\n            jwt: false\n"
    } else {
        ""
    };
    format!(
        "admin: {{ address: 127.0.0.1:0 }}
listeners:
  - name: gateway
    address: 127.0.0.1:0
{listener_extra}    virtual_hosts:
      - name: shop
        domains: [\"*\"]
        routes:
{public}          - match: {{ prefix: / }}
            cluster: backend
{route_extra}clusters:
  - name: backend
    endpoints: [\"{backend}\"]
{clusters_extra}"
    )
}

fn jwt_file(path: &std::path::Path) -> String {
    format!(
        "    jwt:
      issuer: {ISS}
      audiences: [{AUD}, shop-admin]
      jwks: {{ file: {} }}
      leeway: 5s
      forward_claims: {{ sub: x-user-id, tier: x-user-tier }}
",
        serde_json::json!(path.display().to_string())
    )
}

/// The `headers` the backend's `/headers` answer lists under `name`.
fn seen_header(body: &str, name: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let values = v["headers"][name].as_array()?;
    Some(
        values
            .iter()
            .filter_map(|x| x.as_str())
            .collect::<Vec<_>>()
            .join(","),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_each_algorithm_pass_with_their_claims_and_forged_claims_go() -> anyhow::Result<()>
{
    let backend = HttpBackend::start().await?;
    let dir = ScratchDir::new("gateway")?;
    let keys = [
        TestKey::rsa("rs", Algorithm::RS256),
        TestKey::rsa("ps", Algorithm::PS256),
        TestKey::es256("es"),
        TestKey::ed25519("ed"),
    ];
    let jwks = dir.write("jwks.json", keys::jwks(&keys.iter().collect::<Vec<_>>()))?;
    let gw = Gateway::start(config(backend.addr(), &jwt_file(&jwks), "", ""), dir).await?;
    gw.skiff_ready().await?;

    for (i, k) in keys.iter().enumerate() {
        let mut c = claims(
            ISS,
            if i % 2 == 0 { AUD } else { "shop-admin" },
            300,
            &format!("user-{}", k.kid),
        );
        c["tier"] = json!("gold");
        let token = k.sign(&c);
        for proto in [Proto::H1, Proto::H2] {
            let bearer = format!("Bearer {token}");
            let (parts, body) = gw
                .get(
                    proto,
                    "/headers",
                    &[
                        ("authorization", &bearer),
                        ("x-user-id", "root"),
                        ("x-user-tier", "staff"),
                    ],
                )
                .await?;
            let what = format!("{:?} over {proto:?}", k.alg);
            assert_eq!(parts.status, 200, "{what}: {body}");
            assert_eq!(
                seen_header(&body, "x-user-id").as_deref(),
                Some(format!("user-{}", k.kid).as_str()),
                "{what}: the claim, not the forged copy"
            );
            assert_eq!(
                seen_header(&body, "x-user-tier").as_deref(),
                Some("gold"),
                "{what}"
            );
            assert_eq!(
                seen_header(&body, "authorization").as_deref(),
                Some(bearer.as_str()),
                "{what}: the token is forwarded"
            );
        }
    }

    // A public route needs no token; a forged claim header is removed there too.
    let (parts, body) = gw
        .get(Proto::H1, "/public/page", &[("x-user-id", "root")])
        .await?;
    assert_eq!(parts.status, 200, "{body}");
    let seen = backend
        .last()
        .context("the public request reached the app")?;
    assert_eq!(seen.uri.path(), "/public/page");
    assert_eq!(seen.header("x-user-id"), None, "{:?}", seen.headers);
    Ok(())
}

impl Gateway {
    async fn skiff_ready(&self) -> anyhow::Result<()> {
        eventually(Duration::from_secs(15), || async {
            let (status, body) = self.ready().await?;
            ensure!(status == 200, "/ready answered {status}: {body}");
            Ok(())
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_with_their_reason_counted() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let dir = ScratchDir::new("gateway")?;
    let rsa = TestKey::rsa("rs", Algorithm::RS256);
    let es = TestKey::es256("es");
    let jwks = dir.write("jwks.json", keys::jwks(&[&rsa, &es]))?;
    let gw = Gateway::start(config(backend.addr(), &jwt_file(&jwks), "", ""), dir).await?;
    gw.skiff_ready().await?;

    let good = claims(ISS, AUD, 300, "alice");
    let mut early = good.clone();
    early["nbf"] = json!(keys::now() + 600);
    let mut richer = good.clone();
    richer["sub"] = json!("admin");
    let cases = [
        ("expired", rsa.sign(&claims(ISS, AUD, -600, "alice"))),
        ("not_yet_valid", rsa.sign(&early)),
        (
            "issuer",
            rsa.sign(&claims("https://evil.test", AUD, 300, "alice")),
        ),
        ("audience", rsa.sign(&claims(ISS, "billing", 300, "alice"))),
        ("unknown_kid", TestKey::es256("stranger").sign(&good)),
        ("signature", keys::tampered(&rsa.sign(&good), &richer)),
        ("algorithm", keys::alg_none("rs", &good)),
        ("algorithm", keys::hmac_with_public_key("rs", &good)),
        ("malformed", "not-a-jwt".to_string()),
    ];
    for (reason, token) in &cases {
        let (parts, body) = gw.get_with_token(token).await?;
        assert_eq!(parts.status, 401, "{reason}: {body}");
        assert_eq!(
            header_str(&parts.headers, "x-skiff-error"),
            Some("unauthenticated"),
            "{reason}"
        );
        let challenge = header_str(&parts.headers, "www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with(&format!(
                "Bearer error=\"invalid_token\", error_description=\"{reason}: "
            )),
            "{reason}: {challenge}"
        );
    }
    let (parts, _) = gw.get(Proto::H1, "/headers", &[]).await?;
    assert_eq!(parts.status, 401);
    assert_eq!(
        header_str(&parts.headers, "www-authenticate"),
        Some("Bearer"),
        "no credentials: RFC 6750 3.1"
    );
    assert!(
        backend.seen().is_empty(),
        "no refused request reached the app"
    );

    for (reason, want) in [
        ("expired", 1.0),
        ("not_yet_valid", 1.0),
        ("issuer", 1.0),
        ("audience", 1.0),
        ("unknown_kid", 1.0),
        ("signature", 1.0),
        ("algorithm", 2.0),
        ("malformed", 1.0),
        ("missing", 1.0),
    ] {
        let got = gw
            .metric(
                "skiff_authn_denied_total",
                &[("listener", "gateway"), ("reason", reason)],
            )
            .await?;
        assert_eq!(got, want, "skiff_authn_denied_total{{reason={reason}}}");
    }
    let kind = gw
        .metric(
            "skiff_proxy_errors_total",
            &[("listener", "gateway"), ("kind", "unauthenticated")],
        )
        .await?;
    assert_eq!(kind, 10.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_jwks_file_is_picked_up_without_a_restart() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let dir = ScratchDir::new("gateway")?;
    let old = TestKey::es256("2026-01");
    let new = TestKey::ed25519("2026-02");
    let jwks = dir.write("jwks.json", keys::jwks(&[&old]))?;
    let gw = Gateway::start(config(backend.addr(), &jwt_file(&jwks), "", ""), dir).await?;
    gw.skiff_ready().await?;
    let old_token = old.sign(&claims(ISS, AUD, 300, "u"));
    let new_token = new.sign(&claims(ISS, AUD, 300, "u"));
    assert_eq!(gw.get_with_token(&old_token).await?.0.status, 200);
    assert_eq!(gw.get_with_token(&new_token).await?.0.status, 401);

    gw.dir.write("jwks.json", keys::jwks(&[&new]))?;
    eventually(Duration::from_secs(10), || async {
        let (parts, body) = gw.get_with_token(&new_token).await?;
        ensure!(parts.status == 200, "the new key is not in yet: {body}");
        Ok(())
    })
    .await?;
    let (parts, _) = gw.get_with_token(&old_token).await?;
    assert_eq!(
        parts.status, 401,
        "a key removed from the set stops verifying"
    );
    // A broken file keeps the last good set.
    gw.dir.write("jwks.json", "{ not json")?;
    eventually(Duration::from_secs(10), || async {
        ensure!(
            gw.skiff
                .lines
                .joined()
                .contains("unusable; the last good set stays"),
            "no warning yet"
        );
        Ok(())
    })
    .await?;
    assert_eq!(gw.get_with_token(&new_token).await?.0.status, 200);
    Ok(())
}

/// A JWK Set server on 127.0.0.1:0 whose answer the test sets; stopped on drop.
struct JwksServer {
    addr: SocketAddr,
    answer: Arc<Mutex<(u16, String)>>,
    hits: Arc<Mutex<usize>>,
    _accept: AbortOnDrop,
}

impl JwksServer {
    async fn start(status: u16, body: String) -> anyhow::Result<JwksServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let answer = Arc::new(Mutex::new((status, body)));
        let hits = Arc::new(Mutex::new(0));
        let (a, h) = (answer.clone(), hits.clone());
        let accept = AbortOnDrop::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (a, h) = (a.clone(), h.clone());
                conns.spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                            let (status, body) = a.lock().map(|g| g.clone()).unwrap_or_default();
                            if let Ok(mut n) = h.lock() {
                                *n += 1;
                            }
                            let mut resp = Response::new(Full::new(Bytes::from(body)));
                            *resp.status_mut() =
                                StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                            async move { Ok::<_, Infallible>(resp) }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(JwksServer {
            addr,
            answer,
            hits,
            _accept: accept,
        })
    }

    fn set(&self, status: u16, body: String) {
        if let Ok(mut a) = self.answer.lock() {
            *a = (status, body);
        }
    }

    fn hits(&self) -> usize {
        self.hits.lock().map_or(0, |h| *h)
    }
}

fn jwt_uri(refresh: &str) -> String {
    format!(
        "    jwt:
      issuer: {ISS}
      audiences: [{AUD}]
      jwks: {{ uri: \"http://auth.shop.test/.well-known/jwks.json\", cluster: auth, refresh: {refresh} }}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_uri_is_fetched_through_its_cluster_and_outlives_its_server() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let a = TestKey::es256("a");
    let b = TestKey::rsa("b", Algorithm::PS256);
    // Not serving keys yet: the gateway is not ready and answers 503 no_jwks.
    let server = JwksServer::start(503, "not yet".into()).await?;
    let clusters = format!("  - name: auth\n    endpoints: [\"{}\"]\n", server.addr);
    let yaml = config(backend.addr(), &jwt_uri("1s"), "", &clusters);
    let gw = Gateway::start(yaml, ScratchDir::new("gateway")?).await?;
    let token_a = a.sign(&claims(ISS, AUD, 300, "u"));
    eventually(Duration::from_secs(10), || async {
        ensure!(server.hits() > 0, "no fetch yet");
        Ok(())
    })
    .await?;
    let (status, body) = gw.ready().await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("JWK Set"), "{body}");
    let (parts, body) = gw.get_with_token(&token_a).await?;
    assert_eq!(parts.status, 503, "{body}");
    assert_eq!(header_str(&parts.headers, "x-skiff-error"), Some("no_jwks"));

    server.set(200, keys::jwks(&[&a]));
    gw.skiff_ready().await?;
    assert_eq!(gw.get_with_token(&token_a).await?.0.status, 200);

    // Rotation on the next refresh: a new key under the same kid (no
    // unknown kid to hurry the fetch; only `refresh` brings it in).
    let b = b.renamed("a");
    server.set(200, keys::jwks(&[&b]));
    let token_b = b.sign(&claims(ISS, AUD, 300, "u"));
    eventually(Duration::from_secs(10), || async {
        let (parts, body) = gw.get_with_token(&token_b).await?;
        ensure!(parts.status == 200, "the new key is not in yet: {body}");
        Ok(())
    })
    .await?;
    assert_eq!(
        gw.get_with_token(&token_a).await?.0.status,
        401,
        "the old key left"
    );

    // The server goes away: fetches fail, the last good set stays.
    let failures = || {
        gw.skiff
            .lines
            .joined()
            .matches("JWK Set fetch failed")
            .count()
    };
    let before = failures();
    drop(server);
    eventually(Duration::from_secs(15), || async {
        ensure!(
            failures() > before,
            "no failed fetch since the server stopped"
        );
        Ok(())
    })
    .await?;
    assert_eq!(gw.get_with_token(&token_b).await?.0.status, 200);
    assert_eq!(gw.ready().await?.0, 200, "still ready");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_fetches_the_set_at_once() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let a = TestKey::es256("a");
    let c = TestKey::ed25519("c");
    let server = JwksServer::start(200, keys::jwks(&[&a])).await?;
    let clusters = format!("  - name: auth\n    endpoints: [\"{}\"]\n", server.addr);
    // A refresh far away: only the unknown kid can bring the new key in.
    let yaml = config(backend.addr(), &jwt_uri("1h"), "", &clusters);
    let gw = Gateway::start(yaml, ScratchDir::new("gateway")?).await?;
    gw.skiff_ready().await?;
    server.set(200, keys::jwks(&[&a, &c]));
    let (parts, body) = gw
        .get_with_token(&c.sign(&claims(ISS, AUD, 300, "u")))
        .await?;
    assert_eq!(
        parts.status, 200,
        "the request waited for the fetch its kid asked for: {body}"
    );
    // A second unknown kid within the refetch interval does not fetch again.
    let hits = server.hits();
    let (parts, _) = gw
        .get_with_token(&TestKey::es256("d").sign(&claims(ISS, AUD, 300, "u")))
        .await?;
    assert_eq!(parts.status, 401);
    assert_eq!(server.hits(), hits, "unknown kids are rate-limited");
    Ok(())
}

fn rate_limit(line: &str) -> String {
    format!("    rate_limit: {line}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_passes_then_429_with_a_retry_after_that_holds() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let yaml = config(
        backend.addr(),
        &rate_limit("{ requests_per_second: 1, burst: 3 }"),
        "",
        "",
    );
    let gw = Gateway::start(yaml, ScratchDir::new("gateway")?).await?;
    for i in 0..3 {
        let (parts, body) = gw.get(Proto::H1, "/", &[]).await?;
        assert_eq!(parts.status, 200, "request {i} of the burst: {body}");
    }
    let (parts, body) = gw.get(Proto::H2, "/", &[]).await?;
    assert_eq!(parts.status, 429, "{body}");
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
    assert_eq!(
        gw.metric("skiff_ratelimited_total", &[("listener", "gateway")])
            .await?,
        1.0
    );
    // A client that waits as told gets through.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(gw.get(Proto::H1, "/", &[]).await?.0.status, 200);
    assert_eq!(
        backend.seen().len(),
        4,
        "the refused request never reached the app"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_independent_and_forwarded_for_is_read_only_when_trusted() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let by_header = rate_limit("{ requests_per_second: 0.1, burst: 1, key: \"header:x-api-key\" }");
    let gw = Gateway::start(
        config(backend.addr(), &by_header, "", ""),
        ScratchDir::new("gateway")?,
    )
    .await?;
    let status = |key: &'static str| {
        let gw = &gw;
        async move {
            let h: Vec<(&str, &str)> = if key.is_empty() {
                vec![]
            } else {
                vec![("x-api-key", key)]
            };
            anyhow::Ok(gw.get(Proto::H1, "/", &h).await?.0.status.as_u16())
        }
    };
    assert_eq!(status("a").await?, 200);
    assert_eq!(status("a").await?, 429);
    assert_eq!(status("b").await?, 200, "another key, another bucket");
    assert_eq!(status("").await?, 200);
    assert_eq!(
        status("").await?,
        429,
        "requests without the key share one bucket"
    );
    drop(gw);

    let trusted = rate_limit("{ requests_per_second: 0.1, burst: 1, xff_trusted_hops: 1 }");
    let gw = Gateway::start(
        config(backend.addr(), &trusted, "", ""),
        ScratchDir::new("gateway")?,
    )
    .await?;
    let from = |xff: &'static str| {
        let gw = &gw;
        async move {
            anyhow::Ok(
                gw.get(Proto::H1, "/", &[("x-forwarded-for", xff)])
                    .await?
                    .0
                    .status
                    .as_u16(),
            )
        }
    };
    assert_eq!(from("6.6.6.6, 203.0.113.7").await?, 200);
    assert_eq!(
        from("7.7.7.7, 203.0.113.7").await?,
        429,
        "the trusted hop, not the client's claim"
    );
    assert_eq!(from("203.0.113.8").await?, 200);
    drop(gw);

    let untrusted = rate_limit("{ requests_per_second: 0.1, burst: 1 }");
    let gw = Gateway::start(
        config(backend.addr(), &untrusted, "", ""),
        ScratchDir::new("gateway")?,
    )
    .await?;
    let from = |xff: &'static str| {
        let gw = &gw;
        async move {
            anyhow::Ok(
                gw.get(Proto::H1, "/", &[("x-forwarded-for", xff)])
                    .await?
                    .0
                    .status
                    .as_u16(),
            )
        }
    };
    assert_eq!(from("203.0.113.7").await?, 200);
    assert_eq!(
        from("203.0.113.8").await?,
        429,
        "the TCP peer counts; the header is ignored"
    );
    Ok(())
}

/// A backend that answers 204 to everything and remembers nothing.
async fn null_backend() -> anyhow::Result<(SocketAddr, AbortOnDrop)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accept = AbortOnDrop::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            conns.spawn(async move {
                let svc =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::NO_CONTENT;
                        Ok::<_, Infallible>(r)
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok((addr, accept))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_keys_keep_memory_bounded() -> anyhow::Result<()> {
    const KEYS: usize = 100_000;
    const CLIENTS: usize = 32;
    let (backend, _backend) = null_backend().await?;
    let limit = rate_limit("{ requests_per_second: 1, burst: 1, key: \"header:x-api-key\" }");
    let gw = Gateway::start(config(backend, &limit, "", ""), ScratchDir::new("gateway")?).await?;
    let before = gw.skiff.rss_kib()?;

    // One HTTP/2 connection, 32 streams at a time, every request a new key.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(tcp),
        )
        .await?;
    let _conn = AbortOnDrop::spawn(async move {
        let _ = conn.await;
    });
    let addr = gw.addr;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let mut sender = sender.clone();
        clients.spawn(async move {
            let mut ok = 0usize;
            for i in (c..KEYS).step_by(CLIENTS) {
                let req = Request::builder()
                    .uri(format!("http://{addr}/"))
                    .version(http::Version::HTTP_2)
                    .header("x-api-key", format!("key-{i}"))
                    .body(http_body_util::Empty::new())?;
                sender.ready().await?;
                let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
                    .await
                    .context("no answer within 30s")??;
                ok += usize::from(resp.status() == StatusCode::NO_CONTENT);
            }
            anyhow::Ok(ok)
        });
    }
    let mut passed = 0;
    while let Some(r) = clients.join_next().await {
        passed += r??;
    }
    assert_eq!(passed, KEYS, "every new key has a full bucket");
    let after = gw.skiff.rss_kib()?;
    eprintln!("skiff RSS: {before} KiB at start, {after} KiB after {KEYS} keys");
    assert!(
        after < 64 * 1024,
        "RSS {after} KiB after {KEYS} keys (was {before} KiB at start)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_get_unauthenticated_and_resource_exhausted() -> anyhow::Result<()> {
    let grpc = GrpcBackend::start().await?;
    let dir = ScratchDir::new("gateway")?;
    let key = TestKey::es256("k");
    let jwks = dir.write("jwks.json", keys::jwks(&[&key]))?;
    let extra = format!(
        "{}{}",
        jwt_file(&jwks),
        rate_limit("{ requests_per_second: 0.1, burst: 1, key: \"claim:sub\" }")
    );
    let yaml = config(grpc.addr(), &extra, "", "").replace(
        "  - name: backend\n",
        "  - name: backend\n    protocol: http2\n",
    );
    let gw = Gateway::start(yaml, dir).await?;
    gw.skiff_ready().await?;
    let mut client = echo_client(gw.addr).await?;

    let status = status_of(client.unary(EchoRequest::default()).await)?;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let kind = status
        .metadata()
        .get("x-skiff-error")
        .and_then(|v| v.to_str().ok());
    assert_eq!(kind, Some("unauthenticated"));

    let token = key.sign(&claims(ISS, AUD, 300, "alice"));
    let call = |token: String| {
        let mut client = client.clone();
        async move {
            let mut req = tonic::Request::new(EchoRequest::default());
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
            anyhow::Ok(client.unary(req).await)
        }
    };
    assert!(call(token.clone()).await?.is_ok(), "a valid token passes");
    let limited = status_of(call(token.clone()).await?)?;
    assert_eq!(
        limited.code(),
        tonic::Code::ResourceExhausted,
        "{limited:?}"
    );
    let kind = limited
        .metadata()
        .get("x-skiff-error")
        .and_then(|v| v.to_str().ok());
    assert_eq!(kind, Some("rate_limited"));
    assert!(
        limited.metadata().get("retry-after").is_some(),
        "{limited:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_survive_a_reload_that_leaves_their_settings_alone() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let limit = rate_limit("{ requests_per_second: 0.05, burst: 1 }");
    let yaml = config(backend.addr(), &limit, "", "");
    let proxy = Proxy::start_reloading(&yaml).await?;
    let status = || async {
        let (status, _, _) = http_get(proxy.addr(), "/").await?;
        anyhow::Ok(status.as_u16())
    };
    assert_eq!(status().await?, 200);
    assert_eq!(status().await?, 429);
    // Another cluster added: the listener is rebuilt, its bucket is kept.
    let more = config(
        backend.addr(),
        &limit,
        "",
        "  - name: spare\n    endpoints: [\"127.0.0.1:9\"]\n",
    );
    proxy.reload(&more).await?;
    assert_eq!(status().await?, 429, "the spent bucket survived the reload");
    // New settings: new buckets.
    let bigger = config(
        backend.addr(),
        &rate_limit("{ requests_per_second: 0.05, burst: 2 }"),
        "",
        "",
    );
    proxy.reload(&bigger).await?;
    assert_eq!(status().await?, 200);
    Ok(())
}
