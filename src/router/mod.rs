//! Routing: pick the virtual host by authority, then the first route whose
//! match holds.
//!
//! Virtual hosts are found through hash maps (exact authority, host without
//! port, then each `*.suffix` of the host from the longest), so the cost of a
//! lookup depends on the number of labels in the host name, not on the number
//! of virtual hosts. Inside a virtual host the first route whose match holds
//! wins, as in Envoy; an index by path (`index.rs`) finds it without trying
//! every route, and `check` explains decisions for `skiff route`.

pub mod explain;
mod index;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, Method};

use crate::config;
use crate::resilience::policy::RetryPolicy;
pub use explain::{Explanation, VhostDecision};
use index::RouteIndex;

/// What a request is routed by.
#[derive(Clone, Copy)]
pub struct RequestInfo<'a> {
    pub authority: &'a str,
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

/// The virtual hosts of one listener.
pub struct Router<T> {
    vhosts: Vec<VirtualHost<T>>,
    exact: HashMap<String, usize>,
    suffix: HashMap<String, usize>,
    any: Option<usize>,
}

pub struct VirtualHost<T> {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route<T>>,
    index: RouteIndex,
}

pub struct Route<T> {
    /// The route's place among all routes of its listener, in config order
    /// (what per-route state elsewhere, such as admission, is kept by).
    pub id: usize,
    /// The route's name, or `#<index>` when it has none.
    pub name: String,
    path: PathMatch,
    headers: Vec<HeaderMatcher>,
    method: Option<Method>,
    pub action: RouteAction<T>,
    pub timeout: Option<Duration>,
    pub retry: Option<Arc<RetryPolicy>>,
}

enum PathMatch {
    Any,
    Prefix(String),
    Exact(String),
}

struct HeaderMatcher {
    name: HeaderName,
    kind: HeaderMatchKind,
}

enum HeaderMatchKind {
    Exact(String),
    Present(bool),
}

/// Where a matched route sends the request.
pub enum RouteAction<T> {
    Cluster {
        name: String,
        target: T,
    },
    Weighted {
        targets: Vec<(String, T, u32)>,
        total: u32,
    },
}

impl<T> RouteAction<T> {
    /// The target for this request: the cluster, or one drawn by weight.
    pub fn pick(&self) -> Option<(&str, &T)> {
        match self {
            RouteAction::Cluster { name, target } => Some((name, target)),
            RouteAction::Weighted { targets, total } => {
                let mut n = fastrand::u32(..(*total).max(1));
                for (name, t, w) in targets {
                    if n < *w {
                        return Some((name, t));
                    }
                    n -= w;
                }
                targets.last().map(|(name, t, _)| (name.as_str(), t))
            }
        }
    }

    /// The cluster names this action may send to.
    pub fn cluster_names(&self) -> Vec<&str> {
        match self {
            RouteAction::Cluster { name, .. } => vec![name],
            RouteAction::Weighted { targets, .. } => {
                targets.iter().map(|(n, _, _)| n.as_str()).collect()
            }
        }
    }
}

/// Why a route did not match a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    Prefix(String),
    Path(String),
    Method(Method),
    HeaderAbsent(String),
    HeaderPresent(String),
    HeaderValue { name: String, expected: String },
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Prefix(p) => write!(f, "path does not start with {p:?}"),
            Mismatch::Path(p) => write!(f, "path is not {p:?}"),
            Mismatch::Method(m) => write!(f, "method is not {m}"),
            Mismatch::HeaderAbsent(n) => write!(f, "header {n} is absent"),
            Mismatch::HeaderPresent(n) => write!(f, "header {n} is present"),
            Mismatch::HeaderValue { name, expected } => {
                write!(f, "header {name} is not {expected:?}")
            }
        }
    }
}

impl<T> Route<T> {
    /// Whether this route's match holds for `req`, and if not, why not.
    pub fn check(&self, req: &RequestInfo<'_>) -> Result<(), Mismatch> {
        match &self.path {
            PathMatch::Any => {}
            PathMatch::Prefix(p) if req.path.starts_with(p.as_str()) => {}
            PathMatch::Prefix(p) => return Err(Mismatch::Prefix(p.clone())),
            PathMatch::Exact(p) if req.path == p => {}
            PathMatch::Exact(p) => return Err(Mismatch::Path(p.clone())),
        }
        self.check_rest(req)
    }

