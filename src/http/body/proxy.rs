//! A body as it arrives: from an upstream (HTTP/1.1 via hyper, HTTP/2 via
//! h2), from a downstream client, or made by the proxy.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::BodyError;

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
