//! The rules serde cannot express: references, duplicates, address syntax,
//! bounds, and the keys whose behaviour is not built yet.
//!
//! Runs over whatever parsed ([`Draft`]), so a broken listener does not stop
//! the clusters from being checked. Every rule adds an error and goes on;
//! errors carry the YAML path of what they are about. A problem with a value
//! points at the value; a missing or conflicting part points at the mapping
//! that should hold it; a refused key points at the key.

mod resilience;

use std::collections::HashMap;
use std::net::SocketAddr;

use super::model::{Cluster, EndpointSpec, LbPolicy, Listener, Route};
use super::{ticked, ConfigError, Draft, Dur, Locator};

/// A key the schema accepts (DESIGN §3.1) whose behaviour is not built yet.
/// It is refused, never silently ignored. Delete its row in the change that
/// builds the behaviour.
struct NotYet<T> {
    /// The key, as it appears in the path.
    key: &'static str,
    /// How the message names what was written.
    what: &'static str,
    used: fn(&T) -> bool,
    hint: &'static str,
}

const NOT_YET_TOP_LEVEL: &[NotYet<Draft>] = &[NotYet {
    key: "tls",
    what: "`tls` (mesh identity)",
    used: |d| d.tls.is_some(),
    hint: "remove the section; traffic is plaintext for now",
}];

const NOT_YET_LISTENER: &[NotYet<Listener>] = &[
    NotYet {
        key: "tls",
        what: "listener `tls`",
        used: |l| l.tls.is_some(),
        hint: "remove it; the listener serves plaintext",
    },
    NotYet {
        key: "authorization",
        what: "`authorization`",
        used: |l| l.authorization.is_some(),
        hint: "remove it; every request is allowed",
    },
    NotYet {
        key: "jwt",
        what: "listener `jwt`",
        used: |l| l.jwt.is_some(),
        hint: "remove it",
    },
    NotYet {
        key: "rate_limit",
        what: "`rate_limit`",
        used: |l| l.rate_limit.is_some(),
        hint: "remove it",
    },
];

const NOT_YET_ROUTE: &[NotYet<Route>] = &[NotYet {
    key: "jwt",
    what: "route `jwt`",
    used: |r| r.jwt.is_some(),
    hint: "remove it",
}];

const NOT_YET_CLUSTER: &[NotYet<Cluster>] = &[NotYet {
    key: "tls",
    what: "cluster `tls`",
    used: |c| c.tls.is_some(),
    hint: "remove it; upstream connections are plaintext",
}];

/// Check every rule over what parsed; the errors come back unsorted.
pub(crate) fn validate(draft: &Draft, at: &Locator<'_>) -> Vec<ConfigError> {
    let mut v = Rules {
        at,
        errors: Vec::new(),
    };
    v.not_yet(NOT_YET_TOP_LEVEL, draft, "");
    v.process(draft);
    v.resolver(draft);
    v.addresses(draft);
    v.listeners(draft);
    v.clusters(draft);
    v.errors
}

struct Rules<'a> {
    at: &'a Locator<'a>,
    errors: Vec<ConfigError>,
}

