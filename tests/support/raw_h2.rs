//! A hand-built HTTP/2 client for the attacks no library would send: frames
//! written byte by byte (HPACK as literals, or as a test builds it), and
//! the server's frames read one at a time by a task of their own, so a
//! flood never blocks on a full receive buffer of ours unless the test asks
//! for exactly that.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::anyhow;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::AbortOnDrop;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

/// One frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, value) in params {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

pub fn ping(payload: [u8; 8]) -> Vec<u8> {
    frame(PING, 0, 0, &payload)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn priority(stream: u32, depends_on: u32, weight: u8) -> Vec<u8> {
    let mut p = depends_on.to_be_bytes().to_vec();
    p.push(weight);
    frame(PRIORITY, 0, stream, &p)
}

/// An HPACK integer with an `n`-bit prefix, the first byte's high bits `high`.
pub fn hpack_int(high: u8, n: u32, mut value: usize) -> Vec<u8> {
    let max = (1usize << n) - 1;
    if value < max {
        return vec![high | value as u8];
    }
    let mut out = vec![high | max as u8];
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
    out
}

fn hpack_string(s: &[u8]) -> Vec<u8> {
    let mut out = hpack_int(0, 7, s.len());
    out.extend_from_slice(s);
    out
}

/// A literal header field without indexing, new name.
pub fn literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend(hpack_string(name.as_bytes()));
    out.extend(hpack_string(value));
    out
}

/// A literal header field with incremental indexing, new name: it enters
/// the dynamic table (index 62 when it is the newest).
pub fn literal_indexed(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x40];
    out.extend(hpack_string(name.as_bytes()));
    out.extend(hpack_string(value));
    out
}

/// An indexed header field (a reference to the table).
pub fn indexed(index: usize) -> Vec<u8> {
    hpack_int(0x80, 7, index)
}

/// The header block of a request: pseudo-headers, then `extra`.
pub fn request_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = literal(":method", method.as_bytes());
    block.extend(literal(":scheme", b"http"));
    block.extend(literal(":authority", b"hostile.test"));
    block.extend(literal(":path", path.as_bytes()));
    for (k, v) in extra {
        block.extend(literal(k, v.as_bytes()));
    }
    block
}

/// A request's HEADERS frame (END_HEADERS), with END_STREAM when `end`.
pub fn request(
    stream: u32,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    end: bool,
) -> Vec<u8> {
    let flags = END_HEADERS | if end { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &request_block(method, path, extra))
}

/// A frame from the server.
#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// (last stream id, error code) of a GOAWAY.
    pub fn goaway(&self) -> Option<(u32, u32)> {
        if self.kind != GOAWAY || self.payload.len() < 8 {
            return None;
        }
        let p = &self.payload;
        Some((
            u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff,
            u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        ))
    }

    /// The error code of a RST_STREAM.
    pub fn reset_code(&self) -> Option<u32> {
        (self.kind == RST_STREAM && self.payload.len() == 4).then(|| {
            let p = &self.payload;
            u32::from_be_bytes([p[0], p[1], p[2], p[3]])
        })
    }
}

/// What the server did with a connection, read to its end.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The frames it sent, by type (GOAWAY included).
    pub frames: Vec<(u8, u8, u32)>,
    /// Its GOAWAY: last stream id, error code.
    pub goaway: Option<(u32, u32)>,
    /// It closed the connection (EOF or reset) within the wait.
    pub closed: bool,
    /// How the reading ended, when by an error (a reset, say).
    pub error: Option<String>,
}

impl Outcome {
    pub fn count(&self, kind: u8) -> usize {
        self.frames.iter().filter(|(k, _, _)| *k == kind).count()
    }

    /// GOAWAY ENHANCE_YOUR_CALM, then the connection closed.
    pub fn calmed(&self) -> bool {
        self.closed && self.goaway.map(|(_, code)| code) == Some(ENHANCE_YOUR_CALM)
    }
}

enum Read {
    Frame(Frame),
    End(Option<String>),
}

/// A raw HTTP/2 connection: write what the test builds; the server's
/// frames queue up as they come (unless made with [`RawH2::unread`]).
pub struct RawH2 {
    write: OwnedWriteHalf,
    frames: Option<mpsc::UnboundedReceiver<Read>>,
    unread: Option<OwnedReadHalf>,
    _reader: Option<AbortOnDrop>,
}

