//! Protocol detection: read the first bytes of a connection, decide whether
//! it speaks HTTP, and hand those bytes back in front of the stream.
//!
//! A client-first protocol shows itself at once (the HTTP/2 preface, an
//! HTTP/1 method). A server-first protocol (MySQL, SMTP, …) sends nothing
//! until the server greets it, so detection ends on a short timeout and the
//! connection is treated as opaque TCP; `opaque_ports` skip the wait.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Enough for any HTTP method token and the space after it.
const MAX_METHOD: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http,
    Opaque,
}

/// What the first bytes say: `None` while more bytes could still decide.
pub fn classify(bytes: &[u8]) -> Option<Detected> {
    if bytes.is_empty() {
        return None;
    }
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http);
    }
    // An HTTP/1 request line starts with a method token (letters) and a space.
    for (i, &b) in bytes.iter().enumerate().take(MAX_METHOD) {
        match b {
            b' ' if i > 0 => return Some(Detected::Http),
            b'A'..=b'Z' | b'a'..=b'z' | b'-' | b'_' => {}
            _ => return Some(Detected::Opaque),
        }
    }
    (bytes.len() >= MAX_METHOD).then_some(Detected::Opaque)
}

/// Read until the protocol is known or `timeout` passes (then: opaque).
pub async fn detect<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> io::Result<(Detected, Bytes)> {
    let mut buf = Vec::with_capacity(64);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(d) = classify(&buf) {
            return Ok((d, buf.into()));
        }
        let mut chunk = [0u8; 64];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => return Ok((Detected::Opaque, buf.into())),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok((Detected::Opaque, buf.into())),
        }
    }
}

/// Whether the client speaks HTTP/2: reads (after `read`, the bytes
/// already taken) until its first bytes match or rule out the HTTP/2
/// preface. Returns every byte read, to be put back in front of the stream.
pub async fn h2_preface<S: AsyncRead + Unpin>(
    stream: &mut S,
    read: Bytes,
    timeout: Duration,
) -> io::Result<(bool, Bytes)> {
    let mut buf = Vec::from(read);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok((false, buf.into()));
        }
        if n == H2_PREFACE.len() {
            return Ok((true, buf.into()));
        }
        let mut chunk = [0u8; 64];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => return Ok((false, buf.into())),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        }
    }
}

/// A stream with bytes already read put back in front of it.
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
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

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http));
        assert_eq!(
            classify(b"POST"),
            None,
            "a method without its space yet: wait"
        );
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http));
        assert_eq!(classify(&H2_PREFACE[..10]), None);
        assert_eq!(
            classify(b"\x16\x03\x01\x02\x00"),
            Some(Detected::Opaque),
            "TLS"
        );
        assert_eq!(classify(b"\x00\x00\x00\x01"), Some(Detected::Opaque));
        assert_eq!(
            classify(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
            Some(Detected::Opaque)
        );
        assert_eq!(classify(b""), None);
    }

    #[tokio::test]
    async fn detects_and_rewinds() {
        let (mut client, server) = tokio::io::duplex(1024);
        use tokio::io::AsyncWriteExt;
        client.write_all(b"GET /x HTTP/1.1\r\n\r\n").await.unwrap();
        let mut server = server;
        let (d, prefix) = detect(&mut server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(d, Detected::Http);
        let mut r = Rewind::new(prefix, server);
        let mut all = vec![0u8; 19];
        r.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, b"GET /x HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn tells_the_http2_preface_from_http1() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(1024);
        // The preface in two pieces, the first already read by detection.
        client.write_all(&H2_PREFACE[5..]).await.unwrap();
        client.write_all(b"\x00\x00").await.unwrap();
        let read = Bytes::from_static(&H2_PREFACE[..5]);
        let (h2, bytes) = h2_preface(&mut server, read, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(h2);
        assert!(
            bytes.starts_with(H2_PREFACE),
            "every byte read is handed back"
        );

        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"PRI /x HTTP/1.1\r\n").await.unwrap();
        let (h2, bytes) = h2_preface(&mut server, Bytes::new(), Duration::from_secs(1))
            .await
            .unwrap();
        assert!(!h2, "an HTTP/1.1 request that starts like the preface");
        assert_eq!(&bytes[..], b"PRI /x HTTP/1.1\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_clients_are_opaque_after_the_timeout() {
        let (_client, mut server) = tokio::io::duplex(64);
        let (d, prefix) = detect(&mut server, Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(d, Detected::Opaque);
        assert!(prefix.is_empty());
    }
}
