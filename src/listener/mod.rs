//! Accepting downstream connections and serving HTTP/1.1 and HTTP/2 on them.
//!
//! One accept loop per listener. A connection that opens with the HTTP/2
//! preface is served on h2 (`h2.rs`), any other by hyper's HTTP/1.1 server,
//! both with the listener's limits. When the drain signal fires, the loop
//! stops accepting and every connection is asked to finish gracefully
//! (GOAWAY for HTTP/2, `Connection: close` after the current response for
//! HTTP/1.1); so is a connection idle for `connection_idle_timeout`.
//!
//! Each connection's task runs in a `conn{listener, client, orig_dst, tls, peer}`
//! span and each request in a `req{method, authority, path, request_id}`
//! span inside it, so every line logged about them says which they are.
//! Both are at debug level: at the default `info` they are disabled spans,
//! and none of their fields is read or formatted.

pub mod activity;
pub mod admit;
pub mod detect;
pub mod flood;
pub mod h2;
pub mod head_scan;
pub mod original_dst;
pub mod state;
pub mod tcp;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use activity::Activity;
use arc_swap::ArcSwap;
use bytes::Bytes;
use detect::Detected;
use state::{ConnInfo, ConnTls, ListenerState};

use http::header::HOST;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use crate::coalesce::{self, Flushing};
use crate::config::{ListenerLimits, ListenerProtocol};
use crate::http::body::ProxyBody;
use crate::http::headers;
use crate::metrics::Metrics;
use crate::proxy;
use crate::tls::failure::HandshakeFailure;
use crate::tls::server::{self, ServerTls};
use crate::tls::ALPN_H2;

/// Bind `addr` with SO_REUSEADDR and a deep accept backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// hyper's HTTP/1.1 server settings of a listener.
pub fn http1_builder(limits: &ListenerLimits) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.get())
        .max_buf_size(hyper_head_limit(limits.max_header_bytes) as usize)
        .keep_alive(true);
    b
}

/// A listener's HTTP/2 settings.
pub fn h2_settings(limits: &ListenerLimits) -> h2::Settings {
    h2::Settings {
        max_concurrent_streams: limits.max_concurrent_streams,
        initial_stream_window: limits.initial_stream_window,
        initial_connection_window: limits.initial_connection_window,
        max_header_list_size: hyper_head_limit(limits.max_header_bytes),
        keepalive_interval: limits.keepalive_interval.get(),
        handshake_timeout: limits.header_read_timeout.get(),
        flood: flood::Limits {
            per_stream: limits.max_control_frames_per_stream,
            per_data_frame: limits.max_control_frames_per_data_frame,
            write_stall_timeout: limits.write_stall_timeout.get(),
        },
    }
}

/// hyper answers an HTTP/1.1 head past its buffer with a bare 431, and h2
/// refuses an HTTP/2 stream past its header limit (REFUSED_STREAM, which
/// clients retry). Both sit above the configured limit, so for heads between
/// the two the proxy answers 431 itself, with `x-skiff-error`.
fn hyper_head_limit(max_header_bytes: usize) -> u32 {
    u32::try_from(max_header_bytes.saturating_mul(2).saturating_add(16 * 1024)).unwrap_or(u32::MAX)
}

/// What a listener's accept loop reads from the current config snapshot.
pub struct Serving {
    pub protocol: ListenerProtocol,
    pub http1: http1::Builder,
    pub h2: h2::Settings,
    /// Read the original destination (iptables REDIRECT).
    pub transparent: bool,
    /// Non-HTTP connections go to their original destination as opaque TCP.
    pub passthrough: bool,
    /// Ports proxied as opaque TCP without waiting for detection.
    pub opaque_ports: Vec<u16>,
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    /// Close a connection with no request in flight for this long.
    pub connection_idle_timeout: Duration,
    /// Open connections at most (`limits.max_connections`).
    pub max_connections: usize,
    /// Mesh TLS (`tls.mode` strict or permissive) or edge TLS
    /// (`terminate`); `None` serves plaintext.
    pub tls: Option<InboundTls>,
}

/// A listener's TLS: whether plaintext is served too, the server side of
/// the handshake (mesh mTLS, or edge TLS with the listener's certificates),
/// and where handshakes are counted (`skiff_tls_handshakes_total{side="inbound"}`).
pub struct InboundTls {
    /// Permissive takes plaintext too, with no peer identity; strict and
    /// terminate refuse it.
    pub plaintext: bool,
    pub server: ServerTls,
    pub metrics: Metrics,
    pub listener: Arc<str>,
}

