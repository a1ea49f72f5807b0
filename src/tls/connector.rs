//! The TLS connector of a cluster with `tls` ([`crate::upstream::Connect`]):
//! TCP, then the client side of mesh mTLS or simple TLS on it; requests on
//! its connections say `https`.

use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::Scheme;
use rustls::pki_types::ServerName;

use super::client::{self, ClientTls};
use super::{ALPN_H2, ALPN_HTTP11};
use crate::config::{self, ClusterTlsMode, UpstreamProtocol};
use crate::identity::{CredentialStore, Identity};
use crate::metrics::Metrics;
use crate::upstream::connect::{BoxedIo, Connect, Connecting, Tcp};
use crate::upstream::{Connector, UpstreamError};

/// Connects with TLS: mesh (the peer's SPIFFE ID checked against the
/// cluster's `identities`) or simple (the server checked for `server_name`).
pub struct TlsConnector {
    tls: ClientTls,
    /// `simple`: the name checked and sent as SNI; `mesh`: none (the
    /// endpoint's IP is given, which sends no SNI and is not checked).
    server_name: Option<ServerName<'static>>,
    cluster: Arc<str>,
    metrics: Metrics,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("cluster", &self.cluster)
            .field("mesh", &self.tls.is_mesh())
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The connector a cluster's `tls` asks for: plain TCP without it (or with
/// `mode: disabled`). An error says why the TLS settings cannot be used
/// (no mesh identity, an unreadable `ca`).
pub fn for_cluster(
    c: &config::Cluster,
    mesh: Option<&Arc<CredentialStore>>,
    metrics: &Metrics,
) -> Result<Connector, String> {
    let Some(t) = &c.tls else {
        return Ok(Connector::tcp());
    };
    let (tls, server_name) = match t.mode {
        ClusterTlsMode::Disabled => return Ok(Connector::tcp()),
        ClusterTlsMode::Mesh => {
            let store = mesh.ok_or("tls.mode mesh needs the top-level tls identity")?;
            let expected = t
                .identities
                .iter()
                .map(|id| Identity::parse(id).map_err(|e| format!("identity {id:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let tls = ClientTls::mesh(store.clone(), expected).map_err(|e| e.to_string())?;
            (tls, None)
        }
        ClusterTlsMode::Simple => {
            let name = t
                .server_name
                .as_deref()
                .ok_or("tls.mode simple needs server_name")?;
            let name = ServerName::try_from(name.to_owned())
                .map_err(|e| format!("server_name {name:?}: {e}"))?;
            let alpn: &[&[u8]] = match c.protocol {
                UpstreamProtocol::Http2 => &[ALPN_H2],
                UpstreamProtocol::Http1 => &[ALPN_HTTP11],
                UpstreamProtocol::Auto => &[],
            };
            let ca = t.ca.as_deref().map(std::path::Path::new);
            let tls = ClientTls::simple(ca, alpn).map_err(|e| e.to_string())?;
            (tls, Some(name))
        }
    };
    Ok(Connector::new(TlsConnector {
        tls,
        server_name,
        cluster: c.name.as_str().into(),
        metrics: metrics.clone(),
    }))
}

impl TlsConnector {
    async fn handshake(&self, addr: SocketAddr) -> Result<BoxedIo, UpstreamError> {
        let tcp = Tcp::connect(addr).await?;
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::from(addr.ip()));
        match client::connect(&self.tls, name, tcp).await {
            Ok((stream, _)) => {
                self.metrics
                    .tls_handshake("outbound", &self.cluster, "success");
                Ok(Box::new(stream))
            }
            Err(e) => {
                let label = e.kind.label();
                self.metrics.tls_handshake("outbound", &self.cluster, label);
                tracing::info!(cluster = %self.cluster, %addr, reason = label, error = %e, "upstream TLS handshake failed");
                Err(UpstreamError::Handshake {
                    addr,
                    reason: format!("TLS ({label}): {}", e.source),
                })
            }
        }
    }
}

impl Connect for TlsConnector {
    fn scheme(&self) -> Scheme {
        Scheme::HTTPS
    }

    fn connect(&self, addr: SocketAddr) -> Connecting<'_> {
        Box::pin(self.handshake(addr))
    }
}
