//! Mesh TLS (docs/config.md, `tls`), with SVIDs minted here by a test CA:
//! this workload's identity at `/certs` and in
//! `skiff_tls_cert_expiry_timestamp_seconds`, kept across reloads; strict
//! and permissive listeners (the peer's SPIFFE ID to the app, authorization
//! by it, plaintext and foreign peers refused and counted); mesh clusters
//! (an unexpected server identity is `connect_failure`); two sidecars end to
//! end, in process and as `skiff run` processes.

mod support;

use support::ca::{SvidFiles, TestCa};
use support::scratch::ScratchDir;
use support::Proxy;

/// A proxy config with this workload's identity from `files` and one plain listener.
fn config(files: &SvidFiles) -> String {
    format!(
        r#"admin:
  address: 127.0.0.1:0
tls:
  cert: {}
  key: {}
  ca: {}
listeners:
  - name: inbound
    address: 127.0.0.1:0
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - cluster: app
clusters:
  - name: app
    endpoints: ["127.0.0.1:9"]
"#,
        files.cert.display(),
        files.key.display(),
        files.ca.display()
    )
}

fn svid(ca: &TestCa, dir: &ScratchDir, sa: &str) -> anyhow::Result<SvidFiles> {
    let d = dir.path().join(sa);
    std::fs::create_dir_all(&d)?;
    ca.svid(&format!("/ns/shop/sa/{sa}"))?
        .write(&d, &[&ca.root_pem])
}

#[tokio::test]
async fn the_identity_is_shown_at_certs_and_its_expiry_in_a_metric() -> anyhow::Result<()> {
    let ca = TestCa::root("cluster.local")?;
    let dir = ScratchDir::new("mtls-certs")?;
    let files = svid(&ca, &dir, "order")?;
    let proxy = Proxy::start(&config(&files)).await?;
    let (status, body) = proxy.admin_get("/certs").await?;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(view["identity"], ca.id("/ns/shop/sa/order"));
    assert!(
        !view["trust_bundle"]
            .as_array()
            .unwrap_or(&vec![])
            .is_empty(),
        "{body}"
    );
    let expiry = proxy
        .metric("skiff_tls_cert_expiry_timestamp_seconds", &[])
        .await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    assert!(expiry > now, "expiry {expiry} is not after now {now}");
    proxy.stop().await
}

#[tokio::test]
async fn without_tls_certs_says_there_is_no_identity() -> anyhow::Result<()> {
    let yaml = "admin:\n  address: 127.0.0.1:0\nlisteners:\n  - name: inbound\n    address: 127.0.0.1:0\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - cluster: app\nclusters:\n  - name: app\n    endpoints: [\"127.0.0.1:9\"]\n";
    let proxy = Proxy::start(yaml).await?;
    let (status, body) = proxy.admin_get("/certs").await?;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no mesh identity"), "{body}");
    proxy.stop().await
}

#[tokio::test]
async fn an_unusable_file_at_startup_is_waited_for_and_named() -> anyhow::Result<()> {
    let ca = TestCa::root("cluster.local")?;
    let dir = ScratchDir::new("mtls-bad-file")?;
    let files = svid(&ca, &dir, "order")?;
    std::fs::write(&files.key, "not a key\n")?;
    // The proxy starts (the writer may not be done) and says what is wrong.
    let proxy = Proxy::start(&config(&files)).await?;
    let (status, body) = proxy.admin_get("/certs").await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&files.key.display().to_string()), "{body}");
    proxy.stop().await
}

#[tokio::test]
async fn the_store_is_kept_across_a_reload_that_leaves_tls_as_it_is() -> anyhow::Result<()> {
    let ca = TestCa::root("cluster.local")?;
    let dir = ScratchDir::new("mtls-reload")?;
    let order = svid(&ca, &dir, "order")?;
    let yaml = config(&order);
    let proxy = Proxy::start_reloading(&yaml).await?;
    // A key file broken after startup: a reload that kept the store keeps
    // the loaded identity; one that loaded anew would be refused.
    std::fs::write(&order.key, "not a key\n")?;
    proxy
        .reload(&yaml.replace("127.0.0.1:9", "127.0.0.1:10"))
        .await?;
    let (status, body) = proxy.admin_get("/certs").await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&ca.id("/ns/shop/sa/order")), "{body}");
    // Another identity's files: loaded anew.
    let payment = svid(&ca, &dir, "payment")?;
    proxy
        .reload(&config(&payment).replace("127.0.0.1:9", "127.0.0.1:10"))
        .await?;
    let (_, body) = proxy.admin_get("/certs").await?;
    assert!(body.contains(&ca.id("/ns/shop/sa/payment")), "{body}");
    proxy.stop().await
}

