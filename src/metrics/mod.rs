//! The proxy's Prometheus metrics (docs/architecture.md, "Metrics"), on one
//! registry, no globals.
//!
//! Label children are resolved when a listener or cluster is built and kept
//! in small handle structs, so the request path bumps counters without
//! hashing label values. Per-endpoint detail lives in `/clusters`, not here.

use std::sync::OnceLock;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::error::ErrorKind;

/// Latency buckets for one proxied request, 250µs to 60s.
const DURATION_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
];

/// Every metric family, registered on `registry`.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    requests_total: IntCounterVec,
    request_duration: HistogramVec,
    upstream_attempts: IntCounterVec,
    connections_active: IntGaugeVec,
    proxy_errors: IntCounterVec,
    endpoints: IntGaugeVec,
    dns_resolutions: IntCounterVec,
    retries: IntCounterVec,
    retry_budget_exhausted: IntCounterVec,
    retries_skipped: IntCounterVec,
    outlier_ejections: IntCounterVec,
    overflow: IntCounterVec,
    authn_denied: IntCounterVec,
    ratelimited: IntCounterVec,
    ratelimit_shared_fallback: IntCounterVec,
    authz_denied: IntCounterVec,
    connections_refused: IntCounterVec,
    tls_handshakes: IntCounterVec,
    /// `skiff_tls_cert_expiry_timestamp_seconds`: when this workload's
    /// certificate lapses (Unix seconds); 0 without a mesh identity.
    pub tls_cert_expiry: IntGauge,
    /// `skiff_tls_credential_reloads_total{result="success"}`: the files
    /// changed and the new set was taken.
    pub tls_credential_reloads_success: IntCounter,
    /// `skiff_tls_credential_reloads_total{result="failure"}`: the files
    /// changed and the new set was refused (the one in use stays).
    pub tls_credential_reloads_failure: IntCounter,
    /// `skiff_config_reloads_total{result="success"}`.
    pub reloads_success: IntCounter,
    /// `skiff_config_reloads_total{result="failure"}`.
    pub reloads_failure: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests_total = IntCounterVec::new(
            Opts::new(
                "skiff_requests_total",
                "Requests completed, by response status.",
            ),
            &["listener", "cluster", "status", "grpc_status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "skiff_request_duration_seconds",
                "Time from request received to response stream end.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["listener", "cluster"],
        )?;
        let upstream_attempts = IntCounterVec::new(
            Opts::new(
                "skiff_upstream_attempts_total",
                "Tries sent to an upstream endpoint, by result.",
            ),
            &["cluster", "result"],
        )?;
        let connections_active = IntGaugeVec::new(
            Opts::new("skiff_connections_active", "Open downstream connections."),
            &["listener"],
        )?;
        let proxy_errors = IntCounterVec::new(
            Opts::new(
                "skiff_proxy_errors_total",
                "Requests the proxy ended itself, by x-skiff-error kind.",
            ),
            &["listener", "kind"],
        )?;
        let endpoints = IntGaugeVec::new(
            Opts::new("skiff_endpoints", "Endpoints of a cluster, by state."),
            &["cluster", "state"],
        )?;
        let dns_resolutions = IntCounterVec::new(
            Opts::new(
                "skiff_dns_resolutions_total",
                "DNS lookups of dns: clusters, by result.",
            ),
            &["cluster", "result"],
        )?;
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let retries = counter(
            "skiff_retries_total",
            "Retries sent (tries after the first).",
            &["cluster"],
        )?;
        let retry_budget_exhausted = counter(
            "skiff_retry_budget_exhausted_total",
            "Retries not made because the retry budget was spent.",
            &["cluster"],
        )?;
        let retries_skipped = counter(
            "skiff_retries_skipped_total",
            "Retriable failures not retried, by reason (body_too_large, deadline).",
            &["cluster", "reason"],
        )?;
        let outlier_ejections = counter(
            "skiff_outlier_ejections_total",
            "Endpoints ejected by outlier detection.",
            &["cluster"],
        )?;
        let overflow = counter(
            "skiff_overflow_total",
            "Requests refused by a circuit-breaker cap.",
            &["cluster"],
        )?;
        let authn_denied = counter(
            "skiff_authn_denied_total",
            "Requests refused for a missing or invalid JWT, by reason.",
            &["listener", "reason"],
        )?;
        let ratelimited = counter(
            "skiff_ratelimited_total",
            "Requests refused by a rate limit.",
            &["listener"],
        )?;
        let ratelimit_shared_fallback = counter(
            "skiff_ratelimit_shared_fallback_total",
            "Shared (Redis) rate-limit checks decided by the fallback instead, by reason (timeout, error, unreachable).",
            &["listener", "reason"],
        )?;
        let authz_denied = counter(
            "skiff_authz_denied_total",
            "Requests denied by the listener's authorization policy (403).",
            &["listener"],
        )?;
        let connections_refused = counter(
            "skiff_connections_refused_total",
            "Connections closed at once because limits.max_connections were open and none was idle.",
            &["listener"],
        )?;
        let tls_handshakes = counter(
            "skiff_tls_handshakes_total",
            "TLS handshakes, by side (inbound, outbound), listener or cluster, and result (success or the failure's kind).",
            &["side", "name", "result"],
        )?;
        let tls_cert_expiry = IntGauge::new(
            "skiff_tls_cert_expiry_timestamp_seconds",
            "When this workload's certificate lapses, in Unix seconds.",
        )?;
        registry.register(Box::new(tls_cert_expiry.clone()))?;
        let credential_reloads = counter(
            "skiff_tls_credential_reloads_total",
            "Reloads of this workload's TLS credential files after a change, by result.",
            &["result"],
        )?;
        let tls_credential_reloads_success = credential_reloads.with_label_values(&["success"]);
        let tls_credential_reloads_failure = credential_reloads.with_label_values(&["failure"]);
        let reloads = counter(
            "skiff_config_reloads_total",
            "Config reloads, by result.",
            &["result"],
        )?;
        let reloads_success = reloads.with_label_values(&["success"]);
        let reloads_failure = reloads.with_label_values(&["failure"]);
        registry.register(Box::new(endpoints.clone()))?;
        registry.register(Box::new(dns_resolutions.clone()))?;
        registry.register(Box::new(requests_total.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_attempts.clone()))?;
        registry.register(Box::new(connections_active.clone()))?;
        registry.register(Box::new(proxy_errors.clone()))?;
        Ok(Metrics {
            registry,
            requests_total,
            request_duration,
            upstream_attempts,
            connections_active,
            proxy_errors,
            endpoints,
            dns_resolutions,
            retries,
            retry_budget_exhausted,
            retries_skipped,
            outlier_ejections,
            overflow,
            authn_denied,
            ratelimited,
            ratelimit_shared_fallback,
            authz_denied,
            connections_refused,
            tls_handshakes,
            tls_cert_expiry,
            tls_credential_reloads_success,
            tls_credential_reloads_failure,
            reloads_success,
            reloads_failure,
        })
    }

    /// Handles for one listener.
    /// Count one TLS handshake: `side` is `inbound` (a listener) or
    /// `outbound` (a cluster), `result` is `success` or the failure's label.
    pub fn tls_handshake(&self, side: &str, name: &str, result: &str) {
        self.tls_handshakes
            .with_label_values(&[side, name, result])
            .inc();
    }

    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        ListenerMetrics {
            connections_active: self.connections_active.with_label_values(&[listener]),
            authz_denied: self.authz_denied.with_label_values(&[listener]),
            connections_refused: self.connections_refused.with_label_values(&[listener]),
            errors: ErrorKind::ALL
                .iter()
                .map(|k| {
                    (
                        *k,
                        self.proxy_errors.with_label_values(&[listener, k.as_str()]),
                    )
                })
                .collect(),
        }
    }

    /// `skiff_authn_denied_total{listener, reason}`.
    pub fn authn_denied(&self, listener: &str, reason: &str) -> IntCounter {
        self.authn_denied.with_label_values(&[listener, reason])
    }

    /// `skiff_ratelimited_total{listener}`.
    pub fn ratelimited(&self, listener: &str) -> IntCounter {
        self.ratelimited.with_label_values(&[listener])
    }

    /// `skiff_ratelimit_shared_fallback_total{listener, reason}`.
    pub fn ratelimit_shared_fallback(&self, listener: &str, reason: &str) -> IntCounter {
        self.ratelimit_shared_fallback
            .with_label_values(&[listener, reason])
    }

    /// Handles for one (listener, cluster) pair; `cluster` is empty for requests no route took.
    pub fn route(&self, listener: &str, cluster: &str) -> RouteMetrics {
        RouteMetrics {
            listener: listener.to_owned(),
            cluster: cluster.to_owned(),
            duration: self
                .request_duration
                .with_label_values(&[listener, cluster]),
            requests: self.requests_total.clone(),
            ok: Default::default(),
        }
    }

    /// Handles for one cluster.
    pub fn cluster(&self, cluster: &str) -> ClusterMetrics {
        let a = |r: &str| self.upstream_attempts.with_label_values(&[cluster, r]);
        ClusterMetrics {
            success: a("success"),
            failure: a("failure"),
            timeout: a("timeout"),
            reset: a("reset"),
            connect_failure: a("connect_failure"),
            endpoints_healthy: self.endpoints.with_label_values(&[cluster, "healthy"]),
            endpoints_unhealthy: self.endpoints.with_label_values(&[cluster, "unhealthy"]),
            endpoints_ejected: self.endpoints.with_label_values(&[cluster, "ejected"]),
            dns_success: self
                .dns_resolutions
                .with_label_values(&[cluster, "success"]),
            dns_failure: self
                .dns_resolutions
                .with_label_values(&[cluster, "failure"]),
            dns_empty: self.dns_resolutions.with_label_values(&[cluster, "empty"]),
            retries: self.retries.with_label_values(&[cluster]),
            retry_budget_exhausted: self.retry_budget_exhausted.with_label_values(&[cluster]),
            retry_skipped_body: self
                .retries_skipped
                .with_label_values(&[cluster, "body_too_large"]),
            retry_skipped_deadline: self
                .retries_skipped
                .with_label_values(&[cluster, "deadline"]),
            outlier_ejections: self.outlier_ejections.with_label_values(&[cluster]),
            overflow: self.overflow.with_label_values(&[cluster]),
        }
    }
}

