//! Edge TLS (`tls.mode: terminate`): clients outside the mesh, TLS 1.2 and
//! 1.3, ALPN h2 and http/1.1, no client certificate. A default certificate
//! plus more chosen by SNI, all re-read together when a file changes; a set
//! where any file is bad is refused whole and the one in use stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::certs::{self, CertError, CertInfo};
use super::{provider, TlsConfigError, ALPN_H2, ALPN_HTTP11};
use crate::file_watch::FileWatch;

/// A certificate chain file and its key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate served to clients asking for one of `domains` by SNI:
/// exact names (any case) or `*.example.com`, which matches one label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCert {
    pub domains: Vec<String>,
    pub files: CertKeyPaths,
}

/// One loaded set.
struct EdgeSet {
    default: Arc<CertifiedKey>,
    by_name: Vec<(String, Arc<CertifiedKey>)>,
    view: Vec<EdgeCertView>,
}

/// What `/certs` shows of one edge certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EdgeCertView {
    /// The SNI names it serves; empty for the default.
    pub domains: Vec<String>,
    pub cert_chain: Vec<CertInfo>,
}

/// The edge certificates in use, swapped whole on reload.
pub struct EdgeCerts {
    default: CertKeyPaths,
    sni: Vec<SniCert>,
    current: ArcSwap<EdgeSet>,
}

impl std::fmt::Debug for EdgeCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeCerts")
            .field("default", &self.default)
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

fn load_one(
    files: &CertKeyPaths,
    now: SystemTime,
) -> Result<(Arc<CertifiedKey>, Vec<CertInfo>), CertError> {
    let chain = certs::parse_certs(&certs::read(&files.cert)?, &files.cert)?;
    let facts = certs::chain_facts(&chain, &files.cert, now)?;
    let key = certs::parse_key(&certs::read(&files.key)?, &files.key)?;
    let ck = certs::certified_key(chain, key, &files.cert, &files.key)?;
    Ok((ck, facts.iter().map(|f| f.info()).collect()))
}

fn load_set(default: &CertKeyPaths, sni: &[SniCert]) -> Result<EdgeSet, CertError> {
    let now = SystemTime::now();
    let (default_key, chain) = load_one(default, now)?;
    let mut view = vec![EdgeCertView {
        domains: Vec::new(),
        cert_chain: chain,
    }];
    let mut by_name = Vec::new();
    for s in sni {
        let (key, chain) = load_one(&s.files, now)?;
        for d in &s.domains {
            by_name.push((d.to_ascii_lowercase(), key.clone()));
        }
        view.push(EdgeCertView {
            domains: s.domains.clone(),
            cert_chain: chain,
        });
    }
    Ok(EdgeSet {
        default: default_key,
        by_name,
        view,
    })
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == name,
    }
}

impl EdgeCerts {
    /// Load the default certificate and the SNI ones.
    pub fn load(default: CertKeyPaths, sni: Vec<SniCert>) -> Result<EdgeCerts, CertError> {
        let set = load_set(&default, &sni)?;
        Ok(EdgeCerts {
            default,
            sni,
            current: ArcSwap::from_pointee(set),
        })
    }

    /// Re-read every file; on any error the set in use stays.
    pub fn reload(&self) -> Result<(), CertError> {
        let set = load_set(&self.default, &self.sni)?;
        self.current.store(Arc::new(set));
        Ok(())
    }

    /// The certificate for a client that asked for `sni` (exact names
    /// before wildcards, else the default).
    pub fn resolve(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let set = self.current.load();
        if let Some(name) = sni.map(str::to_ascii_lowercase) {
            let exact = set.by_name.iter().find(|(p, _)| *p == name);
            let wild = || set.by_name.iter().find(|(p, _)| matches(p, &name));
            if let Some((_, key)) = exact.or_else(wild) {
                return key.clone();
            }
        }
        set.default.clone()
    }

    /// What `/certs` shows: the default first, then the SNI certificates.
    pub fn view(&self) -> Vec<EdgeCertView> {
        self.current.load().view.clone()
    }

    /// Every file read.
    pub fn files(&self) -> Vec<PathBuf> {
        std::iter::once(&self.default)
            .chain(self.sni.iter().map(|s| &s.files))
            .flat_map(|f| [f.cert.clone(), f.key.clone()])
            .collect()
    }

    /// Re-read the files whenever one changes, forever; `report` sees each
    /// reload's result.
    pub async fn watch(&self, every: Duration, mut report: impl FnMut(&Result<(), CertError>)) {
        let mut files = FileWatch::new(self.files()).every(every);
        loop {
            files.changed().await;
            report(&self.reload());
        }
    }
}

/// Resolves from [`EdgeCerts`] by SNI.
#[derive(Debug)]
pub struct EdgeResolver(pub Arc<EdgeCerts>);

impl ResolvesServerCert for EdgeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.resolve(hello.server_name()))
    }
}

/// The `ServerConfig` of an edge (`terminate`) listener.
pub fn terminate_server_config(certs: Arc<EdgeCerts>) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(EdgeResolver(certs)));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn wildcards_match_one_label() {
        assert!(matches("api.shop.example", "api.shop.example"));
        assert!(matches("*.shop.example", "api.shop.example"));
        assert!(!matches("*.shop.example", "shop.example"));
        assert!(!matches("*.shop.example", "a.b.shop.example"));
        assert!(!matches("*.shop.example", ".shop.example"));
    }
}