/// A client's workload credentials, as a store (for skiff's own TLS client).
fn store(files: &SvidFiles) -> anyhow::Result<std::sync::Arc<skiff::identity::CredentialStore>> {
    use skiff::identity::{CredentialPaths, CredentialStore};
    Ok(std::sync::Arc::new(CredentialStore::load(
        CredentialPaths {
            cert: files.cert.clone(),
            key: files.key.clone(),
            ca: files.ca.clone(),
        },
    )?))
}

/// GET `path` over mesh mTLS (HTTP/2, as ALPN says) with `client`'s
/// identity, expecting the server to be `server`; the status.
async fn mtls_get(
    addr: std::net::SocketAddr,
    client: &SvidFiles,
    server: &str,
    path: &str,
) -> anyhow::Result<u16> {
    use skiff::identity::Identity;
    use skiff::tls::client::{self, ClientTls};
    let tls = ClientTls::mesh(store(client)?, vec![Identity::parse(server)?])?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::from(addr.ip());
    let (stream, _) = client::connect(&tls, name, tcp).await?;
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await?;
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://app{path}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = send.send_request(req).await?;
    Ok(resp.status().as_u16())
}

/// A plaintext HTTP/1.1 GET; the status, or an error when the connection
/// is closed without an answer.
async fn plain_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<u16> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "app")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    Ok(send.send_request(req).await?.status().as_u16())
}

/// An inbound proxy with `mode`, its identity `files`, admitting only `allowed`
/// (and plaintext peers), in front of `backend`.
fn inbound(files: &SvidFiles, mode: &str, allowed: &str, backend: std::net::SocketAddr) -> String {
    format!(
        r#"admin:
  address: 127.0.0.1:0
tls:
  cert: {}
  key: {}
  ca: {}
listeners:
  - name: inbound
    address: 127.0.0.1:0
    tls: {{ mode: {mode} }}
    authorization:
      - allow: {{ principals: ["{allowed}"] }}
      - allow: {{ unauthenticated: true }}
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - cluster: app
clusters:
  - name: app
    endpoints: ["{backend}"]
"#,
        files.cert.display(),
        files.key.display(),
        files.ca.display()
    )
}

#[tokio::test]
async fn a_strict_listener_takes_mtls_with_the_peer_identity_and_refuses_the_rest(
) -> anyhow::Result<()> {
    use support::http_backend::HttpBackend;
    let ca = TestCa::root("cluster.local")?;
    let dir = ScratchDir::new("mtls-strict")?;
    let (payment, order, stranger) = (
        svid(&ca, &dir, "payment")?,
        svid(&ca, &dir, "order")?,
        svid(&ca, &dir, "stranger")?,
    );
    let backend = HttpBackend::start().await?;
    let order_id = ca.id("/ns/shop/sa/order");
    let proxy = Proxy::start(&inbound(&payment, "strict", &order_id, backend.addr())).await?;
    let addr = proxy.listener("inbound").expect("inbound listener");
    let payment_id = ca.id("/ns/shop/sa/payment");

    assert_eq!(mtls_get(addr, &order, &payment_id, "/hello").await?, 200);
    let seen = backend.last().expect("the request reached the app");
    assert_eq!(
        seen.header("x-skiff-peer-identity"),
        Some(order_id.as_str())
    );

    // Another workload of the mesh: verified, then denied by authorization.
    assert_eq!(mtls_get(addr, &stranger, &payment_id, "/hello").await?, 403);
    assert_eq!(backend.seen().len(), 1);

    // Plaintext is refused: no answer, counted.
    assert!(plain_get(addr, "/hello").await.is_err());
    assert_eq!(backend.seen().len(), 1);
    let labels = |result| [("side", "inbound"), ("name", "inbound"), ("result", result)];
    support::eventually(std::time::Duration::from_secs(5), || async {
        let refused = proxy
            .metric("skiff_tls_handshakes_total", &labels("plaintext"))
            .await?;
        anyhow::ensure!(refused == 1.0, "plaintext refusals counted: {refused}");
        Ok(())
    })
    .await?;
    assert_eq!(
        proxy
            .metric("skiff_tls_handshakes_total", &labels("success"))
            .await?,
        2.0
    );

    // A client from another trust domain (which trusts ours) is refused in
    // the handshake, and the reason counted.
    let other = TestCa::root("elsewhere.example")?;
    let d = dir.path().join("foreign");
    std::fs::create_dir_all(&d)?;
    let foreign = other
        .svid("/ns/shop/sa/order")?
        .write(&d, &[&other.root_pem, &ca.root_pem])?;
    assert!(mtls_get(addr, &foreign, &payment_id, "/hello")
        .await
        .is_err());
    assert_eq!(backend.seen().len(), 1);
    support::eventually(std::time::Duration::from_secs(5), || async {
        let n = proxy
            .metric(
                "skiff_tls_handshakes_total",
                &labels("foreign_trust_domain"),
            )
            .await?;
        anyhow::ensure!(n == 1.0, "foreign trust domain refusals counted: {n}");
        Ok(())
    })
    .await?;
    proxy.stop().await
}