pub struct ListenerMetrics {
    pub connections_active: IntGauge,
    /// `skiff_authz_denied_total`.
    pub authz_denied: IntCounter,
    /// `skiff_connections_refused_total`.
    pub connections_refused: IntCounter,
    errors: Vec<(ErrorKind, IntCounter)>,
}

impl ListenerMetrics {
    pub fn proxy_error(&self, kind: ErrorKind) {
        if let Some((_, c)) = self.errors.iter().find(|(k, _)| *k == kind) {
            c.inc();
        }
    }
}

/// One (listener, cluster) pair's request metrics.
pub struct RouteMetrics {
    listener: String,
    cluster: String,
    duration: Histogram,
    requests: IntCounterVec,
    /// Status 200 children by grpc_status (0..=16, 17 = not gRPC), made on first use.
    ok: [OnceLock<IntCounter>; 18],
}

impl RouteMetrics {
    pub fn observe(&self, status: u16, grpc_status: Option<u8>, seconds: f64) {
        self.duration.observe(seconds);
        let counter = match (status, grpc_status) {
            (200, None) => self.ok[17].get_or_init(|| self.child(200, None)),
            (200, Some(g)) if g <= 16 => {
                self.ok[usize::from(g)].get_or_init(|| self.child(200, Some(g)))
            }
            _ => {
                self.child(status, grpc_status).inc();
                return;
            }
        };
        counter.inc();
    }

