//! This workload's mesh identity over its life (docs/config.md, `tls`):
//! `/ready` fails while a listener or cluster that needs the identity has
//! none usable (files missing or expired at startup, or a certificate that
//! lapsed since) and turns ready once the watched files hold a valid SVID;
//! every reload of the files is counted in
//! `skiff_tls_credential_reloads_total`, and a half-written file changes
//! nothing.

mod support;

use std::time::{Duration, SystemTime};

use support::ca::{Leaf, SvidFiles, TestCa};
use support::scratch::ScratchDir;
use support::{eventually, Proxy};

const WAIT: Duration = Duration::from_secs(10);

/// The three files in `dir` (written or not).
fn files_in(dir: &std::path::Path) -> SvidFiles {
    SvidFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca: dir.join("ca.pem"),
    }
}

/// A strict listener and a mesh cluster, both needing the identity in `files`.
fn needs_identity(files: &SvidFiles) -> String {
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
    tls: {{ mode: strict }}
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - cluster: peer
clusters:
  - name: peer
    endpoints: ["127.0.0.1:9"]
    tls: {{ mode: mesh, identities: ["spiffe://cluster.local/ns/shop/sa/payment"] }}
"#,
        files.cert.display(),
        files.key.display(),
        files.ca.display()
    )
}

/// Wait until `/ready` answers `status` with a body containing every one of `words`.
async fn ready_is(proxy: &Proxy, status: u16, words: &[&str]) -> anyhow::Result<()> {
    eventually(WAIT, || async {
        let (got, body) = proxy.admin_get("/ready").await?;
        anyhow::ensure!(got == status, "/ready answered {got}: {body}");
        for w in words {
            anyhow::ensure!(body.contains(w), "/ready body lacks {w:?}: {body}");
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn ready_waits_for_a_valid_svid_and_fails_again_when_it_lapses() -> anyhow::Result<()> {
    let ca = TestCa::root("cluster.local")?;
    let dir = ScratchDir::new("identity-ready")?;
    let files = files_in(dir.path());
    let cert_path = files.cert.display().to_string();

    // No files yet (the SVID writer has not run): the proxy starts, not ready.
    let proxy = Proxy::start(&needs_identity(&files)).await?;
    ready_is(&proxy, 503, &["no usable mesh identity", &cert_path]).await?;
    let (status, body) = proxy.admin_get("/certs").await?;
    assert_eq!(status, 503, "{body}");

    // An expired SVID is no identity either; /ready says why.
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let id = ca.id("/ns/shop/sa/order");
    ca.leaf(Leaf::svid(&id).valid(now - 2 * hour, now - hour))?
        .write(dir.path(), &[&ca.root_pem])?;
    ready_is(&proxy, 503, &["no usable mesh identity", "expired"]).await?;

    // A valid one: ready, and shown at /certs.
    let soon = SystemTime::now() + Duration::from_secs(3);
    ca.leaf(Leaf::svid(&id).valid(now - hour, soon))?
        .write(dir.path(), &[&ca.root_pem])?;
    ready_is(&proxy, 200, &["ready"]).await?;
    let (status, body) = proxy.admin_get("/certs").await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&id), "{body}");

    // It lapses with nothing new written: not ready any more.
    ready_is(&proxy, 503, &["no usable mesh identity", "expired at"]).await?;

    // A renewed SVID: ready again.
    ca.svid("/ns/shop/sa/order")?
        .write(dir.path(), &[&ca.root_pem])?;
    ready_is(&proxy, 200, &["ready"]).await?;
    let ok = proxy
        .metric(
            "skiff_tls_credential_reloads_total",
            &[("result", "success")],
        )
        .await?;
    assert!(ok >= 2.0, "successful reloads counted: {ok}");
    proxy.stop().await
}

#[tokio::test]
async fn an_identity_no_listener_or_cluster_needs_does_not_hold_readiness() -> anyhow::Result<()> {
    let dir = ScratchDir::new("identity-unused")?;
    let files = files_in(dir.path());
    let yaml = needs_identity(&files)
        .replace("    tls: { mode: strict }\n", "")
        .replace(
            "    tls: { mode: mesh, identities: [\"spiffe://cluster.local/ns/shop/sa/payment\"] }\n",
            "",
        );
    let proxy = Proxy::start(&yaml).await?;
    ready_is(&proxy, 200, &["ready"]).await?;
    proxy.stop().await
}

#[tokio::test]
async fn a_half_written_file_counts_a_failed_reload_and_changes_nothing() -> anyhow::Result<()> {
    let ca = TestCa::root("cluster.local")?;
    let dir = ScratchDir::new("identity-half-written")?;
    let svid = ca.svid("/ns/shop/sa/order")?;
    let files = svid.write(dir.path(), &[&ca.root_pem])?;
    let proxy = Proxy::start(&needs_identity(&files)).await?;
    ready_is(&proxy, 200, &["ready"]).await?;
    let (_, before) = proxy.admin_get("/certs").await?;
    let proxy = &proxy;
    let reloads = |result: &'static str| async move {
        proxy
            .metric("skiff_tls_credential_reloads_total", &[("result", result)])
            .await
    };
    assert_eq!(reloads("failure").await?, 0.0);

    // A renewed certificate (same key, a later expiry) cut off half way,
    // as a writer that is not done yet leaves it.
    let now = SystemTime::now();
    let renewed = ca.leaf(Leaf {
        key_pkcs8_pem: Some(svid.key_pem.clone()),
        ..Leaf::svid(&ca.id("/ns/shop/sa/order")).valid(
            now - Duration::from_secs(60),
            now + Duration::from_secs(48 * 3600),
        )
    })?;
    let half = &renewed.chain_pem[..renewed.chain_pem.len() / 2];
    std::fs::write(&files.cert, half)?;
    eventually(WAIT, || async {
        let n = reloads("failure").await?;
        anyhow::ensure!(n == 1.0, "failed reloads counted: {n}");
        Ok(())
    })
    .await?;
    let (status, after) = proxy.admin_get("/certs").await?;
    assert_eq!(status, 200, "{after}");
    assert_eq!(before, after, "the set in use changed");
    assert_eq!(reloads("success").await?, 0.0);
    ready_is(proxy, 200, &["ready"]).await?;

    // The writer finishes: taken, counted as a success.
    std::fs::write(&files.cert, &renewed.chain_pem)?;
    eventually(WAIT, || async {
        let n = reloads("success").await?;
        anyhow::ensure!(n == 1.0, "successful reloads counted: {n}");
        Ok(())
    })
    .await?;
    let (_, renewed_view) = proxy.admin_get("/certs").await?;
    assert_ne!(before, renewed_view, "the renewed certificate is not shown");
    assert_eq!(reloads("failure").await?, 1.0);
    Ok(())
}
