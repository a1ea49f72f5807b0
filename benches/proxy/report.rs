//! Results: every figure of every round, summed up as one markdown table
//! (median over rounds, spread, ratio to direct and to skiff) and as JSON.

use std::collections::BTreeMap;

use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq)]
pub enum Unit {
    PerSec,
    Micros,
    Millis,
    Mib,
    Vcpu,
    Count,
}

/// How a proxy's figure is set against direct's.
#[derive(Clone, Copy, PartialEq)]
pub enum Compare {
    /// proxy ÷ direct
    Ratio,
    /// proxy − direct (latency a hop adds)
    Added,
}

pub struct Figure {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: Unit,
    pub compare: Compare,
}

const fn fig(key: &'static str, label: &'static str, unit: Unit, compare: Compare) -> Figure {
    Figure {
        key,
        label,
        unit,
        compare,
    }
}

use Compare::{Added, Ratio};
use Unit::{Count, Mib, Micros, Millis, PerSec, Vcpu};

/// Every figure, in table order.
pub const FIGURES: &[Figure] = &[
    fig("process.start_ms", "start to ready", Millis, Ratio),
    fig("process.idle_rss", "RSS idle", Mib, Ratio),
    fig(
        "unary-1k.rps",
        "gRPC unary 1 KiB, closed loop: calls/s",
        PerSec,
        Ratio,
    ),
    fig("unary-1k.cpu_us", "  proxy CPU per call", Micros, Ratio),
    fig("unary-1k.p50", "  latency p50", Micros, Added),
    fig("unary-1k.p99", "  latency p99", Micros, Added),
    fig("unary-1k.rss", "  RSS under load", Mib, Ratio),
    fig(
        "unary-64k.rps",
        "gRPC unary 64 KiB, closed loop: calls/s",
        PerSec,
        Ratio,
    ),
    fig("unary-64k.cpu_us", "  proxy CPU per call", Micros, Ratio),
    fig("unary-64k.p50", "  latency p50", Micros, Added),
    fig("unary-64k.p99", "  latency p99", Micros, Added),
    fig("unary-64k.rss", "  RSS under load", Mib, Ratio),
    fig(
        "stream.msgs",
        "gRPC server streaming (100 × 1 KiB): messages/s",
        PerSec,
        Ratio,
    ),
    fig("stream.cpu_us", "  proxy CPU per message", Micros, Ratio),
    fig(
        "http1.rps",
        "HTTP/1.1 client → h2 upstream, 1 KiB: req/s",
        PerSec,
        Ratio,
    ),
    fig("http1.cpu_us", "  proxy CPU per request", Micros, Ratio),
    fig("http1.p50", "  latency p50", Micros, Added),
    fig(
        "h2load.rps",
        "h2load GET 1 KiB over h2c: req/s",
        PerSec,
        Ratio,
    ),
    fig("h2load.cpu_us", "  proxy CPU per request", Micros, Ratio),
    fig(
        "open-1000.vcpu",
        "gRPC unary 1 KiB at 1,000/s: proxy vCPU",
        Vcpu,
        Ratio,
    ),
    fig("open-1000.cpu_us", "  proxy CPU per call", Micros, Ratio),
    fig("open-1000.p50", "  latency p50", Micros, Added),
    fig("open-1000.p90", "  latency p90", Micros, Added),
    fig("open-1000.p99", "  latency p99", Micros, Added),
    fig("open-1000.p999", "  latency p99.9", Micros, Added),
    fig("open-1000.max", "  latency max", Micros, Added),
    fig(
        "open-5000.vcpu",
        "gRPC unary 1 KiB at 5,000/s: proxy vCPU",
        Vcpu,
        Ratio,
    ),
    fig("open-5000.p50", "  latency p50", Micros, Added),
    fig("open-5000.p90", "  latency p90", Micros, Added),
    fig("open-5000.p99", "  latency p99", Micros, Added),
    fig("open-5000.p999", "  latency p99.9", Micros, Added),
    fig("open-5000.max", "  latency max", Micros, Added),
    fig("streams-1000.rss", "1,000 open streams: RSS", Mib, Ratio),
    fig("streams-1000.opened", "  streams open", Count, Ratio),
    fig(
        "process.peak_rss",
        "peak RSS (VmHWM) over the run",
        Mib,
        Ratio,
    ),
];

