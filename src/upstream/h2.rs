//! HTTP/2 to an upstream, on h2 directly: it tells us the peer's
//! SETTINGS_MAX_CONCURRENT_STREAMS, so a connection takes streams up to the
//! peer's limit and only then does the pool open another one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ::h2::Reason;
use bytes::Bytes;
use http::uri::Scheme;
use http::{Request, Response, Uri, Version};
use http_body::Body;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Pool, UpstreamError};
use crate::coalesce::{self, Flushing};
use crate::http::body::{ProxyBody, RequestBody};
use crate::http::pipe;

/// The flow-control windows of an upstream HTTP/2 connection, and the most
/// streams one connection carries. Data a client has not read yet stays
/// unreleased in its stream's window, and so in the connection's: a client
/// that stops reading holds up to one stream window of the connection's.
/// With at most `CONNECTION_WINDOW / STREAM_WINDOW` streams on a connection,
/// every stream on it can always be sent a full window however many of the
/// others are stalled, so slow readers never hold back anyone else's
/// responses; past that many streams the pool opens another connection.
/// What one stalled stream can pin in memory is one stream window.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 16 << 20;
const MAX_STREAMS_PER_CONNECTION: usize = (CONNECTION_WINDOW / STREAM_WINDOW) as usize;

/// `active` of a connection being closed for idleness: larger than any
/// stream limit, so no new stream can be taken on it.
const CLOSING: usize = usize::MAX / 2;

/// One HTTP/2 connection and the streams open on it.
struct H2Conn {
    sender: ::h2::client::SendRequest<Bytes>,
    active: AtomicUsize,
    closed: AtomicBool,
    /// The endpoint left the cluster: close as soon as no stream is open.
    retired: AtomicBool,
    wake: tokio::sync::Notify,
    last_used: Mutex<Instant>,
}

/// A taken stream slot: released when both the request and response sides are done.
struct StreamSlot(Arc<H2Conn>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let before = self.0.active.fetch_sub(1, Ordering::AcqRel);
        if before == 1 && self.0.retired.load(Ordering::Acquire) {
            self.0.wake.notify_one();
        }
    }
}

#[derive(Default)]
pub(super) struct H2Pool {
    conns: Mutex<Vec<Arc<H2Conn>>>,
    // Serialises opening connections, so a burst of requests to a new
    // endpoint shares one connection instead of opening one each.
    connecting: tokio::sync::Mutex<()>,
}

impl H2Pool {
    pub(super) fn len(&self) -> usize {
        self.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    fn try_take(&self) -> Option<StreamSlot> {
        let mut conns = self.conns.lock().ok()?;
        conns.retain(|c| !c.closed.load(Ordering::Acquire));
        for c in conns.iter() {
            let max = c
                .sender
                .current_max_send_streams()
                .min(MAX_STREAMS_PER_CONNECTION);
            let taken = c
                .active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                    (a < max).then_some(a + 1)
                })
                .is_ok();
            if taken {
                if let Ok(mut t) = c.last_used.lock() {
                    *t = Instant::now();
                }
                return Some(StreamSlot(c.clone()));
            }
        }
        None
    }

    /// Take every connection out of rotation; each closes once its open streams end.
    pub(super) fn retire(&self) {
        let conns = match self.conns.lock() {
            Ok(mut c) => std::mem::take(&mut *c),
            Err(_) => return,
        };
        for c in conns {
            c.retired.store(true, Ordering::Release);
            c.wake.notify_one();
        }
    }

    fn remove(&self, conn: &Arc<H2Conn>) {
        conn.closed.store(true, Ordering::Release);
        if let Ok(mut conns) = self.conns.lock() {
            conns.retain(|c| !Arc::ptr_eq(c, conn));
        }
    }
}

