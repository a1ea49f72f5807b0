//! Misbehaving upstreams (issue 13, "Also"): raw-TCP HTTP/1.1 and raw-frame
//! HTTP/2 servers written here send what no library would — a malformed or
//! oversized response head, a body shorter or longer than its
//! Content-Length, broken chunked framing, nothing at all, a TCP reset or
//! RST_STREAM or GOAWAY mid-body — to the real `skiff` process. Bounds, for
//! each: the client's answer is the one docs/architecture.md's error table
//! maps (502 `upstream_reset`, 504 `timeout`, gRPC 14 and 4), a failure
//! after the head ends the client's stream with an error (never a clean,
//! truncated success), the failure is counted against the endpoint and not
//! the client, and after a bounded burst skiff's open descriptors
//! (/proc/PID/fd), VmRSS and `skiff_connections_active` come back to their
//! baseline.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::body::{self, read_body};
use support::hostile::Skiff;
use support::http_backend::HttpBackend;
use support::http_client::{grpc_request, header_str, HttpClient};
use support::raw_h2::{self, frame};
use support::{eventually, AbortOnDrop, Proto};

/// How long a server that never answers holds a connection: far past the
/// route timeout, so only skiff can end the wait.
const HOLD: Duration = Duration::from_secs(60);
/// The route timeout of every cluster here.
const ROUTE_TIMEOUT: &str = "1s";

// ------------------------------------------------------ the raw upstreams

/// What a raw upstream does with each request it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    // HTTP/1.1 over raw TCP.
    /// A status line that is not one.
    MalformedHead,
    /// One header of 1 MiB: past any client's head limit.
    OversizedHead,
    /// `content-length: 1000`, 100 bytes, then FIN.
    ShortBody,
    /// `content-length: 5`, `hello`, then a whole second response
    /// (`POISON`) no request asked for, the connection kept open.
    LongBody,
    /// Chunked framing broken after the first chunk, then FIN.
    BadChunked,
    /// Reads the request, answers nothing, holds the connection.
    NeverAnswer,
    /// The head and 100 of 1000 bytes, then a TCP reset.
    ResetMidBody,
    // HTTP/2 over raw frames.
    /// A response HEADERS without `:status`.
    H2MalformedHead,
    /// HEADERS, 100 bytes of DATA, RST_STREAM INTERNAL_ERROR.
    H2RstMidBody,
    /// HEADERS, 100 bytes of DATA, GOAWAY INTERNAL_ERROR, the connection closed.
    H2GoawayMidBody,
    /// GOAWAY with last-stream-id 0 before any answer: refused unprocessed.
    H2GoawayRefused,
    /// Takes the stream and never answers.
    H2NeverAnswer,
}

impl Fault {
    fn is_h2(self) -> bool {
        matches!(
            self,
            Fault::H2MalformedHead
                | Fault::H2RstMidBody
                | Fault::H2GoawayMidBody
                | Fault::H2GoawayRefused
                | Fault::H2NeverAnswer
        )
    }

    fn name(self) -> String {
        format!("{self:?}").to_lowercase()
    }

    /// What the client must see.
    fn expected(self) -> Expected {
        match self {
            Fault::MalformedHead
            | Fault::OversizedHead
            | Fault::H2MalformedHead
            | Fault::H2GoawayRefused => Expected::Error(502, 14, "upstream_reset"),
            Fault::NeverAnswer | Fault::H2NeverAnswer => Expected::Error(504, 4, "timeout"),
            Fault::ShortBody
            | Fault::BadChunked
            | Fault::ResetMidBody
            | Fault::H2RstMidBody
            | Fault::H2GoawayMidBody => Expected::BrokenStream,
            Fault::LongBody => Expected::Complete("hello"),
        }
    }
}

const ALL: [Fault; 12] = [
    Fault::MalformedHead,
    Fault::OversizedHead,
    Fault::ShortBody,
    Fault::LongBody,
    Fault::BadChunked,
    Fault::NeverAnswer,
    Fault::ResetMidBody,
    Fault::H2MalformedHead,
    Fault::H2RstMidBody,
    Fault::H2GoawayMidBody,
    Fault::H2GoawayRefused,
    Fault::H2NeverAnswer,
];

