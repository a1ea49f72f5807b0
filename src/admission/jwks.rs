//! The keys a `jwt:` listener verifies tokens with: a JWK Set (RFC 7517)
//! read from a file, re-read when it changes ([`FileWatch`]), or fetched from a URI through
//! a cluster (over its TLS for `https://`), again every `refresh` and at once (rate-limited) when a
//! token names a key the set does not have.
//!
//! Each key says which algorithm it verifies: its JWK `alg`, or for a key
//! without one, what its type allows (`RSA`: RS256 and PS256; `EC` P-256:
//! ES256; `OKP` Ed25519: EdDSA). Symmetric (`oct`) keys, encryption keys
//! (`use: enc`), other curves and RSA keys under 2048 bits are left out,
//! each with a warning: an HMAC "key" from a public set would let anyone
//! sign. A fetch or read that fails, or a set with no usable key, keeps the
//! last good set (a key provider's outage must not turn every request into
//! a 401); before the first good set there is none, and the listener
//! answers 503 `no_jwks` and is not ready.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::config;
use crate::file_watch::FileWatch;
use crate::http::body::RequestBody;

/// The algorithms a token may be signed with.
pub const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// Fetches of `jwks.uri` asked for by unknown `kid`s: at most one this often.
pub const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(10);
/// Default `jwks.refresh`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(600);
/// One fetch of `jwks.uri` must answer within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A JWK Set larger than this is refused (sets are a few KB).
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// One verification key.
pub struct Key {
    pub kid: Option<String>,
    /// What this key verifies; a token signed otherwise is refused.
    pub algorithms: Vec<Algorithm>,
    pub decoding: DecodingKey,
}

/// A usable JWK Set.
pub struct KeySet {
    pub keys: Vec<Key>,
    /// The keys as read, normalised, so a refresh that brings the same set
    /// changes nothing (the verified-token cache stays).
    fingerprint: String,
    /// Bumped whenever a different set is installed; cached tokens
    /// verified under another generation are checked again.
    pub generation: u64,
}

impl KeySet {
    /// Parse a JWK Set; the warnings name the keys left out and why.
    pub fn parse(text: &[u8]) -> Result<(KeySet, Vec<String>), String> {
        let v: Value =
            serde_json::from_slice(text).map_err(|e| format!("not a JSON JWK Set: {e}"))?;
        let list = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("a JWK Set is an object with a `keys` list")?;
        let mut keys = Vec::new();
        let mut warnings = Vec::new();
        let mut seen = Vec::new();
        for (i, jwk) in list.iter().enumerate() {
            match key_of(jwk) {
                Ok(k) => {
                    seen.push(jwk.to_string());
                    keys.push(k);
                }
                Err(why) => {
                    let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or("");
                    warnings.push(format!("key {i} (kid {kid:?}) left out: {why}"));
                }
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "no usable key in the set ({})",
                warnings.join("; ")
            ));
        }
        seen.sort();
        Ok((
            KeySet {
                keys,
                fingerprint: seen.join(","),
                generation: 0,
            },
            warnings,
        ))
    }

    pub fn by_kid(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }
}

/// One JWK as a verification key, or why it cannot be one.
fn key_of(jwk: &Value) -> Result<Key, String> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    if field("use").is_some_and(|u| u != "sig") {
        return Err(format!(
            "`use` is {:?}, not \"sig\"",
            field("use").unwrap_or("")
        ));
    }
    let kty = field("kty").ok_or("no `kty`")?;
    let typed: Vec<Algorithm> = match (kty, field("crv")) {
        ("RSA", _) => vec![Algorithm::RS256, Algorithm::PS256],
        ("EC", Some("P-256")) => vec![Algorithm::ES256],
        ("OKP", Some("Ed25519")) => vec![Algorithm::EdDSA],
        ("oct", _) => return Err("a symmetric (`oct`) key cannot verify tokens here".into()),
        (kty, crv) => return Err(format!("kty {kty:?} crv {crv:?} is not supported")),
    };
    let algorithms = match field("alg") {
        None => typed,
        Some(alg) => {
            let a = ALGORITHMS
                .into_iter()
                .find(|a| alg_name(*a) == alg)
                .ok_or_else(|| format!("alg {alg:?} is not one of RS256, PS256, ES256, EdDSA"))?;
            if !typed.contains(&a) {
                return Err(format!("alg {alg:?} does not fit kty {kty:?}"));
            }
            vec![a]
        }
    };
    let b64 = |name: &str| -> Result<&str, String> {
        let v = field(name).ok_or_else(|| format!("no `{name}`"))?;
        URL_SAFE_NO_PAD
            .decode(v)
            .map_err(|_| format!("`{name}` is not base64url"))?;
        Ok(v)
    };
    let decoding = match kty {
        "RSA" => {
            let n = b64("n")?;
            let bits = URL_SAFE_NO_PAD
                .decode(n)
                .map_or(0, |b| b.iter().skip_while(|x| **x == 0).count() * 8);
            if bits < 2048 {
                return Err(format!("an RSA key of {bits} bits; 2048 at least"));
            }
            DecodingKey::from_rsa_components(n, b64("e")?).map_err(|e| e.to_string())?
        }
        "EC" => DecodingKey::from_ec_components(b64("x")?, b64("y")?).map_err(|e| e.to_string())?,
        _ => DecodingKey::from_ed_components(b64("x")?).map_err(|e| e.to_string())?,
    };
    Ok(Key {
        kid: field("kid").map(str::to_string),
        algorithms,
        decoding,
    })
}

