//! Two pods in network namespaces, each with Skiff as its sidecar and
//! `skiff iptables` installed, as the init container would: the app in pod A
//! calls pod B by IP:port, with no idea that a proxy exists, and the call goes
//! app → A's outbound listener → B's inbound listener → B's app.
//!
//! ```text
//!   pod A 198.18.0.10                bridge ns            pod B 198.18.0.20
//!   app (this test, uid 0)             br0                app :8080 (HTTP)
//!     │ connect 198.18.0.20:8080  ┌──────────────┐          :5555 (greets first)
//!     ▼ iptables OUTPUT REDIRECT  │ port1  port2 │            ▲
//!   skiff :15001 (uid 1337) ──eth0┘              └eth0──▶ PREROUTING REDIRECT
//!                                                         skiff :15006 (uid 1337)
//! ```
//!
//! Proven by both proxies' metrics, by what B's app saw (the peer is B's own
//! sidecar; the proxy added `x-request-id`), and, for the server-first
//! protocol on an opaque port, by its bytes arriving unchanged and at once.
//!
//! Needs root, iproute2, iptables and setpriv; without them it prints why
//! and passes, unless `SKIFF_REQUIRE_ROOT=1`, where it fails.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context as _};
use support::eventually::eventually_blocking;
use support::metric_value;
use support::netns::{
    self, http1_get, read_request_head, Bridge, Netns, Response, ServerThread, Spawned,
};
use support::process::{bound_addresses, SKIFF};

const POD_A: &str = "198.18.0.10";
const POD_B: &str = "198.18.0.20";
const APP_PORT: u16 = 8080;
/// The server-first protocol's port, listed in `opaque_ports`.
const OPAQUE_PORT: u16 = 5555;
const PROXY_UID: u32 = 1337;
/// Longer than any wait below: a connection that went through protocol
/// detection instead of `opaque_ports` would show as a stall this long.
const DETECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The sidecar config of both pods (the same ConfigMap everywhere).
fn sidecar_yaml() -> String {
    format!(
        r#"admin:
  address: 127.0.0.1:15000
drain:
  delay: 0s
  timeout: 2s
listeners:
  - name: outbound
    address: 127.0.0.1:15001
    direction: outbound
    transparent: true
    passthrough: true
    opaque_ports: [{OPAQUE_PORT}]
    limits:
      detect_timeout: {detect}s
    virtual_hosts:
      - name: pod-b
        domains: ["pod-b.test"]
        routes:
          - match: {{ prefix: "/" }}
            cluster: pod_b
  - name: inbound
    address: 0.0.0.0:15006
    transparent: true
    opaque_ports: [{OPAQUE_PORT}]
    limits:
      detect_timeout: {detect}s
    virtual_hosts:
      - name: local
        domains: ["*"]
        routes:
          - match: {{ prefix: "/" }}
            cluster: local_app
clusters:
  - name: local_app
    protocol: http1
    endpoints: ["127.0.0.1:{APP_PORT}"]
  - name: pod_b
    protocol: http1
    endpoints: ["{POD_B}:{APP_PORT}"]
"#,
        detect = DETECT_TIMEOUT.as_secs()
    )
}

/// A directory every UID may read, removed on drop: the proxy runs as 1337
/// and may not reach into the build tree (e.g. under /root).
struct Shared(PathBuf);

impl Shared {
    fn new() -> anyhow::Result<Shared> {
        let dir = std::env::temp_dir().join(Netns::unique("files"));
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        Ok(Shared(dir))
    }

