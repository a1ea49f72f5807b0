//! Active health checks: every `interval` (±10% jitter, so a fleet of
//! proxies does not probe in lockstep) each endpoint gets an HTTP `GET path`
//! (2xx = healthy) or a `grpc.health.v1.Health/Check` (SERVING = healthy).
//! `unhealthy_threshold` failures in a row take it out of balancing,
//! `healthy_threshold` successes bring it back. Endpoints start healthy, so
//! traffic flows before the first round of checks.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use tokio::sync::watch;

use crate::cluster::{Cluster, Endpoint};
use crate::config;
use crate::http::body::RequestBody;
use crate::http::grpc;
use crate::upstream::Protocol;

/// What to ask an endpoint.
#[derive(Clone, Debug)]
pub enum Probe {
    Http { path: String },
    Grpc { service: String },
}

#[derive(Clone, Debug)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

impl HealthCheck {
    pub fn from_config(c: &config::HealthCheck) -> Self {
        let probe = match (&c.grpc, &c.http) {
            (Some(g), _) => Probe::Grpc {
                service: g.service.clone(),
            },
            (None, Some(h)) => Probe::Http {
                path: h.path.clone(),
            },
            (None, None) => Probe::Http {
                path: "/healthz".into(),
            },
        };
        HealthCheck {
            probe,
            interval: c.interval.map_or(Duration::from_secs(5), |d| d.get()),
            timeout: c.timeout.map_or(Duration::from_secs(1), |d| d.get()),
            unhealthy_threshold: c.unhealthy_threshold.unwrap_or(3).max(1),
            healthy_threshold: c.healthy_threshold.unwrap_or(2).max(1),
        }
    }
}

/// Check `cluster`'s endpoints until `stop` turns true.
pub async fn run(cluster: Arc<Cluster>, hc: HealthCheck, mut stop: watch::Receiver<bool>) {
    loop {
        let endpoints = cluster.all_endpoints();
        let mut checks = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            let (hc, cluster) = (hc.clone(), cluster.clone());
            checks.push(tokio::spawn(async move {
                let ok = probe(&cluster, &ep, &hc).await;
                let changed = ep.record_check(ok.is_ok(), hc.healthy_threshold, hc.unhealthy_threshold);
                if changed {
                    match &ok {
                        Ok(()) => tracing::info!(cluster = %cluster.name, endpoint = %ep.addr, "health check passes again: endpoint back in"),
                        Err(why) => tracing::warn!(cluster = %cluster.name, endpoint = %ep.addr, reason = %why, "health check failing: endpoint out"),
                    }
                }
                changed
            }));
        }
        let mut any_change = false;
        for c in checks {
            any_change |= c.await.unwrap_or(false);
        }
        if any_change {
            cluster.refresh_availability();
        }
        let jitter = hc.interval.mul_f64(0.9 + fastrand::f64() * 0.2);
        tokio::select! {
            _ = tokio::time::sleep(jitter) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One check of one endpoint; `Err` says why it failed.
pub async fn probe(cluster: &Cluster, ep: &Endpoint, hc: &HealthCheck) -> Result<(), String> {
    let fut = async {
        match &hc.probe {
            Probe::Http { path } => {
                let proto = cluster.protocol;
                let req = request(
                    Method::GET,
                    &cluster.name,
                    path,
                    RequestBody::fixed(Bytes::new()),
                )?;
                let resp = ep.pool.send(proto, req).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                // Read the body so an HTTP/1.1 connection can be reused.
                let _ = resp.into_body().collect().await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("status {status}"))
                }
            }
            Probe::Grpc { service } => {
                let mut req = request(
                    Method::POST,
                    &cluster.name,
                    "/grpc.health.v1.Health/Check",
                    RequestBody::fixed(health_request(service)),
                )?;
                let h = req.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                h.insert(header::TE, HeaderValue::from_static("trailers"));
                let resp = ep
                    .pool
                    .send(Protocol::Http2, req)
                    .await
                    .map_err(|e| e.to_string())?;
                let head_status = grpc::status_of(resp.headers());
                let collected = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = collected
                    .trailers()
                    .and_then(grpc::status_of)
                    .or(head_status);
                if status != Some(grpc::OK) {
                    return Err(format!("grpc-status {status:?}"));
                }
                match serving_status(&collected.to_bytes()) {
                    Some(1) => Ok(()),
                    other => Err(format!("health status {other:?}, not SERVING")),
                }
            }
        }
    };
    tokio::time::timeout(hc.timeout, fut)
        .await
        .map_err(|_| format!("no answer within {:?}", hc.timeout))?
}

fn request(
    method: Method,
    authority: &str,
    path: &str,
    body: RequestBody,
) -> Result<Request<RequestBody>, String> {
    Request::builder()
        .method(method)
        .uri(format!("http://{authority}{path}"))
        .header(header::USER_AGENT, "skiff-health-check")
        .body(body)
        .map_err(|e| format!("bad health check request: {e}"))
}

/// A gRPC-framed `HealthCheckRequest { service }`.
pub fn health_request(service: &str) -> Bytes {
    let mut msg = BytesMut::new();
    if !service.is_empty() {
        msg.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + msg.len());
    framed.put_u8(0); // not compressed
    framed.put_u32(msg.len() as u32);
    framed.put_slice(&msg);
    framed.freeze()
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// The `status` of a gRPC-framed `HealthCheckResponse` (field 1, varint); 0 when absent.
pub fn serving_status(framed: &[u8]) -> Option<u64> {
    let len = u32::from_be_bytes(framed.get(1..5)?.try_into().ok()?) as usize;
    let mut msg = framed.get(5..5 + len)?;
    let mut status = 0;
    while let Some((&tag, rest)) = msg.split_first() {
        msg = rest;
        let (value, rest) = read_varint(msg)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => {
                status = value;
                msg = rest;
            }
            (_, 0) => msg = rest,
            (_, 2) => msg = rest.get(value as usize..)?,
            _ => return None,
        }
    }
    Some(status)
}

fn read_varint(buf: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, buf.get(i + 1..)?));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_request_encoding() {
        assert_eq!(&health_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &health_request("shop")[..],
            &[0, 0, 0, 0, 6, 0x0a, 4, b's', b'h', b'o', b'p']
        );
    }

    #[test]
    fn serving_status_decoding() {
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0), "default UNKNOWN");
        assert_eq!(serving_status(&[0, 0, 0, 0, 9, 0x08]), None, "truncated");
    }
}
