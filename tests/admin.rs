//! The admin server, the metrics after real traffic and the access log's line
//! per request (docs/architecture.md: "Admin endpoints", "Metrics", "Access log").

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use support::faults::closed_port;
use support::grpc_backend::{echo_client, EchoRequest, GrpcBackend};
use support::http_backend::HttpBackend;
use support::http_client::{http_get, HttpClient};
use support::scratch::ScratchDir;
use support::{eventually, metric_value, Proto, Proxy};

/// One listener `main` with three routes: `/dead/` to a closed port,
/// `/skiff.test.Echo/` to a gRPC server, the rest to an HTTP server.
fn three_cluster_yaml(
    http: SocketAddr,
    grpc: SocketAddr,
    dead: SocketAddr,
    access_log: Option<&std::path::Path>,
) -> String {
    let log = access_log
        .map(|p| {
            format!(
                "access_log:\n  enabled: true\n  path: {}\n",
                serde_json::json!(p.display().to_string())
            )
        })
        .unwrap_or_default();
    format!(
        r#"admin:
  address: 127.0.0.1:0
{log}listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: "/dead/" }}
            cluster: dead
            timeout: 5s
          - match: {{ prefix: "/skiff.test.Echo/" }}
            cluster: echo
            timeout: 5s
          - match: {{ prefix: "/app/" }}
            cluster: web
            timeout: 5s
clusters:
  - name: web
    protocol: http1
    endpoints: ["{http}"]
  - name: echo
    protocol: http2
    endpoints: ["{grpc}"]
  - name: dead
    protocol: http2
    endpoints: ["{dead}"]
"#
    )
}

struct World {
    http: HttpBackend,
    _grpc: GrpcBackend,
    dead: SocketAddr,
    proxy: Proxy,
}

async fn world(access_log: Option<&std::path::Path>) -> anyhow::Result<World> {
    let http = HttpBackend::start().await?;
    let grpc = GrpcBackend::start().await?;
    let dead = closed_port().await?;
    let proxy = Proxy::start(&three_cluster_yaml(
        http.addr(),
        grpc.addr(),
        dead,
        access_log,
    ))
    .await?;
    Ok(World {
        http,
        _grpc: grpc,
        dead,
        proxy,
    })
}

/// Some of everything: 3 OK HTTP requests (one with a chosen request id),
/// one OK gRPC call, one no-route, one connect failure.
async fn traffic(proxy: &Proxy) -> anyhow::Result<()> {
    let mut c = HttpClient::connect(proxy.addr(), Proto::H1).await?;
    for i in 0..3 {
        let mut req = c
            .request("GET", "/app/hello")
            .body(support::body::empty())?;
        if i == 0 {
            req.headers_mut()
                .insert("x-request-id", "log-me-please".parse()?);
        }
        let (parts, _) = c.exchange(req).await?;
        assert_eq!(parts.status, 200);
    }
    let mut client = echo_client(proxy.addr()).await?;
    client
        .unary(EchoRequest {
            payload: b"metrics".to_vec(),
            ..Default::default()
        })
        .await?;
    let (parts, _) = c.get("/nowhere").await?;
    assert_eq!(parts.status, 404);
    let (parts, _) = c.get("/dead/x").await?;
    assert_eq!(parts.status, 502);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_and_ready() -> anyhow::Result<()> {
    let w = world(None).await?;
    let (status, body) = w.proxy.admin_get("/live").await?;
    assert_eq!(status, 200, "{body}");
    eventually(Duration::from_secs(10), || async {
        let (status, body) = w.proxy.admin_get("/ready").await?;
        anyhow::ensure!(status == 200, "/ready answered {status}: {body}");
        Ok(())
    })
    .await?;
    let (status, _) = w.proxy.admin_get("/no-such-endpoint").await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_shows_the_effective_config() -> anyhow::Result<()> {
    let w = world(None).await?;
    let (status, body) = w.proxy.admin_get("/config_dump").await?;
    assert_eq!(status, 200, "{body}");
    let dump: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(_) => serde_yaml::from_str(&body).context("/config_dump is neither JSON nor YAML")?,
    };
    assert_eq!(dump["listeners"][0]["name"], "main", "{dump}");
    let clusters = dump["clusters"]
        .as_array()
        .ok_or_else(|| anyhow!("no clusters in {dump}"))?;
    let names: Vec<_> = clusters.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["web", "echo", "dead"]);
    assert_eq!(
        clusters[0]["endpoints"][0],
        w.http.addr().to_string(),
        "{dump}"
    );
    // Defaults are filled in: the effective config, not the file.
    assert!(
        !clusters[0]["connect_timeout"].is_null(),
        "no default connect_timeout in {dump}"
    );
    assert!(
        !dump["listeners"][0]["limits"]["max_header_bytes"].is_null(),
        "no default limits in {dump}"
    );
    Ok(())
}

