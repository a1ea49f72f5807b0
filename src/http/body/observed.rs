//! A response on its way to the client, watched until its stream ends: the
//! request's deadline and idle timeout enforced while it streams, bytes and
//! the trailers' grpc-status read, and the end reported once, however it
//! comes.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::{BodyError, IdleTimer, ProxyBody};
use crate::http::grpc;

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

/// How a stream the proxy ends mid-way (deadline, idle timeout) is ended:
/// with these trailers (a gRPC call, which must end with a grpc-status), or,
/// when there is no `Expiry`, by resetting the stream. The proxy's error
/// mapping (`crate::error`) provides it, so a cause becomes an answer in one place.
pub type Expiry = fn(StreamOutcome) -> HeaderMap;

/// A response body that enforces the request's deadline while streaming,
/// counts bytes, reads grpc-status from trailers and reports the end once.
pub struct ObservedBody {
    inner: ProxyBody,
    deadline: Option<Pin<Box<Sleep>>>,
    idle: Option<IdleTimer>,
    expiry: Option<Expiry>,
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
        expiry: Option<Expiry>,
        on_end: Option<Box<dyn OnStreamEnd>>,
    ) -> Self {
        let done = inner.is_end_stream();
        let mut b = ObservedBody {
            inner,
            deadline,
            idle,
            expiry,
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
        ObservedBody::new(inner, None, None, None, None)
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
            if let Some(trailers) = this.expiry {
                return Poll::Ready(Some(Ok(Frame::trailers(trailers(outcome)))));
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

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if !self.done {
            self.finish(StreamOutcome::Cancelled);
        }
    }
}
