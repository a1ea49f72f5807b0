//! Rules for retries, health checks, outlier detection, circuit breaking
//! and the panic threshold.

use super::Rules;
use crate::config::model::{Cluster, Listener, Route};
use crate::resilience::policy::check_conditions;

/// Most tries a route may ask for: more only lengthens an outage.
const MAX_ATTEMPTS: u32 = 10;
/// Largest replay buffer: it is held per request in flight.
const MAX_REPLAY_BYTES: usize = 16 * 1024 * 1024;

impl Rules<'_> {
    /// `passthrough` and `opaque_ports` act on the original destination,
    /// which only a transparent listener knows.
    pub(super) fn interception(&mut self, l: &Listener, base: &str) {
        if l.transparent {
            return;
        }
        if l.passthrough {
            let message = "`passthrough: true` forwards to the original destination, which only a `transparent: true` listener knows";
            self.value(&format!("{base}.passthrough"), message.into());
        }
        if !l.opaque_ports.is_empty() {
            let message = "`opaque_ports` are ports of the original destination, which only a `transparent: true` listener knows";
            self.value(&format!("{base}.opaque_ports"), message.into());
        }
        if let Some(0) = l.opaque_ports.iter().copied().find(|p| *p == 0) {
            self.value(
                &format!("{base}.opaque_ports"),
                "port 0 is not a port".into(),
            );
        }
    }

    pub(super) fn retry(&mut self, route: &Route, base: &str) {
        let Some(r) = &route.retry else { return };
        let base = format!("{base}.retry");
        if !(1..=MAX_ATTEMPTS).contains(&r.attempts) {
            let message = format!(
                "`attempts` counts every try, the first included: from 1 to {MAX_ATTEMPTS}"
            );
            self.value(&format!("{base}.attempts"), message);
        }
        if r.on.is_empty() {
            let message =
                "`on` must list what to retry, e.g. [connect-failure, unavailable, \"503\"]";
            self.value(&format!("{base}.on"), message.into());
        }
        for (i, message) in check_conditions(&r.on) {
            self.value(&format!("{base}.on[{i}]"), message);
        }
        if let Some(t) = r.per_try_timeout {
            self.positive(&format!("{base}.per_try_timeout"), t, "`per_try_timeout`");
        }
        if let Some(b) = &r.backoff {
            self.positive(&format!("{base}.backoff.base"), b.base, "`base`");
            if b.max < b.base {
                let message = format!(
                    "`max` ({}) must not be less than `base` ({})",
                    b.max, b.base
                );
                self.value(&format!("{base}.backoff.max"), message);
            }
        }
        if let Some(b) = &r.budget {
            if !(0.0..=1000.0).contains(&b.ratio) || b.ratio.is_nan() {
                let message = "`ratio` is the share of requests that may be retried: from 0 to 1000 (0.2 = 20%)";
                self.value(&format!("{base}.budget.ratio"), message.into());
            }
            if b.min_per_second > 1_000_000 {
                let message = "`min_per_second` must be at most 1000000";
                self.value(&format!("{base}.budget.min_per_second"), message.into());
            }
        }
        if let Some(n) = r.replay_buffer_bytes {
            if n > MAX_REPLAY_BYTES {
                let message = format!("`replay_buffer_bytes` must be at most {MAX_REPLAY_BYTES} (16 MiB); it is held per request");
                self.value(&format!("{base}.replay_buffer_bytes"), message);
            }
        }
    }

    pub(super) fn cluster_resilience(&mut self, c: &Cluster, base: &str) {
        if let Some(p) = c.panic_threshold {
            if p > 100 {
                let message = "`panic_threshold` is a percentage: from 0 to 100";
                self.value(&format!("{base}.panic_threshold"), message.into());
            }
        }
        if let Some(h) = &c.health_check {
            let hb = format!("{base}.health_check");
            match (&h.grpc, &h.http) {
                (Some(_), Some(_)) => {
                    let message = "a health check is `grpc` or `http`, not both";
                    self.value(&hb, message.into());
                }
                (None, None) => {
                    let message = "a health check needs `grpc: { service: \"\" }` or `http: { path: /healthz }`";
                    self.value(&hb, message.into());
                }
                _ => {}
            }
            if let Some(http) = &h.http {
                if !http.path.starts_with('/') {
                    let message = format!("`path` must start with `/`; found `{}`", http.path);
                    self.value(&format!("{hb}.http.path"), message);
                }
            }
            for (key, d) in [("interval", h.interval), ("timeout", h.timeout)] {
                if let Some(d) = d {
                    self.positive(&format!("{hb}.{key}"), d, &format!("`{key}`"));
                }
            }
            for (key, n) in [
                ("unhealthy_threshold", h.unhealthy_threshold),
                ("healthy_threshold", h.healthy_threshold),
            ] {
                if n == Some(0) {
                    let message = format!("`{key}` must be at least 1");
                    self.value(&format!("{hb}.{key}"), message);
                }
            }
        }
        if let Some(o) = &c.outlier_detection {
            let ob = format!("{base}.outlier_detection");
            if o.consecutive_failures == Some(0) {
                let message = "`consecutive_failures` must be at least 1";
                self.value(&format!("{ob}.consecutive_failures"), message.into());
            }
            if o.max_ejection_percent.is_some_and(|p| p > 100) {
                let message = "`max_ejection_percent` is a percentage: from 0 to 100";
                self.value(&format!("{ob}.max_ejection_percent"), message.into());
            }
            for (key, d) in [
                ("base_ejection_time", o.base_ejection_time),
                ("max_ejection_time", o.max_ejection_time),
            ] {
                if let Some(d) = d {
                    self.positive(&format!("{ob}.{key}"), d, &format!("`{key}`"));
                }
            }
        }
        if let Some(b) = &c.circuit_breaker {
            let bb = format!("{base}.circuit_breaker");
            for (key, n) in [
                ("max_requests", b.max_requests),
                ("max_pending", b.max_pending),
                ("max_connections", b.max_connections),
            ] {
                if n == Some(0) {
                    let message = format!("`{key}` must be at least 1 (0 would refuse everything)");
                    self.value(&format!("{bb}.{key}"), message);
                }
            }
        }
    }
}
