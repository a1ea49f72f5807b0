//! Hostile HTTP/1.1 clients (issue 13): raw bytes over TCP against skiff,
//! each naming the bound it asserts — the status of the answer, the
//! connection's end, the endpoints not ejected, skiff's VmRSS (from /proc)
//! under `support::hostile::RSS_CEILING_KIB`, an honest client's requests
//! all answered. Request-smuggling shapes hyper refuses and slowloris
//! are regression tests; the issue's findings are tests named with their
//! item number.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::hostile::{answers_in, Honest, Skiff};
use support::http_backend::HttpBackend;
use support::http_client::{header_str, raw_exchange, raw_headers, raw_status};
use support::scratch::ScratchDir;
use support::{eventually, Proto, Proxy, ProxyConfig};

/// Bound of every wait on the network in this suite.
fn head_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(300).collect()
}

/// `bytes` on a connection of its own: the status of the answer.
async fn status_of(addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<(Option<u16>, Vec<u8>)> {
    let got = raw_exchange(addr, bytes, Duration::from_secs(3)).await?;
    Ok((raw_status(&got), got))
}

// ---------------------------------------------------------------- regression

/// Request-smuggling shapes that hyper's parser refuses. Bound: each is
/// answered 400, none reaches the backend, and an honest client on its own
/// connection is answered throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_are_400() -> anyhow::Result<()> {
    let skiff = Skiff::start(Proto::H1, &[]).await?;
    let cases: &[(&str, &[u8])] = &[
        (
            "two different Content-Lengths",
            b"POST /smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc",
        ),
        (
            "a Content-Length list",
            b"POST /smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 30\r\n\r\nabc",
        ),
        (
            "obs-fold",
            b"GET /smuggle HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        ),
        (
            "obs-fold of Transfer-Encoding",
            b"POST /smuggle HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding not ending in chunked",
            b"POST /smuggle HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "an unknown Transfer-Encoding",
            b"POST /smuggle HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            b"POST /smuggle HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "a space before the colon",
            b"POST /smuggle HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
    ];
    let honest = Honest::start(skiff.addr, Proto::H1, "/");
    for (what, bytes) in cases {
        let (status, got) = skiff.sampling(status_of(skiff.addr, bytes)).await?;
        ensure!(status == Some(400), "{what}: got {:?}", head_of(&got));
    }
    honest.finish().await.assert_unharmed("smuggling shapes")?;
    ensure!(
        skiff
            .backend
            .seen()
            .iter()
            .all(|s| s.uri.path() != "/smuggle"),
        "a smuggling shape reached the backend"
    );
    skiff.assert_rss_bounded("smuggling shapes")
}

/// Slowloris: 20 connections that send a request head one byte every
/// 300 ms, against `header_read_timeout: 1s`. Bound: each is closed by
/// skiff within 5 s (well before its head could end), and an honest client
/// is answered throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_closed_at_the_header_read_timeout() -> anyhow::Result<()> {
    let skiff = Skiff::start(Proto::H1, &["header_read_timeout: 1s"]).await?;
    // HTTP/2: an HTTP/1.1 client idle for a second would be closed too.
    let honest = Honest::start(skiff.addr, Proto::H2, "/");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let addr = skiff.addr;
        tasks.spawn(async move {
            let started = Instant::now();
            let mut tcp = TcpStream::connect(addr).await?;
            let head =
                b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            let mut answer = Vec::new();
            for b in head.iter().cycle().take(200) {
                if tcp.write_all(&[*b]).await.is_err() {
                    break;
                }
                let mut buf = [0u8; 1024];
                match tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                    Err(_) => {}
                }
            }
            anyhow::Ok((started.elapsed(), raw_status(&answer)))
        });
    }
    let mut worst = Duration::ZERO;
    while let Some(done) = tasks.join_next().await {
        let (took, status) = done??;
        ensure!(
            took < Duration::from_secs(5),
            "a slowloris connection lived {took:?} (answer {status:?})"
        );
        worst = worst.max(took);
    }
    eprintln!("slowloris: every connection closed, the last after {worst:?}");
    honest.finish().await.assert_unharmed("slowloris")?;
    skiff.assert_rss_bounded("slowloris")
}

// ------------------------------------------------- found (the issue's items)

/// Chunked request bodies with broken framing: a chunk size `zz`, a size
/// that overflows 64 bits, a bare LF after the size.
const BAD_CHUNKED: &[(&str, &str)] = &[
    ("a chunk size of zz", "zz\r\nhello\r\n0\r\n\r\n"),
    (
        "a chunk size that overflows",
        "fffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    ),
    ("a bare LF in the chunked framing", "5\nhello\r\n0\r\n\r\n"),
];

/// A chunked POST of `body` to `/upload`; `id` goes in `x-request-id`, to
/// find its access-log line.
fn chunked_post(id: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nx-request-id: {id}\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
    )
    .into_bytes()
}

