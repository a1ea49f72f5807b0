//! Edge termination, `simple` TLS, and the failure labels.

use super::*;

#[tokio::test]
async fn edge_termination_serves_by_sni_and_reloads() {
    let dir = Scratch::new("edge");
    let ca = TestCa::root("edge.test").unwrap();
    let cert = |name: &str, dns: &str| -> CertKeyPaths {
        let mut spec = Leaf::svid("spiffe://edge.test/unused");
        spec.uris.clear();
        spec.dns = vec![dns.to_string()];
        let leaf = ca.leaf(spec).unwrap();
        let files = CertKeyPaths {
            cert: dir.path().join(format!("{name}.crt")),
            key: dir.path().join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, &leaf.chain_pem).unwrap();
        std::fs::write(&files.key, &leaf.key_pem).unwrap();
        files
    };
    let default = cert("default", "shop.example");
    let api = cert("api", "api.shop.example");
    let certs = Arc::new(
        EdgeCerts::load(
            default.clone(),
            vec![SniCert {
                domains: vec!["*.shop.example".to_string()],
                files: api.clone(),
            }],
        )
        .unwrap(),
    );
    let server = ServerTls::terminate(certs.clone()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.root_pem).unwrap();
    let ca_file = dir.path().join("ca.pem");
    for (versions, alpn) in [
        (&[&rustls::version::TLS13][..], ALPN_H2),
        (&[&rustls::version::TLS12][..], ALPN_HTTP11),
    ] {
        let roots = client::simple_roots(Some(&ca_file)).unwrap();
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let config = Arc::new(config);
        for (name, served) in [("api.shop.example", &api), ("shop.example", &default)] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let name = ServerName::try_from(name.to_string()).unwrap();
            let (accepted, connected) = tokio::join!(
                async {
                    let (tcp, _) = listener.accept().await.unwrap();
                    server::accept(&server, tcp).await
                },
                async {
                    let tcp = TcpStream::connect(addr).await.unwrap();
                    connector.connect(name, tcp).await
                }
            );
            let (stream, peer) = accepted.unwrap();
            assert_eq!(peer, None, "the edge asks for no client certificate");
            assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
            let connected = connected.unwrap();
            let leaf = &connected.get_ref().1.peer_certificates().unwrap()[0];
            let want = std::fs::read(&served.cert).unwrap();
            let want = crate::tls::certs::parse_certs(&want, &served.cert).unwrap();
            assert_eq!(leaf, &want[0]);
        }
    }
    // A reload with a key that does not match is refused whole.
    let view = certs.view();
    std::fs::copy(&default.key, &api.key).unwrap();
    assert!(certs.reload().is_err());
    assert_eq!(certs.view(), view);
}

#[tokio::test]
async fn simple_tls_checks_the_server_name_and_carries_no_identity() {
    let dir = Scratch::new("simple");
    let ca = TestCa::root("jwks.test").unwrap();
    let mut spec = Leaf::svid("spiffe://jwks.test/ns/auth/sa/jwks");
    spec.dns = vec!["auth.shop.example".to_string()];
    let leaf = ca.leaf(spec).unwrap();
    let (chain, key) = leaf.rustls().unwrap();
    let mut sc = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    sc.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    let sc = Arc::new(sc);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.root_pem).unwrap();
    let tls = ClientTls::simple(Some(&ca_file), &[ALPN_HTTP11]).unwrap();
    assert!(!tls.is_mesh());
    let out = handshake(
        Server::Raw(sc.clone()),
        Client::Skiff(&tls, "auth.shop.example"),
    )
    .await;
    let (peer, _) = out.client.unwrap();
    assert_eq!(
        peer, None,
        "a SPIFFE ID in an outside server's certificate is no identity"
    );
    assert_eq!(out.alpn.as_deref(), Some(ALPN_HTTP11));
    let out = handshake(Server::Raw(sc), Client::Skiff(&tls, "other.shop.example")).await;
    assert_eq!(out.client.unwrap_err(), HandshakeFailure::BadIdentity);
}

#[test]
fn system_roots_load_or_say_why() {
    // The machine may have no CA bundle; either way there is an answer.
    match client::simple_roots(None) {
        Ok(roots) => assert!(!roots.is_empty()),
        Err(e) => assert!(e.to_string().contains("system"), "{e}"),
    }
}

#[test]
fn failure_labels_are_stable_and_distinct() {
    let labels: Vec<&str> = HandshakeFailure::ALL.iter().map(|k| k.label()).collect();
    let mut unique = labels.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), labels.len());
    for l in &labels {
        assert!(
            l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{l}"
        );
    }
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let cases = [
        (E::InvalidCertificate(C::UnknownIssuer), "unknown_ca"),
        (E::InvalidCertificate(C::Expired), "expired"),
        (E::InvalidCertificate(C::NotValidYet), "not_yet_valid"),
        (E::InvalidCertificate(C::BadSignature), "bad_certificate"),
        (E::NoCertificatesPresented, "no_certificate"),
        (E::AlertReceived(A::CertificateRequired), "no_certificate"),
        (E::AlertReceived(A::UnknownCA), "unknown_ca"),
        (E::AlertReceived(A::ProtocolVersion), "protocol"),
        (E::NoApplicationProtocol, "protocol"),
    ];
    for (err, want) in cases {
        assert_eq!(HandshakeFailure::of(&err).label(), want, "{err}");
    }
    let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    assert_eq!(HandshakeFailure::of_io(&io), HandshakeFailure::Io);
}
