//! The load generator: gRPC over HTTP/2 (h2, with hand-framed messages so
//! the client costs little) and plain HTTP/1.1 (hyper), in three shapes:
//!
//! - closed loop: C calls in flight over K connections, each starting the
//!   next as soon as its last one ends — the most a target can carry;
//! - open loop: calls started at a fixed rate whatever the answers do, each
//!   call's latency counted from the time it *should* have started, so a
//!   stall that delays later sends is charged to the target (coordinated
//!   omission corrected);
//! - held streams: N server streams opened and kept open, to weigh a target's
//!   memory per stream.
//!
//! Everything runs on one thread (a `LocalSet`), next to the backend.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{CONTENT_TYPE, HOST, TE};
use http::{Method, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Bounds of every latency histogram: 1 ns to 60 s, 3 significant digits.
#[allow(clippy::expect_used)] // constant, valid bounds
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// One kind of call the load generator makes.
#[derive(Clone)]
pub enum Call {
    /// A gRPC call over h2c: `frame` is the request message; a good answer
    /// ends with grpc-status 0.
    Grpc { path: &'static str, frame: Bytes },
    /// `GET /` over HTTP/1.1; a good answer is a 200.
    Http1,
}

/// What one measured window saw.
pub struct Window {
    pub elapsed: Duration,
    /// Calls that ended well inside the window.
    pub calls: u64,
    /// gRPC messages received by those calls (= calls for unary and HTTP).
    pub messages: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Latency of each call, in ns.
    pub latency: Histogram<u64>,
    /// Samples of the target process taken at the window's edges.
    pub before: crate::procstat::Sample,
    pub after: crate::procstat::Sample,
    /// Open loop: calls not even started because too many were pending.
    pub shed: u64,
}

struct Tally {
    recording: Cell<bool>,
    stop: Cell<bool>,
    calls: Cell<u64>,
    messages: Cell<u64>,
    errors: Cell<u64>,
    first_error: RefCell<Option<String>>,
    latency: RefCell<Histogram<u64>>,
}

impl Tally {
    fn new() -> Rc<Tally> {
        Rc::new(Tally {
            recording: Cell::new(false),
            stop: Cell::new(false),
            calls: Cell::new(0),
            messages: Cell::new(0),
            errors: Cell::new(0),
            first_error: RefCell::new(None),
            latency: RefCell::new(histogram()),
        })
    }

    fn record(&self, result: anyhow::Result<u64>, started: Instant) {
        if !self.recording.get() {
            return;
        }
        match result {
            Ok(messages) => {
                let ns = started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
                self.latency.borrow_mut().saturating_record(ns.max(1));
                self.calls.set(self.calls.get() + 1);
                self.messages.set(self.messages.get() + messages);
            }
            Err(e) => {
                self.errors.set(self.errors.get() + 1);
                self.first_error
                    .borrow_mut()
                    .get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }

    /// Wait `warmup`, then record for `duration`, sampling the target at both edges.
    async fn window(
        &self,
        warmup: Duration,
        duration: Duration,
        sample: &dyn Fn() -> crate::procstat::Sample,
    ) -> (Duration, crate::procstat::Sample, crate::procstat::Sample) {
        tokio::time::sleep(warmup).await;
        let before = sample();
        let t0 = Instant::now();
        self.recording.set(true);
        tokio::time::sleep(duration).await;
        self.recording.set(false);
        let after = sample();
        let elapsed = t0.elapsed();
        self.stop.set(true);
        (elapsed, before, after)
    }

    fn finish(
        &self,
        (elapsed, before, after): (Duration, crate::procstat::Sample, crate::procstat::Sample),
        shed: u64,
    ) -> Window {
        Window {
            elapsed,
            calls: self.calls.get(),
            messages: self.messages.get(),
            errors: self.errors.get(),
            first_error: self.first_error.borrow_mut().take(),
            latency: std::mem::replace(&mut *self.latency.borrow_mut(), histogram()),
            before,
            after,
            shed,
        }
    }
}

/// An HTTP/2 connection to `addr`.
pub async fn h2_connect(addr: SocketAddr) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake(tcp)
        .await?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// One gRPC call; the number of response messages.
pub async fn grpc_call(
    client: &mut h2::client::SendRequest<Bytes>,
    uri: &Uri,
    frame: Bytes,
) -> anyhow::Result<u64> {
    std::future::poll_fn(|cx| client.poll_ready(cx)).await?;
    let req = http::Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header(CONTENT_TYPE, "application/grpc")
        .header(TE, "trailers")
        .body(())?;
    let (response, mut send) = client.send_request(req, false)?;
    send.send_data(frame, true)?;
    let (head, mut body) = response.await?.into_parts();
    if head.status != http::StatusCode::OK {
        bail!("HTTP status {}", head.status);
    }
    let mut messages = MessageCounter::default();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        messages.feed(&chunk);
    }
    let trailers = body.trailers().await?;
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| head.headers.get("grpc-status"));
    match status {
        Some(s) if s == "0" => Ok(messages.count),
        other => bail!("grpc-status {other:?}"),
    }
}

/// Counts length-prefixed gRPC messages across DATA frames.
#[derive(Default)]
struct MessageCounter {
    prefix: [u8; 5],
    have: usize,
    left: usize,
    count: u64,
}

impl MessageCounter {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len());
                self.left -= n;
                data = &data[n..];
                if self.left == 0 {
                    self.count += 1;
                }
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.prefix[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.have = 0;
                let [_, a, b, c, d] = self.prefix;
                self.left = u32::from_be_bytes([a, b, c, d]) as usize;
                if self.left == 0 {
                    self.count += 1;
                }
            }
        }
    }
}