/// Every string anywhere inside `v`.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_lists_endpoints() -> anyhow::Result<()> {
    let w = world(None).await?;
    let (status, body) = w.proxy.admin_get("/clusters").await?;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).context("/clusters is not JSON")?;
    let mut all = Vec::new();
    strings(&v, &mut all);
    for want in ["web", "echo", "dead"] {
        assert!(
            all.iter().any(|s| s == want),
            "cluster {want} missing from /clusters: {body}"
        );
    }
    for addr in [w.http.addr(), w.dead] {
        assert!(
            all.iter().any(|s| s.contains(&addr.to_string())),
            "endpoint {addr} missing from /clusters: {body}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_traffic() -> anyhow::Result<()> {
    let w = world(None).await?;
    traffic(&w.proxy).await?;
    // Hold a connection open for the gauge.
    let mut open = HttpClient::connect(w.proxy.addr(), Proto::H2).await?;
    let (parts, _) = open.get("/app/keep").await?;
    assert_eq!(parts.status, 200);

    let text = eventually(Duration::from_secs(10), || async {
        let text = w.proxy.metrics().await?;
        let get = |m: &str, l: &[(&str, &str)]| metric_value(&text, m, l).unwrap_or(0.0);
        let checks = [
            (
                "HTTP 200s",
                get(
                    "skiff_requests_total",
                    &[
                        ("listener", "main"),
                        ("cluster", "web"),
                        ("status", "200"),
                        ("grpc_status", ""),
                    ],
                ) >= 4.0,
            ),
            (
                "gRPC OK",
                get(
                    "skiff_requests_total",
                    &[
                        ("listener", "main"),
                        ("cluster", "echo"),
                        ("status", "200"),
                        ("grpc_status", "0"),
                    ],
                ) >= 1.0,
            ),
            (
                "502 on dead",
                get(
                    "skiff_requests_total",
                    &[("listener", "main"), ("cluster", "dead"), ("status", "502")],
                ) >= 1.0,
            ),
            (
                "404 counted",
                get(
                    "skiff_requests_total",
                    &[("listener", "main"), ("status", "404")],
                ) >= 1.0,
            ),
            (
                "duration count",
                get(
                    "skiff_request_duration_seconds_count",
                    &[("listener", "main"), ("cluster", "web")],
                ) >= 4.0,
            ),
            (
                "duration buckets",
                text.contains("skiff_request_duration_seconds_bucket{"),
            ),
            (
                "attempts success",
                get(
                    "skiff_upstream_attempts_total",
                    &[("cluster", "web"), ("result", "success")],
                ) >= 4.0,
            ),
            (
                "attempts connect_failure",
                get(
                    "skiff_upstream_attempts_total",
                    &[("cluster", "dead"), ("result", "connect_failure")],
                ) >= 1.0,
            ),
            (
                "connections active",
                get("skiff_connections_active", &[("listener", "main")]) >= 1.0,
            ),
            (
                "proxy error no_route",
                get(
                    "skiff_proxy_errors_total",
                    &[("listener", "main"), ("kind", "no_route")],
                ) >= 1.0,
            ),
            (
                "proxy error connect_failure",
                get(
                    "skiff_proxy_errors_total",
                    &[("listener", "main"), ("kind", "connect_failure")],
                ) >= 1.0,
            ),
        ];
        let failed: Vec<_> = checks
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| *n)
            .collect();
        anyhow::ensure!(
            failed.is_empty(),
            "metrics checks failed: {failed:?}\n{text}"
        );
        Ok(text)
    })
    .await?;
    // Help and type lines are there for every family.
    for family in [
        "skiff_requests_total",
        "skiff_request_duration_seconds",
        "skiff_upstream_attempts_total",
        "skiff_connections_active",
        "skiff_proxy_errors_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "no TYPE line for {family}"
        );
    }
    drop(open);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request() -> anyhow::Result<()> {
    let dir = ScratchDir::new("access-log")?;
    let path = dir.path().join("access.log");
    let w = world(Some(&path)).await?;
    traffic(&w.proxy).await?;

    let lines = eventually(Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("not a JSON line: {l}")))
            .collect::<anyhow::Result<_>>()?;
        anyhow::ensure!(lines.len() >= 6, "{} lines so far:\n{text}", lines.len());
        Ok(lines)
    })
    .await?;
    assert_eq!(lines.len(), 6, "one line per request: {lines:#?}");

    for line in &lines {
        for key in [
            "time",
            "listener",
            "method",
            "authority",
            "path",
            "status",
            "grpc_status",
            "upstream",
            "bytes_in",
            "bytes_out",
            "request_id",
        ] {
            assert!(
                line.get(key).is_some(),
                "access log line without `{key}`: {line}"
            );
        }
        let obj = line
            .as_object()
            .ok_or_else(|| anyhow!("not an object: {line}"))?;
        assert!(
            obj.keys().any(|k| k.starts_with("duration")),
            "no duration in {line}"
        );
        assert!(
            obj.keys()
                .any(|k| k == "flag" || k == "response_flag" || k == "response_flags"),
            "no response flag in {line}"
        );
        assert_eq!(line["listener"], "main");
        assert!(
            line["request_id"].as_str().is_some_and(|s| !s.is_empty()),
            "empty request id: {line}"
        );
    }
    let flag = |l: &serde_json::Value| {
        l.get("flag")
            .or_else(|| l.get("response_flag"))
            .or_else(|| l.get("response_flags"))
            .cloned()
    };

    let chosen = lines
        .iter()
        .find(|l| l["request_id"] == "log-me-please")
        .ok_or_else(|| anyhow!("no line with the client's request id: {lines:#?}"))?;
    assert_eq!(chosen["method"], "GET");
    assert_eq!(chosen["path"], "/app/hello");
    assert_eq!(chosen["status"], 200);
    assert_eq!(chosen["upstream"], w.http.addr().to_string());
    assert!(
        chosen["bytes_out"].as_u64().is_some_and(|n| n >= 2),
        "{chosen}"
    );
    assert!(
        chosen["authority"]
            .as_str()
            .is_some_and(|a| a.contains("127.0.0.1")),
        "{chosen}"
    );
    assert!(
        matches!(
            flag(chosen).as_ref().and_then(|f| f.as_str()),
            Some("-") | Some("")
        ),
        "{chosen}"
    );

    let grpc = lines
        .iter()
        .find(|l| l["path"] == "/skiff.test.Echo/Unary")
        .ok_or_else(|| anyhow!("no gRPC line: {lines:#?}"))?;
    assert_eq!(grpc["grpc_status"], 0, "{grpc}");
    assert!(grpc["bytes_in"].as_u64().is_some_and(|n| n > 0), "{grpc}");

    let no_route = lines
        .iter()
        .find(|l| l["path"] == "/nowhere")
        .ok_or_else(|| anyhow!("no line for /nowhere"))?;
    assert_eq!(no_route["status"], 404);
    assert_eq!(flag(no_route), Some(serde_json::json!("NR")), "{no_route}");

    let dead = lines
        .iter()
        .find(|l| l["path"] == "/dead/x")
        .ok_or_else(|| anyhow!("no line for /dead/x"))?;
    assert_eq!(dead["status"], 502);
    assert_eq!(flag(dead), Some(serde_json::json!("UF")), "{dead}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_shutdown_stops_the_proxy() -> anyhow::Result<()> {
    let w = world(None).await?;
    let mut c = HttpClient::connect(w.proxy.admin(), Proto::H1).await?;
    let req = c
        .request("POST", "/shutdown")
        .body(support::body::empty())?;
    let (parts, _) = c.exchange(req).await?;
    assert_eq!(parts.status, 200);
    eventually(Duration::from_secs(30), || async {
        anyhow::ensure!(!w.proxy.is_running(), "still running");
        Ok(())
    })
    .await?;
    assert!(
        http_get(w.proxy.addr(), "/app/x").await.is_err(),
        "the listener still answers after /shutdown"
    );
    Ok(())
}