impl Rules<'_> {
    fn value(&mut self, path: &str, message: String) {
        self.errors.push(self.at.node(path, message));
    }

    fn not_yet<T>(&mut self, table: &[NotYet<T>], item: &T, base: &str) {
        for row in table.iter().filter(|row| (row.used)(item)) {
            let path = if base.is_empty() {
                row.key.to_string()
            } else {
                format!("{base}.{}", row.key)
            };
            let message = format!("{} is not supported yet; {}", row.what, row.hint);
            self.errors.push(self.at.key(&path, message));
        }
    }

    /// "on line N" for a message that refers to another place.
    fn line_of(&self, path: &str) -> String {
        self.at
            .line(path)
            .map(|l| format!(" (line {l})"))
            .unwrap_or_default()
    }

    fn positive(&mut self, path: &str, d: Dur, what: &str) {
        if d.get().is_zero() {
            self.value(path, format!("{what} must be greater than 0"));
        }
    }

    fn process(&mut self, d: &Draft) {
        if d.runtime.worker_threads == Some(0) {
            let message = "`worker_threads` must be at least 1; leave it out to use every CPU this process may use";
            self.value("runtime.worker_threads", message.into());
        }
        if let Some(log) = &d.access_log {
            if log.path.trim().is_empty() {
                let message = "`path` cannot be empty: write `stdout`, `stderr` or a file path";
                self.value("access_log.path", message.into());
            }
        }
    }

    /// Addresses parse, and no two sockets would bind the same port.
    fn addresses(&mut self, d: &Draft) {
        // (path of the address, how to name its owner, the address)
        let mut binds: Vec<(String, String, SocketAddr)> = Vec::new();
        if let Some(admin) = &d.admin {
            match parse_bind_address(&admin.address) {
                Ok(a) => binds.push(("admin.address".into(), "the admin server".into(), a)),
                Err(e) => self.value("admin.address", e),
            }
        }
        for (i, l) in &d.listeners {
            let path = format!("listeners[{i}].address");
            match parse_bind_address(&l.address) {
                Ok(a) => binds.push((path, format!("listener `{}`", l.name), a)),
                Err(e) => self.value(&path, e),
            }
        }
        for (j, (path, _, addr)) in binds.iter().enumerate() {
            if let Some((other_path, owner, other)) =
                binds[..j].iter().find(|(_, _, b)| overlaps(*b, *addr))
            {
                let message = format!(
                    "`{addr}` overlaps {owner} at `{other}`{}: both would bind port {}",
                    self.line_of(other_path),
                    addr.port()
                );
                self.value(path, message);
            }
        }
    }

    fn listeners(&mut self, d: &Draft) {
        if d.listeners.is_empty() {
            self.value("listeners", "at least one listener is needed".into());
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, l) in &d.listeners {
            let base = format!("listeners[{i}]");
            self.not_yet(NOT_YET_LISTENER, l, &base);
            self.interception(l, &base);
            self.name(
                &format!("{base}.name"),
                &l.name,
                "listener",
                &mut names,
                *i,
                "listeners",
            );
            self.limits(l, &base);
            self.virtual_hosts(d, l, &base);
        }
    }

    /// Non-empty and unique among its kind; `names` maps names to the index first seen.
    fn name<'n>(
        &mut self,
        path: &str,
        name: &'n str,
        kind: &str,
        names: &mut HashMap<&'n str, usize>,
        index: usize,
        list: &str,
    ) {
        if name.trim().is_empty() {
            self.value(path, format!("a {kind} needs a name"));
        } else if let Some(first) = names.get(name) {
            let message = format!(
                "{kind} name `{name}` is already used{}; names must be unique",
                self.line_of(&format!("{list}[{first}].name"))
            );
            self.value(path, message);
        } else {
            names.insert(name, index);
        }
    }

    fn limits(&mut self, l: &Listener, base: &str) {
        let limits = &l.limits;
        let p = |key: &str| format!("{base}.limits.{key}");
        if limits.max_header_bytes < 1024 {
            let message = "`max_header_bytes` must be at least 1024: smaller heads cannot hold ordinary requests";
            self.value(&p("max_header_bytes"), message.into());
        }
        if limits.max_concurrent_streams == 0 {
            let message =
                "`max_concurrent_streams` must be at least 1: 0 would refuse every HTTP/2 request";
            self.value(&p("max_concurrent_streams"), message.into());
        }
        for (key, window) in [
            ("initial_stream_window", limits.initial_stream_window),
            (
                "initial_connection_window",
                limits.initial_connection_window,
            ),
        ] {
            if !(H2_MIN_WINDOW..=H2_MAX_WINDOW).contains(&window) {
                let message = format!("`{key}` must be from {H2_MIN_WINDOW} to {H2_MAX_WINDOW} bytes (the HTTP/2 bounds)");
                self.value(&p(key), message);
            }
        }
        self.positive(
            &p("header_read_timeout"),
            limits.header_read_timeout,
            "`header_read_timeout`",
        );
        for (key, d) in [
            ("keepalive_interval", limits.keepalive_interval),
            ("stream_idle_timeout", limits.stream_idle_timeout),
            ("connection_idle_timeout", limits.connection_idle_timeout),
            ("detect_timeout", limits.detect_timeout),
        ] {
            self.positive(&p(key), d, &format!("`{key}`"));
        }
    }

    fn virtual_hosts(&mut self, d: &Draft, l: &Listener, base: &str) {
        // A passthrough listener may route nothing itself: everything goes
        // to where it was going.
        if l.virtual_hosts.is_empty() && !(l.transparent && l.passthrough) {
            let message = "a listener needs at least one virtual host (or `transparent: true` with `passthrough: true`)".to_string();
            self.value(&format!("{base}.virtual_hosts"), message);
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        // lower-cased domain -> (virtual host index, domain index)
        let mut domains: HashMap<String, (usize, usize)> = HashMap::new();
        let list = format!("{base}.virtual_hosts");
        for (v, vh) in l.virtual_hosts.iter().enumerate() {
            let vbase = format!("{list}[{v}]");
            self.name(
                &format!("{vbase}.name"),
                &vh.name,
                "virtual host",
                &mut names,
                v,
                &list,
            );
            if vh.domains.is_empty() {
                let message =
                    "a virtual host needs at least one domain; `\"*\"` matches any authority";
                self.value(&format!("{vbase}.domains"), message.into());
            }
            for (k, domain) in vh.domains.iter().enumerate() {
                let path = format!("{vbase}.domains[{k}]");
                if let Err(e) = check_domain(domain) {
                    self.value(&path, e);
                    continue;
                }
                match domains.get(&domain.to_ascii_lowercase()) {
                    Some((fv, _)) if *fv == v => {
                        self.value(
                            &path,
                            format!("domain `{domain}` is listed twice in this virtual host"),
                        );
                    }
                    Some((fv, fk)) => {
                        let message = format!(
                            "domain `{domain}` is also listed by virtual host `{}`{}; an authority must lead to one virtual host",
                            l.virtual_hosts[*fv].name,
                            self.line_of(&format!("{list}[{fv}].domains[{fk}]"))
                        );
                        self.value(&path, message);
                    }
                    None => {
                        domains.insert(domain.to_ascii_lowercase(), (v, k));
                    }
                }
            }
            if vh.routes.is_empty() {
                self.value(
                    &format!("{vbase}.routes"),
                    "a virtual host needs at least one route".into(),
                );
            }
            for (r, route) in vh.routes.iter().enumerate() {
                self.route(d, route, &format!("{vbase}.routes[{r}]"));
            }
        }
    }

    fn route(&mut self, d: &Draft, route: &Route, base: &str) {
        self.not_yet(NOT_YET_ROUTE, route, base);
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
    fn cluster_ref(&mut self, d: &Draft, path: &str, name: &str) {
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

    fn clusters(&mut self, d: &Draft) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, c) in &d.clusters {
            let base = format!("clusters[{i}]");
            self.not_yet(NOT_YET_CLUSTER, c, &base);
            self.name(
                &format!("{base}.name"),
                &c.name,
                "cluster",
                &mut names,
                *i,
                "clusters",
            );
            self.positive(
                &format!("{base}.connect_timeout"),
                c.connect_timeout,
                "`connect_timeout`",
            );
            self.positive(
                &format!("{base}.pool.idle_timeout"),
                c.pool.idle_timeout,
                "`idle_timeout`",
            );
            match (&c.endpoints, &c.dns) {
                (None, None) => {
                    let message = "a cluster needs `endpoints` (a list of ip:port, like [\"127.0.0.1:8080\"]) or `dns`";
                    self.value(&base, message.into());
                }
                (Some(_), Some(_)) => {
                    let message =
                        "a cluster takes its endpoints from `endpoints` or from `dns`, not both";
                    self.value(&base, message.into());
                }
                (Some(list), None) if list.is_empty() => {
                    let message = "`endpoints` must list at least one ip:port";
                    self.value(&format!("{base}.endpoints"), message.into());
                }
                _ => {}
            }
            self.dns(c, &base);
            self.balancing(c, &base);
            self.cluster_resilience(c, &base);
            let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
            for (k, e) in c.endpoints.iter().flatten().enumerate() {
                let epath = format!("{base}.endpoints[{k}]");
                let apath = match e {
                    EndpointSpec::Address(_) => epath.clone(),
                    EndpointSpec::Weighted { .. } => format!("{epath}.address"),
                };
                match parse_endpoint_address(e.address()) {
                    Ok(addr) => {
                        if let Some(first) = seen.get(&addr) {
                            let message = format!(
                                "endpoint `{addr}` is listed twice{}",
                                self.line_of(&format!("{base}.endpoints[{first}]"))
                            );
                            self.value(&apath, message);
                        } else {
                            seen.insert(addr, k);
                        }
                    }
                    Err(message) => self.value(&apath, message),
                }
                if !(1..=MAX_ENDPOINT_WEIGHT).contains(&e.weight()) {
                    let message =
                        format!("endpoint `weight` must be from 1 to {MAX_ENDPOINT_WEIGHT}");
                    self.value(&format!("{epath}.weight"), message);
                }
            }
        }
    }
}

