//! DNS discovery through hickory-resolver.
//!
//! A cluster's name is resolved again every `refresh`, or sooner when the
//! records' TTL runs out first (the resolver's own cache is off so that the
//! answer is always fresh). A failed lookup keeps the last good endpoints —
//! a DNS outage must not empty a working cluster — while an empty answer
//! (NXDOMAIN, no records) empties it: the service is really gone.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::config;

/// The soonest a TTL may bring the next lookup, so a TTL of 0 cannot spin.
const MIN_REFRESH: Duration = Duration::from_millis(500);
/// How soon a failed lookup is tried again (or `refresh`, if shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The resolver every `dns:` cluster shares.
pub struct DnsResolver {
    inner: TokioResolver,
}

impl DnsResolver {
    /// From `resolver.servers` when given (keeping the system's search
    /// domains and ndots), else from the system's `/etc/resolv.conf`.
    pub fn new(cfg: Option<&config::Resolver>) -> Result<Self, String> {
        let (sys_config, mut opts) = hickory_resolver::system_conf::read_system_conf()
            .unwrap_or_else(|_| (ResolverConfig::default(), ResolverOpts::default()));
        let config = match cfg {
            Some(r) if !r.servers.is_empty() => {
                let mut servers = Vec::new();
                for s in &r.servers {
                    let addr: SocketAddr = s
                        .parse()
                        .map_err(|_| format!("resolver server {s:?} is not ip:port"))?;
                    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                    for c in &mut ns.connections {
                        c.port = addr.port();
                    }
                    servers.push(ns);
                }
                let mut c = ResolverConfig::from_parts(
                    sys_config.domain().cloned(),
                    sys_config.search().to_vec(),
                    servers,
                );
                if c.name_servers().is_empty() {
                    c = ResolverConfig::default();
                }
                c
            }
            _ => sys_config,
        };
        opts.cache_size = 0;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| format!("building the DNS resolver: {e}"))?;
        Ok(DnsResolver { inner })
    }
}

/// What a `dns:` cluster resolves.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: Option<String>,
    pub port: Option<u16>,
    pub srv: Option<String>,
    pub refresh: Duration,
}

/// One lookup's outcome.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// Endpoints with weights, and how long the records are valid.
    Endpoints(Vec<(SocketAddr, u32)>, Option<Duration>),
    /// The name exists no more, or has no records: the cluster is empty.
    Empty,
    /// The lookup failed (timeout, server failure): keep what we have.
    Failed(String),
}

impl DnsResolver {
    pub async fn resolve(&self, t: &Target) -> Answer {
        if let Some(srv) = &t.srv {
            match self.resolve_srv(srv).await {
                Answer::Empty => {}
                other => return other,
            }
            // No SRV records: the A/AAAA fallback, when name and port are given.
            if t.name.is_none() || t.port.is_none() {
                return Answer::Empty;
            }
        }
        match (&t.name, t.port) {
            (Some(name), Some(port)) => self.resolve_ip(name, port).await,
            _ => Answer::Failed("dns: needs name and port, or srv".into()),
        }
    }

    async fn resolve_ip(&self, name: &str, port: u16) -> Answer {
        match self.inner.lookup_ip(name).await {
            Ok(lookup) => {
                let ttl = lookup
                    .valid_until()
                    .saturating_duration_since(std::time::Instant::now());
                let eps: Vec<(SocketAddr, u32)> = lookup
                    .iter()
                    .map(|ip| (SocketAddr::new(ip, port), 1))
                    .collect();
                if eps.is_empty() {
                    Answer::Empty
                } else {
                    Answer::Endpoints(eps, Some(ttl))
                }
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Answer::Empty,
            Err(e) => Answer::Failed(e.to_string()),
        }
    }

    async fn resolve_srv(&self, name: &str) -> Answer {
        let lookup = match self.inner.srv_lookup(name).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => return Answer::Empty,
            Err(e) => return Answer::Failed(e.to_string()),
        };
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        let srvs: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        // The best (lowest) priority is used, as RFC 2782 asks; when none of
        // its targets resolves, the next priority, and so on.
        let mut priorities: Vec<u16> = srvs.iter().map(|s| s.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        for priority in priorities {
            let mut eps = Vec::new();
            for s in srvs.iter().filter(|s| s.priority == priority) {
                let weight = u32::from(s.weight.max(1));
                // Addresses of the target from the additional section, else a lookup.
                let mut ips: Vec<IpAddr> = lookup
                    .additionals()
                    .iter()
                    .filter(|r| r.name == s.target)
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    })
                    .collect();
                if ips.is_empty() {
                    match self.inner.lookup_ip(s.target.clone()).await {
                        Ok(l) => ips.extend(l.iter()),
                        Err(e) if e.is_no_records_found() || e.is_nx_domain() => {}
                        Err(e) => return Answer::Failed(e.to_string()),
                    }
                }
                eps.extend(
                    ips.into_iter()
                        .map(|ip| (SocketAddr::new(ip, s.port), weight)),
                );
            }
            if !eps.is_empty() {
                return Answer::Endpoints(eps, Some(ttl));
            }
        }
        Answer::Empty
    }
}

/// Keep `cluster`'s endpoints in step with DNS until `stop` turns true.
pub async fn run(
    cluster: Arc<Cluster>,
    resolver: Arc<DnsResolver>,
    target: Target,
    mut stop: watch::Receiver<bool>,
) {
    let what = target
        .srv
        .clone()
        .or_else(|| target.name.clone())
        .unwrap_or_default();
    // Log on changes of state only, not on every refresh.
    let mut last_state = "";
    loop {
        let answer = resolver.resolve(&target).await;
        let state;
        let wait = match answer {
            Answer::Endpoints(eps, ttl) => {
                state = "resolved";
                cluster.metrics.dns_success.inc();
                cluster.set_endpoints(eps);
                ttl.map_or(target.refresh, |t| t.min(target.refresh))
                    .max(MIN_REFRESH.min(target.refresh))
            }
            Answer::Empty => {
                state = "empty";
                cluster.metrics.dns_empty.inc();
                if last_state != state {
                    tracing::warn!(cluster = %cluster.name, name = %what, "DNS has no records; the cluster is empty");
                }
                cluster.set_endpoints(Vec::new());
                target.refresh
            }
            Answer::Failed(e) => {
                state = "failed";
                cluster.metrics.dns_failure.inc();
                if last_state != state {
                    tracing::warn!(
                        cluster = %cluster.name, name = %what, error = %e,
                        endpoints = cluster.endpoint_count(),
                        "DNS lookup failed; keeping the last endpoints"
                    );
                }
                RETRY_AFTER_FAILURE.min(target.refresh)
            }
        };
        if last_state != state && state == "resolved" && !last_state.is_empty() {
            tracing::info!(cluster = %cluster.name, name = %what, "DNS resolves again");
        }
        last_state = state;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}
