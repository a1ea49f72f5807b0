//! A light scan of the HTTP/1.1 request heads of a connection, on the read
//! side below hyper, for the one ambiguity hyper's parser hides: a head
//! with both `Content-Length` and `Transfer-Encoding`. hyper reads such a
//! request as chunked and drops the length before the request reaches the
//! proxy (and closes the connection after the answer, RFC 9112 §6.3); a
//! sidecar in front of apps with lenient parsers refuses it with 400
//! instead, as Envoy does by default.
//!
//! The scan looks at the bytes hyper reads, as they come, without copying
//! them: in a head it checks the first bytes of each line against the two
//! names and jumps to the next line with `memchr`; it steps over each body
//! by its framing as hyper reads it (a `Content-Length` is skipped whole,
//! chunked data too, only the chunk-size lines are read), so a body or a
//! pipelined request that carries such text is never taken for a head.
//! Its states follow hyper 1.x's parser (httparse for the head, hyper's
//! chunked decoder) byte for byte; where the bytes are ones hyper refuses,
//! hyper ends the connection itself and the scan stops. A read may end at
//! any byte: the state carries over.
//!
//! The verdict goes to the connection's service through [`Verdict`]: the
//! number of the first head that had both (1 for the first request), which
//! the service compares with its own count of requests. hyper parses heads
//! in order and ends the connection after such a request, so the first is
//! the only one that can reach the service, and the scan ends there.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const CONTENT_LENGTH: &[u8] = b"content-length:";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";
/// Which watched names a line may still start with.
const MAY_CL: u8 = 1;
const MAY_TE: u8 = 2;

/// The verdict the scan hands the connection's service.
#[derive(Debug, Default)]
pub struct Verdict {
    /// 1-based number of the first head with both `Content-Length` and
    /// `Transfer-Encoding`; 0 when there has been none.
    first_ambiguous: AtomicU64,
    /// Requests the service has taken so far.
    requests: AtomicU64,
}

impl Verdict {
    /// Called once per request, in order: whether this request's head had
    /// both `Content-Length` and `Transfer-Encoding`.
    pub fn next_request_ambiguous(&self) -> bool {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        self.first_ambiguous.load(Ordering::Acquire) == n
    }
}

/// Where the scan is in the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before a request line; empty lines are skipped (as httparse does).
    Start,
    /// After a CR before the request line.
    StartLf,
    /// The rest of a line that is not watched (the request line included).
    SkipLine,
    /// The first `pos` bytes of a header line matched the names in `may`.
    LineStart { pos: u8, may: u8 },
    /// A CR at the start of a line: the head ends at the LF.
    HeadEndLf,
    /// A `Content-Length` value: leading blanks, digits, trailing blanks.
    Length {
        value: u64,
        digits: bool,
        done: bool,
    },
    /// After the CR that ends a `Content-Length` line.
    LengthLf,
    /// A body of known length: this many bytes left.
    Body(u64),
    /// Chunked framing, as hyper's decoder reads it.
    Chunk(Chunk),
    /// Nothing more to scan: a head had both names (the connection ends
    /// after it), or bytes that hyper refuses (it ends the connection).
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

/// The scan's state across reads.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    /// Heads complete so far.
    heads: u64,
    /// Of the head being read.
    transfer_encoding: bool,
    saw_length: bool,
    length: Option<u64>,
    verdict: Arc<Verdict>,
}

impl Scanner {
    pub fn new(verdict: Arc<Verdict>) -> Self {
        Scanner {
            state: State::Start,
            heads: 0,
            transfer_encoding: false,
            saw_length: false,
            length: None,
            verdict,
        }
    }

