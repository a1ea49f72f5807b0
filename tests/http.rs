//! Plain HTTP end to end: curl and a hyper client, HTTP/1.1 and h2c, to
//! HTTP/1.1 and HTTP/2 upstreams; large and chunked bodies checked by digest,
//! trailers, header rules (docs/architecture.md, "Header rules"), memory
//! under a slow reader, h2load.

mod support;

use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use http::HeaderMap;
use support::body::{self, Digest};
use support::http_backend::HttpBackend;
use support::http_client::{header_str, HttpClient};
use support::process::{run_bounded, SkiffProcess};
use support::scratch::ScratchDir;
use support::{peers, within, Proto, Proxy, ProxyConfig};

const MB: u64 = 1024 * 1024;

async fn setup(upstream: Proto) -> anyhow::Result<(HttpBackend, Proxy)> {
    let backend = HttpBackend::start().await?;
    let proxy = ProxyConfig::upstream(upstream, backend.addr())
        .timeout(Some("60s"))
        .start()
        .await?;
    Ok((backend, proxy))
}

fn json(text: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text:?}"))
}

/// GET, fixed-length upload, chunked upload, 20 MB download and streaming
/// echo, from a hyper client speaking `down` to a proxy speaking `up`.
async fn hyper_round_trips(down: Proto, up: Proto) -> anyhow::Result<()> {
    let (backend, proxy) = setup(up).await?;
    let mut c = HttpClient::connect(proxy.addr(), down).await?;

    let (parts, b) = c.get("/headers").await?;
    assert_eq!(parts.status, 200, "{}", b.text());
    assert_eq!(parts.version, down.version());
    let seen = backend
        .last()
        .ok_or_else(|| anyhow!("the backend saw nothing"))?;
    assert_eq!(
        seen.version,
        up.version(),
        "cluster protocol {up:?} not used upstream"
    );
    assert!(header_str(&parts.headers, "x-skiff-error").is_none());

    // 20 MB up with a content-length.
    let size = 20 * MB;
    let req = c
        .request("POST", "/upload")
        .body(body::full(body::pattern(0, size as usize)))?;
    let (parts, b) = c.exchange(req).await?;
    assert_eq!(parts.status, 200, "{}", b.text());
    let v = json(&b.text())?;
    assert_eq!(v["len"], size, "{v}");
    assert_eq!(v["digest"], Digest::of_pattern(size).hex(), "{v}");

    // 20 MB up with no length: chunked over HTTP/1.1, DATA frames over h2.
    let req = c
        .request("POST", "/upload")
        .body(body::streaming_pattern(size, 100_000, None))?;
    let (parts, b) = c.exchange(req).await?;
    assert_eq!(parts.status, 200, "{}", b.text());
    let v = json(&b.text())?;
    assert_eq!(v["len"], size, "{v}");
    assert_eq!(v["digest"], Digest::of_pattern(size).hex(), "{v}");

    // 20 MB down, streamed in odd-sized chunks.
    let (parts, b) = c.get(&format!("/?bytes={size}&chunk=77777")).await?;
    assert_eq!(parts.status, 200);
    assert_eq!(b.digest, Digest::of_pattern(size));

    // 5 MB echoed as it streams, both directions at once.
    let req = c
        .request("POST", "/echo")
        .body(body::streaming_pattern(5 * MB, 16_384, None))?;
    let (parts, b) = c.exchange(req).await?;
    assert_eq!(parts.status, 200);
    assert_eq!(b.digest, Digest::of_pattern(5 * MB));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_h1_to_h1_upstream() -> anyhow::Result<()> {
    hyper_round_trips(Proto::H1, Proto::H1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_h1_to_h2_upstream() -> anyhow::Result<()> {
    hyper_round_trips(Proto::H1, Proto::H2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_h2_to_h1_upstream() -> anyhow::Result<()> {
    hyper_round_trips(Proto::H2, Proto::H1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_h2_to_h2_upstream() -> anyhow::Result<()> {
    hyper_round_trips(Proto::H2, Proto::H2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_cluster_protocol_follows_the_downstream() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let proxy = ProxyConfig::new("auto", backend.addr()).start().await?;
    for down in [Proto::H1, Proto::H2] {
        let mut c = HttpClient::connect(proxy.addr(), down).await?;
        let (parts, _) = c.get("/").await?;
        assert_eq!(parts.status, 200);
        let seen = backend
            .last()
            .ok_or_else(|| anyhow!("the backend saw nothing"))?;
        assert_eq!(
            seen.version,
            down.version(),
            "auto must follow the downstream request"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_h2_to_h2() -> anyhow::Result<()> {
    let (_backend, proxy) = setup(Proto::H2).await?;
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;

    // Response trailers, after a streamed body.
    let (parts, b) = c
        .get("/?bytes=300000&trailer=x-checksum:abc123&trailer=x-count:3")
        .await?;
    assert_eq!(parts.status, 200);
    assert_eq!(b.digest, Digest::of_pattern(300_000));
    let t = b.trailers.unwrap_or_default();
    assert_eq!(
        header_str(&t, "x-checksum"),
        Some("abc123"),
        "trailers: {t:?}"
    );
    assert_eq!(header_str(&t, "x-count"), Some("3"), "trailers: {t:?}");

    // Request trailers reach the upstream.
    let mut sent = HeaderMap::new();
    sent.insert(
        "x-upload-digest",
        Digest::of_pattern(200_000).hex().parse()?,
    );
    let req = c
        .request("POST", "/upload")
        .header("te", "trailers")
        .body(body::streaming_pattern(200_000, 10_000, Some(sent)))?;
    let (parts, b) = c.exchange(req).await?;
    assert_eq!(parts.status, 200);
    let v = json(&b.text())?;
    assert_eq!(v["len"], 200_000);
    assert_eq!(
        v["trailers"]["x-upload-digest"],
        Digest::of_pattern(200_000).hex(),
        "{v}"
    );
    Ok(())
}

/// Hop-by-hop (docs/architecture.md, "Header rules"): never forwarded (nor `te`
/// other than `trailers`, nor the client's `connection`).
const HOP_BY_HOP: [&str; 4] = [
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

fn assert_no_hop_by_hop(headers: &HeaderMap, direction: &str) {
    for name in HOP_BY_HOP {
        assert!(
            headers.get(name).is_none(),
            "{direction}: hop-by-hop `{name}` was forwarded: {headers:?}"
        );
    }
    if let Some(te) = header_str(headers, "te") {
        assert_eq!(
            te, "trailers",
            "{direction}: te other than trailers was forwarded"
        );
    }
    if let Some(c) = header_str(headers, "connection") {
        assert!(
            !c.contains("x-client-token"),
            "{direction}: the client's Connection header was forwarded: {c}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() -> anyhow::Result<()> {
    for up in [Proto::H1, Proto::H2] {
        let (backend, proxy) = setup(up).await?;
        let mut c = HttpClient::connect(proxy.addr(), Proto::H1).await?;
        // Request direction, with a chunked body so transfer-encoding is real.
        let req = c
            .request("POST", "/upload?header=keep-alive:timeout=99&header=proxy-connection:keep-alive&header=upgrade:h2c")
            .header("connection", "keep-alive, x-client-token")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("upgrade", "websocket")
            .header("te", "gzip")
            .header("x-end-to-end", "kept")
            .body(body::streaming_pattern(10_000, 1000, None))?;
        let (parts, b) = c.exchange(req).await?;
        assert_eq!(parts.status, 200, "{}", b.text());
        let v = json(&b.text())?;
        assert_eq!(v["len"], 10_000, "the body must arrive whole: {v}");
        let seen = backend
            .last()
            .ok_or_else(|| anyhow!("the backend saw nothing"))?;
        assert_eq!(seen.header("x-end-to-end"), Some("kept"));
        let mut upstream_headers = seen.headers.clone();
        if up == Proto::H1 {
            // The proxy's own hop may frame the body as chunked; that is its
            // header, not the client's. Everything else must be gone.
            upstream_headers.remove("transfer-encoding");
        }
        assert_no_hop_by_hop(&upstream_headers, &format!("client -> {up:?} upstream"));
        // Response direction: the backend added hop-by-hop headers.
        assert_no_hop_by_hop(
            &parts.headers,
            &format!("{up:?} upstream -> HTTP/1.1 client"),
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_kept_or_made_and_traceparent_forwarded() -> anyhow::Result<()> {
    let (backend, proxy) = setup(Proto::H2).await?;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for down in [Proto::H1, Proto::H2] {
        let mut c = HttpClient::connect(proxy.addr(), down).await?;
        let req = c
            .request("GET", "/")
            .header("x-request-id", "client-chosen-id")
            .header("traceparent", traceparent)
            .header("tracestate", "vendor=value")
            .body(body::empty())?;
        let (parts, _) = c.exchange(req).await?;
        assert_eq!(parts.status, 200);
        let seen = backend
            .last()
            .ok_or_else(|| anyhow!("the backend saw nothing"))?;
        assert_eq!(
            seen.header("x-request-id"),
            Some("client-chosen-id"),
            "{down:?}"
        );
        assert_eq!(seen.header("traceparent"), Some(traceparent), "{down:?}");
        assert_eq!(seen.header("tracestate"), Some("vendor=value"), "{down:?}");

        let mut made = Vec::new();
        for _ in 0..2 {
            let (parts, _) = c.get("/").await?;
            assert_eq!(parts.status, 200);
            let seen = backend
                .last()
                .ok_or_else(|| anyhow!("the backend saw nothing"))?;
            let id = seen.header("x-request-id").unwrap_or_default().to_string();
            assert!(
                !id.is_empty(),
                "{down:?}: no x-request-id made: {:?}",
                seen.headers
            );
            made.push(id);
        }
        assert_ne!(
            made[0], made[1],
            "{down:?}: two requests got the same made-up id"
        );
    }
    Ok(())
}

// ---- curl ----

struct Curl {
    dir: ScratchDir,
}

impl Curl {
    /// Run curl with `args` (plus -sS and a 60 s cap); its stdout.
    fn run(&self, args: &[String]) -> anyhow::Result<String> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "60"])
            .args(args)
            .current_dir(self.dir.path());
        let out = run_bounded(cmd, Duration::from_secs(90))?;
        anyhow::ensure!(
            out.status.success(),
            "curl {args:?} failed: {}{}",
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }
}

fn file_digest(path: &std::path::Path) -> anyhow::Result<Digest> {
    Ok(Digest::of(&std::fs::read(path)?))
}

fn curl_round_trips(
    curl: &Curl,
    proxy: std::net::SocketAddr,
    down: Proto,
    up: Proto,
) -> anyhow::Result<()> {
    let flag = match down {
        Proto::H1 => "--http1.1",
        Proto::H2 => "--http2-prior-knowledge",
    };
    let base = format!("http://{proxy}");
    let want = match down {
        Proto::H1 => "1.1",
        Proto::H2 => "2",
    };
    let what = format!("curl {down:?} -> {up:?}");

    // GET: the answer and the versions on both hops.
    let out = curl.run(&[
        flag.into(),
        "-w".into(),
        "\n%{http_code} %{http_version}".into(),
        format!("{base}/headers"),
    ])?;
    let (body, tail) = out
        .rsplit_once('\n')
        .ok_or_else(|| anyhow!("{what}: {out}"))?;
    assert_eq!(tail, format!("200 {want}"), "{what}");
    let v = json(body)?;
    assert_eq!(v["version"], format!("{:?}", up.version()), "{what}: {v}");

    // 20 MB upload from a file (content-length), verified upstream.
    let size = 20 * MB;
    let out = curl.run(&[
        flag.into(),
        "--data-binary".into(),
        "@up.bin".into(),
        format!("{base}/upload"),
    ])?;
    let v = json(&out)?;
    assert_eq!(v["len"], size, "{what}: {v}");
    assert_eq!(v["digest"], Digest::of_pattern(size).hex(), "{what}: {v}");

    // 20 MB download to a file.
    let _ = std::fs::remove_file(curl.dir.path().join("down.bin"));
    curl.run(&[
        flag.into(),
        "-o".into(),
        "down.bin".into(),
        format!("{base}/?bytes={size}"),
    ])?;
    assert_eq!(
        file_digest(&curl.dir.path().join("down.bin"))?,
        Digest::of_pattern(size),
        "{what}"
    );

    // Chunked upload (HTTP/1.1: Transfer-Encoding: chunked; h2: no length).
    let out = curl.run(&[
        flag.into(),
        "-H".into(),
        "Transfer-Encoding: chunked".into(),
        "--data-binary".into(),
        "@up.bin".into(),
        format!("{base}/upload"),
    ])?;
    let v = json(&out)?;
    assert_eq!(v["len"], size, "{what} chunked: {v}");
    assert_eq!(
        v["digest"],
        Digest::of_pattern(size).hex(),
        "{what} chunked: {v}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_all_four_combinations() -> anyhow::Result<()> {
    if !peers::curl() {
        return Ok(());
    }
    let curl = Curl {
        dir: ScratchDir::new("curl")?,
    };
    curl.dir
        .write("up.bin", body::pattern(0, (20 * MB) as usize))?;
    let curl = std::sync::Arc::new(curl);
    for up in [Proto::H1, Proto::H2] {
        let (_backend, proxy) = setup(up).await?;
        for down in [Proto::H1, Proto::H2] {
            let (curl, addr) = (curl.clone(), proxy.addr());
            tokio::task::spawn_blocking(move || curl_round_trips(&curl, addr, down, up)).await??;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_cross_check() -> anyhow::Result<()> {
    if !peers::h2load() {
        return Ok(());
    }
    let (backend, proxy) = setup(Proto::H2).await?;
    let url = format!("http://{}/?bytes=1000", proxy.addr());
    let mut cmd = Command::new("h2load");
    cmd.args(["-n", "2000", "-c", "4", "-m", "16", "-T", "30", &url]);
    let out =
        tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(120))).await??;
    assert!(out.status.success(), "h2load: {}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("2000 succeeded, 0 failed, 0 errored"),
        "h2load saw failures:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("status codes: 2000 2xx"),
        "h2load statuses:\n{}",
        out.stdout
    );
    assert_eq!(backend.seen().len(), 2000);
    Ok(())
}

// ---- memory under a slow reader (the real binary) ----

/// The backend streams 200 MB; the client reads the head, stops reading for
/// a while, then reads slowly. The proxy must pass back-pressure on instead of
/// buffering: its resident memory stays under 100 MB all along.
async fn slow_reader(down: Proto, up: Proto) -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let dir = ScratchDir::new("slow-reader")?;
    let yaml = ProxyConfig::upstream(up, backend.addr())
        .timeout(None)
        .render();
    let config = dir.write("skiff.yaml", &yaml)?;
    let proxy =
        tokio::task::spawn_blocking(move || SkiffProcess::start(&config, &["main"])).await??;
    let baseline = proxy.rss_kib()?;
    const LIMIT_KIB: u64 = 100 * 1024;

    let size = 200 * MB;
    let mut c = HttpClient::connect(proxy.listener("main")?, down).await?;
    let req = c
        .request("GET", &format!("/?bytes={size}"))
        .body(body::empty())?;
    let resp = c.send(req).await?;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();

    let mut peak = baseline;
    // Not reading at all for two seconds.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(proxy.rss_kib()?);
    }
    // Then reading slowly: a pause after every 8 MB.
    let mut digest = Digest::default();
    let mut next_pause = 8 * MB;
    within(Duration::from_secs(180), "reading 200 MB", async {
        use http_body_util::BodyExt;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                digest.update(&data);
            }
            if digest.len >= next_pause {
                next_pause += 8 * MB;
                peak = peak.max(proxy.rss_kib()?);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    })
    .await?;
    peak = peak.max(proxy.rss_kib()?);
    eprintln!(
        "slow reader {down:?} -> {up:?}: skiff VmRSS baseline {baseline} KiB, peak {peak} KiB"
    );
    assert_eq!(digest, Digest::of_pattern(size), "the body arrived damaged");
    assert!(
        peak < LIMIT_KIB,
        "skiff's VmRSS reached {peak} KiB (baseline {baseline} KiB) while a slow client read 200 MB ({down:?} -> {up:?})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_h1_client_h2_upstream_memory_stays_bounded() -> anyhow::Result<()> {
    slow_reader(Proto::H1, Proto::H2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_h2_client_h1_upstream_memory_stays_bounded() -> anyhow::Result<()> {
    slow_reader(Proto::H2, Proto::H1).await
}
