//! Two pods in network namespaces, each with Skiff as its sidecar and
//! `skiff iptables` installed, as the init container would: the app in pod A
//! calls pod B by IP:port, with no idea that a proxy exists, and the call goes
//! app → A's outbound listener → B's inbound listener → B's app.
//!
//! ```text
//!   pod A 198.18.0.10                bridge ns            pod B 198.18.0.20
//!   app (this test, uid 0)             br0                app :8080 (HTTP)
//!     │ connect 198.18.0.20:8080  ┌──────────────┐          :5555, :5556 (greet first)
//!     │                           │              │          :9000 (echo)
//!     ▼ iptables OUTPUT REDIRECT  │ port1  port2 │            ▲
//!   skiff :15001 (uid 1337) ──eth0┘              └eth0──▶ PREROUTING REDIRECT
//!                                                         skiff :15006 (uid 1337)
//! ```
//!
//! Proven by both proxies' metrics, by what B's app saw (the peer is B's own
//! sidecar; the proxy added `x-request-id`), and, for TCP that is not HTTP,
//! by its bytes arriving unchanged: at once on an `opaque_ports` port, after
//! the detection wait elsewhere.
//!
//! Each test builds its own pods (about a second). Needs root, iproute2,
//! iptables and setpriv; without them each test prints why and passes,
//! unless `SKIFF_REQUIRE_ROOT=1`, where it fails.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
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

const POD_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
const APP_PORT: u16 = 8080;
/// A server-first protocol's port, listed in `opaque_ports`.
const OPAQUE_PORT: u16 = 5555;
/// The same protocol on a port not listed: only detection finds it out.
const UNLISTED_PORT: u16 = 5556;
/// A client-first protocol that is not HTTP (say, TLS the app does itself).
const ECHO_PORT: u16 = 9000;
const PROXY_UID: u32 = 1337;
/// How long the sidecars wait for a client's first bytes.
const DETECT_TIMEOUT: Duration = Duration::from_secs(1);

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
    passthrough: true
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

/// B's client-first service: once the client has spoken, a line naming the
/// peer, then an echo of everything, from the first byte on.
fn echo(stream: TcpStream, peer: SocketAddr) -> anyhow::Result<()> {
    let mut stream = stream;
    let mut buf = [0u8; 16 * 1024];
    let mut first = true;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if first {
            stream.write_all(format!("peer={}\n", peer.ip()).as_bytes())?;
            first = false;
        }
        stream.write_all(&buf[..n])?;
    }
    stream.shutdown(Shutdown::Write)?;
    Ok(())
}

/// Write `sent` on `stream` (from a thread, so that neither side blocks the
/// other), close the sending side, and read `reader` to the end.
fn exchange(stream: &TcpStream, reader: &mut impl Read, sent: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let mut writer = stream.try_clone()?;
    let writing = std::thread::spawn(move || -> anyhow::Result<()> {
        writer.set_write_timeout(Some(Duration::from_secs(10)))?;
        writer.write_all(&sent)?;
        writer.shutdown(Shutdown::Write)?;
        Ok(())
    });
    let mut got = Vec::new();
    reader.read_to_end(&mut got).context("reading the answer")?;
    writing
        .join()
        .map_err(|_| anyhow!("the writer panicked"))??;
    Ok(got)
}

