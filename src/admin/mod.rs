//! The admin server (docs/architecture.md, "Admin endpoints"): metrics,
//! probes, and views of the running state.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
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
        (&Method::GET, "/config_dump") => json(&**state.config.load()),
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
            "/metrics" | "/ready" | "/live" | "/config_dump" | "/clusters" | "/shutdown" | "/drain",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics /ready /live /config_dump /clusters, POST /drain /shutdown\n",
        ),
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
