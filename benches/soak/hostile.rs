//! The hostile clients of the soak, each a loop on connections of its own
//! until the run stops: rapid reset, slow readers (HTTP/2 and HTTP/1.1),
//! malformed bodies and ambiguous heads, connection churn, and calls to a
//! cluster whose endpoint is down. Each counts what it did, and the
//! answers that were not the refusal it should get.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::Shared;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// A literal field without indexing, its name from the static table.
fn literal(name_index: u8, value: &[u8]) -> Vec<u8> {
    let mut out = if name_index < 15 {
        vec![name_index]
    } else {
        vec![0x0f, name_index - 15]
    };
    out.push(value.len() as u8);
    out.extend_from_slice(value);
    out
}

/// GET / (HPACK static 2, 6, 4) with `:authority: soak`.
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84];
    b.extend(literal(1, b"soak"));
    b
}

/// POST to `path` as a gRPC call (`content-type`, `te: trailers`).
fn grpc_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x83, 0x86];
    b.extend(literal(4, path.as_bytes()));
    b.extend(literal(1, b"soak"));
    b.extend(literal(31, b"application/grpc"));
    b.extend([0x00, 0x02]);
    b.extend(b"te");
    b.push(0x08);
    b.extend(b"trailers");
    b
}

/// Read and drop whatever comes for up to `limit` (or until closed).
async fn drain(tcp: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut first = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(limit, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if first.len() < 256 {
                        first.extend_from_slice(&buf[..n.min(256)]);
                    }
                }
            }
        }
    })
    .await;
    first
}

/// Sleep `d` in short steps, so a stop is seen soon.
async fn pause(shared: &Shared, d: Duration) {
    let t0 = tokio::time::Instant::now();
    while t0.elapsed() < d && !shared.stopped() {
        tokio::time::sleep(d.min(Duration::from_millis(100))).await;
    }
}

fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Every hostile loop, spawned on the current `LocalSet`.
pub fn spawn_all(shared: Rc<Shared>, addr: SocketAddr) -> Vec<JoinHandle<()>> {
    let mut v = Vec::new();
    let s = || shared.clone();
    v.push(tokio::task::spawn_local(rapid_reset(s(), addr)));
    for _ in 0..3 {
        v.push(tokio::task::spawn_local(h2_slow_reader(s(), addr)));
    }
    for _ in 0..2 {
        v.push(tokio::task::spawn_local(h1_slow_reader(s(), addr)));
    }
    v.push(tokio::task::spawn_local(malformed(s(), addr)));
    v.push(tokio::task::spawn_local(churn(s(), addr)));
    v.push(tokio::task::spawn_local(dead_upstream(s(), addr)));
    v
}

/// Bursts of 500 HEADERS + RST_STREAM pairs on one connection, one burst a
/// second; skiff is expected to end such a connection (GOAWAY) or take it.
async fn rapid_reset(shared: Rc<Shared>, addr: SocketAddr) {
    let block = get_block();
    while !shared.stopped() {
        if let Ok(mut tcp) = TcpStream::connect(addr).await {
            let mut out = PREFACE.to_vec();
            out.extend(frame(SETTINGS, 0, 0, &[]));
            for i in 0..500u32 {
                let id = 2 * i + 1;
                out.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
                out.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
            }
            let _ = tcp.write_all(&out).await;
            drain(&mut tcp, Duration::from_millis(500)).await;
            shared.count("rapid_reset", false);
        }
        pause(&shared, Duration::from_secs(1)).await;
    }
}

/// An HTTP/2 connection with a zero stream window asking for 10 server
/// streams of 100 MB each, never reading; held 20 s, then dropped.
async fn h2_slow_reader(shared: Rc<Shared>, addr: SocketAddr) {
    let call = crate::echo::grpc_frame(&crate::echo::EchoRequest {
        payload: bytes::Bytes::from(vec![b'x'; 1024]),
        count: 100_000,
        hold_ms: 0,
    });
    let block = grpc_block(crate::echo::STREAM_PATH);
    while !shared.stopped() {
        if let Ok(mut tcp) = TcpStream::connect(addr).await {
            let mut out = PREFACE.to_vec();
            // SETTINGS_INITIAL_WINDOW_SIZE = 0.
            out.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
            for i in 0..10u32 {
                let id = 2 * i + 1;
                out.extend(frame(HEADERS, END_HEADERS, id, &block));
                out.extend(frame(DATA, END_STREAM, id, &call));
            }
            let _ = tcp.write_all(&out).await;
            shared.count("h2_slow_reader", false);
            pause(&shared, Duration::from_secs(20)).await;
        } else {
            pause(&shared, Duration::from_secs(1)).await;
        }
    }
}

/// An HTTP/1.1 connection that pipelines 2,000 GETs and never reads;
/// held 20 s, then dropped.
async fn h1_slow_reader(shared: Rc<Shared>, addr: SocketAddr) {
    let one = b"GET / HTTP/1.1\r\nHost: soak\r\n\r\n";
    let all: Vec<u8> = one.iter().copied().cycle().take(one.len() * 2000).collect();
    while !shared.stopped() {
        if let Ok(mut tcp) = TcpStream::connect(addr).await {
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(&all)).await;
            shared.count("h1_slow_reader", false);
            pause(&shared, Duration::from_secs(20)).await;
        } else {
            pause(&shared, Duration::from_secs(1)).await;
        }
    }
}

/// 10 a second, alternating: a chunked body with a bad chunk size, and a
/// head with both Content-Length and Transfer-Encoding. Each must get 400.
async fn malformed(shared: Rc<Shared>, addr: SocketAddr) {
    let cases: [(&'static str, &[u8]); 2] = [
        (
            "malformed_body",
            b"POST / HTTP/1.1\r\nHost: soak\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "ambiguous_head",
            b"POST / HTTP/1.1\r\nHost: soak\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
    ];
    let mut i = 0;
    while !shared.stopped() {
        let (kind, bytes) = cases[i % 2];
        i += 1;
        if let Ok(mut tcp) = TcpStream::connect(addr).await {
            let _ = tcp.write_all(bytes).await;
            let got = drain(&mut tcp, Duration::from_secs(2)).await;
            shared.count(kind, status_of(&got) != Some(400));
        }
        pause(&shared, Duration::from_millis(100)).await;
    }
}

/// 50 connections a second: every other one closed at once, the rest
/// making one HTTP/1.1 request and closing.
async fn churn(shared: Rc<Shared>, addr: SocketAddr) {
    let mut i = 0u64;
    while !shared.stopped() {
        i += 1;
        if let Ok(mut tcp) = TcpStream::connect(addr).await {
            if i.is_multiple_of(2) {
                drop(tcp);
                shared.count("churn_close", false);
            } else {
                let _ = tcp
                    .write_all(b"GET / HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
                    .await;
                let got = drain(&mut tcp, Duration::from_secs(2)).await;
                shared.count("churn_request", status_of(&got) != Some(200));
            }
        }
        pause(&shared, Duration::from_millis(20)).await;
    }
}

/// 5 a second to the cluster whose endpoint is down: each must get 502.
async fn dead_upstream(shared: Rc<Shared>, addr: SocketAddr) {
    while !shared.stopped() {
        if let Ok(mut tcp) = TcpStream::connect(addr).await {
            let _ = tcp
                .write_all(b"GET /dead/x HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
                .await;
            let got = drain(&mut tcp, Duration::from_secs(3)).await;
            shared.count("upstream_down", status_of(&got) != Some(502));
        }
        pause(&shared, Duration::from_millis(200)).await;
    }
}
