//! Tests of JWK Set parsing and installing.

use super::*;
use serde_json::json;

use crate::admission::test_keys as keys;
use keys::TestKey;

#[test]
fn a_key_verifies_only_its_own_algorithms() {
    let rsa = TestKey::rsa("r", Algorithm::RS256);
    let es = TestKey::es256("e");
    let ed = TestKey::ed25519("d");
    let mut bare = rsa.jwk.clone();
    bare.as_object_mut().unwrap().remove("alg");
    bare["kid"] = json!("bare");
    let text = json!({ "keys": [rsa.jwk, es.jwk, ed.jwk, bare] }).to_string();
    let (set, warnings) = KeySet::parse(text.as_bytes()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(set.by_kid("r").unwrap().algorithms, [Algorithm::RS256]);
    assert_eq!(set.by_kid("e").unwrap().algorithms, [Algorithm::ES256]);
    assert_eq!(set.by_kid("d").unwrap().algorithms, [Algorithm::EdDSA]);
    assert_eq!(
        set.by_kid("bare").unwrap().algorithms,
        [Algorithm::RS256, Algorithm::PS256],
        "an RSA key without alg: RSA's algorithms, never HMAC"
    );
}

#[test]
fn unusable_keys_are_left_out_with_a_reason() {
    let es = TestKey::es256("e");
    let text = json!({ "keys": [
        { "kty": "oct", "kid": "h", "k": "c2VjcmV0" },
        { "kty": "RSA", "kid": "small", "n": keys::b64(&[0xc5; 128]), "e": "AQAB" },
        { "kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA" },
        { "kty": "RSA", "kid": "enc", "use": "enc", "n": "AA", "e": "AQAB" },
        { "kty": "EC", "crv": "P-256", "kid": "mismatch", "alg": "RS256", "x": "AA", "y": "AA" },
        { "kty": "RSA", "kid": "hs", "alg": "HS256", "n": "AA", "e": "AQAB" },
        es.jwk,
    ]})
    .to_string();
    let (set, warnings) = KeySet::parse(text.as_bytes()).unwrap();
    assert_eq!(set.keys.len(), 1);
    assert_eq!(warnings.len(), 6, "{warnings:#?}");
    for (w, words) in warnings.iter().zip([
        "symmetric",
        "1024 bits",
        "not supported",
        "not \"sig\"",
        "does not fit",
        "not one of",
    ]) {
        assert!(w.contains(words), "{w}: want {words:?}");
    }
    let none = KeySet::parse(br#"{"keys": [{"kty": "oct", "k": "AA"}]}"#);
    assert!(none.err().unwrap().contains("no usable key"));
    assert!(KeySet::parse(b"[]").is_err());
    assert!(KeySet::parse(b"not json").is_err());
}

#[test]
fn the_same_set_again_changes_nothing_and_a_bad_one_keeps_the_last() {
    let jwks = Jwks::new("test", &Source::File("/nowhere".into()));
    assert!(!jwks.is_loaded());
    let a = TestKey::es256("a");
    let b = TestKey::es256("b");
    jwks.load(keys::jwks(&[&a]).as_bytes()).unwrap();
    let first = jwks.current().unwrap().generation;
    jwks.load(keys::jwks(&[&a]).as_bytes()).unwrap();
    assert_eq!(jwks.current().unwrap().generation, first, "same keys");
    assert!(jwks.load(b"{}").is_err());
    assert!(
        jwks.current().unwrap().by_kid("a").is_some(),
        "last good set kept"
    );
    jwks.load(keys::jwks(&[&b]).as_bytes()).unwrap();
    let set = jwks.current().unwrap();
    assert!(set.generation > first);
    assert!(set.by_kid("a").is_none(), "a key removed stops verifying");
}
