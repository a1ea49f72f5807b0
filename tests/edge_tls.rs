//! Edge TLS (`tls.mode: terminate`) end to end: HTTPS with h2 and HTTP/1.1
//! from curl, rustls and grpcio clients that trust a CA minted here; TLS
//! 1.2 and 1.3; the certificate chosen by SNI; certificate files replaced
//! under traffic without one failed request (and a half-written one
//! changing nothing); plaintext refused; handshakes counted by result; JWT
//! and rate limits behind TLS; and a JWK Set fetched over https through a
//! cluster with `tls: {mode: simple}`, its rotation picked up.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::ca::{Leaf, Svid, TestCa};
use support::grpc_backend::GrpcBackend;
use support::http_backend::HttpBackend;
use support::http_client::header_str;
use support::https::{client_config, leaf_der, tls_connect, Https, HttpsServer};
use support::jwt::{self as keys, claims, TestKey};
use support::peers;
use support::process::{python_grpc_client_tls, run_bounded, Output, SkiffProcess};
use support::scratch::ScratchDir;
use support::{eventually, metric_value, within, Proto, Proxy};

/// The name clients ask for; the default certificate holds it.
const NAME: &str = "edge.shop.test";
const ISS: &str = "https://auth.shop.test";
const AUD: &str = "shop-api";

/// A certificate and key written as `<stem>.crt` / `<stem>.key` in `dir`.
fn write_pair(dir: &Path, stem: &str, svid: &Svid) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, &svid.chain_pem)?;
    std::fs::write(&key, &svid.key_pem)?;
    Ok((cert, key))
}

fn quoted(p: &Path) -> String {
    serde_json::json!(p.display().to_string()).to_string()
}

/// A listener's `tls:` lines: the default pair and `sni` entries.
fn tls_block(default: &(PathBuf, PathBuf), sni: &[(&[&str], &(PathBuf, PathBuf))]) -> String {
    let mut y = format!(
        "    tls:\n      mode: terminate\n      cert: {}\n      key: {}\n",
        quoted(&default.0),
        quoted(&default.1)
    );
    if !sni.is_empty() {
        y += "      sni:\n";
        for (domains, (cert, key)) in sni {
            y += &format!(
                "        - {{ domains: {}, cert: {}, key: {} }}\n",
                serde_json::json!(domains),
                quoted(cert),
                quoted(key)
            );
        }
    }
    y
}

