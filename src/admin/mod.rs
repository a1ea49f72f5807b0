//! The admin server (docs/architecture.md, "Admin endpoints"): metrics,
//! probes, and views of the running state.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Encoder;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::admission::jwks::Jwks;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::http::body::ProxyBody;
use crate::identity::CredentialStore;

/// What the admin endpoints read.
pub struct AdminState {
    pub registry: prometheus::Registry,
    /// The running config (swapped on reload).
    pub config: ArcSwap<Config>,
    /// The running clusters, by name (swapped on reload).
    pub clusters: ArcSwap<Vec<Arc<Cluster>>>,
    /// True once listeners serve and every cluster has had its first discovery answer.
    pub ready: AtomicBool,
    /// The key sets of `jwt:` listeners (swapped on reload): not ready
    /// while one has no keys yet.
    pub jwks: ArcSwap<Vec<Arc<Jwks>>>,
    /// True from the shutdown signal on: readiness fails so peers stop sending.
    pub draining: AtomicBool,
    /// Notified by `POST /shutdown`.
    pub shutdown: Notify,
    /// Notified by `POST /drain`.
    pub drain: Notify,
    /// This workload's mesh credentials, when the config has `tls` (swapped on reload).
    pub certs: ArcSwapOption<CredentialStore>,
    /// Whether a listener or cluster needs them: then not ready while they
    /// are unusable (none loaded, or lapsed).
    pub needs_identity: AtomicBool,
}

/// Serve admin requests until `stop` turns true.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            biased;
            _ = stop.changed() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn handle(state: &AdminState, req: Request<Incoming>) -> Response<ProxyBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let enc = prometheus::TextEncoder::new();
            let mut buf = Vec::with_capacity(16 * 1024);
            match enc.encode(&state.registry.gather(), &mut buf) {
                Ok(()) => reply(StatusCode::OK, enc.format_type(), buf),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding metrics: {e}\n"),
                ),
            }
        }
        (&Method::GET, "/ready") => {
            let no_keys = state.jwks.load().iter().find(|j| !j.is_loaded()).cloned();
            if state.draining.load(Ordering::Acquire) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if let Some(why) = identity_problem(state) {
                let why = format!("no usable mesh identity: {why}\n");
                text(StatusCode::SERVICE_UNAVAILABLE, why)
            } else if let Some(j) = no_keys {
                let why = format!("starting: waiting for the JWK Set of {}\n", j.description);
                text(StatusCode::SERVICE_UNAVAILABLE, why)
            } else if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "starting: waiting for discovery\n",
                )
            }
        }
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/config_dump") => match serde_json::to_value(&**state.config.load()) {
            Ok(mut dump) => {
                redact(&mut dump);
                json(&dump)
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        (&Method::GET, "/certs") => match &*state.certs.load() {
            Some(store) => match store.current() {
                Some(c) => json(c.view()),
                None => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "no identity loaded: {}\n",
                        store.problem(std::time::SystemTime::now()).unwrap_or_default()
                    ),
                ),
            },
            None => text(
                StatusCode::NOT_FOUND,
                "no mesh identity: the config has no top-level `tls`\n",
            ),
        },
        (&Method::GET, "/clusters") => {
            let clusters: Vec<_> = state.clusters.load().iter().map(|c| c.status()).collect();
            json(&serde_json::json!({ "clusters": clusters }))
        }
        // Readiness fails before the answer leaves, not when the main loop
        // gets round to the drain: a probe right after sees 503.
        (&Method::POST, "/shutdown") => {
            state.draining.store(true, Ordering::Release);
            state.shutdown.notify_one();
            text(StatusCode::OK, "shutting down\n")
        }
        (&Method::POST, "/drain") => {
            state.draining.store(true, Ordering::Release);
            state.drain.notify_one();
            text(StatusCode::OK, "draining\n")
        }
        (
            _,
            "/metrics" | "/ready" | "/live" | "/config_dump" | "/clusters" | "/certs" | "/shutdown"
            | "/drain",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics /ready /live /config_dump /clusters /certs, POST /drain /shutdown\n",
        ),
    }
}

/// Why the mesh identity that a listener or cluster needs is unusable now.
fn identity_problem(state: &AdminState) -> Option<String> {
    if !state.needs_identity.load(Ordering::Acquire) {
        return None;
    }
    let store = state.certs.load_full()?;
    store.problem(std::time::SystemTime::now())
}

/// What `/config_dump` shows in place of key material.
pub const REDACTED: &str = "[redacted]";

