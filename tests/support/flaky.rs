//! A backend whose faults a test switches while traffic flows: fail a share
//! of requests with an HTTP status or a gRPC status (trailers-only, or a head
//! then trailers with no message), reset before or in the middle of a
//! response, add latency, accept and never answer (black hole), die and come
//! back on the same address (connections then are refused). It also answers
//! health checks, switchable: `GET /healthz` (200 or 503) and
//! `grpc.health.v1.Health/Check` (SERVING or NOT_SERVING).
//!
//! One port serves HTTP/1.1 and h2c. A request whose content-type starts
//! with `application/grpc` is a gRPC call: on success it gets an
//! `EchoResponse` (its payload echoed, the request headers in
//! `seen_headers`) and `grpc-status: 0`; any other request gets `ok` and
//! the replica's address in `x-replica`. Health checks are not subject to
//! the faults and are not counted as traffic.
//!
//! [`replicas`] starts several on 127.0.0.2, 127.0.0.3, … sharing one port,
//! as the replicas of one service.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::body::{self, channel, Digest, TestBody};
use super::echo_pb::{EchoRequest, EchoResponse};

/// How a request the backend chose to fail is failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Answer with this HTTP status and a short text body.
    Status(u16),
    /// gRPC trailers-only: HTTP 200 with `grpc-status` in the head, no body.
    GrpcTrailersOnly(u8),
    /// gRPC: a head without `grpc-status`, then — after the pause — trailers
    /// carrying it; no message in between.
    GrpcAfterHeaders(u8, Duration),
    /// Reset before any response: RST_STREAM on HTTP/2, the connection
    /// closed on HTTP/1.1.
    Reset,
    /// Send the head and part of the body, then reset the same way.
    ResetMidStream,
}

/// One request as the backend received it (health checks excluded).
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: http::Method,
    pub path: String,
    pub headers: HeaderMap,
    /// `x-skiff-attempt-count`, when the proxy sent it.
    pub attempt: Option<u32>,
    pub body: Digest,
    /// The fault applied, if any (`None`: answered normally).
    pub failed: Option<Failure>,
}

/// What the test has switched on.
#[derive(Debug)]
struct Faults {
    failure: Option<Failure>,
    /// Share of requests failed, in percent, spread evenly (not at random).
    percent: u32,
    /// When set, only this many more requests fail, then none.
    remaining: Option<u64>,
    counter: u64,
    latency: Duration,
}

impl Faults {
    /// The fault for the next request, if it gets one.
    fn next(&mut self) -> Option<Failure> {
        let failure = self.failure?;
        if let Some(n) = &mut self.remaining {
            if *n == 0 {
                return None;
            }
            *n -= 1;
            return Some(failure);
        }
        let k = self.counter;
        self.counter += 1;
        let pct = u64::from(self.percent.min(100));
        ((k + 1) * pct / 100 > k * pct / 100).then_some(failure)
    }
}

struct State {
    addr: SocketAddr,
    faults: Mutex<Faults>,
    /// true: requests wait (black hole) until it turns false again.
    holding: watch::Sender<bool>,
    healthy: watch::Sender<bool>,
    seen: Mutex<Vec<Seen>>,
    served: AtomicU64,
    in_flight: AtomicUsize,
    health_checks: AtomicU64,
    health_services: Mutex<Vec<String>>,
    connections: AtomicUsize,
}

