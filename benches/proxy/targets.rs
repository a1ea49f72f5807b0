//! The targets under test, each an equivalent single-route proxy in front of
//! the same backend with upstream connection reuse: `direct` (no proxy),
//! `skiff`, `nginx` (`grpc_pass`) and `haproxy` (`proto h2`). Each proxy is
//! started from a config written here, pinned to one CPU with one worker.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::procstat::{self, Sample};

/// `skiff-b` is a second skiff binary (`--skiff-b`), to compare two builds.
pub const ALL: [&str; 5] = ["direct", "skiff", "nginx", "haproxy", "skiff-b"];

/// A target ready for load.
pub struct Target {
    pub name: &'static str,
    /// Where HTTP/2 (gRPC, h2c) clients connect.
    pub h2: SocketAddr,
    /// Where HTTP/1.1 clients connect.
    pub h1: SocketAddr,
    pub version: String,
    /// From spawn to both ports accepting connections.
    pub start: Option<Duration>,
    proc: Option<Proc>,
}

impl Target {
    pub fn is_proxy(&self) -> bool {
        self.proc.is_some()
    }

    /// A reading of the proxy's processes (zeros for `direct`).
    pub fn sample(&self) -> Sample {
        procstat::sample(self.proc.as_ref().map_or(&[], |p| &p.pids))
    }

    /// `Err` with the end of its log when the proxy has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(p) = &mut self.proc {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} exited ({status}); log: {}", self.name, tail(&p.log));
            }
        }
        Ok(())
    }
}

