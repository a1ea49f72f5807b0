//! HTTP/2 from clients, as Skiff serves it on h2 (src/listener/h2.rs): what
//! the upstream sees when a client resets a stream (before the response head,
//! in the middle of the body), keep-alive PINGs and an unanswered one, the
//! connection idle timeout (GOAWAY, but not while a request is in flight), a
//! stalled preface, and request bodies from an HTTP/2 client to an HTTP/1.1
//! upstream framed every way HTTP/2 allows.
//!
//! Peers, all on 127.0.0.1: the `h2` crate as client (for `send_reset` and
//! exact framing) and as upstream (it reports each RST_STREAM it receives);
//! an HTTP/1.1 upstream on a raw socket that reports its connection closing;
//! a hand-made HTTP/2 client that reads frame headers for PING and GOAWAY.
//!
//! Not here: a slow HTTP/2 reader's memory and content (tests/http.rs,
//! `slow_reader_h2_client_h1_upstream_memory_stays_bounded`), drain
//! (tests/lifecycle.rs).

mod support;

use std::future::poll_fn;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _};
use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use support::body::{pattern, Digest};
use support::grpc_backend::{echo_client, EchoRequest, EchoResponse};
use support::http_backend::HttpBackend;
use support::scratch::ScratchDir;
use support::{eventually, within, AbortOnDrop, Proto, Proxy, ProxyConfig};

/// Bound of every single wait on the network in this suite.
const LIMIT: Duration = Duration::from_secs(10);

const GRPC_STREAM: &str = "/skiff.test.Echo/ServerStream";

// ------------------------------------------------------------ upstream events

/// What an upstream of this suite saw. Paths include the query.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    /// A request arrived.
    Arrived(String),
    /// The proxy reset this request's stream (HTTP/2 upstream).
    Reset(String, Reason),
    /// This request's connection closed, or (HTTP/2) failed, under it.
    Closed(String),
}

impl Event {
    fn path(&self) -> &str {
        match self {
            Event::Arrived(p) | Event::Reset(p, _) | Event::Closed(p) => p,
        }
    }
}

/// The events of one upstream, in order.
struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
    seen: Vec<Event>,
}

impl Events {
    fn new() -> (mpsc::UnboundedSender<Event>, Events) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            tx,
            Events {
                rx,
                seen: Vec::new(),
            },
        )
    }

    /// The next event `want` accepts (others are kept for the failure
    /// message), within [`LIMIT`].
    async fn wait(&mut self, what: &str, want: impl Fn(&Event) -> bool) -> anyhow::Result<Event> {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(e)) => {
                    self.seen.push(e.clone());
                    if want(&e) {
                        return Ok(e);
                    }
                }
                Ok(None) => bail!("{what}: the upstream stopped; it saw {:?}", self.seen),
                Err(_) => bail!(
                    "{what}: not within {LIMIT:?}; the upstream saw {:?}",
                    self.seen
                ),
            }
        }
    }

    async fn arrived(&mut self, path: &str) -> anyhow::Result<()> {
        let what = format!("{path} reaching the upstream");
        self.wait(&what, |e| *e == Event::Arrived(path.into()))
            .await
            .map(drop)
    }

    /// How the request for `path` ended upstream: reset or closed.
    async fn ended(&mut self, path: &str) -> anyhow::Result<Event> {
        let what = format!("the upstream request {path} being cancelled");
        self.wait(&what, |e| {
            e.path() == path && matches!(e, Event::Reset(..) | Event::Closed(_))
        })
        .await
    }
}

// ------------------------------------------------------------ HTTP/2 upstream

/// An h2c upstream on the `h2` crate that reports each stream's arrival and
/// its reset. Paths:
/// - `/hold`: never answers.
/// - `/stream`: a 200 head, then the first 64 KiB of the pattern over and
///   over, without end, as fast as the window allows.
/// - `/skiff.test.Echo/ServerStream`: the same as gRPC, `EchoResponse`
///   messages with a 1000-byte payload and indexes 0, 1, 2, ...
/// - `/delay?ms=M`: `ok` after M ms.
/// - `/drip?n=N&ms=M`: N chunks of 1 KiB of the pattern, one every M ms.
/// - anything else: `ok`.
struct H2Upstream {
    addr: SocketAddr,
    _accept: AbortOnDrop,
}

async fn h2_upstream() -> anyhow::Result<(H2Upstream, Events)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, events) = Events::new();
    let accept = AbortOnDrop::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            conns.spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                // Dropped (aborting its streams) when the connection ends.
                let mut streams = tokio::task::JoinSet::new();
                while let Some(Ok((req, respond))) = conn.accept().await {
                    streams.spawn(h2_stream(req, respond, tx.clone()));
                }
            });
        }
    });
    Ok((
        H2Upstream {
            addr,
            _accept: accept,
        },
        events,
    ))
}

fn query_param(uri: &http::Uri, name: &str) -> Option<u64> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

