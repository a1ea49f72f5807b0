//! Skiff against a direct connection, nginx and HAProxy, in one run.
//!
//! Run with `cargo bench --bench proxy` (about 10 minutes), or
//! `cargo bench --bench proxy -- --quick` (under a minute); `-- --help` for
//! the knobs. BENCHMARKS.md explains the method and holds a full run.
//!
//! One backend (gRPC echo + plain HTTP, on this process's thread) and the
//! load generator share one CPU; each proxy runs pinned to the other CPU
//! with one worker. The targets take turns scenario by scenario, in an order
//! that rotates each round, so a noisy moment hits them all alike. The result
//! is a markdown table on stdout and a JSON file under bench-results/.

mod echo;
mod load;
mod procstat;
mod report;
mod targets;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use serde_json::json;

use load::{Call, Plan, Window};
use report::Results;
use targets::Target;

const SCENARIOS: &[&str] = &[
    "unary-1k",
    "unary-64k",
    "stream",
    "http1",
    "h2load",
    "open-1000",
    "open-5000",
    "streams-1000",
];

/// Messages per call of the streaming scenario.
const STREAM_MESSAGES: u32 = 100;

#[derive(Parser, Debug)]
#[command(about = "Skiff against a direct connection, nginx and HAProxy, side by side")]
struct Args {
    /// Short run (one round, short windows) that checks the harness works.
    #[arg(long)]
    quick: bool,
    /// Rounds over all targets [default: 3, quick: 1].
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds measured per scenario and target [default: 5, quick: 0.8].
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of load before each measured window [default: 1, quick: 0.2].
    #[arg(long)]
    warmup: Option<f64>,
    /// Targets, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,skiff,nginx,haproxy"
    )]
    targets: Vec<String>,
    /// Scenarios, comma-separated [default: all]: unary-1k, unary-64k, stream,
    /// http1, h2load, open-1000, open-5000, streams-1000.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// HTTP/2 connections of the load generator.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls in flight in the HTTP/2 closed loops (spread over the connections).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// HTTP/1.1 connections (one call in flight each).
    #[arg(long, default_value_t = 16)]
    h1_connections: usize,
    /// Streams held open in the memory scenario.
    #[arg(long, default_value_t = 1000)]
    open_streams: usize,
    /// The skiff binary [default: the one cargo built with this bench].
    #[arg(long, env = "SKIFF_BENCH_SKIFF")]
    skiff: Option<PathBuf>,
    /// A second skiff binary, measured as target `skiff-b` (add it to --targets).
    #[arg(long)]
    skiff_b: Option<PathBuf>,
    /// Only serve the backend on 127.0.0.1:PORT (0: any) for this many
    /// seconds, for profiling a proxy by hand; see BENCHMARKS.md.
    #[arg(long, value_names = ["PORT", "SECS"], num_args = 2)]
    backend_only: Vec<u64>,
    /// Where to write the JSON [default: bench-results/proxy-<time>.json].
    #[arg(long)]
    json: Option<PathBuf>,
    /// Don't pin processes to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

struct Settings {
    rounds: usize,
    warmup: Duration,
    duration: Duration,
    connections: usize,
    in_flight: usize,
    h1_connections: usize,
    open_streams: usize,
    pinned: bool,
    h2load: Option<PathBuf>,
    taskset: Option<PathBuf>,
}

