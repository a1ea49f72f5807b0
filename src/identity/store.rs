//! This workload's credentials: its X.509 SVID (chain and key) and the
//! trust bundle, read from the files SPIRE's spiffe-helper or cert-manager's
//! csi-driver-spiffe write, and swapped atomically when they change.
//!
//! A set is validated whole before it is used: the key belongs to the leaf,
//! the leaf carries exactly one SPIFFE ID, every certificate of the chain is
//! valid now, the bundle holds at least one usable root. A reload that
//! fails on any of these keeps the set in use, so a half-written file or a
//! key written before its certificate changes nothing. Handshakes read the
//! current set each time ([`CredentialStore::current`]); connections
//! already up keep the certificate they were made with.
//!
//! A proxy may start before its SVID is there (spiffe-helper writes it
//! once the SPIRE agent answers): the store then holds no set, handshakes
//! that need one fail, and [`CredentialStore::problem`] says why until the
//! watch loads one. `/ready` reads that, and also fails once the loaded
//! certificate has lapsed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::Identity;
use crate::file_watch::FileWatch;
use crate::tls::certs::{self, CertError, CertFacts, CertInfo, Problem};

/// Where the credentials are read from (`tls.cert`, `tls.key`, `tls.ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialPaths {
    /// The SVID chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key: PKCS#8, SEC1 or PKCS#1 PEM.
    pub key: PathBuf,
    /// The trust bundle: one or more root certificates.
    pub ca: PathBuf,
}

/// One validated set of credentials.
pub struct Credentials {
    identity: Identity,
    certified_key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    client_chain: Arc<dyn ClientCertVerifier>,
    view: CertsView,
    expiry: SystemTime,
}

/// What `GET /certs` shows of the loaded credentials.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertsView {
    /// This workload's SPIFFE ID.
    pub identity: String,
    /// The chain this workload presents, leaf first.
    pub cert_chain: Vec<CertInfo>,
    /// The roots peers' chains are checked against.
    pub trust_bundle: Vec<CertInfo>,
}

