//! A soak of the real skiff binary: honest traffic at a steady rate beside
//! hostile clients, for minutes, watching whether the honest side ever
//! errs or stalls and whether skiff's memory or descriptors drift.
//!
//! Run with `cargo bench --bench soak` (10 minutes on the release build),
//! `cargo bench --bench soak -- --duration 120` for another length, or
//! `cargo test --bench soak -- --quick` (about 20 s on a debug build: it
//! checks the harness and skiff hold, its figures mean little).
//! BENCHMARKS.md holds a full run.
//!
//! - **Honest**, paced: gRPC unary calls, gRPC server streams (100
//!   messages each) and HTTP/1.1 GETs, each lane on connections of its own
//!   through one skiff listener to the bench backend (`benches/proxy/echo.rs`).
//! - **Hostile**, beside it, on connections of their own: rapid reset
//!   (bursts of HEADERS + RST_STREAM), slow readers (HTTP/2 streams of
//!   100 MB with a zero window, HTTP/1.1 connections that pipeline
//!   requests and never read), malformed chunked bodies (and heads with
//!   both Content-Length and Transfer-Encoding), connection churn (connect
//!   and close, or one request per connection), and requests to a cluster
//!   whose endpoint is down (an upstream fault).
//! - **Around**: the config rewritten every 30 s (a reload), skiff's VmRSS,
//!   open descriptors, CPU and `skiff_connections_active` sampled every
//!   few seconds.
//!
//! The run fails (exit 1) when an honest call failed or stalled (took over
//! 2 s, or a lane finished nothing in a sample), or when VmRSS or the
//! descriptor count drifted between the first and the last quarter of the
//! run past the bounds printed with the verdict.

#[allow(dead_code)]
#[path = "../proxy/echo.rs"]
mod echo;
#[allow(dead_code)]
#[path = "../proxy/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "../proxy/procstat.rs"]
mod procstat;

mod hostile;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Honest traffic beside hostile clients through skiff, for minutes")]
struct Args {
    /// About 20 s, samples every 2 s: checks that the harness and skiff hold.
    #[arg(long)]
    quick: bool,
    /// Seconds to run [default: 600, quick: 20].
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds between samples [default: 5, quick: 2].
    #[arg(long)]
    sample: Option<f64>,
    /// Honest gRPC unary calls per second.
    #[arg(long, default_value_t = 400)]
    unary_rate: u32,
    /// Honest gRPC server streams (100 messages each) per second.
    #[arg(long, default_value_t = 20)]
    stream_rate: u32,
    /// Honest HTTP/1.1 GETs per second.
    #[arg(long, default_value_t = 200)]
    http1_rate: u32,
    /// The skiff binary [default: the one cargo built with this bench].
    #[arg(long, env = "SKIFF_BENCH_SKIFF")]
    skiff: Option<PathBuf>,
    /// Where to write the JSON [default: bench-results/soak-<time>.json].
    #[arg(long)]
    json: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A call slower than this is a stall.
const STALL: Duration = Duration::from_secs(2);
/// Drift bounds between the first and the last quarter (medians).
const RSS_DRIFT_KIB: u64 = 16 * 1024;
const FD_DRIFT: i64 = 32;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run(args))
}

/// One honest lane's figures.
#[derive(Default)]
struct Lane {
    calls: Cell<u64>,
    errors: Cell<u64>,
    first_error: RefCell<Option<String>>,
    /// Calls over [`STALL`].
    stalls: Cell<u64>,
    /// The slowest call, ns, since the last sample and over the run.
    max_ns: Cell<u64>,
    max_ns_run: Cell<u64>,
}

impl Lane {
    fn done(&self, took: Duration, result: anyhow::Result<u64>) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.max_ns.set(self.max_ns.get().max(ns));
        self.max_ns_run.set(self.max_ns_run.get().max(ns));
        if took > STALL {
            self.stalls.set(self.stalls.get() + 1);
        }
        match result {
            Ok(_) => self.calls.set(self.calls.get() + 1),
            Err(e) => {
                self.errors.set(self.errors.get() + 1);
                let mut first = self.first_error.borrow_mut();
                if first.is_none() {
                    *first = Some(format!("{e:#}"));
                }
            }
        }
    }
}