#[tokio::test]
async fn a_permissive_listener_takes_plaintext_and_mtls() -> anyhow::Result<()> {
    use support::http_backend::HttpBackend;
    let ca = TestCa::root("cluster.local")?;
    let dir = ScratchDir::new("mtls-permissive")?;
    let (payment, order) = (svid(&ca, &dir, "payment")?, svid(&ca, &dir, "order")?);
    let backend = HttpBackend::start().await?;
    let order_id = ca.id("/ns/shop/sa/order");
    let proxy = Proxy::start(&inbound(&payment, "permissive", &order_id, backend.addr())).await?;
    let addr = proxy.listener("inbound").expect("inbound listener");

    assert_eq!(plain_get(addr, "/plain").await?, 200);
    assert_eq!(
        backend
            .last()
            .and_then(|s| s.header("x-skiff-peer-identity").map(str::to_owned)),
        None
    );
    assert_eq!(
        mtls_get(addr, &order, &ca.id("/ns/shop/sa/payment"), "/tls").await?,
        200
    );
    let seen = backend.last().expect("the request reached the app");
    assert_eq!(
        seen.header("x-skiff-peer-identity"),
        Some(order_id.as_str())
    );
    proxy.stop().await
}

/// An outbound proxy with identity `files`: host `right` goes to `inbound`
/// expecting `expected`, host `wrong` to the same address expecting another
/// workload.
fn outbound(files: &SvidFiles, inbound: std::net::SocketAddr, expected: &str) -> String {
    format!(
        r#"admin:
  address: 127.0.0.1:0
tls:
  cert: {}
  key: {}
  ca: {}
listeners:
  - name: outbound
    address: 127.0.0.1:0
    direction: outbound
    virtual_hosts:
      - name: right
        domains: ["right"]
        routes:
          - cluster: right
      - name: wrong
        domains: ["wrong"]
        routes:
          - cluster: wrong
clusters:
  - name: right
    endpoints: ["{inbound}"]
    tls: {{ mode: mesh, identities: ["{expected}"] }}
  - name: wrong
    endpoints: ["{inbound}"]
    tls: {{ mode: mesh, identities: ["spiffe://cluster.local/ns/shop/sa/someone-else"] }}
"#,
        files.cert.display(),
        files.key.display(),
        files.ca.display()
    )
}

