//! Authorization on a listener (docs/config.md, `listeners[].authorization`):
//! the first matching rule decides, no match denies with 403 /
//! PERMISSION_DENIED and `x-skiff-error: forbidden`, a principal rule never
//! matches a plaintext peer, and a client's own `x-skiff-peer-identity`
//! never reaches the app. (Rules that name verified identities are tested
//! with mesh TLS peers in tests/mtls.rs.)

mod support;

use support::http_backend::HttpBackend;
use support::http_client::{grpc_request, header_str, HttpClient};
use support::{Proto, Proxy};

fn config(backend: std::net::SocketAddr) -> String {
    format!(
        r#"admin:
  address: 127.0.0.1:0
listeners:
  - name: inbound
    address: 127.0.0.1:0
    authorization:
      - deny: {{ principals: ["*"], paths: ["/public/*"] }}
      - allow: {{ unauthenticated: true, paths: ["/public/*", "/skiff.test.Echo/Unary"], methods: [GET, POST] }}
      - allow: {{ principals: ["spiffe://cluster.local/ns/shop/sa/order"] }}
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: "/" }}
            cluster: app
clusters:
  - name: app
    protocol: auto
    endpoints: ["{backend}"]
"#
    )
}

#[tokio::test]
async fn rules_allow_and_deny_plaintext_peers_by_path_and_method() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let proxy = Proxy::start(&config(backend.addr())).await?;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = HttpClient::connect(proxy.addr(), proto).await?;
        // Rule 0 denies verified identities only: a plaintext peer goes on to rule 1.
        let (parts, _) = c.get("/public/catalog").await?;
        assert_eq!(
            parts.status, 200,
            "{proto:?}: rule 1 allows plaintext GET /public/*"
        );

        // No rule names plaintext peers for /private: the default denies.
        let (parts, body) = c.get("/private").await?;
        assert_eq!(parts.status, 403, "{proto:?}");
        assert_eq!(
            header_str(&parts.headers, "x-skiff-error"),
            Some("forbidden")
        );
        assert!(
            body.text().contains("no authorization rule allows"),
            "{}",
            body.text()
        );

        // The method is part of the rule.
        let req = c
            .request("DELETE", "/public/catalog")
            .body(support::body::empty())?;
        let (parts, _) = c.exchange(req).await?;
        assert_eq!(
            parts.status, 403,
            "{proto:?}: DELETE is not in rule 1's methods"
        );
    }
    let seen = backend.seen();
    assert_eq!(
        seen.len(),
        2,
        "denied requests never reach the app: {seen:?}"
    );
    let denied = proxy
        .metric("skiff_authz_denied_total", &[("listener", "inbound")])
        .await?;
    assert_eq!(denied, 4.0);
    let forbidden = proxy
        .metric(
            "skiff_proxy_errors_total",
            &[("listener", "inbound"), ("kind", "forbidden")],
        )
        .await?;
    assert_eq!(forbidden, 4.0);
    Ok(())
}

#[tokio::test]
async fn a_denied_grpc_call_gets_permission_denied() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let proxy = Proxy::start(&config(backend.addr())).await?;
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    let req = grpc_request(&c, "/shop.Payment/Charge")?;
    let (parts, _) = c.exchange(req).await?;
    assert_eq!(parts.status, 200);
    assert_eq!(header_str(&parts.headers, "grpc-status"), Some("7"));
    assert_eq!(
        header_str(&parts.headers, "x-skiff-error"),
        Some("forbidden")
    );
    assert!(backend.seen().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_forged_peer_identity_never_reaches_the_app() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let proxy = Proxy::start(&config(backend.addr())).await?;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = HttpClient::connect(proxy.addr(), proto).await?;
        let req = c
            .request("GET", "/public/x")
            .header(
                "x-skiff-peer-identity",
                "spiffe://cluster.local/ns/shop/sa/order",
            )
            .body(support::body::empty())?;
        let (parts, _) = c.exchange(req).await?;
        assert_eq!(
            parts.status, 200,
            "{proto:?}: the forged identity does not make the peer verified"
        );
        let seen = backend.last().expect("the request reached the app");
        assert_eq!(seen.header("x-skiff-peer-identity"), None, "{proto:?}");
    }
    // A forged identity does not pass a principal rule either.
    let mut c = HttpClient::connect(proxy.addr(), Proto::H2).await?;
    let req = c
        .request("GET", "/orders")
        .header(
            "x-skiff-peer-identity",
            "spiffe://cluster.local/ns/shop/sa/order",
        )
        .body(support::body::empty())?;
    let (parts, _) = c.exchange(req).await?;
    assert_eq!(parts.status, 403);
    Ok(())
}