#[derive(Clone, Copy, Debug)]
enum Expected {
    /// A proxy-made answer: HTTP status, gRPC status, `x-skiff-error`.
    Error(u16, u32, &'static str),
    /// 200, then the stream ends with an error.
    BrokenStream,
    /// 200 with exactly this body.
    Complete(&'static str),
}

/// A raw upstream on 127.0.0.1:0.
struct RawUpstream {
    addr: SocketAddr,
    _accept: AbortOnDrop,
}

impl RawUpstream {
    async fn start(fault: Fault) -> anyhow::Result<RawUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accept = AbortOnDrop::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                conns.spawn(async move {
                    let served = if fault.is_h2() {
                        serve_h2(tcp, fault).await
                    } else {
                        serve_h1(tcp, fault).await
                    };
                    let _ = served;
                });
                // Reap the ended ones so the set stays small.
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(RawUpstream {
            addr,
            _accept: accept,
        })
    }
}

/// Read one HTTP/1.1 request head (the requests here have no body).
/// `Ok(false)` when the peer closed first.
async fn read_head(tcp: &mut TcpStream) -> anyhow::Result<bool> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        head.extend_from_slice(&buf[..n]);
        ensure!(head.len() < 64 * 1024, "request head too large");
    }
    Ok(true)
}

/// Close with a TCP reset (SO_LINGER 0) instead of a FIN.
fn reset(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

async fn serve_h1(mut tcp: TcpStream, fault: Fault) -> anyhow::Result<()> {
    let body_100 = [b'x'; 100];
    while read_head(&mut tcp).await? {
        match fault {
            Fault::MalformedHead => {
                tcp.write_all(b"HTTP/1.1 2x0 Okay\r\n\xff\xfe: ?\r\n\r\n")
                    .await?;
                return Ok(());
            }
            Fault::OversizedHead => {
                let mut head = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
                head.resize(head.len() + (1 << 20), b'a');
                head.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
                let _ = tcp.write_all(&head).await;
                return Ok(());
            }
            Fault::ShortBody => {
                tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                    .await?;
                tcp.write_all(&body_100).await?;
                return Ok(());
            }
            Fault::LongBody => {
                tcp.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello\
                      HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON",
                )
                .await?;
            }
            Fault::BadChunked => {
                tcp.write_all(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
                )
                .await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ok(());
            }
            Fault::NeverAnswer => {
                tokio::time::sleep(HOLD).await;
                return Ok(());
            }
            Fault::ResetMidBody => {
                tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                    .await?;
                tcp.write_all(&body_100).await?;
                tcp.flush().await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                reset(tcp);
                return Ok(());
            }
            _ => bail!("not an HTTP/1.1 fault: {fault:?}"),
        }
    }
    Ok(())
}

/// The next frame from the client: (type, flags, stream, payload).
async fn read_frame(tcp: &mut TcpStream) -> anyhow::Result<(u8, u8, u32, Vec<u8>)> {
    let mut h = [0u8; 9];
    tcp.read_exact(&mut h).await?;
    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await?;
    Ok((h[3], h[4], stream, payload))
}

fn goaway(last: u32, code: u32) -> Vec<u8> {
    let mut p = last.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    frame(raw_h2::GOAWAY, 0, 0, &p)
}

/// `:status: 200` (HPACK static index 8) and `content-type:
/// application/grpc`.
fn response_head(stream: u32) -> Vec<u8> {
    let mut block = raw_h2::indexed(8);
    block.extend(raw_h2::literal("content-type", b"application/grpc"));
    frame(raw_h2::HEADERS, raw_h2::END_HEADERS, stream, &block)
}

