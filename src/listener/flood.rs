//! A downstream HTTP/2 connection's guard against control-frame floods and
//! peers that do not read.
//!
//! h2 answers every PING and SETTINGS and applies every WINDOW_UPDATE,
//! PRIORITY and RST_STREAM a client sends, without limit: a client can keep
//! a core busy with frames that cost it nothing. [`Guard`] sits between h2
//! and the connection's write buffer (`coalesce`, then the socket) and
//! reads the 9-byte head of every frame that passes, in
//! both directions (frames split across reads are followed). It counts the
//! client's control frames — WINDOW_UPDATE, PING, SETTINGS, PRIORITY,
//! RST_STREAM, GOAWAY, frames of unknown types, and empty DATA frames that
//! do not end their stream — against the work they
//! can legitimately come with, as Envoy's
//! `max_inbound_window_update_frames_per_data_frame_sent` and
//! `max_inbound_priority_frames_per_stream` do:
//!
//! ```text
//! allowed = per_stream × (1 + streams opened)
//!         + per_data_frame × DATA frames carrying bytes (either way)
//!         + one per second the connection has been open
//! ```
//!
//! A client past that has nothing more read from it: its [`Alarm`] goes
//! off and the server loop ends the connection with GOAWAY
//! ENHANCE_YOUR_CALM. A real client stays far below: it sends a
//! WINDOW_UPDATE per half window of data received, a few SETTINGS, keepalive
//! PINGs at most every few seconds (the allowance per second covers a
//! long-lived idle connection's), at most one RST_STREAM per stream.
//!
//! The same guard bounds a peer that does not read: a write, flush or
//! shutdown of h2's that stays blocked for `write_stall_timeout` (the write
//! buffer full because the socket is) fails with `TimedOut`, which ends the
//! connection. After a flood the connection
//! gets [`CALM_FLUSH`] at most to hand its GOAWAY to the socket.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The client connection preface, passed before the first frame.
const PREFACE_LEN: usize = 24;
/// Every HTTP/2 frame starts with a head of this many bytes.
const HEAD_LEN: usize = 9;
/// How long a connection ended for a flood may take to write its GOAWAY.
pub const CALM_FLUSH: Duration = Duration::from_secs(1);

const DATA: u8 = 0x0;
const END_STREAM: u8 = 0x1;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;

/// A listener's bounds, from its `limits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Control frames allowed per stream the client opened (and once more
    /// for the connection itself).
    pub per_stream: u32,
    /// Control frames allowed per DATA frame with a payload, either way.
    pub per_data_frame: u32,
    /// A write blocked this long on a peer that does not read ends the connection.
    pub write_stall_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_stream: 100,
            per_data_frame: 10,
            write_stall_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the guard stopped reading a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flood {
    /// The type of the frame that went past the cap.
    pub kind: u8,
    /// Control frames counted, that one included.
    pub control_frames: u64,
    /// What was allowed when it arrived.
    pub allowed: u64,
}

impl std::fmt::Display for Flood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} control frames (the last a {}) where {} were allowed",
            self.control_frames,
            frame_name(self.kind),
            self.allowed
        )
    }
}

fn frame_name(kind: u8) -> &'static str {
    match kind {
        0x2 => "PRIORITY",
        0x3 => "RST_STREAM",
        0x4 => "SETTINGS",
        0x5 => "PUSH_PROMISE",
        0x6 => "PING",
        0x7 => "GOAWAY",
        0x8 => "WINDOW_UPDATE",
        _ => "frame of an unknown type",
    }
}

/// The server loop's side of a [`Guard`]: whether the client flooded.
#[derive(Clone, Debug, Default)]
pub struct Alarm(Arc<AlarmState>);

#[derive(Debug, Default)]
struct AlarmState {
    tripped: AtomicBool,
    flood: Mutex<Option<Flood>>,
}

impl Alarm {
    /// True once the client went past its control-frame cap.
    pub fn tripped(&self) -> bool {
        self.0.tripped.load(Ordering::Acquire)
    }

    /// What the client sent, once [`tripped`](Alarm::tripped).
    pub fn flood(&self) -> Option<Flood> {
        self.0.flood.lock().ok().and_then(|f| f.clone())
    }

    fn trip(&self, flood: Flood) {
        if let Ok(mut f) = self.0.flood.lock() {
            f.get_or_insert(flood);
        }
        self.0.tripped.store(true, Ordering::Release);
    }
}