/// A switchable, fault-injecting backend. Dropping it stops it.
pub struct FlakyBackend {
    state: Arc<State>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl FlakyBackend {
    /// A backend on 127.0.0.1, on a port of its own.
    pub async fn start() -> anyhow::Result<FlakyBackend> {
        FlakyBackend::start_at(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// A backend on `addr` (port 0: any free port).
    pub async fn start_at(addr: SocketAddr) -> anyhow::Result<FlakyBackend> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        let state = Arc::new(State {
            addr: listener.local_addr()?,
            faults: Mutex::new(Faults {
                failure: None,
                percent: 0,
                remaining: None,
                counter: 0,
                latency: Duration::ZERO,
            }),
            holding: watch::Sender::new(false),
            healthy: watch::Sender::new(true),
            seen: Mutex::new(Vec::new()),
            served: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            health_checks: AtomicU64::new(0),
            health_services: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let task = tokio::spawn(serve(listener, state.clone()));
        Ok(FlakyBackend {
            state,
            task: Mutex::new(Some(task)),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// The `x-replica` value of this backend's answers.
    pub fn id(&self) -> String {
        self.state.addr.to_string()
    }

    /// Fail `percent`% of the requests from now on with `failure`, spread
    /// evenly (50: every second one), so counts in tests are exact.
    pub fn fail_percent(&self, percent: u32, failure: Failure) {
        self.set_faults(|f| {
            f.failure = Some(failure);
            f.percent = percent;
            f.remaining = None;
            f.counter = 0;
        });
    }

    /// Fail every request from now on.
    pub fn fail_always(&self, failure: Failure) {
        self.fail_percent(100, failure);
    }

    /// Fail the next `n` requests, then answer normally.
    pub fn fail_next(&self, n: u64, failure: Failure) {
        self.set_faults(|f| {
            f.failure = Some(failure);
            f.remaining = Some(n);
        });
    }

    /// Stop failing requests.
    pub fn heal(&self) {
        self.set_faults(|f| {
            f.failure = None;
            f.remaining = None;
        });
    }

    /// Wait this long before answering each request.
    pub fn set_latency(&self, latency: Duration) {
        self.set_faults(|f| f.latency = latency);
    }

    /// Black hole: requests are accepted (and their bodies read) but not
    /// answered while this is on; when it goes off, the waiting ones answer.
    pub fn set_black_hole(&self, on: bool) {
        self.state.holding.send_replace(on);
    }

    /// What `/healthz` and the gRPC health service say from now on.
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.send_replace(healthy);
    }

    fn set_faults(&self, change: impl FnOnce(&mut Faults)) {
        if let Ok(mut f) = self.state.faults.lock() {
            change(&mut f);
        }
    }

    /// Every request seen so far (health checks excluded), in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Requests that reached this backend (health checks excluded).
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::SeqCst)
    }

    /// Requests being handled right now (waiting in a black hole included).
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Health checks answered so far.
    pub fn health_checks(&self) -> u64 {
        self.state.health_checks.load(Ordering::SeqCst)
    }

    /// The `service` of every gRPC health check so far.
    pub fn health_services(&self) -> Vec<String> {
        self.state
            .health_services
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Open client connections.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Die: stop listening (connects are refused from now on) and drop every
    /// open connection at once, requests in flight included.
    pub async fn kill(&self) -> anyhow::Result<()> {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        super::eventually(Duration::from_secs(5), || async {
            let n = self.connections();
            anyhow::ensure!(n == 0, "{} still has {n} connections open", self.id());
            Ok(())
        })
        .await
    }

    /// Come back on the same address, with the same switches and records.
    pub async fn revive(&self) -> anyhow::Result<()> {
        let addr = self.state.addr;
        let listener = super::eventually(Duration::from_secs(5), || async {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind {addr} again"))
        })
        .await?;
        let task = tokio::spawn(serve(listener, self.state.clone()));
        if let Ok(mut t) = self.task.lock() {
            if let Some(old) = t.replace(task) {
                old.abort();
            }
        }
        Ok(())
    }
}

impl Drop for FlakyBackend {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }
}

/// `n` backends on 127.0.0.2, 127.0.0.3, … all on the same port, as the
/// replicas of one service.
pub async fn replicas(n: u8) -> anyhow::Result<Vec<FlakyBackend>> {
    super::replica::on_one_port(n, FlakyBackend::start_at, FlakyBackend::addr).await
}

/// Counts a connection or a request while it lives.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Counted(n)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accept until aborted; aborting drops every connection with it.
async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut conns = tokio::task::JoinSet::new();
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        conns.spawn(async move {
            let _open = Counted::new(&state.connections);
            let svc = hyper::service::service_fn(|req| handle(req, state.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
        // Reap finished connections so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const HEALTH_PATH: &str = "/healthz";
const GRPC_HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<TestBody>, BoxError> {
    match req.uri().path() {
        HEALTH_PATH => return Ok(http_health(&state)),
        GRPC_HEALTH_PATH => return grpc_health(req, &state).await,
        _ => {}
    }
    let _busy = Counted::new(&state.in_flight);
    state.served.fetch_add(1, Ordering::SeqCst);
    let grpc = is_grpc(req.headers());
    let (parts, body) = req.into_parts();
    let attempt = parts
        .headers
        .get("x-skiff-attempt-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let (failure, latency) = match state.faults.lock() {
        Ok(mut f) => (f.next(), f.latency),
        Err(_) => (None, Duration::ZERO),
    };
    let mut seen = Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
        attempt,
        body: Digest::default(),
        failed: failure,
    };
    // Read the request as an app would before answering.
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(e.into()),
    };
    seen.body = Digest::of(&bytes);
    if let Ok(mut s) = state.seen.lock() {
        s.push(seen);
    }

    let mut holding = state.holding.subscribe();
    let _ = holding.wait_for(|on| !on).await;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let id =
        HeaderValue::from_str(&state.addr.to_string()).unwrap_or(HeaderValue::from_static("?"));
    let mut resp = match failure {
        None if grpc => grpc_ok(&parts.headers, &bytes),
        None => text(StatusCode::OK, "ok"),
        Some(Failure::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            text(status, "failed on purpose")
        }
        Some(Failure::GrpcTrailersOnly(code)) => {
            let mut r = Response::new(body::empty());
            let h = r.headers_mut();
            h.insert("content-type", HeaderValue::from_static("application/grpc"));
            h.insert("grpc-status", HeaderValue::from(u16::from(code)));
            h.insert(
                "grpc-message",
                HeaderValue::from_static("failed on purpose"),
            );
            r
        }
        Some(Failure::GrpcAfterHeaders(code, pause)) => {
            let (tx, out) = channel(1);
            tokio::spawn(async move {
                tokio::time::sleep(pause).await;
                let mut t = HeaderMap::new();
                t.insert("grpc-status", HeaderValue::from(u16::from(code)));
                t.insert(
                    "grpc-message",
                    HeaderValue::from_static("failed on purpose"),
                );
                let _ = tx.send(Ok(Frame::trailers(t))).await;
            });
            let mut r = Response::new(out.boxed());
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            r
        }
        Some(Failure::Reset) => return Err("reset on purpose".into()),
        Some(Failure::ResetMidStream) => {
            let (tx, out) = channel(2);
            tokio::spawn(async move {
                // Half a gRPC message, or the first bytes of a text body.
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 9, 1]))))
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tx.send(Err("reset on purpose, mid-stream".into())).await;
            });
            let mut r = Response::new(out.boxed());
            if grpc {
                r.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/grpc"));
            }
            r
        }
    };
    resp.headers_mut().insert("x-replica", id);
    Ok(resp)
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"))
}

fn text(status: StatusCode, body: &'static str) -> Response<TestBody> {
    let mut r = Response::new(body::full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    r
}

/// A successful unary answer: the request's payload echoed, its headers in `seen_headers`.
fn grpc_ok(headers: &HeaderMap, request: &[u8]) -> Response<TestBody> {
    let payload = request
        .get(5..)
        .and_then(|m| <EchoRequest as prost::Message>::decode(m).ok())
        .map(|r| r.payload)
        .unwrap_or_default();
    let seen_headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let msg = prost::Message::encode_to_vec(&EchoResponse {
        payload,
        index: 0,
        seen_headers,
    });
    grpc_message(&msg, 0)
}

/// A gRPC response of one message, then trailers with `grpc-status`.
fn grpc_message(msg: &[u8], status: u8) -> Response<TestBody> {
    let mut framed = BytesMut::with_capacity(5 + msg.len());
    framed.put_u8(0);
    framed.put_u32(msg.len() as u32);
    framed.put_slice(msg);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(u16::from(status)));
    // Both frames are ready at once, so the answer goes out whole: a kill
    // catches a request before its response or not at all.
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
        Ok(Frame::data(framed.freeze())),
        Ok(Frame::trailers(trailers)),
    ];
    let out = StreamBody::new(tokio_stream::iter(frames));
    let mut r = Response::new(BodyExt::boxed(out));
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    r
}

