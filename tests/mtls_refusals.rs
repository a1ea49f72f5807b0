//! What a strict mTLS sidecar refuses, end to end through `skiff run`
//! processes: a client with no certificate, an expired one, one not valid
//! yet, and one from another trust domain. Each refusal has its own JSON
//! log line saying which (matched to the client by its address) and its own
//! `skiff_tls_handshakes_total{result}`; none reaches the app. On the
//! calling side, a mesh cluster whose peer presents a valid certificate for
//! another SPIFFE ID fails with `connect_failure`, and the log and the
//! answer say why.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::ca::{Leaf, Svid, SvidFiles, TestCa};
use support::http_backend::HttpBackend;
use support::http_client::http_get;
use support::process::{Lines, SkiffProcess};
use support::scratch::ScratchDir;
use support::{eventually, metric_value};

const WAIT: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);

fn tls_section(files: &SvidFiles) -> String {
    format!(
        "tls:\n  cert: {}\n  key: {}\n  ca: {}\n",
        files.cert.display(),
        files.key.display(),
        files.ca.display()
    )
}

/// A strict inbound sidecar in front of `backend` that lets the shop's
/// workloads in.
fn strict_inbound(files: &SvidFiles, backend: SocketAddr) -> String {
    format!(
        r#"admin:
  address: 127.0.0.1:0
{}listeners:
  - name: inbound
    address: 127.0.0.1:0
    tls: {{ mode: strict }}
    authorization:
      - allow: {{ principals: ["spiffe://cluster.local/ns/shop/*"] }}
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - cluster: app
clusters:
  - name: app
    endpoints: ["{backend}"]
"#,
        tls_section(files)
    )
}

/// The SVID files of `svid` in `dir/name`, trusting `bundle`.
fn write(dir: &ScratchDir, name: &str, svid: &Svid, bundle: &[&str]) -> anyhow::Result<SvidFiles> {
    let d = dir.path().join(name);
    std::fs::create_dir_all(&d)?;
    svid.write(&d, bundle)
}

