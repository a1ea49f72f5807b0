//! The mesh inbound side: a `ServerConfig` for `strict` and `permissive`
//! listeners, and the accept helper that hands back the peer's identity.
//!
//! TLS 1.3 only (every peer is a Skiff or another mesh proxy), a client
//! certificate required ([`MeshClientVerifier`]), ALPN h2 and http/1.1,
//! and this workload's certificate read from the store on each handshake.
//! Session resumption is off: a resumed session would skip the chain check
//! against the bundle in use now, and sidecar connections live long enough
//! that a full handshake each is cheap.

use std::sync::Arc;

use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::failure::HandshakeError;
use super::terminate::{terminate_server_config, EdgeCerts};
use super::verify::{verified_identity, MeshClientVerifier};
use super::{provider, TlsConfigError, ALPN_H2, ALPN_HTTP11};
use crate::identity::{CredentialStore, Identity};

/// The `ServerConfig` of a mesh inbound listener.
pub fn mesh_server_config(
    store: Arc<CredentialStore>,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(MeshClientVerifier::new(store.clone())))
        .with_cert_resolver(Arc::new(CurrentCert(store)));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Serves the store's current certificate: a rotation is seen by the next
/// handshake, with no config rebuilt.
#[derive(Debug)]
pub struct CurrentCert(pub Arc<CredentialStore>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.certified_key().clone())
    }
}

/// A listener's TLS, as its connections are accepted: the rustls config
/// and whether clients are verified by the mesh's rules (only then is the
/// SPIFFE ID in their certificate an identity).
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    /// The mesh identity, for a mesh listener (`None` at the edge).
    mesh: Option<Arc<CredentialStore>>,
}

impl ServerTls {
    /// A `strict` or `permissive` mesh listener.
    pub fn mesh(store: Arc<CredentialStore>) -> Result<ServerTls, TlsConfigError> {
        Ok(ServerTls {
            config: mesh_server_config(store.clone())?,
            mesh: Some(store),
        })
    }

    /// An edge (`terminate`) listener.
    pub fn terminate(certs: Arc<EdgeCerts>) -> Result<ServerTls, TlsConfigError> {
        Ok(ServerTls {
            config: terminate_server_config(certs)?,
            mesh: None,
        })
    }

    /// The rustls config.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// Whether this is mesh mTLS.
    pub fn is_mesh(&self) -> bool {
        self.mesh.is_some()
    }
}

/// Run the server side of a handshake on `io`: the stream and, for a mesh
/// listener, the client's verified identity (`None` at the edge, which
/// asks for no client certificate). The negotiated ALPN is on the stream
/// (`stream.get_ref().1.alpn_protocol()`).
pub async fn accept<IO>(
    tls: &ServerTls,
    io: IO,
) -> Result<(TlsStream<IO>, Option<Identity>), HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    if tls.mesh.as_ref().is_some_and(|s| s.current().is_none()) {
        return Err(HandshakeError::no_identity());
    }
    let stream = TlsAcceptor::from(tls.config.clone()).accept(io).await?;
    let peer = match tls.mesh {
        Some(_) => Some(verified_identity(stream.get_ref().1)?),
        None => None,
    };
    Ok((stream, peer))
}
