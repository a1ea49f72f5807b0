//! JWT authentication of a listener's requests: the `Authorization: Bearer`
//! token must be signed by a key of the listener's JWK Set ([`jwks`]) and
//! carry the configured `iss`, an `aud` among `audiences`, an `exp` not
//! passed and an `nbf` reached (both with `leeway`).
//!
//! The algorithm comes from the key, never from the token: a token's
//! `alg` must be one its key verifies, so `alg: none` and HMAC "signed" with
//! a public key are refused before any signature is looked at. A verified
//! token is cached (bounded, by the SHA-256 of the token, until its `exp`)
//! so a client reusing its token costs a hash and a lookup, not a
//! signature check.
//!
//! [`jwks`]: super::jwks

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use prometheus::IntCounter;
use serde_json::{Map, Value};

use super::jwks::{alg_name, Jwks, Key, ALGORITHMS};
use crate::config;

/// Verified tokens kept per listener; past it, the oldest-looking go first.
pub const CACHE_CAPACITY: usize = 10_000;
/// How long a request waits for a fetch asked for by an unknown `kid`.
const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(2);

/// Why a token was refused: the `reason` label of `skiff_authn_denied_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Missing,
    Malformed,
    Expired,
    NotYetValid,
    Signature,
    Issuer,
    Audience,
    UnknownKid,
    Algorithm,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::Signature,
        Reason::Issuer,
        Reason::Audience,
        Reason::UnknownKid,
        Reason::Algorithm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Signature => "signature",
            Reason::Issuer => "issuer",
            Reason::Audience => "audience",
            Reason::UnknownKid => "unknown_kid",
            Reason::Algorithm => "algorithm",
        }
    }
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The token (or its absence) is refused: 401.
    Denied { reason: Reason, detail: String },
    /// No key set is in yet: 503 `no_jwks`.
    NoKeys,
}

fn denied(reason: Reason, detail: impl Into<String>) -> AuthError {
    AuthError::Denied {
        reason,
        detail: detail.into(),
    }
}

/// What a verified token lets through: the claims the listener uses.
#[derive(Debug)]
pub struct Verified {
    /// `exp`, seconds since the epoch.
    pub exp: u64,
    /// The key set generation it was verified under.
    generation: u64,
    /// Per wanted claim (see [`JwtAuth::claim_index`]), its value as a header value.
    values: Box<[Option<HeaderValue>]>,
}

impl Verified {
    /// The value of wanted claim `index`.
    pub fn claim(&self, index: usize) -> Option<&HeaderValue> {
        self.values.get(index)?.as_ref()
    }
}

/// A listener's token check.
pub struct JwtAuth {
    pub jwks: Arc<Jwks>,
    validation: Validation,
    leeway: u64,
    /// Claim names kept from a verified token, in index order.
    wanted: Vec<String>,
    /// Forwarded claims: header, index in `wanted`.
    forward: Vec<(HeaderName, usize)>,
    forward_token: bool,
    cache: TokenCache,
    denied: Vec<(Reason, IntCounter)>,
}

