//! Why a request gets the route it gets: the answer behind `skiff route`,
//! computed with the same lookup and checks the proxy runs, and its report.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::{Mismatch, RequestInfo, Router};
use crate::admission::authorization::Policy;
use crate::config::{self, Config};
use crate::identity::Identity;

/// How the virtual host was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VhostDecision {
    /// The full authority is one of its domains.
    Exact(String),
    /// The host without its port is one of its domains.
    HostWithoutPort(String),
    /// A `*.suffix` domain matched.
    Suffix(String),
    /// Its `*` domain caught the request.
    Any,
}

impl std::fmt::Display for VhostDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VhostDecision::Exact(d) => write!(f, "domain {d:?} equals the authority"),
            VhostDecision::HostWithoutPort(d) => {
                write!(f, "domain {d:?} equals the host without its port")
            }
            VhostDecision::Suffix(d) => write!(f, "wildcard domain {d:?} matches the host"),
            VhostDecision::Any => write!(f, "its domain \"*\" matches any authority"),
        }
    }
}

/// The decision for one request, step by step.
#[derive(Debug)]
pub struct Explanation {
    /// The chosen virtual host and why; `None` when no domain matched.
    pub virtual_host: Option<(String, VhostDecision)>,
    /// Each route tried in order, with why it did not match; the last one
    /// with `Ok` is the chosen route.
    pub routes: Vec<(String, Result<(), Mismatch>)>,
    /// Index in `routes` of the chosen route.
    pub matched: Option<usize>,
}

impl<T> Router<T> {
    pub fn explain(&self, req: &RequestInfo<'_>) -> Explanation {
        let Some((vh, how)) = self.virtual_host(req.authority) else {
            return Explanation {
                virtual_host: None,
                routes: Vec::new(),
                matched: None,
            };
        };
        let mut routes = Vec::new();
        let mut matched = None;
        for r in &vh.routes {
            let res = r.check(req);
            let ok = res.is_ok();
            routes.push((r.name.clone(), res));
            if ok {
                matched = Some(routes.len() - 1);
                break;
            }
        }
        Explanation {
            virtual_host: Some((vh.name.clone(), how)),
            routes,
            matched,
        }
    }
}

/// `skiff route`'s report: for each listener (or only `only_listener`),
/// the virtual host, each route tried and why it did not match, and what
/// the matching route applies (clusters, timeout, retry). `Err` when no
/// listener has that name or a listener's routes cannot be built.
pub fn report(
    config: &Config,
    req: &RequestInfo<'_>,
    peer: Option<&Identity>,
    only_listener: Option<&str>,
) -> Result<String, String> {
    let mut out = String::new();
    let clusters: HashMap<&str, &config::Cluster> = config
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    let mut shown = 0;
    for l in &config.listeners {
        if only_listener.is_some_and(|n| n != l.name) {
            continue;
        }
        shown += 1;
        let router = Router::build(l, |name| clusters.get(name).copied())
            .map_err(|e| format!("listener {}: {e}", l.name))?;
        authorization_report(&mut out, l, req, peer);
        listener_report(&mut out, l, &router, &clusters, req);
    }
    if shown == 0 {
        return Err(format!(
            "no listener named {:?}",
            only_listener.unwrap_or("")
        ));
    }
    Ok(out)
}

fn authorization_report(
    out: &mut String,
    l: &config::Listener,
    req: &RequestInfo<'_>,
    peer: Option<&Identity>,
) {
    let Some(rules) = &l.authorization else {
        return;
    };
    let who = peer.map_or("a plaintext peer".to_owned(), |p| p.to_string());
    let verdict = Policy::from_config(rules).decide(peer, req.path, req.method);
    let decided = match verdict.rule {
        Some(i) => {
            let rule = rules
                .get(i)
                .and_then(|r| serde_json::to_string(r).ok())
                .unwrap_or_default();
            format!("rule {i} {rule}")
        }
        None => "no rule matches, so the default".to_owned(),
    };
    let answer = if verdict.allowed {
        "allows"
    } else {
        "denies -> 403 / PERMISSION_DENIED (forbidden)"
    };
    let _ = writeln!(
        out,
        "\nlistener {}: authorization for {who}: {decided} {answer}",
        l.name
    );
}

fn listener_report(
    out: &mut String,
    l: &config::Listener,
    router: &Router<&config::Cluster>,
    clusters: &HashMap<&str, &config::Cluster>,
    req: &RequestInfo<'_>,
) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "\nlistener {} ({})", l.name, l.address);
    let e = router.explain(req);
    let Some((vh, how)) = &e.virtual_host else {
        let _ = writeln!(
            out,
            "  no virtual host: no domain matches {:?} -> 404 / UNIMPLEMENTED (no_route)",
            req.authority
        );
        for v in router.virtual_hosts() {
            let _ = writeln!(out, "    {}: {:?}", v.name, v.domains);
        }
        return;
    };
    let _ = writeln!(out, "  virtual host {vh}: {how}");
    for (i, (name, res)) in e.routes.iter().enumerate() {
        if let Err(why) = res {
            let _ = writeln!(out, "  route {name}: no match: {why}");
            continue;
        }
        let Some(vhost) = router.virtual_hosts().iter().find(|v| &v.name == vh) else {
            continue;
        };
        let r = &vhost.routes[i.min(vhost.routes.len().saturating_sub(1))];
        let _ = writeln!(out, "  route {name}: MATCH");
        let _ = writeln!(out, "    cluster:  {}", r.action.cluster_names().join(", "));
        for c in r.action.cluster_names() {
            if let Some(c) = clusters.get(c) {
                let eps: Vec<&str> = c.endpoints.iter().flatten().map(|e| e.address()).collect();
                let _ = writeln!(
                    out,
                    "      {}: protocol {}, lb {}, endpoints {:?}",
                    c.name,
                    yaml_name(&c.protocol),
                    yaml_name(&c.lb),
                    eps
                );
            }
        }
        let _ = match r.timeout {
            Some(t) => writeln!(
                out,
                "    timeout:  {t:?} (a client grpc-timeout may shorten it)"
            ),
            None => writeln!(
                out,
                "    timeout:  none (only a client grpc-timeout bounds the call)"
            ),
        };
        let retry = l
            .virtual_hosts
            .iter()
            .find(|v| &v.name == vh)
            .and_then(|v| v.routes.get(i))
            .and_then(|r| r.retry.as_ref());
        let _ = match retry {
            Some(p) => writeln!(out, "    retry:    {} attempts on {:?}", p.attempts, p.on),
            None => writeln!(out, "    retry:    none"),
        };
    }
    if e.matched.is_none() {
        let _ = writeln!(out, "  no route matched -> 404 / UNIMPLEMENTED (no_route)");
    }
}

/// How an enum value is spelled in the YAML.
fn yaml_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
