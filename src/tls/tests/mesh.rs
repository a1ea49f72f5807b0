//! Who a mesh handshake accepts, who it refuses, and the reason each side records.

use super::*;

#[tokio::test]
async fn mtls_both_sides_see_the_other_identity() {
    let m = mesh("mtls");
    let (server, client) = (m.server(), m.client(&[PAYMENT]));
    let out = handshake(Server::Skiff(&server), Client::Skiff(&client, "127.0.0.1")).await;
    assert_eq!(out.server, Ok(Some(id(ORDER))));
    assert_eq!(out.client.unwrap().0, Some(id(PAYMENT)));
    assert_eq!(out.alpn.as_deref(), Some(ALPN_H2));
}

#[tokio::test]
async fn chains_through_an_intermediate() {
    let m = mesh("intermediate");
    let issuing = m.ca.intermediate("cluster.local issuing").unwrap();
    let dir = m._dir.sub("inventory");
    let inventory = store(
        &dir,
        &issuing.svid("/ns/shop/sa/inventory").unwrap(),
        &[&m.ca.root_pem],
    );
    assert_eq!(inventory.current().unwrap().view().cert_chain.len(), 2);
    let server = ServerTls::mesh(inventory).unwrap();
    let client = m.client(&["spiffe://cluster.local/ns/shop/sa/inventory"]);
    let out = handshake(Server::Skiff(&server), Client::Skiff(&client, "127.0.0.1")).await;
    assert_eq!(out.server, Ok(Some(id(ORDER))));
    assert!(out.client.is_ok(), "{:?}", out.client);
}

#[tokio::test]
async fn a_valid_certificate_of_another_workload_is_refused() {
    let m = mesh("wrong-id");
    let (server, client) = (
        m.server(),
        m.client(&["spiffe://cluster.local/ns/shop/sa/inventory"]),
    );
    let out = handshake(Server::Skiff(&server), Client::Skiff(&client, "127.0.0.1")).await;
    assert_eq!(out.client.unwrap_err(), HandshakeFailure::BadIdentity);
    assert!(out.server.is_err());
}

#[tokio::test]
async fn another_trust_domain_is_refused_both_ways() {
    let m = mesh("foreign");
    let other = TestCa::root("other.example").unwrap();
    // Outbound: a server of another CA and trust domain.
    let dir = m._dir.sub("stranger");
    let stranger = store(
        &dir,
        &other.svid("/ns/shop/sa/payment").unwrap(),
        &[&other.root_pem, &m.ca.root_pem],
    );
    let server = ServerTls::mesh(stranger.clone()).unwrap();
    let client = m.client(&[PAYMENT]);
    let out = handshake(Server::Skiff(&server), Client::Skiff(&client, "127.0.0.1")).await;
    assert_eq!(
        out.client.unwrap_err(),
        HandshakeFailure::ForeignTrustDomain
    );

    // Inbound: a client of another CA (it trusts ours, we do not trust it).
    let server = m.server();
    let out = handshake(
        Server::Skiff(&server),
        Client::Skiff(
            &ClientTls::mesh(stranger, vec![id(PAYMENT)]).unwrap(),
            "127.0.0.1",
        ),
    )
    .await;
    assert_eq!(
        out.server.unwrap_err(),
        HandshakeFailure::ForeignTrustDomain
    );
    assert_eq!(out.client.unwrap_err(), HandshakeFailure::BadCertificate);
}

#[tokio::test]
async fn our_root_naming_another_trust_domain_is_refused_inbound() {
    let m = mesh("shared-root");
    let svid =
        m.ca.leaf(Leaf::svid("spiffe://other.example/ns/shop/sa/order"))
            .unwrap();
    let server = m.server();
    let out = handshake(
        Server::Skiff(&server),
        raw_client(Some(&svid), &m.order, PAYMENT),
    )
    .await;
    assert_eq!(
        out.server.unwrap_err(),
        HandshakeFailure::ForeignTrustDomain
    );
}