/// All values, per figure, per target, one per round.
#[derive(Default)]
pub struct Results {
    values: BTreeMap<(String, String), Vec<f64>>,
    raw: Vec<Value>,
    pub errors: Vec<String>,
    /// Per measured window: the share of the CPUs other processes used.
    pub noise: Vec<f64>,
}

impl Results {
    pub fn add(&mut self, key: &str, target: &str, value: f64) {
        if value.is_finite() {
            self.values
                .entry((key.to_string(), target.to_string()))
                .or_default()
                .push(value);
        }
    }

    pub fn noise_mean(&self) -> f64 {
        if self.noise.is_empty() {
            0.0
        } else {
            self.noise.iter().sum::<f64>() / self.noise.len() as f64
        }
    }

    /// Keep a scenario's raw measurement for the JSON.
    pub fn add_raw(&mut self, raw: Value) {
        self.raw.push(raw);
    }

    fn stats(&self, key: &str, target: &str) -> Option<(f64, f64, f64)> {
        let v = self.values.get(&(key.to_string(), target.to_string()))?;
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Some((median, *v.first()?, *v.last()?))
    }

    /// The markdown table: a row per figure, a column per target.
    pub fn table(&self, targets: &[&str]) -> String {
        let mut out = String::new();
        out.push_str("| figure |");
        for t in targets {
            out.push_str(&format!(" {t} |"));
        }
        out.push_str("\n|---|");
        for _ in targets {
            out.push_str("---|");
        }
        out.push('\n');
        for f in FIGURES {
            if !targets.iter().any(|t| self.stats(f.key, t).is_some()) {
                continue;
            }
            let label = match f.label.strip_prefix("  ") {
                Some(rest) => format!("&nbsp;&nbsp;{rest}"),
                None => f.label.to_string(),
            };
            out.push_str(&format!("| {label} |"));
            let direct = self.stats(f.key, "direct").map(|s| s.0);
            let skiff = self.stats(f.key, "skiff").map(|s| s.0);
            for t in targets {
                let Some((median, min, max)) = self.stats(f.key, t) else {
                    out.push_str(" – |");
                    continue;
                };
                let mut cell = format_value(median, f.unit);
                if max > min && median != 0.0 {
                    let spread = (max - min) / 2.0 / median.abs() * 100.0;
                    cell.push_str(&format!(" ±{spread:.0}%"));
                }
                if *t != "direct" {
                    if let Some(d) = direct {
                        match f.compare {
                            Compare::Ratio if d != 0.0 => {
                                cell.push_str(&format!(" · {:.2}×d", median / d))
                            }
                            Compare::Added => {
                                let sign = if median >= d { '+' } else { '−' };
                                let diff = format_value((median - d).abs(), f.unit);
                                cell.push_str(&format!(" · {sign}{diff}"));
                            }
                            Compare::Ratio => {}
                        }
                    }
                    if *t != "skiff" {
                        if let Some(s) = skiff.filter(|s| *s != 0.0) {
                            cell.push_str(&format!(" · {:.2}×s", median / s));
                        }
                    }
                }
                out.push_str(&format!(" {cell} |"));
            }
            out.push('\n');
        }
        out
    }

    pub fn json(&self, header: Value) -> Value {
        let mut summary = serde_json::Map::new();
        for ((key, target), values) in &self.values {
            if let Some((median, min, max)) = self.stats(key, target) {
                let entry = summary.entry(key.clone()).or_insert_with(|| json!({}));
                entry[target.as_str()] =
                    json!({ "median": median, "min": min, "max": max, "rounds": values });
            }
        }
        json!({
            "run": header,
            "summary": summary,
            "measurements": self.raw,
            "errors": self.errors,
        })
    }
}

pub fn format_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::PerSec if v.abs() >= 10_000.0 => format!("{:.1}k/s", v / 1000.0),
        Unit::PerSec => format!("{v:.0}/s"),
        Unit::Micros if v.abs() >= 10_000.0 => format!("{:.1} ms", v / 1000.0),
        Unit::Micros if v.abs() >= 100.0 => format!("{v:.0} µs"),
        Unit::Micros => format!("{v:.1} µs"),
        Unit::Millis => format!("{v:.1} ms"),
        Unit::Mib => format!("{v:.1} MiB"),
        Unit::Vcpu => format!("{v:.3}"),
        Unit::Count => format!("{v:.0}"),
    }
}