fn head(content_type: &str) -> Response<()> {
    let mut resp = Response::new(());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_str(content_type).unwrap_or(http::HeaderValue::from_static("x/y")),
    );
    resp
}

async fn h2_stream(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    events: mpsc::UnboundedSender<Event>,
) {
    let uri = req.uri().clone();
    let target = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string());
    // The request side stays open as long as the proxy keeps it open.
    let _body = req.into_body();
    let _ = events.send(Event::Arrived(target.clone()));
    let report = |ended: Result<Reason, h2::Error>| {
        let _ = events.send(match ended {
            Ok(reason) => Event::Reset(target.clone(), reason),
            Err(_) => Event::Closed(target.clone()),
        });
    };
    match uri.path() {
        "/hold" => report(poll_fn(|cx| respond.poll_reset(cx)).await),
        "/stream" | GRPC_STREAM => {
            let grpc = uri.path() == GRPC_STREAM;
            let content_type = if grpc {
                "application/grpc"
            } else {
                "application/octet-stream"
            };
            let Ok(mut tx) = respond.send_response(head(content_type), false) else {
                return;
            };
            let data = if grpc {
                grpc_messages(64)
            } else {
                pattern(0, 64 * 1024)
            };
            report(send_forever(&mut tx, data).await);
        }
        "/delay" => {
            let ms = query_param(&uri, "ms").unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if let Ok(mut tx) = respond.send_response(head("text/plain"), false) {
                let _ = tx.send_data(Bytes::from_static(b"ok"), true);
            }
        }
        "/drip" => {
            let n = query_param(&uri, "n").unwrap_or(1);
            let ms = query_param(&uri, "ms").unwrap_or(0);
            let Ok(mut tx) = respond.send_response(head("application/octet-stream"), false) else {
                return;
            };
            for i in 0..n {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if tx.send_data(pattern(i * 1024, 1024), i + 1 == n).is_err() {
                    return;
                }
            }
        }
        _ => {
            if let Ok(mut tx) = respond.send_response(head("text/plain"), false) {
                let _ = tx.send_data(Bytes::from_static(b"ok"), true);
            }
        }
    }
}

/// `count` length-prefixed `EchoResponse` messages, indexes 0 to count-1.
fn grpc_messages(count: u32) -> Bytes {
    let mut out = Vec::new();
    for index in 0..count {
        let msg = EchoResponse {
            payload: vec![b'x'; 1000],
            index,
            ..Default::default()
        };
        let bytes = prost::Message::encode_to_vec(&msg);
        out.push(0);
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out.into()
}

/// Send `data` over and over as the window opens, until the stream is
/// reset (its reason) or the connection fails.
async fn send_forever(tx: &mut SendStream<Bytes>, data: Bytes) -> Result<Reason, h2::Error> {
    let mut at = 0;
    loop {
        tx.reserve_capacity(16 * 1024);
        let capacity = poll_fn(|cx| {
            if let Poll::Ready(reset) = tx.poll_reset(cx) {
                return Poll::Ready(Err(reset));
            }
            tx.poll_capacity(cx).map(Ok)
        })
        .await;
        match capacity {
            Err(reset) => return reset,
            Ok(Some(Ok(0))) => continue,
            Ok(Some(Ok(n))) => {
                let n = n.min(data.len() - at);
                if tx.send_data(data.slice(at..at + n), false).is_err() {
                    return poll_fn(|cx| tx.poll_reset(cx)).await;
                }
                at = (at + n) % data.len();
            }
            Ok(_) => return poll_fn(|cx| tx.poll_reset(cx)).await,
        }
    }
}

// ---------------------------------------------------------- HTTP/1.1 upstream

/// An HTTP/1.1 upstream on a raw socket that reports each request's arrival
/// and its connection closing. `/hold` never answers; `/stream` sends a
/// chunked body without end; anything else gets `ok` (kept alive).
async fn h1_upstream() -> anyhow::Result<(SocketAddr, AbortOnDrop, Events)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, events) = Events::new();
    let accept = AbortOnDrop::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            conns.spawn(h1_connection(tcp, tx.clone()));
        }
    });
    Ok((addr, accept, events))
}

async fn h1_connection(mut tcp: TcpStream, events: mpsc::UnboundedSender<Event>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut read = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&read[..end]).into_owned();
        read.drain(..end);
        let target = head.split(' ').nth(1).unwrap_or_default().to_string();
        let _ = events.send(Event::Arrived(target.clone()));
        match target.as_str() {
            "/hold" => {
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = events.send(Event::Closed(target));
                return;
            }
            "/stream" => {
                let (mut r, mut w) = tcp.split();
                let mut chunk = b"4000\r\n".to_vec();
                chunk.extend_from_slice(&pattern(0, 0x4000));
                chunk.extend_from_slice(b"\r\n");
                let write = async {
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                    if w.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    while w.write_all(&chunk).await.is_ok() {}
                };
                let eof = async {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = r.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                };
                tokio::select! {
                    _ = write => {}
                    _ = eof => {}
                }
                let _ = events.send(Event::Closed(target));
                return;
            }
            // `TE: Trailers` is how an HTTP/1.1 peer may write it; HTTP/2
            // takes only the lowercase value.
            "/te" => {
                let ok = b"HTTP/1.1 200 OK\r\nTE: Trailers\r\ncontent-length: 2\r\n\r\nok";
                if tcp.write_all(ok).await.is_err() {
                    return;
                }
            }
            "/no-content" => {
                if tcp
                    .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // A HEAD answer: the length of the body a GET would get is unknown.
            _ if head.starts_with("HEAD ") => {
                let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                if tcp.write_all(chunked).await.is_err() {
                    return;
                }
            }
            _ => {
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if tcp.write_all(ok).await.is_err() {
                    return;
                }
            }
        }
    }
}

