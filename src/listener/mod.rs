//! Accepting downstream connections and serving HTTP/1.1 and HTTP/2 on them.
//!
//! One accept loop per listener. Each connection is served by hyper with the
//! listener's limits; when the drain signal fires, the loop stops accepting
//! and every connection is asked to finish gracefully (GOAWAY for HTTP/2,
//! `Connection: close` after the current response for HTTP/1.1).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::config::{ListenerLimits, ListenerProtocol};
use crate::proxy::{self, ListenerState};

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

/// Accept and serve connections until `drain` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ListenerState>,
    builder: auto::Builder<TokioExecutor>,
    mut drain: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder);
    loop {
        let (stream, client) = tokio::select! {
            biased;
            _ = drain.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(listener = %state.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let mut drain = drain.clone();
        tokio::spawn(async move {
            let gauge = state.metrics.connections_active.clone();
            gauge.inc();
            let svc_state = state.clone();
            let service = service_fn(move |req| {
                let state = svc_state.clone();
                async move { Ok::<_, Infallible>(proxy::handle(state, client, req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                res = conn.as_mut() => res,
                _ = drain.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            };
            if let Err(e) = result {
                // hyper answered a request head it could not parse with a bare 400;
                // count it with the proxy's other bad requests.
                if e.downcast_ref::<hyper::Error>()
                    .is_some_and(|e| e.is_parse() || e.is_parse_too_large())
                {
                    state
                        .metrics
                        .proxy_error(crate::error::ErrorKind::BadRequest);
                }
                tracing::debug!(listener = %state.name, %client, error = %e, "connection ended with an error");
            }
            gauge.dec();
            drop(drain);
        });
    }
}