impl JwtAuth {
    /// `extra_claims`: claims read by other parts of admission (`claim:` rate-limit keys).
    pub fn new(
        c: &config::Jwt,
        jwks: Arc<Jwks>,
        extra_claims: &[String],
        denied: Vec<(Reason, IntCounter)>,
    ) -> Result<JwtAuth, String> {
        let mut wanted: Vec<String> = Vec::new();
        let mut index = |name: &str| match wanted.iter().position(|w| w == name) {
            Some(i) => i,
            None => {
                wanted.push(name.to_string());
                wanted.len() - 1
            }
        };
        let mut forward = Vec::new();
        for (claim, header) in &c.forward_claims {
            let name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("bad forward_claims header {header:?}"))?;
            forward.push((name, index(claim)));
        }
        for claim in extra_claims {
            index(claim);
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = c.leeway.get().as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&c.issuer]);
        validation.set_audience(&c.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        Ok(JwtAuth {
            jwks,
            leeway: validation.leeway,
            validation,
            wanted,
            forward,
            forward_token: c.forward_token,
            cache: TokenCache::new(CACHE_CAPACITY),
            denied,
        })
    }

    /// Where claim `name` is in [`Verified::claim`], when it is kept.
    pub fn claim_index(&self, name: &str) -> Option<usize> {
        self.wanted.iter().position(|w| w == name)
    }

    /// Remove the forwarded-claim headers a client sent (every request of
    /// the listener, public routes too: only the proxy may set them).
    pub fn strip_forged(&self, headers: &mut HeaderMap) {
        for (name, _) in &self.forward {
            headers.remove(name);
        }
    }

    /// After a request passed: set the forwarded claims, and drop the
    /// token with `forward_token: false`.
    pub fn forward(&self, verified: &Verified, headers: &mut HeaderMap) {
        for (name, i) in &self.forward {
            if let Some(v) = verified.claim(*i) {
                headers.insert(name.clone(), v.clone());
            }
        }
        if !self.forward_token {
            headers.remove(http::header::AUTHORIZATION);
        }
    }

    /// Count a refusal in `skiff_authn_denied_total`.
    pub fn count(&self, reason: Reason) {
        if let Some((_, c)) = self.denied.iter().find(|(r, _)| *r == reason) {
            c.inc();
        }
    }

    /// Authenticate a request by its headers.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Verified>, AuthError> {
        let token = bearer(headers)?;
        let now = unix_now();
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let Some(keys) = self.jwks.current() else {
            return Err(AuthError::NoKeys);
        };
        if let Some(v) = self
            .cache
            .get(digest.as_ref(), now, self.leeway, keys.generation)
        {
            return Ok(v);
        }
        let verified = match self.verify(token, &keys) {
            Err(AuthError::Denied {
                reason: Reason::UnknownKid,
                ..
            }) if self.jwks.refetch_for_unknown_kid(UNKNOWN_KID_WAIT).await => {
                let keys = self.jwks.current().ok_or(AuthError::NoKeys)?;
                self.verify(token, &keys)?
            }
            other => other?,
        };
        let verified = Arc::new(verified);
        self.cache.put(digest.as_ref(), verified.clone(), now);
        Ok(verified)
    }

    /// Verify `token` against `keys`, with no cache.
    pub fn verify(&self, token: &str, keys: &super::jwks::KeySet) -> Result<Verified, AuthError> {
        let header = header_of(token)?;
        let alg = ALGORITHMS
            .into_iter()
            .find(|a| alg_name(*a) == header.alg)
            .ok_or_else(|| {
                denied(
                    Reason::Algorithm,
                    format!(
                        "alg {:?} is not accepted: tokens are signed with RS256, PS256, ES256 or EdDSA",
                        header.alg
                    ),
                )
            })?;
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) => {
                let key = keys.by_kid(kid).ok_or_else(|| {
                    denied(
                        Reason::UnknownKid,
                        format!("no key with kid {kid:?} in the JWK Set"),
                    )
                })?;
                if !key.algorithms.contains(&alg) {
                    return Err(denied(
                        Reason::Algorithm,
                        format!("the key {kid:?} does not verify {}", alg_name(alg)),
                    ));
                }
                vec![key]
            }
            None => {
                let keys: Vec<&Key> = keys
                    .keys
                    .iter()
                    .filter(|k| k.algorithms.contains(&alg))
                    .collect();
                if keys.is_empty() {
                    return Err(denied(
                        Reason::Algorithm,
                        format!("no key in the JWK Set verifies {}", alg_name(alg)),
                    ));
                }
                keys
            }
        };
        let mut validation = self.validation.clone();
        validation.algorithms = vec![alg];
        let mut last = denied(Reason::Signature, "the signature does not verify");
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation) {
                Ok(data) => return Ok(self.keep(&data.claims, keys.generation)),
                Err(e) => {
                    last = refusal(e.kind());
                    // Claims are checked after the signature: it verified.
                    if !matches!(
                        last,
                        AuthError::Denied {
                            reason: Reason::Signature,
                            ..
                        }
                    ) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn keep(&self, claims: &Map<String, Value>, generation: u64) -> Verified {
        let values = self
            .wanted
            .iter()
            .map(|name| claims.get(name).and_then(claim_value))
            .collect();
        Verified {
            exp: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
            generation,
            values,
        }
    }
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let missing = || {
        denied(
            Reason::Missing,
            "no bearer token in the authorization header",
        )
    };
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or_else(missing)?;
    let value = value
        .to_str()
        .map_err(|_| denied(Reason::Malformed, "the authorization header is not text"))?;
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(missing());
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(denied(Reason::Malformed, "the bearer token is empty"));
    }
    Ok(token)
}