// ------------------------------------------------------------ HTTP/2 client

/// A client connection on the `h2` crate.
struct H2Client {
    send: h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    /// How the connection ended, once it has.
    ended: Option<oneshot::Receiver<String>>,
    _conn: AbortOnDrop,
}

impl H2Client {
    async fn connect(addr: SocketAddr) -> anyhow::Result<H2Client> {
        let tcp = within(LIMIT, "connect", async {
            Ok(TcpStream::connect(addr).await?)
        })
        .await?;
        tcp.set_nodelay(true)?;
        H2Client::over(tcp, addr).await
    }

    /// HTTP/2 over `io`, already connected to `addr`.
    async fn over<T>(io: T, addr: SocketAddr) -> anyhow::Result<H2Client>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = within(LIMIT, "HTTP/2 handshake", async {
            Ok(h2::client::handshake(io).await?)
        })
        .await?;
        let (tx, rx) = oneshot::channel();
        let conn = AbortOnDrop::spawn(async move {
            let _ = tx.send(format!("{:?}", conn.await));
        });
        Ok(H2Client {
            send,
            addr,
            ended: Some(rx),
            _conn: conn,
        })
    }

    fn request(&self, method: &str, path: &str) -> anyhow::Result<Request<()>> {
        Ok(Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .body(())?)
    }

    /// Send a request head; `end` sets END_STREAM on the HEADERS frame.
    async fn send(
        &mut self,
        req: Request<()>,
        end: bool,
    ) -> anyhow::Result<(ResponseFuture, SendStream<Bytes>)> {
        let mut send = within(LIMIT, "a stream slot", async {
            Ok(self.send.clone().ready().await?)
        })
        .await?;
        Ok(send.send_request(req, end)?)
    }

    /// GET `path` (END_STREAM on HEADERS): status and whole body.
    async fn get(&mut self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        let req = self.request("GET", path)?;
        let (resp, _) = self.send(req, true).await?;
        read_all(resp).await
    }

    /// Wait until the connection has ended; how it ended.
    async fn ended(&mut self) -> anyhow::Result<String> {
        let rx = self
            .ended
            .take()
            .ok_or_else(|| anyhow!("already waited for"))?;
        within(LIMIT, "the connection to end", async { Ok(rx.await?) }).await
    }
}

/// The status and whole body of a response.
async fn read_all(resp: ResponseFuture) -> anyhow::Result<(StatusCode, Bytes)> {
    within(LIMIT, "the response", async {
        let resp = resp.await?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(data) = body.data().await {
            let data = data?;
            let _ = body.flow_control().release_capacity(data.len());
            out.extend_from_slice(&data);
        }
        Ok((status, out.into()))
    })
    .await
}

// --------------------------------------------------- hand-made HTTP/2 client

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

/// One frame: type, flags, stream id, payload.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// The preface and an empty SETTINGS, then frames read one at a time.
struct RawH2(TcpStream);

impl RawH2 {
    async fn connect(addr: SocketAddr) -> anyhow::Result<RawH2> {
        let tcp = within(LIMIT, "connect", async {
            Ok(TcpStream::connect(addr).await?)
        })
        .await?;
        let mut raw = RawH2(tcp);
        raw.0.write_all(PREFACE).await?;
        raw.write_frame(SETTINGS, 0, &[]).await?;
        Ok(raw)
    }

    /// Write a frame on stream 0.
    async fn write_frame(&mut self, kind: u8, flags: u8, payload: &[u8]) -> anyhow::Result<()> {
        let len = u32::try_from(payload.len())?.to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
        frame.extend_from_slice(payload);
        self.0.write_all(&frame).await?;
        Ok(())
    }

    /// The next frame; `None` once the server has closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        let mut header = [0u8; 9];
        self.0.read_exact(&mut header).await.ok()?;
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.0.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: header[3],
            flags: header[4],
            stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Acknowledge the server's SETTINGS, and its PINGs when `pong`.
    async fn answer(&mut self, f: &Frame, pong: bool) -> anyhow::Result<()> {
        if f.flags & ACK != 0 {
            return Ok(());
        }
        match f.kind {
            SETTINGS => self.write_frame(SETTINGS, ACK, &[]).await,
            PING if pong => self.write_frame(PING, ACK, &f.payload).await,
            _ => Ok(()),
        }
    }

