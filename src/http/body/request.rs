//! What goes upstream as a request's body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::{BodyError, ProxyBody};

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
