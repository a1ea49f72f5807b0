//! Rules for routes: what they send to (a cluster that exists, weights
//! that add up), timeouts, and what they match (path, headers, method).

use super::{Rules, NOT_YET_ROUTE};
use crate::config::model::{Listener, Route};
use crate::config::parse::Draft;
use crate::config::wording::{closest, ticked};

impl Rules<'_> {
    pub(super) fn route(&mut self, d: &Draft, l: &Listener, route: &Route, base: &str) {
        self.not_yet(NOT_YET_ROUTE, route, base);
        self.route_admission(l, route, base);
        self.retry(route, base);
        match (&route.cluster, &route.weighted_clusters) {
            (Some(_), Some(_)) => {
                let message = "a route names `cluster` or `weighted_clusters`, not both";
                self.value(base, message.into());
            }
            (None, None) => {
                let message =
                    "a route needs `cluster: <name>` or `weighted_clusters: [{cluster, weight}]`";
                self.value(base, message.into());
            }
            _ => {}
        }
        if let Some(name) = &route.cluster {
            self.cluster_ref(d, &format!("{base}.cluster"), name);
        }
        if let Some(weighted) = &route.weighted_clusters {
            let total: u64 = weighted.iter().map(|w| u64::from(w.weight)).sum();
            if total > u64::from(u32::MAX) {
                let message = format!("the weights add up to {total}, more than {}", u32::MAX);
                self.value(&format!("{base}.weighted_clusters"), message);
            }
            if weighted.is_empty() {
                let message = "`weighted_clusters` needs at least one `{cluster, weight}`";
                self.value(&format!("{base}.weighted_clusters"), message.into());
            }
            for (k, w) in weighted.iter().enumerate() {
                let wbase = format!("{base}.weighted_clusters[{k}]");
                self.cluster_ref(d, &format!("{wbase}.cluster"), &w.cluster);
                if w.weight == 0 {
                    let message =
                        "`weight` must be greater than 0; remove the entry to send it no traffic";
                    self.value(&format!("{wbase}.weight"), message.into());
                }
            }
        }
        if let Some(t) = route.timeout {
            if t.get().is_zero() {
                let message = "`timeout` must be greater than 0; leave it out for no timeout";
                self.value(&format!("{base}.timeout"), message.into());
            }
        }
        self.route_match(route, &format!("{base}.match"));
    }

    fn route_match(&mut self, route: &Route, base: &str) {
        let m = &route.match_;
        if m.prefix.is_some() && m.path.is_some() {
            let message = "a match uses `prefix` or `path` (exact), not both";
            self.value(base, message.into());
        }
        for (key, value) in [("prefix", &m.prefix), ("path", &m.path)] {
            if let Some(p) = value {
                if !p.starts_with('/') {
                    let message = format!(
                        "`{key}` must start with `/`, like `/shop.Inventory/`; found `{p}`"
                    );
                    self.value(&format!("{base}.{key}"), message);
                }
            }
        }
        for (k, h) in m.headers.iter().enumerate() {
            let hbase = format!("{base}.headers[{k}]");
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                let message = format!(
                    "`{}` is not a valid header name: names are letters, digits and `-`, `_`, `.` and the like",
                    h.name
                );
                self.value(&format!("{hbase}.name"), message);
            }
            match (&h.exact, h.present) {
                (Some(_), Some(_)) => {
                    let message = "a header match uses `exact` or `present`, not both";
                    self.value(&hbase, message.into());
                }
                (None, None) => {
                    let message = "a header match needs `exact: <value>` or `present: true`";
                    self.value(&hbase, message.into());
                }
                (Some(v), None) if http::HeaderValue::from_str(v).is_err() => {
                    let message = "`exact` holds a character a header value cannot carry";
                    self.value(&format!("{hbase}.exact"), message.into());
                }
                _ => {}
            }
        }
        if let Some(method) = &m.method {
            if let Some(e) = check_method(method) {
                self.value(&format!("{base}.method"), e);
            }
        }
    }

    /// A route's cluster must exist; suggest the closest name when it does not.
    pub(super) fn cluster_ref(&mut self, d: &Draft, path: &str, name: &str) {
        let Some(names) = &d.cluster_names else {
            return;
        };
        if names.iter().any(|n| n == name) {
            return;
        }
        let mut message = format!("unknown cluster `{name}`");
        if let Some(close) = closest(name, names.iter().map(String::as_str)) {
            message.push_str(&format!("; did you mean `{close}`?"));
        } else if names.is_empty() {
            message.push_str("; no clusters are defined");
        } else {
            message.push_str(&format!(
                "; the clusters are {}",
                ticked(names.iter().map(String::as_str))
            ));
        }
        self.value(path, message);
    }
}

/// `None` when `method` is a method token a client could send.
fn check_method(method: &str) -> Option<String> {
    const STANDARD: &[&str] = &[
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if method.is_empty() || http::Method::from_bytes(method.as_bytes()).is_err() {
        return Some(format!(
            "`{method}` is not an HTTP method, like `GET` or `POST`"
        ));
    }
    let upper = method.to_ascii_uppercase();
    if upper != method && STANDARD.contains(&upper.as_str()) {
        return Some(format!(
            "methods are case-sensitive and clients send `{upper}`; write `{upper}`"
        ));
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn methods() {
        assert_eq!(check_method("GET"), None);
        assert_eq!(check_method("PURGE"), None);
        assert!(check_method("get").unwrap().contains("`GET`"));
        assert!(check_method("G ET").is_some());
        assert!(check_method("").is_some());
    }
}
