//! Admission: what decides whether a routed request may go on to its
//! cluster, in this order (step 3 of `proxy::handle`):
//!
//! 1. **authentication** ([`jwt`], keys from [`jwks`]): on a `jwt:`
//!    listener every request's forwarded-claim headers are removed first
//!    (public routes too); then, unless the route says `jwt: false`, the
//!    bearer token must verify: 401 `unauthenticated`, or 503 `no_jwks`
//!    while no key set is in;
//! 2. **authorization** ([`authorization`]): the listener's rules, by the
//!    peer's verified identity, path and method: 403 `forbidden`;
//! 3. **the rate limit** ([`rate_limit`]): the route's own, else the
//!    listener's: 429 `rate_limited` with `Retry-After` and the IETF
//!    `RateLimit-Policy` / `RateLimit` fields.
//!
//! A request refused at 1 or 2 takes no token from the bucket, and a
//! `claim:` key reads the token verified at 1. A passing request gets the
//! forwarded claims set (and the token dropped with `forward_token: false`).

pub mod authorization;
pub mod jwks;
pub mod jwt;
pub mod rate_limit;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request};
use prometheus::IntCounter;

use crate::config;
use crate::error::{ErrorKind, ProxyError};
use crate::listener::state::{ConnInfo, ListenerState};
use crate::metrics::Metrics;
use jwks::Jwks;
use jwt::{AuthError, JwtAuth, Reason, Verified};
use rate_limit::{KeySource, RateLimiter, Verdict};

/// A rate limit in force: its buckets and what a request's key is.
pub struct Limit {
    pub limiter: Arc<RateLimiter>,
    key: KeySource,
}

/// What a route changes: `jwt: false`, its own `rate_limit`.
#[derive(Default)]
struct RouteRule {
    public: bool,
    limit: Option<Limit>,
}

/// The admission rules of one listener.
pub struct Admission {
    jwt: Option<JwtAuth>,
    limit: Option<Limit>,
    /// By route id (`router::Route::id`).
    routes: Vec<RouteRule>,
    ratelimited: IntCounter,
}

/// Where the rate limiters of a listener come from: `scope` names the
/// section (`""` for the listener's, else its route), so a reload can hand
/// back the buckets of unchanged settings.
pub type Limiters<'a> =
    dyn FnMut(&str, &config::RateLimit) -> Result<Arc<RateLimiter>, String> + 'a;