async fn serve_h2(mut tcp: TcpStream, fault: Fault) -> anyhow::Result<()> {
    let mut preface = [0u8; 24];
    tcp.read_exact(&mut preface).await?;
    ensure!(preface == raw_h2::PREFACE, "not the HTTP/2 preface");
    tcp.write_all(&raw_h2::settings(&[])).await?;
    loop {
        let (kind, flags, stream, payload) = read_frame(&mut tcp).await?;
        match kind {
            raw_h2::SETTINGS if flags & raw_h2::ACK == 0 => {
                tcp.write_all(&frame(raw_h2::SETTINGS, raw_h2::ACK, 0, &[]))
                    .await?;
            }
            raw_h2::PING if flags & raw_h2::ACK == 0 => {
                tcp.write_all(&frame(raw_h2::PING, raw_h2::ACK, 0, &payload))
                    .await?;
            }
            raw_h2::HEADERS => {
                // The request's HPACK block is not decoded: every answer
                // says `application/grpc`, which a plain client ignores.
                let data = frame(raw_h2::DATA, 0, stream, &[b'x'; 100]);
                match fault {
                    Fault::H2MalformedHead => {
                        let block = raw_h2::literal("x-no-status", b"1");
                        let f = frame(
                            raw_h2::HEADERS,
                            raw_h2::END_HEADERS | raw_h2::END_STREAM,
                            stream,
                            &block,
                        );
                        tcp.write_all(&f).await?;
                    }
                    Fault::H2RstMidBody => {
                        tcp.write_all(&response_head(stream)).await?;
                        tcp.write_all(&data).await?;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        tcp.write_all(&raw_h2::rst_stream(stream, 0x2)).await?;
                    }
                    Fault::H2GoawayMidBody => {
                        tcp.write_all(&response_head(stream)).await?;
                        tcp.write_all(&data).await?;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        tcp.write_all(&goaway(stream, 0x2)).await?;
                        return Ok(());
                    }
                    Fault::H2GoawayRefused => {
                        tcp.write_all(&goaway(0, raw_h2::NO_ERROR)).await?;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        return Ok(());
                    }
                    Fault::H2NeverAnswer => {}
                    _ => bail!("not an HTTP/2 fault: {fault:?}"),
                }
            }
            _ => {}
        }
    }
}

// ------------------------------------------------------------ the skiff

/// skiff in front of one raw upstream per fault: `/<fault>/...` goes to
/// the cluster of that fault (HTTP/1.1 or HTTP/2 as the fault is), each
/// route with a 1 s timeout, no retries.
struct Bench {
    skiff: Skiff,
    _upstreams: Vec<RawUpstream>,
}

impl Bench {
    async fn start(outlier: Option<u32>) -> anyhow::Result<Bench> {
        let mut upstreams = Vec::new();
        let mut routes = String::new();
        let mut clusters = String::new();
        for fault in ALL {
            let up = RawUpstream::start(fault).await?;
            let name = fault.name();
            routes += &format!(
                "          - match: {{ prefix: \"/{name}/\" }}\n            cluster: {name}\n            timeout: {ROUTE_TIMEOUT}\n"
            );
            clusters += &format!(
                "  - name: {name}\n    protocol: {}\n    endpoints: [\"{}\"]\n",
                if fault.is_h2() { "http2" } else { "http1" },
                up.addr
            );
            if let Some(n) = outlier {
                clusters += &format!(
                    "    outlier_detection: {{ consecutive_failures: {n}, base_ejection_time: 60s }}\n"
                );
            }
            upstreams.push(up);
        }
        let yaml = format!(
            "admin:\n  address: 127.0.0.1:0\nlisteners:\n  - name: main\n    address: 127.0.0.1:0\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n{routes}clusters:\n{clusters}"
        );
        // The HTTP backend of `Skiff` is not routed to here.
        let skiff = Skiff::with_yaml(HttpBackend::start().await?, &yaml).await?;
        Ok(Bench {
            skiff,
            _upstreams: upstreams,
        })
    }

    fn pid(&self) -> u32 {
        self.skiff.process.child.pid()
    }

    /// skiff's open file descriptors.
    fn fds(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
    }