/// A connection from pod A to one of B's greeters, once greeted.
struct Greeted {
    line: String,
    bytes: Vec<u8>,
    took: Duration,
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Greeted {
    /// Connect from pod A to B's greeter at `port` and read the greeting.
    fn connect(w: &World, port: u16) -> anyhow::Result<Greeted> {
        let started = Instant::now();
        let stream = connect(&w.pod_a, SocketAddr::new(w.b_ip(), port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line).context("the greeting line")?;
        let mut bytes = vec![0u8; 256];
        reader
            .read_exact(&mut bytes)
            .context("the greeting's bytes")?;
        Ok(Greeted {
            line,
            bytes,
            took: started.elapsed(),
            stream,
            reader,
        })
    }

    /// The greeting B's greeter sends to a peer at B's own address (its sidecar).
    fn is_from_bs_sidecar(&self) -> bool {
        self.line == format!("220 pod-b greeter; peer={POD_B}\r\n")
            && self.bytes == greeting_bytes()
    }

    /// Send `payload()`, and check the echo.
    fn echoes(mut self) -> anyhow::Result<()> {
        let sent = payload();
        let echoed = exchange(&self.stream, &mut self.reader, sent.clone())?;
        ensure!(
            echoed == sent,
            "the stream changed: sent {} bytes, got {} back",
            sent.len(),
            echoed.len()
        );
        Ok(())
    }
}

/// Two pods on a bridge, B's app servers, `skiff iptables` in both, and
/// both sidecars serving. Fields drop in order: the sidecars and servers
/// first, the namespaces last.
struct World {
    sidecar_a: Spawned,
    sidecar_b: Spawned,
    _apps: Vec<ServerThread>,
    _files: Shared,
    pod_a: Netns,
    pod_b: Netns,
    _bridge: Bridge,
}

/// `true` when these tests cannot run here, after saying why (with
/// `SKIFF_REQUIRE_ROOT=1`, a failure instead).
fn skip() -> bool {
    let Some(why) =
        netns::unavailable(&[&["iptables", "-t", "nat", "-S"], &["setpriv", "--version"]])
    else {
        return false;
    };
    assert!(!netns::required(), "SKIFF_REQUIRE_ROOT=1 but {why}");
    eprintln!("skipping: {why}; set SKIFF_REQUIRE_ROOT=1 to make this a failure");
    true
}

impl World {
    fn new() -> anyhow::Result<World> {
        let mut bridge = Bridge::new()?;
        let pod_a = Netns::add(&Netns::unique("a"))?;
        let pod_b = Netns::add(&Netns::unique("b"))?;
        bridge.plug(&pod_a, &format!("{POD_A}/24"))?;
        bridge.plug(&pod_b, &format!("{POD_B}/24"))?;
        let files = Shared::new()?;
        let skiff = files.put("skiff", &std::fs::read(SKIFF)?, 0o755)?;
        let config = files.put("skiff.yaml", sidecar_yaml().as_bytes(), 0o644)?;

        // Pod B's app, on every address of the pod.
        let listen = |port: u16| pod_b.run(move || Ok(TcpListener::bind(("0.0.0.0", port))?));
        let apps = vec![
            ServerThread::start(listen(APP_PORT)?, http_app)?,
            ServerThread::start(listen(OPAQUE_PORT)?, greeter)?,
            ServerThread::start(listen(UNLISTED_PORT)?, greeter)?,
            ServerThread::start(listen(ECHO_PORT)?, echo)?,
        ];
        // Before interception the pods reach each other directly.
        let b_app = SocketAddr::from((POD_B, APP_PORT));
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
        let sidecar_b = sidecar(&pod_b, &skiff, &config)?;
        let sidecar_a = sidecar(&pod_a, &skiff, &config)?;
        Ok(World {
            sidecar_a,
            sidecar_b,
            _apps: apps,
            _files: files,
            pod_a,
            pod_b,
            _bridge: bridge,
        })
    }

    fn b_ip(&self) -> IpAddr {
        IpAddr::V4(POD_B)
    }

    fn b_app(&self) -> SocketAddr {
        SocketAddr::new(self.b_ip(), APP_PORT)
    }

    /// Both sidecars still run.
    fn alive(&mut self) -> anyhow::Result<()> {
        self.sidecar_a.alive().context("A's sidecar")?;
        self.sidecar_b.alive().context("B's sidecar")
    }

    /// Requests counted by A's outbound and B's inbound listener, by cluster, with status 200.
    fn requests(&self, a_cluster: &str) -> anyhow::Result<(f64, f64, String)> {
        let (a, b) = (metrics(&self.pod_a)?, metrics(&self.pod_b)?);
        let count = |text: &str, listener: &str, cluster: &str| {
            value(
                text,
                "skiff_requests_total",
                &[
                    ("listener", listener),
                    ("cluster", cluster),
                    ("status", "200"),
                ],
            )
        };
        Ok((
            count(&a, "outbound", a_cluster),
            count(&b, "inbound", "local_app"),
            format!(
                "--- A ---\n{}\n--- B ---\n{}",
                requests_lines(&a),
                requests_lines(&b)
            ),
        ))
    }
}

#[test]
fn http_by_address_passes_through_both_sidecars() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let mut w = World::new()?;

    // No route knows 198.18.0.20:8080, so A passes the request to its
    // original destination; B routes it to its app.
    let r = get(&w.pod_a, w.b_app(), "/plain")?;
    ensure!(r.status == 200, "GET /plain: {r:?}");
    for want in [
        "app=pod-b\n",
        "path=/plain\n",
        "peer=127.0.0.1\n",
        &format!("host={POD_B}:{APP_PORT}\n"),
    ] {
        ensure!(
            r.body.contains(want),
            "B's app saw {:?}, not {want:?} (peer 127.0.0.1: from B's sidecar)",
            r.body
        );
    }
    ensure!(
        !r.body.contains("x-request-id=-\n"),
        "no x-request-id reached the app: the request passed no proxy\n{}",
        r.body
    );
    eventually_blocking(Duration::from_secs(5), || {
        let (a, b, all) = w.requests("passthrough")?;
        ensure!(
            a == 1.0 && b == 1.0,
            "A passthrough {a}, B inbound {b}\n{all}"
        );
        Ok(())
    })?;

    // The same address under a name a route knows: A routes it to pod_b.
    let stream = connect(&w.pod_a, w.b_app())?;
    let r = http1_get(stream, "pod-b.test", "/routed")?;
    ensure!(
        r.status == 200 && r.body.contains("path=/routed\n"),
        "GET /routed: {r:?}"
    );
    eventually_blocking(Duration::from_secs(5), || {
        let (a, b, all) = w.requests("pod_b")?;
        ensure!(a == 1.0 && b == 2.0, "A pod_b {a}, B inbound {b}\n{all}");
        Ok(())
    })?;

    // HTTP/2 with prior knowledge, as gRPC apps speak it.
    if support::peers::curl() {
        let url = format!("http://{POD_B}:{APP_PORT}/h2");
        let out = w.pod_a.exec(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_code} %{http_version}",
            &url,
        ])?;
        ensure!(
            out.ends_with("\n200 2")
                && out.contains("path=/h2\n")
                && out.contains("peer=127.0.0.1\n"),
            "curl --http2-prior-knowledge {url}: {out:?}"
        );
        eventually_blocking(Duration::from_secs(5), || {
            let (a, b, all) = w.requests("passthrough")?;
            ensure!(
                a == 2.0 && b == 3.0,
                "A passthrough {a}, B inbound {b}\n{all}"
            );
            Ok(())
        })?;
    }

    // Nothing reached A's own inbound listener.
    let a = metrics(&w.pod_a)?;
    ensure!(
        value(&a, "skiff_requests_total", &[("listener", "inbound")]) == 0.0,
        "A's inbound listener served requests:\n{}",
        requests_lines(&a)
    );
    w.alive()
}