    /// Read (and answer) frames until a PING that is not an ACK.
    async fn next_ping(&mut self, pong: bool) -> anyhow::Result<Frame> {
        within(LIMIT, "a PING", async {
            loop {
                let f = self
                    .next()
                    .await
                    .ok_or_else(|| anyhow!("closed before any PING"))?;
                if f.kind == PING && f.flags & ACK == 0 {
                    return Ok(f);
                }
                self.answer(&f, pong).await?;
            }
        })
        .await
    }
}

/// An AsyncRead/AsyncWrite that notes the type of every HTTP/2 frame read
/// through it (the server-to-client direction: frames from the first byte).
struct Tap<T> {
    inner: T,
    header: Vec<u8>,
    skip: usize,
    kinds: Arc<Mutex<Vec<u8>>>,
}

impl<T> Tap<T> {
    fn new(inner: T) -> (Tap<T>, Arc<Mutex<Vec<u8>>>) {
        let kinds = Arc::new(Mutex::new(Vec::new()));
        let tap = Tap {
            inner,
            header: Vec::with_capacity(9),
            skip: 0,
            kinds: kinds.clone(),
        };
        (tap, kinds)
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == 9 {
                let h = &self.header;
                self.skip = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                if let Ok(mut k) = self.kinds.lock() {
                    k.push(h[3]);
                }
                self.header.clear();
            }
        }
    }
}

fn kinds(seen: &Mutex<Vec<u8>>) -> Vec<u8> {
    seen.lock().map(|k| k.clone()).unwrap_or_default()
}

impl<T: AsyncRead + Unpin> AsyncRead for Tap<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let new = buf.filled()[before..].to_vec();
            this.feed(&new);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tap<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// ------------------------------------------------------------------ helpers

/// The access-log line of the request for `path` with `method`, once written.
async fn log_line(log: &Path, method: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    eventually(LIMIT, || async {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
            if v["path"] == path && v["method"] == method {
                return Ok(v);
            }
        }
        bail!("no access-log line for {method} {path} in:\n{text}")
    })
    .await
}

/// The proxy still answers: on `c`, and on a new HTTP/2 connection.
async fn still_serves(proxy: &Proxy, c: &mut H2Client) -> anyhow::Result<()> {
    ensure!(proxy.is_running(), "the proxy stopped");
    let (status, body) = c.get("/").await?;
    ensure!(
        status == 200 && body == "ok",
        "the same connection got {status} {body:?}"
    );
    let mut fresh = H2Client::connect(proxy.addr()).await?;
    let (status, body) = fresh.get("/").await?;
    ensure!(
        status == 200 && body == "ok",
        "a new connection got {status} {body:?}"
    );
    Ok(())
}

// ---------------------------------------- 1. reset before the response head

/// A client resets its stream while the proxy waits for the upstream's
/// head: the upstream stream is reset (CANCEL), whether the request had
/// ended (GET, END_STREAM on HEADERS) or its body was still open (POST).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_before_the_head_resets_the_upstream_stream() -> anyhow::Result<()> {
    let (up, mut events) = h2_upstream().await?;
    let proxy = ProxyConfig::new("http2", up.addr)
        .timeout(None)
        .start()
        .await?;
    let mut c = H2Client::connect(proxy.addr()).await?;

    for (method, end) in [("GET", true), ("POST", false)] {
        let target = format!("/hold?{method}");
        let req = c.request(method, &target)?;
        let (_resp, mut stream) = c.send(req, end).await?;
        if !end {
            stream.send_data(Bytes::from_static(b"part of a body"), false)?;
        }
        events.arrived(&target).await?;
        stream.send_reset(Reason::CANCEL);
        let ended = events.ended(&target).await?;
        assert_eq!(
            ended,
            Event::Reset(target.clone(), Reason::CANCEL),
            "{method}: the upstream stream must be reset with CANCEL"
        );
    }
    still_serves(&proxy, &mut c).await
}

/// The same toward an HTTP/1.1 upstream: the request cannot be reset, so
/// its connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_before_the_head_closes_the_http1_upstream_connection() -> anyhow::Result<()> {
    let (addr, _up, mut events) = h1_upstream().await?;
    let proxy = ProxyConfig::new("http1", addr)
        .timeout(None)
        .start()
        .await?;
    let mut c = H2Client::connect(proxy.addr()).await?;

    let req = c.request("GET", "/hold")?;
    let (_resp, mut stream) = c.send(req, true).await?;
    events.arrived("/hold").await?;
    stream.send_reset(Reason::CANCEL);
    assert_eq!(events.ended("/hold").await?, Event::Closed("/hold".into()));
    still_serves(&proxy, &mut c).await
}

