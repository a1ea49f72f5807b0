//! HTTP/2 from clients, served on h2 directly.
//!
//! Each stream's request is proxied by a future that the connection's own
//! task polls, beside the connection itself: no task and no channel per
//! stream. A response's frames are encoded in the same poll that produced
//! them and leave in the connection's one write of that wake-up (see
//! `coalesce`). The connection is polled again after its streams, so what
//! they sent goes out before the task sleeps.

use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use h2::server::SendResponse;
use h2::{Ping, PingPong, Reason, RecvStream};
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use super::flood;
use super::state::ClientFault;
use crate::http::body::{BodyError, ObservedBody};
use crate::http::pipe;

/// How long a PING may go unanswered before the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A listener's HTTP/2 settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_concurrent_streams: u32,
    pub initial_stream_window: u32,
    pub initial_connection_window: u32,
    pub max_header_list_size: u32,
    /// A PING this often finds a peer that vanished without closing.
    pub keepalive_interval: Duration,
    /// Time the client has to send its connection preface.
    pub handshake_timeout: Duration,
    /// Control-frame cap and write-stall bound (`flood.rs`).
    pub flood: flood::Limits,
}

/// Why a connection ended other than by an orderly close.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    H2(#[from] h2::Error),
    #[error("no HTTP/2 preface within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("no PING answer within {0:?}")]
    KeepaliveTimeout(Duration),
    #[error("closed with GOAWAY ENHANCE_YOUR_CALM: {0}")]
    Flood(flood::Flood),
}