/// A mesh client presenting `cert` (or nothing), checking the server as a
/// Skiff of `trust`'s workload would (chain to its bundle, then `server`).
fn client_config(
    cert: Option<&Svid>,
    trust: &SvidFiles,
    server: &str,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use skiff::identity::{CredentialPaths, CredentialStore, Identity};
    use skiff::tls::verify::MeshServerVerifier;
    let store = Arc::new(CredentialStore::load(CredentialPaths {
        cert: trust.cert.clone(),
        key: trust.key.clone(),
        ca: trust.ca.clone(),
    })?);
    let verifier = MeshServerVerifier::new(store, vec![Identity::parse(server)?]);
    let builder = rustls::ClientConfig::builder_with_provider(skiff::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match cert {
        Some(svid) => {
            let (chain, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) =
                svid.rustls()?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Handshake with `config` and send one HTTP/2 GET: the client's own
/// address (what the server logs) and the status, or the error.
async fn call(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<(SocketAddr, anyhow::Result<u16>)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let local = tcp.local_addr()?;
    let outcome = async {
        let connector = tokio_rustls::TlsConnector::from(config);
        let stream = connector.connect(ServerName::from(addr.ip()), tcp).await?;
        let (mut send, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        let req = http::Request::get("http://app/hello")
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let resp = send.send_request(req).await?;
        Ok(resp.status().as_u16())
    };
    let outcome = tokio::time::timeout(WAIT, outcome)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {WAIT:?}")));
    Ok((local, outcome))
}

/// The JSON log line whose `message` is `message` and whose `key` is `value`.
async fn logged(
    lines: &Lines,
    message: &str,
    key: &str,
    value: &str,
) -> anyhow::Result<serde_json::Value> {
    eventually(WAIT, || async {
        lines
            .snapshot()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == message && v[key] == value)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no {message:?} line with {key}={value}:\n{}",
                    lines.joined()
                )
            })
    })
    .await
}

/// `name{labels}` from a process's `/metrics`, 0 when absent.
async fn metric(p: &SkiffProcess, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
    let (status, _, body) = http_get(p.admin, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    Ok(metric_value(&body, name, labels).unwrap_or(0.0))
}

#[tokio::test]
async fn a_strict_sidecar_logs_and_counts_each_kind_of_refused_client() -> anyhow::Result<()> {
    let ca = TestCa::root("cluster.local")?;
    let dir = ScratchDir::new("mtls-refusals")?;
    let payment = write(
        &dir,
        "payment",
        &ca.svid("/ns/shop/sa/payment")?,
        &[&ca.root_pem],
    )?;
    let order = write(
        &dir,
        "order",
        &ca.svid("/ns/shop/sa/order")?,
        &[&ca.root_pem],
    )?;
    let backend = HttpBackend::start().await?;
    let config = dir.write("inbound.yaml", strict_inbound(&payment, backend.addr()))?;
    let sidecar = SkiffProcess::start(&config, &["inbound"])?;
    let addr = sidecar.listener("inbound")?;
    let server = ca.id("/ns/shop/sa/payment");

    // The good client first: the setup works.
    let good = ca.svid("/ns/shop/sa/order")?;
    let (_, status) = call(addr, client_config(Some(&good), &order, &server)?).await?;
    assert_eq!(status?, 200);

    let now = SystemTime::now();
    let order_id = ca.id("/ns/shop/sa/order");
    let expired = ca.leaf(Leaf::svid(&order_id).valid(now - 2 * HOUR, now - HOUR))?;
    let not_yet = ca.leaf(Leaf::svid(&order_id).valid(now + HOUR, now + 2 * HOUR))?;
    let elsewhere = TestCa::root("elsewhere.example")?;
    let foreign = elsewhere.svid("/ns/shop/sa/order")?;
    let cases: [(Option<&Svid>, &str, &str); 4] = [
        (None, "no_certificate", "no certificate"),
        (Some(&expired), "expired", "expired"),
        (Some(&not_yet), "not_yet_valid", "not valid yet"),
        (Some(&foreign), "foreign_trust_domain", "elsewhere.example"),
    ];
    for (cert, reason, says) in cases {
        let (client, outcome) = call(addr, client_config(cert, &order, &server)?).await?;
        assert!(
            outcome.is_err(),
            "{reason}: the call went through: {outcome:?}"
        );
        let line = logged(
            &sidecar.lines,
            "TLS connection refused",
            "client",
            &client.to_string(),
        )
        .await?;
        assert_eq!(line["reason"], reason, "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
        let error = line["error"].as_str().unwrap_or_default().to_lowercase();
        assert!(error.contains(says), "{reason}: {line}");
        let labels = [("side", "inbound"), ("name", "inbound"), ("result", reason)];
        let n = metric(&sidecar, "skiff_tls_handshakes_total", &labels).await?;
        assert_eq!(n, 1.0, "{reason} refusals counted");
    }
    assert_eq!(
        backend.seen().len(),
        1,
        "only the good client reached the app"
    );
    let ok = [
        ("side", "inbound"),
        ("name", "inbound"),
        ("result", "success"),
    ];
    assert_eq!(
        metric(&sidecar, "skiff_tls_handshakes_total", &ok).await?,
        1.0
    );
    Ok(())
}

/// An outbound sidecar whose cluster `wrong` dials `inbound` expecting a
/// workload other than the one there.
fn outbound_expecting_another(files: &SvidFiles, inbound: SocketAddr) -> String {
    format!(
        r#"admin:
  address: 127.0.0.1:0
{}listeners:
  - name: outbound
    address: 127.0.0.1:0
    direction: outbound
    virtual_hosts:
      - name: wrong
        domains: ["*"]
        routes:
          - cluster: wrong
clusters:
  - name: wrong
    endpoints: ["{inbound}"]
    tls: {{ mode: mesh, identities: ["spiffe://cluster.local/ns/shop/sa/inventory"] }}
"#,
        tls_section(files)
    )
}

#[tokio::test]
async fn a_peer_with_a_valid_certificate_for_another_identity_is_a_connect_failure_with_the_reason(
) -> anyhow::Result<()> {
    let ca = TestCa::root("cluster.local")?;
    let dir = ScratchDir::new("mtls-wrong-peer")?;
    let payment = write(
        &dir,
        "payment",
        &ca.svid("/ns/shop/sa/payment")?,
        &[&ca.root_pem],
    )?;
    let order = write(
        &dir,
        "order",
        &ca.svid("/ns/shop/sa/order")?,
        &[&ca.root_pem],
    )?;
    let backend = HttpBackend::start().await?;
    let b_config = dir.write("b.yaml", strict_inbound(&payment, backend.addr()))?;
    let b = SkiffProcess::start(&b_config, &["inbound"])?;
    let a_config = dir.write(
        "a.yaml",
        outbound_expecting_another(&order, b.listener("inbound")?),
    )?;
    let a = SkiffProcess::start(&a_config, &["outbound"])?;

    let (status, headers, body) = http_get(a.listener("outbound")?, "/call").await?;
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        headers.get("x-skiff-error").and_then(|v| v.to_str().ok()),
        Some("connect_failure")
    );
    assert!(body.contains("bad_identity"), "{body}");
    assert_eq!(backend.seen().len(), 0);

    let line = logged(
        &a.lines,
        "upstream TLS handshake failed",
        "cluster",
        "wrong",
    )
    .await?;
    assert_eq!(line["reason"], "bad_identity", "{line}");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&ca.id("/ns/shop/sa/payment"))
            && error.contains("spiffe://cluster.local/ns/shop/sa/inventory"),
        "the line names who answered and who was expected: {line}"
    );
    let labels = [
        ("side", "outbound"),
        ("name", "wrong"),
        ("result", "bad_identity"),
    ];
    assert!(metric(&a, "skiff_tls_handshakes_total", &labels).await? >= 1.0);
    Ok(())
}
