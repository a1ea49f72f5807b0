//! Rules for what admits a request: a listener's `jwt` (issuer, audiences,
//! where the keys come from, forwarded claims) and the `rate_limit` of a
//! listener or a route (rate, burst, key).

use std::collections::HashMap;

use super::Rules;
use crate::config::model::{
    ClusterTlsMode, JwksSource, Jwt, Listener, RateLimit, RateLimitKey, Route,
};
use crate::config::parse::Draft;

/// Most clock skew a `leeway` may allow: more would stretch every token's life.
const MAX_LEEWAY_SECS: u64 = 300;
/// Highest `requests_per_second` (one token per microsecond).
const MAX_RATE: f64 = 1_000_000.0;
/// Most `X-Forwarded-For` hops that may be trusted.
const MAX_XFF_HOPS: u32 = 16;
/// Longest `shared.timeout`: a request waits up to it whenever Redis is slow.
const MAX_SHARED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Headers a forwarded claim may not be written into: the proxy or HTTP owns them.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "host",
    "content-length",
    "content-type",
    "te",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "x-request-id",
    "x-forwarded-for",
];

impl Rules<'_> {
    /// A listener's `jwt` and `rate_limit`.
    pub(super) fn listener_admission(&mut self, d: &Draft, l: &Listener, base: &str) {
        if let Some(jwt) = &l.jwt {
            self.jwt(d, jwt, &format!("{base}.jwt"));
        }
        if let Some(rl) = &l.rate_limit {
            self.rate_limit(rl, &format!("{base}.rate_limit"), l.jwt.is_some(), false);
        }
    }

    /// A route's `jwt` and `rate_limit`, against its listener's.
    pub(super) fn route_admission(&mut self, l: &Listener, route: &Route, base: &str) {
        if route.jwt == Some(true) && l.jwt.is_none() {
            let message = "`jwt: true` asks for the listener's token check, but the listener has no `jwt`; only `jwt: false` (a public path) can be written on a route";
            self.value(&format!("{base}.jwt"), message.into());
        }
        if let Some(rl) = &route.rate_limit {
            let public = route.jwt == Some(false);
            self.rate_limit(rl, &format!("{base}.rate_limit"), l.jwt.is_some(), public);
        }
    }

    fn jwt(&mut self, d: &Draft, jwt: &Jwt, base: &str) {
        if jwt.issuer.trim().is_empty() {
            let message = "`issuer` cannot be empty: it is the `iss` every token must carry";
            self.value(&format!("{base}.issuer"), message.into());
        }
        let audiences = format!("{base}.audiences");
        if jwt.audiences.is_empty() {
            // A token the issuer made for another service must not pass here.
            let message = "`audiences` needs at least one audience: a token's `aud` must name this service, or a token the issuer made for another service would pass";
            let at = if self.at.exists(&audiences) {
                audiences.clone()
            } else {
                base.to_string()
            };
            self.value(&at, message.into());
        }
        for (i, a) in jwt.audiences.iter().enumerate() {
            if a.trim().is_empty() {
                self.value(
                    &format!("{audiences}[{i}]"),
                    "an audience cannot be empty".into(),
                );
            }
        }
        self.jwks(d, jwt, &format!("{base}.jwks"));
        if jwt.leeway.get() > std::time::Duration::from_secs(MAX_LEEWAY_SECS) {
            let message = format!("`leeway` may be at most {MAX_LEEWAY_SECS}s: it allows for clock skew, and more would keep expired tokens valid");
            self.value(&format!("{base}.leeway"), message);
        }
        let mut headers: HashMap<String, &str> = HashMap::new();
        for (claim, header) in &jwt.forward_claims {
            let path = format!("{base}.forward_claims.{claim}");
            if claim.trim().is_empty() {
                self.value(&path, "a forwarded claim needs a name".into());
            }
            let Ok(name) = http::HeaderName::from_bytes(header.as_bytes()) else {
                let message = format!(
                    "`{header}` is not a valid header name: names are letters, digits and `-`, `_`, `.` and the like"
                );
                self.value(&path, message);
                continue;
            };
            let name = name.as_str().to_string();
            if RESERVED_HEADERS.contains(&name.as_str()) || name.starts_with("x-skiff-") {
                let message = format!("claims cannot be forwarded in `{name}`: HTTP or the proxy owns that header; pick another name, like `x-user-id`");
                self.value(&path, message);
            } else if let Some(first) = headers.insert(name.clone(), claim) {
                let message = format!("claims `{first}` and `{claim}` are both forwarded in `{name}`; a header carries one claim");
                self.value(&path, message);
            }
        }
    }

    fn jwks(&mut self, d: &Draft, jwt: &Jwt, base: &str) {
        let j = &jwt.jwks;
        match (&j.file, &j.uri) {
            (Some(_), Some(_)) => {
                let message = "`jwks` takes its keys from `file` or from `uri`, not both";
                self.value(base, message.into());
            }
            (None, None) => {
                let message = "`jwks` needs `file: <path of a JWK Set>` or `uri: http://...` with the `cluster` that serves it";
                self.value(base, message.into());
            }
            (Some(file), None) => {
                if file.trim().is_empty() {
                    let message = "`file` cannot be empty: write the path of a JWK Set file";
                    self.value(&format!("{base}.file"), message.into());
                }
                for (key, set) in [
                    ("cluster", j.cluster.is_some()),
                    ("refresh", j.refresh.is_some()),
                ] {
                    if set {
                        let message = format!(
                            "`{key}` goes with `uri`; a `file` is re-read whenever it changes"
                        );
                        self.value(&format!("{base}.{key}"), message);
                    }
                }
            }
            (None, Some(uri)) => {
                match check_jwks_uri(uri) {
                    Err(message) => self.value(&format!("{base}.uri"), message),
                    Ok(https) => self.jwks_scheme(d, j, https, base),
                }
                match &j.cluster {
                    Some(name) => self.cluster_ref(d, &format!("{base}.cluster"), name),
                    None => {
                        let message = "`uri` needs the `cluster` that serves it (its endpoints, timeouts and metrics are used for the fetch)";
                        self.value(base, message.into());
                    }
                }
                if let Some(r) = j.refresh {
                    self.positive(&format!("{base}.refresh"), r, "`refresh`");
                }
            }
        }
    }

    /// An `https://` JWKS URI is fetched through its cluster's TLS, so the
    /// cluster needs `tls` (`simple` for a server outside the mesh; `mesh`
    /// is TLS too); an `http://` one through a `simple` cluster would name
    /// the wrong scheme.
    fn jwks_scheme(&mut self, d: &Draft, j: &JwksSource, https: bool, base: &str) {
        let Some(name) = &j.cluster else { return };
        let Some((i, c)) = d.clusters.iter().find(|(_, c)| c.name == *name) else {
            return;
        };
        let mode = c.tls.as_ref().map(|t| t.mode);
        let uri = j.uri.as_deref().unwrap_or("");
        let cluster_at = format!("clusters[{i}]");
        let message = match (https, mode) {
            (true, None | Some(ClusterTlsMode::Disabled)) => format!(
                "`{uri}` is https, but cluster `{name}`{} has no `tls`: give it `tls: {{ mode: simple, server_name: <the name in the server's certificate> }}` (and `ca` for a private CA), or write `http://`",
                self.line_of(&cluster_at)
            ),
            (false, Some(ClusterTlsMode::Simple)) => format!(
                "`{uri}` is http, but cluster `{name}`{} speaks TLS (`tls.mode: simple`): write `https://`",
                self.line_of(&cluster_at)
            ),
            _ => return,
        };
        self.value(&format!("{base}.uri"), message);
    }

    /// `has_jwt`: the listener verifies tokens; `public`: the route says `jwt: false`.
    fn rate_limit(&mut self, rl: &RateLimit, base: &str, has_jwt: bool, public: bool) {
        let rate = rl.requests_per_second;
        if !rate.is_finite() || rate <= 0.0 {
            let message = "`requests_per_second` must be greater than 0 (fractions are allowed: 0.5 is one request every 2s)";
            self.value(&format!("{base}.requests_per_second"), message.into());
        } else if rate > MAX_RATE {
            let message = format!("`requests_per_second` may be at most {MAX_RATE}");
            self.value(&format!("{base}.requests_per_second"), message);
        }
        if rl.burst == Some(0) {
            let message = "`burst` must be at least 1: a bucket of 0 refuses every request";
            self.value(&format!("{base}.burst"), message.into());
        }
        if rl.max_keys == 0 {
            let message = "`max_keys` must be at least 1";
            self.value(&format!("{base}.max_keys"), message.into());
        }
        let key_path = format!("{base}.key");
        let key = match RateLimitKey::parse(&rl.key) {
            Ok(k) => Some(k),
            Err(message) => {
                self.value(&key_path, message);
                None
            }
        };
        if let Some(RateLimitKey::Claim(claim)) = &key {
            if !has_jwt {
                let message = format!(
                    "`claim:{claim}` needs a verified token, but the listener has no `jwt`"
                );
                self.value(&key_path, message);
            } else if public {
                let message = format!(
                    "`claim:{claim}` needs a verified token, but this route says `jwt: false`"
                );
                self.value(&key_path, message);
            }
        }
        if let Some(hops) = rl.xff_trusted_hops {
            let path = format!("{base}.xff_trusted_hops");
            if key.as_ref().is_some_and(|k| *k != RateLimitKey::ClientIp) {
                let message = "`xff_trusted_hops` goes with `key: client_ip`";
                self.value(&path, message.into());
            } else if hops == 0 {
                let message = "`xff_trusted_hops` must be at least 1; leave it out to use the TCP peer's address";
                self.value(&path, message.into());
            } else if hops > MAX_XFF_HOPS {
                let message = format!("`xff_trusted_hops` may be at most {MAX_XFF_HOPS}");
                self.value(&path, message);
            }
        }
        if let Some(shared) = &rl.shared {
            if let Err(message) = check_redis_url(&shared.redis) {
                self.value(&format!("{base}.shared.redis"), message);
            }
            let path = format!("{base}.shared.timeout");
            self.positive(&path, shared.timeout, "`timeout`");
            if shared.timeout.get() > MAX_SHARED_TIMEOUT {
                let message =
                    "`timeout` may be at most 1s: a request waits up to it whenever Redis is slow";
                let message = message.to_string();
                self.value(&path, message);
            }
        }
    }
}

