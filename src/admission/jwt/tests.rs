//! Tests of the token check: each algorithm, each refusal, leeway, the cache.

use super::*;
use crate::admission::jwks::Source;
use serde_json::json;

use crate::admission::test_keys as keys;
use keys::{claims, TestKey};

const ISS: &str = "https://auth.test";
const AUD: &str = "shop";

fn config(forward: &[(&str, &str)]) -> config::Jwt {
    let yaml = format!(
        "issuer: {ISS}\naudiences: [{AUD}, other]\njwks: {{ file: /x }}\nleeway: 5s\nforward_claims: {{ {} }}",
        forward
            .iter()
            .map(|(c, h)| format!("{c}: {h}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    serde_yaml::from_str(&yaml).unwrap()
}

fn auth_with(keys: &[&TestKey], forward: &[(&str, &str)]) -> JwtAuth {
    let jwks = Arc::new(Jwks::new("test", &Source::File("/x".into())));
    jwks.load(keys::jwks(keys).as_bytes()).unwrap();
    JwtAuth::new(&config(forward), jwks, &["tier".into()], Vec::new()).unwrap()
}

fn bearer_headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

fn reason(r: Result<Arc<Verified>, AuthError>) -> Reason {
    match r {
        Err(AuthError::Denied { reason, .. }) => reason,
        other => panic!("want a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn each_algorithm_verifies_and_forwards_claims() {
    let keys = [
        TestKey::rsa("rs", Algorithm::RS256),
        TestKey::rsa("ps", Algorithm::PS256),
        TestKey::es256("es"),
        TestKey::ed25519("ed"),
    ];
    let auth = auth_with(&keys.iter().collect::<Vec<_>>(), &[("sub", "x-user")]);
    for k in &keys {
        let mut c = claims(ISS, AUD, 60, &format!("user-{}", k.kid));
        c["tier"] = json!(["gold", "early"]);
        let v = auth.authenticate(&bearer_headers(&k.sign(&c))).await;
        let v = v.unwrap_or_else(|e| panic!("{}: {e:?}", k.kid));
        let mut h = HeaderMap::new();
        auth.forward(&v, &mut h);
        assert_eq!(h["x-user"], format!("user-{}", k.kid).as_str());
        assert_eq!(
            v.claim(auth.claim_index("tier").unwrap()).unwrap(),
            "gold,early"
        );
    }
}

#[tokio::test]
async fn every_bad_token_is_refused_with_its_reason() {
    let rsa = TestKey::rsa("rs", Algorithm::RS256);
    let es = TestKey::es256("es");
    let auth = auth_with(&[&rsa, &es], &[]);
    let good = claims(ISS, AUD, 60, "u");
    let check = |token: String| {
        let auth = &auth;
        async move { reason(auth.authenticate(&bearer_headers(&token)).await) }
    };
    assert_eq!(
        check(rsa.sign(&claims(ISS, AUD, -60, "u"))).await,
        Reason::Expired
    );
    let mut early = good.clone();
    early["nbf"] = json!(keys::now() + 120);
    assert_eq!(check(rsa.sign(&early)).await, Reason::NotYetValid);
    assert_eq!(
        check(rsa.sign(&claims("https://evil", AUD, 60, "u"))).await,
        Reason::Issuer
    );
    assert_eq!(
        check(rsa.sign(&claims(ISS, "billing", 60, "u"))).await,
        Reason::Audience
    );
    let stranger = TestKey::es256("stranger");
    assert_eq!(check(stranger.sign(&good)).await, Reason::UnknownKid);
    let mut rich = good.clone();
    rich["sub"] = json!("admin");
    assert_eq!(
        check(keys::tampered(&rsa.sign(&good), &rich)).await,
        Reason::Signature
    );
    assert_eq!(check(keys::alg_none("rs", &good)).await, Reason::Algorithm);
    assert_eq!(
        check(keys::hmac_with_public_key("rs", &good)).await,
        Reason::Algorithm
    );
    // An ES256 token claiming the RSA key's kid: the key decides the algorithm.
    assert_eq!(check(es.renamed("rs").sign(&good)).await, Reason::Algorithm);
    assert_eq!(check("abc".into()).await, Reason::Malformed);
    assert_eq!(check("a.b.c".into()).await, Reason::Malformed);
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(check(rsa.sign(&no_exp)).await, Reason::Malformed);
    assert_eq!(
        reason(auth.authenticate(&HeaderMap::new()).await),
        Reason::Missing
    );
    let mut basic = HeaderMap::new();
    basic.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Basic dTpw"),
    );
    assert_eq!(reason(auth.authenticate(&basic).await), Reason::Missing);
}

#[tokio::test]
async fn leeway_allows_clock_skew_and_no_more() {
    let es = TestKey::es256("es");
    let auth = auth_with(&[&es], &[]);
    let just_expired = claims(ISS, AUD, -3, "u");
    assert!(auth
        .authenticate(&bearer_headers(&es.sign(&just_expired)))
        .await
        .is_ok());
    let mut soon = claims(ISS, AUD, 60, "u");
    soon["nbf"] = json!(keys::now() + 3);
    assert!(auth
        .authenticate(&bearer_headers(&es.sign(&soon)))
        .await
        .is_ok());
}

#[tokio::test]
async fn a_token_without_kid_is_tried_on_the_keys_of_its_algorithm() {
    let a = TestKey::es256("a");
    let b = TestKey::es256("b");
    let auth = auth_with(&[&a, &b], &[]);
    let c = claims(ISS, AUD, 60, "u");
    assert!(auth
        .authenticate(&bearer_headers(&b.sign_without_kid(&c)))
        .await
        .is_ok());
    let other = TestKey::es256("c");
    assert_eq!(
        reason(
            auth.authenticate(&bearer_headers(&other.sign_without_kid(&c)))
                .await
        ),
        Reason::Signature
    );
}

#[tokio::test]
async fn a_reused_token_comes_from_the_cache_until_the_keys_change() {
    let a = TestKey::es256("a");
    let auth = auth_with(&[&a], &[]);
    let token = a.sign(&claims(ISS, AUD, 60, "u"));
    auth.authenticate(&bearer_headers(&token)).await.unwrap();
    assert_eq!(auth.cache.len(), 1);
    auth.authenticate(&bearer_headers(&token)).await.unwrap();
    assert_eq!(auth.cache.len(), 1);
    // The key is rotated out: the cached token no longer passes.
    let b = TestKey::es256("b");
    auth.jwks.load(keys::jwks(&[&b]).as_bytes()).unwrap();
    assert_eq!(
        reason(auth.authenticate(&bearer_headers(&token)).await),
        Reason::UnknownKid
    );
}

#[tokio::test]
async fn no_key_set_is_not_the_clients_fault() {
    let jwks = Arc::new(Jwks::new("test", &Source::File("/x".into())));
    let auth = JwtAuth::new(&config(&[]), jwks, &[], Vec::new()).unwrap();
    let token = TestKey::es256("a").sign(&claims(ISS, AUD, 60, "u"));
    assert_eq!(
        auth.authenticate(&bearer_headers(&token))
            .await
            .unwrap_err(),
        AuthError::NoKeys
    );
}

#[test]
fn the_cache_stays_within_its_capacity() {
    let cache = TokenCache::new(3);
    for i in 0..10u8 {
        let v = Arc::new(Verified {
            exp: 100,
            generation: 1,
            values: Box::new([]),
        });
        cache.put(&[i; 32], v, 50);
        assert!(cache.len() <= 3);
    }
    assert!(cache.get(&[9; 32], 50, 0, 1).is_some());
    assert!(cache.get(&[9; 32], 101, 0, 1).is_none(), "past exp");
}

#[test]
fn forged_claim_headers_are_removed_and_the_token_kept_or_not() {
    let a = TestKey::es256("a");
    let mut auth = auth_with(&[&a], &[("sub", "x-user")]);
    let mut h = bearer_headers("t");
    h.insert("x-user", HeaderValue::from_static("admin"));
    auth.strip_forged(&mut h);
    assert!(h.get("x-user").is_none());
    let v = auth.keep(
        &json!({"sub": "u1", "exp": 1}).as_object().unwrap().clone(),
        0,
    );
    auth.forward(&v, &mut h);
    assert_eq!(h["x-user"], "u1");
    assert!(h.get("authorization").is_some());
    auth.forward_token = false;
    auth.forward(&v, &mut h);
    assert!(h.get("authorization").is_none());
}