type H1Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// An HTTP/1.1 connection to `addr`.
pub async fn h1_connect(addr: SocketAddr) -> anyhow::Result<H1Sender> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One `GET /` over HTTP/1.1.
pub async fn h1_call(sender: &mut H1Sender, host: &str) -> anyhow::Result<u64> {
    sender.ready().await?;
    let req = http::Request::builder()
        .uri("/")
        .header(HOST, host)
        .body(Empty::new())?;
    let response = sender.send_request(req).await?;
    let status = response.status();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    if status != http::StatusCode::OK {
        bail!("HTTP status {status}");
    }
    Ok(1)
}

/// Where and how to load a target.
pub struct Plan<'a> {
    pub addr: SocketAddr,
    pub call: &'a Call,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub sample: &'a dyn Fn() -> crate::procstat::Sample,
}

fn grpc_uri(addr: SocketAddr, path: &str) -> anyhow::Result<Uri> {
    Ok(format!("http://{addr}{path}").parse()?)
}

/// Closed loop: `in_flight` calls at a time over `plan.connections`
/// connections (HTTP/1.1: one call per connection, so `in_flight` is ignored).
pub async fn closed_loop(plan: &Plan<'_>, in_flight: usize) -> anyhow::Result<Window> {
    let tally = Tally::new();
    let mut workers = Vec::new();
    match plan.call {
        Call::Grpc { path, frame } => {
            let uri = grpc_uri(plan.addr, path)?;
            let mut conns = Vec::new();
            for _ in 0..plan.connections.max(1) {
                conns.push(h2_connect(plan.addr).await?);
            }
            for i in 0..in_flight.max(1) {
                let mut client = conns[i % conns.len()].clone();
                let (tally, uri, frame) = (tally.clone(), uri.clone(), frame.clone());
                workers.push(tokio::task::spawn_local(async move {
                    while !tally.stop.get() {
                        let started = Instant::now();
                        let result = grpc_call(&mut client, &uri, frame.clone()).await;
                        let failed = result.is_err();
                        tally.record(result, started);
                        if failed {
                            // Don't spin on a dead connection.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }));
            }
        }
        Call::Http1 => {
            let host = plan.addr.to_string();
            for _ in 0..plan.connections.max(1) {
                let mut sender = h1_connect(plan.addr).await?;
                let (tally, host) = (tally.clone(), host.clone());
                let addr = plan.addr;
                workers.push(tokio::task::spawn_local(async move {
                    while !tally.stop.get() {
                        let started = Instant::now();
                        let result = h1_call(&mut sender, &host).await;
                        if result.is_err() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            if let Ok(s) = h1_connect(addr).await {
                                sender = s;
                            }
                        }
                        tally.record(result, started);
                    }
                }));
            }
        }
    }
    let edges = tally.window(plan.warmup, plan.duration, plan.sample).await;
    drain(workers).await;
    Ok(tally.finish(edges, 0))
}

/// Give the workers a bounded time to finish their last call.
async fn drain(workers: Vec<tokio::task::JoinHandle<()>>) {
    let aborts: Vec<_> = workers.iter().map(|w| w.abort_handle()).collect();
    let all = async {
        for w in workers {
            let _ = w.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .is_err()
    {
        for a in aborts {
            a.abort();
        }
    }
}

/// Open loop: gRPC calls started at `rate` per second over
/// `plan.connections` connections, latency from each call's intended start.
/// At most `max_pending` calls are outstanding; beyond that a call is shed
/// (counted, not sent), so a stalled target cannot pile up unbounded work.
pub async fn open_loop(plan: &Plan<'_>, rate: u32, max_pending: usize) -> anyhow::Result<Window> {
    let Call::Grpc { path, frame } = plan.call else {
        bail!("the open loop makes gRPC calls only");
    };
    let uri = grpc_uri(plan.addr, path)?;
    let mut conns = Vec::new();
    for _ in 0..plan.connections.max(1) {
        conns.push(h2_connect(plan.addr).await?);
    }
    let tally = Tally::new();
    let pending = Rc::new(Cell::new(0usize));
    let shed = Rc::new(Cell::new(0u64));
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let pacer = {
        let (tally, pending, shed) = (tally.clone(), pending.clone(), shed.clone());
        let (uri, frame) = (uri.clone(), frame.clone());
        tokio::task::spawn_local(async move {
            let start = Instant::now();
            let mut i: u32 = 0;
            while !tally.stop.get() {
                let intended = start + interval * i;
                i = i.wrapping_add(1);
                // Sleep while the next start is far; spin (yielding to the
                // other tasks and the I/O driver) for the last millisecond,
                // since timers have millisecond resolution.
                loop {
                    let now = Instant::now();
                    if now >= intended {
                        break;
                    }
                    if intended - now > Duration::from_millis(2) {
                        tokio::time::sleep(intended - now - Duration::from_millis(1)).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
                if pending.get() >= max_pending {
                    if tally.recording.get() {
                        shed.set(shed.get() + 1);
                    }
                    continue;
                }
                pending.set(pending.get() + 1);
                let mut client = conns[i as usize % conns.len()].clone();
                let (tally, pending, uri, frame) =
                    (tally.clone(), pending.clone(), uri.clone(), frame.clone());
                tokio::task::spawn_local(async move {
                    let result = grpc_call(&mut client, &uri, frame).await;
                    tally.record(result, intended);
                    pending.set(pending.get() - 1);
                });
            }
        })
    };
    let edges = tally.window(plan.warmup, plan.duration, plan.sample).await;
    let _ = pacer.await;
    // Let the calls in flight end (bounded), so the next phase starts clean.
    let deadline = Instant::now() + Duration::from_secs(5);
    while pending.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(tally.finish(edges, shed.get()))
}

/// Held streams: open `n` server streams (one message each, then held open
/// for up to `hold`) over `connections` connections and wait for every first
/// message. The returned guard keeps them open; dropping it cancels them all.
pub async fn hold_streams(
    addr: SocketAddr,
    n: usize,
    connections: usize,
    hold: Duration,
    timeout: Duration,
) -> anyhow::Result<(HeldStreams, usize)> {
    let uri = grpc_uri(addr, crate::echo::STREAM_PATH)?;
    let frame = crate::echo::grpc_frame(&crate::echo::EchoRequest {
        payload: Bytes::from_static(b"hold"),
        count: 1,
        hold_ms: hold.as_millis().min(u128::from(u32::MAX)) as u32,
    });
    let mut conns = Vec::new();
    for _ in 0..connections.max(1) {
        conns.push(h2_connect(addr).await?);
    }
    let opened = Rc::new(Cell::new(0usize));
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut client = conns[i % conns.len()].clone();
        let (uri, frame, opened) = (uri.clone(), frame.clone(), opened.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let open = async {
                std::future::poll_fn(|cx| client.poll_ready(cx)).await?;
                let req = http::Request::builder()
                    .method(Method::POST)
                    .uri(uri)
                    .header(CONTENT_TYPE, "application/grpc")
                    .header(TE, "trailers")
                    .body(())?;
                let (response, mut send) = client.send_request(req, false)?;
                send.send_data(frame, true)?;
                let mut body = response.await?.into_body();
                // The first message; then sit on the stream until aborted.
                let first = body.data().await.context("stream ended early")??;
                let _ = body.flow_control().release_capacity(first.len());
                anyhow::Ok(body)
            };
            if let Ok(body) = open.await {
                opened.set(opened.get() + 1);
                std::future::pending::<()>().await;
                drop(body);
            }
        }));
    }
    let deadline = Instant::now() + timeout;
    while opened.get() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let count = opened.get();
    Ok((
        HeldStreams {
            tasks,
            _conns: conns,
        },
        count,
    ))
}

/// Open streams; dropped, every stream is reset and its connection closed.
pub struct HeldStreams {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _conns: Vec<h2::client::SendRequest<Bytes>>,
}

impl Drop for HeldStreams {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
