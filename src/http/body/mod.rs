//! Bodies as they flow through the proxy, streamed frame by frame.
//!
//! Nothing here buffers a body whole. Upstream HTTP/2 data is released back
//! to the flow-control window only when it is polled, and hyper polls a body
//! only when the downstream can take more, so a slow reader slows the
//! upstream down instead of growing a buffer.
//!
//! - `proxy.rs`: [`ProxyBody`], a body as it arrives (from an upstream, a
//!   downstream, or made by the proxy);
//! - `request.rs`: [`RequestBody`], what goes upstream (the client's,
//!   replayable, or a fixed one);
//! - `observed.rs`: [`ObservedBody`], a response on its way to the client,
//!   watched until its stream ends;
//! - `idle.rs`: [`IdleTimer`], the stream idle timeout.

mod idle;
mod observed;
mod proxy;
mod request;

pub use idle::IdleTimer;
pub use observed::{Expiry, ObservedBody, OnStreamEnd, StreamEnd, StreamOutcome};
pub use proxy::ProxyBody;
pub use request::RequestBody;

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