impl InboundTls {
    /// How the refusal of a plaintext connection names this listener.
    fn what(&self) -> &'static str {
        if self.server.is_mesh() {
            "a strict mTLS listener"
        } else {
            "an HTTPS (terminate) listener"
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .tls_handshake("inbound", &self.listener, result);
    }

    /// A connection refused before or during the handshake: logged at info
    /// with the reason, and counted.
    fn refuse(
        &self,
        client: SocketAddr,
        failure: HandshakeFailure,
        detail: &dyn std::fmt::Display,
    ) {
        tracing::info!(%client, reason = failure.label(), error = %detail, "TLS connection refused");
        self.count(failure.label());
    }
}

/// Accept and serve connections until `stop` turns true; then ask every
/// open connection to finish (GOAWAY, `Connection: close`) and return when
/// the last one has. `open` counts the connections.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ArcSwap<ListenerState>>,
    mut stop: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
) {
    let local = listener.local_addr().ok();
    let admission = Arc::new(admit::Admission::default());
    loop {
        let (stream, client) = tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(listener = %state.load().name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let current = state.load_full();
        let serving = current.serving.clone();
        let Some(slot) = admission.admit(serving.max_connections) else {
            // Every connection has a request in flight: no room.
            current.metrics.connections_refused.inc();
            tracing::debug!(%client, max = serving.max_connections, "connection refused: max_connections reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // A connection made straight to our port was not redirected: its
        // "original destination" is this listener itself, never a loop target.
        let orig_dst = if serving.transparent {
            original_dst::original_dst(&stream).filter(|d| Some(*d) != local)
        } else {
            None
        };
        let span = accept_span(&current.name, client, orig_dst);
        let (state, stop, open) = (state.clone(), stop.clone(), open.clone());
        let task = async move {
            // Counted until the task ends, even by a panic.
            let _open = OpenConnection::new(open, current);
            serve_connection(stream, client, orig_dst, slot, &serving, state, stop).await;
        };
        tokio::spawn(task.instrument(span));
    }
}

/// A connection counted open (for the drain) and active (the gauge).
struct OpenConnection {
    open: Arc<AtomicUsize>,
    state: Arc<ListenerState>,
}

impl OpenConnection {
    fn new(open: Arc<AtomicUsize>, state: Arc<ListenerState>) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        state.metrics.connections_active.inc();
        OpenConnection { open, state }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.state.metrics.connections_active.dec();
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    client: SocketAddr,
    orig_dst: Option<SocketAddr>,
    slot: admit::Slot,
    serving: &Serving,
    state: Arc<ArcSwap<ListenerState>>,
    stop: watch::Receiver<bool>,
) {
    if let Some(dst) = orig_dst {
        if serving.opaque_ports.contains(&dst.port()) {
            return tcp::forward(stream, dst, serving.connect_timeout).await;
        }
    }
    let mut prefix = Bytes::new();
    if serving.transparent || serving.passthrough || serving.tls.is_some() {
        match detect::detect(&mut stream, serving.detect_timeout).await {
            Ok((Detected::Tls, read)) if serving.tls.is_some() => {
                let stream = detect::Rewind::new(read, stream);
                return serve_tls(stream, client, orig_dst, slot, serving, state, stop).await;
            }
            Ok((Detected::Http, read)) => {
                if let Some(tls) = serving.tls.as_ref().filter(|t| !t.plaintext) {
                    let detail = format!("plaintext HTTP to {}", tls.what());
                    return tls.refuse(client, HandshakeFailure::Plaintext, &detail);
                }
                prefix = read;
            }
            // TLS the app does itself on a plaintext listener: a ClientHello
            // goes where any other opaque stream goes.
            Ok((detected @ (Detected::Opaque | Detected::Tls), read)) => {
                if let Some(tls) = serving.tls.as_ref().filter(|t| !t.plaintext) {
                    let detail = format!("neither TLS nor HTTP to {}", tls.what());
                    return tls.refuse(client, HandshakeFailure::Plaintext, &detail);
                }
                match (serving.passthrough, orig_dst) {
                    (true, Some(dst)) => {
                        let stream = detect::Rewind::new(read, stream);
                        tcp::forward(stream, dst, serving.connect_timeout).await;
                    }
                    _ => {
                        tracing::debug!(?detected, "not HTTP and no passthrough: closing")
                    }
                }
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading the first bytes failed");
                return;
            }
        }
    }
    let h2 = match serving.protocol {
        ListenerProtocol::Http1 => false,
        ListenerProtocol::Http2 => true,
        ListenerProtocol::Auto => {
            let timeout = serving.h2.handshake_timeout;
            match detect::h2_preface(&mut stream, prefix, timeout).await {
                Ok((h2, read)) => {
                    prefix = read;
                    h2
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reading the first bytes failed");
                    return;
                }
            }
        }
    };
    let stream = detect::Rewind::new(prefix, stream);
    // Shared by the connection's requests: one allocation per connection.
    let conn = Arc::new(ConnInfo {
        client,
        orig_dst,
        peer: None,
        tls: None,
    });
    serve_http(stream, h2, conn, slot, serving, state, stop).await
}

/// The server side of TLS on a connection that opened with a ClientHello:
/// mesh mTLS (the connection then carries the client's verified identity)
/// or edge TLS (no client certificate, no identity); then HTTP/2 or
/// HTTP/1.1 by the negotiated ALPN.
async fn serve_tls<S>(
    stream: S,
    client: SocketAddr,
    orig_dst: Option<SocketAddr>,
    slot: admit::Slot,
    serving: &Serving,
    state: Arc<ArcSwap<ListenerState>>,
    stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Some(tls) = &serving.tls else { return };
    let timeout = serving.h2.handshake_timeout;
    let (stream, peer) =
        match tokio::time::timeout(timeout, server::accept(&tls.server, stream)).await {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(e)) => return tls.refuse(client, e.kind, &e),
            Err(_) => {
                let detail = format!("no handshake within {timeout:?}");
                return tls.refuse(client, HandshakeFailure::Timeout, &detail);
            }
        };
    tls.count("success");
    let kind = if tls.server.is_mesh() {
        ConnTls::Mesh
    } else {
        ConnTls::Edge
    };
    let span = tracing::Span::current();
    span.record("tls", kind.as_str());
    if let Some(peer) = &peer {
        span.record("peer", tracing::field::display(peer));
    }
    let session = stream.get_ref().1;
    let h2 = session.alpn_protocol() == Some(ALPN_H2);
    tracing::debug!(
        sni = session.server_name(),
        alpn = session.alpn_protocol().map(String::from_utf8_lossy).as_deref(),
        version = ?session.protocol_version(),
        "TLS handshake done"
    );
    let conn = Arc::new(ConnInfo {
        client,
        orig_dst,
        peer,
        tls: Some(kind),
    });
    serve_http(stream, h2, conn, slot, serving, state, stop).await
}

/// Serve HTTP/2 or HTTP/1.1 on `stream` until the connection ends, the
/// listener drains or the connection idles.
async fn serve_http<S>(
    stream: S,
    h2: bool,
    conn: Arc<ConnInfo>,
    slot: admit::Slot,
    serving: &Serving,
    state: Arc<ArcSwap<ListenerState>>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let activity = slot.activity.clone();
    // Finish gracefully when the listener drains, the connection idles, or
    // it is asked to make room for a new one (`limits.max_connections`).
    let shutdown = {
        let activity = activity.clone();
        let idle_limit = serving.connection_idle_timeout;
        async move {
            tokio::select! {
                _ = stop.changed() => h2::Shutdown::Graceful,
                _ = idle(&activity, idle_limit) => {
                    tracing::debug!("closing an idle connection");
                    h2::Shutdown::Graceful
                }
                _ = slot.trimmed() => {
                    tracing::debug!("closing an idle connection to make room (max_connections)");
                    h2::Shutdown::Now
                }
            }
        }
    };
    if h2 {
        serve_h2(stream, conn, serving, state, &activity, shutdown).await
    } else {
        serve_http1(stream, conn, serving, state, &activity, shutdown).await
    }
}

/// HTTP/2 on h2 (`h2.rs`), each request proxied inside the connection's
/// task. `stream` is any byte stream: TCP with the bytes detection read put
/// back, or a TLS stream over it.
async fn serve_h2<S>(
    stream: S,
    conn: Arc<ConnInfo>,
    serving: &Serving,
    state: Arc<ArcSwap<ListenerState>>,
    activity: &Arc<Activity>,
    shutdown: impl Future<Output = h2::Shutdown>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let handle = |mut req: http::Request<::h2::RecvStream>| {
        // Each request sees the config snapshot current when it arrives.
        let current = state.load_full();
        headers::ensure_request_id(req.headers_mut());
        let span = request_span(&req);
        let req = req.map(|body| ProxyBody::h2(body, None));
        // Boxed: the request's future is several KiB, and the connection's
        // set of streams would move it once more.
        Box::pin(proxy::handle(current, conn.clone(), activity.request(), req).instrument(span))
    };
    let (io, flusher) = coalesce::coalesce(stream);
    let served = h2::serve(io, &serving.h2, handle, shutdown);
    if let Err(e) = Flushing::new(Box::pin(served), flusher).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// HTTP/1.1 on hyper, on any byte stream (as `serve_h2`). hyper writes each
/// response head and body in one vectored write already, so the stream is
/// not wrapped in `coalesce`.
async fn serve_http1<S>(
    stream: S,
    conn: Arc<ConnInfo>,
    serving: &Serving,
    state: Arc<ArcSwap<ListenerState>>,
    activity: &Arc<Activity>,
    shutdown: impl Future<Output = h2::Shutdown>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let requests = state.clone();
    let busy = activity.clone();
    // hyper drops a Content-Length beside Transfer-Encoding before the
    // request is seen: the scan of the raw heads tells which request had both.
    let (stream, heads) = head_scan::HeadScan::new(stream);
    let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        // Each request sees the config snapshot current when it arrives.
        let current = requests.load_full();
        if heads.next_request_ambiguous() {
            req.extensions_mut()
                .insert(headers::BadHead::LengthAndTransferEncoding);
        }
        headers::ensure_request_id(req.headers_mut());
        let span = request_span(&req);
        let req = req.map(ProxyBody::hyper);
        let handled = proxy::handle(current, conn.clone(), busy.request(), req).instrument(span);
        let handled = Box::pin(handled);
        async move { Ok::<_, Infallible>(handled.await) }
    });
    let mut http = pin!(serving
        .http1
        .serve_connection(TokioIo::new(stream), service));
    let result = tokio::select! {
        res = &mut http => res,
        _ = shutdown => {
            http.as_mut().graceful_shutdown();
            http.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
        // hyper answered a request head it could not parse with a bare 400;
        // count it with the proxy's other bad requests.
        if e.is_parse() || e.is_parse_too_large() {
            state
                .load()
                .metrics
                .proxy_error(crate::error::ErrorKind::BadRequest);
        }
    }
}

/// The span a connection's task runs in: every line logged about the
/// connection carries these fields. While its level is off this is a
/// disabled span: none of the fields is read, formatted or stored.
/// A connection's span as it is accepted: its peer identity, if any, is
/// recorded once the handshake has verified it.
fn accept_span(listener: &str, client: SocketAddr, orig_dst: Option<SocketAddr>) -> tracing::Span {
    tracing::debug_span!(
        "conn",
        listener = %listener,
        client = %client,
        orig_dst = orig_dst.map(tracing::field::display),
        tls = tracing::field::Empty,
        peer = tracing::field::Empty,
    )
}

pub fn connection_span(listener: &str, conn: &ConnInfo) -> tracing::Span {
    tracing::debug_span!(
        "conn",
        listener = %listener,
        client = %conn.client,
        orig_dst = conn.orig_dst.map(tracing::field::display),
        tls = conn.tls.map(ConnTls::as_str),
        peer = conn.peer.as_ref().map(tracing::field::display),
    )
}

/// The span a request's handling runs in (its request id already set).
/// Disabled, at no more cost than a level check, while its level is off.
pub fn request_span<B>(req: &http::Request<B>) -> tracing::Span {
    tracing::debug_span!(
        "req",
        method = %req.method(),
        authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
            .map(tracing::field::display),
        path = %req.uri().path(),
        request_id = req
            .headers()
            .get(headers::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(tracing::field::display),
    )
}

/// Resolves once the connection has had no request in flight for `limit`.
async fn idle(activity: &Activity, limit: Duration) {
    loop {
        let left = limit.saturating_sub(activity.idle_for());
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.max(Duration::from_millis(100))).await;
    }
}
