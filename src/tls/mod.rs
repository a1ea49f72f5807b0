//! TLS with rustls: mesh mTLS between sidecars (SPIFFE identities checked
//! inside the handshake), edge termination for clients outside the mesh, and
//! ordinary TLS toward servers outside it.
//!
//! - [`certs`]: PEM certificates and keys read from files, and what X.509
//!   says about them (SPIFFE ID, subject, validity).
//! - [`verify`]: the mesh's verifiers, chain first and identity second.
//! - [`failure`]: why a handshake failed ([`HandshakeFailure`]), the label
//!   of `skiff_tls_handshakes_total{result}`.
//! - [`server`]: the mesh inbound `ServerConfig` and the accept helper.
//! - [`terminate`]: the edge `ServerConfig`, a default certificate and more
//!   chosen by SNI.
//! - [`client`]: `ClientConfig`s for `mesh` and `simple` clusters and the
//!   connect helper.
//!
//! Certificates are read through resolvers that look at the current set on
//! every handshake, so a rotation needs no config rebuilt; connections
//! already up keep what they negotiated.
//!
//! The crypto provider is ring (BENCHMARKS.md, "TLS crypto provider"); every
//! config here is built on [`provider`].

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub mod certs;
pub mod client;
pub mod connector;
pub mod failure;
pub mod server;
pub mod terminate;
pub mod verify;

#[cfg(test)]
pub(crate) mod tests;

pub use certs::CertError;
pub use failure::{HandshakeError, HandshakeFailure};

/// ALPN id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The one crypto provider every TLS config of Skiff is built on.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Why a TLS config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error("no usable root certificate among the system's ({0})")]
    NoSystemRoots(String),
}