/// One `edge` listener with `tls` and `listener_extra` (jwt, rate_limit),
/// every path to cluster `backend` (`protocol`); `top` goes before it
/// (access_log), `clusters_extra` after the backend.
fn config(
    backend: SocketAddr,
    protocol: &str,
    tls: &str,
    listener_extra: &str,
    top: &str,
    clusters_extra: &str,
) -> String {
    format!(
        "admin: {{ address: 127.0.0.1:0 }}
{top}listeners:
  - name: edge
    address: 127.0.0.1:0
{tls}{listener_extra}    virtual_hosts:
      - name: shop
        domains: [\"*\"]
        routes:
          - match: {{ prefix: / }}
            cluster: backend
            timeout: 20s
clusters:
  - name: backend
    protocol: {protocol}
    endpoints: [\"{backend}\"]
{clusters_extra}"
    )
}

/// A CA, a default certificate for [`NAME`] (and `*.shop.test` and
/// 127.0.0.1) written into `dir`, and the CA's root as `ca.pem`.
struct Edge {
    ca: TestCa,
    dir: ScratchDir,
    default: (PathBuf, PathBuf),
    ca_file: PathBuf,
}

impl Edge {
    fn new(label: &str) -> anyhow::Result<Edge> {
        let ca = TestCa::root("edge.test")?;
        let dir = ScratchDir::new(label)?;
        let leaf = ca.leaf(Leaf::server(&[NAME, "*.shop.test", "127.0.0.1"]))?;
        let default = write_pair(dir.path(), "edge", &leaf)?;
        let ca_file = dir.write("ca.pem", &ca.root_pem)?;
        Ok(Edge {
            ca,
            dir,
            default,
            ca_file,
        })
    }

    fn tls(&self) -> String {
        tls_block(&self.default, &[])
    }

    async fn https(&self, addr: SocketAddr, proto: Proto) -> anyhow::Result<Https> {
        Https::connect(addr, NAME, &self.ca.root_pem, proto).await
    }
}

/// `curl ARGS` (bounded), with `--resolve` pointing `name` at `addr`.
async fn curl(name: &str, addr: SocketAddr, args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--resolve"])
        .arg(format!("{name}:{}:127.0.0.1", addr.port()))
        .args(args);
    tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(30))).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_h2_and_http1_over_tls_1_2_and_1_3_and_the_log_says_edge() -> anyhow::Result<()>
{
    if !peers::curl() {
        return Ok(());
    }
    let backend = HttpBackend::start().await?;
    let edge = Edge::new("edge-curl")?;
    let log = edge.dir.path().join("access.log");
    let top = format!("access_log: {{ enabled: true, path: {} }}\n", quoted(&log));
    let proxy = Proxy::start(&config(backend.addr(), "http1", &edge.tls(), "", &top, "")).await?;
    let url = format!("https://{NAME}:{}/headers", proxy.addr().port());
    let ca = edge.ca_file.display().to_string();
    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = curl(
            NAME,
            proxy.addr(),
            &[
                "--cacert",
                &ca,
                flag,
                "-w",
                "\n%{http_code} %{http_version}",
                &url,
            ],
        )
        .await?;
        ensure!(
            out.status.success(),
            "curl {flag}: {}{}",
            out.stdout,
            out.stderr
        );
        let last = out.stdout.lines().last().unwrap_or_default();
        assert_eq!(last, format!("200 {want}"), "curl {flag}: {}", out.stdout);
        assert!(
            out.stdout.contains("\"headers\""),
            "the backend answered: {}",
            out.stdout
        );
    }
    for (flags, want) in [
        (["--tlsv1.2", "--tls-max", "1.2"], "TLSv1.2"),
        (["--tlsv1.3", "--tls-max", "1.3"], "TLSv1.3"),
    ] {
        let mut args = vec!["-v", "--cacert", &ca, "-o", "/dev/null"];
        args.extend(flags);
        args.push(&url);
        let out = curl(NAME, proxy.addr(), &args).await?;
        ensure!(out.status.success(), "curl {want}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("SSL connection using {want}")),
            "curl negotiated another version than {want}:\n{}",
            out.stderr
        );
    }

    // The access log tells edge TLS apart, and there is no peer identity.
    let lines = eventually(Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        ensure!(lines.len() >= 4, "{} access log lines so far", lines.len());
        Ok(lines)
    })
    .await?;
    for line in &lines {
        assert_eq!(line["tls"], "edge", "{line}");
        assert!(line.get("peer").is_none(), "{line}");
        assert_eq!(line["status"], 200, "{line}");
    }
    let protocols: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["protocol"].as_str())
        .collect();
    assert!(
        protocols.contains(&"HTTP/2") && protocols.contains(&"HTTP/1.1"),
        "{protocols:?}"
    );
    proxy.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rustls_clients_get_h2_or_http1_by_alpn_on_tls_1_2_and_1_3() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let edge = Edge::new("edge-alpn")?;
    let proxy = Proxy::start(&config(backend.addr(), "http2", &edge.tls(), "", "", "")).await?;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        for (alpn, proto) in [(&b"h2"[..], Proto::H2), (&b"http/1.1"[..], Proto::H1)] {
            let cfg = client_config(&edge.ca.root_pem, &[alpn], &[version])?;
            let tls = tls_connect(proxy.addr(), NAME, cfg).await?;
            let mut c = Https::over(tls, NAME, proto).await?;
            let what = format!("{:?} {}", version.version, String::from_utf8_lossy(alpn));
            assert_eq!(c.version, Some(version.version), "{what}");
            assert_eq!(c.alpn.as_deref(), Some(alpn), "{what}");
            let (parts, body) = c.get("/headers", &[]).await?;
            assert_eq!(parts.status, 200, "{what}: {body}");
            assert_eq!(parts.version, proto.version(), "{what}");
        }
    }
    // A client offering no ALPN at all gets HTTP/1.1.
    let cfg = client_config(&edge.ca.root_pem, &[], &[])?;
    let tls = tls_connect(proxy.addr(), NAME, cfg).await?;
    let mut c = Https::over(tls, NAME, Proto::H1).await?;
    assert_eq!(c.alpn, None);
    assert_eq!(c.get("/headers", &[]).await?.0.status, 200);
    proxy.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_client_with_a_root_certificate_makes_every_call_kind() -> anyhow::Result<()> {
    if !peers::python_grpc() {
        return Ok(());
    }
    let backend = GrpcBackend::start().await?;
    let edge = Edge::new("edge-grpcio")?;
    let proxy = Proxy::start(&config(backend.addr(), "http2", &edge.tls(), "", "", "")).await?;
    let (target, root) = (proxy.addr(), edge.ca_file.clone());
    let out =
        tokio::task::spawn_blocking(move || python_grpc_client_tls(target, &root, NAME)).await??;
    assert!(
        out.status.success(),
        "grpcio over TLS -> skiff -> tonic:\n{}{}",
        out.stdout,
        out.stderr
    );
    let ok = proxy
        .metric(
            "skiff_tls_handshakes_total",
            &[("side", "inbound"), ("name", "edge"), ("result", "success")],
        )
        .await?;
    assert!(ok >= 1.0, "handshakes counted: {ok}");
    proxy.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_the_default_serves_the_rest() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let edge = Edge::new("edge-sni")?;
    let api = edge.ca.leaf(Leaf::server(&["api.shop.test"]))?;
    let admin = edge.ca.leaf(Leaf::server(&["*.admin.shop.test"]))?;
    let api_files = write_pair(edge.dir.path(), "api", &api)?;
    let admin_files = write_pair(edge.dir.path(), "admin", &admin)?;
    let tls = tls_block(
        &edge.default,
        &[
            (&["api.shop.test"], &api_files),
            (&["*.admin.shop.test"], &admin_files),
        ],
    );
    let proxy = Proxy::start(&config(backend.addr(), "http1", &tls, "", "", "")).await?;
    let default = std::fs::read_to_string(&edge.default.0)?;
    let default = leaf_der(&Svid {
        chain_pem: default,
        key_pem: String::new(),
    })?;
    for (name, want, which) in [
        ("api.shop.test", leaf_der(&api)?, "api"),
        ("ops.admin.shop.test", leaf_der(&admin)?, "wildcard"),
        ("www.shop.test", default.clone(), "default"),
        (NAME, default.clone(), "default"),
        // An IP address: no SNI at all.
        ("127.0.0.1", default.clone(), "default"),
    ] {
        let mut c = Https::connect(proxy.addr(), name, &edge.ca.root_pem, Proto::H2).await?;
        assert!(c.leaf == want, "{name}: expected the {which} certificate");
        assert_eq!(c.get("/headers", &[]).await?.0.status, 200, "{name}");
    }

    // The subject curl reads from the certificate it was served.
    if peers::curl() {
        let ca = edge.ca_file.display().to_string();
        for (name, subject) in [
            ("api.shop.test", "CN=api.shop.test"),
            ("x.admin.shop.test", "CN=*.admin.shop.test"),
            ("www.shop.test", "CN=edge.shop.test"),
        ] {
            let url = format!("https://{name}:{}/headers", proxy.addr().port());
            let out = curl(
                name,
                proxy.addr(),
                &["-v", "--cacert", &ca, "-o", "/dev/null", &url],
            )
            .await?;
            ensure!(out.status.success(), "curl {name}: {}", out.stderr);
            assert!(
                out.stderr.contains(&format!("subject: {subject}")),
                "{name}: expected {subject}:\n{}",
                out.stderr
            );
        }
    }
    proxy.stop().await
}