/// A frame head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    len: u32,
    kind: u8,
    flags: u8,
}

/// Follows frame boundaries in one direction of a byte stream.
#[derive(Debug)]
struct Frames {
    /// Bytes to pass before the next head: the preface, or a payload.
    skip: usize,
    head: [u8; HEAD_LEN],
    have: usize,
}

impl Frames {
    /// Frames from the first byte (the server's direction).
    fn new() -> Self {
        Frames {
            skip: 0,
            head: [0; HEAD_LEN],
            have: 0,
        }
    }

    /// The preface first, then frames (the client's direction).
    fn after_preface() -> Self {
        Frames {
            skip: PREFACE_LEN,
            ..Frames::new()
        }
    }

    /// Reads `bytes` as the next part of the stream and hands each complete
    /// head to `on`. When `on` says stop, returns the offset in `bytes`
    /// where that frame's head began (0 when it began in an earlier part).
    fn feed(&mut self, mut bytes: &[u8], mut on: impl FnMut(Head) -> bool) -> Option<usize> {
        let total = bytes.len();
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let head_start = (total - bytes.len()).saturating_sub(self.have);
            let n = (HEAD_LEN - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == HEAD_LEN {
                self.have = 0;
                let h = &self.head;
                let head = Head {
                    len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
                    kind: h[3],
                    flags: h[4],
                };
                self.skip = head.len as usize;
                if !on(head) {
                    return Some(head_start);
                }
            }
        }
        None
    }
}

/// What the client may send, and what it has.
#[derive(Debug)]
struct Budget {
    limits: Limits,
    opened: Instant,
    control: u64,
    streams: u64,
    data: u64,
}

impl Budget {
    fn allowed(&self) -> u64 {
        u64::from(self.limits.per_stream)
            .saturating_mul(self.streams.saturating_add(1))
            .saturating_add(u64::from(self.limits.per_data_frame).saturating_mul(self.data))
    }

    /// Counts one frame from the client; `Err` when it goes past the cap.
    fn inbound(&mut self, head: Head) -> Result<(), Flood> {
        match head.kind {
            DATA if head.len > 0 => {
                self.data += 1;
                Ok(())
            }
            // An empty DATA that does not end its stream carries nothing:
            // counted with the control frames, as it costs as much.
            DATA if head.flags & END_STREAM != 0 => Ok(()),
            HEADERS => {
                self.streams += 1;
                Ok(())
            }
            // Bounded by h2 itself (header list size), and part of a HEADERS.
            CONTINUATION => Ok(()),
            kind => {
                self.control += 1;
                let allowed = self.allowed();
                if self.control <= allowed {
                    return Ok(());
                }
                // Only past the counts: the clock is read rarely.
                let allowed = allowed.saturating_add(self.opened.elapsed().as_secs());
                if self.control <= allowed {
                    return Ok(());
                }
                Err(Flood {
                    kind,
                    control_frames: self.control,
                    allowed,
                })
            }
        }
    }

    /// Counts one frame of the server's.
    fn outbound(&mut self, head: Head) {
        if head.kind == DATA && head.len > 0 {
            self.data += 1;
        }
    }
}

/// A write side blocked on the socket, and since when.
#[derive(Debug)]
struct Stall {
    limit: Duration,
    /// Set while blocked; its deadline is when the connection gives up.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Stall {
    fn new(limit: Duration) -> Self {
        Stall {
            limit,
            timer: None,
            armed: false,
        }
    }

    /// The socket took nothing: start the clock (or keep it running) and
    /// fail once it has run out.
    fn blocked<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let deadline = Instant::now() + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer read nothing for {:?}", self.limit),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn moved(&mut self) {
        self.armed = false;
    }

    /// From now on give up after `limit` at most.
    fn shorten(&mut self, limit: Duration) {
        if limit >= self.limit {
            return;
        }
        self.limit = limit;
        if let (true, Some(timer)) = (self.armed, self.timer.as_mut()) {
            let deadline = (Instant::now() + limit).min(timer.deadline());
            timer.as_mut().reset(deadline);
        }
    }
}

/// The connection's socket as h2 sees it. See the module docs.
#[derive(Debug)]
pub struct Guard<T> {
    inner: T,
    inbound: Frames,
    outbound: Frames,
    budget: Budget,
    stall: Stall,
    alarm: Alarm,
}

