//! Where a cluster's endpoints come from: the static list of the config, or
//! DNS (A/AAAA or SRV) re-resolved in the background.

pub mod dns;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Cluster;
use crate::config;

/// `dns.refresh` when the config gives none.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);

/// Start discovery for `cluster` if its endpoints come from DNS; static
/// clusters already have theirs. The task ends when `stop` turns true.
pub fn start(
    cluster: Arc<Cluster>,
    cfg: &config::Cluster,
    resolver: &Arc<dns::DnsResolver>,
    stop: watch::Receiver<bool>,
) {
    let Some(d) = &cfg.dns else { return };
    let target = dns::Target {
        name: d.name.clone(),
        port: d.port,
        srv: d.srv.clone(),
        refresh: d.refresh.map_or(DEFAULT_REFRESH, |r| r.get()),
    };
    tokio::spawn(dns::run(cluster, resolver.clone(), target, stop));
}
