//! Rules for clusters: names, endpoints, DNS discovery (and the resolver
//! it asks) and the settings of each load-balancing policy.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::addresses::{parse_endpoint_address, parse_ip_port};
use super::{Rules, NOT_YET_CLUSTER};
use crate::config::model::{Cluster, EndpointSpec, LbPolicy};
use crate::config::parse::Draft;

impl Rules<'_> {
    pub(super) fn clusters(&mut self, d: &Draft) {
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
            self.cluster_tls(d, c, &base);
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

    /// `resolver.servers` are ip:port; an empty list would quietly mean the system's.
    pub(super) fn resolver(&mut self, d: &Draft) {
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
    !name.is_empty() && super::host_labels_ok(name)
}

const MAX_ENDPOINT_WEIGHT: u32 = 10_000;
