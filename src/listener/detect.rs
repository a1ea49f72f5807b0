//! Protocol detection: read the first bytes of a connection, decide whether
//! it speaks HTTP, and hand those bytes back in front of the stream.
//!
//! A client-first protocol shows itself at once (the HTTP/2 preface, an
//! HTTP/1 method, the record that carries a TLS ClientHello). A server-first
//! protocol (MySQL, SMTP, …) sends nothing until the server greets it, so
//! detection ends on a short timeout and the connection is treated as opaque
//! TCP; `opaque_ports` skip the wait.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Enough for any HTTP method token and the space after it.
const MAX_METHOD: usize = 24;

/// ContentType `handshake` (RFC 8446 §5.1), the record a ClientHello comes in.
const TLS_HANDSHAKE: u8 = 0x16;
/// The largest plaintext record (RFC 8446 §5.1: 2^14 bytes).
const TLS_MAX_RECORD: u16 = 1 << 14;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http,
    /// A TLS handshake record: a client opening TLS (a ClientHello).
    Tls,
    Opaque,
}

/// What the first bytes say: `None` while more bytes could still decide.
pub fn classify(bytes: &[u8]) -> Option<Detected> {
    if bytes.is_empty() {
        return None;
    }
    if bytes[0] == TLS_HANDSHAKE {
        return classify_tls(bytes);
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

/// Whether the first bytes are the header of a record that opens TLS
/// (RFC 8446 §5.1, RFC 5246 §6.2.1): content type `handshake` (0x16), a
/// legacy record version of 0x0301 to 0x0304 (a ClientHello says 0x0301 or
/// 0x0303 there; SSL 3.0's 0x0300 is not taken), and a length that is not 0
/// (a handshake fragment is never empty) nor above 2^14. Undecided (`None`)
/// until the five header bytes are in, unless those in rule TLS out.
fn classify_tls(bytes: &[u8]) -> Option<Detected> {
    let version = match bytes {
        [_, major, minor, ..] => *major == 0x03 && (0x01..=0x04).contains(minor),
        [_, major] => *major == 0x03,
        _ => true,
    };
    if !version {
        return Some(Detected::Opaque);
    }
    let [_, _, _, hi, lo, ..] = *bytes else {
        return None;
    };
    let len = u16::from_be_bytes([hi, lo]);
    Some(if (1..=TLS_MAX_RECORD).contains(&len) {
        Detected::Tls
    } else {
        Detected::Opaque
    })
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
            Some(Detected::Tls),
            "TLS"
        );
        assert_eq!(classify(b"\x00\x00\x00\x01"), Some(Detected::Opaque));
        assert_eq!(
            classify(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
            Some(Detected::Opaque)
        );
        assert_eq!(classify(b""), None);
    }

    /// The first bytes of a real ClientHello (TLS 1.3 from a current
    /// client): record header, then handshake type 1 and its length.
    const CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";

    #[test]
    fn tells_a_tls_client_hello() {
        assert_eq!(classify(CLIENT_HELLO), Some(Detected::Tls));
        // Legacy record versions from TLS 1.0 to 1.3.
        for minor in 1..=4u8 {
            let header = [0x16, 0x03, minor, 0x00, 0x30];
            assert_eq!(classify(&header), Some(Detected::Tls), "0x03{minor:02x}");
        }
        // The largest record there can be.
        assert_eq!(classify(b"\x16\x03\x03\x40\x00"), Some(Detected::Tls));
    }

    #[test]
    fn waits_for_the_whole_tls_record_header() {
        for n in 1..5 {
            assert_eq!(classify(&CLIENT_HELLO[..n]), None, "{n} bytes");
        }
        assert_eq!(classify(&CLIENT_HELLO[..5]), Some(Detected::Tls));
    }

    #[test]
    fn what_only_starts_like_tls_is_opaque() {
        let cases: &[(&[u8], &str)] = &[
            (b"\x16\x02", "major version not 3"),
            (b"\x16\x03\x00", "SSL 3.0"),
            (b"\x16\x03\x05", "no such version"),
            (b"\x16\x03\x01\x00\x00", "an empty record"),
            (b"\x16\x03\x01\x40\x01", "a record over 2^14 bytes"),
            (b"\x17\x03\x03\x00\x20", "application data, not a handshake"),
            (b"\x15\x03\x03\x00\x02", "an alert"),
        ];
        for (bytes, why) in cases {
            assert_eq!(classify(bytes), Some(Detected::Opaque), "{why}");
        }
    }

    #[tokio::test]
    async fn detects_a_client_hello_sent_in_pieces() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(1024);
        let detected =
            tokio::spawn(async move { detect(&mut server, Duration::from_secs(5)).await.unwrap() });
        client.write_all(&CLIENT_HELLO[..2]).await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(&CLIENT_HELLO[2..]).await.unwrap();
        let (d, read) = detected.await.unwrap();
        assert_eq!(d, Detected::Tls);
        assert!(CLIENT_HELLO.starts_with(&read), "the bytes read go back");
        assert!(read.len() >= 5);
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