#[test]
fn a_server_first_protocol_on_an_opaque_port_passes_at_once_byte_for_byte() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let mut w = World::new()?;
    let g = Greeted::connect(&w, OPAQUE_PORT)?;
    ensure!(
        g.is_from_bs_sidecar(),
        "the greeting {:?} (+{:?}): the service must be reached by B's sidecar, from B's own address, unchanged",
        g.line,
        g.bytes
    );
    ensure!(
        g.took < DETECT_TIMEOUT / 2,
        "the greeting took {:?}: a sidecar waited for the client to speak first",
        g.took
    );
    // While the connection is open, each sidecar holds it.
    eventually_blocking(Duration::from_secs(5), || {
        let (a, b) = (metrics(&w.pod_a)?, metrics(&w.pod_b)?);
        let a_out = value(&a, "skiff_connections_active", &[("listener", "outbound")]);
        let b_in = value(&b, "skiff_connections_active", &[("listener", "inbound")]);
        ensure!(
            a_out == 1.0 && b_in == 1.0,
            "connections: A outbound {a_out}, B inbound {b_in}"
        );
        Ok(())
    })?;
    g.echoes()?;
    eventually_blocking(Duration::from_secs(5), || {
        let (a, b) = (metrics(&w.pod_a)?, metrics(&w.pod_b)?);
        let a_out = value(&a, "skiff_connections_active", &[("listener", "outbound")]);
        let b_in = value(&b, "skiff_connections_active", &[("listener", "inbound")]);
        ensure!(
            a_out == 0.0 && b_in == 0.0,
            "connections after the close: A outbound {a_out}, B inbound {b_in}"
        );
        Ok(())
    })?;
    w.alive()
}