#[derive(serde::Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// The token's header, read before anything is trusted.
fn header_of(token: &str) -> Result<JoseHeader, AuthError> {
    let malformed = |why: &str| denied(Reason::Malformed, why.to_string());
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "a JWT has three base64url parts separated by dots",
        ));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| malformed("the header is not base64url"))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| malformed("the header is not a JSON object with an `alg`"))
}

/// The reason for a failure of `jsonwebtoken::decode`.
fn refusal(kind: &JwtErrorKind) -> AuthError {
    match kind {
        JwtErrorKind::InvalidSignature
        | JwtErrorKind::InvalidEcdsaKey
        | JwtErrorKind::InvalidRsaKey(_)
        | JwtErrorKind::InvalidKeyFormat => {
            denied(Reason::Signature, "the signature does not verify")
        }
        JwtErrorKind::ExpiredSignature => denied(Reason::Expired, "the token has expired"),
        JwtErrorKind::ImmatureSignature => {
            denied(Reason::NotYetValid, "the token is not valid yet (nbf)")
        }
        JwtErrorKind::InvalidIssuer => denied(Reason::Issuer, "the token's issuer is not accepted"),
        JwtErrorKind::InvalidAudience => {
            denied(Reason::Audience, "the token is not for this audience")
        }
        JwtErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "iss" => denied(Reason::Issuer, "the token has no issuer (iss)"),
            "aud" => denied(Reason::Audience, "the token has no audience (aud)"),
            _ => denied(Reason::Malformed, format!("the token has no `{c}`")),
        },
        JwtErrorKind::InvalidAlgorithm => {
            denied(Reason::Algorithm, "the token's algorithm is not its key's")
        }
        _ => denied(Reason::Malformed, "the token cannot be read"),
    }
}

/// A claim as a header value: strings as they are, numbers and booleans
/// as JSON writes them, a list of strings joined by commas, anything else
/// as JSON text. `None` when it cannot be a header value.
fn claim_value(v: &Value) -> Option<HeaderValue> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        Value::Null => return None,
        other => other.to_string(),
    };
    HeaderValue::from_str(&text).ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Verified tokens by the SHA-256 of the token, until their `exp` (plus leeway).
struct TokenCache {
    map: Mutex<HashMap<[u8; 32], Arc<Verified>>>,
    capacity: usize,
}

impl TokenCache {
    fn new(capacity: usize) -> TokenCache {
        TokenCache {
            map: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn get(&self, digest: &[u8], now: u64, leeway: u64, generation: u64) -> Option<Arc<Verified>> {
        let key: [u8; 32] = digest.try_into().ok()?;
        let mut map = self.map.lock().ok()?;
        let v = map.get(&key)?;
        if v.generation == generation && v.exp.saturating_add(leeway) >= now {
            return Some(v.clone());
        }
        // Expired, or verified under a key set that has changed: check again.
        map.remove(&key);
        None
    }

    fn put(&self, digest: &[u8], v: Arc<Verified>, now: u64) {
        let Ok(key) = <[u8; 32]>::try_from(digest) else {
            return;
        };
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if map.len() >= self.capacity {
            map.retain(|_, v| v.exp >= now);
            if map.len() >= self.capacity {
                // Still full of live tokens: make room by dropping any one.
                if let Some(k) = map.keys().next().copied() {
                    map.remove(&k);
                }
            }
        }
        map.insert(key, v);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