impl Admission {
    /// The rules of listener `l`, or `None` when it has none (no `jwt`,
    /// no `rate_limit` anywhere). `jwks` is its key set when it has `jwt`.
    pub fn build(
        l: &config::Listener,
        jwks: Option<Arc<Jwks>>,
        limiters: &mut Limiters<'_>,
        metrics: &Metrics,
    ) -> Result<Option<Admission>, String> {
        let route_limits: Vec<(String, &config::Route)> = l
            .virtual_hosts
            .iter()
            .flat_map(|vh| {
                vh.routes
                    .iter()
                    .enumerate()
                    .map(move |(i, r)| (route_scope(&vh.name, i, r), r))
            })
            .collect();
        let any_limit =
            l.rate_limit.is_some() || route_limits.iter().any(|(_, r)| r.rate_limit.is_some());
        if l.jwt.is_none() && !any_limit {
            return Ok(None);
        }
        // The claims `claim:` keys read, kept with the verified token.
        let claims: Vec<String> = l
            .rate_limit
            .iter()
            .chain(
                route_limits
                    .iter()
                    .filter_map(|(_, r)| r.rate_limit.as_ref()),
            )
            .filter_map(|rl| match config::RateLimitKey::parse(&rl.key) {
                Ok(config::RateLimitKey::Claim(c)) => Some(c),
                _ => None,
            })
            .collect();
        let jwt = match (&l.jwt, jwks) {
            (Some(c), Some(jwks)) => {
                let denied = Reason::ALL
                    .iter()
                    .map(|r| (*r, metrics.authn_denied(&l.name, r.as_str())))
                    .collect();
                Some(JwtAuth::new(c, jwks, &claims, denied)?)
            }
            (Some(_), None) => return Err("a jwt listener needs its key set".into()),
            _ => None,
        };
        let mut limit = |scope: &str, c: &config::RateLimit| {
            let limiter = limiters(scope, c)?;
            let key = limiter.key_source(|claim| jwt.as_ref()?.claim_index(claim));
            Ok::<_, String>(Limit { limiter, key })
        };
        let listener_limit = l.rate_limit.as_ref().map(|c| limit("", c)).transpose()?;
        let routes = route_limits
            .iter()
            .map(|(scope, r)| {
                Ok(RouteRule {
                    public: r.jwt == Some(false),
                    limit: r.rate_limit.as_ref().map(|c| limit(scope, c)).transpose()?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Some(Admission {
            jwt,
            limit: listener_limit,
            routes,
            ratelimited: metrics.ratelimited(&l.name),
        }))
    }

    /// The key set this listener verifies with, if it has `jwt`.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwt.as_ref().map(|j| &j.jwks)
    }

    /// Admit a request on route `route` (its id; `None`: not routed by a
    /// route, e.g. passthrough) from `client`: authentication, then the
    /// rate limit, then the forwarded claims (authorization, which sits
    /// between, is [`check`]'s).
    pub async fn admit(
        &self,
        route: Option<usize>,
        client: IpAddr,
        headers: &mut HeaderMap,
    ) -> Result<(), ProxyError> {
        let verified = self.authenticate(route, headers).await?;
        self.rate_limit(route, client, headers, verified.as_deref())
            .await?;
        self.forward(verified.as_deref(), headers);
        Ok(())
    }

    /// Remove forged claim headers, then (unless the route is public)
    /// verify the bearer token.
    pub async fn authenticate(
        &self,
        route: Option<usize>,
        headers: &mut HeaderMap,
    ) -> Result<Option<Arc<Verified>>, ProxyError> {
        let Some(auth) = &self.jwt else {
            return Ok(None);
        };
        auth.strip_forged(headers);
        if self.rule(route).is_some_and(|r| r.public) {
            return Ok(None);
        }
        let verified = auth.authenticate(headers).await;
        verified.map(Some).map_err(|e| refusal(auth, e))
    }

    /// Take a token from the request's bucket: the route's, else the
    /// listener's. With `shared` it is kept in Redis, and this waits at most
    /// the section's `shared.timeout`.
    pub async fn rate_limit(
        &self,
        route: Option<usize>,
        client: IpAddr,
        headers: &HeaderMap,
        verified: Option<&Verified>,
    ) -> Result<(), ProxyError> {
        let rule = self.rule(route);
        let Some(l) = rule.and_then(|r| r.limit.as_ref()).or(self.limit.as_ref()) else {
            return Ok(());
        };
        let (what, wait) = match l.limiter.decide(&l.key, client, headers, verified).await {
            Verdict::Pass => return Ok(()),
            Verdict::Limited(wait) => {
                let what = format!(
                    "over the rate limit of {} requests per second (burst {})",
                    l.limiter.config.requests_per_second,
                    l.limiter.config.burst()
                );
                (what, wait)
            }
            // Ask again in a second: the store is probed more often than that.
            Verdict::Unavailable => (
                "the shared rate limit's Redis does not answer, and its fallback is deny".into(),
                Duration::from_secs(1),
            ),
        };
        self.ratelimited.inc();
        Err(ProxyError::new(ErrorKind::RateLimited, what)
            .with_retry_after(wait)
            .with_rate_limit(l.limiter.fields()))
    }

    /// Set the verified claims (and drop the token with `forward_token: false`).
    pub fn forward(&self, verified: Option<&Verified>, headers: &mut HeaderMap) {
        if let (Some(auth), Some(v)) = (&self.jwt, verified) {
            auth.forward(v, headers);
        }
    }

    fn rule(&self, route: Option<usize>) -> Option<&RouteRule> {
        route.and_then(|i| self.routes.get(i))
    }
}

/// Step 3 of the request path: may `req`, routed to route `route`, go on?
/// Authentication, authorization, rate limit, in that order, so a denied
/// request uses no rate budget; then the verified claims are forwarded.
pub async fn check<B>(
    state: &ListenerState,
    conn: &ConnInfo,
    route: Option<usize>,
    req: &mut Request<B>,
) -> Result<(), ProxyError> {
    let admission = state.admission.as_deref();
    let verified = match admission {
        Some(a) => a.authenticate(route, req.headers_mut()).await?,
        None => None,
    };
    authorize(state, conn, req)?;
    if let Some(a) = admission {
        a.rate_limit(route, conn.client.ip(), req.headers(), verified.as_deref())
            .await?;
        a.forward(verified.as_deref(), req.headers_mut());
    }
    Ok(())
}

/// The listener's authorization rules, when it has any.
fn authorize<B>(
    state: &ListenerState,
    conn: &ConnInfo,
    req: &Request<B>,
) -> Result<(), ProxyError> {
    if let Some(policy) = &state.authorization {
        let verdict = policy.decide(conn.peer.as_ref(), req.uri().path(), req.method());
        if !verdict.allowed {
            state.metrics.authz_denied.inc();
            let who = conn
                .peer
                .as_ref()
                .map_or("a peer without a verified identity".to_owned(), |p| {
                    p.to_string()
                });
            let why = match verdict.rule {
                Some(i) => format!("authorization rule {i} denies"),
                None => "no authorization rule allows".to_owned(),
            };
            let what = format!("{why} {} {} from {who}", req.method(), req.uri().path());
            return Err(ProxyError::new(ErrorKind::Forbidden, what));
        }
    }
    Ok(())
}

/// The scope of a route's rate limit: its virtual host and its name or place.
fn route_scope(vhost: &str, index: usize, r: &config::Route) -> String {
    match &r.name {
        Some(name) => format!("{vhost}/{name}"),
        None => format!("{vhost}/#{index}"),
    }
}

/// The answer to a request that did not authenticate, counted by reason.
fn refusal(auth: &JwtAuth, e: AuthError) -> ProxyError {
    match e {
        AuthError::NoKeys => ProxyError::new(
            ErrorKind::NoJwks,
            format!("no JWK Set is loaded yet ({})", auth.jwks.description),
        ),
        AuthError::Denied { reason, detail } => {
            auth.count(reason);
            let what = format!("{}: {detail}", reason.as_str());
            // RFC 6750 §3.1: a request without credentials gets the bare
            // challenge, one with a bad token `invalid_token` and why.
            let challenge = match reason {
                Reason::Missing => "Bearer".to_string(),
                _ => format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    quotable(&what)
                ),
            };
            ProxyError::new(ErrorKind::Unauthenticated, what).with_challenge(challenge)
        }
    }
}

/// `s` as the inside of an RFC 6750 quoted string: visible ASCII but `"` and `\`.
fn quotable(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            c if c == ' ' || c.is_ascii_graphic() => c,
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

/// Keys and tokens for the tests, shared with the integration tests.
#[cfg(test)]
#[path = "../../tests/support/jwt.rs"]
pub(crate) mod test_keys;
