//! `skiff iptables` for real, in network namespaces this test makes: a "pod"
//! and a "peer" joined by a veth pair, addresses from 198.18.0.0/15, nothing
//! in the host's namespace. Checks the rules `iptables-save` lists, that a
//! second run changes nothing, that `--dry-run` prints what a run does, that
//! connections land where the rules say, and that `--clean` leaves nothing.
//!
//! Needs root, `ip` (iproute2), iptables and python3 (the little TCP servers
//! and clients that say where a connection landed). Without them the test
//! prints why and passes, unless `SKIFF_REQUIRE_ROOT=1`, where it fails.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

const POD_IP: &str = "198.18.0.1";
const PEER_IP: &str = "198.18.0.2";
/// A second address of the peer, excluded with --exclude-outbound-cidrs.
const PEER_EXCLUDED_IP: &str = "198.18.0.3";

/// Options the test installs with, and the rules they must give.
const ARGS: [&str; 7] = [
    "--exclude-outbound-ports",
    "3306",
    "--exclude-inbound-ports",
    "22",
    "--exclude-outbound-cidrs",
    "198.18.0.3/32,fd00:5::/64",
    "--ipv6",
];

const V4_RULES: [&str; 12] = [
    "-A PREROUTING -p tcp -j SKIFF_INBOUND",
    "-A OUTPUT -p tcp -j SKIFF_OUTPUT",
    "-A SKIFF_INBOUND -p tcp -m tcp --dport 15000 -j RETURN",
    "-A SKIFF_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
    "-A SKIFF_INBOUND -p tcp -j SKIFF_IN_REDIRECT",
    "-A SKIFF_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
    "-A SKIFF_OUTPUT -m owner --uid-owner 1337 -j RETURN",
    "-A SKIFF_OUTPUT -o lo -j RETURN",
    "-A SKIFF_OUTPUT -p tcp -m tcp --dport 15000 -j RETURN",
    "-A SKIFF_OUTPUT -p tcp -m tcp --dport 3306 -j RETURN",
    "-A SKIFF_OUTPUT -d 198.18.0.3/32 -j RETURN",
    "-A SKIFF_OUTPUT -p tcp -j SKIFF_OUT_REDIRECT",
];

/// TCP servers (on `[host:]port`) that greet each connection with
/// "<name> <port>", and a client that prints the greeting it gets
/// (optionally as another UID).
const PY: &str = r#"
import encodings.idna, os, socket, sys, threading  # idna: loaded before setuid
mode = sys.argv[1]
if mode == "serve":
    name = sys.argv[2]
    def serve(s, port):
        while True:
            c, _ = s.accept()
            c.sendall(f"{name} {port}\n".encode())
            c.close()
    socks = []
    for a in sys.argv[3:]:
        host, _, p = a.rpartition(":")
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host or "0.0.0.0", int(p)))
        s.listen(16)
        socks.append(s)
        threading.Thread(target=serve, args=(s, p), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
else:
    host, port, uid = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if uid != os.getuid():
        os.setgid(uid)
        os.setuid(uid)
    try:
        c = socket.create_connection((host, port), timeout=3)
        c.settimeout(3)
        print(c.makefile().readline().strip())
    except OSError as e:
        print(f"error {e.__class__.__name__}")
"#;

fn required() -> bool {
    std::env::var("SKIFF_REQUIRE_ROOT").is_ok_and(|v| v == "1")
}

/// Runs a command to its end; bounded, since `ip netns exec` of a hung
/// program would otherwise hang the test.
fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("`{program} {}` did not finish in 30s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child.wait_with_output()?)
}

/// Runs a command and insists on success; returns stdout.
fn ok(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = run(program, args)?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace, deleted (with its veth end) when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn add(name: String) -> anyhow::Result<Netns> {
        ok("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn exec(&self, cmd: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(cmd);
        ok("ip", &args)
    }

    fn skiff(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = vec![SKIFF, "iptables", "--log-format", "text"];
        cmd.extend_from_slice(args);
        self.exec(&cmd)
    }

    /// The nat table as `iptables-save` (or `ip6tables-save`) lists its
    /// rules and chains, without comments and counters.
    fn nat(&self, save: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .exec(&[save, "-t", "nat"])?
            .lines()
            .filter(|l| l.starts_with("-A ") || l.starts_with(":SKIFF"))
            .map(|l| l.split(" [").next().unwrap_or(l).to_string())
            .collect())
    }

    /// Starts greeting servers on `ports`; stopped when the guard drops.
    fn serve(&self, name: &str, ports: &[&str]) -> anyhow::Result<Server> {
        let mut args = vec![
            "netns", "exec", &self.name, "python3", "-c", PY, "serve", name,
        ];
        args.extend_from_slice(ports);
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the greeting servers")?;
        let mut server = Server(child);
        let mut line = String::new();
        if let Some(out) = server.0.stdout.as_mut() {
            use std::io::BufRead;
            std::io::BufReader::new(out).read_line(&mut line)?;
        }
        if line.trim() != "ready" {
            bail!("the greeting servers in {} did not start", self.name);
        }
        Ok(server)
    }

    /// Where a connection to `host:port`, made from this namespace as `uid`, lands.
    fn connect(&self, host: &str, port: u16, uid: u32) -> anyhow::Result<String> {
        let (port, uid) = (port.to_string(), uid.to_string());
        Ok(self
            .exec(&["python3", "-c", PY, "connect", host, &port, &uid])?
            .trim()
            .to_string())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "delete", &self.name]);
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Why this test cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    let probe = format!("skiff-ipt-probe-{}", std::process::id());
    let ns = match Netns::add(probe) {
        Ok(ns) => ns,
        Err(e) => {
            return Some(format!(
                "cannot make a network namespace (needs root and iproute2): {e:#}"
            ))
        }
    };
    for tool in [
        ["iptables", "-t", "nat", "-S"],
        ["ip6tables", "-t", "nat", "-S"],
    ] {
        if let Err(e) = ns.exec(&tool) {
            return Some(format!("{} does not work in a namespace: {e:#}", tool[0]));
        }
    }
    if let Err(e) = ns.exec(&["python3", "-c", "import socket"]) {
        return Some(format!("python3 is missing: {e:#}"));
    }
    None
}

