//! Pods as network namespaces, for the tests of transparent interception.
//!
//! The namespaces are the test's own: named with its pid, joined by veth
//! pairs to a bridge that lives in a namespace of its own too, addressed from
//! 198.18.0.0/15 (the benchmarking range). Nothing is added to the host's
//! namespace and no packet leaves the bridge. Each namespace is deleted when
//! its guard drops, also when the test fails; those of a run that was killed
//! are deleted by the next one.
//!
//! Code runs inside a namespace in two ways: [`Netns::run`] on a thread that
//! joins it (a socket made there stays there, so a test can bind or connect
//! in a pod and use the socket anywhere), and [`Netns::spawn`] for child
//! processes, optionally as another UID (the proxy runs as 1337, the UID
//! the iptables rules exempt).
//!
//! Needs root and iproute2. [`unavailable`] says why a test cannot run; the
//! test then prints it and passes, unless `SKIFF_REQUIRE_ROOT=1`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};

use super::process::{run_bounded, ChildGuard};

/// Every namespace of these tests starts with this.
const PREFIX: &str = "skiff-pods-";

/// `SKIFF_REQUIRE_ROOT=1`: a test that cannot run fails instead of skipping.
pub fn required() -> bool {
    std::env::var("SKIFF_REQUIRE_ROOT").is_ok_and(|v| v == "1")
}

/// Why namespaces cannot be made here, if they cannot: not root, no `ip`,
/// or one of `tools` (run with `--version`, or as given) missing.
pub fn unavailable(tools: &[&[&str]]) -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    remove_stale();
    let probe = match Netns::add(&Netns::unique("probe")) {
        Ok(ns) => ns,
        Err(e) => return Some(format!("cannot make a network namespace: {e:#}")),
    };
    for tool in tools {
        if let Err(e) = probe.exec(tool) {
            return Some(format!(
                "`{}` does not work in a namespace: {e:#}",
                tool.join(" ")
            ));
        }
    }
    None
}

/// Delete the namespaces of runs whose process is gone.
fn remove_stale() {
    let Ok(out) = run_bounded(
        {
            let mut c = Command::new("ip");
            c.args(["netns", "list"]);
            c
        },
        Duration::from_secs(10),
    ) else {
        return;
    };
    for name in out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "delete", name]);
        }
    }
}

/// `ip ARGS`, bounded; stdout, or an error with stderr.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = run_bounded(cmd, Duration::from_secs(30))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            out.stderr.trim()
        );
    }
    Ok(out.stdout)
}

/// A network namespace, deleted when dropped.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Make the namespace `name` (lo up). Use [`Netns::unique`] for a name.
    pub fn add(name: &str) -> anyhow::Result<Netns> {
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.into() };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `skiff-pods-<pid>-<n>-<label>`: unique among the tests of this
    /// process, which run in parallel.
    pub fn unique(label: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("{PREFIX}{}-{n}-{label}", std::process::id())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run `cmd` in the namespace to its end (bounded); its stdout, or an
    /// error that shows its output.
    pub fn exec(&self, cmd: &[&str]) -> anyhow::Result<String> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(cmd);
        let out = run_bounded(c, Duration::from_secs(30))?;
        if !out.status.success() {
            bail!(
                "`{}` in {} failed ({}): {}{}",
                cmd.join(" "),
                self.name,
                out.status,
                out.stdout,
                out.stderr
            );
        }
        Ok(out.stdout)
    }

    /// Start `program ARGS` in the namespace, as `uid` (and the same GID,
    /// no supplementary groups) when given; killed when the guard drops.
    pub fn spawn(
        &self,
        uid: Option<u32>,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Spawned> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]);
        if let Some(uid) = uid {
            let id = uid.to_string();
            c.args([
                "setpriv",
                "--reuid",
                &id,
                "--regid",
                &id,
                "--clear-groups",
                "--",
            ]);
        }
        c.arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard(
            c.spawn()
                .with_context(|| format!("spawn {program} in {}", self.name))?,
        );
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.0.stdout.take().map(|o| follow(o, lines.clone()));
        let err = child.0.stderr.take().map(|e| follow(e, lines.clone()));
        Ok(Spawned {
            child,
            lines,
            _readers: [out, err],
        })
    }

    /// Run `f` on a thread inside the namespace. Sockets it makes belong to
    /// the namespace for good, wherever they are used afterwards.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            // SAFETY: setns reads the descriptor, which stays open for the
            // call, and moves only this thread into the namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| anyhow!("the thread in {} panicked", self.name))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

