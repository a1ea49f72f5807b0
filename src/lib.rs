//! Skiff: a per-pod sidecar proxy for east-west HTTP/2 and gRPC traffic.
//!
//! Start reading at [`app`] (what is bound and run) and [`proxy`]
//! (`src/proxy/mod.rs`: the request path, in request order).
//! `docs/architecture.md` follows a request through every module and holds
//! the contracts.

pub mod access_log;
pub mod admin;
pub mod admission;
pub mod app;
pub mod cluster;
pub mod coalesce;
pub mod config;
pub mod error;
pub mod file_watch;
pub mod http;
pub mod identity;
pub mod iptables;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod resilience;
pub mod router;
pub mod runtime;
pub mod tls;
pub mod upstream;

/// Test CAs and SVIDs, shared with the integration tests (each side uses
/// part of it).
#[cfg(test)]
#[allow(dead_code)]
#[path = "../tests/support/ca.rs"]
pub(crate) mod test_ca;
