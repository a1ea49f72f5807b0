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
    })
}

/// Serve the far end of an in-memory pipe with `serve`, returning the near end.
fn serve(h2: bool) -> DuplexStream {
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let current = state();
        let serving = current.serving.clone();
        let name = current.name.clone();
        let states = Arc::new(ArcSwap::new(current));
        let activity = Activity::new();
        let never = std::future::pending();
        if h2 {
            serve_h2(server, conn(), &serving, &name, states, &activity, never).await
        } else {
            serve_http1(server, conn(), &serving, &name, states, &activity, never).await
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
