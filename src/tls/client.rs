//! The outbound side: `ClientConfig`s for `mesh` and `simple` clusters and
//! the connect helper that hands back the server's identity.
//!
//! - `mesh`: this workload's SVID as client certificate (read from the
//!   store on each handshake), TLS 1.3, ALPN h2, and the server verified by
//!   [`MeshServerVerifier`]: chain to the bundle, then one of the expected
//!   SPIFFE IDs. No resumption, as on the inbound side.
//! - `simple`: ordinary TLS to a server outside the mesh, TLS 1.2 or 1.3,
//!   its name checked against `server_name`, roots from the `ca` file or
//!   else the system's. The system roots come from rustls-native-certs
//!   (the rustls project's; on Linux it reads the OpenSSL locations, and
//!   `SSL_CERT_FILE` / `SSL_CERT_DIR`, so a container's CA bundle is what
//!   is trusted, updated with the image rather than with Skiff).

use std::path::Path;
use std::sync::Arc;

use rustls::client::{ResolvesClientCert, Resumption};
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::certs::{self, CertError, Problem};
use super::failure::HandshakeError;
use super::verify::{verified_identity, MeshServerVerifier};
use super::{provider, TlsConfigError, ALPN_H2};
use crate::identity::{CredentialStore, Identity};

/// A cluster's TLS, as its connections are made: the rustls config and
/// whether the server's identity was verified by the mesh's rules (only
/// then is the SPIFFE ID in its certificate an identity).
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    /// The mesh identity, for a `mesh` cluster (`None` for `simple`).
    mesh: Option<Arc<CredentialStore>>,
}

impl ClientTls {
    /// A `mesh` cluster whose servers must be one of `expected`.
    pub fn mesh(
        store: Arc<CredentialStore>,
        expected: Vec<Identity>,
    ) -> Result<ClientTls, TlsConfigError> {
        Ok(ClientTls {
            config: mesh_client_config(store.clone(), expected)?,
            mesh: Some(store),
        })
    }

    /// A `simple` cluster: roots from `ca` (else the system's), ALPN `alpn`
    /// (empty: none offered).
    pub fn simple(ca: Option<&Path>, alpn: &[&[u8]]) -> Result<ClientTls, TlsConfigError> {
        Ok(ClientTls {
            config: simple_client_config(ca, alpn)?,
            mesh: None,
        })
    }

    /// The rustls config.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// Whether this is mesh mTLS.
    pub fn is_mesh(&self) -> bool {
        self.mesh.is_some()
    }
}

/// The `ClientConfig` of a `mesh` cluster whose servers must be one of
/// `expected`.
pub fn mesh_client_config(
    store: Arc<CredentialStore>,
    expected: Vec<Identity>,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let verifier = MeshServerVerifier::new(store.clone(), expected);
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CurrentClientCert(store)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Presents the store's current certificate.
#[derive(Debug)]
pub struct CurrentClientCert(pub Arc<CredentialStore>);

impl ResolvesClientCert for CurrentClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.certified_key().clone())
    }

    fn has_certs(&self) -> bool {
        self.0.current().is_some()
    }
}

/// The roots of a `simple` cluster: the PEM bundle at `ca`, or the
/// system's.
pub fn simple_roots(ca: Option<&Path>) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(file) => {
            let ders = certs::parse_certs(&certs::read(file)?, file)?;
            for (i, der) in ders.into_iter().enumerate() {
                roots.add(der).map_err(|e| {
                    CertError::new(
                        file,
                        Problem::Root {
                            index: i + 1,
                            why: e.to_string(),
                        },
                    )
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = match found.errors.first() {
                    Some(e) => e.to_string(),
                    None => "none found".to_string(),
                };
                return Err(TlsConfigError::NoSystemRoots(why));
            }
            for e in &found.errors {
                tracing::debug!(error = %e, "a system root store could not be read");
            }
        }
    }
    Ok(roots)
}

/// The `ClientConfig` of a `simple` cluster: roots from `ca` (else the
/// system's), ALPN `alpn` (empty: none offered).
pub fn simple_client_config(
    ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let roots = simple_roots(ca)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Run the client side of a handshake on `io` toward `server_name` (for
/// `simple`, the name checked and sent as SNI; for `mesh`, not checked,
/// and an IP address sends no SNI): the stream and, for `mesh`, the
/// server's verified identity (`None` for `simple`: a SPIFFE ID in an
/// outside server's certificate proves nothing).
pub async fn connect<IO>(
    tls: &ClientTls,
    server_name: ServerName<'static>,
    io: IO,
) -> Result<(TlsStream<IO>, Option<Identity>), HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    if tls.mesh.as_ref().is_some_and(|s| s.current().is_none()) {
        return Err(HandshakeError::no_identity());
    }
    let stream = TlsConnector::from(tls.config.clone())
        .connect(server_name, io)
        .await?;
    let peer = match tls.mesh {
        Some(_) => Some(verified_identity(stream.get_ref().1)?),
        None => None,
    };
    Ok((stream, peer))
}
