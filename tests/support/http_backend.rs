//! An HTTP backend on 127.0.0.1:0 serving HTTP/1.1 and h2c on one port, told
//! what to do by the request itself, and remembering every request it saw.
//!
//! Paths:
//! - `/headers`: a JSON body `{method, uri, version, headers: {name: [values]}}`.
//! - `/upload`: reads the whole request body and answers JSON
//!   `{len, digest, trailers: {name: value}}` (digest: [`Digest::hex`]).
//! - `/echo`: streams the request body back as it arrives (and its trailers).
//! - anything else: `ok`, or with `bytes=N` that many pattern bytes, streamed.
//!
//! Query parameters for every path: `status=N` (answer with it), `delay_ms=N`
//! (wait before the head), `trailer=name:value` (repeatable; add trailers),
//! `chunk=N` (frame size for `bytes`, default 64 KiB), `header=name:value`
//! (repeatable; add response headers).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::body::{self, channel, full, pattern, Digest, TestBody};
use super::AbortOnDrop;

/// One request as the backend received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: HeaderMap,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct HttpBackend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _accept: AbortOnDrop,
}

impl HttpBackend {
    pub async fn start() -> anyhow::Result<HttpBackend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let accept = AbortOnDrop::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let seen = seen2.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, seen.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(HttpBackend {
            addr,
            seen,
            _accept: accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request seen so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn last(&self) -> Option<Seen> {
        self.seen().pop()
    }
}

fn query(uri: &http::Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

fn param<T: std::str::FromStr>(q: &[(String, String)], name: &str) -> Option<T> {
    q.iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
}

fn headers_json(headers: &HeaderMap) -> serde_json::Value {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in headers {
        map.entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    serde_json::json!(map)
}

async fn handle(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<TestBody>, Infallible> {
    let record = Seen {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
    };
    if let Ok(mut s) = seen.lock() {
        s.push(record.clone());
    }
    let q = query(req.uri());
    if let Some(ms) = param::<u64>(&q, "delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = param::<u16>(&q, "status")
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut trailers = HeaderMap::new();
    for (_, v) in q.iter().filter(|(k, _)| k == "trailer") {
        if let Some((name, value)) = v.split_once(':') {
            if let (Ok(n), Ok(v)) = (name.parse::<HeaderName>(), HeaderValue::from_str(value)) {
                trailers.append(n, v);
            }
        }
    }
    let trailers = (!trailers.is_empty()).then_some(trailers);

    let body = match req.uri().path() {
        "/headers" => {
            let v = serde_json::json!({
                "method": record.method.as_str(),
                "uri": record.uri.to_string(),
                "version": format!("{:?}", record.version),
                "headers": headers_json(&record.headers),
            });
            with_trailers(Bytes::from(v.to_string()), trailers)
        }
        "/upload" => {
            let mut digest = Digest::default();
            let mut got_trailers = HeaderMap::new();
            let mut body = req.into_body();
            let mut error = None;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => match f.into_data() {
                        Ok(d) => digest.update(&d),
                        Err(f) => {
                            if let Ok(t) = f.into_trailers() {
                                got_trailers.extend(t);
                            }
                        }
                    },
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                }
            }
            let t: BTreeMap<String, String> = got_trailers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let v = serde_json::json!({"len": digest.len, "digest": digest.hex(), "trailers": t, "error": error});
            with_trailers(Bytes::from(v.to_string()), trailers)
        }
        "/echo" => {
            let (tx, out) = channel(4);
            let mut body = req.into_body();
            tokio::spawn(async move {
                while let Some(frame) = body.frame().await {
                    let frame = match frame {
                        Ok(f) => f,
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    };
                    if tx.send(Ok(frame)).await.is_err() {
                        return;
                    }
                }
                if let Some(t) = trailers {
                    let _ = tx.send(Ok(Frame::trailers(t))).await;
                }
            });
            out.boxed()
        }
        _ => match param::<u64>(&q, "bytes") {
            Some(n) => body::streaming_pattern(
                n,
                param::<usize>(&q, "chunk").unwrap_or(64 * 1024),
                trailers,
            ),
            None => with_trailers(Bytes::from_static(b"ok"), trailers),
        },
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    for (_, v) in q.iter().filter(|(k, _)| k == "header") {
        if let Some((name, value)) = v.split_once(':') {
            if let (Ok(n), Ok(v)) = (name.parse::<HeaderName>(), HeaderValue::from_str(value)) {
                resp.headers_mut().append(n, v);
            }
        }
    }
    resp.headers_mut().insert(
        "x-backend-version",
        HeaderValue::from_str(&format!("{:?}", record.version))
            .unwrap_or(HeaderValue::from_static("?")),
    );
    Ok(resp)
}

fn with_trailers(bytes: Bytes, trailers: Option<HeaderMap>) -> TestBody {
    match trailers {
        None => full(bytes),
        Some(t) => {
            let (tx, out) = channel(2);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(bytes))).await;
                let _ = tx.send(Ok(Frame::trailers(t))).await;
            });
            out.boxed()
        }
    }
}

/// The first `n` bytes of the pattern, for building request bodies.
pub fn pattern_body(n: usize) -> Bytes {
    pattern(0, n)
}
