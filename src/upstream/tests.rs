//! The pool over connections that are not TCP, and the scheme its
//! connector gives the requests.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{HeaderMap, Request, Response};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

use super::connect::{BoxedIo, Connect, Connecting, Connector, Tcp};
use super::{Pool, PoolConfig, Protocol, UpstreamError};
use crate::http::body::RequestBody;
use crate::resilience::breaker::Limits;

const ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

/// Connections over in-memory pipes, said to be of `scheme`; the far end
/// of each goes to the test's server.
#[derive(Debug)]
struct Piped {
    scheme: Scheme,
    accepted: mpsc::UnboundedSender<DuplexStream>,
}

impl Connect for Piped {
    fn scheme(&self) -> Scheme {
        self.scheme.clone()
    }

    fn connect(&self, addr: SocketAddr) -> Connecting<'_> {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let sent = self.accepted.send(theirs);
        Box::pin(async move {
            sent.map_err(|_| UpstreamError::Connect {
                addr,
                source: io::ErrorKind::ConnectionRefused.into(),
            })?;
            Ok(Box::new(ours) as BoxedIo)
        })
    }
}

fn pool(connector: Connector) -> Pool {
    Pool::new(
        ADDR,
        PoolConfig {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_idle: 4,
            limits: Arc::new(Limits::unlimited()),
            connector,
        },
    )
}

/// What the server saw of a request, sent back in response headers.
fn echo(uri: &http::Uri, headers: &HeaderMap) -> http::response::Builder {
    let host = headers.get(http::header::HOST).cloned();
    let mut b = Response::builder()
        .header("x-scheme", uri.scheme_str().unwrap_or("-"))
        .header("x-authority", uri.authority().map_or("-", |a| a.as_str()))
        .header("x-path", uri.path());
    if let Some(host) = host {
        b = b.header("x-host", host);
    }
    b
}

/// An HTTP/2 server on every pipe the pool opens.
fn h2_server(mut accepted: mpsc::UnboundedReceiver<DuplexStream>) {
    tokio::spawn(async move {
        while let Some(io) = accepted.recv().await {
            tokio::spawn(async move {
                let mut conn = ::h2::server::handshake(io).await.unwrap();
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let resp = echo(req.uri(), req.headers()).body(()).unwrap();
                    let _ = respond.send_response(resp, true);
                }
            });
        }
    });
}

/// An HTTP/1.1 server (hyper) on every pipe the pool opens.
fn h1_server(mut accepted: mpsc::UnboundedReceiver<DuplexStream>) {
    tokio::spawn(async move {
        while let Some(io) = accepted.recv().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                    let resp = echo(req.uri(), req.headers()).body(Empty::<Bytes>::new());
                    async move { resp }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), service)
                    .await;
            });
        }
    });
}

fn piped(scheme: Scheme) -> (Connector, mpsc::UnboundedReceiver<DuplexStream>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let connector = Connector::new(Piped {
        scheme,
        accepted: tx,
    });
    (connector, rx)
}

/// An HTTP/1.1-style request: path only, authority in Host.
fn origin_form(path: &str) -> Request<RequestBody> {
    Request::builder()
        .uri(path)
        .header(http::header::HOST, "svc.ns:8080")
        .body(RequestBody::fixed(Bytes::new()))
        .unwrap()
}

fn header<'a>(resp: &'a Response<crate::http::body::ProxyBody>, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[test]
fn tcp_connections_carry_http() {
    assert_eq!(Tcp.scheme(), Scheme::HTTP);
    assert_eq!(Connector::tcp().scheme(), Scheme::HTTP);
    assert_eq!(Connector::default().scheme(), Scheme::HTTP);
}

#[tokio::test]
async fn http2_requests_take_the_connections_scheme() {
    for scheme in [Scheme::HTTP, Scheme::HTTPS] {
        let (connector, accepted) = piped(scheme.clone());
        h2_server(accepted);
        let pool = pool(connector);
        let resp = pool
            .send(Protocol::Http2, origin_form("/pkg.Svc/Call?x=1"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-scheme"), scheme.as_str());
        assert_eq!(header(&resp, "x-authority"), "svc.ns:8080");
        assert_eq!(header(&resp, "x-path"), "/pkg.Svc/Call");
        assert_eq!(pool.connection_counts().0, 1);
    }
}

#[tokio::test]
async fn a_request_with_its_own_scheme_keeps_it() {
    // From an HTTP/2 client, `:scheme` and `:authority` are the request's.
    let (connector, accepted) = piped(Scheme::HTTPS);
    h2_server(accepted);
    let req = Request::builder()
        .uri("http://svc.ns:8080/x")
        .body(RequestBody::fixed(Bytes::new()))
        .unwrap();
    let resp = pool(connector).send(Protocol::Http2, req).await.unwrap();
    assert_eq!(header(&resp, "x-scheme"), "http");
    assert_eq!(header(&resp, "x-authority"), "svc.ns:8080");
}

#[tokio::test]
async fn http1_runs_on_any_stream() {
    let (connector, accepted) = piped(Scheme::HTTPS);
    h1_server(accepted);
    let pool = pool(connector);
    for _ in 0..2 {
        let resp = pool
            .send(Protocol::Http1, origin_form("/a/b"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // Origin form on the wire: no scheme, the authority in Host.
        assert_eq!(header(&resp, "x-scheme"), "-");
        assert_eq!(header(&resp, "x-path"), "/a/b");
        assert_eq!(header(&resp, "x-host"), "svc.ns:8080");
    }
}

#[tokio::test]
async fn a_failed_connect_is_the_connectors_error() {
    let (connector, accepted) = piped(Scheme::HTTP);
    drop(accepted);
    let err = pool(connector)
        .send(Protocol::Http2, origin_form("/"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, UpstreamError::Connect { addr, .. } if addr == ADDR),
        "{err}"
    );
}

#[tokio::test]
async fn tcp_connects_to_a_listening_port() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let io = Connector::tcp().connect(addr).await;
    assert!(io.is_ok());
    let (_accepted, _) = listener.accept().await.unwrap();
    drop(listener);
    // Nothing listens there any more.
    let err = Connector::tcp().connect(addr).await.err().unwrap();
    assert!(matches!(err, UpstreamError::Connect { .. }), "{err}");
}

#[test]
fn a_failed_handshake_is_answered_as_a_connect_failure() {
    use crate::error::{ErrorKind, ProxyError};
    let e = UpstreamError::Handshake {
        addr: ADDR,
        reason: "HTTP/2: connection closed before the preface".into(),
    };
    assert_eq!(ProxyError::upstream(&e).kind, ErrorKind::ConnectFailure);
    assert!(
        e.to_string()
            .starts_with("handshake with upstream 127.0.0.1:9 failed"),
        "{e}"
    );
}