impl Rules<'_> {
    /// `resolver.servers` are ip:port; an empty list would quietly mean the system's.
    fn resolver(&mut self, d: &Draft) {
        let Some(r) = &d.resolver else { return };
        if r.servers.is_empty() {
            let message = "`servers` must list at least one ip:port; remove the `resolver` section to use /etc/resolv.conf";
            self.value("resolver.servers", message.into());
        }
        for (k, server) in r.servers.iter().enumerate() {
            let parsed = parse_ip_port(server, "DNS servers are IP addresses");
            let message = match parsed {
                Ok(a) if a.port() == 0 => {
                    format!("`{server}`: port 0 cannot be connected to; DNS is port 53")
                }
                Ok(_) => continue,
                Err(e) => e,
            };
            self.value(&format!("resolver.servers[{k}]"), message);
        }
    }

    /// `dns:` names what to resolve: `name` and `port`, or `srv` (with an
    /// optional `name` + `port` fallback).
    fn dns(&mut self, c: &Cluster, base: &str) {
        let Some(dns) = &c.dns else { return };
        let path = format!("{base}.dns");
        match (&dns.name, dns.port, &dns.srv) {
            (Some(_), None, None) => {
                let message = "`dns` with `name` needs `port` too (A/AAAA records carry no port)";
                self.value(&path, message.into());
            }
            (None, Some(_), None) => {
                self.value(&path, "`dns` with `port` needs `name` too".into());
            }
            (None, None, None) => {
                let message = "`dns` needs `name` and `port`, or `srv`";
                self.value(&path, message.into());
            }
            (Some(_), None, Some(_)) | (None, Some(_), Some(_)) => {
                let message = "the A/AAAA fallback of `srv` needs both `name` and `port`; give both or neither";
                self.value(&path, message.into());
            }
            _ => {}
        }
        for (key, value) in [("name", &dns.name), ("srv", &dns.srv)] {
            if let Some(v) = value {
                if !valid_dns_name(v) {
                    let message = format!("`{v}` is not a DNS name: labels of letters, digits, `-` and `_`, joined by dots");
                    self.value(&format!("{path}.{key}"), message);
                }
            }
        }
        if dns.port == Some(0) {
            self.value(
                &format!("{path}.port"),
                "`port` must be from 1 to 65535".into(),
            );
        }
        if let Some(refresh) = dns.refresh {
            self.positive(&format!("{path}.refresh"), refresh, "`refresh`");
        }
    }

    /// Settings that belong to one `lb` policy are refused under another,
    /// where they would be silently ignored.
    fn balancing(&mut self, c: &Cluster, base: &str) {
        match (&c.hash_header, c.lb) {
            (None, LbPolicy::RingHash) => {
                let message = "`lb: ring_hash` needs `hash_header`: the request header whose value picks the endpoint";
                self.value(&format!("{base}.lb"), message.into());
            }
            (Some(h), LbPolicy::RingHash)
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() =>
            {
                let message = format!("`{h}` is not a valid header name");
                self.value(&format!("{base}.hash_header"), message);
            }
            (Some(_), lb) if lb != LbPolicy::RingHash => {
                let message = "`hash_header` applies only to `lb: ring_hash`";
                self.errors
                    .push(self.at.key(&format!("{base}.hash_header"), message.into()));
            }
            _ => {}
        }
        if let Some(ewma) = &c.peak_ewma {
            if c.lb != LbPolicy::PeakEwma {
                let message = "`peak_ewma` applies only to `lb: peak_ewma`";
                self.errors
                    .push(self.at.key(&format!("{base}.peak_ewma"), message.into()));
            }
            self.positive(&format!("{base}.peak_ewma.decay"), ewma.decay, "`decay`");
            self.positive(
                &format!("{base}.peak_ewma.default_rtt"),
                ewma.default_rtt,
                "`default_rtt`",
            );
        }
    }
}

