//! Mesh TLS (docs/config.md, `tls`): this workload's identity loaded from
//! SVID files minted here by a test CA, shown at `/certs` and in
//! `skiff_tls_cert_expiry_timestamp_seconds`, kept across reloads.

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
async fn an_unusable_file_at_startup_is_an_error_naming_it() -> anyhow::Result<()> {
    let ca = TestCa::root("cluster.local")?;
    let dir = ScratchDir::new("mtls-bad-file")?;
    let files = svid(&ca, &dir, "order")?;
    std::fs::write(&files.key, "not a key\n")?;
    let Err(e) = Proxy::start(&config(&files)).await else {
        anyhow::bail!("a proxy started with a broken key file");
    };
    let message = e.to_string();
    assert!(
        message.contains(&files.key.display().to_string()),
        "{message}"
    );
    Ok(())
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