/// The CPU of the proxies and the CPU of the load generator and backend.
const PROXY_CPU: &str = "0";
const LOAD_CPU: &str = "1";
/// Set in the environment of the re-executed, pinned harness.
const PINNED_ENV: &str = "SKIFF_BENCH_PINNED";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let taskset = targets::find_program("taskset");
    // Once re-executed on the load CPU this process sees one CPU; the
    // environment says it was pinned on purpose.
    let already_pinned = std::env::var_os(PINNED_ENV).is_some();
    let pin = !args.no_pin
        && (cpus >= 2 || already_pinned)
        && taskset.is_some()
        && args.backend_only.is_empty();
    if pin && !already_pinned {
        // Become this same program on the load CPU (exec: same process, so
        // signals reach it): it holds the load generator and the backend.
        use std::os::unix::process::CommandExt;
        let taskset = taskset.as_deref().context("taskset")?;
        let err = Command::new(taskset)
            .arg("-c")
            .arg(LOAD_CPU)
            .arg(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env(PINNED_ENV, LOAD_CPU)
            .exec();
        return Err(err).context("re-executing under taskset");
    }
    if pin {
        println!(
            "pinned: proxies on CPU {PROXY_CPU}, load generator and backend on CPU {LOAD_CPU}"
        );
    } else if args.backend_only.is_empty() {
        println!(
            "not pinning to CPUs ({})",
            if args.no_pin {
                "--no-pin"
            } else if cpus < 2 {
                "fewer than 2 CPUs"
            } else {
                "taskset not found"
            }
        );
    }
    let settings = Settings {
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1),
        warmup: secs(args.warmup.unwrap_or(if args.quick { 0.2 } else { 1.0 })),
        duration: secs(args.duration.unwrap_or(if args.quick { 0.8 } else { 5.0 })),
        connections: args.connections.max(1),
        in_flight: args.in_flight.max(1),
        h1_connections: args.h1_connections.max(1),
        open_streams: args.open_streams,
        pinned: pin,
        h2load: targets::find_program("h2load"),
        taskset: taskset.filter(|_| pin),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    // On Ctrl-C or SIGTERM the run is dropped, and with it the proxies it started.
    local.block_on(&runtime, async {
        tokio::select! {
            result = run(args, settings) => result,
            // Leaving the select drops the run, which stops the proxies.
            () = interrupted() => Err(anyhow::anyhow!("interrupted; proxies stopped")),
        }
    })
}

async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 3600.0))
}