/// A request the client gave up on before the head is in the access log,
/// flagged `DC` (README.md: one line per request, `DC` when the client went
/// away first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_before_the_head_is_logged_dc() -> anyhow::Result<()> {
    let dir = ScratchDir::new("h2-reset-head-log")?;
    let log = dir.path().join("access.log");
    let (up, mut events) = h2_upstream().await?;
    let proxy = ProxyConfig::new("http2", up.addr)
        .timeout(None)
        .access_log(&log)
        .start()
        .await?;
    let mut c = H2Client::connect(proxy.addr()).await?;
    let req = c.request("GET", "/hold")?;
    let (_resp, mut stream) = c.send(req, true).await?;
    events.arrived("/hold").await?;
    stream.send_reset(Reason::CANCEL);
    events.ended("/hold").await?;

    let line = log_line(&log, "GET", "/hold").await?;
    assert_eq!(line["flag"], "DC", "{line}");
    assert_eq!(line["status"], 0, "no response head was sent: {line}");
    let metrics = proxy.metrics().await?;
    assert!(
        metrics.contains(r#"status="0""#),
        "the request is counted in skiff_requests_total with status 0:\n{metrics}"
    );
    Ok(())
}

// ------------------------------------------------- 2. reset in the middle

/// A client resets its stream in the middle of an endless response body:
/// the upstream stream is reset (CANCEL), the access log says `DC`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_body_resets_the_upstream_stream() -> anyhow::Result<()> {
    let dir = ScratchDir::new("h2-reset-mid")?;
    let log = dir.path().join("access.log");
    let (up, mut events) = h2_upstream().await?;
    let proxy = ProxyConfig::new("http2", up.addr)
        .timeout(None)
        .access_log(&log)
        .start()
        .await?;
    let mut c = H2Client::connect(proxy.addr()).await?;

    let req = c.request("GET", "/stream")?;
    let (resp, mut stream) = c.send(req, true).await?;
    let resp = within(LIMIT, "the head", async { Ok(resp.await?) }).await?;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // A good part of it, intact.
    let want = pattern(0, 64 * 1024);
    let mut got = Vec::new();
    within(LIMIT, "256 KiB of the body", async {
        while got.len() < 256 * 1024 {
            let data = body
                .data()
                .await
                .ok_or_else(|| anyhow!("the body ended"))??;
            let _ = body.flow_control().release_capacity(data.len());
            got.extend_from_slice(&data);
        }
        Ok(())
    })
    .await?;
    for (i, chunk) in got.chunks(want.len()).enumerate() {
        assert!(
            want.starts_with(chunk),
            "the body differs in its 64 KiB block {i}"
        );
    }

    stream.send_reset(Reason::CANCEL);
    assert_eq!(
        events.ended("/stream").await?,
        Event::Reset("/stream".into(), Reason::CANCEL)
    );
    let line = log_line(&log, "GET", "/stream").await?;
    assert_eq!(line["flag"], "DC", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert!(
        line["bytes_out"].as_u64().is_some_and(|n| n >= 256 * 1024),
        "{line}"
    );
    drop(body);
    still_serves(&proxy, &mut c).await
}

/// The same toward an HTTP/1.1 upstream: its connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_body_closes_the_http1_upstream_connection() -> anyhow::Result<()> {
    let (addr, _up, mut events) = h1_upstream().await?;
    let proxy = ProxyConfig::new("http1", addr)
        .timeout(None)
        .start()
        .await?;
    let mut c = H2Client::connect(proxy.addr()).await?;

    let req = c.request("GET", "/stream")?;
    let (resp, mut stream) = c.send(req, true).await?;
    let resp = within(LIMIT, "the head", async { Ok(resp.await?) }).await?;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0;
    within(LIMIT, "128 KiB of the body", async {
        while got < 128 * 1024 {
            let data = body
                .data()
                .await
                .ok_or_else(|| anyhow!("the body ended"))??;
            let _ = body.flow_control().release_capacity(data.len());
            got += data.len();
        }
        Ok(())
    })
    .await?;
    stream.send_reset(Reason::CANCEL);
    assert_eq!(
        events.ended("/stream").await?,
        Event::Closed("/stream".into())
    );
    drop(body);
    still_serves(&proxy, &mut c).await
}

/// A tonic client drops a server-streaming call after a few messages: the
/// upstream stream is reset (CANCEL), the access log says `DC`, and the next
/// call works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_server_streaming_call_resets_the_upstream_stream() -> anyhow::Result<()> {
    let dir = ScratchDir::new("h2-grpc-drop")?;
    let log = dir.path().join("access.log");
    let (up, mut events) = h2_upstream().await?;
    let proxy = ProxyConfig::new("http2", up.addr)
        .timeout(None)
        .access_log(&log)
        .start()
        .await?;
    let mut client = echo_client(proxy.addr()).await?;

    for call in 0..2 {
        let mut messages = within(LIMIT, "the call", async {
            Ok(client
                .server_stream(EchoRequest::default())
                .await?
                .into_inner())
        })
        .await?;
        for index in 0..10 {
            let msg = within(LIMIT, "a message", async { Ok(messages.message().await?) })
                .await?
                .ok_or_else(|| anyhow!("call {call}: the stream ended"))?;
            assert_eq!(msg.index, index, "call {call}");
            assert_eq!(msg.payload.len(), 1000, "call {call}");
        }
        drop(messages);
        assert_eq!(
            events.ended(GRPC_STREAM).await?,
            Event::Reset(GRPC_STREAM.into(), Reason::CANCEL),
            "call {call}"
        );
    }
    let line = log_line(&log, "POST", GRPC_STREAM).await?;
    assert_eq!(line["flag"], "DC", "{line}");
    ensure!(proxy.is_running(), "the proxy stopped");
    Ok(())
}

