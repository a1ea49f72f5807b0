//! Signing keys, JWK Sets and tokens for the JWT tests: ES256 and EdDSA
//! keys made fresh by ring, the RSA key (RS256, PS256) read from
//! `tests/fixtures/jwt/rsa-2048.pem` (made once with `openssl genrsa
//! -traditional 2048`; ring cannot generate RSA keys), and the forged
//! tokens an attacker would try (`alg: none`, HMAC keyed with the public
//! key, a tampered payload).
//!
//! The unit tests of `src/admission/` use this file too (`#[path]`), so it
//! needs nothing but the crate's own dependencies.

#![allow(clippy::expect_used)] // a key that cannot be made is a broken test

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair as _};
use serde_json::{json, Value};

const RSA_PEM: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/jwt/rsa-2048.pem"
));
const RSA_PUBLIC_JWK: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/jwt/rsa-2048.public.jwk"
));

/// A signing key and the public JWK that verifies it.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// The public key as a JWK (with `kid`, `alg` and `use: sig`).
    pub jwk: Value,
}

impl TestKey {
    /// The fixture RSA key, for `RS256` or `PS256`.
    pub fn rsa(kid: &str, alg: Algorithm) -> TestKey {
        let body: String = RSA_PEM
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = STANDARD.decode(body).expect("fixture PEM");
        let mut jwk: Value = serde_json::from_str(RSA_PUBLIC_JWK).expect("fixture JWK");
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!(alg_name(alg));
        jwk["use"] = json!("sig");
        TestKey {
            kid: kid.into(),
            alg,
            encoding: EncodingKey::from_rsa_der(&der),
            jwk,
        }
    }

    /// A fresh P-256 key for `ES256`.
    pub fn es256(kid: &str) -> TestKey {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("P-256 key");
        let pair = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("P-256");
        // Uncompressed point: 0x04, X, Y.
        let point = pair.public_key().as_ref();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                "x": b64(&point[1..33]), "y": b64(&point[33..65]),
            }),
        }
    }

    /// A fresh Ed25519 key for `EdDSA`.
    pub fn ed25519(kid: &str) -> TestKey {
        let rng = SystemRandom::new();
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key");
        let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519");
        TestKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "use": "sig",
                "x": b64(pair.public_key().as_ref()),
            }),
        }
    }

    /// The same key under another `kid` (a key the JWK Set does not know).
    pub fn renamed(mut self, kid: &str) -> TestKey {
        self.kid = kid.into();
        self.jwk["kid"] = json!(kid);
        self
    }

    /// A token of `claims`, signed, with this key's `kid` and `alg`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }

    /// A token of `claims` whose header has no `kid`.
    pub fn sign_without_kid(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(self.alg), claims, &self.encoding).expect("sign")
    }
}

/// A JWK Set of `keys`.
pub fn jwks(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Claims from `iss` for `aud`, expiring `exp_in` seconds from now, with `sub`.
pub fn claims(iss: &str, aud: &str, exp_in: i64, sub: &str) -> Value {
    json!({ "iss": iss, "aud": aud, "sub": sub, "iat": now(), "exp": now() + exp_in })
}

/// `alg: none`: no signature at all.
pub fn alg_none(kid: &str, claims: &Value) -> String {
    let header = json!({ "alg": "none", "typ": "JWT", "kid": kid });
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// HS256 keyed with the RSA key's public JWK text: the key confusion attack
/// on verifiers that take the algorithm from the token.
pub fn hmac_with_public_key(kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.into());
    let secret = EncodingKey::from_secret(RSA_PUBLIC_JWK.as_bytes());
    jsonwebtoken::encode(&header, claims, &secret).expect("sign")
}

/// `token` with its payload replaced by `claims` and the signature kept.
pub fn tampered(token: &str, claims: &Value) -> String {
    let mut parts = token.split('.');
    let (header, _, signature) = (
        parts.next().unwrap_or_default(),
        parts.next(),
        parts.next().unwrap_or_default(),
    );
    format!(
        "{header}.{}.{signature}",
        b64(claims.to_string().as_bytes())
    )
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::PS256 => "PS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        _ => "unsupported",
    }
}