/// What the run shares between its tasks (all on one thread).
pub struct Shared {
    stop: Cell<bool>,
    /// Hostile actions done, by kind, and answers that were not the
    /// expected refusal.
    pub hostile: RefCell<std::collections::BTreeMap<&'static str, (u64, u64)>>,
}

impl Shared {
    pub fn stopped(&self) -> bool {
        self.stop.get()
    }

    pub fn count(&self, kind: &'static str, wrong: bool) {
        let mut h = self.hostile.borrow_mut();
        let e = h.entry(kind).or_default();
        e.0 += 1;
        if wrong {
            e.1 += 1;
        }
    }
}

/// skiff as a child process.
struct Skiff {
    child: Child,
    config: PathBuf,
    admin: SocketAddr,
    main: SocketAddr,
    log: PathBuf,
}

impl Drop for Skiff {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The config: the bench backend for everything, and `/dead/` to a
/// cluster whose one endpoint is a closed port. `generation` changes a
/// route timeout, so each rewrite is a real reload.
fn config(admin: u16, main: u16, backend: SocketAddr, dead: SocketAddr, generation: u64) -> String {
    format!(
        "\
admin: {{ address: 127.0.0.1:{admin} }}
listeners:
  - name: main
    address: 127.0.0.1:{main}
    virtual_hosts:
      - name: all
        domains: [\"*\"]
        routes:
          - match: {{ prefix: \"/dead/\" }}
            cluster: dead
            timeout: 2s
          - match: {{ prefix: \"/\" }}
            cluster: backend
            timeout: {}s
clusters:
  - name: backend
    protocol: http2
    endpoints: [\"{backend}\"]
  - name: dead
    protocol: http1
    connect_timeout: 250ms
    endpoints: [\"{dead}\"]
",
        60 + generation % 2
    )
}

async fn start_skiff(
    program: &Path,
    dir: &Path,
    backend: SocketAddr,
    dead: SocketAddr,
) -> anyhow::Result<Skiff> {
    let (admin, main) = (free_port()?, free_port()?);
    let cfg = dir.join("soak.yaml");
    std::fs::write(&cfg, config(admin, main, backend, dead, 0))?;
    let log = dir.join("skiff.log");
    let out = std::fs::File::create(&log)?;
    let child = Command::new(program)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("SKIFF_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("start {}", program.display()))?;
    let mut skiff = Skiff {
        child,
        config: cfg,
        admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        main: SocketAddr::from(([127, 0, 0, 1], main)),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    for addr in [skiff.main, skiff.admin] {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Some(status) = skiff.child.try_wait()? {
                bail!("skiff exited ({status}): {}", tail(&skiff.log));
            }
            if Instant::now() > deadline {
                bail!(
                    "skiff did not listen on {addr} in 10 s: {}",
                    tail(&skiff.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(skiff)
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// Calls at `rate` per second, spread over `lanes` connections, until stopped.
async fn paced<F, Fut>(shared: Rc<Shared>, lane: Rc<Lane>, rate: u32, lanes: u32, call: F)
where
    F: Fn() -> Fut + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + 'static,
{
    let call = Rc::new(call);
    let mut tasks = Vec::new();
    for _ in 0..lanes.max(1) {
        let (shared, lane, call) = (shared.clone(), lane.clone(), call.clone());
        let every = Duration::from_secs_f64(f64::from(lanes.max(1)) / f64::from(rate.max(1)));
        tasks.push(tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !shared.stopped() {
                tick.tick().await;
                let t0 = Instant::now();
                let result = call().await;
                lane.done(t0.elapsed(), result);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// A reusable connection per lane: made on first use and again after an
/// error (which the lane has counted).
type Slot<T> = Rc<RefCell<Option<T>>>;

fn grpc_lane(
    addr: SocketAddr,
    path: &'static str,
    frame: Bytes,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<u64>>>> {
    let slot: Slot<h2::client::SendRequest<Bytes>> = Rc::default();
    let uri: http::Uri = format!("http://soak{path}").parse().unwrap_or_default();
    move || {
        let (slot, uri, frame) = (slot.clone(), uri.clone(), frame.clone());
        Box::pin(async move {
            let existing = slot.borrow_mut().take();
            let mut client = match existing {
                Some(c) => c,
                None => load::h2_connect(addr).await?,
            };
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                load::grpc_call(&mut client, &uri, frame),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in 10 s")));
            if r.is_ok() {
                *slot.borrow_mut() = Some(client);
            }
            r
        })
    }
}

fn h1_lane(
    addr: SocketAddr,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<u64>>>> {
    type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>;
    let slot: Slot<Sender> = Rc::default();
    move || {
        let slot = slot.clone();
        Box::pin(async move {
            let existing = slot.borrow_mut().take();
            let mut sender = match existing {
                Some(s) => s,
                None => load::h1_connect(addr).await?,
            };
            let r =
                tokio::time::timeout(Duration::from_secs(10), load::h1_call(&mut sender, "soak"))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in 10 s")));
            if r.is_ok() {
                *slot.borrow_mut() = Some(sender);
            }
            r
        })
    }
}

/// One sample of skiff.
#[derive(Clone, Debug)]
struct Point {
    t_s: f64,
    rss_kib: u64,
    fds: i64,
    cpu_pct: f64,
    connections: f64,
    reloads: f64,
    /// Honest calls finished in the interval, by lane, and their slowest.
    calls: [u64; 3],
    max_ms: [f64; 3],
    others_pct: f64,
}

fn fd_count(pid: u32) -> i64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(-1, |d| d.count() as i64)
}

/// `name{label="value"...}` summed over its series in a Prometheus text.
fn metric_sum(text: &str, name: &str, must: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(must))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn admin_metrics(admin: SocketAddr) -> anyhow::Result<String> {
    let mut sender = load::h1_connect(admin).await?;
    sender.ready().await?;
    let req = http::Request::builder()
        .uri("/metrics")
        .header(http::header::HOST, "admin")
        .body(http_body_util::Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let body = http_body_util::BodyExt::collect(resp.into_body()).await?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn run(args: Args) -> anyhow::Result<()> {
    let duration = Duration::from_secs_f64(
        args.duration
            .unwrap_or(if args.quick { 20.0 } else { 600.0 })
            .clamp(5.0, 24.0 * 3600.0),
    );
    let every = Duration::from_secs_f64(
        args.sample
            .unwrap_or(if args.quick { 2.0 } else { 5.0 })
            .clamp(0.5, 600.0),
    );
    let program = args
        .skiff
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_skiff")));
    let dir = std::env::temp_dir().join(format!("skiff-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let backend = echo::start(Bytes::from(vec![b'x'; 1024])).await?;
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut skiff = start_skiff(&program, &dir, backend, dead).await?;
    let pid = skiff.child.id();
    let addr = skiff.main;
    println!(
        "soak: {} s, samples every {} s, skiff {} (pid {pid}) on {addr}",
        duration.as_secs_f64(),
        every.as_secs_f64(),
        program.display()
    );
    println!(
        "honest: {} unary/s, {} streams/s (100 messages), {} HTTP/1.1/s; hostile beside it; reload every 30 s",
        args.unary_rate, args.stream_rate, args.http1_rate
    );

    let shared = Rc::new(Shared {
        stop: Cell::new(false),
        hostile: RefCell::default(),
    });
    let lanes: [Rc<Lane>; 3] = Default::default();
    let names = ["unary", "stream", "http1"];
    let unary = echo::grpc_frame(&echo::EchoRequest {
        payload: Bytes::from(vec![b'x'; 1024]),
        count: 0,
        hold_ms: 0,
    });
    let stream = echo::grpc_frame(&echo::EchoRequest {
        payload: Bytes::from(vec![b'x'; 1024]),
        count: 100,
        hold_ms: 0,
    });
    let mut tasks = vec![
        tokio::task::spawn_local(paced(
            shared.clone(),
            lanes[0].clone(),
            args.unary_rate,
            4,
            grpc_lane(addr, echo::UNARY_PATH, unary),
        )),
        tokio::task::spawn_local(paced(
            shared.clone(),
            lanes[1].clone(),
            args.stream_rate,
            2,
            grpc_lane(addr, echo::STREAM_PATH, stream),
        )),
        tokio::task::spawn_local(paced(
            shared.clone(),
            lanes[2].clone(),
            args.http1_rate,
            4,
            h1_lane(addr),
        )),
    ];
    tasks.extend(hostile::spawn_all(shared.clone(), addr));

    // Reloads.
    let reloads = {
        let (shared, cfg) = (shared.clone(), skiff.config.clone());
        let (admin, main) = (skiff.admin.port(), skiff.main.port());
        tokio::task::spawn_local(async move {
            let mut generation = 0;
            loop {
                let step = Duration::from_secs(30);
                let t0 = Instant::now();
                while t0.elapsed() < step {
                    if shared.stopped() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                generation += 1;
                let _ = std::fs::write(&cfg, config(admin, main, backend, dead, generation));
            }
        })
    };

    // Sampling.
    let started = Instant::now();
    let mut points: Vec<Point> = Vec::new();
    let mut before = procstat::sample(&[pid]);
    let mut last_calls = [0u64; 3];
    let mut exited = None;
    while started.elapsed() < duration {
        tokio::time::sleep(every.min(duration.saturating_sub(started.elapsed()))).await;
        if let Some(status) = skiff.child.try_wait()? {
            exited = Some(format!("skiff exited ({status}): {}", tail(&skiff.log)));
            break;
        }
        let now = procstat::sample(&[pid]);
        let cpu = before.cpu_ns_until(&now) as f64;
        let wall = every.as_nanos() as f64;
        let text = admin_metrics(skiff.admin).await.unwrap_or_default();
        let mut calls = [0u64; 3];
        let mut max_ms = [0f64; 3];
        for i in 0..3 {
            let c = lanes[i].calls.get();
            calls[i] = c - last_calls[i];
            last_calls[i] = c;
            max_ms[i] = lanes[i].max_ns.replace(0) as f64 / 1e6;
        }
        let p = Point {
            t_s: started.elapsed().as_secs_f64(),
            rss_kib: now.rss_kib,
            fds: fd_count(pid),
            cpu_pct: 100.0 * cpu / wall,
            connections: metric_sum(&text, "skiff_connections_active", "listener=\"main\""),
            reloads: metric_sum(&text, "skiff_config_reloads_total", "result=\"success\""),
            calls,
            max_ms,
            others_pct: 100.0 * procstat::others_between(&before, &now),
        };
        eprintln!(
            "{:>6.0}s  rss {:>6.1} MiB  fds {:>4}  cpu {:>5.1}%  conns {:>4}  reloads {:>2}  honest {:>5}/{:>4}/{:>5} (max {:>5.0}/{:>5.0}/{:>5.0} ms)  [other work {:.0}%]",
            p.t_s,
            p.rss_kib as f64 / 1024.0,
            p.fds,
            p.cpu_pct,
            p.connections,
            p.reloads,
            p.calls[0],
            p.calls[1],
            p.calls[2],
            p.max_ms[0],
            p.max_ms[1],
            p.max_ms[2],
            p.others_pct,
        );
        points.push(p);
        before = now;
    }
    shared.stop.set(true);
    let _ = reloads.await;
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
    // The hostile clients are gone: what skiff holds now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_text = admin_metrics(skiff.admin).await.unwrap_or_default();
    let end_conns = metric_sum(&after_text, "skiff_connections_active", "listener=\"main\"");
    let end_fds = fd_count(pid);
    let end_rss = procstat::sample(&[pid]).rss_kib;

    // Verdict.
    let mut failures: Vec<String> = Vec::new();
    if let Some(e) = exited {
        failures.push(e);
    }
    println!();
    println!("honest traffic:");
    for (i, lane) in lanes.iter().enumerate() {
        let starved = points.iter().filter(|p| p.calls[i] == 0).count();
        println!(
            "  {:<7} {:>8} calls, {} errors, {} over {:?}, {} samples with none, slowest {:.1} ms{}",
            names[i],
            lane.calls.get(),
            lane.errors.get(),
            lane.stalls.get(),
            STALL,
            starved,
            lane.max_ns_run.get() as f64 / 1e6,
            lane.first_error
                .borrow()
                .as_ref()
                .map_or(String::new(), |e| format!(" (first error: {e})")),
        );
        if lane.errors.get() > 0 {
            failures.push(format!(
                "{} honest {} calls failed",
                lane.errors.get(),
                names[i]
            ));
        }
        if lane.stalls.get() > 0 || starved > 0 {
            failures.push(format!(
                "honest {} calls stalled ({} slow calls, {starved} samples with none)",
                names[i],
                lane.stalls.get()
            ));
        }
    }
    println!("hostile clients (done, answers other than the expected refusal):");
    for (kind, (n, wrong)) in shared.hostile.borrow().iter() {
        println!("  {kind:<18} {n:>8}  {wrong}");
    }
    let q = (points.len() / 4).max(1);
    // The first sample is skipped: pools and buffers are still filling.
    let first: Vec<&Point> = points.iter().skip(1).take(q).collect();
    let last: Vec<&Point> = points.iter().rev().take(q).collect();
    let rss_first = median(first.iter().map(|p| p.rss_kib as f64).collect());
    let rss_last = median(last.iter().map(|p| p.rss_kib as f64).collect());
    let fds_first = median(first.iter().map(|p| p.fds as f64).collect());
    let fds_last = median(last.iter().map(|p| p.fds as f64).collect());
    let rss_max = points.iter().map(|p| p.rss_kib).max().unwrap_or(0);
    let cpu_mean = points.iter().map(|p| p.cpu_pct).sum::<f64>() / points.len().max(1) as f64;
    let others = points.iter().map(|p| p.others_pct).sum::<f64>() / points.len().max(1) as f64;
    println!(
        "skiff VmRSS: first quarter {:.1} MiB, last quarter {:.1} MiB (medians), peak {:.1} MiB, {:.1} MiB once the clients left",
        rss_first / 1024.0,
        rss_last / 1024.0,
        rss_max as f64 / 1024.0,
        end_rss as f64 / 1024.0
    );
    println!(
        "skiff fds: first quarter {fds_first:.0}, last quarter {fds_last:.0}, {end_fds} once the clients left; connections active then: {end_conns}"
    );
    println!(
        "skiff CPU: {cpu_mean:.1}% of a core on average; other work on the machine: {others:.0}% of its CPUs"
    );
    if rss_last - rss_first > RSS_DRIFT_KIB as f64 {
        failures.push(format!(
            "VmRSS drifted {:.1} MiB (bound {} MiB)",
            (rss_last - rss_first) / 1024.0,
            RSS_DRIFT_KIB / 1024
        ));
    }
    if fds_last - fds_first > FD_DRIFT as f64 {
        failures.push(format!(
            "open fds drifted by {:.0} (bound {FD_DRIFT})",
            fds_last - fds_first
        ));
    }
    let json_path = args.json.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("bench-results")
            .join(format!("soak-{}.json", stamp()))
    });
    if let Some(parent) = json_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let lanes_json: Vec<_> = lanes
        .iter()
        .enumerate()
        .map(|(i, l)| {
            json!({"lane": names[i], "calls": l.calls.get(), "errors": l.errors.get(),
                   "stalls": l.stalls.get(), "slowest_ms": l.max_ns_run.get() as f64 / 1e6,
                   "first_error": *l.first_error.borrow()})
        })
        .collect();
    let samples: Vec<_> = points
        .iter()
        .map(|p| {
            json!({"t_s": p.t_s, "rss_kib": p.rss_kib, "fds": p.fds, "cpu_pct": p.cpu_pct,
                   "connections": p.connections, "reloads": p.reloads, "calls": p.calls,
                   "max_ms": p.max_ms, "others_pct": p.others_pct})
        })
        .collect();
    let hostile: serde_json::Map<String, serde_json::Value> = shared
        .hostile
        .borrow()
        .iter()
        .map(|(k, (n, w))| (k.to_string(), json!({"done": n, "wrong": w})))
        .collect();
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&json!({
            "date": stamp(), "duration_s": duration.as_secs_f64(), "quick": args.quick,
            "loadavg_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
            "honest": lanes_json, "hostile": hostile, "samples": samples,
            "end": {"rss_kib": end_rss, "fds": end_fds, "connections": end_conns},
            "failures": failures,
        }))?,
    )?;
    println!("JSON: {}", json_path.display());
    drop(skiff);
    let _ = std::fs::remove_dir_all(&dir);
    if failures.is_empty() {
        println!("verdict: honest traffic never failed or stalled; no drift in VmRSS (bound {} MiB) or fds (bound {FD_DRIFT})", RSS_DRIFT_KIB / 1024);
        Ok(())
    } else {
        for f in &failures {
            println!("FAILED: {f}");
        }
        bail!("{} check(s) failed", failures.len())
    }
}

fn stamp() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H%M%SZ"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "now".into())
}