impl Pool {
    async fn take_h2(self: &Pool) -> Result<StreamSlot, UpstreamError> {
        if let Some(slot) = self.h2.try_take() {
            return Ok(slot);
        }
        let _guard = self.h2.connecting.lock().await;
        if let Some(slot) = self.h2.try_take() {
            return Ok(slot);
        }
        let (io, permit) = self.connect().await?;
        let (io, flusher) = coalesce::coalesce(io);
        let (sender, connection) = ::h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(256 * 1024)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| UpstreamError::Handshake {
                addr: self.addr,
                reason: format!("HTTP/2: {e}"),
            })?;
        let conn = Arc::new(H2Conn {
            sender,
            active: AtomicUsize::new(1),
            closed: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            last_used: Mutex::new(Instant::now()),
        });
        if self.retired.load(Ordering::Acquire) {
            // The endpoint left while this connection was being made: it
            // carries this one stream, then closes.
            conn.retired.store(true, Ordering::Release);
        } else if let Ok(mut conns) = self.h2.conns.lock() {
            conns.push(conn.clone());
        }
        let idle = self.config.idle_timeout;
        let span = tracing::debug_span!("upstream", addr = %self.addr);
        let driven = conn.clone();
        let task = async move {
            drive(Flushing::new(connection, flusher), driven, idle).await;
            drop(permit); // the max_connections slot lives as long as the connection
        };
        tokio::spawn(task.instrument(span));
        Ok(StreamSlot(conn))
    }

    pub(super) async fn send_h2(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let (mut parts, body) = req.into_parts();
        parts.version = Version::HTTP_2;
        parts.uri = absolute_uri(&parts, self.config.connector.scheme(), self.addr)?;
        parts.headers.remove(http::header::HOST);
        let end_of_stream = body.is_end_stream();
        let head = Request::from_parts(parts, ());

        // A request without a body that a graceful GOAWAY refused (the
        // upstream closing a pooled connection as the request left: the
        // HTTP/2 form of the keep-alive race) is sent once more on another
        // connection, retry policy or not: it never reached the app. One
        // with a body cannot be: its bytes are gone; a retry policy keeps a
        // replay copy for that.
        let mut resend = end_of_stream;
        let mut body = (!end_of_stream).then_some(body);
        let (response, slot) = loop {
            let (response, slot) = self.open_stream(head.clone(), body.take()).await?;
            match response.await {
                Ok(r) => break (r, slot),
                Err(e) => match self.response_error(e) {
                    UpstreamError::Refused { .. } if resend => {
                        self.h2.remove(&slot.0);
                        resend = false;
                    }
                    err => return Err(err),
                },
            }
        };
        let (parts, recv) = response.into_parts();
        Ok(Response::from_parts(parts, ProxyBody::h2(recv, Some(slot))))
    }

    /// Open a stream for `head` on a pooled or new connection and send
    /// `body` (none: the head ends the stream), streaming what did not
    /// arrive with the head from a task of its own.
    async fn open_stream(
        &self,
        head: Request<()>,
        body: Option<RequestBody>,
    ) -> Result<(::h2::client::ResponseFuture, Arc<StreamSlot>), UpstreamError> {
        // A connection that went away (GOAWAY, closed) since it was pooled
        // fails `ready` before the request is handed over: take another.
        let mut tries = 0;
        let (slot, mut sender) = loop {
            tries += 1;
            let slot = self.take_h2().await?;
            match slot.0.sender.clone().ready().await {
                Ok(sender) => break (slot, sender),
                Err(e) => {
                    self.h2.remove(&slot.0);
                    if tries >= 2 {
                        return Err(self.unsent(e));
                    }
                }
            }
        };
        let (response, stream) = match sender.send_request(head, body.is_none()) {
            Ok(r) => r,
            Err(e) => {
                self.h2.remove(&slot.0);
                return Err(self.unsent(e));
            }
        };
        let slot = Arc::new(slot);
        if let Some(mut body) = body {
            let mut stream = stream;
            // A small request (a unary gRPC call) usually arrived whole with
            // its head: send it now, so it leaves in the same write as the
            // HEADERS, and only stream what is left from a task of its own.
            if pipe::send_ready_frame(&mut body, &mut stream, |_| Reason::CANCEL) {
                let slot = slot.clone();
                tokio::spawn(async move {
                    pipe::pipe(body, stream, |_| Reason::CANCEL).await;
                    drop(slot); // the stream slot stays taken while the request streams
                });
            }
        }
        Ok((response, slot))
    }

    /// A stream that failed before its response head: refused unprocessed
    /// (REFUSED_STREAM, or above the last stream of a GOAWAY), or reset.
    fn response_error(&self, e: ::h2::Error) -> UpstreamError {
        // A GOAWAY refuses the streams above its last-stream-id, and h2
        // tells them so at once, with the GOAWAY's code. When the code is an
        // error, h2 later reports the streams at or below it (which the
        // upstream may have processed) the same way as the connection ends,
        // so only a graceful GOAWAY (NO_ERROR) proves a stream unprocessed:
        // after it, the streams it let finish end as a broken connection,
        // not as a GOAWAY. An error GOAWAY is a reset, never resent unless
        // the request may be.
        let graceful_goaway =
            e.is_go_away() && e.is_remote() && e.reason() == Some(::h2::Reason::NO_ERROR);
        let refused = e.reason() == Some(::h2::Reason::REFUSED_STREAM) || graceful_goaway;
        if refused {
            UpstreamError::Refused {
                addr: self.addr,
                reason: e.to_string(),
            }
        } else {
            self.reset(e)
        }
    }

    /// The request was never handed to the connection.
    fn unsent(&self, e: ::h2::Error) -> UpstreamError {
        UpstreamError::Refused {
            addr: self.addr,
            reason: format!("connection unusable before sending: {e}"),
        }
    }

    fn reset(&self, e: ::h2::Error) -> UpstreamError {
        UpstreamError::Reset {
            addr: self.addr,
            reason: e.to_string(),
        }
    }
}