    /// `failures_total` of the one endpoint of `fault`'s cluster.
    async fn endpoint_failures(&self, fault: Fault) -> anyhow::Result<u64> {
        let (status, body) = self.skiff.admin_get("/clusters").await?;
        ensure!(status == 200, "/clusters answered {status}");
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let cluster = v["clusters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == fault.name().as_str()))
            .ok_or_else(|| anyhow!("no cluster {}", fault.name()))?;
        Ok(cluster["endpoints"][0]["failures_total"]
            .as_u64()
            .unwrap_or(0))
    }

    async fn endpoint_health(&self, fault: Fault) -> anyhow::Result<String> {
        let (_, body) = self.skiff.admin_get("/clusters").await?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let cluster = v["clusters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == fault.name().as_str()))
            .ok_or_else(|| anyhow!("no cluster {}", fault.name()))?;
        Ok(cluster["endpoints"][0]["health"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }
}

/// How one request came out, as the client saw it.
#[derive(Debug)]
struct Seen {
    status: u16,
    grpc_status: Option<String>,
    error: Option<String>,
    /// The body's end: `Ok(body)` for a clean end, `Err` for an error.
    body: Result<String, String>,
}

/// One request to `fault`'s route over `proto`, gRPC or plain GET.
async fn request(addr: SocketAddr, proto: Proto, fault: Fault, grpc: bool) -> anyhow::Result<Seen> {
    let mut c = HttpClient::connect(addr, proto).await?;
    let path = format!("/{}/call", fault.name());
    let req = if grpc {
        grpc_request(&c, &path)?
    } else {
        c.request("GET", &path).body(body::empty())?
    };
    let resp = c.send(req).await?;
    let (parts, b) = resp.into_parts();
    let read = tokio::time::timeout(Duration::from_secs(10), read_body(b))
        .await
        .map_err(|_| anyhow!("the response body did not end in 10 s"))?;
    let (body, trailers) = match read {
        Ok(r) => (Ok(r.text()), r.trailers),
        Err(e) => (Err(format!("{e:#}")), None),
    };
    // The status of a trailers-only answer is in the head, of a stream in
    // its trailers.
    let grpc_status = header_str(&parts.headers, "grpc-status")
        .or_else(|| trailers.as_ref().and_then(|t| header_str(t, "grpc-status")))
        .map(str::to_string);
    Ok(Seen {
        status: parts.status.as_u16(),
        grpc_status,
        error: header_str(&parts.headers, "x-skiff-error").map(str::to_string),
        body,
    })
}

/// Whether `seen` is what `fault` must give. With `concurrent` requests
/// on skiff's one HTTP/2 connection to the upstream, a GOAWAY mid-body
/// also refuses the streams opened after the one it answers: those get
/// the refused stream's answer.
fn check(
    fault: Fault,
    proto: Proto,
    grpc: bool,
    seen: &Seen,
    concurrent: bool,
) -> Result<(), String> {
    let what = format!(
        "{fault:?} over {proto:?}{}",
        if grpc { " (gRPC)" } else { "" }
    );
    let expected = match fault {
        Fault::H2GoawayMidBody if concurrent && seen.error.is_some() => {
            Fault::H2GoawayRefused.expected()
        }
        _ => fault.expected(),
    };
    let ok = match expected {
        Expected::Error(http, code, kind) if grpc => {
            seen.status == 200
                && seen.grpc_status.as_deref() == Some(code.to_string().as_str())
                && seen.error.as_deref() == Some(kind)
                && matches!(&seen.body, Ok(b) if b.is_empty())
                && http > 0
        }
        Expected::Error(http, _, kind) => {
            seen.status == http && seen.error.as_deref() == Some(kind) && seen.body.is_ok()
        }
        // Never a clean end: an error, or for gRPC trailers whose status
        // is not OK.
        Expected::BrokenStream => {
            seen.status == 200
                && seen.error.is_none()
                && match &seen.body {
                    Err(_) => true,
                    Ok(_) => grpc && seen.grpc_status.as_deref().is_some_and(|s| s != "0"),
                }
        }
        Expected::Complete(text) => seen.status == 200 && matches!(&seen.body, Ok(b) if b == text),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{what}: want {expected:?}, got {seen:?}"))
    }
}

/// The cases: every fault over HTTP/1.1 and HTTP/2, and the HTTP/2 ones
/// as gRPC calls too.
fn cases() -> Vec<(Fault, Proto, bool)> {
    let mut v = Vec::new();
    for fault in ALL {
        for proto in [Proto::H1, Proto::H2] {
            v.push((fault, proto, false));
        }
        if fault.is_h2() {
            v.push((fault, Proto::H2, true));
        }
    }
    v
}

/// Every fault gives the mapped answer, over each client protocol, and is
/// counted against its endpoint: `failures_total` in `/clusters` grows for
/// each failure before the head, no request is counted as the client's
/// (`skiff_proxy_errors_total{kind="bad_request"}` stays 0). Bound: the
/// answer of each case, as the table in the module doc says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_gets_the_mapped_answer() -> anyhow::Result<()> {
    let bench = Bench::start(None).await?;
    let addr = bench.skiff.addr;
    let mut wrong = Vec::new();
    for (fault, proto, grpc) in cases() {
        let before = bench.endpoint_failures(fault).await?;
        let seen = request(addr, proto, fault, grpc).await?;
        if let Err(e) = check(fault, proto, grpc, &seen, false) {
            wrong.push(e);
            continue;
        }
        let after = bench.endpoint_failures(fault).await?;
        if let Expected::Error(..) | Expected::BrokenStream = fault.expected() {
            // Counted when the try ends (or, mid-stream, when the stream does).
            let counted = eventually(Duration::from_secs(3), || async {
                let now = bench.endpoint_failures(fault).await?;
                ensure!(now > before, "failures_total still {now}");
                Ok(now)
            })
            .await;
            if counted.is_err() {
                wrong.push(format!(
                    "{fault:?} over {proto:?}: not counted against the endpoint ({before} -> {after})"
                ));
            }
        }
    }
    let bad = bench
        .skiff
        .metric("skiff_proxy_errors_total", &[("kind", "bad_request")])
        .await?;
    ensure!(
        bad == 0.0,
        "{bad} upstream faults counted as the client's bad requests"
    );
    ensure!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    Ok(())
}

/// A response longer than its Content-Length: the extra bytes (a whole
/// second response, `POISON`) are never taken as the answer to a later
/// request on the same upstream connection. Bound: 20 requests in a row on
/// one client connection all get `hello`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_bytes_after_a_response_answer_no_other_request() -> anyhow::Result<()> {
    let bench = Bench::start(None).await?;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = HttpClient::connect(bench.skiff.addr, proto).await?;
        for i in 0..20 {
            let (parts, body) = c.get("/longbody/call").await?;
            ensure!(
                parts.status == 200 && body.text() == "hello",
                "request {i} over {proto:?}: {} {:?}",
                parts.status,
                body.text()
            );
        }
    }
    Ok(())
}

/// A response broken mid-stream counts against the endpoint for outlier
/// detection, as a failure before the head would: with
/// `consecutive_failures: 3`, three resets mid-body eject the endpoint.
/// Bound: the endpoint's health is `ejected` after at most 3 such requests
/// per fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_stream_failures_eject_the_endpoint() -> anyhow::Result<()> {
    let bench = Bench::start(Some(3)).await?;
    let mut wrong = Vec::new();
    for fault in [
        Fault::ShortBody,
        Fault::BadChunked,
        Fault::ResetMidBody,
        Fault::H2RstMidBody,
        Fault::H2GoawayMidBody,
    ] {
        for _ in 0..3 {
            let seen = request(bench.skiff.addr, Proto::H1, fault, false).await?;
            if let Err(e) = check(fault, Proto::H1, false, &seen, false) {
                wrong.push(e);
            }
        }
        let health = eventually(Duration::from_secs(3), || async {
            let h = bench.endpoint_health(fault).await?;
            ensure!(h == "ejected", "health {h}");
            Ok(h)
        })
        .await;
        if health.is_err() {
            let h = bench.endpoint_health(fault).await?;
            wrong.push(format!(
                "{fault:?}: three failures mid-stream, endpoint {h}"
            ));
        }
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

/// Nothing leaks: a bounded burst of every case (8 rounds of each, a new
/// client connection per request, 4 at a time) leaves skiff with the
/// descriptors, memory and `skiff_connections_active` it had before.
/// Bounds: open fds within 8 of the baseline once the clients are gone,
/// VmRSS within 16 MiB of the baseline and never past the hostile suites'
/// ceiling, `skiff_connections_active` back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_faults_leaks_nothing() -> anyhow::Result<()> {
    const ROUNDS: usize = 8;
    const LANES: usize = 4;
    let bench = Arc::new(Bench::start(None).await?);
    let addr = bench.skiff.addr;
    // Warm up: one of each, so pools and buffers exist before the baseline.
    for (fault, proto, grpc) in cases() {
        let _ = request(addr, proto, fault, grpc).await?;
    }
    let settled = |b: Arc<Bench>| async move {
        eventually(Duration::from_secs(10), || async {
            let active = b.skiff.metric("skiff_connections_active", &[]).await?;
            ensure!(active == 0.0, "skiff_connections_active {active}");
            Ok(())
        })
        .await
    };
    settled(bench.clone()).await?;
    let fds_before = bench.fds()?;
    let rss_before = bench.skiff.rss_kib()?;
    let all = cases();
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..LANES {
        let all = all.clone();
        lanes.spawn(async move {
            let mut wrong = Vec::new();
            for round in 0..ROUNDS {
                for (i, (fault, proto, grpc)) in all.iter().enumerate() {
                    if (i + round) % LANES != lane {
                        continue;
                    }
                    match request(addr, *proto, *fault, *grpc).await {
                        Ok(seen) => {
                            if let Err(e) = check(*fault, *proto, *grpc, &seen, true) {
                                wrong.push(e);
                            }
                        }
                        Err(e) => wrong.push(format!("{fault:?} over {proto:?}: {e:#}")),
                    }
                }
            }
            wrong
        });
    }
    let mut wrong = Vec::new();
    while let Some(done) = bench.skiff.sampling(lanes.join_next()).await {
        wrong.extend(done?);
    }
    ensure!(
        wrong.is_empty(),
        "wrong answers in the burst:\n{}",
        wrong.join("\n")
    );
    settled(bench.clone()).await?;
    let fds = eventually(Duration::from_secs(10), || async {
        let now = bench.fds()?;
        ensure!(
            now <= fds_before + 8,
            "skiff has {now} fds open, {fds_before} before the burst"
        );
        Ok(now)
    })
    .await?;
    let rss = bench.skiff.rss_kib()?;
    eprintln!(
        "burst of {} requests: fds {fds_before} -> {fds}, VmRSS {rss_before} -> {rss} KiB",
        ROUNDS * all.len()
    );
    ensure!(
        rss <= rss_before + 16 * 1024,
        "VmRSS {rss} KiB after the burst, {rss_before} KiB before"
    );
    bench.skiff.assert_rss_bounded("upstream faults")?;
    Ok(())
}

/// End a connection after a GOAWAY as a server does: FIN, then read what
/// the client still sends until it closes (bounded). Closing with unread
/// bytes would send a TCP reset, and a reset can make the client's kernel
/// drop the GOAWAY before h2 reads it.
async fn close_after_goaway(mut tcp: TcpStream) -> anyhow::Result<()> {
    tcp.shutdown().await?;
    let mut sink = [0u8; 4096];
    let drain = async { while tcp.read(&mut sink).await.is_ok_and(|n| n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    Ok(())
}

/// A GOAWAY names the last stream its sender may have processed: a stream
/// above it never reached the app (refused, safe to send again), one at or
/// below it may have. A POST, which a retry policy resends only when it
/// provably never arrived, is resent after a graceful GOAWAY (NO_ERROR)
/// that refused it, and never after one that let it through. After a
/// GOAWAY with an error code h2 reports both kinds of stream alike, so
/// neither is resent: a refused POST lost is the safe side of that.
#[tokio::test]
async fn a_post_is_resent_after_a_goaway_only_when_it_was_refused() -> anyhow::Result<()> {
    const INTERNAL_ERROR: u32 = 0x2;
    for (refused, code, want_tries) in [
        (true, raw_h2::NO_ERROR, 3),
        (true, INTERNAL_ERROR, 1), // refused, but not told apart from processed
        (false, raw_h2::NO_ERROR, 1),
        (false, INTERNAL_ERROR, 1),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let tries = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = tries.clone();
        let _upstream = AbortOnDrop::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut preface = [0u8; 24];
                    tcp.read_exact(&mut preface).await?;
                    tcp.write_all(&raw_h2::settings(&[])).await?;
                    loop {
                        let (kind, flags, stream, _) = read_frame(&mut tcp).await?;
                        if kind == raw_h2::SETTINGS && flags & raw_h2::ACK == 0 {
                            tcp.write_all(&frame(raw_h2::SETTINGS, raw_h2::ACK, 0, &[]))
                                .await?;
                        }
                        if kind == raw_h2::HEADERS {
                            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let last = if refused { stream - 1 } else { stream };
                            tcp.write_all(&goaway(last, code)).await?;
                            return close_after_goaway(tcp).await;
                        }
                    }
                });
            }
        });
        let yaml = format!(
            "admin:\n  address: 127.0.0.1:0\nlisteners:\n  - name: main\n    address: 127.0.0.1:0\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: \"/\" }}\n            cluster: goaway\n            timeout: {ROUTE_TIMEOUT}\n            retry: {{ attempts: 3, on: [refused-stream, reset], backoff: {{ base: 1ms, max: 2ms }} }}\nclusters:\n  - name: goaway\n    protocol: http2\n    endpoints: [\"{addr}\"]\n"
        );
        let skiff = Skiff::with_yaml(HttpBackend::start().await?, &yaml).await?;
        let mut c = HttpClient::connect(skiff.addr, Proto::H1).await?;
        let req = c.request("POST", "/orders").body(body::full("{}"))?;
        let resp = c.send(req).await?;
        let what = format!(
            "GOAWAY {} the stream, code {code}",
            if refused { "refusing" } else { "after" }
        );
        assert_eq!(resp.status(), 502, "{what}");
        assert_eq!(
            header_str(resp.headers(), "x-skiff-error"),
            Some("upstream_reset"),
            "{what}"
        );
        assert_eq!(
            tries.load(std::sync::atomic::Ordering::SeqCst),
            want_tries,
            "{what}: tries the upstream saw; skiff counted:\n{}",
            skiff
                .admin_get("/metrics")
                .await?
                .1
                .lines()
                .filter(|l| l.contains("retr") || l.contains("attempt") || l.contains("errors"))
                .collect::<Vec<_>>()
                .join("\n")
                + "\n"
                + &skiff.process.lines.joined()
        );
    }
    Ok(())
}

