//! Accepting downstream connections and serving HTTP/1.1 and HTTP/2 on them.
//!
//! One accept loop per listener. Each connection is served by hyper with the
//! listener's limits; when the drain signal fires, the loop stops accepting
//! and every connection is asked to finish gracefully (GOAWAY for HTTP/2,
//! `Connection: close` after the current response for HTTP/1.1).

pub mod activity;
pub mod detect;
pub mod original_dst;
pub mod tcp;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use activity::Activity;
use arc_swap::ArcSwap;
use bytes::Bytes;
use detect::Detected;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::coalesce::{self, Flushing};
use crate::config::{ListenerLimits, ListenerProtocol};
use crate::proxy::{self, ConnInfo, ListenerState};

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

/// The hyper server settings of a listener.
pub fn http_builder(
    limits: &ListenerLimits,
    protocol: ListenerProtocol,
) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.get())
        .max_buf_size(hyper_head_limit(limits.max_header_bytes) as usize)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .initial_stream_window_size(limits.initial_stream_window)
        .initial_connection_window_size(limits.initial_connection_window)
        .max_header_list_size(hyper_head_limit(limits.max_header_bytes))
        .keep_alive_interval(Some(limits.keepalive_interval.get()))
        .keep_alive_timeout(Duration::from_secs(20));
    match protocol {
        ListenerProtocol::Auto => b,
        ListenerProtocol::Http1 => b.http1_only(),
        ListenerProtocol::Http2 => b.http2_only(),
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
    pub builder: auto::Builder<TokioExecutor>,
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
        let _ = stream.set_nodelay(true);
        let current = state.load_full();
        let serving = current.serving.clone();
        // A connection made straight to our port was not redirected: its
        // "original destination" is this listener itself, never a loop target.
        let orig_dst = if serving.transparent {
            original_dst::original_dst(&stream).filter(|d| Some(*d) != local)
        } else {
            None
        };
        let conn = ConnInfo { client, orig_dst };
        let (state, stop, open) = (state.clone(), stop.clone(), open.clone());
        tokio::spawn(async move {
            open.fetch_add(1, Ordering::AcqRel);
            current.metrics.connections_active.inc();
            serve_connection(stream, conn, &serving, &current.name, state, stop).await;
            current.metrics.connections_active.dec();
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    conn: ConnInfo,
    serving: &Serving,
    name: &str,
    state: Arc<ArcSwap<ListenerState>>,
    mut stop: watch::Receiver<bool>,
) {
    if let Some(dst) = conn.orig_dst {
        if serving.opaque_ports.contains(&dst.port()) {
            return tcp::forward(stream, dst, serving.connect_timeout, name).await;
        }
    }
    let mut prefix = Bytes::new();
    if serving.transparent || serving.passthrough {
        match detect::detect(&mut stream, serving.detect_timeout).await {
            Ok((Detected::Http, read)) => prefix = read,
            Ok((Detected::Opaque, read)) => {
                match (serving.passthrough, conn.orig_dst) {
                    (true, Some(dst)) => {
                        let stream = detect::Rewind::new(read, stream);
                        tcp::forward(stream, dst, serving.connect_timeout, name).await;
                    }
                    _ => {
                        tracing::debug!(listener = %name, client = %conn.client, "not HTTP and no passthrough: closing")
                    }
                }
                return;
            }
            Err(e) => {
                tracing::debug!(listener = %name, client = %conn.client, error = %e, "reading the first bytes failed");
                return;
            }
        }
    }
    let (io, flusher) = coalesce::coalesce(detect::Rewind::new(prefix, stream));
    let io = TokioIo::new(io);
    let requests = state.clone();
    let activity = Activity::new();
    let busy = activity.clone();
    let service = service_fn(move |req| {
        // Each request sees the config snapshot current when it arrives.
        let state = requests.load_full();
        let guard = busy.request();
        // Boxed: the request's future is several KiB, and hyper moves the
        // stream task that holds it a few times while spawning it.
        let handled = Box::pin(proxy::handle(state, conn, guard, req));
        async move { Ok::<_, Infallible>(handled.await) }
    });
    let mut http = Flushing::new(
        Box::pin(serving.builder.serve_connection(io, service)),
        flusher,
    );
    let idle_limit = serving.connection_idle_timeout;
    let result = loop {
        let check = idle_limit
            .saturating_sub(activity.idle_for())
            .max(Duration::from_millis(100));
        tokio::select! {
            res = &mut http => break res,
            _ = stop.changed() => {
                http.inner_mut().as_mut().graceful_shutdown();
                break (&mut http).await;
            }
            _ = tokio::time::sleep(check) => {
                if activity.idle_for() >= idle_limit {
                    tracing::debug!(listener = %name, client = %conn.client, "closing an idle connection");
                    http.inner_mut().as_mut().graceful_shutdown();
                    break (&mut http).await;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(listener = %name, client = %conn.client, error = %e, "connection ended with an error");
        // hyper answered a request head it could not parse with a bare 400;
        // count it with the proxy's other bad requests.
        let parse_error = e
            .downcast_ref::<hyper::Error>()
            .is_some_and(|e| e.is_parse() || e.is_parse_too_large());
        if parse_error {
            state
                .load()
                .metrics
                .proxy_error(crate::error::ErrorKind::BadRequest);
        }
    }
}