#[tokio::test]
async fn an_unknown_ca_of_our_trust_domain_is_an_unknown_ca() {
    let m = mesh("rogue");
    let rogue = TestCa::root("cluster.local").unwrap();
    let svid = rogue.svid("/ns/shop/sa/order").unwrap();
    let server = m.server();
    let out = handshake(
        Server::Skiff(&server),
        raw_client(Some(&svid), &m.order, PAYMENT),
    )
    .await;
    assert_eq!(out.server.unwrap_err(), HandshakeFailure::UnknownCa);
    assert_eq!(out.client.unwrap_err(), HandshakeFailure::UnknownCa);
    // The same, outbound: a chain failure is reported as one, even though
    // the name would match.
    let rogue_payment = rogue.svid("/ns/shop/sa/payment").unwrap();
    let client = m.client(&[PAYMENT]);
    let out = handshake(
        raw_server(&rogue_payment, &m.payment),
        Client::Skiff(&client, "127.0.0.1"),
    )
    .await;
    assert_eq!(out.client.unwrap_err(), HandshakeFailure::UnknownCa);
}

#[tokio::test]
async fn expired_and_not_yet_valid_leaves_are_refused() {
    let m = mesh("validity");
    let now = SystemTime::now();
    let expired =
        m.ca.leaf(Leaf::svid(ORDER).valid(now - 48 * HOUR, now - 24 * HOUR))
            .unwrap();
    let early =
        m.ca.leaf(Leaf::svid(ORDER).valid(now + 24 * HOUR, now + 48 * HOUR))
            .unwrap();
    let server = m.server();
    let out = handshake(
        Server::Skiff(&server),
        raw_client(Some(&expired), &m.order, PAYMENT),
    )
    .await;
    assert_eq!(out.server.unwrap_err(), HandshakeFailure::Expired);
    assert_eq!(out.client.unwrap_err(), HandshakeFailure::Expired);
    let out = handshake(
        Server::Skiff(&server),
        raw_client(Some(&early), &m.order, PAYMENT),
    )
    .await;
    assert_eq!(out.server.unwrap_err(), HandshakeFailure::NotYetValid);

    // An expired server, outbound.
    let expired_payment =
        m.ca.leaf(Leaf::svid(PAYMENT).valid(now - 48 * HOUR, now - 24 * HOUR))
            .unwrap();
    let client = m.client(&[PAYMENT]);
    let out = handshake(
        raw_server(&expired_payment, &m.payment),
        Client::Skiff(&client, "127.0.0.1"),
    )
    .await;
    assert_eq!(out.client.unwrap_err(), HandshakeFailure::Expired);
}

#[tokio::test]
async fn a_client_without_certificate_is_refused() {
    let m = mesh("no-cert");
    let server = m.server();
    let out = handshake(Server::Skiff(&server), raw_client(None, &m.order, PAYMENT)).await;
    assert_eq!(out.server.unwrap_err(), HandshakeFailure::NoCertificate);
    assert_eq!(out.client.unwrap_err(), HandshakeFailure::NoCertificate);
}

#[tokio::test]
async fn a_leaf_without_spiffe_id_is_a_bad_identity() {
    let m = mesh("no-spiffe");
    let mut spec = Leaf::svid(ORDER);
    spec.uris.clear();
    spec.dns = vec!["order.shop.svc".to_string()];
    let svid = m.ca.leaf(spec).unwrap();
    let server = m.server();
    let out = handshake(
        Server::Skiff(&server),
        raw_client(Some(&svid), &m.order, PAYMENT),
    )
    .await;
    assert_eq!(out.server.unwrap_err(), HandshakeFailure::BadIdentity);
}

#[tokio::test]
async fn plaintext_to_a_mesh_listener_is_told_apart() {
    let m = mesh("plaintext");
    let server = m.server();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: payment\r\n\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;
    });
    let (tcp, _) = listener.accept().await.unwrap();
    let err = server::accept(&server, tcp).await.unwrap_err();
    assert_eq!(err.kind, HandshakeFailure::Plaintext, "{err}");
    client.await.unwrap();
}

#[test]
fn a_client_hello_looks_like_tls() {
    let m = mesh("hello");
    let client = m.client(&[PAYMENT]);
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(client.config().clone(), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert_eq!(
        crate::listener::detect::classify(&hello),
        Some(crate::listener::detect::Detected::Tls)
    );
}
