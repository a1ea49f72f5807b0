//! The sidecar's lifecycle, with the real binary where signals matter: the
//! drain sequence on SIGTERM, `POST /drain` and `POST /shutdown`, and hot
//! reload (a file renamed over the config, a ConfigMap `..data` symlink swap,
//! SIGHUP) while a client runs at full speed: nothing fails, a broken config
//! changes nothing, listeners come and go, an unchanged cluster keeps its
//! upstream connections.
//!
//! Durations are short (`drain.delay` 1 s, `drain.timeout` 10 s) so the suite
//! stays quick; every wait is bounded.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use support::grpc_backend::{echo_client, EchoRequest, GrpcBackend};
use support::http_backend::HttpBackend;
use support::http_client::{header_str, http_get, HttpClient, Proto};
use support::process::SkiffProcess;
use support::scratch::ScratchDir;
use support::{eventually, metric_value, within};
use tokio::task::JoinHandle;

const DELAY: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- helpers

/// `skiff run` on `config`, once it serves: `/ready` answers 200 and the
/// handlers of SIGTERM and SIGHUP are installed. (Before that, a SIGTERM
/// would kill the process with the default action and prove nothing.)
async fn start(config: &Path, listeners: &[&str]) -> anyhow::Result<SkiffProcess> {
    let config = config.to_path_buf();
    let names: Vec<String> = listeners.iter().map(|s| s.to_string()).collect();
    let skiff = tokio::task::spawn_blocking(move || {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        SkiffProcess::start(&config, &names)
    })
    .await??;
    eventually(Duration::from_secs(10), || async {
        let status = ready(skiff.admin).await?;
        ensure!(status == 200, "/ready answers {status}");
        Ok(())
    })
    .await?;
    let pid = skiff.child.pid();
    eventually(Duration::from_secs(10), || async move {
        let caught = caught_signals(pid)?;
        for (name, n) in [("SIGHUP", 1), ("SIGTERM", 15)] {
            ensure!(caught & (1 << (n - 1)) != 0, "no {name} handler yet");
        }
        Ok(())
    })
    .await?;
    Ok(skiff)
}

/// The `SigCgt` mask of a process: the signals it has handlers for.
fn caught_signals(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .ok_or_else(|| anyhow!("no SigCgt in /proc/{pid}/status"))?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

fn signal(skiff: &SkiffProcess, name: &str) -> anyhow::Result<()> {
    let pid = skiff.child.pid().to_string();
    let st = Command::new("kill").args(["-s", name, &pid]).status()?;
    ensure!(st.success(), "kill -s {name} {pid} failed");
    Ok(())
}

async fn get_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    Ok(http_get(addr, path).await?.0.as_u16())
}

/// GET `path` at `addr` answers 200; `what` names the check when it does not.
async fn expect_200(addr: SocketAddr, path: &str, what: &str) -> anyhow::Result<()> {
    let s = get_status(addr, path).await?;
    ensure!(s == 200, "{what}: GET {path} answered {s}");
    Ok(())
}

async fn ready(admin: SocketAddr) -> anyhow::Result<u16> {
    get_status(admin, "/ready").await
}

async fn admin_post(admin: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut c = HttpClient::connect(admin, Proto::H1).await?;
    let req = c.request("POST", path).body(support::body::empty())?;
    let (parts, _) = c.exchange(req).await?;
    Ok(parts.status.as_u16())
}

async fn reloads(admin: SocketAddr, result: &str) -> anyhow::Result<f64> {
    let (status, _, text) = http_get(admin, "/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}");
    Ok(metric_value(&text, "skiff_config_reloads_total", &[("result", result)]).unwrap_or(0.0))
}

/// Wait until `skiff_config_reloads_total{result}` reads `n`.
async fn wait_reloads(admin: SocketAddr, result: &str, n: f64) -> anyhow::Result<()> {
    eventually(Duration::from_secs(5), || async {
        let now = reloads(admin, result).await?;
        ensure!(
            now == n,
            "skiff_config_reloads_total{{result={result:?}}} is {now}, not {n}"
        );
        Ok(())
    })
    .await
}