/// Item 1: a malformed chunked request body. Bound: 400 with
/// `x-skiff-error: bad_request` (never 502) and the access-log flag `DPE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_400_not_502() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let dir = ScratchDir::new("hostile-h1-log")?;
    let log = dir.path().join("access.log");
    let proxy = ProxyConfig::new("http1", backend.addr())
        .access_log(&log)
        .start()
        .await?;
    let mut wrong = Vec::new();
    for (i, (what, body)) in BAD_CHUNKED.iter().enumerate() {
        let id = format!("bad-chunked-{i}");
        let (status, got) = status_of(proxy.addr(), &chunked_post(&id, body)).await?;
        let error = header_str(&raw_headers(&got), "x-skiff-error").map(str::to_string);
        let flag = eventually(Duration::from_secs(3), || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["request_id"] == id.as_str())
                .map(|v| v["flag"].clone())
                .ok_or_else(|| anyhow!("no access-log line for {id}"))
        })
        .await
        .unwrap_or_default();
        if (status, error.as_deref(), flag.as_str())
            != (Some(400), Some("bad_request"), Some("DPE"))
        {
            wrong.push(format!("{what}: {status:?} {error:?} flag {flag}"));
        }
    }
    ensure!(
        wrong.is_empty(),
        "not the client's error:\n{}",
        wrong.join("\n")
    );
    drop(proxy);
    Ok(())
}

/// Item 1: eight malformed chunked bodies against a two-endpoint cluster
/// with `outlier_detection: { consecutive_failures: 3 }`. Bound: no
/// endpoint is ejected (`/clusters`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_eject_no_endpoint() -> anyhow::Result<()> {
    let a = HttpBackend::start().await?;
    let b = HttpBackend::start().await?;
    let yaml = format!(
        r#"admin:
  address: 127.0.0.1:0
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: "/" }}
            cluster: backend
clusters:
  - name: backend
    protocol: http1
    endpoints: ["{}", "{}"]
    outlier_detection:
      consecutive_failures: 3
      base_ejection_time: 60s
"#,
        a.addr(),
        b.addr()
    );
    let proxy = Proxy::start(&yaml).await?;
    for i in 0..8 {
        let (_, body) = BAD_CHUNKED[i % BAD_CHUNKED.len()];
        let _ = status_of(proxy.addr(), &chunked_post(&format!("eject-{i}"), body)).await?;
    }
    let health = proxy
        .endpoints("backend", |e| {
            e["health"].as_str().unwrap_or_default().to_string()
        })
        .await?;
    ensure!(
        health.values().all(|h| h != "ejected"),
        "a client's malformed bodies ejected an endpoint: {health:?}"
    );
    Ok(())
}

/// Item 2: heads that two parsers could read two ways. Bound: each is
/// answered 400 and none reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_heads_are_400() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let proxy = ProxyConfig::new("http1", backend.addr()).start().await?;
    let cases: &[(&str, &[u8])] = &[
        (
            "two Host headers",
            b"GET /ambiguous HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        ),
        (
            "a Host that disagrees with the absolute-form target",
            b"GET http://a.example/ambiguous HTTP/1.1\r\nHost: b.example\r\n\r\n",
        ),
    ];
    ambiguous(&backend, &proxy, cases).await
}

/// Item 2, the rest: Content-Length beside Transfer-Encoding, in either
/// order. hyper drops the length before the request reaches the proxy; the
/// listener's scan of the raw head finds it. Bound: 400 with
/// `x-skiff-error: bad_request`, the connection closed after the answer,
/// nothing reaches the backend — with the head sent in one write and one
/// byte per write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_beside_transfer_encoding_is_400() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let proxy = ProxyConfig::new("http1", backend.addr()).start().await?;
    let cases: &[(&str, &[u8])] = &[
        ("Content-Length, then Transfer-Encoding", LENGTH_THEN_TE),
        (
            "Transfer-Encoding, then Content-Length",
            b"POST /ambiguous HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 30\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
    ];
    ambiguous(&backend, &proxy, cases).await?;
    for (what, bytes) in cases {
        let got = byte_by_byte(proxy.addr(), bytes).await?;
        let error = header_str(&raw_headers(&got), "x-skiff-error").map(str::to_string);
        ensure!(
            raw_status(&got) == Some(400) && error.as_deref() == Some("bad_request"),
            "{what}, one byte per write: {:?}",
            head_of(&got)
        );
    }
    ensure!(
        backend.seen().iter().all(|s| s.uri.path() != "/ambiguous"),
        "an ambiguous head reached the backend"
    );
    Ok(())
}

