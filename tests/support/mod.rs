//! The integration-test harness: the proxy started from YAML (in process, or
//! as the real binary), real backends on 127.0.0.1:0 (HTTP/1.1 + h2c, gRPC,
//! deliberately broken ones, replicas of one service sharing a port, a tiny
//! DNS server) and external peers (curl, h2load, grpcio).
//!
//! Each suite in `tests/*.rs` includes this with `mod support;` and uses
//! only part of it, hence the `dead_code` allowance.
//!
//! Peers: `scripts/install-test-peers.sh` installs curl, h2load, grpcio and redis-server.
//! A test whose peer is missing prints why and passes; with
//! `SKIFF_REQUIRE_PEERS=1` (set by `.ci/run`) it fails instead.
//! `tests/harness.rs` checks these pieces without the proxy.
#![allow(dead_code, unused_imports)]

pub mod body;
pub mod ca;
pub mod dns;
pub mod echo_pb;
pub mod eventually;
pub mod faults;
pub mod flaky;
pub mod grpc_backend;
pub mod hostile;
pub mod http_backend;
pub mod http_client;
pub mod https;
pub mod jwt;
pub mod netns;
pub mod peers;
pub mod process;
pub mod proxy;
pub mod raw_h2;
pub mod redis_server;
pub mod replica;
pub mod scratch;

use std::future::Future;

pub use eventually::{eventually, within};
pub use http_client::Proto;
pub use proxy::{Proxy, ProxyConfig};

/// A spawned task aborted when this handle drops, so servers die with their test.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    pub fn spawn(fut: impl Future<Output = ()> + Send + 'static) -> AbortOnDrop {
        AbortOnDrop(tokio::spawn(fut))
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The value of `metric{labels}` in Prometheus text, summed over every series
/// whose labels include all of `labels` (`name="value"` pairs).
pub fn metric_value(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        let wanted = labels.iter().all(|(k, v)| {
            label_text
                .split(',')
                .any(|kv| kv.trim() == format!("{k}=\"{v}\""))
        });
        if !wanted {
            continue;
        }
        if let Ok(v) = value
            .trim()
            .split(' ')
            .next()
            .unwrap_or_default()
            .parse::<f64>()
        {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}
