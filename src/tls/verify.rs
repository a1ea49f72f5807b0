//! The mesh's certificate verifiers, and why a handshake failed.
//!
//! webpki checks chains, not URI SANs, so both verifiers run in two steps,
//! as ztunnel's `IdentityVerifier` does: first the chain against the trust
//! bundle (signatures, validity, key usage), then the SPIFFE ID of the
//! verified leaf. A chain failure is reported as such and never reaches the
//! identity step, so a broken chain cannot pass for, or hide behind, a name
//! mismatch. Both read the bundle in use at handshake time: a root added
//! to the bundle is trusted from the next handshake on, a removed one no
//! longer.
//!
//! Refusals of Skiff's own (identity, trust domain) travel through rustls
//! as `CertificateError::Other(Rejected)`, so that
//! [`HandshakeFailure::of`](super::failure::HandshakeFailure::of) can label
//! them.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, Error, OtherError,
    SignatureScheme,
};

use super::certs::{self, SpiffeIdError};
use super::failure::{HandshakeError, HandshakeFailure, Rejected};
use super::provider;
use crate::identity::{CredentialStore, Identity};

/// Refused for want of this workload's own credentials (none loaded yet).
fn no_identity() -> Error {
    reject(
        HandshakeFailure::NoIdentity,
        "no usable identity of this workload is loaded".to_string(),
    )
}

fn reject(kind: HandshakeFailure, detail: String) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Rejected {
        kind,
        detail,
    }))))
}

/// A chain error as it goes back to rustls: unchanged (so the alert sent
/// is the precise one), except an unknown issuer whose leaf names a trust
/// domain not in `domains`, which says so.
fn chain_error(err: Error, leaf: &CertificateDer<'_>, domains: &[&str]) -> Error {
    if !matches!(
        err,
        Error::InvalidCertificate(CertificateError::UnknownIssuer)
    ) {
        return err;
    }
    match certs::spiffe_id(leaf) {
        Ok(id) if !domains.contains(&id.trust_domain()) => reject(
            HandshakeFailure::ForeignTrustDomain,
            format!(
                "certificate chain not trusted (unknown issuer); it names {id}, of trust domain {}, not {}",
                id.trust_domain(),
                domains.join(", ")
            ),
        ),
        _ => err,
    }
}

/// The SPIFFE ID of a leaf whose chain was verified, or the refusal.
fn leaf_identity(leaf: &CertificateDer<'_>) -> Result<Identity, Error> {
    certs::spiffe_id(leaf).map_err(|e: SpiffeIdError| {
        reject(
            HandshakeFailure::BadIdentity,
            format!("the peer's certificate {e}"),
        )
    })
}

/// The identity of a connection's peer: the SPIFFE ID of the leaf it
/// presented. An identity only once a mesh verifier accepted that leaf;
/// `None` when the peer presented no certificate or it is no SVID.
pub fn peer_identity(conn: &CommonState) -> Option<Identity> {
    let leaf = conn.peer_certificates()?.first()?;
    certs::spiffe_id(leaf).ok()
}

/// The peer identity after a mesh handshake, where the verifier made sure
/// there is one; its absence is a refusal, not a peer without identity.
pub fn verified_identity(conn: &CommonState) -> Result<Identity, HandshakeError> {
    peer_identity(conn).ok_or_else(|| HandshakeError {
        kind: HandshakeFailure::BadIdentity,
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the mesh peer presented no SPIFFE ID",
        ),
    })
}

/// Outbound `mesh` clusters: the server's chain must lead to the bundle,
/// then its SPIFFE ID must be one of `expected`. The server name is not
/// checked: mesh peers are named by SPIFFE ID, not DNS.
pub struct MeshServerVerifier {
    store: Arc<CredentialStore>,
    expected: Arc<[Identity]>,
}

impl MeshServerVerifier {
    /// Accept the servers whose SVID is one of `expected` (none: refuse all).
    pub fn new(store: Arc<CredentialStore>, expected: impl Into<Arc<[Identity]>>) -> Self {
        MeshServerVerifier {
            store,
            expected: expected.into(),
        }
    }

    fn domains(&self) -> Vec<&str> {
        let mut d: Vec<&str> = self.expected.iter().map(Identity::trust_domain).collect();
        d.sort_unstable();
        d.dedup();
        d
    }
}

impl fmt::Debug for MeshServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshServerVerifier")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let creds = self.store.current().ok_or_else(no_identity)?;
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            creds.roots(),
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )
        .map_err(|e| chain_error(e, end_entity, &self.domains()))?;
        let id = leaf_identity(end_entity)?;
        if self.expected.contains(&id) {
            return Ok(ServerCertVerified::assertion());
        }
        let kind = if self.domains().contains(&id.trust_domain()) {
            HandshakeFailure::BadIdentity
        } else {
            HandshakeFailure::ForeignTrustDomain
        };
        let expected: Vec<&str> = self.expected.iter().map(Identity::as_str).collect();
        Err(reject(
            kind,
            format!(
                "the server is {id}, expected {}",
                if expected.is_empty() {
                    "no identity (none configured)".to_string()
                } else {
                    expected.join(" or ")
                }
            ),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        signatures::tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        signatures::tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures::schemes()
    }
}

/// Inbound `strict` and `permissive` listeners: a client certificate is
/// required, its chain must lead to the bundle, and its SPIFFE ID must be
/// of this workload's trust domain. Which identities may do what is for
/// authorization to decide, after the handshake.
pub struct MeshClientVerifier {
    store: Arc<CredentialStore>,
}

impl MeshClientVerifier {
    pub fn new(store: Arc<CredentialStore>) -> Self {
        MeshClientVerifier { store }
    }
}

impl fmt::Debug for MeshClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshClientVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: the bundle changes under a `&self` that must outlive the
    /// answer, and a mesh client has one certificate to send anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let creds = self.store.current().ok_or_else(no_identity)?;
        let domain = creds.identity().trust_domain();
        creds
            .client_chain_verifier()
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| chain_error(e, end_entity, &[domain]))?;
        let id = leaf_identity(end_entity)?;
        if id.trust_domain() != domain {
            return Err(reject(
                HandshakeFailure::ForeignTrustDomain,
                format!("the client is {id}, not of trust domain {domain}"),
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        signatures::tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        signatures::tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures::schemes()
    }
}

/// The handshake signature checks both mesh verifiers make the same way:
/// with the provider's algorithms.
mod signatures {
    use rustls::client::danger::HandshakeSignatureValid;
    use rustls::pki_types::CertificateDer;
    use rustls::{DigitallySignedStruct, Error, SignatureScheme};

    use super::provider;

    pub(super) fn tls12(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    pub(super) fn tls13(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    pub(super) fn schemes() -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