// ---------------------------------------------------------- 3. keep-alive

fn keepalive_proxy(backend: &HttpBackend) -> ProxyConfig {
    ProxyConfig::upstream(Proto::H1, backend.addr()).limit("keepalive_interval: 200ms")
}

/// With `keepalive_interval: 200ms` a silent HTTP/2 connection gets PINGs
/// (stream 0, 8 bytes, no ACK flag), and more after each is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_arrive_every_keepalive_interval() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let proxy = keepalive_proxy(&backend).start().await?;
    let mut raw = RawH2::connect(proxy.addr()).await?;
    for n in 0..3 {
        let ping = raw
            .next_ping(true)
            .await
            .with_context(|| format!("PING {n}"))?;
        assert_eq!(ping.stream, 0, "{ping:?}");
        assert_eq!(ping.payload.len(), 8, "{ping:?}");
        raw.write_frame(PING, ACK, &ping.payload).await?;
    }
    Ok(())
}

/// A PING left unanswered closes the connection (after 20 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_ping_closes_the_connection() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let proxy = keepalive_proxy(&backend).start().await?;
    let mut raw = RawH2::connect(proxy.addr()).await?;
    raw.next_ping(false).await?;
    within(Duration::from_secs(40), "the connection to close", async {
        while let Some(f) = raw.next().await {
            raw.answer(&f, false).await?;
        }
        Ok(())
    })
    .await?;
    ensure!(proxy.is_running(), "the proxy stopped");
    Ok(())
}

// ----------------------------------------------------------- 4. idle timeout

/// An HTTP/2 connection with no request for `connection_idle_timeout` gets
/// GOAWAY (NO_ERROR, no stream processed) and is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_gets_goaway_and_is_closed() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let proxy = ProxyConfig::upstream(Proto::H1, backend.addr())
        .limit("connection_idle_timeout: 300ms")
        .start()
        .await?;
    let mut raw = RawH2::connect(proxy.addr()).await?;
    let mut goaways = Vec::new();
    within(LIMIT, "GOAWAY and the close", async {
        while let Some(f) = raw.next().await {
            if f.kind == GOAWAY {
                goaways.push(f);
            } else {
                raw.answer(&f, true).await?;
            }
        }
        Ok(())
    })
    .await?;
    let last = goaways
        .last()
        .ok_or_else(|| anyhow!("closed without GOAWAY"))?;
    for g in &goaways {
        ensure!(
            g.stream == 0 && g.payload.len() >= 8,
            "malformed GOAWAY {g:?}"
        );
        let code = u32::from_be_bytes([g.payload[4], g.payload[5], g.payload[6], g.payload[7]]);
        assert_eq!(code, 0, "GOAWAY with an error code: {g:?}");
    }
    let last_stream = u32::from_be_bytes([
        last.payload[0],
        last.payload[1],
        last.payload[2],
        last.payload[3],
    ]) & 0x7fff_ffff;
    assert_eq!(last_stream, 0, "no stream was opened: {goaways:?}");
    Ok(())
}

/// A request in flight, waiting for its head or streaming its body, keeps
/// the idle timeout off; once it has ended the connection idles out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_holds_off_the_idle_timeout() -> anyhow::Result<()> {
    let (up, _events) = h2_upstream().await?;
    let proxy = ProxyConfig::new("http2", up.addr)
        .timeout(None)
        .limit("connection_idle_timeout: 1s")
        .start()
        .await?;
    let tcp = TcpStream::connect(proxy.addr()).await?;
    let (tap, frames) = Tap::new(tcp);
    let mut c = H2Client::over(tap, proxy.addr()).await?;

    // Two idle timeouts' wait for the head.
    let (status, body) = c.get("/delay?ms=2500").await?;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    let seen = kinds(&frames);
    assert!(
        !seen.contains(&GOAWAY),
        "GOAWAY while a request waited for its head: {seen:?}"
    );

    // A body streaming for two idle timeouts, a chunk every 200 ms.
    let (status, body) = c.get("/drip?n=12&ms=200").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(Digest::of(&body), Digest::of_pattern(12 * 1024));
    let seen = kinds(&frames);
    assert!(
        !seen.contains(&GOAWAY),
        "GOAWAY while a response streamed: {seen:?}"
    );

    // Now idle: GOAWAY, and the connection ends.
    let ended = c.ended().await?;
    let seen = kinds(&frames);
    assert!(
        seen.contains(&GOAWAY),
        "closed ({ended}) without GOAWAY: {seen:?}"
    );
    Ok(())
}