#[test]
fn other_tcp_passes_through_after_detection() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let mut w = World::new()?;

    // A client-first protocol that is not HTTP: its first byte tells.
    let started = Instant::now();
    let stream = connect(&w.pod_a, SocketAddr::new(w.b_ip(), ECHO_PORT))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut sent = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec();
    sent.extend(payload());
    let got = exchange(&stream, &mut reader, sent.clone())?;
    let took = started.elapsed();
    let want_head = format!("peer={POD_B}\n");
    ensure!(
        got.starts_with(want_head.as_bytes()) && got[want_head.len()..] == sent[..],
        "TLS-like bytes to port {ECHO_PORT}: got {} bytes back, starting {:?}",
        got.len(),
        String::from_utf8_lossy(&got[..got.len().min(40)])
    );
    ensure!(took < Duration::from_secs(5), "the echo took {took:?}");
    drop((reader, stream));

    // A server-first protocol on a port nobody listed: each sidecar waits
    // out its detection timeout, then passes the connection on unchanged.
    let g = Greeted::connect(&w, UNLISTED_PORT)?;
    ensure!(
        g.is_from_bs_sidecar(),
        "the greeting {:?} (+{:?}) changed on the way",
        g.line,
        g.bytes
    );
    ensure!(
        g.took >= DETECT_TIMEOUT && g.took < DETECT_TIMEOUT * 2 + Duration::from_secs(3),
        "the greeting took {:?}; detection waits {DETECT_TIMEOUT:?} in each sidecar",
        g.took
    );
    g.echoes()
        .with_context(|| format!("port {UNLISTED_PORT}"))?;
    w.alive()
}

#[test]
fn the_proxy_never_loops_through_its_own_redirect() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    // Nothing listens at the destination: the app's call is redirected to
    // A's sidecar, whose own connection must go out (and fail), not come
    // back to itself through the redirect.
    let mut w = World::new()?;
    // 198.18.0.99 does not exist: a passthrough that loops would see its
    // own listener answer; one that does not gets an error from the network.
    let nowhere = SocketAddr::from(([198, 18, 0, 99], APP_PORT));
    let started = Instant::now();
    let r = get(&w.pod_a, nowhere, "/x")?;
    let took = started.elapsed();
    ensure!(
        r.status == 502 || r.status == 504,
        "a call to an address nobody has: {} {:?} {} after {took:?}",
        r.status,
        r.header("x-skiff-error"),
        r.body
    );
    let m = metrics(&w.pod_a)?;
    let served = value(&m, "skiff_requests_total", &[("listener", "outbound")]);
    ensure!(
        served == 1.0,
        "the outbound listener served {served} requests for one call: it looped\n{}",
        requests_lines(&m)
    );
    w.alive()
}

fn requests_lines(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.starts_with("skiff_requests_total"))
        .collect::<Vec<_>>()
        .join("\n")
}