/// The JOSE name of an algorithm.
pub fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RS256 => "RS256",
        Algorithm::PS256 => "PS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        _ => "?",
    }
}

/// Where a listener's keys come from, resolved.
pub enum Source {
    File(std::path::PathBuf),
    Uri {
        uri: http::Uri,
        cluster: Arc<Cluster>,
        refresh: Duration,
    },
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Uri { uri, cluster, .. } => format!("{uri} (cluster {})", cluster.name),
        }
    }
}

/// The current key set of a listener and what keeps it current.
pub struct Jwks {
    current: ArcSwapOption<KeySet>,
    /// Bumped when a fetch of a URI source ends, good or bad, so a request
    /// waiting on an unknown `kid` learns the outcome at once.
    fetched: watch::Sender<u64>,
    generation: AtomicU64,
    /// Asks the fetch task for a fetch now (an unknown `kid`).
    refetch: Notify,
    last_refetch: Mutex<Option<Instant>>,
    /// Whether unknown `kid`s may ask for a fetch (a URI source).
    fetches: bool,
    pub description: String,
}

impl Jwks {
    /// The (empty) key set of `listener`, to be kept current from `source` by [`start`].
    pub fn new(listener: &str, source: &Source) -> Jwks {
        Jwks {
            current: ArcSwapOption::empty(),
            fetched: watch::channel(0).0,
            generation: AtomicU64::new(0),
            refetch: Notify::new(),
            last_refetch: Mutex::new(None),
            fetches: matches!(source, Source::Uri { .. }),
            description: format!("listener {listener}, {}", source.describe()),
        }
    }

    /// Start from the set `from` has (a reload that rebuilt the source's
    /// cluster), until this one's own first fetch.
    pub fn seed(&self, from: &Jwks) {
        if let Some(set) = from.current() {
            self.generation.store(set.generation, Ordering::Release);
            self.current.store(Some(set));
        }
    }

    /// The key set, once one is in.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// Install a parsed set; the same keys as now change nothing.
    pub fn install(&self, mut set: KeySet) -> bool {
        if let Some(cur) = self.current.load().as_ref() {
            if cur.fingerprint == set.fingerprint {
                return false;
            }
        }
        set.generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.current.store(Some(Arc::new(set)));
        true
    }

    /// Parse `text` and install it, logging what was left out; `Err` keeps the last set.
    pub fn load(&self, text: &[u8]) -> Result<(), String> {
        let (set, warnings) = KeySet::parse(text)?;
        for w in &warnings {
            tracing::warn!(jwks = %self.description, "{w}");
        }
        let n = set.keys.len();
        if self.install(set) {
            tracing::info!(jwks = %self.description, keys = n, "JWK Set loaded");
        }
        Ok(())
    }

    /// A token named a key the set lacks: with a URI source, ask for a
    /// fetch (at most once per [`UNKNOWN_KID_REFETCH`]) and wait up to
    /// `wait` for it to end. True when a fetch ended (look at the set again).
    pub async fn refetch_for_unknown_kid(&self, wait: Duration) -> bool {
        if !self.fetches {
            return false;
        }
        {
            let Ok(mut last) = self.last_refetch.lock() else {
                return false;
            };
            let now = Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < UNKNOWN_KID_REFETCH) {
                return false;
            }
            *last = Some(now);
        }
        let mut fetched = self.fetched.subscribe();
        fetched.mark_unchanged();
        self.refetch.notify_one();
        matches!(
            tokio::time::timeout(wait, fetched.changed()).await,
            Ok(Ok(()))
        )
    }
}