// ---------------------------------------------------------- 5. stalled preface

/// A client that sends part of the HTTP/2 preface and stalls is closed after
/// `header_read_timeout`, on an `auto` listener (the default, which must
/// then write nothing) and on an `http2` one; a client that sent the whole
/// preface on the `auto` listener is HTTP/2 and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_preface_is_closed_after_header_read_timeout() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let auto = ProxyConfig::upstream(Proto::H1, backend.addr())
        .limit("header_read_timeout: 300ms")
        .render();
    let http2 = auto.replace(
        "    address: 127.0.0.1:0\n",
        "    address: 127.0.0.1:0\n    protocol: http2\n",
    );
    ensure!(
        http2 != auto,
        "could not set the listener protocol:\n{auto}"
    );

    for (protocol, yaml) in [("auto", &auto), ("http2", &http2)] {
        let proxy = Proxy::start(yaml).await?;
        let mut whole = RawH2::connect(proxy.addr()).await?;
        let mut stalled = TcpStream::connect(proxy.addr()).await?;
        stalled.write_all(&PREFACE[..8]).await?;
        let got = within(LIMIT, "the stalled connection to close", async {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                match stalled.read(&mut buf).await {
                    Ok(0) | Err(_) => return Ok(got),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .with_context(|| protocol.to_string())?;
        if protocol == "auto" {
            assert!(
                got.is_empty(),
                "auto: wrote {got:?} before knowing the protocol"
            );
        }
        // The complete one, older than the timeout now, still answers a PING.
        whole.write_frame(PING, 0, b"12345678").await?;
        within(LIMIT, "the PING's answer", async {
            loop {
                let f = whole
                    .next()
                    .await
                    .ok_or_else(|| anyhow!("{protocol}: the complete connection was closed"))?;
                if f.kind == PING && f.flags & ACK != 0 && f.payload == b"12345678" {
                    return Ok(());
                }
                whole.answer(&f, true).await?;
            }
        })
        .await?;
    }
    Ok(())
}

// ------------------------------------- 7. request bodies to an HTTP/1.1 upstream

/// One request body and how the client frames it.
struct Upload {
    what: &'static str,
    content_length: Option<usize>,
    chunks: Vec<Bytes>,
    /// END_STREAM on an empty DATA frame after the chunks (else on the last
    /// chunk, or on HEADERS when there is none).
    empty_end: bool,
}

/// Request bodies from an HTTP/2 client reach an HTTP/1.1 upstream byte for
/// byte, with and without `content-length`, in several DATA frames, ended by
/// an empty DATA frame, or empty with END_STREAM on HEADERS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_an_http1_upstream_exactly() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let proxy = ProxyConfig::upstream(Proto::H1, backend.addr())
        .start()
        .await?;
    let mut c = H2Client::connect(proxy.addr()).await?;

    let body = pattern(7, 100_003);
    let split = |at: &[usize]| -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut from = 0;
        for &to in at.iter().chain([body.len()].iter()) {
            out.push(body.slice(from..to));
            from = to;
        }
        out
    };
    let chunks = split(&[1, 16_385, 46_000]);
    let uploads = [
        Upload {
            what: "content-length, END_STREAM on the last DATA",
            content_length: Some(body.len()),
            chunks: chunks.clone(),
            empty_end: false,
        },
        Upload {
            what: "content-length, END_STREAM on an empty DATA",
            content_length: Some(body.len()),
            chunks: chunks.clone(),
            empty_end: true,
        },
        Upload {
            what: "no content-length, END_STREAM on the last DATA",
            content_length: None,
            chunks: chunks.clone(),
            empty_end: false,
        },
        Upload {
            what: "no content-length, END_STREAM on an empty DATA",
            content_length: None,
            chunks: split(&[50_000]),
            empty_end: true,
        },
        Upload {
            what: "empty, END_STREAM on HEADERS",
            content_length: None,
            chunks: Vec::new(),
            empty_end: false,
        },
        Upload {
            what: "content-length: 0, END_STREAM on HEADERS",
            content_length: Some(0),
            chunks: Vec::new(),
            empty_end: false,
        },
        Upload {
            what: "empty, END_STREAM on an empty DATA",
            content_length: None,
            chunks: Vec::new(),
            empty_end: true,
        },
    ];

    for u in uploads {
        let what = u.what;
        let mut req = c.request("POST", "/upload")?;
        if let Some(n) = u.content_length {
            req.headers_mut()
                .insert(http::header::CONTENT_LENGTH, n.into());
        }
        let end_on_headers = u.chunks.is_empty() && !u.empty_end;
        let (resp, mut stream) = c.send(req, end_on_headers).await?;
        let mut sent = Digest::default();
        let last = u.chunks.len();
        for (i, chunk) in u.chunks.into_iter().enumerate() {
            sent.update(&chunk);
            stream.send_data(chunk, i + 1 == last && !u.empty_end)?;
        }
        if u.empty_end {
            stream.send_data(Bytes::new(), true)?;
        }
        let (status, answer) = read_all(resp).await.context(what)?;
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(status, 200, "{what}: {text}");
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{what}: {text}"))?;
        assert_eq!(v["error"], serde_json::Value::Null, "{what}: {v}");
        assert_eq!(v["len"], sent.len, "{what}: {v}");
        assert_eq!(v["digest"], sent.hex(), "{what}: {v}");

        let seen = backend
            .last()
            .ok_or_else(|| anyhow!("{what}: the upstream saw nothing"))?;
        assert_eq!(seen.version, http::Version::HTTP_11, "{what}");
        let length = seen.header("content-length");
        let chunked = seen
            .header("transfer-encoding")
            .is_some_and(|te| te.contains("chunked"));
        match u.content_length {
            Some(n) => {
                assert_eq!(
                    length,
                    Some(n.to_string().as_str()),
                    "{what}: {:?}",
                    seen.headers
                );
                assert!(!chunked, "{what}: both framings: {:?}", seen.headers);
            }
            // An empty body may go with no framing at all (RFC 9112 §6.3).
            None if sent.len == 0 => {}
            None => assert!(
                chunked || length == Some(sent.len.to_string().as_str()),
                "{what}: the upstream request has no framing for its body: {:?}",
                seen.headers
            ),
        }
    }

    // A GET ended on HEADERS carries no body framing at all upstream.
    let (status, _) = c.get("/headers").await?;
    assert_eq!(status, 200);
    let seen = backend
        .last()
        .ok_or_else(|| anyhow!("the upstream saw nothing"))?;
    assert!(
        seen.header("transfer-encoding").is_none()
            && seen.header("content-length").is_none_or(|l| l == "0"),
        "a GET without a body reached the upstream as {:?}",
        seen.headers
    );
    Ok(())
}

