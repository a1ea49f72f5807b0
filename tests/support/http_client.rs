//! A plain hyper client over one connection, HTTP/1.1 or HTTP/2 prior
//! knowledge (h2c), plus raw-socket helpers for bytes no client would send.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::body::{self, read_body, Received, TestBody};
use super::eventually::within;
use super::AbortOnDrop;

/// Which HTTP version a client speaks to the proxy or a cluster speaks upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

impl Proto {
    /// The name used for a cluster's `protocol` in the YAML.
    pub fn cluster_name(self) -> &'static str {
        match self {
            Proto::H1 => "http1",
            Proto::H2 => "http2",
        }
    }

    pub fn version(self) -> http::Version {
        match self {
            Proto::H1 => http::Version::HTTP_11,
            Proto::H2 => http::Version::HTTP_2,
        }
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<TestBody>),
    H2(hyper::client::conn::http2::SendRequest<TestBody>),
}

/// One client connection.
pub struct HttpClient {
    sender: Sender,
    addr: SocketAddr,
    proto: Proto,
    _conn: AbortOnDrop,
}

/// How long any single exchange in a test may take.
pub const EXCHANGE_LIMIT: Duration = Duration::from_secs(30);

impl HttpClient {
    pub async fn connect(addr: SocketAddr, proto: Proto) -> anyhow::Result<HttpClient> {
        let tcp = within(Duration::from_secs(5), "connect", async {
            TcpStream::connect(addr)
                .await
                .with_context(|| format!("connect {addr}"))
        })
        .await?;
        tcp.set_nodelay(true)?;
        let io = TokioIo::new(tcp);
        let (sender, conn) = match proto {
            Proto::H1 => {
                let (s, c) = hyper::client::conn::http1::handshake(io).await?;
                (
                    Sender::H1(s),
                    AbortOnDrop::spawn(async move {
                        let _ = c.await;
                    }),
                )
            }
            Proto::H2 => {
                let (s, c) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await?;
                (
                    Sender::H2(s),
                    AbortOnDrop::spawn(async move {
                        let _ = c.await;
                    }),
                )
            }
        };
        Ok(HttpClient {
            sender,
            addr,
            proto,
            _conn: conn,
        })
    }

    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// A request builder for `path` with the URI form this version wants
    /// (absolute for HTTP/2, origin-form plus Host for HTTP/1.1).
    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        let authority = self.addr.to_string();
        match self.proto {
            Proto::H1 => Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, authority),
            Proto::H2 => Request::builder()
                .method(method)
                .version(http::Version::HTTP_2)
                .uri(format!("http://{authority}{path}")),
        }
    }

    /// Send `req`; the response head is bounded by [`EXCHANGE_LIMIT`], the body is the caller's.
    pub async fn send(&mut self, req: Request<TestBody>) -> anyhow::Result<Response<Incoming>> {
        let fut = async {
            match &mut self.sender {
                Sender::H1(s) => {
                    s.ready().await?;
                    Ok(s.send_request(req).await?)
                }
                Sender::H2(s) => {
                    s.ready().await?;
                    Ok(s.send_request(req).await?)
                }
            }
        };
        within(EXCHANGE_LIMIT, "response head", fut).await
    }

    /// Send `req` and read the whole response (hashed; kept if small).
    pub async fn exchange(
        &mut self,
        req: Request<TestBody>,
    ) -> anyhow::Result<(http::response::Parts, Received)> {
        let resp = self.send(req).await?;
        let (parts, body) = resp.into_parts();
        let received = within(EXCHANGE_LIMIT, "response body", read_body(body)).await?;
        Ok((parts, received))
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<(http::response::Parts, Received)> {
        let req = self.request("GET", path).body(body::empty())?;
        self.exchange(req).await
    }
}

/// GET `path` from `addr` over a fresh HTTP/1.1 connection: status, headers, body text.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<(StatusCode, HeaderMap, String)> {
    let mut c = HttpClient::connect(addr, Proto::H1).await?;
    let (parts, body) = c.get(path).await?;
    Ok((parts.status, parts.headers, body.text()))
}

/// Write `bytes` to a fresh connection to `addr`, then read until the peer
/// closes or `quiet` passes without a byte. Returns what was read.
pub async fn raw_exchange(
    addr: SocketAddr,
    bytes: &[u8],
    quiet: Duration,
) -> anyhow::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await?;
    // The peer may close while we still write garbage; that is an answer too.
    let _ = tcp.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(quiet, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
        if out.len() > 1024 * 1024 {
            break;
        }
    }
    Ok(out)
}

/// The status code of a raw HTTP/1.x response, if `bytes` starts with one.
pub fn raw_status(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes.get(..bytes.len().min(64))?).ok()?;
    let mut parts = text.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Text after the first blank line of a raw HTTP/1.x response, header names lower-cased, as a map.
pub fn raw_headers(bytes: &[u8]) -> HeaderMap {
    let text = String::from_utf8_lossy(bytes);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut map = HeaderMap::new();
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            if let (Ok(k), Ok(v)) = (k.trim().parse::<http::HeaderName>(), v.trim().parse()) {
                map.append(k, v);
            }
        }
    }
    map
}

pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Bytes of a response body, as text, for error messages.
pub fn lossy(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A gRPC request for `path` carrying one empty message, as any gRPC client
/// sends it, for checking the raw HTTP/2 shape of answers.
pub fn grpc_request(c: &HttpClient, path: &str) -> anyhow::Result<Request<TestBody>> {
    Ok(c.request("POST", path)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(body::full(Bytes::from_static(&[0, 0, 0, 0, 0])))?)
}
