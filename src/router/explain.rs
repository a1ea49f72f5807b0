//! Why a request gets the route it gets: the answer behind `skiff route`,
//! computed with the same lookup and checks the proxy runs.

use super::{Mismatch, RequestInfo, Router};

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