impl<T> Guard<T> {
    /// Guards `io`, whose first bytes read are the client's preface.
    pub fn new(io: T, limits: &Limits) -> (Guard<T>, Alarm) {
        let alarm = Alarm::default();
        let guard = Guard {
            inner: io,
            inbound: Frames::after_preface(),
            outbound: Frames::new(),
            budget: Budget {
                limits: *limits,
                opened: Instant::now(),
                control: 0,
                streams: 0,
                data: 0,
            },
            stall: Stall::new(limits.write_stall_timeout),
            alarm: alarm.clone(),
        };
        (guard, alarm)
    }

    fn count_written(&mut self, bytes: &[u8]) {
        let budget = &mut self.budget;
        self.outbound.feed(bytes, |head| {
            budget.outbound(head);
            true
        });
    }

    fn written<R>(
        &mut self,
        res: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        match res {
            Poll::Pending => self.stall.blocked(cx),
            done => {
                self.stall.moved();
                done
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.alarm.tripped() {
            // Nothing more is read; the server loop is closing the connection.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let filled = buf.filled().len();
        if filled == before {
            // The end of the stream.
            return Poll::Ready(Ok(()));
        }
        let budget = &mut this.budget;
        let mut flood = None;
        let cut = this.inbound.feed(&buf.filled()[before..filled], |head| {
            match budget.inbound(head) {
                Ok(()) => true,
                Err(f) => {
                    flood = Some(f);
                    false
                }
            }
        });
        if let (Some(cut), Some(flood)) = (cut, flood) {
            tracing::debug!(%flood, "HTTP/2 control-frame flood");
            this.alarm.trip(flood);
            this.stall.shorten(CALM_FLUSH);
            buf.set_filled(before + cut);
            if cut == 0 {
                // Nothing of this read may pass, and an empty read would
                // look like the end of the stream.
                return Poll::Pending;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = res {
            this.count_written(&data[..n.min(data.len())]);
        }
        this.written(res, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            let mut left = n;
            for b in bufs {
                if left == 0 {
                    break;
                }
                let take = left.min(b.len());
                this.count_written(&b[..take]);
                left -= take;
            }
        }
        this.written(res, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_flush(cx);
        this.written(res, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.written(res, cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    fn window_update() -> Vec<u8> {
        frame(0x8, &[0, 0, 0, 1])
    }

    fn limits(per_stream: u32, per_data_frame: u32) -> Limits {
        Limits {
            per_stream,
            per_data_frame,
            write_stall_timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn frame_heads_are_found_however_the_bytes_are_split() {
        let mut stream = PREFACE.to_vec();
        let frames = [
            frame(0x4, &[]),
            frame(0x1, &[1, 2, 3]),
            frame(0x0, &[7; 40]),
            window_update(),
            frame(0x0, &[]),
        ];
        for f in &frames {
            stream.extend_from_slice(f);
        }
        let want = vec![(0x4, 0), (0x1, 3), (0x0, 40), (0x8, 4), (0x0, 0)];
        for size in [1, 2, 5, 9, 10, 24, 33, stream.len()] {
            let mut frames = Frames::after_preface();
            let mut seen = Vec::new();
            for part in stream.chunks(size) {
                assert_eq!(
                    frames.feed(part, |h| {
                        seen.push((h.kind, h.len));
                        true
                    }),
                    None
                );
            }
            assert_eq!(seen, want, "parts of {size} bytes");
        }
    }

    #[test]
    fn a_stop_points_at_the_start_of_that_frame() {
        let mut bytes = frame(0x4, &[]);
        bytes.extend_from_slice(&window_update());
        let mut frames = Frames::new();
        let cut = frames.feed(&bytes, |h| h.kind != 0x8);
        assert_eq!(cut, Some(9));
        // A head begun in an earlier part: nothing of this part passes.
        let mut frames = Frames::new();
        assert_eq!(frames.feed(&bytes[..12], |h| h.kind != 0x8), None);
        assert_eq!(frames.feed(&bytes[12..], |h| h.kind != 0x8), Some(0));
    }

    #[test]
    fn the_budget_grows_with_streams_and_data() {
        let mut b = Budget {
            limits: limits(3, 2),
            opened: Instant::now(),
            control: 0,
            streams: 0,
            data: 0,
        };
        let wu = Head {
            len: 4,
            kind: 0x8,
            flags: 0,
        };
        for _ in 0..3 {
            b.inbound(wu).unwrap();
        }
        let flood = b.inbound(wu).unwrap_err();
        assert_eq!(
            (flood.kind, flood.control_frames, flood.allowed),
            (0x8, 4, 3)
        );
        assert!(flood.to_string().contains("WINDOW_UPDATE"), "{flood}");

        let mut b = Budget { control: 0, ..b };
        b.inbound(Head {
            len: 10,
            kind: HEADERS,
            flags: 4,
        })
        .unwrap();
        // Empty DATA earns nothing; DATA either way earns 2 each.
        b.inbound(Head {
            len: 0,
            kind: DATA,
            flags: END_STREAM,
        })
        .unwrap();
        b.inbound(Head {
            len: 1,
            kind: DATA,
            flags: 0,
        })
        .unwrap();
        b.outbound(Head {
            len: 1,
            kind: DATA,
            flags: 0,
        });
        b.outbound(Head {
            len: 0,
            kind: DATA,
            flags: 0,
        });
        assert_eq!(b.allowed(), 3 * 2 + 2 * 2);
        assert_eq!(b.control, 0);
        // An empty DATA that does not end its stream counts as control.
        b.inbound(Head {
            len: 0,
            kind: DATA,
            flags: 0,
        })
        .unwrap();
        for _ in 0..9 {
            b.inbound(Head {
                len: 8,
                kind: 0x6,
                flags: 0,
            })
            .unwrap();
        }
        assert!(b
            .inbound(Head {
                len: 8,
                kind: 0x6,
                flags: 0
            })
            .is_err());
    }

    #[tokio::test]
    async fn a_flood_stops_the_reading_and_trips_the_alarm() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let (mut guard, alarm) = Guard::new(server, &limits(10, 10));
        let mut sent = PREFACE.to_vec();
        sent.extend_from_slice(&frame(0x4, &[]));
        for _ in 0..100 {
            sent.extend_from_slice(&window_update());
        }
        client.write_all(&sent).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 100];
        let read = tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                let n = guard.read(&mut buf).await.unwrap();
                assert!(n > 0, "an end of stream was made up");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(read.is_err(), "the reading went on");
        assert!(alarm.tripped());
        // The preface, the SETTINGS and 9 WINDOW_UPDATEs: 10 control frames.
        assert_eq!(got, sent[..PREFACE.len() + 9 + 9 * 13]);
        let flood = alarm.flood().unwrap();
        assert_eq!((flood.control_frames, flood.allowed), (11, 10));
    }

    #[tokio::test]
    async fn data_the_server_sends_buys_the_client_window_updates() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let (mut guard, alarm) = Guard::new(server, &limits(1, 2));
        // 20 DATA frames out, in writes that split their heads.
        let mut out = Vec::new();
        for _ in 0..20 {
            out.extend_from_slice(&frame(0x0, &[1; 100]));
        }
        for part in out.chunks(7) {
            guard.write_all(part).await.unwrap();
        }
        let mut sent = PREFACE.to_vec();
        for _ in 0..40 {
            sent.extend_from_slice(&window_update());
        }
        client.write_all(&sent).await.unwrap();
        let mut got = vec![0u8; sent.len()];
        guard.read_exact(&mut got).await.unwrap();
        assert!(!alarm.tripped(), "{:?}", alarm.flood());
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_does_not_read_is_given_up_on() {
        let (_client, server) = tokio::io::duplex(1024);
        let mut limits = limits(10, 10);
        limits.write_stall_timeout = Duration::from_secs(30);
        let (mut guard, _alarm) = Guard::new(server, &limits);
        let started = Instant::now();
        let err = loop {
            if let Err(e) = guard.write_all(&[0u8; 512]).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed().as_secs(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_slowly_is_not() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut guard, _alarm) = Guard::new(server, &limits(10, 10));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 256];
            let mut total = 0;
            while total < 64 * 1024 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                total += client.read(&mut buf).await.unwrap();
            }
        });
        // Each write waits up to 20 s for room: never 30 s.
        for _ in 0..128 {
            guard.write_all(&[0u8; 512]).await.unwrap();
        }
        reader.abort();
    }
}
