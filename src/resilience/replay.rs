//! A request body that can be sent again: the bytes read from the client
//! are kept, up to a cap, so a retry can replay them to another endpoint.
//!
//! Every try gets its own [`ReplayBody`] from the same [`Replay`]. A try
//! first reads back what earlier tries already pulled from the client, then
//! pulls more. Once the body outgrows the cap, nothing more is kept and no
//! retry can be made ([`Replay::can_retry`] is false): the first answer
//! stands. Once a response is committed to the client the copy is dropped,
//! so a long-lived stream does not hold its first 64 KiB forever.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// The default cap of the kept copy.
pub const DEFAULT_REPLAY_BYTES: usize = 64 * 1024;

struct Shared<B> {
    source: Option<B>,
    /// The chunks pulled from the client so far (while within the cap).
    chunks: Vec<Bytes>,
    kept: usize,
    cap: usize,
    /// More was read than the cap allows: a retry can no longer replay it.
    overflowed: bool,
    /// The copy was dropped because a response was committed.
    committed: bool,
    source_done: bool,
    trailers: Option<HeaderMap>,
    /// Only the newest try may pull from the client; older ones are cut off.
    current_try: u32,
    /// Reading the client's body failed (malformed framing, the client reset
    /// the stream): the request's fault, not the upstream's.
    client_error: Option<String>,
    bytes_in: Arc<AtomicU64>,
}

/// The shared state of one request's body across its tries.
pub struct Replay<B> {
    shared: Arc<Mutex<Shared<B>>>,
}