const LENGTH_THEN_TE: &[u8] = b"POST /ambiguous HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";

/// `bytes` written one byte per write (TCP_NODELAY, a flush after each),
/// then read until the peer closes: everything it answered. Fails if the
/// connection is still open 5 s after the last byte.
async fn byte_by_byte(addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    for b in bytes {
        if tcp.write_all(&[*b]).await.is_err() {
            break;
        }
        tcp.flush().await?;
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .map_err(|_| anyhow!("the connection was not closed after the answer"))??;
    Ok(out)
}

/// The scan of request heads reads bodies by their framing: on one
/// keep-alive connection, a Content-Length body and a chunked body that
/// both carry the text of an ambiguous head are answered 200 (and reach
/// the backend whole), a plain GET after them too, and only the really
/// ambiguous head pipelined after those gets 400, the connection closed.
/// Bound: the statuses in order are 200, 200, 200, 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_bodies_that_look_like_heads_pass() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let proxy = ProxyConfig::new("http1", backend.addr()).start().await?;
    let fake = "POST /ambiguous HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut bytes = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n{fake}\
         POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
         {len:x}\r\n{fake}\r\n0\r\n\r\n\
         GET /plain HTTP/1.1\r\nHost: x\r\n\r\n",
        len = fake.len(),
    )
    .into_bytes();
    bytes.extend_from_slice(LENGTH_THEN_TE);
    for (how, got) in [
        (
            "in one write",
            raw_exchange(proxy.addr(), &bytes, Duration::from_secs(3)).await?,
        ),
        (
            "one byte per write",
            byte_by_byte(proxy.addr(), &bytes).await?,
        ),
    ] {
        let statuses = statuses_of(&got);
        ensure!(
            statuses == [200, 200, 200, 400],
            "{how}: statuses {statuses:?}\n{}",
            String::from_utf8_lossy(&got)
        );
    }
    let seen = backend.seen();
    ensure!(
        seen.iter().filter(|s| s.uri.path() == "/upload").count() == 4
            && seen.iter().all(|s| s.uri.path() != "/ambiguous"),
        "the backend saw {:?}",
        seen.iter()
            .map(|s| s.uri.path().to_string())
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// The status of every response in `bytes`, in order (the bodies here
/// never hold a status line).
fn statuses_of(bytes: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// Each head of `cases` gets 400 and none reaches `backend`.
async fn ambiguous(
    backend: &HttpBackend,
    proxy: &support::Proxy,
    cases: &[(&str, &[u8])],
) -> anyhow::Result<()> {
    let mut wrong = Vec::new();
    for (what, bytes) in cases {
        let (status, got) = status_of(proxy.addr(), bytes).await?;
        if status != Some(400) {
            wrong.push(format!("{what}: {:?}", head_of(&got)));
        }
    }
    ensure!(wrong.is_empty(), "accepted:\n{}", wrong.join("\n"));
    ensure!(
        backend.seen().iter().all(|s| s.uri.path() != "/ambiguous"),
        "an ambiguous head reached the backend"
    );
    Ok(())
}

/// Item 3, HTTP/1.1: eight connections ask for 8 MB each and never read,
/// through skiff's HTTP/2 connection to the upstream. Bound: an honest
/// client keeps at least 80% of its baseline answers over a 3 s window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_slow_readers_do_not_starve_an_honest_client() -> anyhow::Result<()> {
    const WINDOW: Duration = Duration::from_secs(3);
    let skiff = Skiff::start(Proto::H2, &[]).await?;
    let baseline = answers_in(skiff.addr, Proto::H1, "/", WINDOW).await;
    let mut attackers = Vec::new();
    for _ in 0..8 {
        let mut tcp = TcpStream::connect(skiff.addr).await?;
        tcp.write_all(b"GET /?bytes=8000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        attackers.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Other work on the machine only ever lowers a window's count, and a
    // starved client gets next to nothing in every window: the best of up
    // to three windows is the honest client's share.
    let mut during = 0;
    for _ in 0..3 {
        let got = skiff
            .sampling(answers_in(skiff.addr, Proto::H1, "/", WINDOW))
            .await;
        during = during.max(got);
        if during * 5 >= baseline * 4 {
            break;
        }
    }
    eprintln!("h1 slow readers: honest answers {during} in {WINDOW:?}, {baseline} before");
    skiff.assert_rss_bounded("h1 slow readers")?;
    ensure!(
        during * 5 >= baseline * 4,
        "the honest client got {during} answers in {WINDOW:?} beside 8 readers that never read, {baseline} alone"
    );
    drop(attackers);
    Ok(())
}