async fn run(args: Args, settings: Settings) -> anyhow::Result<()> {
    if let [port, secs] = args.backend_only[..] {
        let port = u16::try_from(port).context("port")?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("backend listening on {}", listener.local_addr()?);
        println!(
            "gRPC unary 1 KiB request body (for h2load -d): {}",
            write_unary_frame()?.display()
        );
        let serve = echo::serve(listener, Bytes::from(vec![b'x'; 1024]));
        let _ = tokio::time::timeout(Duration::from_secs(secs), serve).await;
        return Ok(());
    }
    let scenarios: Vec<String> = if args.scenarios.is_empty() {
        SCENARIOS.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenarios.clone()
    };
    for s in &scenarios {
        if !SCENARIOS.contains(&s.as_str()) {
            bail!("unknown scenario {s:?} (known: {})", SCENARIOS.join(", "));
        }
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let stamp = now_stamp();
    let dir = std::env::temp_dir().join(format!("skiff-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let skiff = args
        .skiff
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_skiff")));

    let backend = echo::start(Bytes::from(vec![b'x'; 1024])).await?;
    let launch = targets::Launch {
        backend,
        dir: &dir,
        pin: settings.taskset.as_deref().map(|t| (t, PROXY_CPU)),
        skiff: &skiff,
        skiff_b: args.skiff_b.as_deref(),
    };
    let mut results = Results::default();
    // Targets that would not start or died, and measurements that failed
    // outright: the run reports them and exits non-zero, so a check that
    // runs `--quick` notices a broken harness or proxy. (Failed calls inside
    // a measurement that otherwise worked, as under overload, are listed only.)
    let mut failures = 0usize;
    let mut running: Vec<Target> = Vec::new();
    for name in &args.targets {
        let Some(name) = targets::ALL.iter().find(|t| **t == name.as_str()) else {
            bail!(
                "unknown target {name:?} (known: {})",
                targets::ALL.join(", ")
            );
        };
        match targets::start(name, &launch).await {
            Ok(Some(t)) => running.push(t),
            Ok(None) => {}
            Err(e) => {
                println!("{name}: could not start: {e:#}; skipped");
                results
                    .errors
                    .push(format!("{name}: could not start: {e:#}"));
                failures += 1;
            }
        }
    }
    if running.is_empty() {
        bail!("no target to measure");
    }
    if settings.h2load.is_none() && scenarios.iter().any(|s| s == "h2load") {
        println!(
            "h2load: not installed (apt-get install -y nghttp2-client); its cross-check is skipped"
        );
    }
    // Idle: started, nothing sent yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for t in &running {
        if let Some(start) = t.start {
            results.add("process.start_ms", t.name, start.as_secs_f64() * 1e3);
        }
        if t.is_proxy() {
            results.add("process.idle_rss", t.name, mib(t.sample().rss_kib));
        }
    }
    let started = Instant::now();
    let loadavg_start = loadavg();
    let mut dead: Vec<&'static str> = Vec::new();
    for round in 0..settings.rounds {
        for scenario in &scenarios {
            let n = running.len();
            for i in 0..n {
                let t = &mut running[(i + round) % n];
                if dead.contains(&t.name) {
                    continue;
                }
                if let Err(e) = t.check_alive() {
                    println!("{e:#}");
                    results.errors.push(format!("{e:#}"));
                    failures += 1;
                    dead.push(t.name);
                    continue;
                }
                let label = format!(
                    "round {}/{} {scenario} {}",
                    round + 1,
                    settings.rounds,
                    t.name
                );
                match measure(scenario, t, &settings, round, &mut results).await {
                    Ok(summary) => eprintln!("{label}: {summary}"),
                    Err(e) => {
                        eprintln!("{label}: FAILED: {e:#}");
                        results.errors.push(format!("{label}: {e:#}"));
                        failures += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    }
    for t in &running {
        if t.is_proxy() {
            results.add("process.peak_rss", t.name, mib(t.sample().hwm_kib));
        }
    }

    let names: Vec<&str> = running.iter().map(|t| t.name).collect();
    let header = json!({
        "date": stamp,
        "machine": machine(),
        "quick": args.quick,
        "pinned": settings.pinned,
        "rounds": settings.rounds,
        "warmup_s": settings.warmup.as_secs_f64(),
        "duration_s": settings.duration.as_secs_f64(),
        "connections": settings.connections,
        "in_flight": settings.in_flight,
        "h1_connections": settings.h1_connections,
        "open_streams": settings.open_streams,
        "targets": running.iter().map(|t| json!({"name": t.name, "version": t.version})).collect::<Vec<_>>(),
        "wall_s": started.elapsed().as_secs_f64(),
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg(),
        "others_cpu_share_mean": results.noise_mean(),
    });
    println!();
    println!(
        "{} · {} · {} round(s) of {:.1} s windows · {} HTTP/2 connections, {} calls in flight",
        stamp,
        machine()["cpu"].as_str().unwrap_or("?"),
        settings.rounds,
        settings.duration.as_secs_f64(),
        settings.connections,
        settings.in_flight,
    );
    for t in &running {
        println!("- {}: {}", t.name, t.version);
    }
    println!();
    print!("{}", results.table(&names));
    println!();
    println!("median over rounds ±half the spread · ×d: ratio to direct · +: added over direct · ×s: ratio to skiff");
    let noise = results.noise_mean();
    println!(
        "other work on the machine: {:.0}% of the two CPUs on average during the measured windows{}",
        noise * 100.0,
        if noise > 0.1 {
            " — throughput and latency are unreliable; CPU per call still holds"
        } else {
            ""
        }
    );
    let json_path = args.json.clone().unwrap_or_else(|| {
        manifest
            .join("bench-results")
            .join(format!("proxy-{}.json", stamp.replace(':', "")))
    });
    if let Some(parent) = json_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&results.json(header))?,
    )?;
    println!("JSON: {}", json_path.display());
    if !results.errors.is_empty() {
        println!("\n{} error(s):", results.errors.len());
        for e in &results.errors {
            println!("- {e}");
        }
    }
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
    if failures > 0 {
        bail!("{failures} target(s) or measurement(s) failed; see above");
    }
    Ok(())
}

/// The framed gRPC request of the unary 1 KiB scenario, in a file.
fn write_unary_frame() -> anyhow::Result<PathBuf> {
    let path = std::env::temp_dir().join("skiff-bench-unary-1k.grpc");
    let Call::Grpc { frame, .. } = unary(1024) else {
        bail!("unary is a gRPC call");
    };
    std::fs::write(&path, &frame)?;
    Ok(path)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

fn unary(size: usize) -> Call {
    Call::Grpc {
        path: echo::UNARY_PATH,
        frame: echo::grpc_frame(&echo::EchoRequest {
            payload: Bytes::from(vec![b'x'; size]),
            count: 0,
            hold_ms: 0,
        }),
    }
}

/// Run one scenario against one target; a one-line summary.
async fn measure(
    scenario: &str,
    t: &Target,
    s: &Settings,
    round: usize,
    results: &mut Results,
) -> anyhow::Result<String> {
    let sample = || t.sample();
    let plan = |addr, call, connections| Plan {
        addr,
        call,
        connections,
        warmup: s.warmup,
        duration: s.duration,
        sample: &sample,
    };
    let mut figures: Vec<(&str, f64)> = Vec::new();
    let window: Option<Window>;
    match scenario {
        "unary-1k" | "unary-64k" => {
            let call = unary(if scenario == "unary-1k" {
                1024
            } else {
                64 * 1024
            });
            let w = load::closed_loop(&plan(t.h2, &call, s.connections), s.in_flight).await?;
            figures.push(("rps", w.calls as f64 / w.elapsed.as_secs_f64()));
            figures.push(("p50", us(w.latency.value_at_quantile(0.5))));
            figures.push(("p99", us(w.latency.value_at_quantile(0.99))));
            if t.is_proxy() {
                figures.push(("cpu_us", per(w.before.cpu_ns_until(&w.after), w.calls)));
                figures.push(("rss", mib(w.after.rss_kib)));
            }
            window = Some(w);
        }
        "stream" => {
            let call = Call::Grpc {
                path: echo::STREAM_PATH,
                frame: echo::grpc_frame(&echo::EchoRequest {
                    payload: Bytes::from(vec![b'x'; 1024]),
                    count: STREAM_MESSAGES,
                    hold_ms: 0,
                }),
            };
            let in_flight = (s.in_flight / 4).max(s.connections);
            let w = load::closed_loop(&plan(t.h2, &call, s.connections), in_flight).await?;
            if w.calls > 0 && w.messages != w.calls * u64::from(STREAM_MESSAGES) {
                bail!("{} messages in {} calls", w.messages, w.calls);
            }
            figures.push(("msgs", w.messages as f64 / w.elapsed.as_secs_f64()));
            if t.is_proxy() {
                figures.push(("cpu_us", per(w.before.cpu_ns_until(&w.after), w.messages)));
            }
            window = Some(w);
        }
        "http1" => {
            let w = load::closed_loop(&plan(t.h1, &Call::Http1, s.h1_connections), 1).await?;
            figures.push(("rps", w.calls as f64 / w.elapsed.as_secs_f64()));
            figures.push(("p50", us(w.latency.value_at_quantile(0.5))));
            if t.is_proxy() {
                figures.push(("cpu_us", per(w.before.cpu_ns_until(&w.after), w.calls)));
            }
            window = Some(w);
        }
        "open-1000" | "open-5000" => {
            let rate = if scenario == "open-1000" { 1000 } else { 5000 };
            let call = unary(1024);
            let w = load::open_loop(&plan(t.h2, &call, s.connections), rate, 10_000).await?;
            let h = &w.latency;
            for (k, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
                figures.push((k, us(h.value_at_quantile(q))));
            }
            figures.push(("max", us(h.max())));
            if t.is_proxy() {
                let cpu = w.before.cpu_ns_until(&w.after);
                figures.push(("vcpu", cpu as f64 / w.elapsed.as_nanos() as f64));
                figures.push(("cpu_us", per(cpu, w.calls)));
            }
            if w.shed > 0 {
                results.errors.push(format!(
                    "{scenario} {}: {} calls shed (more than 10,000 pending)",
                    t.name, w.shed
                ));
            }
            window = Some(w);
        }
        "h2load" => {
            let Some(h2load) = &s.h2load else {
                return Ok("skipped (no h2load)".into());
            };
            let (rps, cpu, raw) = run_h2load(h2load, t, s).await?;
            figures.push(("rps", rps));
            if let Some(cpu) = cpu {
                figures.push(("cpu_us", cpu));
            }
            results.add_raw(
                json!({"round": round, "scenario": scenario, "target": t.name, "h2load": raw}),
            );
            window = None;
        }
        "streams-1000" => {
            let (held, opened) = load::hold_streams(
                t.h2,
                s.open_streams,
                20,
                Duration::from_secs(120),
                Duration::from_secs(20),
            )
            .await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let during = t.sample();
            drop(held);
            figures.push(("opened", opened as f64));
            if t.is_proxy() {
                figures.push(("rss", mib(during.rss_kib)));
            }
            results.add_raw(json!({
                "round": round, "scenario": scenario, "target": t.name,
                "opened": opened, "rss_kib": during.rss_kib, "hwm_kib": during.hwm_kib,
            }));
            // Let the resets reach the proxy and the backend.
            tokio::time::sleep(Duration::from_millis(500)).await;
            if opened < s.open_streams {
                bail!("only {opened} of {} streams opened", s.open_streams);
            }
            window = None;
        }
        other => bail!("unknown scenario {other}"),
    }
    if let Some(w) = &window {
        results.add_raw(json!({
            "round": round,
            "scenario": scenario,
            "target": t.name,
            "elapsed_s": w.elapsed.as_secs_f64(),
            "calls": w.calls,
            "messages": w.messages,
            "errors": w.errors,
            "first_error": w.first_error,
            "shed": w.shed,
            "cpu_sched_ns": w.after.sched_ns.saturating_sub(w.before.sched_ns),
            "cpu_ticks_ns": w.after.ticks_ns.saturating_sub(w.before.ticks_ns),
            "rss_kib": w.after.rss_kib,
            "machine_busy_cpu0_cpu1": procstat::busy_between(&w.before, &w.after),
            "others_cpu_share": procstat::others_between(&w.before, &w.after),
            "hwm_kib": w.after.hwm_kib,
            "latency_us": {
                "p50": us(w.latency.value_at_quantile(0.5)),
                "p90": us(w.latency.value_at_quantile(0.9)),
                "p99": us(w.latency.value_at_quantile(0.99)),
                "p999": us(w.latency.value_at_quantile(0.999)),
                "max": us(w.latency.max()),
                "mean": w.latency.mean() / 1e3,
            },
        }));
        if w.errors > 0 {
            results.errors.push(format!(
                "{scenario} {} round {}: {} failed calls, first: {}",
                t.name,
                round + 1,
                w.errors,
                w.first_error.as_deref().unwrap_or("?")
            ));
        }
        if w.calls == 0 {
            bail!(
                "no call succeeded; first error: {}",
                w.first_error.as_deref().unwrap_or("none")
            );
        }
    }
    let mut summary = Vec::new();
    for (k, v) in &figures {
        let key = format!("{scenario}.{k}");
        results.add(&key, t.name, *v);
        let unit = report::FIGURES
            .iter()
            .find(|f| f.key == key)
            .map_or(report::Unit::Count, |f| f.unit);
        summary.push(format!("{k} {}", report::format_value(*v, unit)));
    }
    if let Some(w) = &window {
        if w.errors > 0 {
            summary.push(format!("{} errors", w.errors));
        }
        let others = procstat::others_between(&w.before, &w.after);
        results.noise.push(others);
        summary.push(format!("[other work: {:.0}% of 2 CPUs]", others * 100.0));
    }
    Ok(summary.join(", "))
}

fn per(ns: u64, n: u64) -> f64 {
    if n == 0 {
        f64::NAN
    } else {
        ns as f64 / 1e3 / n as f64
    }
}

/// h2load against the target's HTTP/2 port: req/s and the proxy's µs per request.
async fn run_h2load(
    h2load: &Path,
    t: &Target,
    s: &Settings,
) -> anyhow::Result<(f64, Option<f64>, serde_json::Value)> {
    let streams = (s.in_flight / s.connections).max(1);
    let mut cmd = match &s.taskset {
        Some(taskset) => {
            let mut c = Command::new(taskset);
            c.args(["-c", LOAD_CPU]).arg(h2load);
            c
        }
        None => Command::new(h2load),
    };
    cmd.args(["-t", "1", "-c"])
        .arg(s.connections.to_string())
        .arg("-m")
        .arg(streams.to_string())
        .arg("-D")
        .arg(format!("{}ms", s.duration.as_millis().max(1)))
        .arg(format!("--warm-up-time={}ms", s.warmup.as_millis().max(1)))
        .arg(format!("http://{}/", t.h2))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().context("start h2load")?;
    // Sample the proxy over (about) h2load's measured window.
    tokio::time::sleep(s.warmup).await;
    let before = t.sample();
    let t0 = Instant::now();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let after = t.sample();
    let elapsed = t0.elapsed();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    // "finished in 5.00s, 23456.70 req/s, 25.11MB/s"
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.strip_suffix(" req/s"))
        .and_then(|r| r.parse::<f64>().ok())
        .with_context(|| {
            format!(
                "h2load output: {text} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    // "requests: N total, N started, N done, N succeeded, N failed, ..."
    let failed = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| l.split(", ").find_map(|p| p.strip_suffix(" failed")))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    if failed > 0 {
        bail!("h2load: {failed} requests failed");
    }
    // Requests in our sampled window ≈ rate × window.
    let cpu = t
        .is_proxy()
        .then(|| before.cpu_ns_until(&after) as f64 / 1e3 / (rps * elapsed.as_secs_f64()).max(1.0));
    Ok((rps, cpu, json!({"rps": rps, "output": text})))
}

fn now_stamp() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("unix-{secs}")
        })
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_default();
    // Count the machine's CPUs, not this (pinned) process's.
    let nproc = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({ "nproc": nproc, "cpu": model, "kernel": kernel.trim() })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}