    /// The conditions besides the path: method and headers.
    fn check_rest(&self, req: &RequestInfo<'_>) -> Result<(), Mismatch> {
        if let Some(m) = &self.method {
            if m != req.method {
                return Err(Mismatch::Method(m.clone()));
            }
        }
        for h in &self.headers {
            let value = req.headers.get(&h.name);
            match (&h.kind, value) {
                (HeaderMatchKind::Present(true), None) => {
                    return Err(Mismatch::HeaderAbsent(h.name.to_string()))
                }
                (HeaderMatchKind::Present(false), Some(_)) => {
                    return Err(Mismatch::HeaderPresent(h.name.to_string()))
                }
                (HeaderMatchKind::Exact(want), Some(v)) if v.as_bytes() == want.as_bytes() => {}
                (HeaderMatchKind::Exact(want), _) => {
                    return Err(Mismatch::HeaderValue {
                        name: h.name.to_string(),
                        expected: want.clone(),
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A domain pattern of a virtual host, as stored in the lookup maps.
enum Domain {
    Any,
    Suffix(String),
    Exact(String),
}

fn parse_domain(d: &str) -> Domain {
    let d = d.to_ascii_lowercase();
    if d == "*" {
        Domain::Any
    } else if let Some(rest) = d.strip_prefix('*') {
        Domain::Suffix(rest.to_owned()) // keeps the leading '.'
    } else {
        Domain::Exact(d)
    }
}

/// The host part of an authority: `[::1]:80` → `[::1]`, `a.b:80` → `a.b`.
pub fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    match authority.rfind(':') {
        Some(i) if authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &authority[..i],
        _ => authority,
    }
}

impl<T> Router<T> {
    /// Build the router of a validated listener; `resolve` turns a cluster name into a target.
    pub fn build(
        listener: &config::Listener,
        mut resolve: impl FnMut(&str) -> Option<T>,
    ) -> Result<Self, String> {
        let mut router = Router {
            vhosts: Vec::new(),
            exact: HashMap::new(),
            suffix: HashMap::new(),
            any: None,
        };
        let mut id = 0;
        for (vi, vh) in listener.virtual_hosts.iter().enumerate() {
            let mut routes = Vec::new();
            for (ri, r) in vh.routes.iter().enumerate() {
                let mut route = build_route(ri, r, &mut resolve)?;
                route.id = id;
                id += 1;
                routes.push(route);
            }
            for d in &vh.domains {
                match parse_domain(d) {
                    Domain::Any => {
                        router.any.get_or_insert(vi);
                    }
                    Domain::Suffix(s) => {
                        router.suffix.entry(s).or_insert(vi);
                    }
                    Domain::Exact(e) => {
                        router.exact.entry(e).or_insert(vi);
                    }
                }
            }
            router.vhosts.push(VirtualHost {
                name: vh.name.clone(),
                domains: vh.domains.clone(),
                index: RouteIndex::build(routes.iter().map(|r| &r.path)),
                routes,
            });
        }
        Ok(router)
    }

    /// The virtual host for `authority`, and how it matched.
    pub fn virtual_host(&self, authority: &str) -> Option<(&VirtualHost<T>, VhostDecision)> {
        let lower;
        let authority = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = authority.to_ascii_lowercase();
            lower.as_str()
        } else {
            authority
        };
        let found = |i: &usize, how| self.vhosts.get(*i).map(|v| (v, how));
        if let Some(i) = self.exact.get(authority) {
            return found(i, VhostDecision::Exact(authority.to_owned()));
        }
        let host = host_of(authority);
        if host.len() != authority.len() {
            if let Some(i) = self.exact.get(host) {
                return found(i, VhostDecision::HostWithoutPort(host.to_owned()));
            }
        }
        if !self.suffix.is_empty() {
            // Longest suffix first: for a.b.c try ".b.c", then ".c".
            for (pos, _) in host.match_indices('.') {
                if let Some(i) = self.suffix.get(&host[pos..]) {
                    return found(i, VhostDecision::Suffix(format!("*{}", &host[pos..])));
                }
            }
        }
        self.any.as_ref().and_then(|i| found(i, VhostDecision::Any))
    }

    /// The route for `req`: its virtual host's first route whose match holds.
    pub fn route(&self, req: &RequestInfo<'_>) -> Option<&Route<T>> {
        let (vh, _) = self.virtual_host(req.authority)?;
        let rest = |i: usize| vh.routes.get(i).is_some_and(|r| r.check_rest(req).is_ok());
        vh.index
            .first(req.path, rest)
            .and_then(|i| vh.routes.get(i))
    }

    pub fn virtual_hosts(&self) -> &[VirtualHost<T>] {
        &self.vhosts
    }
}

fn build_route<T>(
    index: usize,
    r: &config::Route,
    resolve: &mut impl FnMut(&str) -> Option<T>,
) -> Result<Route<T>, String> {
    let m = &r.match_;
    let path = match (&m.prefix, &m.path) {
        (_, Some(p)) => PathMatch::Exact(p.clone()),
        (Some(p), None) if p != "/" => PathMatch::Prefix(p.clone()),
        _ => PathMatch::Any,
    };
    let method = m
        .method
        .as_deref()
        .map(|s| Method::from_bytes(s.as_bytes()).map_err(|_| format!("bad method {s:?}")))
        .transpose()?;
    let headers = m
        .headers
        .iter()
        .map(|h| {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("bad header name {:?}", h.name))?;
            let kind = match (&h.exact, h.present) {
                (Some(v), _) => HeaderMatchKind::Exact(v.clone()),
                (None, p) => HeaderMatchKind::Present(p.unwrap_or(true)),
            };
            Ok(HeaderMatcher { name, kind })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut target = |name: &str| resolve(name).ok_or_else(|| format!("unknown cluster {name:?}"));
    let action = match (&r.cluster, &r.weighted_clusters) {
        (Some(c), _) => RouteAction::Cluster {
            name: c.clone(),
            target: target(c)?,
        },
        (None, Some(ws)) => {
            let targets = ws
                .iter()
                .map(|w| Ok((w.cluster.clone(), target(&w.cluster)?, w.weight)))
                .collect::<Result<Vec<_>, String>>()?;
            let total = targets.iter().map(|(_, _, w)| *w).sum();
            RouteAction::Weighted { targets, total }
        }
        (None, None) => return Err("route names no cluster".into()),
    };
    Ok(Route {
        id: 0,
        name: r.name.clone().unwrap_or_else(|| format!("#{index}")),
        path,
        headers,
        method,
        action,
        timeout: r.timeout.map(|d| d.get()),
        retry: r
            .retry
            .as_ref()
            .map(|p| RetryPolicy::from_config(p).map(Arc::new))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests;