/// Keep `jwks` current from `source` until `stop` turns true. A file's
/// first read happens before this returns (a readable file is in at once).
pub fn start(jwks: Arc<Jwks>, source: Source, stop: watch::Receiver<bool>) {
    match source {
        Source::File(path) => {
            let watch = FileWatch::new([path.clone()]);
            match std::fs::read(&path) {
                Ok(text) => {
                    if let Err(e) = jwks.load(&text) {
                        tracing::warn!(jwks = %jwks.description, error = %e, "JWK Set file unusable; waiting for a good one");
                    }
                }
                Err(e) => {
                    tracing::warn!(jwks = %jwks.description, error = %e, "JWK Set file unreadable; waiting for it")
                }
            }
            tokio::spawn(watch_file(jwks, path, watch, stop));
        }
        Source::Uri {
            uri,
            cluster,
            refresh,
        } => {
            tokio::spawn(fetch_loop(jwks, uri, cluster, refresh, stop));
        }
    }
}

async fn watch_file(
    jwks: Arc<Jwks>,
    path: std::path::PathBuf,
    mut watch: FileWatch,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = watch.changed() => {}
            _ = stop.changed() => return,
        }
        let loaded = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| jwks.load(&text));
        if let Err(e) = loaded {
            tracing::warn!(jwks = %jwks.description, error = %e, "JWK Set file changed but is unusable; the last good set stays");
        }
    }
}

async fn fetch_loop(
    jwks: Arc<Jwks>,
    uri: http::Uri,
    cluster: Arc<Cluster>,
    refresh: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // Retry soon after a failure, sooner while no set is in at all.
    let mut backoff = Duration::from_millis(250);
    loop {
        let outcome = fetch(&cluster, &uri).await.and_then(|t| jwks.load(&t));
        jwks.fetched.send_modify(|n| *n += 1);
        let wait = match outcome {
            Ok(()) => {
                backoff = Duration::from_millis(250);
                refresh
            }
            Err(e) => {
                tracing::warn!(jwks = %jwks.description, error = %e, "JWK Set fetch failed; the last good set stays");
                let w = backoff.min(refresh);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                w
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = jwks.refetch.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// GET `uri` from an endpoint of `cluster`, through its pool (as health
/// checks do): the cluster's connector makes the TLS of an https URI, its
/// `server_name` and `ca` checking the key server.
async fn fetch(cluster: &Cluster, uri: &http::Uri) -> Result<Bytes, String> {
    let ep = cluster
        .pick(&http::HeaderMap::new())
        .ok_or_else(|| format!("cluster {} has no endpoint", cluster.name))?;
    // The URI as written: `:scheme` says https when the cluster's connector
    // speaks TLS (validation pairs an https URI with a cluster that has `tls`).
    let req = Request::builder()
        .method(Method::GET)
        .uri(uri.clone())
        .header(header::USER_AGENT, "skiff-jwks")
        .header(header::ACCEPT, HeaderValue::from_static("application/json"))
        .body(RequestBody::fixed(Bytes::new()))
        .map_err(|e| format!("bad JWKS request: {e}"))?;
    let fut = async {
        let resp = ep
            .pool
            .send(cluster.protocol, req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("status {status} from {}", ep.addr));
        }
        Ok(body)
    };
    tokio::time::timeout(FETCH_TIMEOUT, fut)
        .await
        .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
}

/// The source of a validated `jwks` section; `cluster` finds a cluster by name.
pub fn source_of(
    c: &config::JwksSource,
    cluster: impl Fn(&str) -> Option<Arc<Cluster>>,
) -> Result<Source, String> {
    match (&c.file, &c.uri) {
        (Some(f), _) => Ok(Source::File(f.into())),
        (None, Some(uri)) => {
            let name = c.cluster.as_deref().unwrap_or("");
            Ok(Source::Uri {
                uri: uri.parse().map_err(|_| format!("bad JWKS uri {uri:?}"))?,
                cluster: cluster(name).ok_or_else(|| format!("unknown cluster {name:?}"))?,
                refresh: c.refresh.map_or(DEFAULT_REFRESH, |d| d.get()),
            })
        }
        (None, None) => Err("jwks names no file and no uri".into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