fn follow(r: impl Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if let Ok(mut l) = lines.lock() {
                l.push(line);
            }
        }
    })
}

/// A child process in a namespace, with its output lines; killed on drop.
pub struct Spawned {
    pub child: ChildGuard,
    lines: Arc<Mutex<Vec<String>>>,
    _readers: [Option<JoinHandle<()>>; 2],
}

impl Spawned {
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The last `n` lines, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Fail if the process has exited.
    pub fn alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.0.try_wait()? {
            bail!("exited with {status}:\n{}", self.tail(40));
        }
        Ok(())
    }
}

/// The pods' network: a bridge in a namespace of its own, and each pod's
/// `eth0` plugged into it. Drop the pods before the bridge.
pub struct Bridge {
    ns: Netns,
    ports: usize,
}

impl Bridge {
    pub fn new() -> anyhow::Result<Bridge> {
        let ns = Netns::add(&Netns::unique("bridge"))?;
        ns.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        ns.exec(&["ip", "link", "set", "br0", "up"])?;
        Ok(Bridge { ns, ports: 0 })
    }

    /// Give `pod` an `eth0` with `cidr` (e.g. `198.18.0.10/24`), plugged in.
    pub fn plug(&mut self, pod: &Netns, cidr: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            cidr.starts_with("198.18.") || cidr.starts_with("198.19."),
            "{cidr} is outside 198.18.0.0/15"
        );
        self.ports += 1;
        let port = format!("port{}", self.ports);
        self.ns.exec(&[
            "ip",
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ])?;
        self.ns
            .exec(&["ip", "link", "set", &port, "master", "br0"])?;
        self.ns.exec(&["ip", "link", "set", &port, "up"])?;
        pod.exec(&["ip", "addr", "add", cidr, "dev", "eth0"])?;
        pod.exec(&["ip", "link", "set", "eth0", "up"])?;
        Ok(())
    }
}

/// A TCP server on a thread: each connection handled on a thread of its
/// own by `handle` (given the stream and the peer). Stops accepting on drop.
pub struct ServerThread {
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl ServerThread {
    pub fn start(
        listener: TcpListener,
        handle: impl Fn(TcpStream, SocketAddr) -> anyhow::Result<()> + Send + Sync + 'static,
    ) -> anyhow::Result<ServerThread> {
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let handle = Arc::new(handle);
        let stopped = stop.clone();
        let accept = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let handle = handle.clone();
                        std::thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                            let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
                            if let Err(e) = handle(stream, peer) {
                                eprintln!("test server: connection from {peer}: {e:#}");
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(ServerThread {
            stop,
            accept: Some(accept),
        })
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
    }
}

/// An HTTP/1.1 response read whole.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A blocking HTTP/1.1 exchange on `stream`: GET `path` with `Host: host`
/// and `Connection: close`, read to the end.
pub fn http1_get(mut stream: TcpStream, host: &str, path: &str) -> anyhow::Result<Response> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: pod-app\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .context("reading the response")?;
    let _ = stream.shutdown(Shutdown::Both);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no complete response head in {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

/// Read an HTTP/1.1 request head from `stream`: the path and the headers
/// (names lower-cased).
pub fn read_request_head(
    stream: &mut TcpStream,
) -> anyhow::Result<(String, Vec<(String, String)>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(head.len() < 64 * 1024, "request head too long");
        if stream.read(&mut byte)? == 0 {
            bail!("the connection closed inside the request head");
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.lines();
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .ok_or_else(|| anyhow!("no request line"))?
        .to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((path, headers))
}
