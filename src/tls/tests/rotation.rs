//! Certificates, keys and roots replaced under running listeners and clusters.

use super::*;

#[tokio::test]
async fn a_rotated_certificate_is_presented_from_the_next_handshake() {
    let m = mesh("rotate");
    let server = m.server();
    let client = m.client(&[PAYMENT]);
    let before = m.payment.current().unwrap().certified_key().cert[0].clone();
    let out = handshake(Server::Skiff(&server), Client::Skiff(&client, "127.0.0.1")).await;
    assert_eq!(out.client.unwrap().1, before);

    let renewed = m.ca.svid("/ns/shop/sa/payment").unwrap();
    renewed
        .write(m.payment.paths().cert.parent().unwrap(), &[&m.ca.root_pem])
        .unwrap();
    m.payment.reload().unwrap();
    let after = m.payment.current().unwrap().certified_key().cert[0].clone();
    assert_ne!(before, after);
    let out = handshake(Server::Skiff(&server), Client::Skiff(&client, "127.0.0.1")).await;
    assert_eq!(out.client.unwrap().1, after);
    assert_eq!(out.server, Ok(Some(id(ORDER))));
}

#[tokio::test]
async fn a_root_added_then_the_old_one_removed_keeps_handshakes_working() {
    let m = mesh("root-rotation");
    let new_root = TestCa::root("cluster.local").unwrap();
    let (old, new) = (m.ca.root_pem.as_str(), new_root.root_pem.as_str());
    let server = m.server();
    let client = m.client(&[PAYMENT]);
    let order_dir = m.order.paths().cert.parent().unwrap().to_path_buf();
    let payment_dir = m.payment.paths().cert.parent().unwrap().to_path_buf();
    let ok = || async {
        let out = handshake(Server::Skiff(&server), Client::Skiff(&client, "127.0.0.1")).await;
        assert_eq!(out.server, Ok(Some(id(ORDER))));
        assert_eq!(out.client.map(|c| c.0), Ok(Some(id(PAYMENT))));
    };
    ok().await;
    // 1. Both bundles gain the new root; certificates from the old one.
    for (s, dir, path) in [
        (&m.order, &order_dir, "/ns/shop/sa/order"),
        (&m.payment, &payment_dir, "/ns/shop/sa/payment"),
    ] {
        m.ca.svid(path).unwrap().write(dir, &[old, new]).unwrap();
        s.reload().unwrap();
        assert_eq!(s.current().unwrap().view().trust_bundle.len(), 2);
        ok().await;
    }
    // 2. Certificates from the new root, one side after the other.
    for (s, dir, path) in [
        (&m.payment, &payment_dir, "/ns/shop/sa/payment"),
        (&m.order, &order_dir, "/ns/shop/sa/order"),
    ] {
        new_root
            .svid(path)
            .unwrap()
            .write(dir, &[old, new])
            .unwrap();
        s.reload().unwrap();
        ok().await;
    }
    // 3. The old root leaves both bundles.
    for (s, dir, path) in [
        (&m.order, &order_dir, "/ns/shop/sa/order"),
        (&m.payment, &payment_dir, "/ns/shop/sa/payment"),
    ] {
        new_root.svid(path).unwrap().write(dir, &[new]).unwrap();
        s.reload().unwrap();
        ok().await;
    }
    // A certificate from the old root is now refused.
    let stale = m.ca.svid("/ns/shop/sa/order").unwrap();
    let out = handshake(
        Server::Skiff(&server),
        raw_client(Some(&stale), &m.order, PAYMENT),
    )
    .await;
    assert_eq!(out.server.unwrap_err(), HandshakeFailure::UnknownCa);
}

#[tokio::test]
async fn a_bad_reload_keeps_the_credentials_in_use() {
    let m = mesh("bad-reload");
    let server = m.server();
    let client = m.client(&[PAYMENT]);
    let p = m.payment.paths().clone();
    let good = std::fs::read_to_string(&p.cert).unwrap();
    let in_use = m.payment.current().unwrap().certified_key().cert[0].clone();
    let other_key = m.ca.svid("/ns/shop/sa/payment").unwrap().key_pem;
    let cut = &good[..good.len() / 2];
    let cases: [(&Path, &str, &str); 4] = [
        (&p.cert, cut, "not PEM, or cut short"),
        (&p.cert, "garbage\n", "no CERTIFICATE"),
        (&p.key, &other_key, "does not match"),
        (&p.ca, "", "no CERTIFICATE"),
    ];
    for (file, text, says) in cases {
        let before = std::fs::read(file).unwrap();
        std::fs::write(file, text).unwrap();
        let err = m.payment.reload().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(says), "{msg}");
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert_eq!(m.payment.current().unwrap().certified_key().cert[0], in_use);
        let out = handshake(Server::Skiff(&server), Client::Skiff(&client, "127.0.0.1")).await;
        assert_eq!(out.client.unwrap().1, in_use);
        std::fs::write(file, before).unwrap();
    }
    m.payment.reload().unwrap();
}

#[tokio::test]
async fn the_store_follows_its_files() {
    let m = mesh("watch");
    let watcher = {
        let store = m.payment.clone();
        tokio::spawn(async move {
            store
                .watch(
                    Duration::from_millis(20),
                    crate::identity::store::log_reload,
                )
                .await
        })
    };
    let before = m.payment.current().unwrap().certified_key().cert[0].clone();
    m.ca.svid("/ns/shop/sa/payment")
        .unwrap()
        .write(m.payment.paths().cert.parent().unwrap(), &[&m.ca.root_pem])
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while m.payment.current().unwrap().certified_key().cert[0] == before {
        assert!(tokio::time::Instant::now() < deadline, "not reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watcher.abort();
}