/// Serve HTTP/2 on `io` until the client closes, `shutdown` resolves and
/// the streams in flight finish (GOAWAY first), or the connection fails.
/// `handle` turns each request into its response. A client past its
/// control-frame cap gets GOAWAY ENHANCE_YOUR_CALM and nothing more; a
/// client that does not read is closed after `write_stall_timeout`
/// (`flood.rs`).
pub async fn serve<T, H, F>(
    io: T,
    settings: &Settings,
    mut handle: H,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConnError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<RecvStream>) -> F,
    F: Future<Output = Response<ObservedBody>>,
{
    let mut shutdown = pin!(shutdown);
    let (io, alarm) = flood::Guard::new(io, &settings.flood);
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(settings.max_concurrent_streams)
        .initial_window_size(settings.initial_stream_window)
        .initial_connection_window_size(settings.initial_connection_window)
        .max_header_list_size(settings.max_header_list_size)
        .handshake::<_, Bytes>(io);
    let mut conn = tokio::select! {
        res = tokio::time::timeout(settings.handshake_timeout, handshake) => match res {
            Ok(conn) => conn?,
            Err(_) => return Err(ConnError::HandshakeTimeout(settings.handshake_timeout)),
        },
        _ = &mut shutdown => return Ok(()),
    };
    let mut keepalive = KeepAlive::new(conn.ping_pong(), settings.keepalive_interval);
    let mut streams = FuturesUnordered::new();
    let rerun = Arc::new(Rerun::default());
    let rerun_waker = Waker::from(rerun.clone());
    let mut shutting_down = false;
    let mut calmed = false;
    let served = poll_fn(|cx| {
        if !shutting_down && shutdown.as_mut().poll(cx).is_ready() {
            shutting_down = true;
            conn.graceful_shutdown();
        }
        keepalive.poll(cx)?;
        rerun.task.register(cx.waker());
        // Take new streams and run the ones that can move; then poll the
        // connection again, so that what they sent is written in this
        // wake-up, and go round while that brings new streams or the
        // streams want another turn.
        let mut first = true;
        for _ in 0..MAX_ROUNDS {
            if !calmed && alarm.tripped() {
                // The guard reads nothing more; h2 writes the GOAWAY and closes.
                calmed = true;
                conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
            }
            let mut accepted = false;
            loop {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        let fault = ClientFault::default();
                        let mut req = req;
                        req.extensions_mut().insert(fault.clone());
                        streams.push(respond_to(handle(req), respond, fault));
                        accepted = true;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                    // Closed: streams still here cannot answer any more.
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            if !calmed && alarm.tripped() {
                continue;
            }
            let again = rerun.woken.swap(false, Ordering::AcqRel);
            if !first && !accepted && !again {
                return Poll::Pending;
            }
            first = false;
            let mut streams_cx = Context::from_waker(&rerun_waker);
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(&mut streams_cx) {}
        }
        // Enough for one turn: let the runtime's other tasks run first.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
    match alarm.flood() {
        Some(flood) => Err(ConnError::Flood(flood)),
        None => served,
    }
}

/// Rounds of streams and connection in one poll of the connection's task.
const MAX_ROUNDS: usize = 32;

/// The waker the streams' set sees. `FuturesUnordered` wakes it to yield
/// once a couple of its futures woke themselves while polled, which h2's
/// streams do whenever they are given window: taken as a yield to the
/// runtime, that would write each couple of responses in a write of its
/// own. It is noted instead, and the connection's task goes round again.
#[derive(Default)]
struct Rerun {
    task: AtomicWaker,
    woken: AtomicBool,
}

impl Wake for Rerun {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// One stream: wait for the proxied response (dropping the work if the
/// client resets the stream meanwhile), then send it. A panic in the
/// proxying resets this stream and leaves the connection's others alone.
async fn respond_to<F>(handled: F, mut respond: SendResponse<Bytes>, fault: ClientFault)
where
    F: Future<Output = Response<ObservedBody>>,
{
    let answer = {
        // Dropped (with the request's state) once the answer is in.
        let mut handled = CatchUnwind(pin!(handled));
        poll_fn(|cx| match Pin::new(&mut handled).poll(cx) {
            Poll::Ready(Ok(resp)) => Poll::Ready(Some(resp)),
            Poll::Pending => respond.poll_reset(cx).map(|reason| {
                // h2 resets a stream PROTOCOL_ERROR for the client's own
                // violation (DATA past its content-length, say).
                if matches!(reason, Ok(Reason::PROTOCOL_ERROR)) {
                    fault.set();
                }
                None
            }),
            Poll::Ready(Err(())) => {
                tracing::error!("a request's handling panicked; resetting its stream");
                respond.send_reset(Reason::INTERNAL_ERROR);
                Poll::Ready(None)
            }
        })
        .await
    };
    let Some(resp) = answer else {
        return;
    };
    let (mut parts, body) = resp.into_parts();
    let end = body.is_end_stream();
    if !end {
        // As hyper does: a body of known length says so, unless it is
        // already over (a HEAD answer, 204, 304 must not claim 0).
        if let Some(len) = body.size_hint().exact() {
            parts
                .headers
                .entry(CONTENT_LENGTH)
                .or_insert_with(|| HeaderValue::from(len));
        }
    }
    let tx = match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(tx) => tx,
        Err(e) => {
            // A head h2 will not send (a connection-specific header, say).
            tracing::debug!(error = %e, "response head refused; resetting the stream");
            respond.send_reset(Reason::INTERNAL_ERROR);
            return;
        }
    };
    if !end {
        let piped = pin!(pipe::pipe(body, tx, BodyError::h2_reason));
        if CatchUnwind(piped).await.is_err() {
            tracing::error!("streaming a response panicked; its stream is dropped");
        }
    }
}

/// A future whose panic is caught and returned as an error.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(p) => p.map(Ok),
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// PINGs at an interval; a PING unanswered for [`KEEPALIVE_TIMEOUT`] ends
/// the connection.
struct KeepAlive {
    ping: Option<PingPong>,
    interval: Duration,
    timer: Pin<Box<Sleep>>,
    awaiting_pong: bool,
}

impl KeepAlive {
    fn new(ping: Option<PingPong>, interval: Duration) -> Self {
        KeepAlive {
            ping,
            interval,
            timer: Box::pin(tokio::time::sleep(interval)),
            awaiting_pong: false,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Result<(), ConnError> {
        let Some(ping) = &mut self.ping else {
            return Ok(());
        };
        if self.awaiting_pong && ping.poll_pong(cx).is_ready() {
            self.awaiting_pong = false;
            self.timer.as_mut().reset(Instant::now() + self.interval);
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            if self.awaiting_pong {
                return Err(ConnError::KeepaliveTimeout(KEEPALIVE_TIMEOUT));
            }
            // Polling for the answer at once registers this task for it.
            let sent = ping.send_ping(Ping::opaque()).is_ok();
            self.awaiting_pong = sent && ping.poll_pong(cx).is_pending();
            let next = if self.awaiting_pong {
                KEEPALIVE_TIMEOUT
            } else {
                self.interval
            };
            self.timer.as_mut().reset(Instant::now() + next);
        }
        Ok(())
    }
}
