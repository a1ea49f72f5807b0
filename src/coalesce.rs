//! One write per wake-up of a connection, however many frames it sends.
//!
//! h2 writes every DATA frame of 256 bytes or more in a `writev` of its own:
//! its encoder holds one such frame at a time and flushes before taking the
//! next. With many small calls on a connection that is one system call per
//! message and direction, and on loopback the system calls are most of a
//! sidecar's CPU. [`Coalesced`] wraps the socket so that what the
//! connection writes and flushes while its task is being polled only fills a
//! buffer; [`Flushing`], wrapped around the connection's future, writes that
//! buffer out once the poll returns. Frames queued by every stream since the
//! last wake-up leave in one write.
//!
//! The buffer is bounded: a write that would take it past [`HIGH_WATER`]
//! bytes writes it out first and waits for the socket, so a slow reader
//! still pushes back. A write of [`DIRECT`] bytes or more goes straight to
//! the socket after what is buffered, so large bodies are not copied.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most the buffer holds: a write that would take it past this writes
/// the buffer out first.
pub const HIGH_WATER: usize = 64 * 1024;
/// A write this large skips the copy.
pub const DIRECT: usize = 16 * 1024;

struct Shared<T> {
    io: T,
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    start: usize,
    /// A deferred write failed: the connection hears of it on its next call.
    failed: Option<io::ErrorKind>,
}

impl<T: AsyncWrite + Unpin> Shared<T> {
    fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    fn check(&self) -> io::Result<()> {
        match self.failed {
            Some(kind) => Err(io::Error::new(kind, "an earlier write to the peer failed")),
            None => Ok(()),
        }
    }

    /// Writes the buffer to the socket until it is empty or the socket is full.
    fn write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.start < self.buf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.buf[self.start..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.start += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.buf.clear();
        self.start = 0;
        if self.buf.capacity() > HIGH_WATER {
            self.buf.shrink_to(HIGH_WATER);
        }
        Poll::Ready(Ok(()))
    }

    /// Everything buffered written out, unless an earlier write failed.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        self.write_out(cx)
    }

    /// Room for `incoming` more bytes: writes out first when they would take
    /// the buffer past [`HIGH_WATER`], so it never grows past that.
    fn make_room(&mut self, cx: &mut Context<'_>, incoming: usize) -> Poll<io::Result<()>> {
        self.check()?;
        if self.pending() + incoming > HIGH_WATER && self.write_out(cx)?.is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

fn lock<T>(shared: &Mutex<Shared<T>>) -> MutexGuard<'_, Shared<T>> {
    // Nothing panics while the lock is held; a poisoned lock still holds
    // consistent bytes.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Wraps `io`: the connection reads and writes through the first half, and
/// its future is wrapped in [`Flushing`] with the second.
pub fn coalesce<T>(io: T) -> (Coalesced<T>, Flusher<T>) {
    let shared = Arc::new(Mutex::new(Shared {
        io,
        buf: Vec::new(),
        start: 0,
        failed: None,
    }));
    (Coalesced(shared.clone()), Flusher(shared))
}

/// The socket as the connection sees it.
pub struct Coalesced<T>(Arc<Mutex<Shared<T>>>);

/// The other handle on the buffer, for [`Flushing`].
pub struct Flusher<T>(Arc<Mutex<Shared<T>>>);

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut s = lock(&self.0);
        s.check()?;
        Pin::new(&mut s.io).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut s = lock(&self.0);
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total >= DIRECT {
            // Large: what is buffered goes first, then this straight from
            // its own memory.
            if s.drain(cx)?.is_pending() {
                return Poll::Pending;
            }
            return Pin::new(&mut s.io).poll_write_vectored(cx, bufs);
        }
        if s.make_room(cx, total)?.is_pending() {
            return Poll::Pending;
        }
        for b in bufs {
            s.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Deferred to [`Flushing`]: the buffer never holds more than [`HIGH_WATER`].
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(&self.0);
        s.make_room(cx, 0)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(&self.0);
        if s.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut s.io).poll_shutdown(cx)
    }
}

