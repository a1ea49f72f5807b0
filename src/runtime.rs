//! How many worker threads to run: the CPUs this process may really use.
//!
//! In a container the CPU limit is a CFS quota, not a smaller CPU set, so
//! the host's core count overstates it; a sidecar limited to 0.5 CPU that
//! starts 64 threads only adds contention. Read the cgroup quota (v2
//! `cpu.max`, else v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`) and take
//! the smaller of it (rounded up) and the CPUs in our affinity mask.

use std::path::Path;

/// Worker threads for this process: `configured` if set, else the usable CPUs.
pub fn worker_threads(configured: Option<usize>) -> usize {
    if let Some(n) = configured {
        return n.max(1);
    }
    let affinity = std::thread::available_parallelism().map_or(1, |n| n.get());
    match cgroup_cpu_limit(Path::new("/sys/fs/cgroup")) {
        Some(limit) => limit.min(affinity).max(1),
        None => affinity,
    }
}

/// The cgroup CPU quota under `root`, in whole CPUs rounded up; `None` when unlimited or unknown.
pub fn cgroup_cpu_limit(root: &Path) -> Option<usize> {
    if let Ok(max) = std::fs::read_to_string(root.join("cpu.max")) {
        return parse_cpu_max(&max);
    }
    let quota = std::fs::read_to_string(root.join("cpu/cpu.cfs_quota_us")).ok()?;
    let period = std::fs::read_to_string(root.join("cpu/cpu.cfs_period_us")).ok()?;
    quota_to_cpus(quota.trim().parse().ok()?, period.trim().parse().ok()?)
}

/// Parse cgroup v2 `cpu.max`: `"<quota> <period>"` or `"max <period>"`.
pub fn parse_cpu_max(s: &str) -> Option<usize> {
    let mut it = s.split_whitespace();
    let quota = it.next()?;
    let period: i64 = it.next().unwrap_or("100000").parse().ok()?;
    if quota == "max" {
        return None;
    }
    quota_to_cpus(quota.parse().ok()?, period)
}

fn quota_to_cpus(quota: i64, period: i64) -> Option<usize> {
    if quota <= 0 || period <= 0 {
        return None; // -1 means no limit in cgroup v1
    }
    usize::try_from((quota + period - 1) / period).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v2_quota() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("50000 100000"), Some(1)); // half a CPU still needs a thread
        assert_eq!(parse_cpu_max("150000 100000"), Some(2));
        assert_eq!(parse_cpu_max(""), None);
    }

    #[test]
    fn cgroup_v1_quota_from_files() {
        let dir = std::env::temp_dir().join(format!("skiff-cg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("cpu")).unwrap();
        std::fs::write(dir.join("cpu/cpu.cfs_quota_us"), "300000\n").unwrap();
        std::fs::write(dir.join("cpu/cpu.cfs_period_us"), "100000\n").unwrap();
        assert_eq!(cgroup_cpu_limit(&dir), Some(3));
        std::fs::write(dir.join("cpu/cpu.cfs_quota_us"), "-1\n").unwrap();
        assert_eq!(cgroup_cpu_limit(&dir), None);
        std::fs::write(dir.join("cpu.max"), "100000 100000\n").unwrap();
        assert_eq!(cgroup_cpu_limit(&dir), Some(1)); // v2 wins when present
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn configured_value_wins() {
        assert_eq!(worker_threads(Some(3)), 3);
        assert!(worker_threads(None) >= 1);
    }
}