    fn child(&self, status: u16, grpc_status: Option<u8>) -> IntCounter {
        let status = status.to_string();
        let grpc = grpc_status.map(|g| g.to_string()).unwrap_or_default();
        self.requests
            .with_label_values(&[&self.listener, &self.cluster, &status, &grpc])
    }
}

/// One cluster's upstream attempt counters.
pub struct ClusterMetrics {
    pub success: IntCounter,
    pub failure: IntCounter,
    pub timeout: IntCounter,
    pub reset: IntCounter,
    pub connect_failure: IntCounter,
    pub endpoints_healthy: IntGauge,
    pub endpoints_unhealthy: IntGauge,
    pub endpoints_ejected: IntGauge,
    pub dns_success: IntCounter,
    pub dns_failure: IntCounter,
    pub dns_empty: IntCounter,
    pub retries: IntCounter,
    pub retry_budget_exhausted: IntCounter,
    pub retry_skipped_body: IntCounter,
    pub retry_skipped_deadline: IntCounter,
    pub outlier_ejections: IntCounter,
    pub overflow: IntCounter,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder;

    #[test]
    fn request_metrics_are_labelled() {
        let m = Metrics::new().unwrap();
        let r = m.route("outbound", "inventory");
        r.observe(200, Some(0), 0.001);
        r.observe(200, Some(0), 0.002);
        r.observe(503, None, 0.003);
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&m.registry.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(
            r#"skiff_requests_total{cluster="inventory",grpc_status="0",listener="outbound",status="200"} 2"#
        ), "{text}");
        assert!(text.contains(
            r#"skiff_requests_total{cluster="inventory",grpc_status="",listener="outbound",status="503"} 1"#
        ));
        assert!(text.contains(
            r#"skiff_request_duration_seconds_count{cluster="inventory",listener="outbound"} 3"#
        ));
    }
}