// ------------------------------------------------- response heads and methods

/// What the client receives for `method path`: status, content-length, body.
async fn head_of(
    c: &mut H2Client,
    method: &str,
    path: &str,
) -> anyhow::Result<(StatusCode, Option<String>, Bytes)> {
    let req = c.request(method, path)?;
    let (resp, _) = c.send(req, true).await?;
    let resp = within(LIMIT, "the response head", async { Ok(resp.await?) }).await?;
    let length = resp
        .headers()
        .get("content-length")
        .map(|v| v.to_str().unwrap_or("?").to_owned());
    let status = resp.status();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(data) = body.data().await {
        out.extend_from_slice(&data?);
    }
    Ok((status, length, out.into()))
}

/// A response that ends on its HEADERS gets no `content-length: 0` the
/// upstream never said (a HEAD answer, a 204), and an HTTP/1.1 upstream's
/// `TE: Trailers` does not stop its answer from reaching an HTTP/2 client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_answers_and_te_from_an_http1_upstream() -> anyhow::Result<()> {
    let (addr, _up, _events) = h1_upstream().await?;
    let proxy = ProxyConfig::new("http1", addr)
        .timeout(None)
        .start()
        .await?;
    let mut c = H2Client::connect(proxy.addr()).await?;

    let (status, length, body) = head_of(&mut c, "HEAD", "/resource").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(length, None, "the HEAD answer's length is unknown, not 0");
    assert!(body.is_empty());

    let (status, length, _) = head_of(&mut c, "GET", "/no-content").await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(length, None, "a 204 carries no content-length");

    let (status, length, body) = head_of(&mut c, "GET", "/te").await?;
    assert_eq!(
        status,
        StatusCode::OK,
        "TE: Trailers reaches the client as `te: trailers`"
    );
    assert_eq!(length.as_deref(), Some("2"));
    assert_eq!(&body[..], b"ok");
    still_serves(&proxy, &mut c).await
}

/// CONNECT opens no tunnel: 400 with `x-skiff-error: bad_request`, and the
/// upstream never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused() -> anyhow::Result<()> {
    let (up, mut events) = h2_upstream().await?;
    let proxy = ProxyConfig::new("http2", up.addr)
        .timeout(None)
        .start()
        .await?;
    let mut c = H2Client::connect(proxy.addr()).await?;
    let req = Request::builder()
        .method("CONNECT")
        .uri(format!("{}", proxy.addr()))
        .body(())?;
    let (resp, _) = c.send(req, false).await?;
    let resp = within(LIMIT, "the CONNECT answer", async { Ok(resp.await?) }).await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()["x-skiff-error"], "bad_request");
    still_serves(&proxy, &mut c).await?;
    // The first request to reach the upstream is still_serves' GET.
    let first = events.wait("a request upstream", |_| true).await?;
    assert_eq!(first, Event::Arrived("/".into()), "CONNECT went upstream");
    Ok(())
}