    fn put(&self, name: &str, contents: &[u8], mode: u32) -> anyhow::Result<PathBuf> {
        let p = self.0.join(name);
        std::fs::write(&p, contents)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        Ok(p)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `skiff run` in `pod` as the proxy's UID, once its admin port answers /ready.
fn sidecar(pod: &Netns, skiff: &Path, config: &Path) -> anyhow::Result<Spawned> {
    let (skiff, config) = (skiff.display().to_string(), config.display().to_string());
    let mut p = pod.spawn(
        Some(PROXY_UID),
        &skiff,
        &["run", "--config", &config],
        &[("SKIFF_LOG", "info")],
    )?;
    eventually_blocking(Duration::from_secs(20), || {
        p.alive()?;
        let (admin, listeners) = bound_addresses(&p.lines());
        ensure!(
            admin.is_some() && listeners.len() == 2,
            "not bound yet:\n{}",
            p.tail(20)
        );
        let Response { status, body, .. } =
            get(pod, SocketAddr::from(([127, 0, 0, 1], 15000)), "/ready")?;
        ensure!(status == 200, "/ready: {status} {body}");
        Ok(())
    })
    .with_context(|| format!("the sidecar of {}", pod.name()))?;
    Ok(p)
}

/// GET `path` from `addr`, connecting from inside `pod`.
fn get(pod: &Netns, addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    let stream = connect(pod, addr)?;
    http1_get(stream, &addr.to_string(), path)
}

/// A TCP connection made from inside `pod` (as root: an app, not the proxy).
fn connect(pod: &Netns, addr: SocketAddr) -> anyhow::Result<TcpStream> {
    pod.run(move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connect {addr}"))
    })
}

fn metrics(pod: &Netns) -> anyhow::Result<String> {
    let Response { status, body, .. } =
        get(pod, SocketAddr::from(([127, 0, 0, 1], 15000)), "/metrics")?;
    ensure!(status == 200, "/metrics: {status}");
    Ok(body)
}

fn value(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(text, metric, labels).unwrap_or(0.0)
}

/// B's HTTP app: answers what it saw, one request per connection.
fn http_app(stream: TcpStream, peer: SocketAddr) -> anyhow::Result<()> {
    let mut stream = stream;
    let (path, headers) = read_request_head(&mut stream)?;
    let header = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .unwrap_or("-")
    };
    let body = format!(
        "app=pod-b\npath={path}\npeer={}\nhost={}\nx-request-id={}\n",
        peer.ip(),
        header("host"),
        header("x-request-id")
    );
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

/// The binary tail of the greeting: every byte value once.
fn greeting_bytes() -> Vec<u8> {
    (0..=255u8).collect()
}

/// B's server-first service: greets first (a line naming the peer, then
/// every byte value), then echoes what it reads until the client is done.
fn greeter(stream: TcpStream, peer: SocketAddr) -> anyhow::Result<()> {
    let mut stream = stream;
    stream.write_all(format!("220 pod-b greeter; peer={}\r\n", peer.ip()).as_bytes())?;
    stream.write_all(&greeting_bytes())?;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n])?;
    }
    stream.shutdown(Shutdown::Write)?;
    Ok(())
}

/// Bytes no proxy would make up: a pattern with every value, 200 KiB.
fn payload() -> Vec<u8> {
    (0..200 * 1024u32)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect()
}