#[test]
fn iptables_in_a_network_namespace() -> anyhow::Result<()> {
    if let Some(why) = unavailable() {
        assert!(!required(), "SKIFF_REQUIRE_ROOT=1 but {why}");
        eprintln!("skipping: {why}; set SKIFF_REQUIRE_ROOT=1 to make this a failure");
        return Ok(());
    }
    let id = std::process::id();
    let pod = Netns::add(format!("skiff-ipt-{id}"))?;
    let peer = Netns::add(format!("skiff-ipt-{id}-peer"))?;
    pod.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &peer.name,
    ])?;
    for (ns, addrs) in [
        (&pod, &[POD_IP][..]),
        (&peer, &[PEER_IP, PEER_EXCLUDED_IP][..]),
    ] {
        for a in addrs {
            ns.exec(&["ip", "addr", "add", &format!("{a}/24"), "dev", "eth0"])?;
        }
        ns.exec(&["ip", "link", "set", "eth0", "up"])?;
    }
    // The pod: its app on 8080 and sshd-like 22, the proxy's three ports,
    // bound where deploy/ binds Skiff's (outbound on loopback only).
    let _pod_servers = pod.serve("pod", &["8080", "22", "15000", "127.0.0.1:15001", "15006"])?;
    let _peer_servers = peer.serve("peer", &["80", "3306", "15000"])?;
    let untouched = eventually(|| {
        let got = pod.connect(PEER_IP, 80, 0)?;
        if got == "peer 80" {
            Ok(got)
        } else {
            bail!("the pod cannot reach the peer yet: {got}")
        }
    })?;
    assert_eq!(untouched, "peer 80");

    // Install, and the rules are there, once each.
    pod.skiff(&ARGS)?;
    let first = pod.nat("iptables-save")?;
    for rule in V4_RULES {
        let n = first.iter().filter(|l| *l == rule).count();
        assert_eq!(n, 1, "{rule:?} appears {n} times in\n{}", first.join("\n"));
    }
    assert!(first.contains(&"-A SKIFF_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001".into()));
    assert!(
        !first.iter().any(|l| l.contains("fd00:5")),
        "an IPv6 range in iptables"
    );
    let v6 = pod.nat("ip6tables-save")?;
    assert!(
        v6.contains(&"-A SKIFF_OUTPUT -d fd00:5::/64 -j RETURN".into()),
        "{v6:#?}"
    );
    assert!(
        v6.contains(&"-A OUTPUT -p tcp -j SKIFF_OUTPUT".into()),
        "{v6:#?}"
    );

    // Twice changes nothing.
    pod.skiff(&ARGS)?;
    assert_eq!(
        pod.nat("iptables-save")?,
        first,
        "a second run changed the rules"
    );
    assert_eq!(
        pod.nat("ip6tables-save")?,
        v6,
        "a second run changed the IPv6 rules"
    );

    // Connections land where the rules say.
    let cases: [(&Netns, &str, u16, u32, &str, &str); 10] = [
        (
            &pod,
            PEER_IP,
            80,
            0,
            "pod 15001",
            "the app's call goes to the outbound listener",
        ),
        (
            &pod,
            PEER_IP,
            80,
            1337,
            "peer 80",
            "the proxy's own call goes out as it is",
        ),
        (
            &pod,
            PEER_IP,
            3306,
            0,
            "peer 3306",
            "an excluded outbound port goes direct",
        ),
        (
            &pod,
            PEER_EXCLUDED_IP,
            80,
            0,
            "peer 80",
            "an excluded outbound range goes direct",
        ),
        (
            &pod,
            PEER_IP,
            15000,
            0,
            "peer 15000",
            "another pod's admin port is not redirected",
        ),
        (
            &pod,
            POD_IP,
            8080,
            0,
            "pod 8080",
            "the app calling its own pod IP reaches itself",
        ),
        (
            &pod,
            "127.0.0.1",
            8080,
            1337,
            "pod 8080",
            "the proxy reaches the app over loopback",
        ),
        (
            &peer,
            POD_IP,
            8080,
            0,
            "pod 15006",
            "a call into the pod goes to the inbound listener",
        ),
        (
            &peer,
            POD_IP,
            15000,
            0,
            "pod 15000",
            "kubelet's probe reaches the admin port",
        ),
        (
            &peer,
            POD_IP,
            22,
            0,
            "pod 22",
            "an excluded inbound port reaches the app",
        ),
    ];
    for (ns, host, port, uid, want, why) in cases {
        let got = ns.connect(host, port, uid)?;
        assert_eq!(
            got, want,
            "{why}: {} as uid {uid} -> {host}:{port}",
            ns.name
        );
    }

    // --dry-run prints what a run does: its lines, run by sh after a
    // --clean, give the same table.
    let script = pod.skiff(&[&["--dry-run"][..], &ARGS].concat())?;
    assert!(script
        .lines()
        .any(|l| l.starts_with("iptables -t nat -A SKIFF_OUTPUT")));
    pod.skiff(&["--clean", "--ipv6"])?;
    pod.exec(&["sh", "-ec", &script])?;
    assert_eq!(
        pod.nat("iptables-save")?,
        first,
        "the dry run's commands differ from a run"
    );
    assert_eq!(pod.nat("ip6tables-save")?, v6);

    // --clean leaves nothing, and may run again.
    for _ in 0..2 {
        pod.skiff(&["--clean", "--ipv6"])?;
        for save in ["iptables-save", "ip6tables-save"] {
            let left = pod.nat(save)?;
            assert!(
                left.is_empty(),
                "{save} after --clean:\n{}",
                left.join("\n")
            );
        }
    }
    assert_eq!(pod.connect(PEER_IP, 80, 0)?, "peer 80");
    assert_eq!(peer.connect(POD_IP, 8080, 0)?, "pod 8080");
    Ok(())
}

#[test]
fn dry_run_needs_no_privilege() -> anyhow::Result<()> {
    let out = ok(SKIFF, &["iptables", "--dry-run", "--proxy-uid", "2102"])?;
    assert!(
        out.contains("iptables -t nat -A SKIFF_OUTPUT -m owner --uid-owner 2102 -j RETURN"),
        "{out}"
    );
    assert!(!out.contains("ip6tables"), "{out}");
    Ok(())
}

#[test]
fn bad_options_are_refused_before_anything_runs() -> anyhow::Result<()> {
    let out = run(SKIFF, &["iptables", "--dry-run", "--inbound-port", "15000"])?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--inbound-port and --admin-port are both 15000"),
        "{err}"
    );
    let out = run(
        SKIFF,
        &[
            "iptables",
            "--dry-run",
            "--exclude-outbound-cidrs",
            "10.0.0.0/40",
        ],
    )?;
    assert_eq!(out.status.code(), Some(2), "clap refuses a bad range");
    Ok(())
}

fn eventually<T>(mut check: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context("still not true after 10s"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