    /// Take the next bytes the connection read.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.state == State::Off {
                return;
            }
            let used = self.step(bytes);
            bytes = &bytes[used.min(bytes.len())..];
        }
    }

    /// One step from the state on `bytes` (not empty): the bytes used.
    fn step(&mut self, bytes: &[u8]) -> usize {
        let b = bytes[0];
        match self.state {
            State::Start => {
                self.state = match b {
                    b'\n' => State::Start,
                    b'\r' => State::StartLf,
                    _ => State::SkipLine,
                };
                if self.state == State::SkipLine {
                    // The request line: the head starts.
                    self.transfer_encoding = false;
                    self.saw_length = false;
                    self.length = None;
                }
                1
            }
            State::StartLf => {
                self.state = if b == b'\n' { State::Start } else { State::Off };
                1
            }
            State::SkipLine => match memchr::memchr(b'\n', bytes) {
                Some(i) => {
                    self.state = State::LineStart {
                        pos: 0,
                        may: MAY_CL | MAY_TE,
                    };
                    i + 1
                }
                None => bytes.len(),
            },
            State::LineStart { pos, may } => {
                self.line_start(b, pos, may);
                1
            }
            State::HeadEndLf => {
                if b == b'\n' {
                    self.head_end();
                } else {
                    self.state = State::Off;
                }
                1
            }
            State::Length {
                value,
                digits,
                done,
            } => {
                self.state = match b {
                    b' ' | b'\t' => State::Length {
                        value,
                        digits,
                        done: digits,
                    },
                    b'0'..=b'9' if !done => match value
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(b - b'0')))
                    {
                        Some(value) => State::Length {
                            value,
                            digits: true,
                            done,
                        },
                        None => self.bad_length(),
                    },
                    b'\r' | b'\n' if digits => match self.length {
                        // Two lengths that differ: hyper refuses the head.
                        Some(other) if other != value => self.bad_length(),
                        _ => {
                            self.length = Some(value);
                            if b == b'\r' {
                                State::LengthLf
                            } else {
                                Self::line()
                            }
                        }
                    },
                    _ => self.bad_length(),
                };
                1
            }
            State::LengthLf => {
                self.state = if b == b'\n' { Self::line() } else { State::Off };
                1
            }
            State::Body(left) => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::Start
                } else {
                    State::Body(left)
                };
                n
            }
            State::Chunk(c) => self.chunk(c, bytes),
            State::Off => bytes.len(),
        }
    }

    fn line() -> State {
        State::LineStart {
            pos: 0,
            may: MAY_CL | MAY_TE,
        }
    }

    /// Byte `b` at position `pos` of a header line that may still start
    /// with the names in `may`.
    fn line_start(&mut self, b: u8, pos: u8, may: u8) {
        if pos == 0 {
            match b {
                b'\r' => return self.state = State::HeadEndLf,
                b'\n' => return self.head_end(),
                _ => {}
            }
        }
        if b == b'\n' {
            // A line shorter than either name (hyper refuses a header
            // line without a colon; the scan just goes on).
            return self.state = Self::line();
        }
        let lower = b.to_ascii_lowercase();
        let i = usize::from(pos);
        let mut still = 0;
        for (bit, name) in [(MAY_CL, CONTENT_LENGTH), (MAY_TE, TRANSFER_ENCODING)] {
            if may & bit != 0 && name.get(i) == Some(&lower) {
                if i + 1 == name.len() {
                    self.state = if bit == MAY_CL {
                        self.saw_length = true;
                        State::Length {
                            value: 0,
                            digits: false,
                            done: false,
                        }
                    } else {
                        self.transfer_encoding = true;
                        State::SkipLine
                    };
                    return;
                }
                still |= bit;
            }
        }
        self.state = if still == 0 {
            State::SkipLine
        } else {
            State::LineStart {
                pos: pos + 1,
                may: still,
            }
        };
    }

    /// A `Content-Length` value hyper cannot use: after a
    /// `Transfer-Encoding` line hyper ignores it (the head is still read as
    /// chunked, and is ambiguous); before one, hyper refuses the head.
    fn bad_length(&mut self) -> State {
        if self.transfer_encoding {
            State::SkipLine
        } else {
            State::Off
        }
    }

    /// The empty line that ends a head: judge it, then step over its body.
    fn head_end(&mut self) {
        self.heads += 1;
        self.state = if self.transfer_encoding && self.saw_length {
            self.verdict
                .first_ambiguous
                .store(self.heads, Ordering::Release);
            State::Off
        } else if self.transfer_encoding {
            State::Chunk(Chunk::Start)
        } else {
            match self.length {
                Some(n) if n > 0 => State::Body(n),
                _ => State::Start,
            }
        };
    }

    /// One step of chunked framing (hyper's `ChunkedState`): bytes used.
    fn chunk(&mut self, c: Chunk, bytes: &[u8]) -> usize {
        let b = bytes[0];
        let hex = |size: u64| {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return None,
            };
            size.checked_mul(16)?.checked_add(u64::from(d))
        };
        let next = match c {
            Chunk::Start => hex(0).map(Chunk::Size),
            Chunk::Size(size) => match b {
                b'\t' | b' ' => Some(Chunk::SizeLws(size)),
                b';' => Some(Chunk::Extension(size)),
                b'\r' => Some(Chunk::SizeLf(size)),
                // A size past 64 bits or a byte that is not hex: refused.
                _ => hex(size).map(Chunk::Size),
            },
            Chunk::SizeLws(size) => match b {
                b'\t' | b' ' => Some(Chunk::SizeLws(size)),
                b';' => Some(Chunk::Extension(size)),
                b'\r' => Some(Chunk::SizeLf(size)),
                _ => None,
            },
            Chunk::Extension(size) => {
                // hyper ends an extension at CR and refuses a bare LF in it.
                return match memchr::memchr2(b'\r', b'\n', bytes) {
                    Some(i) if bytes[i] == b'\r' => {
                        self.state = State::Chunk(Chunk::SizeLf(size));
                        i + 1
                    }
                    Some(i) => {
                        self.state = State::Off;
                        i + 1
                    }
                    None => bytes.len(),
                };
            }
            Chunk::SizeLf(size) => match (b, size) {
                (b'\n', 0) => Some(Chunk::EndCr),
                (b'\n', _) => Some(Chunk::Data(size)),
                _ => None,
            },
            Chunk::Data(left) => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                let left = left - n as u64;
                self.state = State::Chunk(if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left)
                });
                return n;
            }
            Chunk::DataCr => (b == b'\r').then_some(Chunk::DataLf),
            Chunk::DataLf => (b == b'\n').then_some(Chunk::Start),
            Chunk::Trailer => Some(if b == b'\r' {
                Chunk::TrailerLf
            } else {
                Chunk::Trailer
            }),
            Chunk::TrailerLf => (b == b'\n').then_some(Chunk::EndCr),
            Chunk::EndCr => Some(if b == b'\r' {
                Chunk::EndLf
            } else {
                Chunk::Trailer
            }),
            Chunk::EndLf => {
                self.state = if b == b'\n' { State::Start } else { State::Off };
                return 1;
            }
        };
        self.state = next.map_or(State::Off, State::Chunk);
        1
    }
}