#[test]
fn the_app_calls_another_pod_by_address_through_both_sidecars() -> anyhow::Result<()> {
    if let Some(why) =
        netns::unavailable(&[&["iptables", "-t", "nat", "-S"], &["setpriv", "--version"]])
    {
        assert!(!netns::required(), "SKIFF_REQUIRE_ROOT=1 but {why}");
        eprintln!("skipping: {why}; set SKIFF_REQUIRE_ROOT=1 to make this a failure");
        return Ok(());
    }
    // Dropped in reverse: the processes and servers first, the namespaces last.
    let mut bridge = Bridge::new()?;
    let pod_a = Netns::add(&Netns::unique("a"))?;
    let pod_b = Netns::add(&Netns::unique("b"))?;
    bridge.plug(&pod_a, &format!("{POD_A}/24"))?;
    bridge.plug(&pod_b, &format!("{POD_B}/24"))?;

    let shared = Shared::new()?;
    let skiff = shared.put("skiff", &std::fs::read(SKIFF)?, 0o755)?;
    let config = shared.put("skiff.yaml", sidecar_yaml().as_bytes(), 0o644)?;

    // Pod B's app: HTTP on 8080 and a server-first protocol, on every address.
    let _http_app = ServerThread::start(
        pod_b.run(|| Ok(TcpListener::bind(("0.0.0.0", APP_PORT))?))?,
        http_app,
    )?;
    let _greeter = ServerThread::start(
        pod_b.run(|| Ok(TcpListener::bind(("0.0.0.0", OPAQUE_PORT))?))?,
        greeter,
    )?;
    let b_app = SocketAddr::from((POD_B.parse::<std::net::Ipv4Addr>()?, APP_PORT));
    let b_opaque = SocketAddr::new(b_app.ip(), OPAQUE_PORT);
    // Before interception the pods reach each other directly.
    eventually_blocking(Duration::from_secs(10), || {
        let Response { status, body, .. } = get(&pod_a, b_app, "/direct")?;
        ensure!(
            status == 200 && body.contains(&format!("peer={POD_A}")),
            "{status} {body}"
        );
        Ok(())
    })
    .context("the bridge joins the pods")?;

    // The init containers, then the sidecars.
    let skiff_text = skiff.display().to_string();
    for pod in [&pod_a, &pod_b] {
        pod.exec(&[&skiff_text, "iptables", "--log-format", "text"])?;
    }
    let mut sidecar_b = sidecar(&pod_b, &skiff, &config)?;
    let mut sidecar_a = sidecar(&pod_a, &skiff, &config)?;

    // 1. The server-first protocol on an opaque port: the greeting comes at
    // once (no detection wait in either sidecar) and every byte is intact.
    let started = Instant::now();
    let stream = connect(&pod_a, b_opaque)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line).context("the greeting line")?;
    let mut tail = vec![0u8; 256];
    reader
        .read_exact(&mut tail)
        .context("the greeting's bytes")?;
    let greeted = started.elapsed();
    ensure!(
        line == format!("220 pod-b greeter; peer={POD_B}\r\n"),
        "the greeting {line:?}: the service must be reached by B's sidecar, from B's own address"
    );
    ensure!(
        tail == greeting_bytes(),
        "the greeting's bytes changed on the way"
    );
    ensure!(
        greeted < DETECT_TIMEOUT / 2,
        "the greeting took {greeted:?}: a sidecar waited for the client to speak first"
    );
    // While the connection is open, each sidecar holds it.
    eventually_blocking(Duration::from_secs(5), || {
        let (a, b) = (metrics(&pod_a)?, metrics(&pod_b)?);
        let a_out = value(&a, "skiff_connections_active", &[("listener", "outbound")]);
        let b_in = value(&b, "skiff_connections_active", &[("listener", "inbound")]);
        ensure!(
            a_out == 1.0 && b_in == 1.0,
            "connections: A outbound {a_out}, B inbound {b_in}"
        );
        Ok(())
    })?;
    let sent = payload();
    let mut writer = stream.try_clone()?;
    let to_send = sent.clone();
    let writing = std::thread::spawn(move || -> anyhow::Result<()> {
        writer.set_write_timeout(Some(Duration::from_secs(10)))?;
        writer.write_all(&to_send)?;
        writer.shutdown(Shutdown::Write)?;
        Ok(())
    });
    let mut echoed = Vec::new();
    reader
        .read_to_end(&mut echoed)
        .context("reading the echo")?;
    writing
        .join()
        .map_err(|_| anyhow!("the writer panicked"))??;
    ensure!(
        echoed.len() == sent.len() && echoed == sent,
        "the opaque stream changed: sent {} bytes, got {} back",
        sent.len(),
        echoed.len()
    );
    drop(reader);
    drop(stream);

    // 2. HTTP by address: no route knows 198.18.0.20:8080, so A passes it
    // through to the original destination; B routes it to its app.
    let Response {
        status,
        headers,
        body,
    } = get(&pod_a, b_app, "/plain")?;
    ensure!(status == 200, "GET /plain: {status} {headers:?} {body}");
    for want in [
        "app=pod-b\n",
        "path=/plain\n",
        "peer=127.0.0.1\n",
        &format!("host={POD_B}:{APP_PORT}\n"),
    ] {
        ensure!(
            body.contains(want),
            "B's app saw {body:?}, not {want:?} (peer 127.0.0.1: it came from B's sidecar)"
        );
    }
    ensure!(
        !body.contains("x-request-id=-\n"),
        "no x-request-id reached the app: the request did not pass a proxy\n{body}"
    );

    // 3. The same address with a name a route knows: A routes it to pod_b.
    let stream = connect(&pod_a, b_app)?;
    let Response { status, body, .. } = http1_get(stream, "pod-b.test", "/routed")?;
    ensure!(
        status == 200 && body.contains("path=/routed\n"),
        "GET /routed: {status} {body}"
    );

    let requests = "skiff_requests_total";
    eventually_blocking(Duration::from_secs(5), || {
        let (a, b) = (metrics(&pod_a)?, metrics(&pod_b)?);
        let passthrough = value(
            &a,
            requests,
            &[
                ("listener", "outbound"),
                ("cluster", "passthrough"),
                ("status", "200"),
            ],
        );
        let routed = value(
            &a,
            requests,
            &[
                ("listener", "outbound"),
                ("cluster", "pod_b"),
                ("status", "200"),
            ],
        );
        let inbound = value(
            &b,
            requests,
            &[
                ("listener", "inbound"),
                ("cluster", "local_app"),
                ("status", "200"),
            ],
        );
        ensure!(
            passthrough == 1.0 && routed == 1.0 && inbound == 2.0,
            "A outbound: passthrough {passthrough}, pod_b {routed}; B inbound local_app {inbound}\n--- A ---\n{}\n--- B ---\n{}",
            requests_lines(&a),
            requests_lines(&b)
        );
        Ok(())
    })?;

    // 4. The sidecars are the only way in: nothing reached them directly.
    let a = metrics(&pod_a)?;
    ensure!(
        value(&a, requests, &[("listener", "inbound")]) == 0.0,
        "A's inbound listener served requests: {}",
        requests_lines(&a)
    );
    sidecar_a.alive().context("A's sidecar")?;
    sidecar_b.alive().context("B's sidecar")?;
    Ok(())
}