/// A plaintext HTTP/1.1 GET to `addr` for `host`: the status and `x-skiff-error`.
async fn get_host(addr: std::net::SocketAddr, host: &str) -> anyhow::Result<(u16, Option<String>)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::get("/call")
        .header("host", host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = send.send_request(req).await?;
    let error = resp
        .headers()
        .get("x-skiff-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((resp.status().as_u16(), error))
}

#[tokio::test]
async fn a_mesh_cluster_reaches_a_strict_sidecar_and_refuses_an_unexpected_identity(
) -> anyhow::Result<()> {
    use support::http_backend::HttpBackend;
    let ca = TestCa::root("cluster.local")?;
    let dir = ScratchDir::new("mtls-two-sidecars")?;
    let (a, b) = (svid(&ca, &dir, "order")?, svid(&ca, &dir, "payment")?);
    let (a_id, b_id) = (ca.id("/ns/shop/sa/order"), ca.id("/ns/shop/sa/payment"));
    let backend = HttpBackend::start().await?;
    let sidecar_b = Proxy::start(&inbound(&b, "strict", &a_id, backend.addr())).await?;
    let b_addr = sidecar_b.listener("inbound").expect("inbound listener");
    let sidecar_a = Proxy::start(&outbound(&a, b_addr, &b_id)).await?;
    let a_addr = sidecar_a.listener("outbound").expect("outbound listener");

    // HTTP/1.1 from the app, mTLS (h2) between the sidecars.
    assert_eq!(get_host(a_addr, "right").await?, (200, None));
    let seen = backend.last().expect("the request reached the app");
    assert_eq!(seen.header("x-skiff-peer-identity"), Some(a_id.as_str()));

    let (status, error) = get_host(a_addr, "wrong").await?;
    assert_eq!((status, error.as_deref()), (502, Some("connect_failure")));
    assert_eq!(backend.seen().len(), 1);
    let failed = sidecar_a
        .metric(
            "skiff_tls_handshakes_total",
            &[
                ("side", "outbound"),
                ("name", "wrong"),
                ("result", "bad_identity"),
            ],
        )
        .await?;
    assert!(failed >= 1.0, "bad_identity handshakes counted: {failed}");
    let ok = sidecar_a
        .metric(
            "skiff_tls_handshakes_total",
            &[
                ("side", "outbound"),
                ("name", "right"),
                ("result", "success"),
            ],
        )
        .await?;
    assert_eq!(ok, 1.0);
    sidecar_a.stop().await?;
    sidecar_b.stop().await
}

/// The same path through two `skiff run` processes, with gRPC: the app's
/// call reaches the backend with the caller's identity, and the strict
/// sidecar logs why it refused plaintext.
#[tokio::test]
async fn grpc_through_two_skiff_processes_carries_the_callers_identity() -> anyhow::Result<()> {
    use support::grpc_backend::{echo_client, EchoRequest, GrpcBackend};
    use support::process::SkiffProcess;
    let ca = TestCa::root("cluster.local")?;
    let dir = ScratchDir::new("mtls-processes")?;
    let (a, b) = (svid(&ca, &dir, "order")?, svid(&ca, &dir, "payment")?);
    let (a_id, b_id) = (ca.id("/ns/shop/sa/order"), ca.id("/ns/shop/sa/payment"));
    let backend = GrpcBackend::start().await?;
    let b_config = dir.write(
        "b.yaml",
        inbound(&b, "strict", &a_id, backend.addr())
            .replace("\n      - allow: { unauthenticated: true }", ""),
    )?;
    let sidecar_b = SkiffProcess::start(&b_config, &["inbound"])?;
    let b_addr = sidecar_b.listener("inbound")?;
    let a_config = dir.write(
        "a.yaml",
        outbound(&a, b_addr, &b_id).replace("domains: [\"right\"]", "domains: [\"right\", \"*\"]"),
    )?;
    let sidecar_a = SkiffProcess::start(&a_config, &["outbound"])?;
    let a_addr = sidecar_a.listener("outbound")?;

    let mut client = echo_client(a_addr).await?;
    client.unary(EchoRequest::default()).await?;
    let seen = backend.seen();
    let last = seen.last().expect("the call reached the backend");
    assert_eq!(
        last.get("x-skiff-peer-identity")
            .and_then(|v| v.to_str().ok()),
        Some(a_id.as_str())
    );

    assert!(plain_get(b_addr, "/skiff.test.Echo/Unary").await.is_err());
    support::eventually(std::time::Duration::from_secs(5), || async {
        let log = sidecar_b.lines.joined();
        anyhow::ensure!(
            log.contains("TLS connection refused") && log.contains("plaintext"),
            "no refusal logged yet:\n{log}"
        );
        Ok(())
    })
    .await?;
    Ok(())
}