/// A connection's future that writes out what the connection buffered
/// each time it has been polled.
pub struct Flushing<F, T> {
    inner: F,
    flusher: Flusher<T>,
}

impl<F, T> Flushing<F, T> {
    pub fn new(inner: F, flusher: Flusher<T>) -> Self {
        Flushing { inner, flusher }
    }

    pub fn inner_mut(&mut self) -> &mut F {
        &mut self.inner
    }
}

impl<F, T> Future for Flushing<F, T>
where
    F: Future + Unpin,
    T: AsyncWrite + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let out = Pin::new(&mut self.inner).poll(cx);
        let mut s = lock(&self.flusher.0);
        if s.failed.is_none() && s.pending() > 0 {
            if let Poll::Ready(Err(e)) = s.write_out(cx) {
                // The connection learns of it on its next read or write.
                s.failed = Some(e.kind());
                if out.is_pending() {
                    cx.waker().wake_by_ref();
                }
            }
        }
        // A socket that is full registered this task for writability:
        // the next wake-up writes the rest.
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the writes that reach the socket.
    struct Counting {
        inner: tokio::io::DuplexStream,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.inner).poll_write(cx, data);
            if r.is_ready() {
                self.writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            r
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    fn counting(
        cap: usize,
    ) -> (
        Counting,
        tokio::io::DuplexStream,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let (a, b) = tokio::io::duplex(cap);
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        (
            Counting {
                inner: a,
                writes: writes.clone(),
            },
            b,
            writes,
        )
    }

    #[tokio::test]
    async fn frames_written_in_one_poll_leave_in_one_write() {
        let (sock, mut peer, writes) = counting(1 << 20);
        let (mut io, flusher) = coalesce(sock);
        let conn = Box::pin(async move {
            for i in 0..10u8 {
                io.write_all(&[i; 1000]).await?;
                io.flush().await?;
            }
            io.shutdown().await?;
            Ok::<_, io::Error>(())
        });
        Flushing::new(conn, flusher).await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 10_000);
        assert!(got
            .chunks(1000)
            .enumerate()
            .all(|(i, c)| c.iter().all(|b| *b == i as u8)));
        assert_eq!(writes.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_full_socket_pushes_back_and_nothing_is_lost() {
        // The peer takes 4 KiB at a time; the writer sends 1 MiB.
        let (sock, mut peer, _) = counting(4096);
        let (mut io, flusher) = coalesce(sock);
        let conn = Box::pin(async move {
            for i in 0..1024u32 {
                io.write_all(&[(i % 251) as u8; 1024]).await?;
                io.flush().await?;
            }
            io.shutdown().await?;
            Ok::<_, io::Error>(())
        });
        let writer = tokio::spawn(Flushing::new(conn, flusher));
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(got.len(), 1 << 20);
        for (i, chunk) in got.chunks(1024).enumerate() {
            assert!(chunk.iter().all(|b| *b == (i % 251) as u8), "chunk {i}");
        }
    }

    #[tokio::test]
    async fn large_writes_keep_their_order_behind_buffered_bytes() {
        let (sock, mut peer, _) = counting(1 << 20);
        let (mut io, flusher) = coalesce(sock);
        let big: Vec<u8> = (0..DIRECT * 2).map(|i| (i % 253) as u8).collect();
        let frame = [b"frame".as_slice(), &big].concat();
        let expected = [b"head".as_slice(), &frame].concat();
        let conn = Box::pin(async move {
            io.write_all(b"head").await?;
            let bufs = [io::IoSlice::new(b"frame"), io::IoSlice::new(&big)];
            let sent = io.write_vectored(&bufs).await?;
            io.write_all(&frame[sent..]).await?;
            io.shutdown().await
        });
        Flushing::new(conn, flusher).await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_failed_deferred_write_reaches_the_connection() {
        let (sock, peer, _) = counting(1024);
        drop(peer);
        let (mut io, flusher) = coalesce(sock);
        let conn = Box::pin(async move {
            io.write_all(b"lost").await?;
            io.flush().await?;
            // The write out after this poll fails; the next call says so.
            tokio::task::yield_now().await;
            io.write_all(b"more").await
        });
        let err = Flushing::new(conn, flusher).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
