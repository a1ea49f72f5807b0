//! Certificates and keys from PEM files, and what X.509 says about them.
//!
//! PEM is read with rustls-pki-types (certificates; PKCS#8, SEC1 and PKCS#1
//! keys), fields with x509-cert. Everything that can be wrong with a file
//! is a [`CertError`] naming the file and the problem, so an operator reads
//! what to fix in one log line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

use crate::identity::{Identity, IdentityError};

/// A file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", file.display())]
pub struct CertError {
    pub file: PathBuf,
    pub problem: Problem,
}

/// What is wrong with a certificate, key or bundle file.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("cannot read: {0}")]
    Read(std::io::Error),
    #[error("not PEM, or cut short: {0}")]
    Pem(String),
    #[error("no CERTIFICATE in the file")]
    NoCertificate,
    #[error("no private key (PKCS#8, SEC1 or PKCS#1 PEM) in the file")]
    NoKey,
    #[error("the private key cannot be used: {0}")]
    Key(String),
    #[error("the private key does not match the certificate in {}", .0.display())]
    KeyMismatch(PathBuf),
    #[error("certificate {index} is not valid X.509: {why}")]
    Certificate { index: usize, why: String },
    #[error("the leaf certificate {0}")]
    SpiffeId(SpiffeIdError),
    #[error("certificate {index} ({subject}) expired at {}", rfc3339(*.not_after))]
    Expired {
        index: usize,
        subject: String,
        not_after: SystemTime,
    },
    #[error("certificate {index} ({subject}) is not valid before {}", rfc3339(*.not_before))]
    NotYetValid {
        index: usize,
        subject: String,
        not_before: SystemTime,
    },
    #[error("certificate {index} cannot be a trust root: {why}")]
    Root { index: usize, why: String },
}

/// Why a certificate has no SPIFFE ID: an X.509 SVID has exactly one URI
/// SAN, and it is a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("is not valid X.509: {0}")]
    Unparsable(String),
    #[error("has no URI SAN (an SVID carries its SPIFFE ID there)")]
    NoUri,
    #[error("has {0} URI SANs (an SVID has exactly one)")]
    SeveralUris(usize),
    #[error("has URI SAN {uri:?}, not a SPIFFE ID: {why}")]
    NotSpiffe { uri: String, why: IdentityError },
}

impl CertError {
    pub fn new(file: &Path, problem: Problem) -> Self {
        CertError {
            file: file.to_path_buf(),
            problem,
        }
    }
}

/// Read a whole file.
pub fn read(file: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(file).map_err(|e| CertError::new(file, Problem::Read(e)))
}

/// Every CERTIFICATE in `pem`, in order (leaf first for a chain); at least one.
pub fn parse_certs(pem: &[u8], file: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::new(file, pem_problem(e)))?;
    if certs.is_empty() {
        return Err(CertError::new(file, Problem::NoCertificate));
    }
    Ok(certs)
}

/// The first private key in `pem`: PKCS#8, SEC1 (`EC PRIVATE KEY`) or
/// PKCS#1 (`RSA PRIVATE KEY`).
pub fn parse_key(pem: &[u8], file: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        let problem = match e {
            pem::Error::NoItemsFound => Problem::NoKey,
            e => pem_problem(e),
        };
        CertError::new(file, problem)
    })
}

fn pem_problem(e: pem::Error) -> Problem {
    Problem::Pem(e.to_string())
}

/// The chain and its key as rustls serves them, once the key is known to
/// belong to the leaf.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<CertifiedKey>, CertError> {
    let signing = super::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::new(key_file, Problem::Key(e.to_string())))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(
            CertError::new(key_file, Problem::KeyMismatch(cert_file.to_path_buf())),
        ),
        Err(e) => Err(CertError::new(
            key_file,
            Problem::Key(format!("cannot check it against the certificate: {e}")),
        )),
    }
}

