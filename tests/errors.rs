//! The errors the proxy itself returns (docs/architecture.md, "Errors"), for
//! plain HTTP and gRPC: status, grpc-status (trailers-only), `x-skiff-error`;
//! an app's own errors pass untouched and unmarked; garbage never takes the
//! proxy down.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::anyhow;
use support::dns::DnsServer;
use support::faults::{closed_port, Fault, FaultBackend};
use support::grpc_backend::{echo_client, grpc_frame, status_of, EchoRequest, GrpcBackend};
use support::http_backend::HttpBackend;
use support::http_client::{
    grpc_request, header_str, raw_exchange, raw_headers, raw_status, HttpClient,
};
use support::{Proto, Proxy, ProxyConfig};

const ECHO_UNARY: &str = "/skiff.test.Echo/Unary";

/// A plain request to `path` gets `status`, `x-skiff-error: kind` and a one-line text body.
async fn expect_http_error(
    proxy: SocketAddr,
    down: Proto,
    path: &str,
    status: u16,
    kind: &str,
) -> anyhow::Result<()> {
    let mut c = HttpClient::connect(proxy, down).await?;
    let (parts, body) = c.get(path).await?;
    let what = format!("GET {path} over {down:?}");
    assert_eq!(parts.status, status, "{what}: body {:?}", body.text());
    assert_eq!(
        header_str(&parts.headers, "x-skiff-error"),
        Some(kind),
        "{what}: {:?}",
        parts.headers
    );
    let text = body.text();
    assert!(
        !text.trim().is_empty() && text.trim_end().lines().count() == 1,
        "{what}: want a one-line text body, got {text:?}"
    );
    Ok(())
}

/// A gRPC call to `path` gets a trailers-only answer: HTTP 200, `grpc-status:
/// code` and a `grpc-message` in the headers, no body, no trailers; plus
/// `x-skiff-error: kind`.
async fn expect_grpc_error(
    proxy: SocketAddr,
    path: &str,
    code: u32,
    kind: &str,
) -> anyhow::Result<()> {
    let mut c = HttpClient::connect(proxy, Proto::H2).await?;
    let req = grpc_request(&c, path)?;
    let (parts, body) = c.exchange(req).await?;
    let what = format!("gRPC {path}");
    assert_eq!(
        parts.status, 200,
        "{what}: a gRPC error is HTTP 200: {parts:?}"
    );
    assert_eq!(
        header_str(&parts.headers, "grpc-status"),
        Some(code.to_string().as_str()),
        "{what}: want trailers-only grpc-status {code} in the headers: {parts:?} trailers {:?}",
        body.trailers
    );
    assert!(
        header_str(&parts.headers, "grpc-message").is_some_and(|m| !m.is_empty()),
        "{what}: a proxy-made gRPC error says what happened in grpc-message: {:?}",
        parts.headers
    );
    assert!(
        header_str(&parts.headers, "content-type")
            .is_some_and(|c| c.starts_with("application/grpc")),
        "{what}: {:?}",
        parts.headers
    );
    assert_eq!(body.digest.len, 0, "{what}: trailers-only has no body");
    assert!(
        body.trailers.is_none(),
        "{what}: trailers-only has no trailers: {:?}",
        body.trailers
    );
    assert_eq!(
        header_str(&parts.headers, "x-skiff-error"),
        Some(kind),
        "{what}: {:?}",
        parts.headers
    );
    Ok(())
}

