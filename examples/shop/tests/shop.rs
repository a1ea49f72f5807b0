//! The shop end to end: `shop --requests N [--chaos]` starts every replica,
//! sidecar and the gateway as processes, places N orders, checks the three
//! databases against each other and exits 0 only when every order ended
//! consistent and every failure has a cause. Here with small N, bounded in
//! time; afterwards nothing it started may be left running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The skiff binary the launcher runs: the one beside the shop binary,
/// built by the workspace's test build (`cargo nextest run --workspace`),
/// or here when only this crate was built.
fn skiff() -> PathBuf {
    let shop = Path::new(env!("CARGO_BIN_EXE_shop"));
    let skiff = shop.with_file_name("skiff");
    if !skiff.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--package", "skiff", "--bin", "skiff"])
            .status()
            .unwrap();
        assert!(status.success(), "building skiff");
    }
    assert!(skiff.exists(), "no skiff at {}", skiff.display());
    skiff
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shop-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Whether process `pid` still runs (a zombie does not count).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A finished run: its summary (stdout) and its directory (logs, data),
/// removed when this is dropped.
struct Run {
    summary: String,
    dir: PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Run {
    /// The number just before `before` in the first summary line that
    /// starts with `line_has` (after its indent).
    fn count(&self, line_has: &str, before: &str) -> u64 {
        let line = self
            .summary
            .lines()
            .find(|l| l.trim_start().starts_with(line_has))
            .unwrap_or_else(|| panic!("no line starting {line_has:?}:\n{}", self.summary));
        let (head, _) = line
            .split_once(before)
            .unwrap_or_else(|| panic!("no {before:?} in {line:?}"));
        head.split_whitespace()
            .rev()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no count before {before:?} in {line:?}"))
    }

    /// The peer identities of the requests `replica`'s Skiff took in on its
    /// inbound listener (its access log), with each request's gRPC status;
    /// `None` for a request that came without one.
    fn inbound_peers(&self, replica: &str) -> Vec<(Option<String>, String)> {
        let log = self.dir.join("logs").join(format!("{replica}-access.log"));
        let text = std::fs::read_to_string(&log).unwrap();
        let field = |line: &str, key: &str| -> Option<String> {
            let (_, rest) = line.split_once(&format!("\"{key}\":"))?;
            let rest = rest.trim_start_matches('"');
            let end = rest.find(['"', ',', '}'])?;
            Some(rest[..end].to_string())
        };
        text.lines()
            .filter(|l| l.contains("\"listener\":\"inbound\""))
            .map(|l| {
                (
                    field(l, "peer"),
                    field(l, "grpc_status").unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Run the shop with `args`, after checking it exited 0 within `limit` and
/// left nothing running.
fn shop(name: &str, args: &[&str], limit: Duration) -> Run {
    let dir = scratch(name);
    let mut child = Command::new(env!("CARGO_BIN_EXE_shop"))
        .args(args)
        .args(["--step", "50ms", "--dir"])
        .arg(&dir)
        .arg("--skiff")
        .arg(skiff())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            // SIGTERM: the launcher stops everything it started.
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
            panic!("the shop took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        status.success(),
        "shop {args:?} exited {status}:\n{stdout}\n--- stderr:\n{stderr}"
    );

    // Every process the launcher started (it notes each in <dir>/pids) has
    // ended.
    let pids = std::fs::read_to_string(dir.join("pids")).unwrap();
    let started: Vec<(String, u32)> = pids
        .lines()
        .filter_map(|l| {
            let (name, pid) = l.split_once(' ')?;
            Some((name.to_string(), pid.parse().ok()?))
        })
        .collect();
    assert!(started.len() >= 17, "{pids}");
    let left: Vec<&(String, u32)> = started.iter().filter(|(_, pid)| running(*pid)).collect();
    assert!(left.is_empty(), "still running: {left:?}");
    Run {
        summary: stdout,
        dir,
    }
}

const ORDER: &str = "spiffe://shop.local/ns/shop/sa/order";
const GATEWAY: &str = "spiffe://shop.local/ns/shop/sa/gateway";
const CATALOG: &str = "spiffe://shop.local/ns/shop/sa/catalog";

/// Every hop inside the shop was mTLS with the caller it should be: each
/// request a sidecar took in came with a verified SPIFFE ID (the access
/// log's `peer`), the order service's from the gateway, the catalog's from
/// order or the gateway, inventory's and payment's from order — except the
/// intruder's (catalog's SVID) at payment-1, each denied (gRPC 7).
fn assert_mtls_everywhere(run: &Run) {
    for (replica, allowed) in [
        ("order-1", &[GATEWAY][..]),
        ("order-2", &[GATEWAY]),
        ("catalog-1", &[ORDER, GATEWAY]),
        ("catalog-2", &[ORDER, GATEWAY]),
        ("inventory-1", &[ORDER]),
        ("inventory-2", &[ORDER]),
        ("payment-1", &[ORDER]),
        ("payment-2", &[ORDER]),
    ] {
        let peers = run.inbound_peers(replica);
        assert!(!peers.is_empty(), "{replica}'s Skiff took in nothing");
        for (peer, grpc_status) in peers {
            match peer.as_deref() {
                Some(p) if allowed.contains(&p) => {}
                Some(CATALOG) if replica == "payment-1" => {
                    assert_eq!(grpc_status, "7", "the intruder at payment-1 got through")
                }
                other => panic!("{replica} took a call from {other:?}"),
            }
        }
    }
}

#[test]
fn thirty_orders_end_consistent() {
    let run = shop(
        "plain",
        &["--requests", "30", "--concurrency", "4"],
        Duration::from_secs(90),
    );
    let summary = &run.summary;
    assert!(summary.contains("== orders: 30 placed"), "{summary}");
    assert!(summary.contains("30 orders: "), "{summary}");
    assert!(summary.contains("CONSISTENT"), "{summary}");
    assert!(!summary.contains("NOT CONSISTENT"), "{summary}");
    // The table has a row per service, read from the sidecars' /metrics.
    for svc in ["order", "catalog", "inventory", "payment"] {
        assert!(
            summary.lines().any(|l| l.starts_with(svc)),
            "no {svc} row:\n{summary}"
        );
    }
    // Every shopper's token passed, and every hop inside was mTLS.
    assert_eq!(run.count("gateway: ", "× 401"), 0, "{summary}");
    assert!(
        run.count("mTLS: ", "handshakes and refused") > 0,
        "{summary}"
    );
    assert_eq!(run.count("mTLS: ", "; the order sidecars"), 0, "{summary}");
    assert_mtls_everywhere(&run);
    // The shoppers reached the gateway over HTTPS, and none was refused.
    assert!(run.count("edge TLS: ", "HTTPS handshakes") > 0, "{summary}");
    assert_eq!(run.count("edge TLS: ", " refused"), 0, "{summary}");
}

#[test]
fn sixty_orders_with_chaos_end_consistent() {
    let run = shop(
        "chaos",
        &["--requests", "60", "--concurrency", "2", "--chaos"],
        Duration::from_secs(120),
    );
    let summary = &run.summary;
    assert!(summary.contains("== orders: 60 placed"), "{summary}");
    assert!(summary.contains("chaos at"), "{summary}");
    assert!(summary.contains("SIGKILL inventory-1"), "{summary}");
    assert!(summary.contains("payment-2 restarted"), "{summary}");
    assert!(summary.contains("inventory-1 started again"), "{summary}");
    assert!(summary.contains("CONSISTENT"), "{summary}");
    assert!(!summary.contains("NOT CONSISTENT"), "{summary}");

    // The clients the shop must turn away were turned away, and counted
    // by the Skiffs that did it: 401s for no, forged or expired tokens,
    // 429s for the flooder, 403s for the intruder. Every anonymous order
    // was refused, so none of them is in order.db (the consistency check
    // above counts only what the shoppers placed: 60).
    assert!(run.count("gateway: ", "× 401") > 0, "{summary}");
    assert!(run.count("gateway: ", "× 429") > 0, "{summary}");
    assert!(run.count("gateway: ", "× 403") > 0, "{summary}");
    assert!(summary.contains("60 orders: "), "{summary}");
    for reason in ["missing", "signature", "expired"] {
        assert!(
            summary.contains(&format!("{reason} ")),
            "no {reason}: {summary}"
        );
    }
    assert!(
        run.count("the flooder", "RESOURCE_EXHAUSTED") > 0,
        "{summary}"
    );
    assert!(
        run.count("the anonymous client", "UNAUTHENTICATED") > 0,
        "{summary}"
    );
    assert!(
        run.count("the intruder", "PERMISSION_DENIED") > 0,
        "{summary}"
    );
    let anonymous = run
        .summary
        .lines()
        .find(|l| l.contains("the anonymous client"))
        .unwrap();
    assert!(
        !anonymous.contains(" OK"),
        "an anonymous order got through: {anonymous}"
    );
    // Orders went through over mTLS, the replicas killed and slowed
    // notwithstanding.
    assert!(
        run.count("mTLS: ", "handshakes and refused") > 0,
        "{summary}"
    );
    assert_mtls_everywhere(&run);
}