/// The last lines skiff logged, for failure messages.
fn log_tail(skiff: &SkiffProcess) -> String {
    let lines = skiff.lines.snapshot();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Wait (bounded) for the process to exit, with status 0.
async fn exits_0(skiff: &mut SkiffProcess, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = skiff.child.0.try_wait()? {
            ensure!(
                status.code() == Some(0),
                "exit status {status}:\n{}",
                log_tail(skiff)
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "skiff still runs {limit:?} later; its last lines:\n{}",
                log_tail(skiff)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn still_running(skiff: &mut SkiffProcess) -> anyhow::Result<()> {
    if let Some(status) = skiff.child.0.try_wait()? {
        bail!("skiff exited ({status}) too early:\n{}", log_tail(skiff));
    }
    Ok(())
}

/// Wait (bounded) until `what`, in flight, has reached its backend: `seen`
/// counts what the backend got.
async fn wait_arrived(what: &str, seen: impl Fn() -> usize) -> anyhow::Result<()> {
    eventually(Duration::from_secs(5), || async {
        ensure!(seen() > 0, "{what} has not reached the backend");
        Ok(())
    })
    .await
}

/// `Ok` once a TCP connect to `addr` is refused (nothing listens any more).
async fn refused(addr: SocketAddr) -> anyhow::Result<()> {
    match tokio::net::TcpStream::connect(addr).await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        Err(e) => bail!("connect to {addr} failed, but not refused: {e}"),
        Ok(_) => bail!("{addr} still accepts connections"),
    }
}

// ---------------------------------------------------------------- drain

fn drain_yaml(grpc: SocketAddr, web: SocketAddr) -> String {
    format!(
        r#"admin:
  address: 127.0.0.1:0
drain:
  delay: {delay}ms
  timeout: {timeout}ms
listeners:
  - name: inbound
    address: 127.0.0.1:0
    virtual_hosts:
      - name: local
        domains: ["*"]
        routes:
          - match: {{ prefix: "/http/" }}
            cluster: web
          - match: {{ prefix: "/" }}
            cluster: grpc
clusters:
  - name: grpc
    protocol: http2
    endpoints: ["{grpc}"]
  - name: web
    protocol: http1
    endpoints: ["{web}"]
"#,
        delay = DELAY.as_millis(),
        timeout = TIMEOUT.as_millis(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_streams_and_slow_calls_then_exits_0() -> anyhow::Result<()> {
    let grpc = GrpcBackend::start().await?;
    let web = HttpBackend::start().await?;
    let dir = ScratchDir::new("lifecycle-drain")?;
    let config = dir.write("skiff.yaml", drain_yaml(grpc.addr(), web.addr()))?;
    let mut skiff = start(&config, &["inbound"]).await?;
    let inbound = skiff.listener("inbound")?;

    // In flight at the signal: three server streams (10 messages, 300 ms
    // apart: 3 s each), three unary calls that take 2.5 s, and one slow
    // HTTP/1.1 request. All outlive drain.delay.
    let streaming = echo_client(inbound).await?;
    let mut streams: Vec<JoinHandle<anyhow::Result<u32>>> = Vec::new();
    for i in 0..3u8 {
        let mut c = streaming.clone();
        let req = EchoRequest {
            payload: vec![i; 16],
            repeat: 10,
            delay_ms: 300,
            ..Default::default()
        };
        let mut s = within(Duration::from_secs(5), "stream head", async {
            Ok(c.server_stream(req).await?.into_inner())
        })
        .await?;
        streams.push(tokio::spawn(async move {
            let mut n = 0;
            while let Some(m) = within(Duration::from_secs(5), "stream message", async {
                Ok(s.message().await?)
            })
            .await?
            {
                ensure!(m.index == n, "message {} arrived as number {n}", m.index);
                ensure!(m.payload == vec![i; 16], "payload changed");
                n += 1;
            }
            Ok(n)
        }));
    }
    let unary = echo_client(inbound).await?;
    let mut calls: Vec<JoinHandle<anyhow::Result<()>>> = Vec::new();
    for i in 0..3u8 {
        let mut c = unary.clone();
        calls.push(tokio::spawn(async move {
            let req = EchoRequest {
                payload: vec![i; 8],
                delay_ms: 2500,
                ..Default::default()
            };
            let r = within(Duration::from_secs(15), "slow unary call", async {
                Ok(c.unary(req).await?.into_inner())
            })
            .await?;
            ensure!(r.payload == vec![i; 8], "unary payload changed");
            Ok(())
        }));
    }
    let mut h1 = HttpClient::connect(inbound, Proto::H1).await?;
    let slow_http = tokio::spawn(async move { h1.get("/http/slow?delay_ms=2500").await });
    eventually(Duration::from_secs(5), || async {
        let (g, w) = (grpc.seen().len(), web.seen().len());
        ensure!(
            g == 6 && w == 1,
            "{g} gRPC calls and {w} HTTP requests at the backends"
        );
        Ok(())
    })
    .await?;

    let signalled = Instant::now();
    signal(&skiff, "TERM")?;

    // Readiness fails at once.
    eventually(Duration::from_millis(500), || async {
        let s = ready(skiff.admin).await?;
        ensure!(s == 503, "/ready answers {s}");
        Ok(())
    })
    .await
    .context("/ready must fail as soon as SIGTERM arrives")?;

    // During drain.delay the inbound listener still takes new connections.
    let mut late = echo_client(inbound)
        .await
        .context("a new connection during drain.delay")?;
    let answer = within(Duration::from_secs(5), "a call during drain.delay", async {
        Ok(late
            .unary(EchoRequest {
                payload: b"late".to_vec(),
                ..Default::default()
            })
            .await?
            .into_inner())
    })
    .await?;
    ensure!(answer.payload == b"late", "wrong answer during drain.delay");
    let checked_at = signalled.elapsed();
    ensure!(
        checked_at < DELAY,
        "the check during drain.delay ended {checked_at:?} after the signal, past the delay: it proves nothing"
    );

    // After it, new connections are refused.
    eventually(DELAY + Duration::from_secs(3), || refused(inbound))
        .await
        .context("the inbound listener must stop accepting after drain.delay")?;
    let refused_at = signalled.elapsed();
    ensure!(
        refused_at >= DELAY,
        "connections were refused {refused_at:?} after SIGTERM, before drain.delay ({DELAY:?})"
    );

    // Everything in flight completes.
    for (i, s) in streams.into_iter().enumerate() {
        let n = s.await?.with_context(|| format!("stream {i}"))?;
        ensure!(n == 10, "stream {i} ended after {n} of 10 messages");
    }
    for (i, c) in calls.into_iter().enumerate() {
        c.await?.with_context(|| format!("unary call {i}"))?;
    }
    let (parts, body) = slow_http.await??;
    ensure!(
        parts.status == 200,
        "slow HTTP/1.1 request: {} {}",
        parts.status,
        body.text()
    );
    ensure!(
        header_str(&parts.headers, "connection") == Some("close"),
        "an HTTP/1.1 response during the drain says Connection: close; headers: {:?}",
        parts.headers
    );

    // And the process exits 0 once they have, not at drain.timeout.
    exits_0(&mut skiff, TIMEOUT + Duration::from_secs(5)).await?;
    let exited_at = signalled.elapsed();
    ensure!(
        exited_at < TIMEOUT - Duration::from_secs(2),
        "exited {exited_at:?} after SIGTERM: it waited for drain.timeout though nothing was left"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_a_stream_that_does_not_end() -> anyhow::Result<()> {
    let grpc = GrpcBackend::start().await?;
    let web = HttpBackend::start().await?;
    let dir = ScratchDir::new("lifecycle-timeout")?;
    let yaml = drain_yaml(grpc.addr(), web.addr()).replace(
        &format!("timeout: {}ms", TIMEOUT.as_millis()),
        "timeout: 2s",
    );
    let config = dir.write("skiff.yaml", yaml)?;
    let mut skiff = start(&config, &["inbound"]).await?;
    let mut c = echo_client(skiff.listener("inbound")?).await?;
    // 60 messages a second apart: a minute, far past drain.timeout.
    let mut s = c
        .server_stream(EchoRequest {
            repeat: 60,
            delay_ms: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    let _reader =
        support::AbortOnDrop::spawn(async move { while let Ok(Some(_)) = s.message().await {} });
    wait_arrived("the stream", || grpc.seen().len()).await?;
    let signalled = Instant::now();
    signal(&skiff, "TERM")?;
    exits_0(&mut skiff, Duration::from_secs(10)).await?;
    let took = signalled.elapsed();
    ensure!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "drain.timeout is 2s, but the process exited {took:?} after SIGTERM"
    );
    Ok(())
}

fn two_listener_yaml(web: SocketAddr, delay: &str) -> String {
    format!(
        r#"admin:
  address: 127.0.0.1:0
drain:
  delay: {delay}
  timeout: 15s
listeners:
  - name: inbound
    address: 127.0.0.1:0
    virtual_hosts:
      - name: local
        domains: ["*"]
        routes:
          - match: {{ prefix: "/" }}
            cluster: app
  - name: outbound
    address: 127.0.0.1:0
    direction: outbound
    virtual_hosts:
      - name: deps
        domains: ["*"]
        routes:
          - match: {{ prefix: "/" }}
            cluster: app
clusters:
  - name: app
    protocol: http1
    endpoints: ["{web}"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_listener_serves_the_app_until_the_app_closes() -> anyhow::Result<()> {
    let web = HttpBackend::start().await?;
    let dir = ScratchDir::new("lifecycle-outbound")?;
    let config = dir.write("skiff.yaml", two_listener_yaml(web.addr(), "300ms"))?;
    let mut skiff = start(&config, &["inbound", "outbound"]).await?;
    let (inbound, outbound) = (skiff.listener("inbound")?, skiff.listener("outbound")?);

    // The app's pooled connection to its sidecar.
    let mut app = HttpClient::connect(outbound, Proto::H2).await?;
    let (parts, _) = app.get("/before").await?;
    ensure!(parts.status == 200, "before SIGTERM: {}", parts.status);

    let signalled = Instant::now();
    signal(&skiff, "TERM")?;
    eventually(Duration::from_secs(5), || refused(inbound))
        .await
        .context("the inbound listener must stop after drain.delay")?;

    // The app, finishing its own work, still calls its dependencies: on its
    // connection, and on a new one while that is open.
    for i in 0..5 {
        let (parts, body) = app.get(&format!("/after/{i}")).await.with_context(|| {
            format!("call {i} on the app's connection after the inbound stopped")
        })?;
        ensure!(
            parts.status == 200,
            "call {i}: {} {}",
            parts.status,
            body.text()
        );
    }
    let mut second = HttpClient::connect(outbound, Proto::H1)
        .await
        .context("a new connection to the outbound listener while the app still works")?;
    let (parts, _) = second.get("/after/new").await?;
    ensure!(
        parts.status == 200,
        "new outbound connection: {}",
        parts.status
    );
    drop(second);
    ensure!(
        web.seen()
            .iter()
            .filter(|s| s.uri.path().starts_with("/after/"))
            .count()
            == 6,
        "not every call after SIGTERM reached the app's dependency"
    );
    still_running(&mut skiff)?;

    // The app is done and closes its connection: the sidecar stops.
    drop(app);
    let closed = Instant::now();
    exits_0(&mut skiff, Duration::from_secs(10)).await?;
    ensure!(
        closed.elapsed() < Duration::from_secs(3),
        "exited {:?} after the app closed its connection ({:?} after SIGTERM)",
        closed.elapsed(),
        signalled.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_drain_fails_readiness_and_stops_listeners_then_post_shutdown_exits_0(
) -> anyhow::Result<()> {
    let web = HttpBackend::start().await?;
    let dir = ScratchDir::new("lifecycle-post-drain")?;
    let config = dir.write("skiff.yaml", two_listener_yaml(web.addr(), "300ms"))?;
    let mut skiff = start(&config, &["inbound", "outbound"]).await?;
    let (inbound, outbound) = (skiff.listener("inbound")?, skiff.listener("outbound")?);

    ensure!(
        admin_post(skiff.admin, "/drain").await? == 200,
        "POST /drain"
    );
    let s = ready(skiff.admin).await?;
    ensure!(s == 503, "/ready right after POST /drain: {s}");
    eventually(Duration::from_secs(5), || async {
        refused(inbound).await.context("inbound")?;
        refused(outbound).await.context("outbound")
    })
    .await
    .context("after POST /drain both listeners stop (the app has no connection open)")?;

    // Drained, the process stays up: the admin port still answers.
    let (live, _, _) = http_get(skiff.admin, "/live").await?;
    ensure!(live == 200, "/live after the drain: {live}");
    ensure!(ready(skiff.admin).await? == 503, "/ready after the drain");
    still_running(&mut skiff)?;

    ensure!(
        admin_post(skiff.admin, "/shutdown").await? == 200,
        "POST /shutdown"
    );
    exits_0(&mut skiff, Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_shutdown_drains_then_exits_0() -> anyhow::Result<()> {
    let web = HttpBackend::start().await?;
    let dir = ScratchDir::new("lifecycle-post-shutdown")?;
    let config = dir.write("skiff.yaml", two_listener_yaml(web.addr(), "300ms"))?;
    let mut skiff = start(&config, &["inbound", "outbound"]).await?;
    let inbound = skiff.listener("inbound")?;

    let mut c = HttpClient::connect(inbound, Proto::H2).await?;
    let slow = tokio::spawn(async move { c.get("/slow?delay_ms=1500").await });
    wait_arrived("the request", || web.seen().len()).await?;
    ensure!(
        admin_post(skiff.admin, "/shutdown").await? == 200,
        "POST /shutdown"
    );
    ensure!(
        ready(skiff.admin).await? == 503,
        "/ready right after POST /shutdown"
    );
    let (parts, body) = slow.await??;
    ensure!(
        parts.status == 200,
        "the request in flight: {} {}",
        parts.status,
        body.text()
    );
    exits_0(&mut skiff, Duration::from_secs(10)).await?;
    Ok(())
}

// ---------------------------------------------------------------- reload

/// A client at full speed: `tasks` connections (HTTP/1.1 and HTTP/2 in
/// turn), each sending GET `path` back to back until stopped or `limit`.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(addr: SocketAddr, path: &'static str, tasks: usize, limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + limit;
        let tasks = (0..tasks)
            .map(|i| {
                let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2 };
                let (stop, ok) = (stop.clone(), ok.clone());
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    let mut client: Option<HttpClient> = None;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let c = match &mut client {
                            Some(c) => c,
                            None => match HttpClient::connect(addr, proto).await {
                                Ok(c) => client.insert(c),
                                Err(e) => {
                                    failures.push(format!("{proto:?} connect: {e:#}"));
                                    continue;
                                }
                            },
                        };
                        match c.get(path).await {
                            Ok((parts, _)) if parts.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((parts, body)) => failures.push(format!(
                                "{proto:?}: {} {:?} {}",
                                parts.status,
                                header_str(&parts.headers, "x-skiff-error"),
                                body.text()
                            )),
                            Err(e) => {
                                failures.push(format!("{proto:?}: {e:#}"));
                                client = None;
                            }
                        }
                    }
                    failures
                })
            })
            .collect();
        Load { stop, ok, tasks }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stop; the successful count and every failure.
    async fn finish(self) -> anyhow::Result<(u64, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for t in self.tasks {
            failures.extend(
                within(Duration::from_secs(40), "load task", async { Ok(t.await?) }).await?,
            );
        }
        Ok((self.ok.load(Ordering::Relaxed), failures))
    }

    /// Wait until `n` more requests have succeeded.
    async fn advance(&self, n: u64) -> anyhow::Result<()> {
        let target = self.ok() + n;
        eventually(Duration::from_secs(10), || async {
            let now = self.ok();
            ensure!(
                now >= target,
                "the load stalls at {now} successes (waiting for {target})"
            );
            Ok(())
        })
        .await
    }
}

/// The reload suite's config: `/api/` to the cluster `app` at `endpoint`;
/// with `v2`, also `/v2/` to it.
fn reload_yaml(endpoint: SocketAddr, v2: bool) -> String {
    let v2_route = if v2 {
        "          - match: { prefix: \"/v2/\" }\n            cluster: app\n"
    } else {
        ""
    };
    format!(
        r#"admin:
  address: 127.0.0.1:0
drain:
  delay: 0s
  timeout: 5s
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
{v2_route}          - match: {{ prefix: "/api/" }}
            cluster: app
clusters:
  - name: app
    protocol: http1
    endpoints: ["{endpoint}"]
"#
    )
}

/// A config directory laid out as a Kubernetes ConfigMap volume:
/// `skiff.yaml -> ..data/skiff.yaml`, `..data -> ..<version>/`, and a new
/// version appears by swapping `..data` in one rename.
struct ConfigMapDir {
    root: PathBuf,
    version: usize,
}

impl ConfigMapDir {
    fn new(root: &Path, yaml: &str) -> anyhow::Result<ConfigMapDir> {
        let mut d = ConfigMapDir {
            root: root.to_path_buf(),
            version: 0,
        };
        d.publish(yaml)?;
        std::os::unix::fs::symlink("..data/skiff.yaml", d.path())?;
        Ok(d)
    }

    fn path(&self) -> PathBuf {
        self.root.join("skiff.yaml")
    }

    /// What the kubelet does: write the new version's directory, point a
    /// temporary symlink at it, rename that over `..data`, drop the old one.
    fn publish(&mut self, yaml: &str) -> anyhow::Result<()> {
        self.version += 1;
        let dir = format!("..2026_11_24_v{}", self.version);
        std::fs::create_dir(self.root.join(&dir))?;
        std::fs::write(self.root.join(&dir).join("skiff.yaml"), yaml)?;
        let tmp = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&dir, &tmp)?;
        std::fs::rename(&tmp, self.root.join("..data"))?;
        if self.version > 1 {
            let old = self
                .root
                .join(format!("..2026_11_24_v{}", self.version - 1));
            std::fs::remove_dir_all(old)?;
        }
        Ok(())
    }
}

/// Replace `path` in one step: write a temporary file next to it, rename it over.
fn write_atomically(path: &Path, yaml: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, yaml)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_no_request_and_a_broken_config_changes_nothing(
) -> anyhow::Result<()> {
    let b1 = HttpBackend::start().await?;
    let b2 = HttpBackend::start().await?;
    let dir = ScratchDir::new("lifecycle-reload")?;
    let mut configmap = ConfigMapDir::new(dir.path(), &reload_yaml(b1.addr(), false))?;
    let config = configmap.path();
    let mut skiff = start(&config, &["main"]).await?;
    let (main, admin) = (skiff.listener("main")?, skiff.admin);
    ensure!(
        get_status(main, "/v2/x").await? == 404,
        "/v2/ is routed before it exists"
    );

    let load = Load::start(main, "/api/load", 4, Duration::from_secs(40));
    load.advance(200).await?;

    // 1. A route added, through a ConfigMap `..data` swap.
    configmap.publish(&reload_yaml(b1.addr(), true))?;
    let t = Instant::now();
    eventually(Duration::from_secs(5), || async {
        let s = get_status(main, "/v2/x").await?;
        ensure!(s == 200, "/v2/x answers {s}");
        Ok(())
    })
    .await
    .context("the route added by a ..data symlink swap")?;
    eprintln!("the new route answered {:?} after the swap", t.elapsed());
    wait_reloads(admin, "success", 1.0).await?;
    load.advance(200).await?;

    // 2. The cluster's endpoints changed: a new file renamed over the config
    // (this also replaces the symlink with a plain file). Slow requests in
    // flight on the old endpoint finish there.
    let mut slow = Vec::new();
    for i in 0..4 {
        let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2 };
        let mut c = HttpClient::connect(main, proto).await?;
        slow.push(tokio::spawn(async move {
            c.get(&format!("/api/slow/{i}?delay_ms=2000")).await
        }));
    }
    eventually(Duration::from_secs(5), || async {
        let n = b1
            .seen()
            .iter()
            .filter(|s| s.uri.path().starts_with("/api/slow/"))
            .count();
        ensure!(n == 4, "{n} slow requests at the old endpoint");
        Ok(())
    })
    .await?;
    write_atomically(&config, &reload_yaml(b2.addr(), true))?;
    eventually(Duration::from_secs(5), || async {
        ensure!(
            b2.seen().len() >= 50,
            "{} requests at the new endpoint",
            b2.seen().len()
        );
        Ok(())
    })
    .await
    .context("the changed endpoints take the traffic")?;
    let old = b1.seen().len();
    load.advance(300).await?;
    for (i, r) in slow.into_iter().enumerate() {
        let (parts, body) = r.await?.with_context(|| format!("slow request {i}"))?;
        ensure!(
            parts.status == 200,
            "slow request {i}, in flight on the old endpoint during the reload: {} {:?} {}",
            parts.status,
            header_str(&parts.headers, "x-skiff-error"),
            body.text()
        );
    }
    ensure!(
        b1.seen().len() == old,
        "the old endpoint still gets requests after the change: {} → {}",
        old,
        b1.seen().len()
    );
    wait_reloads(admin, "success", 2.0).await?;

    // 3. Broken configs change nothing: a syntax error, then an unknown cluster.
    let dump = http_get(admin, "/config_dump").await?.2;
    let good = reload_yaml(b2.addr(), true);
    let unknown_cluster = good.replace(
        "            cluster: app\n",
        "            cluster: nowhere\n",
    );
    let unknown_line = unknown_cluster
        .lines()
        .position(|l| l.contains("nowhere"))
        .map(|i| i + 1)
        .ok_or_else(|| anyhow!("no `nowhere` line"))?;
    let broken = [
        ("a syntax error", format!("{good}  oops: [unclosed\n"), None),
        ("an unknown cluster", unknown_cluster, Some(unknown_line)),
    ];
    for (n, (what, yaml, line)) in broken.iter().enumerate() {
        let before = load.ok();
        write_atomically(&config, yaml)?;
        eventually(Duration::from_secs(5), || async {
            let f = reloads(admin, "failure").await?;
            ensure!(f == (n + 1) as f64, "{f} failed reloads");
            Ok(())
        })
        .await
        .with_context(|| format!("a config with {what} is refused and counted"))?;
        ensure!(
            reloads(admin, "success").await? == 2.0,
            "{what}: counted as a success"
        );
        ensure!(
            http_get(admin, "/config_dump").await?.2 == dump,
            "{what}: the effective config changed"
        );
        expect_200(main, "/v2/x", &format!("{what}: /v2/ stopped answering")).await?;
        if let Some(line) = line {
            let logs = skiff.lines.joined();
            ensure!(
                logs.contains("unknown cluster") && logs.contains(&format!(":{line}:")),
                "{what}: the log names the error and its line {line}:\n{}",
                log_tail(&skiff)
            );
        }
        load.advance(100).await?;
        ensure!(load.ok() > before, "{what}: traffic stopped");
    }

    // 4. A good config again is applied again.
    write_atomically(&config, &good)?;
    wait_reloads(admin, "success", 3.0).await?;
    load.advance(100).await?;

    let (ok, failures) = load.finish().await?;
    eprintln!("{ok} requests under load, {} failed", failures.len());
    ensure!(
        failures.is_empty(),
        "{} of {} requests failed during the reloads; the first: {:#?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    still_running(&mut skiff)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config() -> anyhow::Result<()> {
    let b1 = HttpBackend::start().await?;
    let dir = ScratchDir::new("lifecycle-sighup")?;
    let config = dir.write("skiff.yaml", reload_yaml(b1.addr(), false))?;
    let mut skiff = start(&config, &["main"]).await?;
    let (main, admin) = (skiff.listener("main")?, skiff.admin);

    // The file is unchanged, so only the signal can cause this reload.
    ensure!(
        reloads(admin, "success").await? == 0.0,
        "a reload before any change"
    );
    signal(&skiff, "HUP")?;
    wait_reloads(admin, "success", 1.0)
        .await
        .context("SIGHUP reloads the config")?;
    still_running(&mut skiff)?;
    expect_200(main, "/api/x", "traffic after SIGHUP").await?;

    // A change read on SIGHUP: it is applied once, not again by the poll.
    std::fs::write(&config, reload_yaml(b1.addr(), true))?;
    signal(&skiff, "HUP")?;
    eventually(Duration::from_secs(5), || async {
        let s = get_status(main, "/v2/x").await?;
        ensure!(s == 200, "/v2/x answers {s}");
        Ok(())
    })
    .await?;
    // Longer than the poll interval: a second reload would show by now.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ensure!(
        reloads(admin, "success").await? == 2.0,
        "the change was applied twice"
    );
    ensure!(reloads(admin, "failure").await? == 0.0, "a failed reload");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_each_listener_its_own_routes_when_ports_are_0() -> anyhow::Result<()> {
    let inside = HttpBackend::start().await?;
    let outside = HttpBackend::start().await?;
    let yaml = |extra: &str| {
        format!(
            r#"admin:
  address: 127.0.0.1:0
drain:
  delay: 0s
listeners:
  - name: inbound
    address: 127.0.0.1:0
    virtual_hosts:
      - name: local
        domains: ["*"]
        routes:
          - match: {{ prefix: "/" }}
            cluster: local_app
  - name: outbound
    address: 127.0.0.1:0
    direction: outbound
    virtual_hosts:
      - name: deps
        domains: ["*"]
        routes:
          - match: {{ prefix: "/" }}
            cluster: dependency
clusters:
  - name: local_app
    protocol: http1
    endpoints: ["{}"]
  - name: dependency
    protocol: http1
    endpoints: ["{}"]
{extra}"#,
            inside.addr(),
            outside.addr()
        )
    };
    let dir = ScratchDir::new("lifecycle-two-listeners")?;
    let config = dir.write("skiff.yaml", yaml(""))?;
    let skiff = start(&config, &["inbound", "outbound"]).await?;
    let (inbound, outbound) = (skiff.listener("inbound")?, skiff.listener("outbound")?);
    let hits = |b: &HttpBackend, p: &str| b.seen().iter().filter(|s| s.uri.path() == p).count();

    ensure!(get_status(inbound, "/in/1").await? == 200 && hits(&inside, "/in/1") == 1);
    ensure!(get_status(outbound, "/out/1").await? == 200 && hits(&outside, "/out/1") == 1);

    // Any reload (here: a comment added) must leave each listener its routes.
    std::fs::write(&config, yaml("# touched\n"))?;
    wait_reloads(skiff.admin, "success", 1.0).await?;
    expect_200(inbound, "/in/2", "inbound after the reload").await?;
    expect_200(outbound, "/out/2", "outbound after the reload").await?;
    ensure!(
        hits(&inside, "/in/2") == 1,
        "after a reload the inbound listener no longer reaches local_app (listeners are matched by their address text, and both are 127.0.0.1:0)"
    );
    ensure!(
        hits(&outside, "/out/2") == 1,
        "after a reload the outbound listener no longer reaches its dependency: it serves the routes of the inbound listener (listeners are matched by their address text, and both are 127.0.0.1:0)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_listeners_and_an_unbindable_one_changes_nothing(
) -> anyhow::Result<()> {
    let b1 = HttpBackend::start().await?;
    let dir = ScratchDir::new("lifecycle-listeners")?;
    let base = reload_yaml(b1.addr(), false);
    let config = dir.write("skiff.yaml", &base)?;
    let skiff = start(&config, &["main"]).await?;
    let (main, admin) = (skiff.listener("main")?, skiff.admin);
    // Another loopback address, so that its text differs from main's.
    let extra = |address: &str| {
        base.replace(
            "clusters:\n",
            &format!(
                "  - name: extra\n    address: {address}\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: \"/\" }}\n            cluster: app\nclusters:\n"
            ),
        )
    };

    std::fs::write(&config, extra("127.0.0.2:0"))?;
    wait_reloads(admin, "success", 1.0).await?;
    let added = eventually(Duration::from_secs(5), || async {
        let (_, listeners) = support::process::bound_addresses(&skiff.lines.snapshot());
        listeners
            .get("extra")
            .copied()
            .ok_or_else(|| anyhow!("no address logged for the new listener"))
    })
    .await?;
    expect_200(added, "/api/x", "the added listener").await?;
    expect_200(main, "/api/x", "main, with a listener added").await?;

    // A listener that cannot be bound: the reload changes nothing.
    std::fs::write(&config, extra("192.0.2.1:1"))?;
    wait_reloads(admin, "failure", 1.0).await?;
    ensure!(
        reloads(admin, "success").await? == 1.0,
        "counted as a success"
    );
    expect_200(added, "/api/x", "extra, after a refused reload").await?;
    expect_200(main, "/api/x", "main, after a refused reload").await?;

    // Removed again: its port closes, main serves on.
    std::fs::write(&config, &base)?;
    wait_reloads(admin, "success", 2.0).await?;
    eventually(Duration::from_secs(5), || refused(added))
        .await
        .context("a removed listener stops accepting")?;
    expect_200(main, "/api/x", "main, with the listener removed").await?;
    Ok(())
}

/// A TCP forwarder to `to` that counts the connections it accepted: the
/// upstream connections a proxy opened.
async fn counting_forwarder(
    to: SocketAddr,
) -> anyhow::Result<(SocketAddr, Arc<AtomicU64>, support::AbortOnDrop)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    let task = support::AbortOnDrop::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut down, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            conns.spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    Ok((addr, accepted, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_connection_pool_of_an_unchanged_cluster() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let (upstream, accepted, _forwarder) = counting_forwarder(backend.addr()).await?;
    let dir = ScratchDir::new("lifecycle-pool")?;
    // HTTP/2 upstream: one multiplexed connection per endpoint.
    let yaml = |v2: bool| reload_yaml(upstream, v2).replace("protocol: http1", "protocol: http2");
    let config = dir.write("skiff.yaml", yaml(false))?;
    let skiff = start(&config, &["main"]).await?;
    let main = skiff.listener("main")?;
    for i in 0..5 {
        expect_200(main, &format!("/api/{i}"), "before the reload").await?;
    }
    ensure!(
        accepted.load(Ordering::SeqCst) == 1,
        "{} upstream connections for 5 requests before any reload",
        accepted.load(Ordering::SeqCst)
    );

    // A route added; the cluster is the same.
    std::fs::write(&config, yaml(true))?;
    wait_reloads(skiff.admin, "success", 1.0).await?;
    for i in 0..5 {
        expect_200(main, &format!("/api/{i}"), "after the reload").await?;
        expect_200(main, &format!("/v2/{i}"), "the new route").await?;
    }
    ensure!(
        accepted.load(Ordering::SeqCst) == 1,
        "an unchanged cluster opened {} upstream connections across a reload: its pool was not kept",
        accepted.load(Ordering::SeqCst)
    );
    Ok(())
}