impl RawH2 {
    /// The preface and an empty SETTINGS; the server's frames are read as they come.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<RawH2> {
        RawH2::open(addr, &settings(&[]), true).await
    }

    /// The preface and `first` (a SETTINGS frame); nothing is read from the
    /// server until [`RawH2::outcome`] is asked for.
    pub async fn unread(addr: SocketAddr, first: &[u8]) -> anyhow::Result<RawH2> {
        RawH2::open(addr, first, false).await
    }

    async fn open(addr: SocketAddr, first: &[u8], read: bool) -> anyhow::Result<RawH2> {
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to {addr} timed out"))??;
        tcp.set_nodelay(true)?;
        let (r, mut w) = tcp.into_split();
        w.write_all(PREFACE).await?;
        w.write_all(first).await?;
        let mut raw = RawH2 {
            write: w,
            frames: None,
            unread: Some(r),
            _reader: None,
        };
        if read {
            raw.start_reading();
        }
        Ok(raw)
    }

    fn start_reading(&mut self) {
        let Some(mut r) = self.unread.take() else {
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        self.frames = Some(rx);
        self._reader = Some(AbortOnDrop::spawn(async move {
            loop {
                let mut head = [0u8; 9];
                if let Err(e) = r.read_exact(&mut head).await {
                    let eof = e.kind() == std::io::ErrorKind::UnexpectedEof;
                    let _ = tx.send(Read::End((!eof).then(|| e.to_string())));
                    return;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0u8; len];
                if let Err(e) = r.read_exact(&mut payload).await {
                    let _ = tx.send(Read::End(Some(e.to_string())));
                    return;
                }
                let f = Frame {
                    kind: head[3],
                    flags: head[4],
                    stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                    payload,
                };
                if tx.send(Read::Frame(f)).is_err() {
                    return;
                }
            }
        }));
    }

    /// Write `bytes`; `false` once the server no longer takes them (it
    /// closed, or `limit` passed with its receive window full).
    pub async fn send(&mut self, bytes: &[u8], limit: Duration) -> bool {
        matches!(
            tokio::time::timeout(limit, self.write.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Write `unit` `times` times in batches; stops early once the server
    /// no longer takes them. How many were written.
    pub async fn flood(&mut self, unit: &[u8], times: usize, limit: Duration) -> usize {
        const BATCH: usize = 512;
        let batch = unit.repeat(BATCH);
        let deadline = tokio::time::Instant::now() + limit;
        let mut sent = 0;
        while sent < times {
            let n = BATCH.min(times - sent);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !self.send(&batch[..n * unit.len()], left).await {
                break;
            }
            sent += n;
        }
        sent
    }

    /// The next frame within `limit`; `None` at the end of the connection.
    pub async fn next(&mut self, limit: Duration) -> anyhow::Result<Option<Frame>> {
        self.start_reading();
        let rx = self.frames.as_mut().ok_or_else(|| anyhow!("not reading"))?;
        match tokio::time::timeout(limit, rx.recv()).await {
            Ok(Some(Read::Frame(f))) => Ok(Some(f)),
            Ok(Some(Read::End(_))) | Ok(None) => Ok(None),
            Err(_) => Err(anyhow!("no frame within {limit:?}")),
        }
    }

    /// Everything the server sends until it closes the connection, or
    /// `limit` passes (then `closed` is false). Acknowledges nothing.
    pub async fn outcome(&mut self, limit: Duration) -> Outcome {
        self.start_reading();
        let mut out = Outcome::default();
        let Some(rx) = self.frames.as_mut() else {
            return out;
        };
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Read::Frame(f))) => {
                    if let Some(g) = f.goaway() {
                        out.goaway = Some(g);
                    }
                    out.frames.push((f.kind, f.flags, f.stream));
                }
                Ok(Some(Read::End(error))) => {
                    out.closed = true;
                    out.error = error;
                    return out;
                }
                Ok(None) => {
                    out.closed = true;
                    return out;
                }
                Err(_) => return out,
            }
        }
    }
}