/// A name to resolve: dot-separated labels of letters, digits, `-` and `_`
/// (SRV names start with `_service._proto`); a trailing dot is allowed.
fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// HTTP/2 flow-control windows (RFC 9113 §6.5.2, §6.9.1).
const H2_MIN_WINDOW: u32 = 65_535;
const H2_MAX_WINDOW: u32 = (1 << 31) - 1;
const MAX_ENDPOINT_WEIGHT: u32 = 10_000;

/// `ip:port` for a socket to bind; port 0 picks a free port.
fn parse_bind_address(s: &str) -> Result<SocketAddr, String> {
    parse_ip_port(
        s,
        "listeners bind an IP address, such as `0.0.0.0` or `127.0.0.1`",
    )
}

/// `ip:port` of an upstream endpoint; hostnames need DNS discovery.
fn parse_endpoint_address(s: &str) -> Result<SocketAddr, String> {
    let addr = parse_ip_port(s, "to reach a hostname, use `dns:` instead of `endpoints:`")?;
    if addr.port() == 0 {
        return Err(format!("`{s}`: port 0 cannot be connected to"));
    }
    Ok(addr)
}

fn parse_ip_port(s: &str, hostname_hint: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = |why: String| Err(format!("`{s}` is not an ip:port address: {why}"));
    let Some((host, port)) = s.rsplit_once(':') else {
        return bad("the port is missing, as in `127.0.0.1:8080`".into());
    };
    if host.contains(':') && !host.starts_with('[') {
        return bad("write IPv6 addresses in brackets, as in `[::1]:8080`".into());
    }
    if port.parse::<u16>().is_err() {
        return bad(format!("the port `{port}` is not a number from 0 to 65535"));
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_err() {
        return bad(format!("`{host}` is not an IP address; {hostname_hint}"));
    }
    bad("expected the form `10.0.0.1:8080` or `[::1]:8080`".into())
}

/// Two binds collide when they share a port (not 0) and an IP, or one is a wildcard.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// A virtual host domain: `host`, `host:port`, `*.suffix` (optionally with a port) or `*`.
fn check_domain(domain: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("`{domain}` is not a valid domain: {why}"));
    if domain == "*" {
        return Ok(());
    }
    if domain.is_empty() {
        return Err("a domain cannot be empty; `\"*\"` matches any authority".into());
    }
    let wildcard = domain.strip_prefix("*.");
    let rest = wildcard.unwrap_or(domain);
    if rest.contains('*') {
        return bad("`*` may only stand alone (`*`) or begin a domain (`*.example.com`)");
    }
    if wildcard.is_some() && rest.contains(':') {
        return bad("`*.suffix` matches the host whatever the port; leave the port out");
    }
    if let Some(v6) = rest.strip_prefix('[') {
        let Some((ip, after)) = v6.split_once(']') else {
            return bad("`[` without `]`");
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("not an IPv6 address inside `[...]`");
        }
        return match after {
            "" => Ok(()),
            p => match p.strip_prefix(':') {
                Some(port) if valid_port(port) => Ok(()),
                _ => bad("expected `[ipv6]` or `[ipv6]:port`"),
            },
        };
    }
    let (host, port) = match rest.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    if port.is_some_and(|p| !valid_port(p)) {
        return bad("the port must be a number from 1 to 65535 (and IPv6 goes in brackets)");
    }
    let labels_ok = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !labels_ok {
        return bad("expected `host`, `host:port`, `*.suffix` or `*`, with host names made of letters, digits, `-` and dots");
    }
    Ok(())
}