/// The same through tonic: the status code and the proxy's mark.
async fn expect_tonic_error(
    proxy: SocketAddr,
    code: tonic::Code,
    kind: &str,
) -> anyhow::Result<()> {
    let mut client = echo_client(proxy).await?;
    let status = status_of(
        client
            .unary(EchoRequest {
                delay_ms: 3000,
                ..Default::default()
            })
            .await,
    )?;
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get("x-skiff-error")
            .and_then(|v| v.to_str().ok()),
        Some(kind),
        "{status:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_or_unimplemented() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    // Routed: only /app/ on host app.local.
    let proxy = ProxyConfig::new("auto", backend.addr())
        .prefix("/app/")
        .domains(&["app.local", "127.0.0.1"])
        .start()
        .await?;
    for down in [Proto::H1, Proto::H2] {
        expect_http_error(proxy.addr(), down, "/not-routed", 404, "no_route").await?;
    }
    expect_grpc_error(proxy.addr(), ECHO_UNARY, 12, "no_route").await?;
    expect_tonic_error(proxy.addr(), tonic::Code::Unimplemented, "no_route").await?;

    // No virtual host for this authority.
    let mut c = HttpClient::connect(proxy.addr(), Proto::H1).await?;
    let req = http::Request::get("/app/x")
        .header("host", "elsewhere.example")
        .body(support::body::empty())?;
    let (parts, _) = c.exchange(req).await?;
    assert_eq!(parts.status, 404);
    assert_eq!(
        header_str(&parts.headers, "x-skiff-error"),
        Some("no_route")
    );
    assert!(
        backend.seen().is_empty(),
        "nothing should reach the backend: {:?}",
        backend.seen()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_502_or_unavailable() -> anyhow::Result<()> {
    let nobody = closed_port().await?;
    for up in ["http1", "http2"] {
        let proxy = ProxyConfig::new(up, nobody).start().await?;
        for down in [Proto::H1, Proto::H2] {
            expect_http_error(proxy.addr(), down, "/", 502, "connect_failure").await?;
        }
        if up == "http2" {
            expect_grpc_error(proxy.addr(), ECHO_UNARY, 14, "connect_failure").await?;
            expect_tonic_error(proxy.addr(), tonic::Code::Unavailable, "connect_failure").await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_response_is_502_or_unavailable() -> anyhow::Result<()> {
    let backend = FaultBackend::start(Fault::ResetAfterRequest).await?;
    for up in ["http1", "http2"] {
        let proxy = ProxyConfig::new(up, backend.addr()).start().await?;
        for down in [Proto::H1, Proto::H2] {
            expect_http_error(proxy.addr(), down, "/", 502, "upstream_reset").await?;
        }
        if up == "http2" {
            expect_grpc_error(proxy.addr(), ECHO_UNARY, 14, "upstream_reset").await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_on_accept_is_502_or_unavailable() -> anyhow::Result<()> {
    // Closed before a byte was exchanged: the proxy may call it either a
    // connect failure or a reset, but it is the proxy's 502 / 14.
    let backend = FaultBackend::start(Fault::CloseOnAccept).await?;
    for up in ["http1", "http2"] {
        let proxy = ProxyConfig::new(up, backend.addr()).start().await?;
        for down in [Proto::H1, Proto::H2] {
            let mut c = HttpClient::connect(proxy.addr(), down).await?;
            let (parts, body) = c.get("/").await?;
            assert_eq!(parts.status, 502, "{up} {down:?}: {}", body.text());
            let kind = header_str(&parts.headers, "x-skiff-error");
            assert!(
                matches!(kind, Some("connect_failure" | "upstream_reset")),
                "{up} {down:?}: x-skiff-error {kind:?}"
            );
        }
        if up == "http2" {
            let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;
            let req = grpc_request(&c, ECHO_UNARY)?;
            let (parts, _) = c.exchange(req).await?;
            assert_eq!(parts.status, 200);
            assert_eq!(
                header_str(&parts.headers, "grpc-status"),
                Some("14"),
                "{parts:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_upstream_is_503_or_unavailable() -> anyhow::Result<()> {
    // Two DNS clusters: `app.test` resolves to the backend (the control),
    // `gone.test` does not exist, so its cluster has no endpoint at all.
    let backend = HttpBackend::start().await?;
    let dns = DnsServer::start(&[("app.test", Ipv4Addr::LOCALHOST)]).await?;
    let port = backend.addr().port();
    let yaml = format!(
        r#"admin:
  address: 127.0.0.1:0
resolver:
  servers: ["{dns}"]
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: "/gone/" }}
            cluster: gone
          - match: {{ prefix: "/skiff.test.Echo/" }}
            cluster: gone
          - match: {{ prefix: "/" }}
            cluster: app
clusters:
  - name: app
    protocol: http1
    dns: {{ name: app.test, port: {port}, refresh: 1s }}
  - name: gone
    protocol: http2
    dns: {{ name: gone.test, port: 80, refresh: 1s }}
"#,
        dns = dns.addr()
    );
    let proxy = Proxy::start(&yaml).await?;
    proxy.wait_ready().await?;
    let mut c = HttpClient::connect(proxy.addr(), Proto::H1).await?;
    let (parts, body) = c.get("/app").await?;
    assert_eq!(
        parts.status,
        200,
        "the control cluster must work: {}",
        body.text()
    );

    for down in [Proto::H1, Proto::H2] {
        expect_http_error(proxy.addr(), down, "/gone/x", 503, "no_healthy_upstream").await?;
    }
    expect_grpc_error(proxy.addr(), ECHO_UNARY, 14, "no_healthy_upstream").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_504_or_deadline_exceeded() -> anyhow::Result<()> {
    let http = HttpBackend::start().await?;
    for up in [Proto::H1, Proto::H2] {
        let proxy = ProxyConfig::upstream(up, http.addr())
            .timeout(Some("300ms"))
            .start()
            .await?;
        for down in [Proto::H1, Proto::H2] {
            expect_http_error(proxy.addr(), down, "/?delay_ms=5000", 504, "timeout").await?;
        }
    }
    let grpc = GrpcBackend::start().await?;
    let proxy = ProxyConfig::new("http2", grpc.addr())
        .timeout(Some("300ms"))
        .start()
        .await?;
    expect_tonic_error(proxy.addr(), tonic::Code::DeadlineExceeded, "timeout").await?;
    // Raw: a slow call gets the trailers-only shape.
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    let req = c
        .request("POST", ECHO_UNARY)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(support::body::full(grpc_frame(&EchoRequest {
            delay_ms: 3000,
            ..Default::default()
        })))?;
    let (parts, body) = c.exchange(req).await?;
    assert_eq!(parts.status, 200, "{parts:?}");
    assert_eq!(
        header_str(&parts.headers, "grpc-status"),
        Some("4"),
        "{parts:?} {:?}",
        body.trailers
    );
    assert_eq!(header_str(&parts.headers, "x-skiff-error"), Some("timeout"));
    Ok(())
}

const MALFORMED: [(&str, &[u8]); 4] = [
    (
        "header line without a colon",
        b"GET / HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n",
    ),
    (
        "space inside the method",
        b"GE T / HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "bad content-length",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    ),
    (
        "two different content-lengths",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ),
];

/// An HTTP/1.1 request whose head is over 8 KiB, for a proxy limited to 8 KiB.
fn oversize_http1_request() -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "x".repeat(20_000)
    )
}

fn head_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.chars().take(300).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http1_request_is_400() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let proxy = ProxyConfig::new("http1", backend.addr()).start().await?;
    for (what, bytes) in MALFORMED {
        let got = raw_exchange(proxy.addr(), bytes, Duration::from_secs(3)).await?;
        assert_eq!(
            raw_status(&got),
            Some(400),
            "{what}: got {:?}",
            head_of(&got)
        );
    }
    assert!(
        backend.seen().is_empty(),
        "a malformed request reached the backend"
    );
    // Counted as the proxy's own errors.
    support::eventually(Duration::from_secs(10), || async {
        let text = proxy.metrics().await?;
        let labels = [("listener", "main"), ("kind", "bad_request")];
        let n = support::metric_value(&text, "skiff_proxy_errors_total", &labels);
        anyhow::ensure!(
            n >= Some(MALFORMED.len() as f64),
            "bad_request errors counted: {n:?}"
        );
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_headers_are_431() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let proxy = ProxyConfig::new("auto", backend.addr())
        .limit("max_header_bytes: 8192")
        .start()
        .await?;
    let big = "x".repeat(20_000);

    // HTTP/1.1, raw, so nothing between us and the proxy trims it.
    let got = raw_exchange(
        proxy.addr(),
        oversize_http1_request().as_bytes(),
        Duration::from_secs(3),
    )
    .await?;
    assert_eq!(
        raw_status(&got),
        Some(431),
        "HTTP/1.1: got {:?}",
        head_of(&got)
    );

    // HTTP/2.
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    let req = c
        .request("GET", "/")
        .header("x-big", big.as_str())
        .body(support::body::empty())?;
    let (parts, _) = c.exchange(req).await?;
    assert_eq!(parts.status, 431, "HTTP/2: {parts:?}");
    assert_eq!(
        header_str(&parts.headers, "x-skiff-error"),
        Some("bad_request"),
        "HTTP/2: {parts:?}"
    );

    // gRPC: INTERNAL, trailers-only.
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    let mut req = grpc_request(&c, ECHO_UNARY)?;
    req.headers_mut().insert("x-big", big.parse()?);
    let (parts, _) = c.exchange(req).await?;
    assert_eq!(parts.status, 200, "gRPC: {parts:?}");
    assert_eq!(
        header_str(&parts.headers, "grpc-status"),
        Some("13"),
        "gRPC: {parts:?}"
    );
    assert_eq!(
        header_str(&parts.headers, "x-skiff-error"),
        Some("bad_request"),
        "gRPC: {parts:?}"
    );
    assert!(
        backend.seen().is_empty(),
        "an oversize request reached the backend"
    );
    Ok(())
}

/// Every proxy-made error names its kind in `x-skiff-error` (docs/architecture.md,
/// "Errors"), including the 400 answers to malformed HTTP/1.1 request heads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "proxy gap: hyper answers malformed HTTP/1.1 heads with its own 400, without x-skiff-error"]
async fn http1_400_carries_x_skiff_error() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let proxy = ProxyConfig::new("http1", backend.addr()).start().await?;
    for (what, bytes) in MALFORMED {
        let got = raw_exchange(proxy.addr(), bytes, Duration::from_secs(3)).await?;
        assert_eq!(
            header_str(&raw_headers(&got), "x-skiff-error"),
            Some("bad_request"),
            "{what}: a proxy-made error names its kind: {:?}",
            head_of(&got)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_made_errors_pass_unmarked() -> anyhow::Result<()> {
    let http = HttpBackend::start().await?;
    for up in [Proto::H1, Proto::H2] {
        let proxy = ProxyConfig::upstream(up, http.addr()).start().await?;
        for down in [Proto::H1, Proto::H2] {
            for status in [503u16, 502, 504, 404, 400, 431, 500] {
                let mut c = HttpClient::connect(proxy.addr(), down).await?;
                let (parts, body) = c.get(&format!("/?status={status}")).await?;
                assert_eq!(parts.status, status, "{up:?} {down:?}");
                assert_eq!(body.text(), "ok", "the app's body passes unchanged");
                assert!(
                    parts.headers.get("x-skiff-error").is_none(),
                    "an app-made {status} carries x-skiff-error ({up:?} -> {down:?}): {:?}",
                    parts.headers
                );
            }
        }
    }

    let grpc = GrpcBackend::start().await?;
    let proxy = ProxyConfig::new("http2", grpc.addr()).start().await?;
    let mut client = echo_client(proxy.addr()).await?;
    for code in [
        tonic::Code::Unavailable,
        tonic::Code::DeadlineExceeded,
        tonic::Code::Unimplemented,
        tonic::Code::Internal,
    ] {
        let req = EchoRequest {
            fail_code: code as i32,
            fail_message: "from the app".into(),
            ..Default::default()
        };
        let status = status_of(client.unary(req).await)?;
        assert_eq!(status.code(), code);
        assert_eq!(status.message(), "from the app");
        assert!(
            status.metadata().get("x-skiff-error").is_none(),
            "an app-made {code:?} carries x-skiff-error: {status:?}"
        );
    }
    Ok(())
}

/// Still answers a normal request, and the serving task is alive.
async fn still_serves(proxy: &Proxy, after: &str) -> anyhow::Result<()> {
    assert!(proxy.is_running(), "the proxy stopped after {after}");
    for down in [Proto::H1, Proto::H2] {
        let mut c = HttpClient::connect(proxy.addr(), down).await?;
        let (parts, body) = c
            .get("/")
            .await
            .map_err(|e| anyhow!("after {after}: {e:#}"))?;
        assert_eq!(parts.status, 200, "after {after}: {}", body.text());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_takes_the_proxy_down() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let proxy = ProxyConfig::new("auto", backend.addr()).start().await?;
    let mut noise = Vec::new();
    let mut x: u32 = 0x1234_5678;
    for _ in 0..64 * 1024 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", noise.clone()),
        ("zeros", vec![0u8; 10_000]),
        ("bad HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".to_vec()),
        ("preface then random frames", [preface.clone(), noise.clone()].concat()),
        // A HEADERS frame on stream 1 whose HPACK block is garbage.
        ("preface then bad HPACK", [preface.clone(), vec![0, 0, 4, 1, 5, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]].concat()),
        // A frame claiming 16 MiB on a connection that allows 16 KiB.
        ("preface then oversized frame", [preface.clone(), vec![0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0]].concat()),
        ("truncated request", b"GET /some/path HTTP/1.1\r\nHost: x\r\nContent-Le".to_vec()),
        ("request line only", b"GET\r\n\r\n".to_vec()),
        ("huge request line", [b"GET /".to_vec(), vec![b'a'; 200_000], b" HTTP/1.1\r\n\r\n".to_vec()].concat()),
        ("TLS client hello to a plaintext port", vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]),
        ("chunked body with a bad chunk size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec()),
    ];
    for (what, bytes) in &cases {
        let _ = raw_exchange(proxy.addr(), bytes, Duration::from_millis(500)).await;
        still_serves(&proxy, what).await?;
    }
    // Many at once, then hang up mid-request on a few.
    let mut tasks = tokio::task::JoinSet::new();
    for (_, bytes) in cases {
        let addr = proxy.addr();
        tasks.spawn(async move {
            raw_exchange(addr, &bytes, Duration::from_millis(300))
                .await
                .map(|_| ())
        });
    }
    while tasks.join_next().await.is_some() {}
    still_serves(&proxy, "all the garbage at once").await?;
    Ok(())
}
