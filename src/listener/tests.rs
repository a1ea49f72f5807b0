//! Serving HTTP/1.1 and HTTP/2 on a stream that is not a TCP socket.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::activity::Activity;
use super::state::{ConnInfo, ListenerState};
use super::{serve_h2, serve_http1};
use crate::app::snapshot::Snapshot;
use crate::metrics::Metrics;

const CONFIG: &str = "admin: { address: 127.0.0.1:0 }
listeners:
  - name: seam
    address: 127.0.0.1:0
    virtual_hosts:
      - name: app
        domains: [app]
        routes:
          - { match: { prefix: / }, cluster: app }
clusters:
  - { name: app, endpoints: [\"127.0.0.1:9\"] }
";

fn state() -> Arc<ListenerState> {
    let config = crate::config::load_str(CONFIG, "test").unwrap();
    let metrics = Metrics::new().unwrap();
    let snapshot = Snapshot::build(config, &metrics, &None, None).unwrap();
    snapshot.listeners[0].1.clone()
}

fn conn() -> Arc<ConnInfo> {
    Arc::new(ConnInfo {
        client: "127.0.0.1:40000".parse().unwrap(),
        orig_dst: None,
        peer: None,
        tls: None,
    })
}

/// Serve the far end of an in-memory pipe with `serve`, returning the near end.
fn serve(h2: bool) -> DuplexStream {
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let current = state();
        let serving = current.serving.clone();
        let states = Arc::new(ArcSwap::new(current));
        let activity = Activity::new();
        let never = std::future::pending();
        if h2 {
            serve_h2(server, conn(), &serving, states, &activity, never).await
        } else {
            serve_http1(server, conn(), &serving, states, &activity, never).await
        }
    });
    client
}

#[tokio::test]
async fn http1_is_served_on_any_stream() {
    let mut client = serve(false);
    client
        .write_all(b"GET /x HTTP/1.1\r\nHost: elsewhere\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(client.read(&mut b).await.unwrap(), 1, "closed early");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(head.contains("x-skiff-error: no_route"), "{head}");
}

#[tokio::test]
async fn http2_is_served_on_any_stream() {
    let client = serve(true);
    let (mut sender, connection) = ::h2::client::handshake(client).await.unwrap();
    tokio::spawn(connection);
    let req = http::Request::builder()
        .uri("http://elsewhere/x")
        .body(())
        .unwrap();
    let (response, _) = sender.send_request(req, true).unwrap();
    let resp = response.await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-skiff-error"], "no_route");
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk: Bytes = chunk.unwrap();
        got.extend_from_slice(&chunk);
    }
    assert!(!got.is_empty(), "an error answer has a body");
}

/// Log lines written at `debug`, kept for the test to read.
#[derive(Clone, Default)]
struct Logged(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logged {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn lines_carry_their_connection_and_request() {
    let logged = Logged::default();
    let writer = logged.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The test's runtime runs on this thread, and so do the tasks it spawns.
    let _default = tracing::subscriber::set_default(subscriber);

    let listener = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let states = Arc::new(ArcSwap::new(state()));
    let served = tokio::spawn(super::serve(listener, states, stopped, open));

    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let local = client.local_addr().unwrap();
    client
        .write_all(b"GET /x HTTP/1.1\r\nHost: elsewhere\r\nx-request-id: req-7\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 404"));
    stop.send(true).unwrap();
    served.await.unwrap();

    let text = logged.text();
    let line = text
        .lines()
        .find(|l| l.contains("proxy error"))
        .unwrap_or_else(|| panic!("no line about the request in:\n{text}"));
    let conn = format!("conn{{listener=seam client={local}}}");
    assert!(line.contains(&conn), "{line}");
    let req = "req{method=GET authority=elsewhere path=/x request_id=req-7}";
    assert!(line.contains(req), "{line}");
}

#[test]
fn request_spans_are_off_below_debug() {
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let req = http::Request::get("http://app/x").body(()).unwrap();
        assert!(super::request_span(&req).is_disabled());
    });
}
