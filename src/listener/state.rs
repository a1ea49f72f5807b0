//! What a listener's connections and requests read: the listener's state,
//! built from a config snapshot, and what is known of one connection.
//!
//! Defined here, beside the accept loop, so that the request path
//! (`proxy`) depends on the listener and not the other way round: the
//! listener only calls `proxy::handle`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::Serving;
use crate::access_log::AccessLog;
use crate::admission::authorization::Policy;
use crate::admission::Admission;
use crate::cluster::passthrough::Passthrough;
use crate::cluster::Cluster;
use crate::identity::Identity;
use crate::metrics::{ListenerMetrics, RouteMetrics};
use crate::router::Router;

/// Where a route sends requests: a cluster and the metrics of this listener × that cluster.
#[derive(Clone)]
pub struct Target {
    pub cluster: Arc<Cluster>,
    pub metrics: Arc<RouteMetrics>,
}

/// Where a downstream connection came from, when it was redirected by
/// iptables where it was going, and who the peer proved to be.
///
/// Built once per connection and shared by its requests (`Arc<ConnInfo>`).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub orig_dst: Option<SocketAddr>,
    /// The peer's identity, set only when a handshake verified it (mesh
    /// TLS); `None` on a plain connection and at the edge.
    pub peer: Option<Identity>,
    /// The TLS the connection came over; `None` in plaintext.
    pub tls: Option<ConnTls>,
}

/// Which TLS a downstream connection came over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnTls {
    /// Mesh mTLS (`strict`, `permissive`): the peer has a verified identity.
    Mesh,
    /// Edge TLS (`terminate`): a client outside the mesh, no identity.
    Edge,
}

impl ConnTls {
    /// As the access log and the `conn` span write it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnTls::Mesh => "mesh",
            ConnTls::Edge => "edge",
        }
    }
}

/// Set by the downstream HTTP/2 server when it resets a request's stream
/// for the client's protocol error (RST_STREAM PROTOCOL_ERROR: DATA past the
/// content-length, say), so the request is recorded as the client's fault
/// (`DPE`), not as a client that went away (`DC`). Carried in the request's
/// extensions.
#[derive(Clone, Debug, Default)]
pub struct ClientFault(Arc<std::sync::atomic::AtomicBool>);

impl ClientFault {
    pub fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Everything one listener's requests need, shared by its connections.
/// A config reload swaps in a new one; requests in flight keep theirs.
pub struct ListenerState {
    pub name: Arc<str>,
    pub router: Router<Target>,
    pub metrics: ListenerMetrics,
    /// Metrics for requests that never reached a cluster (`cluster=""`).
    pub unrouted: Arc<RouteMetrics>,
    pub access_log: Option<Arc<AccessLog>>,
    /// Largest request head accepted; hyper's own limits sit above it so the
    /// proxy answers 431 itself, with `x-skiff-error`.
    pub max_header_bytes: usize,
    /// End a request when nothing moves either way for this long.
    pub stream_idle_timeout: Duration,
    /// Accept-time settings: hyper limits, transparency, detection.
    pub serving: Arc<Serving>,
    /// `passthrough: true` on a transparent listener: unrouted requests go
    /// to their original destination.
    pub passthrough: Option<Passthrough>,
    /// `authorization:` rules; `None`: every request is allowed.
    pub authorization: Option<Policy>,
    /// JWT and rate limits; `None` when the listener has neither.
    pub admission: Option<Arc<Admission>>,
}