/// What Skiff reads of one certificate.
#[derive(Debug, Clone)]
pub struct CertFacts {
    /// The subject, RFC 4514 (`CN=payment,O=shop`).
    pub subject: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The SPIFFE ID, when the certificate is an SVID.
    pub spiffe_id: Result<Identity, SpiffeIdError>,
}

impl CertFacts {
    /// Parse `der`.
    pub fn of(der: &[u8]) -> Result<CertFacts, String> {
        let cert = x509_cert::Certificate::from_der(der).map_err(|e| e.to_string())?;
        let tbs = cert.tbs_certificate();
        let validity = tbs.validity();
        Ok(CertFacts {
            subject: tbs.subject().to_string(),
            not_before: unix(validity.not_before.to_unix_duration()),
            not_after: unix(validity.not_after.to_unix_duration()),
            spiffe_id: spiffe_id_of(&cert),
        })
    }

    /// Whether `now` is inside the validity period; `index` names the
    /// certificate in the error.
    pub fn check_validity(&self, index: usize, now: SystemTime) -> Result<(), Problem> {
        if now < self.not_before {
            return Err(Problem::NotYetValid {
                index,
                subject: self.subject.clone(),
                not_before: self.not_before,
            });
        }
        if now > self.not_after {
            return Err(Problem::Expired {
                index,
                subject: self.subject.clone(),
                not_after: self.not_after,
            });
        }
        Ok(())
    }

    /// The `/certs` view of this certificate.
    pub fn info(&self) -> CertInfo {
        CertInfo {
            subject: self.subject.clone(),
            spiffe_id: self.spiffe_id.as_ref().ok().map(|id| id.to_string()),
            not_before: rfc3339(self.not_before),
            not_after: rfc3339(self.not_after),
        }
    }
}

/// The facts of every certificate of a chain, leaf first; each one parses
/// and is valid at `now`.
pub fn chain_facts(
    chain: &[CertificateDer<'_>],
    file: &Path,
    now: SystemTime,
) -> Result<Vec<CertFacts>, CertError> {
    let mut all = Vec::with_capacity(chain.len());
    for (i, der) in chain.iter().enumerate() {
        let index = i + 1;
        let facts = CertFacts::of(der)
            .map_err(|why| CertError::new(file, Problem::Certificate { index, why }))?;
        facts
            .check_validity(index, now)
            .map_err(|p| CertError::new(file, p))?;
        all.push(facts);
    }
    Ok(all)
}

/// A certificate as `/certs` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// RFC 3339, UTC.
    pub not_before: String,
    pub not_after: String,
}

/// The SPIFFE ID of a DER certificate (a peer's leaf, after its chain was
/// verified).
pub fn spiffe_id(der: &[u8]) -> Result<Identity, SpiffeIdError> {
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| SpiffeIdError::Unparsable(e.to_string()))?;
    spiffe_id_of(&cert)
}

fn spiffe_id_of(cert: &x509_cert::Certificate) -> Result<Identity, SpiffeIdError> {
    let san = cert
        .tbs_certificate()
        .get_extension::<SubjectAltName>()
        .map_err(|e| SpiffeIdError::Unparsable(format!("subjectAltName: {e}")))?;
    let Some((_, SubjectAltName(names))) = san else {
        return Err(SpiffeIdError::NoUri);
    };
    let mut uris = names.iter().filter_map(|n| match n {
        GeneralName::UniformResourceIdentifier(u) => Some(u.as_str()),
        _ => None,
    });
    let uri = match (uris.next(), uris.count()) {
        (None, _) => return Err(SpiffeIdError::NoUri),
        (Some(u), 0) => u,
        (Some(_), more) => return Err(SpiffeIdError::SeveralUris(more + 1)),
    };
    Identity::parse(uri).map_err(|why| SpiffeIdError::NotSpiffe {
        uri: uri.to_string(),
        why,
    })
}

fn unix(since_epoch: Duration) -> SystemTime {
    UNIX_EPOCH + since_epoch
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
