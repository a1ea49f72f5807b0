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

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

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

/// A response body: from an upstream (HTTP/1.1 via hyper, HTTP/2 via h2) or made by the proxy.
pub struct ProxyBody {
    inner: Inner,
}

enum Inner {
    Empty,
    Full(Option<Bytes>),
    Hyper(Incoming),
    H2 {
        stream: h2::RecvStream,
        data_done: bool,
        // Keeps the upstream stream slot taken until the body is done or dropped.
        _slot: Option<Box<dyn Send + Sync>>,
    },
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody {
            inner: Inner::Empty,
        }
    }
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody {
            inner: Inner::Full(Some(b.into())),
        }
    }
    pub fn hyper(b: Incoming) -> Self {
        ProxyBody {
            inner: Inner::Hyper(b),
        }
    }
    /// An upstream HTTP/2 body; `slot` is dropped when the body ends or is dropped.
    pub fn h2(stream: h2::RecvStream, slot: Option<Box<dyn Send + Sync>>) -> Self {
        ProxyBody {
            inner: Inner::H2 {
                stream,
                data_done: false,
                _slot: slot,
            },
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().inner {
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
            Inner::H2 { .. } => SizeHint::default(),
        }
    }
}

/// A downstream request body on its way upstream, counting the bytes it carries.
pub struct RequestBody {
    inner: Incoming,
    bytes: Arc<AtomicU64>,
}

impl RequestBody {
    pub fn new(inner: Incoming, bytes: Arc<AtomicU64>) -> Self {
        RequestBody { inner, bytes }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(d) = f.data_ref() {
                self.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
        grpc: bool,
        on_end: Option<Box<dyn OnStreamEnd>>,
    ) -> Self {
        let done = inner.is_end_stream();
        let mut b = ObservedBody {
            inner,
            deadline,
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
        ObservedBody::new(inner, None, false, None)
    }

    fn finish(&mut self, outcome: StreamOutcome) {
        self.done = true;
        self.deadline = None;
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
        if let Some(d) = &mut this.deadline {
            if d.as_mut().poll(cx).is_ready() {
                this.finish(StreamOutcome::Timeout);
                if this.grpc {
                    // End the call the way a gRPC client understands.
                    let mut t = HeaderMap::new();
                    t.insert(
                        grpc::GRPC_STATUS,
                        HeaderValue::from(u16::from(grpc::DEADLINE_EXCEEDED)),
                    );
                    t.insert(
                        grpc::GRPC_MESSAGE,
                        HeaderValue::from_static(
                            "deadline%20exceeded%20while%20streaming%20the%20response",
                        ),
                    );
                    t.insert(
                        crate::error::ERROR_HEADER,
                        HeaderValue::from_static("timeout"),
                    );
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                return Poll::Ready(Some(Err(BodyError::Timeout)));
            }
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes_out += d.len() as u64;
                } else if let Some(t) = frame.trailers_ref() {
                    this.grpc_status = grpc::status_of(t);
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

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if !self.done {
            self.finish(StreamOutcome::Cancelled);
        }
    }
}
