//! Why a TLS handshake failed, as the `result` label of
//! `skiff_tls_handshakes_total` says it: from the verifier's refusal on the
//! side that decided, or from the alert on the side that was refused.
//!
//! The side that refuses knows the precise reason and logs it; the refused
//! side learns only the TLS alert, which is coarser (`certificate_expired`
//! for expired and not-yet-valid alike, `certificate_unknown` for Skiff's
//! own identity refusals, labelled `bad_certificate`).

use std::fmt;

use rustls::{AlertDescription, CertificateError, Error, InvalidMessage, OtherError};

/// Why a TLS handshake failed: the `result` label of
/// `skiff_tls_handshakes_total` (besides `success`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The peer's chain does not lead to a root of the bundle.
    UnknownCa,
    /// A certificate of the peer's chain has expired.
    Expired,
    /// A certificate of the peer's chain is not valid yet.
    NotYetValid,
    /// The peer's certificate is malformed, badly signed, or not for this
    /// use; also the peer's coarse answer when it refused ours.
    BadCertificate,
    /// The chain is good, but the SPIFFE ID is not one expected (or there is
    /// none); for `simple` TLS, the server name does not match.
    BadIdentity,
    /// The peer belongs to another trust domain: its chain leads to no root
    /// of ours and its SVID names another trust domain, or it chains to our
    /// roots but names a trust domain this side does not serve.
    ForeignTrustDomain,
    /// The client sent no certificate where one is required.
    NoCertificate,
    /// The peer spoke plaintext, not TLS.
    Plaintext,
    /// Anything else TLS refused: no common version, cipher or ALPN, a
    /// malformed message, an alert of another kind.
    Protocol,
    /// The connection failed or closed during the handshake.
    Io,
    /// The handshake took too long (set by the caller's timeout).
    Timeout,
    /// This side has no usable identity of its own to present (its SVID is
    /// missing or was never valid): refused before any handshake.
    NoIdentity,
}

impl HandshakeFailure {
    /// Every kind, for registering the metric's label values up front.
    pub const ALL: [HandshakeFailure; 12] = [
        HandshakeFailure::UnknownCa,
        HandshakeFailure::Expired,
        HandshakeFailure::NotYetValid,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::BadIdentity,
        HandshakeFailure::ForeignTrustDomain,
        HandshakeFailure::NoCertificate,
        HandshakeFailure::Plaintext,
        HandshakeFailure::Protocol,
        HandshakeFailure::Io,
        HandshakeFailure::Timeout,
        HandshakeFailure::NoIdentity,
    ];

    /// The metric label; stable.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::UnknownCa => "unknown_ca",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::NotYetValid => "not_yet_valid",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::BadIdentity => "bad_identity",
            HandshakeFailure::ForeignTrustDomain => "foreign_trust_domain",
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::Plaintext => "plaintext",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Io => "io",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::NoIdentity => "no_identity",
        }
    }

    /// The kind of a rustls error, whether this side decided it (a
    /// verifier's error) or the peer did (an alert received).
    pub fn of(err: &Error) -> HandshakeFailure {
        use CertificateError as C;
        match err {
            Error::InvalidCertificate(c) => match c {
                C::Other(OtherError(e)) => match e.downcast_ref::<Rejected>() {
                    Some(r) => r.kind,
                    None => HandshakeFailure::BadCertificate,
                },
                C::UnknownIssuer => HandshakeFailure::UnknownCa,
                C::Expired | C::ExpiredContext { .. } => HandshakeFailure::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => HandshakeFailure::NotYetValid,
                C::NotValidForName
                | C::NotValidForNameContext { .. }
                | C::ApplicationVerificationFailure => HandshakeFailure::BadIdentity,
                _ => HandshakeFailure::BadCertificate,
            },
            Error::NoCertificatesPresented => HandshakeFailure::NoCertificate,
            Error::AlertReceived(alert) => match alert {
                AlertDescription::UnknownCA => HandshakeFailure::UnknownCa,
                // Sent for expired and not-yet-valid alike.
                AlertDescription::CertificateExpired => HandshakeFailure::Expired,
                AlertDescription::CertificateRequired => HandshakeFailure::NoCertificate,
                AlertDescription::AccessDenied => HandshakeFailure::BadIdentity,
                AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::DecryptError => HandshakeFailure::BadCertificate,
                _ => HandshakeFailure::Protocol,
            },
            Error::InvalidMessage(InvalidMessage::InvalidContentType) => {
                HandshakeFailure::Plaintext
            }
            _ => HandshakeFailure::Protocol,
        }
    }

    /// The kind of an IO error from a tokio-rustls handshake: the rustls
    /// error inside it, else a failed connection.
    pub fn of_io(err: &std::io::Error) -> HandshakeFailure {
        match err.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
            Some(e) => HandshakeFailure::of(e),
            None if err.kind() == std::io::ErrorKind::InvalidData => HandshakeFailure::Protocol,
            None => HandshakeFailure::Io,
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A handshake that failed, its kind and the error that says why.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed ({kind}): {source}")]
pub struct HandshakeError {
    pub kind: HandshakeFailure,
    #[source]
    pub source: std::io::Error,
}

impl HandshakeError {
    /// The refusal of a handshake this side cannot make: no identity of
    /// its own is loaded.
    pub fn no_identity() -> HandshakeError {
        HandshakeError {
            kind: HandshakeFailure::NoIdentity,
            source: std::io::Error::other(
                "no usable identity of this workload is loaded (see /ready)",
            ),
        }
    }
}

impl From<std::io::Error> for HandshakeError {
    fn from(source: std::io::Error) -> Self {
        HandshakeError {
            kind: HandshakeFailure::of_io(&source),
            source,
        }
    }
}

/// A peer certificate refused by Skiff's own checks after webpki passed it
/// (or, for [`HandshakeFailure::ForeignTrustDomain`], an unknown issuer
/// explained by the trust domain the leaf names).
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct Rejected {
    pub kind: HandshakeFailure,
    pub detail: String,
}
