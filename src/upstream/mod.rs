//! Connections to one endpoint: connect, pool, send one request.
//!
//! Each endpoint owns a [`Pool`]: HTTP/2 connections shared by many streams
//! (a new one opens only when every open one is at the peer's
//! max-concurrent-streams), and idle HTTP/1.1 keep-alive connections. The
//! pool's [`Connector`] opens them (`connect.rs`) and says which scheme
//! requests on them carry.

pub mod connect;
mod h1;
mod h2;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};

use crate::http::body::{ProxyBody, RequestBody};
use crate::resilience::breaker::{Limits, Permit};
pub use connect::{BoxedIo, Connect, Connector};

/// The protocol spoken to an upstream: the cluster's `protocol`, `auto`
/// resolved per request by the downstream request's version.
pub use crate::config::UpstreamProtocol as Protocol;

/// Pool settings, from the cluster's config.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
    /// The cluster's circuit-breaker caps (pending connects, open connections).
    pub limits: Arc<Limits>,
    /// Opens the connections: plain TCP, or a handshake over it.
    pub connector: Connector,
}

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    /// The connection was made but its handshake failed (HTTP/1.1, HTTP/2;
    /// a transport handshake such as TLS belongs here too): nothing was sent.
    #[error("handshake with upstream {addr} failed: {reason}")]
    Handshake { addr: SocketAddr, reason: String },
    /// A stream or connection broke before the response head.
    #[error("upstream {addr} reset the request before responding: {reason}")]
    Reset { addr: SocketAddr, reason: String },
    /// The upstream refused the stream before processing it (REFUSED_STREAM, GOAWAY).
    #[error("upstream {addr} refused the request unprocessed: {reason}")]
    Refused { addr: SocketAddr, reason: String },
    /// A circuit-breaker cap of the cluster was reached.
    #[error("{what} to {addr} over the cluster's limit of {limit}")]
    Overflow {
        addr: SocketAddr,
        what: &'static str,
        limit: usize,
    },
    #[error("the request to {addr} cannot be sent: {reason}")]
    Invalid { addr: SocketAddr, reason: String },
}

/// The connections of one endpoint.
pub struct Pool {
    addr: SocketAddr,
    config: PoolConfig,
    h2: h2::H2Pool,
    h1: Arc<Mutex<Vec<h1::Idle>>>,
    /// Set when the endpoint leaves its cluster: nothing goes back to the pool.
    retired: Arc<std::sync::atomic::AtomicBool>,
}

impl Pool {
    pub fn new(addr: SocketAddr, config: PoolConfig) -> Self {
        Pool {
            addr,
            config,
            h2: h2::H2Pool::default(),
            h1: Arc::new(Mutex::new(Vec::new())),
            retired: Default::default(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint left its cluster: close idle connections now and the
    /// others once the requests on them end.
    pub fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::Release);
        self.h2.retire();
        if let Ok(mut idle) = self.h1.lock() {
            idle.clear();
        }
    }

    /// Open connections: (HTTP/2, idle HTTP/1.1).
    pub fn connection_counts(&self) -> (usize, usize) {
        let h1 = self.h1.lock().map(|v| v.len()).unwrap_or(0);
        (self.h2.len(), h1)
    }

    /// Send `req` (URI, version and Host are fixed up here) and wait for the
    /// response head; `proto` `auto` follows the request's own version.
    pub async fn send(
        &self,
        proto: Protocol,
        req: Request<RequestBody>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        match proto.resolve(req.version()) {
            Protocol::Http2 => self.send_h2(req).await,
            _ => self.send_h1(req).await,
        }
    }

    /// A new connection from the pool's connector, within the cluster's
    /// caps: the returned permit holds a `max_connections` slot for as long
    /// as the connection lives.
    async fn connect(&self) -> Result<(BoxedIo, Permit), UpstreamError> {
        let addr = self.addr;
        let limits = &self.config.limits;
        let overflow = |what, limit| UpstreamError::Overflow { addr, what, limit };
        let _pending = limits
            .pending()
            .ok_or_else(|| overflow("a pending connection", limits.max_pending))?;
        let conn_permit = limits
            .connection()
            .ok_or_else(|| overflow("a connection", limits.max_connections))?;
        let timeout = self.config.connect_timeout;
        match tokio::time::timeout(timeout, self.config.connector.connect(addr)).await {
            Ok(Ok(io)) => Ok((io, conn_permit)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(UpstreamError::ConnectTimeout { addr, timeout }),
        }
    }
}
