//! The harness checked on its own, without the proxy: if these fail, the
//! end-to-end suites cannot be trusted, whatever they say about the proxy.

mod support;

use std::time::Duration;

use support::body::{self, Digest};
use support::faults::{closed_port, Fault, FaultBackend};
use support::grpc_backend::{echo_client, status_of, EchoRequest, GrpcBackend};
use support::http_backend::HttpBackend;
use support::http_client::{raw_exchange, HttpClient};
use support::process::{python_grpc_client, PythonGrpcServer};
use support::{peers, Proto};
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_backend_speaks_both_versions() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = HttpClient::connect(backend.addr(), proto).await?;
        let (parts, body) = c.get("/?status=418&trailer=x-t:1").await?;
        assert_eq!(parts.status, 418);
        assert_eq!(body.text(), "ok");
        assert_eq!(backend.last().map(|s| s.version), Some(proto.version()));

        let (_, body) = c.get("/?bytes=3000000&chunk=10000").await?;
        assert_eq!(body.digest, Digest::of_pattern(3_000_000));

        let req = c
            .request("POST", "/upload")
            .body(body::streaming_pattern(1_000_000, 7777, None))?;
        let (_, body) = c.exchange(req).await?;
        let v: serde_json::Value = serde_json::from_str(&body.text())?;
        assert_eq!(v["len"], 1_000_000);
        assert_eq!(v["digest"], Digest::of_pattern(1_000_000).hex());

        let req = c
            .request("POST", "/echo")
            .body(body::streaming_pattern(500_000, 4096, None))?;
        let (_, body) = c.exchange(req).await?;
        assert_eq!(body.digest, Digest::of_pattern(500_000));
    }
    // Trailers come back over HTTP/2.
    let mut c = HttpClient::connect(backend.addr(), Proto::H2).await?;
    let (_, body) = c.get("/?trailer=x-t:1").await?;
    assert_eq!(
        body.trailers
            .and_then(|t| t.get("x-t").cloned())
            .as_ref()
            .map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_backend_serves_every_call_kind() -> anyhow::Result<()> {
    let backend = GrpcBackend::start().await?;
    let mut client = echo_client(backend.addr()).await?;

    let mut req = tonic::Request::new(EchoRequest {
        payload: b"hi".to_vec(),
        trailers: [("x-t".to_string(), "v".to_string())].into(),
        ..Default::default()
    });
    req.metadata_mut().insert("x-request-id", "abc".parse()?);
    let resp = client.unary(req).await?;
    assert_eq!(resp.get_ref().payload, b"hi");
    assert_eq!(
        resp.get_ref()
            .seen_headers
            .get("x-request-id")
            .map(String::as_str),
        Some("abc")
    );

    let stream = client
        .server_stream(EchoRequest {
            payload: b"s".to_vec(),
            repeat: 3,
            ..Default::default()
        })
        .await?
        .into_inner();
    let got: Vec<_> = stream.collect::<Result<Vec<_>, _>>().await?;
    assert_eq!(
        got.iter().map(|m| m.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );

    let err = status_of(
        client
            .unary(EchoRequest {
                fail_code: 9,
                fail_message: "nope".into(),
                trailers: [("x-custom".to_string(), "abc".to_string())].into(),
                ..Default::default()
            })
            .await,
    )?;
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(err.message(), "nope");
    assert_eq!(
        err.metadata().get("x-custom").and_then(|v| v.to_str().ok()),
        Some("abc")
    );
    assert!(!backend.seen().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_fail_as_designed() -> anyhow::Result<()> {
    let closed = closed_port().await?;
    assert!(tokio::net::TcpStream::connect(closed).await.is_err());

    for fault in [Fault::CloseOnAccept, Fault::ResetAfterRequest] {
        let backend = FaultBackend::start(fault).await?;
        for proto in [Proto::H1, Proto::H2] {
            let result = async {
                let mut c = HttpClient::connect(backend.addr(), proto).await?;
                c.get("/").await
            }
            .await;
            assert!(
                result.is_err(),
                "{fault:?} over {proto:?} answered: {result:?}"
            );
        }
    }
    let backend = FaultBackend::start(Fault::ResetAfterRequest).await?;
    let got = raw_exchange(
        backend.addr(),
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await?;
    assert!(got.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_peer_and_tonic_interoperate() -> anyhow::Result<()> {
    if !peers::python_grpc() {
        return Ok(());
    }
    // grpcio client -> tonic server.
    let backend = GrpcBackend::start().await?;
    let target = backend.addr();
    let out = tokio::task::spawn_blocking(move || python_grpc_client(target)).await??;
    assert!(
        out.status.success(),
        "python client vs tonic server:\n{}\n{}",
        out.stdout,
        out.stderr
    );

    // tonic client -> grpcio server.
    let server = tokio::task::spawn_blocking(PythonGrpcServer::start).await??;
    let mut client = echo_client(server.addr).await?;
    let resp = client
        .unary(EchoRequest {
            payload: b"py".to_vec(),
            ..Default::default()
        })
        .await?;
    assert_eq!(resp.get_ref().payload, b"py");
    Ok(())
}

/// The test CA's SVIDs are what Skiff's credential store loads, and two
/// stores made from them complete a mesh handshake with each other's
/// identity.
#[tokio::test]
async fn test_ca_svids_load_and_handshake() -> anyhow::Result<()> {
    use skiff::identity::{CredentialPaths, CredentialStore, Identity};
    use skiff::tls::client::{self, ClientTls};
    use skiff::tls::server::{self, ServerTls};
    use std::sync::Arc;
    use support::ca::TestCa;
    use support::scratch::ScratchDir;

    let ca = TestCa::root("cluster.local")?;
    let dir = ScratchDir::new("test-ca")?;
    let mut stores = Vec::new();
    for sa in ["order", "payment"] {
        let d = dir.path().join(sa);
        std::fs::create_dir_all(&d)?;
        let f = ca
            .svid(&format!("/ns/shop/sa/{sa}"))?
            .write(&d, &[&ca.root_pem])?;
        let paths = CredentialPaths {
            cert: f.cert,
            key: f.key,
            ca: f.ca,
        };
        stores.push(Arc::new(CredentialStore::load(paths)?));
    }
    let payment = Identity::parse(&ca.id("/ns/shop/sa/payment"))?;
    let server = ServerTls::mesh(stores[1].clone())?;
    let client = ClientTls::mesh(stores[0].clone(), vec![payment.clone()])?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (accepted, connected) = tokio::join!(
        async {
            let (tcp, _) = listener.accept().await?;
            anyhow::Ok(server::accept(&server, tcp).await?)
        },
        async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::from(addr.ip());
            anyhow::Ok(client::connect(&client, name, tcp).await?)
        }
    );
    assert_eq!(
        accepted?.1.map(|i| i.to_string()),
        Some(ca.id("/ns/shop/sa/order"))
    );
    assert_eq!(connected?.1, Some(payment));
    Ok(())
}

#[test]
fn redis_server_starts_stops_and_restarts_on_its_port() -> anyhow::Result<()> {
    if !peers::redis_server() {
        return Ok(());
    }
    let mut redis = support::redis_server::RedisServer::start()?;
    let url = redis.url();
    let pong: String = redis::cmd("PING").query(&mut redis.connection()?)?;
    assert_eq!(pong, "PONG");
    redis.stop();
    assert!(redis.connection().is_err(), "stopped");
    redis.restart()?;
    assert_eq!(redis.url(), url, "the same port");
    let mut conn = redis.connection()?;
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut conn)?;
    let v: String = redis::cmd("GET").arg("k").query(&mut conn)?;
    assert_eq!(v, "v");
    Ok(())
}