/// Masks key material in a config dump, in place.
///
/// Key material is what would let a reader act as this workload: a private
/// key or a secret written into the config itself. A file path to one is
/// not (it says where the key is, which the pod spec shows anyway), so a
/// path stays visible and helps debugging. Masked:
/// - inline PEM anywhere (a value holding `-----BEGIN`), whatever its key;
/// - the `key` of any mapping under a `tls` section unless it is a plain
///   file path (one line, no PEM);
/// - any value under a key named `secret`, `password`, `token` or
///   `private_key`, or ending in `_secret`.
pub fn redact(value: &mut serde_json::Value) {
    redact_in(value, false);
}

fn redact_in(value: &mut serde_json::Value, under_tls: bool) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let tls = under_tls || k == "tls";
                if secret_key(k) || (tls && k == "key" && !is_file_path(v)) {
                    if !v.is_null() {
                        *v = serde_json::Value::String(REDACTED.into());
                    }
                } else {
                    redact_in(v, tls);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                redact_in(v, under_tls);
            }
        }
        serde_json::Value::String(s) if s.contains("-----BEGIN") => {
            *s = REDACTED.into();
        }
        _ => {}
    }
}

fn secret_key(k: &str) -> bool {
    matches!(k, "secret" | "password" | "token" | "private_key") || k.ends_with("_secret")
}

/// A one-line string that is not PEM: taken for a path to a key file.
fn is_file_path(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => {
            !s.is_empty() && !s.contains('\n') && !s.contains("-----BEGIN")
        }
        _ => false,
    }
}

fn json<T: serde::Serialize>(v: &T) -> Response<ProxyBody> {
    match serde_json::to_vec_pretty(v) {
        Ok(mut body) => {
            body.push(b'\n');
            reply(StatusCode::OK, "application/json", body)
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    reply(status, "text/plain; charset=utf-8", body)
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n";

    #[test]
    fn key_paths_stay_and_inline_keys_are_masked() {
        let mut dump = json!({
            "tls": { "cert": "/etc/skiff/cert.pem", "key": "/etc/skiff/key.pem", "ca": "/etc/skiff/ca.pem" },
            "listeners": [
                { "name": "in", "tls": { "mode": "terminate", "cert": "/c.pem", "key": PEM } },
                { "name": "out", "tls": { "mode": "terminate", "key": "base64-without-pem\nsecond line" } },
                { "name": "plain", "tls": null, "key": "not under tls" },
            ],
            "clusters": [ { "name": "c", "tls": { "mode": "simple", "ca": PEM, "identity": "spiffe://x/y" } } ],
            "jwt": { "client_secret": "hunter2", "jwks_file": "/jwks.json" },
            "anything": { "token": "abc", "password": 1234, "note": format!("inline {PEM}") },
        });
        redact(&mut dump);
        assert_eq!(
            dump["tls"]["key"], "/etc/skiff/key.pem",
            "a path is not key material"
        );
        assert_eq!(dump["tls"]["cert"], "/etc/skiff/cert.pem");
        assert_eq!(dump["listeners"][0]["tls"]["key"], REDACTED);
        assert_eq!(dump["listeners"][0]["tls"]["cert"], "/c.pem");
        assert_eq!(
            dump["listeners"][1]["tls"]["key"], REDACTED,
            "inline, not a path"
        );
        assert_eq!(dump["listeners"][2]["key"], "not under tls");
        assert_eq!(
            dump["clusters"][0]["tls"]["ca"], REDACTED,
            "inline PEM anywhere"
        );
        assert_eq!(dump["clusters"][0]["tls"]["identity"], "spiffe://x/y");
        assert_eq!(dump["jwt"]["client_secret"], REDACTED);
        assert_eq!(dump["jwt"]["jwks_file"], "/jwks.json");
        assert_eq!(dump["anything"]["token"], REDACTED);
        assert_eq!(dump["anything"]["password"], REDACTED);
        assert_eq!(dump["anything"]["note"], REDACTED);
        let text = dump.to_string();
        assert!(
            !text.contains("BEGIN") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn a_config_without_secrets_is_unchanged() {
        let yaml = "admin:\n  address: 127.0.0.1:0\nlisteners:\n  - name: l\n    address: 127.0.0.1:0\n    virtual_hosts:\n      - name: a\n        domains: [\"*\"]\n        routes:\n          - cluster: c\nclusters:\n  - name: c\n    endpoints: [\"127.0.0.1:1\"]\n";
        let config = crate::config::load_str(yaml, "<test>").unwrap();
        let before = serde_json::to_value(&config).unwrap();
        let mut after = before.clone();
        redact(&mut after);
        assert_eq!(before, after);
    }
}
