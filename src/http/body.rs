//! Bodies as they flow through the proxy, streamed frame by frame.
//!
//! Nothing here buffers a body whole. Upstream HTTP/2 data is released back
//! to the flow-control window only when it is polled, and hyper polls a body
//! only when the downstream can take more, so a slow reader slows the
//! upstream down instead of growing a buffer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::grpc;

/// Why a body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    H2(#[from] h2::Error),
    #[error("deadline exceeded while streaming")]
    Timeout,
}

impl BodyError {
    /// The HTTP/2 error code to reset a stream with when this ends its
    /// body: the peer's own code when an HTTP/2 stream failed, else `INTERNAL_ERROR`.
    pub fn h2_reason(&self) -> h2::Reason {
        let from_h2 = match self {
            BodyError::H2(e) => e.reason(),
            BodyError::Hyper(e) => std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<h2::Error>())
                .and_then(h2::Error::reason),
            BodyError::Timeout => None,
        };
        from_h2.unwrap_or(h2::Reason::INTERNAL_ERROR)
    }
}

/// A response body: from an upstream (HTTP/1.1 via hyper, HTTP/2 via h2) or made by the proxy.
pub struct ProxyBody {
    inner: Inner,
    /// A frame read ahead (to learn a gRPC status) and handed back first.
    peeked: Option<Frame<Bytes>>,
}

enum Inner {
    Empty,
    Full(Option<Bytes>),
    Hyper(Incoming),
    H2 {
        stream: h2::RecvStream,
        data_done: bool,
        // Keeps the upstream stream slot taken until the body is done or dropped.
        _slot: Option<Arc<dyn Send + Sync>>,
    },
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody {
            inner: Inner::Empty,
            peeked: None,
        }
    }
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody {
            inner: Inner::Full(Some(b.into())),
            peeked: None,
        }
    }
    pub fn hyper(b: Incoming) -> Self {
        ProxyBody {
            inner: Inner::Hyper(b),
            peeked: None,
        }
    }
    /// An upstream HTTP/2 body; `slot` is dropped when the body ends or is dropped.
    pub fn h2(stream: h2::RecvStream, slot: Option<Arc<dyn Send + Sync>>) -> Self {
        ProxyBody {
            inner: Inner::H2 {
                stream,
                data_done: false,
                _slot: slot,
            },
            peeked: None,
        }
    }
}

