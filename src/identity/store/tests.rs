//! Loading and validating a workload's credentials.

use std::time::{Duration, SystemTime};

use super::*;
use crate::test_ca::{keys, Leaf, TestCa};
use crate::tls::tests::Scratch;

const HOUR: Duration = Duration::from_secs(3600);
const ORDER: &str = "spiffe://cluster.local/ns/shop/sa/order";

fn load(dir: &Path, cert: &str, key: &str, ca: &str) -> Result<Credentials, CertError> {
    let p = CredentialPaths {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca: dir.join("ca.pem"),
    };
    std::fs::write(&p.cert, cert).unwrap();
    std::fs::write(&p.key, key).unwrap();
    std::fs::write(&p.ca, ca).unwrap();
    Credentials::load(&p)
}

#[test]
fn an_svid_loads_with_its_identity_view_and_expiry() {
    let dir = Scratch::new("store-ok");
    let ca = TestCa::root("cluster.local").unwrap();
    let second = TestCa::root("cluster.local").unwrap();
    let issuing = ca.intermediate("issuing").unwrap();
    let svid = issuing.svid("/ns/shop/sa/order").unwrap();
    let bundle = format!("{}{}", ca.root_pem, second.root_pem);
    let c = load(dir.path(), &svid.chain_pem, &svid.key_pem, &bundle).unwrap();
    assert_eq!(c.identity().as_str(), ORDER);
    let v = c.view();
    assert_eq!(v.identity, ORDER);
    assert_eq!(v.cert_chain.len(), 2, "leaf and intermediate");
    assert_eq!(v.cert_chain[0].spiffe_id.as_deref(), Some(ORDER));
    assert_eq!(v.cert_chain[1].subject, "CN=issuing");
    assert_eq!(v.trust_bundle.len(), 2, "both roots");
    assert!(v.trust_bundle[0]
        .subject
        .starts_with("CN=cluster.local root"));
    assert_eq!(c.roots().len(), 2);
    let in_a_day = crate::tls::certs::unix_seconds(SystemTime::now() + 24 * HOUR);
    assert!(c.expiry_unix_seconds().abs_diff(in_a_day) < 5);
    let json = serde_json::to_value(v).unwrap();
    assert_eq!(json["cert_chain"][0]["spiffe_id"], ORDER);
    assert!(json["cert_chain"][0]["not_after"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(json["trust_bundle"][0].get("spiffe_id").is_none());
}

#[test]
fn keys_load_in_pkcs8_sec1_and_pkcs1() {
    let dir = Scratch::new("store-keys");
    let ca = TestCa::root("cluster.local").unwrap();
    for (pkcs8, other) in [
        (keys::EC_PKCS8, keys::EC_SEC1),
        (keys::RSA_PKCS8, keys::RSA_PKCS1),
    ] {
        let mut spec = Leaf::svid(ORDER);
        spec.key_pkcs8_pem = Some(pkcs8.to_string());
        let svid = ca.leaf(spec).unwrap();
        for key in [pkcs8, other] {
            let c = load(dir.path(), &svid.chain_pem, key, &ca.root_pem);
            assert!(c.is_ok(), "{}: {:?}", key.lines().next().unwrap(), c.err());
        }
        // and another key is told apart from the certificate's
        let stranger = if pkcs8 == keys::EC_PKCS8 {
            keys::RSA_PKCS1
        } else {
            keys::EC_SEC1
        };
        let err = load(dir.path(), &svid.chain_pem, stranger, &ca.root_pem).unwrap_err();
        assert!(matches!(err.problem, Problem::KeyMismatch(_)), "{err}");
    }
}

#[test]
fn what_makes_a_set_unusable_is_named() {
    let dir = Scratch::new("store-bad");
    let ca = TestCa::root("cluster.local").unwrap();
    let now = SystemTime::now();
    let with = |uris: &[&str], nb: SystemTime, na: SystemTime| {
        let mut spec = Leaf::svid(ORDER).valid(nb, na);
        spec.uris = uris.iter().map(|u| u.to_string()).collect();
        spec.dns = vec!["order".to_string()];
        ca.leaf(spec).unwrap()
    };
    let valid = (now - HOUR, now + HOUR);
    let cases = [
        (with(&[], valid.0, valid.1), "has no URI SAN"),
        (
            with(&[ORDER, "spiffe://cluster.local/x"], valid.0, valid.1),
            "has 2 URI SANs",
        ),
        (
            with(&["https://order.example/"], valid.0, valid.1),
            "not a SPIFFE ID",
        ),
        (with(&[ORDER], now - 3 * HOUR, now - HOUR), "expired at"),
        (
            with(&[ORDER], now + HOUR, now + 3 * HOUR),
            "is not valid before",
        ),
    ];
    for (svid, says) in cases {
        let err = load(dir.path(), &svid.chain_pem, &svid.key_pem, &ca.root_pem).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(says), "{msg}");
        assert!(msg.contains("cert.pem"), "{msg}");
    }
    let good = ca.svid("/ns/shop/sa/order").unwrap();
    let key_err = load(dir.path(), &good.chain_pem, "", &ca.root_pem).unwrap_err();
    assert!(matches!(key_err.problem, Problem::NoKey), "{key_err}");
    assert!(key_err.to_string().contains("key.pem"));
    // a leaf where the bundle should be: no CA, refused as a root
    let leaf_only = load(dir.path(), &good.chain_pem, &good.key_pem, "junk").unwrap_err();
    assert!(leaf_only.to_string().contains("ca.pem"), "{leaf_only}");
    let missing = Credentials::load(&CredentialPaths {
        cert: dir.path().join("nope.pem"),
        key: dir.path().join("key.pem"),
        ca: dir.path().join("ca.pem"),
    })
    .unwrap_err();
    assert!(
        missing.to_string().contains("nope.pem: cannot read"),
        "{missing}"
    );
}

#[test]
fn a_store_started_before_its_files_says_why_until_they_come() {
    let dir = Scratch::new("store-start");
    let p = CredentialPaths {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
        ca: dir.path().join("ca.pem"),
    };
    let (store, error) = CredentialStore::start(p.clone());
    assert!(error.is_some());
    assert!(store.current().is_none());
    let why = store.problem(SystemTime::now()).unwrap();
    assert!(
        why.contains("cert.pem") && why.contains("cannot read"),
        "{why}"
    );

    let ca = TestCa::root("cluster.local").unwrap();
    let svid = ca.svid("/ns/shop/sa/order").unwrap();
    std::fs::write(&p.cert, &svid.chain_pem).unwrap();
    std::fs::write(&p.key, &svid.key_pem).unwrap();
    std::fs::write(&p.ca, &ca.root_pem).unwrap();
    store.reload().unwrap();
    assert_eq!(store.problem(SystemTime::now()), None);
    // Past the leaf's expiry the same set is no usable identity.
    let later = SystemTime::now() + 48 * HOUR;
    let why = store.problem(later).unwrap();
    assert!(why.contains("expired at"), "{why}");
}