/// The HTTP/2 form of the keep-alive race: the upstream closes a pooled
/// connection with a graceful GOAWAY as a request leaves on it. Without a
/// retry policy, a request with no body is sent once more on a new
/// connection (it never reached the app); one with a body gets the
/// refusal, since its bytes are gone.
#[tokio::test]
async fn a_bodiless_request_refused_by_a_graceful_goaway_is_sent_again() -> anyhow::Result<()> {
    for (method, want_status, want_tries) in [("GET", 200, 2), ("POST", 502, 1)] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let tries = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = tries.clone();
        let _upstream = AbortOnDrop::spawn(async move {
            let mut connections = 0;
            while let Ok((mut tcp, _)) = listener.accept().await {
                connections += 1;
                let first = connections == 1;
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut preface = [0u8; 24];
                    tcp.read_exact(&mut preface).await?;
                    tcp.write_all(&raw_h2::settings(&[])).await?;
                    loop {
                        let (kind, flags, stream, _) = read_frame(&mut tcp).await?;
                        if kind == raw_h2::SETTINGS && flags & raw_h2::ACK == 0 {
                            tcp.write_all(&frame(raw_h2::SETTINGS, raw_h2::ACK, 0, &[]))
                                .await?;
                        }
                        if kind == raw_h2::HEADERS {
                            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            if first {
                                tcp.write_all(&goaway(0, raw_h2::NO_ERROR)).await?;
                                return close_after_goaway(tcp).await;
                            }
                            tcp.write_all(&response_head(stream)).await?;
                            tcp.write_all(&frame(raw_h2::DATA, raw_h2::END_STREAM, stream, b"ok"))
                                .await?;
                        }
                    }
                });
            }
        });
        let yaml = format!(
            "admin:\n  address: 127.0.0.1:0\nlisteners:\n  - name: main\n    address: 127.0.0.1:0\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: \"/\" }}\n            cluster: goaway\n            timeout: {ROUTE_TIMEOUT}\nclusters:\n  - name: goaway\n    protocol: http2\n    endpoints: [\"{addr}\"]\n"
        );
        let skiff = Skiff::with_yaml(HttpBackend::start().await?, &yaml).await?;
        let mut c = HttpClient::connect(skiff.addr, Proto::H1).await?;
        let body = if method == "GET" {
            body::empty()
        } else {
            body::full("{}")
        };
        let resp = c.send(c.request(method, "/orders").body(body)?).await?;
        let seen = tries.load(std::sync::atomic::Ordering::SeqCst);
        let error = header_str(resp.headers(), "x-skiff-error").map(str::to_string);
        assert_eq!(
            resp.status(),
            want_status,
            "{method}: {error:?} after {seen} tries"
        );
        assert_eq!(seen, want_tries, "{method}: tries the upstream saw");
    }
    Ok(())
}