/// A connection's byte stream with its request heads scanned as hyper
/// reads them. Writes pass through untouched.
pub struct HeadScan<S> {
    inner: S,
    scanner: Scanner,
}

impl<S> HeadScan<S> {
    /// `inner` scanned, and the verdict its service reads.
    pub fn new(inner: S) -> (Self, Arc<Verdict>) {
        let verdict = Arc::new(Verdict::default());
        let scanner = Scanner::new(verdict.clone());
        (HeadScan { inner, scanner }, verdict)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadScan<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if let Some(new) = buf.filled().get(before..) {
                this.scanner.feed(new);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadScan<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verdict of `bytes` fed in one piece: the first ambiguous head.
    fn first_ambiguous(pieces: &[&[u8]]) -> (u64, State, u64) {
        let verdict = Arc::new(Verdict::default());
        let mut s = Scanner::new(verdict.clone());
        for p in pieces {
            s.feed(p);
        }
        (
            verdict.first_ambiguous.load(Ordering::Relaxed),
            s.state,
            s.heads,
        )
    }

    /// Every split of `bytes` in two, and byte by byte, gives the verdict
    /// of the whole.
    fn same_at_every_split(bytes: &[u8]) -> (u64, State, u64) {
        let whole = first_ambiguous(&[bytes]);
        for i in 0..=bytes.len() {
            let (a, b) = bytes.split_at(i);
            assert_eq!(first_ambiguous(&[a, b]), whole, "split at {i}");
        }
        let bytes_one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(first_ambiguous(&bytes_one_by_one), whole, "byte by byte");
        whole
    }

    const BOTH: &[u8] =
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";

    #[test]
    fn finds_both_names_in_either_order_and_any_case() {
        assert_eq!(same_at_every_split(BOTH).0, 1);
        let te_first = b"POST / HTTP/1.1\r\nhost: x\r\nTRANSFER-encoding: chunked\r\ncontent-LENGTH:  7 \r\n\r\n";
        assert_eq!(same_at_every_split(te_first).0, 1);
        let any_value_after_te =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: abc\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(same_at_every_split(any_value_after_te).0, 1);
        let bare_lf =
            b"POST / HTTP/1.1\nHost: x\nContent-Length: 3\nTransfer-Encoding: chunked\n\n";
        assert_eq!(same_at_every_split(bare_lf).0, 1);
    }

    #[test]
    fn steps_over_bodies_that_carry_such_text() {
        // A Content-Length body and a chunked body (with an extension and
        // trailers) that both hold the text of an ambiguous head, then a
        // plain request, then an ambiguous head: the fourth.
        let fake = "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let stream = format!(
            "\r\nPOST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{fake}\
             POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x};ext=1\r\n{fake}\r\n0\r\nX-Trailer: Content-Length: 9\r\n\r\n\
             GET /c HTTP/1.1\r\nHost: x\r\n\r\n",
            fake.len(),
            fake.len(),
        );
        let mut bytes = stream.into_bytes();
        assert_eq!(same_at_every_split(&bytes), (0, State::Start, 3));
        bytes.extend_from_slice(BOTH);
        assert_eq!(same_at_every_split(&bytes), (4, State::Off, 4));
    }

    #[test]
    fn names_only_at_the_start_of_a_line() {
        let bytes = b"GET /?Content-Length:3 HTTP/1.1\r\nX-Transfer-Encoding: chunked\r\nContent-Lengthy: 3\r\nHost: x\r\n\r\n";
        assert_eq!(same_at_every_split(bytes), (0, State::Start, 1));
    }

    #[test]
    fn stops_at_what_hyper_refuses() {
        let cases: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n",
        ];
        for bytes in cases {
            let (bad, state, _) = same_at_every_split(bytes);
            assert_eq!(
                (bad, state),
                (0, State::Off),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn the_service_finds_its_request() {
        let verdict = Arc::new(Verdict::default());
        let mut s = Scanner::new(verdict.clone());
        s.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        s.feed(BOTH);
        assert!(!verdict.next_request_ambiguous());
        assert!(verdict.next_request_ambiguous());
        assert!(!verdict.next_request_ambiguous());
    }
}
