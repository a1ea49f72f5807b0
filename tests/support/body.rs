//! Bodies for tests: a deterministic byte pattern, a streaming digest to check
//! large transfers without keeping them, and a channel-fed body for streaming
//! requests and responses frame by frame.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type the harness sends, as request or response.
pub type TestBody = BoxBody<Bytes, BoxError>;

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The byte at `offset` of the test pattern: not periodic at any power of
/// two, so a dropped, repeated or reordered chunk changes the digest.
pub fn pattern_byte(offset: u64) -> u8 {
    ((offset % 251) as u8) ^ ((offset / 251) as u8).rotate_left(3)
}

/// `len` bytes of the pattern starting at `offset`.
pub fn pattern(offset: u64, len: usize) -> Bytes {
    (0..len as u64)
        .map(|i| pattern_byte(offset + i))
        .collect::<Vec<u8>>()
        .into()
}

/// Length and FNV-1a 64 hash of a byte stream, fed chunk by chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    pub len: u64,
    pub hash: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Digest {
            len: 0,
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }
}

impl Digest {
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.hash ^= u64::from(*b);
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.len += bytes.len() as u64;
    }

    pub fn of(bytes: &[u8]) -> Digest {
        let mut d = Digest::default();
        d.update(bytes);
        d
    }

    /// The digest of the first `len` bytes of the pattern.
    pub fn of_pattern(len: u64) -> Digest {
        let mut d = Digest::default();
        let mut offset = 0;
        while offset < len {
            let n = (len - offset).min(64 * 1024);
            d.update(&pattern(offset, n as usize));
            offset += n;
        }
        d
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.hash)
    }
}

/// A body whose frames come from a channel; the sender side decides the pace,
/// and the bounded channel passes back-pressure to it.
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
}

pub type FrameSender = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

/// A channel body holding at most `capacity` frames in flight.
pub fn channel(capacity: usize) -> (FrameSender, ChannelBody) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChannelBody { rx })
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx)
    }
}

impl ChannelBody {
    pub fn boxed(self) -> TestBody {
        BodyExt::boxed(self)
    }
}

/// A body of `len` pattern bytes sent in `chunk`-sized frames with no length
/// announced (so HTTP/1.1 uses chunked encoding), then `trailers` if any.
pub fn streaming_pattern(len: u64, chunk: usize, trailers: Option<HeaderMap>) -> TestBody {
    let (tx, body) = channel(4);
    tokio::spawn(async move {
        let mut offset = 0;
        while offset < len {
            let n = (len - offset).min(chunk as u64);
            if tx
                .send(Ok(Frame::data(pattern(offset, n as usize))))
                .await
                .is_err()
            {
                return;
            }
            offset += n;
        }
        if let Some(t) = trailers {
            let _ = tx.send(Ok(Frame::trailers(t))).await;
        }
    });
    body.boxed()
}

/// Everything a received body held: its digest, its bytes if small, its trailers.
#[derive(Debug, Default)]
pub struct Received {
    pub digest: Digest,
    /// The bytes, kept only while the body stays under 1 MiB.
    pub bytes: Vec<u8>,
    pub trailers: Option<HeaderMap>,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Read a body to its end, frame by frame, hashing as it goes.
pub async fn read_body<B>(mut body: B) -> anyhow::Result<Received>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut out = Received::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("body error: {}", e.into()))?;
        match frame.into_data() {
            Ok(data) => {
                out.digest.update(&data);
                if out.digest.len <= 1024 * 1024 {
                    out.bytes.extend_from_slice(&data);
                } else {
                    out.bytes.clear();
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    out.trailers.get_or_insert_with(HeaderMap::new).extend(t);
                }
            }
        }
    }
    Ok(out)
}