/// New connections (h2 and HTTP/1.1 in turn) one request each, until
/// `stop` or `limit` requests: the leaves served, and every failure.
async fn traffic(
    addr: SocketAddr,
    roots: String,
    stop: Arc<AtomicBool>,
    limit: usize,
) -> (usize, Vec<Vec<u8>>, Vec<String>) {
    let (mut ok, mut leaves, mut failures) = (0, Vec::new(), Vec::new());
    for i in 0..limit {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let proto = if i % 2 == 0 { Proto::H2 } else { Proto::H1 };
        let result = async {
            let mut c = Https::connect(addr, NAME, &roots, proto).await?;
            let (parts, body) = c.get("/headers", &[]).await?;
            ensure!(parts.status == 200, "status {}: {body}", parts.status);
            anyhow::Ok(c.leaf)
        }
        .await;
        match result {
            Ok(leaf) => {
                ok += 1;
                if !leaves.contains(&leaf) {
                    leaves.push(leaf);
                }
            }
            Err(e) => failures.push(format!("request {i} ({proto:?}): {e:#}")),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (ok, leaves, failures)
}

/// The leaf a new connection is served now.
async fn served(addr: SocketAddr, roots: &str) -> anyhow::Result<Vec<u8>> {
    Ok(Https::connect(addr, NAME, roots, Proto::H1).await?.leaf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_replaced_under_traffic_fail_no_request() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let edge = Edge::new("edge-rotate")?;
    let v1 = std::fs::read_to_string(&edge.default.0)?;
    let v1 = leaf_der(&Svid {
        chain_pem: v1,
        key_pem: String::new(),
    })?;
    let yaml = config(backend.addr(), "http2", &edge.tls(), "", "", "");
    let config_file = edge.dir.write("skiff.yaml", &yaml)?;
    let skiff =
        tokio::task::spawn_blocking(move || SkiffProcess::start(&config_file, &["edge"])).await??;
    let addr = skiff.listener("edge")?;
    let roots = edge.ca.root_pem.clone();

    // A connection made before any rotation, used throughout.
    let mut steady = edge.https(addr, Proto::H2).await?;
    assert!(steady.leaf == v1);
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(traffic(addr, roots.clone(), stop.clone(), 3000));

    // 1. A new certificate and key, each file swapped in by a rename.
    let fresh = |names: &[&str]| edge.ca.leaf(Leaf::server(names));
    let v2 = fresh(&[NAME])?;
    let staged = write_pair(edge.dir.path(), "staged", &v2)?;
    std::fs::rename(&staged.1, &edge.default.1)?;
    std::fs::rename(&staged.0, &edge.default.0)?;
    let v2_der = leaf_der(&v2)?;
    eventually(Duration::from_secs(15), || async {
        ensure!(
            served(addr, &roots).await? == v2_der,
            "still the first certificate"
        );
        Ok(())
    })
    .await?;
    assert_eq!(steady.get("/headers", &[]).await?.0.status, 200);

    // 2. A half-written certificate: refused, logged, the one in use stays.
    let v3 = fresh(&[NAME])?;
    let half = &v3.chain_pem[..v3.chain_pem.len() / 2];
    std::fs::write(&edge.default.0, half)?;
    eventually(Duration::from_secs(15), || async {
        let log = skiff.lines.joined();
        ensure!(
            log.contains("edge TLS certificates refused"),
            "no refusal logged yet"
        );
        Ok(())
    })
    .await?;
    let refusal = skiff
        .lines
        .snapshot()
        .into_iter()
        .find(|l| l.contains("edge TLS certificates refused"))
        .unwrap_or_default();
    assert!(
        refusal.contains(&edge.default.0.display().to_string()),
        "the log names the file: {refusal}"
    );
    assert!(
        served(addr, &roots).await? == v2_der,
        "the set in use stayed"
    );

    // 3. The rest of it, and its key: in use from the next handshake on.
    std::fs::write(&edge.default.1, &v3.key_pem)?;
    std::fs::write(&edge.default.0, &v3.chain_pem)?;
    let v3_der = leaf_der(&v3)?;
    eventually(Duration::from_secs(15), || async {
        ensure!(
            served(addr, &roots).await? == v3_der,
            "not the third certificate yet"
        );
        Ok(())
    })
    .await?;

    stop.store(true, Ordering::Release);
    let (ok, leaves, failures) = within(Duration::from_secs(60), "traffic", async {
        Ok(load.await?)
    })
    .await?;
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(ok >= 20, "only {ok} requests made");
    assert!(
        leaves.contains(&v3_der),
        "the traffic saw the last certificate"
    );
    // The connection made before every rotation is still up, on its first certificate.
    let (parts, _) = steady.get("/headers", &[]).await?;
    assert_eq!(parts.status, 200);
    assert!(steady.leaf == v1);
    Ok(())
}

/// Send `bytes` on a plain TCP connection; what comes back before it closes.
async fn plaintext(addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    within(Duration::from_secs(10), "plaintext exchange", async {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(bytes).await?;
        let mut got = Vec::new();
        // A reset is as good as a close here.
        let _ = tcp.read_to_end(&mut got).await;
        Ok(got)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused_and_handshakes_are_counted_by_result() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let edge = Edge::new("edge-count")?;
    let proxy = Proxy::start(&config(backend.addr(), "http1", &edge.tls(), "", "", "")).await?;
    let count = |result: &'static str| {
        let proxy = &proxy;
        async move {
            proxy
                .metric(
                    "skiff_tls_handshakes_total",
                    &[("side", "inbound"), ("name", "edge"), ("result", result)],
                )
                .await
        }
    };

    let h1 = plaintext(proxy.addr(), b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n").await?;
    assert!(
        h1.is_empty(),
        "plaintext HTTP/1.1 got an answer: {:?}",
        String::from_utf8_lossy(&h1)
    );
    let h2c = plaintext(proxy.addr(), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    assert!(h2c.is_empty(), "h2c got an answer");
    let junk = plaintext(proxy.addr(), b"\x00\x01\x02 not TLS at all\r\n").await?;
    assert!(junk.is_empty(), "junk got an answer");

    for proto in [Proto::H1, Proto::H2] {
        let mut c = edge.https(proxy.addr(), proto).await?;
        assert_eq!(c.get("/headers", &[]).await?.0.status, 200);
    }
    // A client that does not trust the certificate refuses it.
    let stranger = TestCa::root("elsewhere.test")?;
    let cfg = client_config(&stranger.root_pem, &[b"h2"], &[])?;
    assert!(tls_connect(proxy.addr(), NAME, cfg).await.is_err());

    eventually(Duration::from_secs(10), || async {
        let got = (
            count("plaintext").await?,
            count("success").await?,
            count("unknown_ca").await?,
        );
        ensure!(
            got == (3.0, 2.0, 1.0),
            "plaintext, success, unknown_ca: {got:?}"
        );
        Ok(())
    })
    .await?;
    proxy.stop().await
}

fn jwt_file(path: &Path) -> String {
    format!(
        "    jwt:
      issuer: {ISS}
      audiences: [{AUD}]
      jwks: {{ file: {} }}
      forward_claims: {{ sub: x-user-id }}
    rate_limit: {{ requests_per_second: 0.2, burst: 3, key: client_ip }}
",
        quoted(path)
    )
}

/// The value the backend's `/headers` answer lists under `name`.
fn seen_header(body: &str, name: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["headers"][name][0].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_and_rate_limits_apply_behind_tls() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let edge = Edge::new("edge-jwt")?;
    let key = TestKey::es256("k1");
    let jwks = edge.dir.write("jwks.json", keys::jwks(&[&key]))?;
    let yaml = config(
        backend.addr(),
        "http1",
        &edge.tls(),
        &jwt_file(&jwks),
        "",
        "",
    );
    let proxy = Proxy::start(&yaml).await?;
    proxy.wait_ready().await?;
    let mut c = edge.https(proxy.addr(), Proto::H2).await?;

    // No token: 401 with the challenge, and no token of the bucket taken.
    let (parts, body) = c.get("/headers", &[]).await?;
    assert_eq!(parts.status, 401, "{body}");
    assert_eq!(
        header_str(&parts.headers, "x-skiff-error"),
        Some("unauthenticated")
    );
    assert_eq!(
        header_str(&parts.headers, "www-authenticate"),
        Some("Bearer")
    );

    let bearer = format!("Bearer {}", key.sign(&claims(ISS, AUD, 300, "alice")));
    for i in 0..3 {
        let (parts, body) = c
            .get(
                "/headers",
                &[("authorization", &bearer), ("x-user-id", "mallory")],
            )
            .await?;
        assert_eq!(parts.status, 200, "request {i}: {body}");
        assert_eq!(seen_header(&body, "x-user-id").as_deref(), Some("alice"));
        assert_eq!(
            seen_header(&body, "x-skiff-peer-identity"),
            None,
            "no peer identity at the edge"
        );
    }
    let (parts, body) = c.get("/headers", &[("authorization", &bearer)]).await?;
    assert_eq!(parts.status, 429, "{body}");
    assert_eq!(
        header_str(&parts.headers, "x-skiff-error"),
        Some("rate_limited")
    );
    let retry: u64 = header_str(&parts.headers, "retry-after")
        .context("a 429 carries Retry-After")?
        .parse()?;
    assert!((1..=5).contains(&retry), "Retry-After {retry}");

    let text = proxy.metrics().await?;
    let denied = metric_value(&text, "skiff_authn_denied_total", &[("listener", "edge")]);
    assert_eq!(denied, Some(1.0), "one 401");
    let limited = metric_value(&text, "skiff_ratelimited_total", &[("listener", "edge")]);
    assert_eq!(limited, Some(1.0), "one 429");
    proxy.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_jwks_is_fetched_over_the_clusters_tls_and_rotation_is_picked_up(
) -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let edge = Edge::new("edge-jwks")?;
    // The key server outside the mesh, with a certificate of another CA.
    let auth_ca = TestCa::root("auth.test")?;
    let auth_ca_file = edge.dir.write("auth-ca.pem", &auth_ca.root_pem)?;
    let a = TestKey::es256("a");
    let b = TestKey::ed25519("b");
    let server = HttpsServer::start(
        &auth_ca.leaf(Leaf::server(&["auth.shop.test"]))?,
        200,
        keys::jwks(&[&a]),
    )
    .await?;
    let jwt = format!(
        "    jwt:
      issuer: {ISS}
      audiences: [{AUD}]
      jwks: {{ uri: \"https://auth.shop.test/.well-known/jwks.json\", cluster: auth, refresh: 1s }}
"
    );
    let auth = format!(
        "  - name: auth
    protocol: http2
    endpoints: [\"{}\"]
    tls: {{ mode: simple, server_name: auth.shop.test, ca: {} }}
",
        server.addr,
        quoted(&auth_ca_file)
    );
    let yaml = config(backend.addr(), "http1", &edge.tls(), &jwt, "", &auth);
    let proxy = Proxy::start(&yaml).await?;
    proxy.wait_ready().await?;
    let token = |k: &TestKey| format!("Bearer {}", k.sign(&claims(ISS, AUD, 300, "u")));
    let get = |bearer: String| {
        let edge = &edge;
        let addr = proxy.addr();
        async move {
            let mut c = edge.https(addr, Proto::H1).await?;
            let (parts, body) = c.get("/headers", &[("authorization", &bearer)]).await?;
            anyhow::Ok((parts.status.as_u16(), body))
        }
    };
    let (status, body) = get(token(&a)).await?;
    assert_eq!(status, 200, "{body}");
    let outbound = proxy
        .metric(
            "skiff_tls_handshakes_total",
            &[
                ("side", "outbound"),
                ("name", "auth"),
                ("result", "success"),
            ],
        )
        .await?;
    assert!(outbound >= 1.0, "the fetch went over TLS: {outbound}");
    assert!(server.hits() >= 1);

    // Rotation: `a` leaves the set, `b` comes in; both picked up without a restart.
    server.set(200, keys::jwks(&[&b]));
    eventually(Duration::from_secs(15), || async {
        let (status, body) = get(token(&b)).await?;
        ensure!(status == 200, "the new key is not in yet: {status} {body}");
        let (status, _) = get(token(&a)).await?;
        ensure!(status == 401, "the old key still verifies: {status}");
        Ok(())
    })
    .await?;
    proxy.stop().await
}

#[tokio::test]
async fn an_unusable_certificate_file_at_startup_is_an_error_naming_it() -> anyhow::Result<()> {
    let edge = Edge::new("edge-bad")?;
    std::fs::write(&edge.default.1, "not a key\n")?;
    let yaml = config("127.0.0.1:9".parse()?, "http1", &edge.tls(), "", "", "");
    let Err(e) = Proxy::start(&yaml).await else {
        anyhow::bail!("a proxy started with a broken key file");
    };
    let message = e.to_string();
    assert!(
        message.contains(&edge.default.1.display().to_string()),
        "{message}"
    );
    assert!(message.contains("listener edge"), "{message}");
    Ok(())
}