struct Proc {
    child: Child,
    pids: Vec<u32>,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = signal("TERM", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left of the tree (an nginx worker, say) goes now.
        for pid in &self.pids {
            let _ = signal("KILL", *pid);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(sig: &str, pid: u32) -> std::io::Result<()> {
    Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .map(|_| ())
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// An executable by name: on PATH, or in the sbin directories where
/// distributions put daemons.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|v| v.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn version_of(program: &Path, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// How to start the proxies.
pub struct Launch<'a> {
    pub backend: SocketAddr,
    /// Config files and logs go here.
    pub dir: &'a Path,
    /// `taskset` and the CPU list to pin each proxy to, when pinning.
    pub pin: Option<(&'a Path, &'a str)>,
    pub skiff: &'a Path,
    pub skiff_b: Option<&'a Path>,
}

/// Start `name`: `Ok(None)` (with the reason printed) when it is not installed.
pub async fn start(name: &'static str, launch: &Launch<'_>) -> anyhow::Result<Option<Target>> {
    let b = launch.backend;
    let dir = launch.dir;
    let (program, args, version, h2, h1): (PathBuf, Vec<String>, String, u16, u16) = match name {
        "direct" => {
            return Ok(Some(Target {
                name,
                h2: b,
                h1: b,
                version: "-".into(),
                start: None,
                proc: None,
            }))
        }
        "skiff" | "skiff-b" => {
            let program = if name == "skiff" {
                launch.skiff
            } else {
                launch.skiff_b.context("skiff-b needs --skiff-b PATH")?
            };
            let port = free_port()?;
            let cfg = dir.join(format!("{name}.yaml"));
            std::fs::write(&cfg, skiff_config(port, b))?;
            let version = format!(
                "skiff {} ({})",
                env!("CARGO_PKG_VERSION"),
                program.display()
            );
            let args = vec!["run".into(), "--config".into(), cfg.display().to_string()];
            (program.to_path_buf(), args, version, port, port)
        }
        "nginx" => {
            let Some(program) = find_program("nginx") else {
                println!("nginx: not installed (apt-get install -y nginx); skipped");
                return Ok(None);
            };
            let (h2, h1) = (free_port()?, free_port()?);
            let cfg = dir.join("nginx.conf");
            std::fs::create_dir_all(dir.join("nginx-tmp"))?;
            std::fs::write(&cfg, nginx_config(h2, h1, b, dir, is_root()))?;
            let version = version_of(&program, "-v");
            let args = vec![
                "-p".into(),
                dir.display().to_string(),
                "-c".into(),
                cfg.display().to_string(),
                "-e".into(),
                dir.join("nginx-error.log").display().to_string(),
            ];
            (program, args, version, h2, h1)
        }
        "haproxy" => {
            let Some(program) = find_program("haproxy") else {
                println!("haproxy: not installed (apt-get install -y haproxy); skipped");
                return Ok(None);
            };
            let (h2, h1) = (free_port()?, free_port()?);
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(&cfg, haproxy_config(h2, h1, b))?;
            let version = version_of(&program, "-v");
            let args = vec!["-db".into(), "-f".into(), cfg.display().to_string()];
            (program, args, version, h2, h1)
        }
        other => bail!("unknown target {other:?} (known: {})", ALL.join(", ")),
    };
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log)?;
    let mut cmd = match launch.pin {
        Some((taskset, cpus)) => {
            let mut c = Command::new(taskset);
            c.arg("-c").arg(cpus).arg(&program);
            c
        }
        None => Command::new(&program),
    };
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let spawned = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("start {}", program.display()))?;
    let root = child.id();
    let mut target = Target {
        name,
        h2: SocketAddr::from(([127, 0, 0, 1], h2)),
        h1: SocketAddr::from(([127, 0, 0, 1], h1)),
        version,
        start: None,
        proc: Some(Proc {
            child,
            pids: vec![root],
            log: log.clone(),
        }),
    };
    let deadline = spawned + Duration::from_secs(10);
    for addr in [target.h2, target.h1] {
        loop {
            target.check_alive()?;
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not listen on {addr} within 10 s; log: {}",
                    tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    target.start = Some(spawned.elapsed());
    // nginx serves from a worker it forks: wait for the whole tree.
    let want = if name == "nginx" { 2 } else { 1 };
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let pids = procstat::tree(root);
        let enough = pids.len() >= want;
        if let Some(p) = &mut target.proc {
            p.pids = pids;
        }
        if enough || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Some(target))
}

fn skiff_config(port: u16, backend: SocketAddr) -> String {
    format!(
        "\
admin: {{ address: 127.0.0.1:0 }}
runtime: {{ worker_threads: 1 }}
listeners:
  - name: bench
    address: 127.0.0.1:{port}
    virtual_hosts:
      - name: all
        domains: [\"*\"]
        routes: [{{ cluster: backend }}]
clusters:
  - name: backend
    protocol: http2
    endpoints: [\"{backend}\"]
"
    )
}

/// nginx speaks HTTP/2 to an upstream only through the gRPC module, which
/// forwards any HTTP/2 request, so both listeners use `grpc_pass`.
fn nginx_config(h2: u16, h1: u16, backend: SocketAddr, dir: &Path, root: bool) -> String {
    let d = dir.display();
    let user = if root { "user root;\n" } else { "" };
    format!(
        "\
{user}daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 65536;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {d}/nginx-tmp/body;
  proxy_temp_path {d}/nginx-tmp/proxy;
  fastcgi_temp_path {d}/nginx-tmp/fastcgi;
  uwsgi_temp_path {d}/nginx-tmp/uwsgi;
  scgi_temp_path {d}/nginx-tmp/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  upstream backend {{
    server {backend};
    keepalive 1024;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen 127.0.0.1:{h2} http2;
    location / {{ grpc_pass grpc://backend; }}
  }}
  server {{
    listen 127.0.0.1:{h1};
    location / {{ grpc_pass grpc://backend; }}
  }}
}}
"
    )
}

fn haproxy_config(h2: u16, h1: u16, backend: SocketAddr) -> String {
    format!(
        "\
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  http-reuse always
frontend h2
  bind 127.0.0.1:{h2} proto h2
  default_backend backend
frontend h1
  bind 127.0.0.1:{h1}
  default_backend backend
backend backend
  server b1 {backend} proto h2
"
    )
}
