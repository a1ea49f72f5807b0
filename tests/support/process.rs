//! Child processes: the `skiff` binary itself (for what only a real process
//! shows: exit codes, signals, memory) and the Python gRPC peer. Every child
//! is killed when its guard drops, and every wait is bounded.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use super::eventually::eventually_blocking;

pub const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// The output of a finished command.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Run `cmd` to completion, killing it after `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?);
    let out = child.0.stdout.take().map(drain);
    let err = child.0.stderr.take().map(drain);
    let status = child
        .wait_timeout(limit)?
        .ok_or_else(|| anyhow!("{cmd:?} still running after {limit:?}"))?;
    let join = |h: Option<std::thread::JoinHandle<String>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: join(out),
        stderr: join(err),
    })
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// `skiff ARGS`, bounded to 30 s.
pub fn skiff(args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = Command::new(SKIFF);
    cmd.args(args);
    run_bounded(cmd, Duration::from_secs(30))
}

/// A child process killed on drop.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Wait at most `limit` for the child to exit.
    pub fn wait_timeout(&mut self, limit: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.0.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send SIGTERM (through `kill`, to need no libc binding).
    pub fn sigterm(&self) -> anyhow::Result<()> {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        anyhow::ensure!(st.success(), "kill -TERM {} failed", self.pid());
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines a child wrote to stdout and stderr, collected by reader threads.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    /// Spawn `cmd` (`what` names it in the error) with its stdout and stderr
    /// piped and followed here.
    fn spawn(cmd: &mut Command, what: &str) -> anyhow::Result<(ChildGuard, Lines)> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = ChildGuard(cmd.spawn().with_context(|| format!("spawn {what}"))?);
        let lines = Lines::default();
        if let Some(o) = child.0.stdout.take() {
            lines.follow(o);
        }
        if let Some(e) = child.0.stderr.take() {
            lines.follow(e);
        }
        Ok((child, lines))
    }

    fn follow(&self, r: impl Read + Send + 'static) {
        let lines = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if let Ok(mut l) = lines.0.lock() {
                    l.push(line);
                }
            }
        });
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn joined(&self) -> String {
        self.snapshot().join("\n")
    }
}

/// `skiff run --config FILE` as a child process.
pub struct SkiffProcess {
    pub child: ChildGuard,
    pub admin: SocketAddr,
    pub listeners: HashMap<String, SocketAddr>,
    pub lines: Lines,
}

impl SkiffProcess {
    /// Start `skiff run` and wait (bounded) until it has logged the address of
    /// the admin server and of every listener in `listeners`.
    pub fn start(config: &Path, listeners: &[&str]) -> anyhow::Result<SkiffProcess> {
        SkiffProcess::start_binary(Path::new(SKIFF), config, listeners)
    }

    /// The same with another build of `skiff` (a release build, for measurements).
    pub fn start_binary(
        binary: &Path,
        config: &Path,
        listeners: &[&str],
    ) -> anyhow::Result<SkiffProcess> {
        let mut cmd = Command::new(binary);
        // SKIFF_TEST_LOG=debug shows h2's frames and skiff's debug lines in
        // what a failing test prints.
        cmd.args(["run", "--config"])
            .arg(config)
            .env(
                "SKIFF_LOG",
                std::env::var("SKIFF_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null());
        let (mut child, lines) = Lines::spawn(&mut cmd, "skiff run")?;
        let found = eventually_blocking(Duration::from_secs(20), || {
            if let Some(status) = child.0.try_wait()? {
                bail!(
                    "skiff run exited with {status} before binding:\n{}",
                    lines.joined()
                );
            }
            let (admin, found) = bound_addresses(&lines.snapshot());
            let admin =
                admin.ok_or_else(|| anyhow!("no admin address logged yet:\n{}", lines.joined()))?;
            for name in listeners {
                if !found.contains_key(*name) {
                    bail!(
                        "no address logged for listener {name} yet:\n{}",
                        lines.joined()
                    );
                }
            }
            Ok((admin, found))
        })?;
        Ok(SkiffProcess {
            child,
            admin: found.0,
            listeners: found.1,
            lines,
        })
    }

    pub fn listener(&self, name: &str) -> anyhow::Result<SocketAddr> {
        self.listeners
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("no listener {name}"))
    }

    /// Resident memory of the process, in KiB, from /proc/PID/status.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.child.pid())
    }
}

pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// From JSON log lines: the admin address and each listener's address.
///
/// A line counts when it carries an `address` field (top level or under
/// `fields`, as tracing's JSON format nests them). A message that mentions
/// "admin" makes it the admin server's; otherwise its `listener` field names
/// the listener.
pub fn bound_addresses(lines: &[String]) -> (Option<SocketAddr>, HashMap<String, SocketAddr>) {
    let mut admin = None;
    let mut listeners = HashMap::new();
    for line in lines {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let field = |name: &str| {
            v.get("fields")
                .and_then(|f| f.get(name))
                .or_else(|| v.get(name))
                .and_then(|x| x.as_str())
                .map(str::to_string)
        };
        let Some(addr) = field("address").and_then(|a| a.parse::<SocketAddr>().ok()) else {
            continue;
        };
        let message = field("message").unwrap_or_default().to_ascii_lowercase();
        match field("listener") {
            _ if message.contains("admin") => admin = Some(addr),
            Some(name) => {
                listeners.insert(name, addr);
            }
            None => {}
        }
    }
    (admin, listeners)
}

/// The Python gRPC peer script.
pub fn grpc_peer_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/grpc_peer.py")
}

/// The Python gRPC server: a child printing `PORT <n>` once it serves.
pub struct PythonGrpcServer {
    pub child: ChildGuard,
    pub addr: SocketAddr,
    pub lines: Lines,
}

impl PythonGrpcServer {
    pub fn start() -> anyhow::Result<PythonGrpcServer> {
        let mut cmd = Command::new("python3");
        cmd.arg(grpc_peer_script())
            .arg("server")
            .stdin(Stdio::piped());
        let (mut child, lines) = Lines::spawn(&mut cmd, "python3 grpc_peer.py server")?;
        let addr = eventually_blocking(Duration::from_secs(20), || {
            if let Some(status) = child.0.try_wait()? {
                bail!("python server exited with {status}:\n{}", lines.joined());
            }
            lines
                .snapshot()
                .iter()
                .find_map(|l| {
                    l.strip_prefix("PORT ")
                        .and_then(|p| p.trim().parse::<u16>().ok())
                })
                .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
                .ok_or_else(|| anyhow!("no PORT line yet:\n{}", lines.joined()))
        })?;
        Ok(PythonGrpcServer { child, addr, lines })
    }
}

/// Run the Python gRPC client's checks against `target`; its JSON report lines.
pub fn python_grpc_client(target: SocketAddr) -> anyhow::Result<Output> {
    let mut cmd = Command::new("python3");
    cmd.arg(grpc_peer_script())
        .arg("client")
        .arg(target.to_string());
    run_bounded(cmd, Duration::from_secs(60))
}

/// The same over TLS: the client trusts the roots in `root_cert` (PEM) and
/// checks the server's certificate for `server_name`.
pub fn python_grpc_client_tls(
    target: SocketAddr,
    root_cert: &Path,
    server_name: &str,
) -> anyhow::Result<Output> {
    let mut cmd = Command::new("python3");
    cmd.arg(grpc_peer_script())
        .arg("client")
        .arg(target.to_string())
        .arg("--root-cert")
        .arg(root_cert)
        .arg("--server-name")
        .arg(server_name);
    run_bounded(cmd, Duration::from_secs(60))
}