/// HTTP/2 wants scheme and authority in the URI; an HTTP/1.1 request has the
/// authority in its Host header and no scheme, which then is the
/// connection's (`http` in clear, `https` over TLS). A request that came
/// with both (from an HTTP/2 client) is sent as it came.
fn absolute_uri(
    parts: &http::request::Parts,
    scheme: Scheme,
    addr: std::net::SocketAddr,
) -> Result<Uri, UpstreamError> {
    if parts.uri.authority().is_some() && parts.uri.scheme().is_some() {
        return Ok(parts.uri.clone());
    }
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "localhost".to_owned());
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(pq)
        .build()
        .map_err(|e| UpstreamError::Invalid {
            addr,
            reason: format!("bad request target: {e}"),
        })
}

/// Poll the connection until it ends, or close it after `idle` without
/// streams. Logged in the connection's span (addr).
async fn drive<C>(mut connection: C, conn: Arc<H2Conn>, idle: std::time::Duration)
where
    C: std::future::Future<Output = Result<(), ::h2::Error>> + Unpin,
{
    let check = (idle / 4).max(std::time::Duration::from_millis(250));
    loop {
        tokio::select! {
            res = &mut connection => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
                break;
            }
            _ = async {
                tokio::select! {
                    _ = tokio::time::sleep(check) => {}
                    _ = conn.wake.notified() => {}
                }
            } => {
                let last = conn.last_used.lock().map(|t| *t).unwrap_or_else(|_| Instant::now());
                let done = conn.retired.load(Ordering::Acquire) || last.elapsed() >= idle;
                if done
                    && conn
                        .active
                        .compare_exchange(0, CLOSING, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    tracing::debug!("closing idle or retired upstream HTTP/2 connection");
                    break;
                }
            }
        }
    }
    conn.closed.store(true, Ordering::Release);
}
