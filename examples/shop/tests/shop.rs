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

/// Run the shop with `args`; its stdout (the summary), after checking it
/// exited 0 within `limit` and left nothing running.
fn shop(name: &str, args: &[&str], limit: Duration) -> String {
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
    let _ = std::fs::remove_dir_all(&dir);
    stdout
}

#[test]
fn thirty_orders_end_consistent() {
    let summary = shop(
        "plain",
        &["--requests", "30", "--concurrency", "4"],
        Duration::from_secs(90),
    );
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
}

#[test]
fn sixty_orders_with_chaos_end_consistent() {
    let summary = shop(
        "chaos",
        &["--requests", "60", "--concurrency", "2", "--chaos"],
        Duration::from_secs(120),
    );
    assert!(summary.contains("== orders: 60 placed"), "{summary}");
    assert!(summary.contains("chaos at"), "{summary}");
    assert!(summary.contains("SIGKILL inventory-1"), "{summary}");
    assert!(summary.contains("payment-2 restarted"), "{summary}");
    assert!(summary.contains("inventory-1 started again"), "{summary}");
    assert!(summary.contains("CONSISTENT"), "{summary}");
    assert!(!summary.contains("NOT CONSISTENT"), "{summary}");
}
