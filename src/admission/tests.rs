//! `Admission::admit` end to end: the order of the checks, what a refusal
//! looks like, what reaches the cluster.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use jsonwebtoken::Algorithm;

use super::jwks::{Jwks, Source};
use super::rate_limit::RateLimiter;
use super::*;
use crate::config;

use super::test_keys as keys;
use keys::{claims, TestKey};

const ISS: &str = "https://auth.test";

fn listener(jwt: bool, rate_limit: &str, route_extra: &str) -> config::Listener {
    let jwt = if jwt {
        "jwt: { issuer: \"https://auth.test\", audiences: [shop], jwks: { file: /x }, forward_claims: { sub: x-user } }\n"
    } else {
        ""
    };
    let yaml = format!(
        "name: gw\naddress: 127.0.0.1:0\n{jwt}{rate_limit}virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n      - match: {{ prefix: /public/ }}\n        cluster: c\n        jwt: false\n{route_extra}      - cluster: c\n"
    );
    serde_yaml::from_str(&yaml).unwrap()
}

fn build(l: &config::Listener, key: Option<&TestKey>) -> (Admission, crate::metrics::Metrics) {
    let metrics = crate::metrics::Metrics::new().unwrap();
    let jwks = l.jwt.as_ref().map(|_| {
        let j = Arc::new(Jwks::new("gw", &Source::File("/x".into())));
        if let Some(k) = key {
            j.load(keys::jwks(&[k]).as_bytes()).unwrap();
        }
        j
    });
    let mut limiters = |_: &str, c: &config::RateLimit| Ok(Arc::new(RateLimiter::new(c)));
    let a = Admission::build(l, jwks, &mut limiters, &metrics)
        .unwrap()
        .unwrap();
    (a, metrics)
}

fn with_token(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
/// Route ids: 0 is `/public/` (`jwt: false`), 1 the rest.
const PUBLIC: Option<usize> = Some(0);
const PRIVATE: Option<usize> = Some(1);

#[test]
fn a_listener_without_rules_has_no_admission() {
    let l = listener(false, "", "");
    let metrics = crate::metrics::Metrics::new().unwrap();
    let mut limiters = |_: &str, c: &config::RateLimit| Ok(Arc::new(RateLimiter::new(c)));
    assert!(Admission::build(&l, None, &mut limiters, &metrics)
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_valid_token_passes_with_its_claims_and_forged_ones_go_everywhere() {
    let key = TestKey::rsa("k", Algorithm::RS256);
    let (a, _) = build(&listener(true, "", ""), Some(&key));
    let mut h = with_token(&key.sign(&claims(ISS, "shop", 60, "alice")));
    h.insert("x-user", HeaderValue::from_static("root"));
    a.admit(PRIVATE, PEER, &mut h).await.unwrap();
    assert_eq!(h["x-user"], "alice");
    assert!(h.contains_key("authorization"), "forwarded by default");

    // A public route needs no token, and a forged claim header is still removed.
    let mut h = HeaderMap::new();
    h.insert("x-user", HeaderValue::from_static("root"));
    a.admit(PUBLIC, PEER, &mut h).await.unwrap();
    assert!(h.get("x-user").is_none());
}

#[tokio::test]
async fn refusals_say_why_in_the_challenge_and_the_metric() {
    let key = TestKey::es256("k");
    let (a, metrics) = build(&listener(true, "", ""), Some(&key));
    let e = a
        .admit(
            PRIVATE,
            PEER,
            &mut with_token(&key.sign(&claims(ISS, "shop", -600, "u"))),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unauthenticated);
    assert_eq!(
        e.challenge.as_deref(),
        Some(
            "Bearer error=\"invalid_token\", error_description=\"expired: the token has expired\""
        )
    );
    let e = a
        .admit(PRIVATE, PEER, &mut HeaderMap::new())
        .await
        .unwrap_err();
    assert_eq!(
        e.challenge.as_deref(),
        Some("Bearer"),
        "RFC 6750 3.1: no error code"
    );
    let c = |reason| metrics.authn_denied("gw", reason).get();
    assert_eq!((c("expired"), c("missing"), c("signature")), (1, 1, 0));
}

#[tokio::test]
async fn no_key_set_is_503_no_jwks() {
    let (a, _) = build(&listener(true, "", ""), None);
    let token = TestKey::es256("k").sign(&claims(ISS, "shop", 60, "u"));
    let e = a
        .admit(PRIVATE, PEER, &mut with_token(&token))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoJwks);
    assert_eq!(e.kind.http_status(), 503);
}

#[tokio::test]
async fn a_refused_request_takes_no_token_from_the_bucket() {
    let key = TestKey::es256("k");
    let l = listener(
        true,
        "rate_limit: { requests_per_second: 1, burst: 2 }\n",
        "",
    );
    let (a, metrics) = build(&l, Some(&key));
    for _ in 0..5 {
        let e = a
            .admit(PRIVATE, PEER, &mut HeaderMap::new())
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthenticated);
    }
    let token = key.sign(&claims(ISS, "shop", 60, "u"));
    for _ in 0..2 {
        a.admit(PRIVATE, PEER, &mut with_token(&token))
            .await
            .unwrap();
    }
    let e = a
        .admit(PRIVATE, PEER, &mut with_token(&token))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert!(e.retry_after.is_some_and(|d| d.as_millis() > 0));
    assert_eq!(e.rate_limit.map(|f| (f.quota, f.window_secs)), Some((1, 1)));
    assert_eq!(metrics.ratelimited("gw").get(), 1);
}

#[tokio::test]
async fn claim_keys_count_per_user_and_a_route_limit_replaces_the_listeners() {
    let key = TestKey::ed25519("k");
    let l = listener(
        true,
        "rate_limit: { requests_per_second: 1, burst: 1, key: \"claim:sub\" }\n",
        "        rate_limit: { requests_per_second: 1, burst: 3 }\n",
    );
    let (a, _) = build(&l, Some(&key));
    let alice = key.sign(&claims(ISS, "shop", 60, "alice"));
    let bob = key.sign(&claims(ISS, "shop", 60, "bob"));
    a.admit(PRIVATE, PEER, &mut with_token(&alice))
        .await
        .unwrap();
    assert!(a
        .admit(PRIVATE, PEER, &mut with_token(&alice))
        .await
        .is_err());
    a.admit(PRIVATE, PEER, &mut with_token(&bob)).await.unwrap();
    // The public route has its own bucket of 3, by client address.
    for _ in 0..3 {
        a.admit(PUBLIC, PEER, &mut HeaderMap::new()).await.unwrap();
    }
    assert!(a.admit(PUBLIC, PEER, &mut HeaderMap::new()).await.is_err());
}

#[tokio::test]
async fn forward_token_false_drops_the_authorization_header() {
    let key = TestKey::es256("k");
    let mut l = listener(true, "", "");
    if let Some(j) = &mut l.jwt {
        j.forward_token = false;
    }
    let (a, _) = build(&l, Some(&key));
    let mut h = with_token(&key.sign(&claims(ISS, "shop", 60, "u")));
    a.admit(PRIVATE, PEER, &mut h).await.unwrap();
    assert!(h.get("authorization").is_none());
}

#[test]
fn descriptions_are_quotable() {
    assert_eq!(quotable("kid \"a\\b\"\n"), "kid 'a/b'?");
}