/// A Redis URL the client can use: `redis://[user:password@]host[:port][/db]`.
fn check_redis_url(url: &str) -> Result<(), String> {
    let url = url.trim();
    if url.starts_with("rediss://") {
        return Err(format!("`{url}` asks for TLS to Redis, which is not built; write `redis://host:port` (a Redis on the pod network, or a TLS tunnel on loopback)"));
    }
    let Some(rest) = url.strip_prefix("redis://") else {
        return Err(format!(
            "`{url}` is not a Redis URL; write `redis://host:port`"
        ));
    };
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if host.is_empty() || host.starts_with(['/', ':']) {
        return Err(format!("`{url}` names no host; write `redis://host:port`"));
    }
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| format!("`{url}` is not a Redis URL: {e}"))
}

/// A JWKS URI: `http://host[:port]/path` or `https://...`; whether it is https.
fn check_jwks_uri(uri: &str) -> Result<bool, String> {
    let parsed: http::Uri = uri
        .parse()
        .map_err(|_| format!("`{uri}` is not a URI; write `https://host/path`"))?;
    let https = match parsed.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("`{uri}` must start with `https://` or `http://`")),
    };
    if parsed.host().is_none_or(str::is_empty) {
        return Err(format!("`{uri}` names no host"));
    }
    Ok(https)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_uris() {
        assert_eq!(
            check_jwks_uri("http://auth/.well-known/jwks.json"),
            Ok(false)
        );
        assert_eq!(check_jwks_uri("http://auth:8080/keys"), Ok(false));
        assert_eq!(check_jwks_uri("https://auth/keys"), Ok(true));
        assert!(check_jwks_uri("ftp://auth/keys").is_err());
        assert!(check_jwks_uri("/keys").is_err());
        assert!(check_jwks_uri("not a uri").is_err());
    }

    #[test]
    fn rate_limit_keys() {
        assert_eq!(RateLimitKey::parse("client_ip"), Ok(RateLimitKey::ClientIp));
        assert_eq!(
            RateLimitKey::parse("header:X-User"),
            Ok(RateLimitKey::Header("x-user".into()))
        );
        assert_eq!(
            RateLimitKey::parse("claim:sub"),
            Ok(RateLimitKey::Claim("sub".into()))
        );
        assert!(RateLimitKey::parse("claim:").is_err());
        assert!(RateLimitKey::parse("header:a b").is_err());
        assert!(RateLimitKey::parse("ip").is_err());
    }
}