impl<B> Clone for Replay<B> {
    fn clone(&self) -> Self {
        Replay {
            shared: self.shared.clone(),
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Replay<B> {
    pub fn new(source: B, cap: usize, bytes_in: Arc<AtomicU64>) -> Self {
        let source_done = source.is_end_stream();
        Replay {
            shared: Arc::new(Mutex::new(Shared {
                source: Some(source),
                chunks: Vec::new(),
                kept: 0,
                cap,
                overflowed: false,
                committed: false,
                source_done,
                trailers: None,
                current_try: 0,
                client_error: None,
                bytes_in,
            })),
        }
    }

    /// The body for the next try; earlier tries' bodies stop yielding data.
    pub fn next_try(&self) -> ReplayBody<B> {
        let t = match self.shared.lock() {
            Ok(mut s) => {
                s.current_try += 1;
                s.current_try
            }
            Err(_) => 0,
        };
        ReplayBody {
            shared: self.shared.clone(),
            try_no: t,
            next_chunk: 0,
            sent_trailers: false,
        }
    }

    /// Whether the whole body read so far is still kept, so a new try can send it.
    pub fn can_retry(&self) -> bool {
        self.shared
            .lock()
            .map(|s| !s.overflowed && !s.committed)
            .unwrap_or(false)
    }

    /// Why reading the client's body failed, if it did: a try that failed
    /// after it is the client's fault, not the upstream's.
    pub fn client_error(&self) -> Option<String> {
        self.shared.lock().ok().and_then(|s| s.client_error.clone())
    }

    /// A response is on its way to the client: no more tries, drop the copy.
    pub fn commit(&self) {
        if let Ok(mut s) = self.shared.lock() {
            s.committed = true;
            s.chunks = Vec::new();
            s.kept = 0;
        }
    }
}

/// One try's view of the request body.
pub struct ReplayBody<B> {
    shared: Arc<Mutex<Shared<B>>>,
    try_no: u32,
    next_chunk: usize,
    sent_trailers: bool,
}

impl<B: Body<Data = Bytes> + Unpin> Body for ReplayBody<B>
where
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let Ok(mut s) = this.shared.lock() else {
            return Poll::Ready(None);
        };
        if s.current_try != this.try_no {
            return Poll::Ready(None); // a newer try took over
        }
        // First what earlier tries already pulled.
        if !s.committed {
            if let Some(chunk) = s.chunks.get(this.next_chunk) {
                this.next_chunk += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
            }
        }
        if s.source_done {
            if let (Some(t), false) = (&s.trailers, this.sent_trailers) {
                this.sent_trailers = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
            }
            return Poll::Ready(None);
        }
        let Some(source) = s.source.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.source_done = true;
                s.source = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.source_done = true;
                s.source = None;
                s.client_error = Some(e.to_string());
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    s.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
                    if s.source.as_ref().is_some_and(|b| b.is_end_stream()) {
                        s.source_done = true;
                        s.source = None;
                    }
                    if !s.committed && !s.overflowed {
                        if s.cap > 0 && s.kept + data.len() <= s.cap {
                            s.kept += data.len();
                            s.chunks.push(data.clone());
                            this.next_chunk = s.chunks.len();
                        } else {
                            s.overflowed = true;
                            s.chunks = Vec::new();
                            s.kept = 0;
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    s.source_done = true;
                    s.source = None;
                    match frame.into_trailers() {
                        Ok(t) => {
                            s.trailers = Some(t.clone());
                            this.sent_trailers = true;
                            Poll::Ready(Some(Ok(Frame::trailers(t))))
                        }
                        Err(_) => Poll::Ready(None),
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        let Ok(s) = self.shared.lock() else {
            return true;
        };
        if s.current_try != self.try_no {
            return true;
        }
        let replayed_all = s.committed || self.next_chunk >= s.chunks.len();
        s.source_done && replayed_all && (s.trailers.is_none() || self.sent_trailers)
    }

    fn size_hint(&self) -> SizeHint {
        let Ok(s) = self.shared.lock() else {
            return SizeHint::default();
        };
        match &s.source {
            // Exact only on the first try, when nothing was read yet.
            Some(src) if s.chunks.is_empty() && !s.overflowed => src.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::convert::Infallible;

    fn body(
        chunks: &[&'static str],
        trailers: bool,
    ) -> http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible> {
        let mut frames: Vec<Frame<Bytes>> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::from_static(c.as_bytes())))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("x-t", http::HeaderValue::from_static("1"));
            frames.push(Frame::trailers(t));
        }
        http_body_util::combinators::UnsyncBoxBody::new(FrameList(frames.into()))
    }

    struct FrameList(std::collections::VecDeque<Frame<Bytes>>);
    impl Body for FrameList {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    async fn read_all<B: Body<Data = Bytes> + Unpin>(b: B) -> (Vec<u8>, Option<HeaderMap>)
    where
        B::Error: std::fmt::Debug,
    {
        let collected = b.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes().to_vec(), trailers)
    }

    #[tokio::test]
    async fn a_retry_replays_what_the_first_try_read() {
        let r = Replay::new(body(&["ab", "cd"], true), 1024, Default::default());
        let first = r.next_try();
        let (data, t) = read_all(first).await;
        assert_eq!(data, b"abcd");
        assert!(t.is_some());
        assert!(r.can_retry());
        let (data, t) = read_all(r.next_try()).await;
        assert_eq!(data, b"abcd", "the second try gets the same bytes");
        assert_eq!(t.unwrap()["x-t"], "1", "and the same trailers");
    }

    #[tokio::test]
    async fn a_retry_after_a_partial_read_gets_the_whole_body() {
        let r = Replay::new(body(&["ab", "cd", "ef"], false), 1024, Default::default());
        let mut first = r.next_try();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        let second = r.next_try();
        // The first try is cut off once a newer one starts.
        assert!(first.frame().await.is_none());
        assert_eq!(read_all(second).await.0, b"abcdef");
    }

    #[tokio::test]
    async fn past_the_cap_no_retry() {
        let counted = Arc::new(AtomicU64::new(0));
        let r = Replay::new(
            body(&["0123456789", "0123456789"], false),
            15,
            counted.clone(),
        );
        assert_eq!(
            read_all(r.next_try()).await.0.len(),
            20,
            "the first try still gets everything"
        );
        assert!(!r.can_retry());
        assert_eq!(counted.load(Ordering::Relaxed), 20);
    }

    #[tokio::test]
    async fn commit_drops_the_copy() {
        let r = Replay::new(body(&["ab"], false), 1024, Default::default());
        let _ = read_all(r.next_try()).await;
        r.commit();
        assert!(!r.can_retry());
    }
}
