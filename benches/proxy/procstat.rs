//! CPU time and memory of a target's processes, read from /proc.
//!
//! CPU comes two ways: `utime + stime` of /proc/PID/stat (whole process,
//! exited threads included, but in clock ticks — 10 ms each), and the run
//! time of /proc/PID/task/*/schedstat (nanoseconds, live threads only). The
//! figures use the nanosecond one when the kernel has it; both go to JSON.

use std::fs;
use std::sync::OnceLock;

/// One reading of a process tree.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Sum of the threads' run time from schedstat, ns (0 when unavailable).
    pub sched_ns: u64,
    /// utime + stime, converted to ns.
    pub ticks_ns: u64,
    /// VmRSS summed over the processes, KiB.
    pub rss_kib: u64,
    /// VmHWM (peak RSS) summed over the processes, KiB.
    pub hwm_kib: u64,
    /// Busy and total time of CPUs 0 and 1 from /proc/stat, in ticks: how
    /// busy the machine was, whoever used it.
    pub cpu_busy: [u64; 2],
    pub cpu_total: [u64; 2],
    /// Run time of this process (load generator and backend), ns.
    pub harness_ns: u64,
}

impl Sample {
    /// CPU time from `self` to `later`, ns: schedstat's when it moved, else ticks'.
    pub fn cpu_ns_until(&self, later: &Sample) -> u64 {
        let sched = later.sched_ns.saturating_sub(self.sched_ns);
        if sched > 0 {
            sched
        } else {
            later.ticks_ns.saturating_sub(self.ticks_ns)
        }
    }
}

fn ns_per_tick() -> u64 {
    static TICK: OnceLock<u64> = OnceLock::new();
    *TICK.get_or_init(|| {
        let hz = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|hz| *hz > 0)
            .unwrap_or(100);
        1_000_000_000 / hz
    })
}

/// The fields of /proc/PID/stat after the command name, from field 3 (state).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// `root` and every process below it.
pub fn tree(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // Field 4, the parent, is index 1 after the name.
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                parents.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

fn status_kib(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn sched_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Busy fraction of CPUs 0 and 1 between two samples.
pub fn busy_between(a: &Sample, b: &Sample) -> [f64; 2] {
    [0, 1].map(|i| {
        let total = b.cpu_total[i].saturating_sub(a.cpu_total[i]);
        let busy = b.cpu_busy[i].saturating_sub(a.cpu_busy[i]);
        if total == 0 {
            0.0
        } else {
            busy as f64 / total as f64
        }
    })
}

fn machine_cpus(s: &mut Sample) {
    let Ok(text) = fs::read_to_string("/proc/stat") else {
        return;
    };
    for (i, name) in ["cpu0 ", "cpu1 "].iter().enumerate() {
        let Some(line) = text.lines().find(|l| l.starts_with(name)) else {
            continue;
        };
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        s.cpu_total[i] = total;
        s.cpu_busy[i] = total.saturating_sub(idle);
    }
}

/// The share of the two CPUs that processes other than the harness and
/// the target used between two samples: how noisy the window was.
pub fn others_between(a: &Sample, b: &Sample) -> f64 {
    let total: u64 = (0..2)
        .map(|i| b.cpu_total[i].saturating_sub(a.cpu_total[i]))
        .sum();
    if total == 0 {
        return 0.0;
    }
    let busy_ns = (0..2)
        .map(|i| b.cpu_busy[i].saturating_sub(a.cpu_busy[i]))
        .sum::<u64>()
        * ns_per_tick();
    let ours = b.harness_ns.saturating_sub(a.harness_ns) + a.cpu_ns_until(b);
    (busy_ns.saturating_sub(ours)) as f64 / (total * ns_per_tick()) as f64
}

/// Read the processes `pids` (and the machine's CPUs) now.
pub fn sample(pids: &[u32]) -> Sample {
    let mut s = Sample::default();
    machine_cpus(&mut s);
    s.harness_ns = sched_ns(std::process::id());
    for &pid in pids {
        if let Some(f) = stat_fields(pid) {
            // utime and stime are fields 14 and 15: indexes 11 and 12 here.
            let ticks: u64 = [11, 12]
                .iter()
                .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
                .sum();
            s.ticks_ns += ticks * ns_per_tick();
        }
        s.sched_ns += sched_ns(pid);
        s.rss_kib += status_kib(pid, "VmRSS:");
        s.hwm_kib += status_kib(pid, "VmHWM:");
    }
    s
}