impl Credentials {
    /// Validate a set from the files' contents at `now`; `paths` name the
    /// files in errors.
    pub fn from_pem(
        paths: &CredentialPaths,
        cert: &[u8],
        key: &[u8],
        ca: &[u8],
        now: SystemTime,
    ) -> Result<Credentials, CertError> {
        let chain = certs::parse_certs(cert, &paths.cert)?;
        let facts = certs::chain_facts(&chain, &paths.cert, now)?;
        let leaf = facts
            .first()
            .ok_or_else(|| CertError::new(&paths.cert, Problem::NoCertificate))?;
        let identity = leaf
            .spiffe_id
            .clone()
            .map_err(|e| CertError::new(&paths.cert, Problem::SpiffeId(e)))?;
        let expiry = leaf.not_after;
        let key_der = certs::parse_key(key, &paths.key)?;
        let certified_key = certs::certified_key(chain, key_der, &paths.cert, &paths.key)?;
        let (roots, root_facts) = bundle(ca, &paths.ca)?;
        let roots = Arc::new(roots);
        let client_chain =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), crate::tls::provider())
                .build()
                .map_err(|e| {
                    CertError::new(
                        &paths.ca,
                        Problem::Root {
                            index: 1,
                            why: e.to_string(),
                        },
                    )
                })?;
        let view = CertsView {
            identity: identity.to_string(),
            cert_chain: facts.iter().map(CertFacts::info).collect(),
            trust_bundle: root_facts.iter().map(CertFacts::info).collect(),
        };
        Ok(Credentials {
            identity,
            certified_key,
            roots,
            client_chain,
            view,
            expiry,
        })
    }

    /// Read and validate the files at `paths`.
    pub fn load(paths: &CredentialPaths) -> Result<Credentials, CertError> {
        let cert = certs::read(&paths.cert)?;
        let key = certs::read(&paths.key)?;
        let ca = certs::read(&paths.ca)?;
        Credentials::from_pem(paths, &cert, &key, &ca, SystemTime::now())
    }

    /// This workload's SPIFFE ID.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The chain and key presented in handshakes.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// The trust bundle.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// webpki's check of a client chain against this bundle (built once
    /// per set, used by the inbound verifier).
    pub fn client_chain_verifier(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.client_chain
    }

    /// When the leaf lapses.
    pub fn expiry(&self) -> SystemTime {
        self.expiry
    }

    /// When the leaf lapses, in seconds since the Unix epoch (the
    /// `skiff_tls_cert_expiry_timestamp_seconds` gauge).
    pub fn expiry_unix_seconds(&self) -> u64 {
        certs::unix_seconds(self.expiry)
    }

    /// What `/certs` shows.
    pub fn view(&self) -> &CertsView {
        &self.view
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

/// The roots of a bundle file, each one a usable trust anchor.
fn bundle(pem: &[u8], file: &Path) -> Result<(RootCertStore, Vec<CertFacts>), CertError> {
    let ders: Vec<CertificateDer<'static>> = certs::parse_certs(pem, file)?;
    let mut roots = RootCertStore::empty();
    let mut facts = Vec::with_capacity(ders.len());
    for (i, der) in ders.into_iter().enumerate() {
        let index = i + 1;
        let f = CertFacts::of(&der)
            .map_err(|why| CertError::new(file, Problem::Certificate { index, why }))?;
        roots.add(der).map_err(|e| {
            CertError::new(
                file,
                Problem::Root {
                    index,
                    why: e.to_string(),
                },
            )
        })?;
        facts.push(f);
    }
    Ok((roots, facts))
}

/// The current credentials, swapped whole on reload; none while no usable
/// set has been read yet.
pub struct CredentialStore {
    paths: CredentialPaths,
    current: ArcSwapOption<Credentials>,
    /// What the files held at the last attempt to load them (`None`: not
    /// readable), so the watch knows what it has already tried.
    tried: Mutex<[Option<Vec<u8>>; 3]>,
    /// Why the last attempt failed, while no set is loaded.
    failure: Mutex<Option<String>>,
}

impl CredentialStore {
    /// Load the files; an error here is a configuration that cannot start.
    pub fn load(paths: CredentialPaths) -> Result<CredentialStore, CertError> {
        let store = CredentialStore::empty(paths);
        store.reload()?;
        Ok(store)
    }

    /// Load the files if they hold a usable set, else start without one
    /// (the error says why) and let [`watch`](Self::watch) load it later.
    pub fn start(paths: CredentialPaths) -> (CredentialStore, Option<CertError>) {
        let store = CredentialStore::empty(paths);
        let error = store.reload().err();
        (store, error)
    }

    fn empty(paths: CredentialPaths) -> CredentialStore {
        CredentialStore {
            paths,
            current: ArcSwapOption::empty(),
            tried: Mutex::new([None, None, None]),
            failure: Mutex::new(None),
        }
    }

    /// The set in use now, what a handshake starting now presents and
    /// verifies against; `None` while no usable set has been read.
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.current.load_full()
    }

    /// Why this workload has no usable identity at `now`, or `None` when it
    /// has one: no set loaded yet (and what was wrong with the files), or
    /// the loaded certificate has lapsed.
    pub fn problem(&self, now: SystemTime) -> Option<String> {
        match self.current() {
            Some(c) if c.expiry() <= now => Some(format!(
                "the certificate in {} expired at {}; waiting for a new one",
                self.paths.cert.display(),
                humantime::format_rfc3339_seconds(c.expiry())
            )),
            Some(_) => None,
            None => Some(
                lock(&self.failure)
                    .clone()
                    .unwrap_or_else(|| "no SVID loaded yet".to_string()),
            ),
        }
    }

    /// The files read.
    pub fn paths(&self) -> &CredentialPaths {
        &self.paths
    }

    /// Re-read the files and swap the new set in; on any error the set in
    /// use stays and the error names the file and what is wrong.
    pub fn reload(&self) -> Result<Arc<Credentials>, CertError> {
        let files = [&self.paths.cert, &self.paths.key, &self.paths.ca];
        let read = files.map(std::fs::read);
        *lock(&self.tried) = read.each_ref().map(|r| r.as_ref().ok().cloned());
        let loaded = match read {
            [Ok(cert), Ok(key), Ok(ca)] => {
                Credentials::from_pem(&self.paths, &cert, &key, &ca, SystemTime::now())
            }
            [cert, key, ca] => Err([cert, key, ca]
                .into_iter()
                .zip(files)
                .find_map(|(r, p)| r.err().map(|e| CertError::new(p, Problem::Read(e))))
                .unwrap_or_else(|| CertError::new(&self.paths.cert, Problem::NoCertificate))),
        };
        match loaded {
            Ok(next) => {
                let next = Arc::new(next);
                self.current.store(Some(next.clone()));
                *lock(&self.failure) = None;
                Ok(next)
            }
            Err(e) => {
                *lock(&self.failure) = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Re-read the files whenever one changes (polled as the config file is,
    /// symlink swaps included), forever. `report` sees each reload's result,
    /// to log and count it; the store keeps the old set on an error.
    pub async fn watch(
        &self,
        every: Duration,
        mut report: impl FnMut(&Result<Arc<Credentials>, CertError>),
    ) {
        let paths = [&self.paths.cert, &self.paths.key, &self.paths.ca];
        let mut files = FileWatch::new(paths.map(|p| p.to_path_buf())).every(every);
        // Files replaced between the last load and the watch's first read
        // (a file missing for a moment is no change, as for the watch).
        let now = paths.map(|p| std::fs::read(p).ok());
        let tried = lock(&self.tried).clone();
        if now.iter().zip(&tried).any(|(n, t)| n.is_some() && n != t) {
            report(&self.reload());
        }
        loop {
            files.changed().await;
            report(&self.reload());
        }
    }
}

/// The guarded value, also after a panic elsewhere poisoned the lock (the
/// values here are replaced whole, never left half-written).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialStore")
            .field("paths", self.paths())
            .finish_non_exhaustive()
    }
}

/// The usual report of a reload: info when it took, warn when refused.
pub fn log_reload(result: &Result<Arc<Credentials>, CertError>) {
    match result {
        Ok(c) => tracing::info!(
            identity = %c.identity(),
            expiry = %humantime::format_rfc3339_seconds(c.expiry()),
            "TLS credentials reloaded"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "TLS credentials refused; the ones in use stay"
        ),
    }
}

#[cfg(test)]
mod tests;