fn http_health(state: &State) -> Response<TestBody> {
    state.health_checks.fetch_add(1, Ordering::SeqCst);
    if *state.healthy.borrow() {
        text(StatusCode::OK, "healthy")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
    }
}

/// `grpc.health.v1.Health/Check`, hand-encoded: the request's field 1 is
/// the service name; the response's field 1 (varint) is 1 SERVING or 2
/// NOT_SERVING.
async fn grpc_health(
    req: Request<Incoming>,
    state: &State,
) -> Result<Response<TestBody>, BoxError> {
    let bytes = req.into_body().collect().await?.to_bytes();
    let service = bytes.get(5..).and_then(health_service).unwrap_or_default();
    if let Ok(mut s) = state.health_services.lock() {
        s.push(service);
    }
    state.health_checks.fetch_add(1, Ordering::SeqCst);
    let status: u8 = if *state.healthy.borrow() { 1 } else { 2 };
    Ok(grpc_message(&[0x08, status], 0))
}

/// Field 1 (string) of a `HealthCheckRequest`; empty when absent.
fn health_service(msg: &[u8]) -> Option<String> {
    match msg {
        [] => Some(String::new()),
        [0x0a, len, rest @ ..] if usize::from(*len) < 0x80 => rest
            .get(..usize::from(*len))
            .map(|s| String::from_utf8_lossy(s).into_owned()),
        _ => None,
    }
}