impl ProxyBody {
    /// Hand `frame` back: the next poll returns it first.
    pub fn push_front(&mut self, frame: Frame<Bytes>) {
        self.peeked = Some(frame);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(f) = this.peeked.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        match &mut this.inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BodyError::from))),
            Inner::H2 {
                stream, data_done, ..
            } => {
                if !*data_done {
                    match ready!(stream.poll_data(cx)) {
                        Some(Ok(data)) => {
                            let _ = stream.flow_control().release_capacity(data.len());
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                        None => *data_done = true,
                    }
                }
                match ready!(stream.poll_trailers(cx)) {
                    Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                    Ok(None) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(e.into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.peeked.is_some() {
            return false;
        }
        match &self.inner {
            Inner::Empty => true,
            Inner::Full(b) => b.is_none(),
            Inner::Hyper(b) => b.is_end_stream(),
            Inner::H2 { stream, .. } => stream.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Hyper(b) => b.size_hint(),
            Inner::H2 { stream, .. } if stream.is_end_stream() => SizeHint::with_exact(0),
            Inner::H2 { .. } => SizeHint::default(),
        }
    }
}

/// A request body on its way upstream: the client's (replayable for
/// retries), or a fixed one the proxy makes itself (health checks).
pub enum RequestBody {
    Client(crate::resilience::replay::ReplayBody<ProxyBody>),
    Fixed(Option<Bytes>),
}

impl RequestBody {
    pub fn fixed(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        RequestBody::Fixed((!b.is_empty()).then_some(b))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Client(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Fixed(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(b) => b.is_end_stream(),
            RequestBody::Fixed(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(b) => b.size_hint(),
            RequestBody::Fixed(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// How a response stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamOutcome {
    /// Every frame reached the client.
    Complete,
    /// The deadline passed mid-stream; the proxy ended it.
    Timeout,
    /// The upstream failed mid-stream (reset, connection lost).
    UpstreamError,
    /// The client went away before the end.
    Cancelled,
    /// No byte moved either way for the stream idle timeout.
    Idle,
}

/// What is known when a response stream ends.
#[derive(Clone, Copy, Debug)]
pub struct StreamEnd {
    pub outcome: StreamOutcome,
    pub bytes_out: u64,
    /// From the trailers, when the response had a grpc-status there.
    pub grpc_status: Option<u8>,
}

/// Called once when a response stream ends, however it ends.
pub trait OnStreamEnd: Send + Sync {
    fn finish(self: Box<Self>, end: StreamEnd);
}

/// A response body that enforces the request's deadline while streaming,
/// counts bytes, reads grpc-status from trailers and reports the end once.
pub struct ObservedBody {
    inner: ProxyBody,
    deadline: Option<Pin<Box<Sleep>>>,
    idle: Option<IdleTimer>,
    grpc: bool,
    bytes_out: u64,
    grpc_status: Option<u8>,
    done: bool,
    on_end: Option<Box<dyn OnStreamEnd>>,
}

impl ObservedBody {
    pub fn new(
        inner: ProxyBody,
        deadline: Option<Pin<Box<Sleep>>>,
        idle: Option<IdleTimer>,
        grpc: bool,
        on_end: Option<Box<dyn OnStreamEnd>>,
    ) -> Self {
        let done = inner.is_end_stream();
        let mut b = ObservedBody {
            inner,
            deadline,
            idle,
            grpc,
            bytes_out: 0,
            grpc_status: None,
            done: false,
            on_end,
        };
        if done {
            b.finish(StreamOutcome::Complete);
        }
        b
    }

    /// A body with nothing to observe (admin answers, already-recorded errors).
    pub fn plain(inner: ProxyBody) -> Self {
        ObservedBody::new(inner, None, None, false, None)
    }

    fn finish(&mut self, outcome: StreamOutcome) {
        self.done = true;
        self.deadline = None;
        self.idle = None;
        if let Some(cb) = self.on_end.take() {
            cb.finish(StreamEnd {
                outcome,
                bytes_out: self.bytes_out,
                grpc_status: self.grpc_status,
            });
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let deadline_passed = this
            .deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready());
        let expired = if deadline_passed {
            Some(StreamOutcome::Timeout)
        } else if this.idle.as_mut().is_some_and(|i| i.poll_expired(cx)) {
            Some(StreamOutcome::Idle)
        } else {
            None
        };
        if let Some(outcome) = expired {
            this.finish(outcome);
            if this.grpc {
                // End the call the way a gRPC client understands.
                let message = match outcome {
                    StreamOutcome::Idle => "stream%20idle%20timeout:%20nothing%20moved",
                    _ => "deadline%20exceeded%20while%20streaming%20the%20response",
                };
                let mut t = HeaderMap::new();
                t.insert(
                    grpc::GRPC_STATUS,
                    HeaderValue::from(u16::from(grpc::DEADLINE_EXCEEDED)),
                );
                t.insert(grpc::GRPC_MESSAGE, HeaderValue::from_static(message));
                t.insert(
                    crate::error::ERROR_HEADER,
                    HeaderValue::from_static("timeout"),
                );
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            return Poll::Ready(Some(Err(BodyError::Timeout)));
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes_out += d.len() as u64;
                } else if let Some(t) = frame.trailers_ref() {
                    this.grpc_status = grpc::status_of(t);
                }
                if let Some(idle) = &mut this.idle {
                    idle.touch();
                }
                if this.inner.is_end_stream() || frame.is_trailers() {
                    this.finish(StreamOutcome::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.finish(StreamOutcome::UpstreamError);
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.finish(StreamOutcome::Complete);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

/// The stream idle timeout: fires when neither the response (frames out)
/// nor the request (bytes in) moved for `timeout`. Activity only records
/// the time; the timer is re-armed when it fires, not on every frame.
pub struct IdleTimer {
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    last_activity: Instant,
    request_bytes: Arc<AtomicU64>,
    seen_request_bytes: u64,
}

impl IdleTimer {
    pub fn new(timeout: Duration, request_bytes: Arc<AtomicU64>) -> Self {
        let now = Instant::now();
        IdleTimer {
            timeout,
            sleep: Box::pin(tokio::time::sleep_until(now + timeout)),
            last_activity: now,
            seen_request_bytes: request_bytes.load(Ordering::Relaxed),
            request_bytes,
        }
    }

    fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    /// True once nothing has moved for the whole timeout.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = Instant::now();
            let bytes = self.request_bytes.load(Ordering::Relaxed);
            if bytes != self.seen_request_bytes {
                self.seen_request_bytes = bytes;
                self.last_activity = now;
            }
            let until = self.last_activity + self.timeout;
            if until <= now {
                return true;
            }
            self.sleep.as_mut().reset(until);
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if !self.done {
            self.finish(StreamOutcome::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expired(t: &mut IdleTimer) -> bool {
        let waker = std::task::Waker::noop();
        t.poll_expired(&mut Context::from_waker(waker))
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timer_fires_only_when_nothing_moves() {
        let bytes = Arc::new(AtomicU64::new(0));
        let mut t = IdleTimer::new(Duration::from_secs(10), bytes.clone());
        tokio::time::advance(Duration::from_secs(6)).await;
        t.touch(); // a response frame
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!expired(&mut t), "a frame 6 s ago keeps the stream alive");
        tokio::time::advance(Duration::from_secs(3)).await;
        bytes.store(100, Ordering::Relaxed); // the client sent something
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!expired(&mut t), "request bytes count as activity");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(expired(&mut t), "ten quiet seconds end it");
    }
}
