//! gRPC end to end: tonic (and grpcio) clients -> skiff -> tonic (and grpcio)
//! servers, every call kind, statuses, trailers, deadlines, large messages,
//! many streams (docs/architecture.md, "Errors" and "Protocol rules").

mod support;

use std::time::Duration;

use support::body::Digest;
use support::grpc_backend::{
    echo_client, grpc_frame, parse_grpc_timeout, status_of, EchoRequest, GrpcBackend,
};
use support::http_client::{header_str, HttpClient};
use support::process::{python_grpc_client, PythonGrpcServer};
use support::{peers, within, Proto, Proxy, ProxyConfig};
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(30);

/// A tonic backend behind a proxy whose one route has `timeout`.
async fn setup(timeout: Option<&str>) -> anyhow::Result<(GrpcBackend, Proxy)> {
    let backend = GrpcBackend::start().await?;
    let proxy = ProxyConfig::new("http2", backend.addr())
        .timeout(timeout)
        .start()
        .await?;
    Ok((backend, proxy))
}

fn md<'a>(m: &'a tonic::metadata::MetadataMap, key: &str) -> Option<&'a str> {
    m.get(key).and_then(|v| v.to_str().ok())
}

fn trailers(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_passes_payload_metadata_and_trailers() -> anyhow::Result<()> {
    let (backend, proxy) = setup(Some("10s")).await?;
    let mut client = echo_client(proxy.addr()).await?;
    let mut req = tonic::Request::new(EchoRequest {
        payload: b"hello through skiff".to_vec(),
        trailers: trailers(&[("x-app-trailer", "t-value")]),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-request-id", "req-grpc-1".parse()?);
    req.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?,
    );
    req.metadata_mut()
        .insert("x-custom-header", "custom".parse()?);
    let resp = within(LIMIT, "unary", async { Ok(client.unary(req).await?) }).await?;

    assert_eq!(resp.get_ref().payload, b"hello through skiff");
    let seen = &resp.get_ref().seen_headers;
    assert_eq!(
        seen.get("x-request-id").map(String::as_str),
        Some("req-grpc-1"),
        "seen: {seen:?}"
    );
    assert_eq!(
        seen.get("traceparent").map(String::as_str),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        "seen: {seen:?}"
    );
    assert_eq!(
        seen.get("x-custom-header").map(String::as_str),
        Some("custom")
    );
    assert_eq!(
        seen.get("content-type").map(String::as_str),
        Some("application/grpc")
    );
    assert_eq!(
        seen.get("te").map(String::as_str),
        Some("trailers"),
        "te: trailers must reach a gRPC server"
    );
    assert_eq!(
        md(resp.metadata(), "x-app-trailer"),
        Some("t-value"),
        "custom trailer lost: {:?}",
        resp.metadata()
    );
    assert!(resp.metadata().get("x-skiff-error").is_none());
    assert_eq!(backend.seen().len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_without_request_id_gets_one() -> anyhow::Result<()> {
    let (_backend, proxy) = setup(Some("10s")).await?;
    let mut client = echo_client(proxy.addr()).await?;
    let resp = client.unary(EchoRequest::default()).await?;
    let id = resp
        .get_ref()
        .seen_headers
        .get("x-request-id")
        .cloned()
        .unwrap_or_default();
    assert!(
        !id.is_empty(),
        "the proxy made no x-request-id: {:?}",
        resp.get_ref().seen_headers
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streaming_passes_every_message_then_the_error() -> anyhow::Result<()> {
    let (_backend, proxy) = setup(Some("10s")).await?;
    let mut client = echo_client(proxy.addr()).await?;

    let stream = client
        .server_stream(EchoRequest {
            payload: b"m".to_vec(),
            repeat: 100,
            trailers: trailers(&[("x-stream-trailer", "done")]),
            ..Default::default()
        })
        .await?;
    let mut stream = stream.into_inner();
    let mut indexes = Vec::new();
    while let Some(m) = within(LIMIT, "stream message", async {
        Ok(stream.message().await?)
    })
    .await?
    {
        indexes.push(m.index);
    }
    assert_eq!(indexes, (0..100).collect::<Vec<_>>());
    let t = stream.trailers().await?.unwrap_or_default();
    assert_eq!(md(&t, "x-stream-trailer"), Some("done"), "trailers: {t:?}");

    // Three messages, then a status with custom trailing metadata.
    let mut stream = client
        .server_stream(EchoRequest {
            payload: b"x".to_vec(),
            repeat: 3,
            fail_code: Code::FailedPrecondition as i32,
            fail_message: "stream failed after 3".into(),
            trailers: trailers(&[("x-custom", "abc")]),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut got = 0;
    let status = loop {
        match within(LIMIT, "stream message", async {
            Ok(stream.message().await)
        })
        .await?
        {
            Ok(Some(_)) => got += 1,
            Ok(None) => anyhow::bail!("stream ended with OK after {got} messages"),
            Err(s) => break s,
        }
    };
    assert_eq!(got, 3);
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "stream failed after 3");
    assert_eq!(md(status.metadata(), "x-custom"), Some("abc"));
    assert!(status.metadata().get("x-skiff-error").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_streaming_gets_every_message() -> anyhow::Result<()> {
    let (_backend, proxy) = setup(Some("10s")).await?;
    let mut client = echo_client(proxy.addr()).await?;
    let parts: Vec<EchoRequest> = (0..50)
        .map(|i| EchoRequest {
            payload: format!("{i},").into_bytes(),
            ..Default::default()
        })
        .collect();
    let expected: Vec<u8> = parts.iter().flat_map(|p| p.payload.clone()).collect();
    let resp = within(LIMIT, "client stream", async {
        Ok(client.client_stream(tokio_stream::iter(parts)).await?)
    })
    .await?;
    assert_eq!(resp.get_ref().payload, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_streaming_is_interactive() -> anyhow::Result<()> {
    let (_backend, proxy) = setup(Some("10s")).await?;
    let mut client = echo_client(proxy.addr()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = client
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    // Ping-pong: each message is sent only after the previous reply came
    // back, so this passes only if the proxy streams both ways as it goes.
    for i in 0..20u32 {
        tx.send(EchoRequest {
            payload: format!("ping {i}").into_bytes(),
            ..Default::default()
        })
        .await?;
        let reply = within(LIMIT, "bidi reply", async { Ok(replies.message().await?) })
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended early at {i}"))?;
        assert_eq!(reply.payload, format!("ping {i}").into_bytes());
        assert_eq!(reply.index, i);
    }
    drop(tx);
    assert!(
        within(LIMIT, "bidi end", async { Ok(replies.message().await?) })
            .await?
            .is_none()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_error_statuses_pass_unchanged() -> anyhow::Result<()> {
    let (_backend, proxy) = setup(Some("10s")).await?;
    let mut client = echo_client(proxy.addr()).await?;
    for (code, message) in [
        (Code::InvalidArgument, "bad argument: field `x` is 7"),
        (Code::NotFound, "no such thing"),
        (Code::Unavailable, "the app says it is unavailable"),
        (Code::ResourceExhausted, "quota, 100% used"),
        (Code::Internal, "ünïcödé and\nnewline"),
    ] {
        let req = EchoRequest {
            fail_code: code as i32,
            fail_message: message.into(),
            trailers: trailers(&[("x-custom", "abc"), ("x-error-detail", "d1")]),
            ..Default::default()
        };
        let status =
            status_of(within(LIMIT, "unary", async { Ok(client.unary(req).await) }).await?)?;
        assert_eq!(status.code(), code, "{status:?}");
        assert_eq!(status.message(), message, "{status:?}");
        assert_eq!(md(status.metadata(), "x-custom"), Some("abc"), "{status:?}");
        assert_eq!(
            md(status.metadata(), "x-error-detail"),
            Some("d1"),
            "{status:?}"
        );
        assert!(
            status.metadata().get("x-skiff-error").is_none(),
            "an app-made status carries x-skiff-error: {status:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_deadline_is_enforced_and_forwarded() -> anyhow::Result<()> {
    // tonic (like every gRPC library) also enforces a deadline on its own side,
    // which would hide what the proxy does; so this call is made with a plain
    // HTTP/2 client that sends `grpc-timeout` and waits for the proxy's answer.
    let (backend, proxy) = setup(Some("10s")).await?;
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    let client_deadline = Duration::from_millis(400);
    let req = c
        .request("POST", "/skiff.test.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "400m")
        .body(support::body::full(grpc_frame(&EchoRequest {
            delay_ms: 5000,
            ..Default::default()
        })))?;
    let (parts, body) = c.exchange(req).await?;
    let grpc_status = header_str(&parts.headers, "grpc-status").or_else(|| {
        body.trailers
            .as_ref()
            .and_then(|t| header_str(t, "grpc-status"))
    });
    assert_eq!(
        grpc_status,
        Some("4"),
        "want DEADLINE_EXCEEDED: {parts:?} trailers {:?}",
        body.trailers
    );
    assert_eq!(
        header_str(&parts.headers, "x-skiff-error"),
        Some("timeout"),
        "{parts:?}"
    );

    let seen = backend.seen();
    let forwarded = seen
        .first()
        .and_then(|h| h.get("grpc-timeout"))
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| anyhow::anyhow!("the server saw no grpc-timeout: {seen:?}"))?;
    let forwarded = parse_grpc_timeout(forwarded)
        .ok_or_else(|| anyhow::anyhow!("bad grpc-timeout {forwarded:?}"))?;
    assert!(
        forwarded <= client_deadline,
        "the server saw grpc-timeout {forwarded:?}, more than the client's {client_deadline:?}"
    );

    // Through tonic the caller sees DEADLINE_EXCEEDED (from whichever side
    // fires first), and the server again sees no more than the deadline.
    let mut client = echo_client(proxy.addr()).await?;
    let mut req = tonic::Request::new(EchoRequest {
        delay_ms: 5000,
        ..Default::default()
    });
    req.set_timeout(client_deadline);
    let status = status_of(within(LIMIT, "unary", async { Ok(client.unary(req).await) }).await?)?;
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_ends_a_slow_call() -> anyhow::Result<()> {
    let (_backend, proxy) = setup(Some("300ms")).await?;
    let mut client = echo_client(proxy.addr()).await?;
    let req = EchoRequest {
        delay_ms: 5000,
        ..Default::default()
    };
    let status = status_of(within(LIMIT, "unary", async { Ok(client.unary(req).await) }).await?)?;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        md(status.metadata(), "x-skiff-error"),
        Some("timeout"),
        "{status:?}"
    );
    // A fast call on the same route still works.
    let ok = client
        .unary(EchoRequest {
            payload: b"quick".to_vec(),
            ..Default::default()
        })
        .await?;
    assert_eq!(ok.get_ref().payload, b"quick");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_over_one_mebibyte_both_ways() -> anyhow::Result<()> {
    let (_backend, proxy) = setup(Some("20s")).await?;
    let mut client = echo_client(proxy.addr()).await?;
    let big = support::body::pattern(7, 4 * 1024 * 1024 + 3).to_vec();

    // 4 MiB up, echoed back.
    let resp = within(LIMIT, "big unary", async {
        Ok(client
            .unary(EchoRequest {
                payload: big.clone(),
                ..Default::default()
            })
            .await?)
    })
    .await?;
    assert_eq!(Digest::of(&resp.get_ref().payload), Digest::of(&big));

    // Small up, 6 MiB down.
    let size = 6 * 1024 * 1024;
    let resp = within(LIMIT, "big response", async {
        Ok(client
            .unary(EchoRequest {
                response_size: size,
                ..Default::default()
            })
            .await?)
    })
    .await?;
    assert_eq!(
        Digest::of(&resp.get_ref().payload),
        Digest::of_pattern(u64::from(size))
    );

    // Three 2 MiB messages down one stream, and 2 MiB ones up a client stream.
    let size = 2 * 1024 * 1024;
    let mut stream = client
        .server_stream(EchoRequest {
            response_size: size,
            repeat: 3,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut n = 0;
    while let Some(m) = within(LIMIT, "stream message", async {
        Ok(stream.message().await?)
    })
    .await?
    {
        assert_eq!(Digest::of(&m.payload), Digest::of_pattern(u64::from(size)));
        n += 1;
    }
    assert_eq!(n, 3);
    let chunk = support::body::pattern(0, 2 * 1024 * 1024).to_vec();
    let parts = vec![
        EchoRequest {
            payload: chunk.clone(),
            ..Default::default()
        };
        3
    ];
    let resp = within(LIMIT, "big client stream", async {
        Ok(client.client_stream(tokio_stream::iter(parts)).await?)
    })
    .await?;
    assert_eq!(resp.get_ref().payload.len(), 3 * chunk.len());
    assert_eq!(
        Digest::of(&resp.get_ref().payload),
        Digest::of(&chunk.repeat(3))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_streams() -> anyhow::Result<()> {
    let (backend, proxy) = setup(Some("20s")).await?;
    let client = echo_client(proxy.addr()).await?;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..300u32 {
        let mut client = client.clone();
        calls.spawn(async move {
            // Each call waits at the server, so they are all open at once.
            let req = EchoRequest {
                payload: i.to_be_bytes().to_vec(),
                delay_ms: 300,
                ..Default::default()
            };
            let resp = client.unary(req).await?;
            anyhow::ensure!(
                resp.get_ref().payload == i.to_be_bytes(),
                "call {i} got another call's answer"
            );
            Ok(())
        });
    }
    let results = within(Duration::from_secs(60), "300 calls", async {
        let mut failures = Vec::new();
        while let Some(r) = calls.join_next().await {
            if let Err(e) = r? {
                failures.push(e.to_string());
            }
        }
        Ok(failures)
    })
    .await?;
    assert!(
        results.is_empty(),
        "{} of 300 calls failed, e.g. {:?}",
        results.len(),
        results.first()
    );
    assert_eq!(backend.seen().len(), 300);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_cluster_protocol_reaches_a_grpc_server() -> anyhow::Result<()> {
    let backend = GrpcBackend::start().await?;
    let proxy = ProxyConfig::new("auto", backend.addr()).start().await?;
    let mut client = echo_client(proxy.addr()).await?;
    let resp = client
        .unary(EchoRequest {
            payload: b"auto".to_vec(),
            ..Default::default()
        })
        .await?;
    assert_eq!(resp.get_ref().payload, b"auto");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_client_to_tonic_server() -> anyhow::Result<()> {
    if !peers::python_grpc() {
        return Ok(());
    }
    let (_backend, proxy) = setup(Some("20s")).await?;
    let target = proxy.addr();
    let out = tokio::task::spawn_blocking(move || python_grpc_client(target)).await??;
    assert!(
        out.status.success(),
        "grpcio client -> skiff -> tonic:\n{}{}",
        out.stdout,
        out.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_client_to_grpcio_server() -> anyhow::Result<()> {
    if !peers::python_grpc() {
        return Ok(());
    }
    let server = tokio::task::spawn_blocking(PythonGrpcServer::start).await??;
    let proxy = ProxyConfig::new("http2", server.addr)
        .timeout(Some("20s"))
        .start()
        .await?;
    let target = proxy.addr();
    let out = tokio::task::spawn_blocking(move || python_grpc_client(target)).await??;
    assert!(
        out.status.success(),
        "grpcio client -> skiff -> grpcio:\n{}{}",
        out.stdout,
        out.stderr
    );

    // And tonic's client against the grpcio server, through the proxy.
    let mut client = echo_client(proxy.addr()).await?;
    let resp = client
        .unary(EchoRequest {
            payload: b"tonic to python".to_vec(),
            ..Default::default()
        })
        .await?;
    assert_eq!(resp.get_ref().payload, b"tonic to python");
    Ok(())
}