fn requests_lines(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.starts_with("skiff_requests_total"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_proxy_never_loops_through_its_own_redirect() -> anyhow::Result<()> {
    if let Some(why) =
        netns::unavailable(&[&["iptables", "-t", "nat", "-S"], &["setpriv", "--version"]])
    {
        assert!(!netns::required(), "SKIFF_REQUIRE_ROOT=1 but {why}");
        eprintln!("skipping: {why}; set SKIFF_REQUIRE_ROOT=1 to make this a failure");
        return Ok(());
    }
    // One pod, nothing listening at the destination: the app's call is
    // redirected to the sidecar, whose own connection must go out (and
    // fail), not come back to itself through the redirect.
    let mut bridge = Bridge::new()?;
    let pod = Netns::add(&Netns::unique("loop"))?;
    bridge.plug(&pod, &format!("{POD_A}/24"))?;
    let shared = Shared::new()?;
    let skiff = shared.put("skiff", &std::fs::read(SKIFF)?, 0o755)?;
    let config = shared.put("skiff.yaml", sidecar_yaml().as_bytes(), 0o644)?;
    pod.exec(&[
        &skiff.display().to_string(),
        "iptables",
        "--log-format",
        "text",
    ])?;
    let mut sidecar = sidecar(&pod, &skiff, &config)?;

    // 198.18.0.99 does not exist: a passthrough that loops would see its
    // own listener answer; one that does not gets an error from the network.
    let nowhere = SocketAddr::from(([198, 18, 0, 99], APP_PORT));
    let started = Instant::now();
    let r = get(&pod, nowhere, "/x")?;
    let took = started.elapsed();
    ensure!(
        r.status == 502 || r.status == 504,
        "a call to an address nobody has: {} {:?} {} after {took:?}",
        r.status,
        r.header("x-skiff-error"),
        r.body
    );
    let m = metrics(&pod)?;
    let served = value(&m, "skiff_requests_total", &[("listener", "outbound")]);
    ensure!(
        served == 1.0,
        "the outbound listener served {served} requests for one call: it looped\n{}",
        requests_lines(&m)
    );
    sidecar.alive()?;
    Ok(())
}