fn valid_port(p: &str) -> bool {
    p.parse::<u16>().is_ok_and(|n| n > 0) && p.bytes().all(|b| b.is_ascii_digit())
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

/// The candidate closest to `word`, if close enough to be a likely typo.
pub(crate) fn closest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (edit_distance(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn domains() {
        for ok in [
            "*",
            "inventory",
            "inventory:50051",
            "*.shop.svc",
            "a.b-c.d_e",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert_eq!(check_domain(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "in*ventory",
            "*inventory",
            "inventory.*",
            "a..b",
            "-a",
            "a:0",
            "*.x:80",
            "a:x",
            "a:99999",
            "::1",
            "[::1",
            "a b",
            "*.",
            "**",
        ] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        assert!(parse_bind_address("127.0.0.1:0").is_ok());
        assert!(parse_bind_address("[::]:15006").is_ok());
        assert!(parse_bind_address("localhost:80")
            .unwrap_err()
            .contains("not an IP address"));
        assert!(parse_bind_address("127.0.0.1")
            .unwrap_err()
            .contains("port is missing"));
        assert!(parse_bind_address("::1:80")
            .unwrap_err()
            .contains("brackets"));
        assert!(parse_bind_address("1.2.3.4:x")
            .unwrap_err()
            .contains("port `x`"));
        assert!(parse_endpoint_address("inventory:50051")
            .unwrap_err()
            .contains("dns:"));
        assert!(parse_endpoint_address("10.0.0.1:0").is_err());
    }

    #[test]
    fn overlap_rules() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(overlaps(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(overlaps(a("10.0.0.1:80"), a("[::]:80")));
        assert!(!overlaps(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!overlaps(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(!overlaps(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }

    #[test]
    fn methods() {
        assert_eq!(check_method("GET"), None);
        assert_eq!(check_method("PURGE"), None);
        assert!(check_method("get").unwrap().contains("`GET`"));
        assert!(check_method("G ET").is_some());
        assert!(check_method("").is_some());
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            closest("inventroy", ["inventory", "payment"]),
            Some("inventory")
        );
        assert_eq!(
            closest("virtual_host", ["name", "virtual_hosts"]),
            Some("virtual_hosts")
        );
        assert_eq!(closest("zzz", ["inventory", "payment"]), None);
        assert_eq!(closest("Payment", ["payment"]), Some("payment"));
    }
}
