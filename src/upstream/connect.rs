//! How a pool opens its connections: a [`Connector`] hands it a byte
//! stream to the endpoint, and the pool speaks HTTP/1.1 or HTTP/2 on
//! whatever stream that is.
//!
//! Plain TCP ([`Tcp`]), or TLS ([`crate::tls::connector`]), which wraps it: it connects with
//! [`Tcp::connect`], runs its handshake on that stream, hands back the
//! encrypted stream and says `https`; a failed handshake is an
//! [`UpstreamError::Handshake`]. The stream is boxed once per connection;
//! nothing here runs per request but [`Connector::scheme`].

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::uri::Scheme;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::UpstreamError;

/// A byte stream a connection to an upstream runs on.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connection's stream, whatever carries it.
pub type BoxedIo = Box<dyn Io>;

/// What [`Connect::connect`] returns.
pub type Connecting<'a> = Pin<Box<dyn Future<Output = Result<BoxedIo, UpstreamError>> + Send + 'a>>;

/// A way to open connections to an upstream endpoint.
pub trait Connect: fmt::Debug + Send + Sync + 'static {
    /// The scheme of requests sent on these connections: `http` in clear,
    /// `https` over TLS.
    fn scheme(&self) -> Scheme;

    /// A new connection to `addr`, ready for HTTP. The pool bounds the
    /// whole of it (TCP and any handshake) by the cluster's
    /// `connect_timeout`.
    fn connect(&self, addr: SocketAddr) -> Connecting<'_>;
}

/// Plain TCP, Nagle's algorithm off.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tcp;

impl Tcp {
    /// A TCP connection to `addr`, for a connector that builds on TCP.
    pub async fn connect(addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Err(source) => Err(UpstreamError::Connect { addr, source }),
        }
    }
}

impl Connect for Tcp {
    fn scheme(&self) -> Scheme {
        Scheme::HTTP
    }

    fn connect(&self, addr: SocketAddr) -> Connecting<'_> {
        Box::pin(async move { Ok(Box::new(Tcp::connect(addr).await?) as BoxedIo) })
    }
}

/// A cluster's connector, shared by its endpoints' pools.
#[derive(Clone)]
pub struct Connector(Arc<dyn Connect>);

impl Connector {
    pub fn new(connect: impl Connect) -> Self {
        Connector(Arc::new(connect))
    }

    /// Plain TCP.
    pub fn tcp() -> Self {
        Connector::new(Tcp)
    }

    /// The scheme of requests on this connector's connections.
    pub fn scheme(&self) -> Scheme {
        self.0.scheme()
    }

    /// A new connection to `addr` (unbounded: the pool applies its timeout).
    pub fn connect(&self, addr: SocketAddr) -> Connecting<'_> {
        self.0.connect(addr)
    }
}

impl Default for Connector {
    fn default() -> Self {
        Connector::tcp()
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
