//! Certificate authorities and X.509 SVIDs minted in the tests (rcgen,
//! ECDSA P-256 as SPIRE and istiod issue them): a root per trust domain,
//! intermediates, leaves with any SANs and validity, written to files as
//! `tls.cert` / `tls.key` / `tls.ca` expect them.
//!
//! Used by the integration tests (`mod support;`) and by the unit tests in
//! `src/` (`#[path]`), so it depends on nothing of Skiff's.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const HOUR: Duration = Duration::from_secs(3600);

fn time(t: SystemTime) -> anyhow::Result<time::OffsetDateTime> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    Ok(time::OffsetDateTime::from_unix_timestamp(secs)?)
}

/// A CA: a root of `trust_domain`, or an intermediate below one.
pub struct TestCa {
    pub trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// This CA's certificate (PEM).
    #[allow(dead_code)]
    pub cert_pem: String,
    /// The root's certificate (PEM): what goes in a trust bundle.
    pub root_pem: String,
    /// The intermediates from this CA up to the root, this one first (PEM;
    /// empty for a root): what a leaf's chain carries after the leaf.
    above: Vec<String>,
}

/// What a leaf certificate says.
pub struct Leaf {
    /// URI SANs; an SVID has one, `spiffe://…`.
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The key to certify (PKCS#8 PEM); `None`: a new P-256 key.
    pub key_pkcs8_pem: Option<String>,
}

impl Leaf {
    /// An SVID for `id`, valid from an hour ago for a day.
    pub fn svid(id: &str) -> Leaf {
        let now = SystemTime::now();
        Leaf {
            uris: vec![id.to_string()],
            dns: Vec::new(),
            not_before: now - HOUR,
            not_after: now + 24 * HOUR,
            key_pkcs8_pem: None,
        }
    }

    /// A server certificate for the DNS names `dns` (the first is also its
    /// common name), valid from an hour ago for a day: what an edge
    /// listener or an HTTPS server outside the mesh presents.
    pub fn server(dns: &[&str]) -> Leaf {
        let now = SystemTime::now();
        Leaf {
            uris: Vec::new(),
            dns: dns.iter().map(|d| d.to_string()).collect(),
            not_before: now - HOUR,
            not_after: now + 24 * HOUR,
            key_pkcs8_pem: None,
        }
    }

    /// The same, valid from `not_before` to `not_after`.
    pub fn valid(mut self, not_before: SystemTime, not_after: SystemTime) -> Leaf {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
}

/// A leaf certificate, its chain and its key.
#[derive(Clone)]
pub struct Svid {
    /// The chain, leaf first (PEM).
    pub chain_pem: String,
    /// The leaf's key, PKCS#8 PEM.
    pub key_pem: String,
}

/// The three files of a workload's credentials.
#[derive(Debug, Clone)]
pub struct SvidFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TestCa {
    /// A new root CA for `trust_domain`, named `<trust domain> root <n>`
    /// (a name of its own: webpki tells a root it does not know from one
    /// of the same name whose signature fails).
    pub fn root(trust_domain: &str) -> anyhow::Result<TestCa> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(&format!("{trust_domain} root {n}"))?;
        let cert = params.self_signed(&key)?;
        let pem = cert.pem();
        Ok(TestCa {
            trust_domain: trust_domain.to_string(),
            issuer: Issuer::new(params, key),
            cert_pem: pem.clone(),
            root_pem: pem,
            above: Vec::new(),
        })
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> anyhow::Result<TestCa> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(name)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let pem = cert.pem();
        let mut above = vec![pem.clone()];
        above.extend(self.above.iter().cloned());
        Ok(TestCa {
            trust_domain: self.trust_domain.clone(),
            issuer: Issuer::new(params, key),
            cert_pem: pem,
            root_pem: self.root_pem.clone(),
            above,
        })
    }

    /// The SPIFFE ID `spiffe://<trust domain><path>`.
    pub fn id(&self, path: &str) -> String {
        format!("spiffe://{}{path}", self.trust_domain)
    }

    /// An SVID for `path` in this CA's trust domain, valid now.
    pub fn svid(&self, path: &str) -> anyhow::Result<Svid> {
        self.leaf(Leaf::svid(&self.id(path)))
    }

    /// A leaf as `spec` says, signed by this CA.
    pub fn leaf(&self, spec: Leaf) -> anyhow::Result<Svid> {
        let key = match &spec.key_pkcs8_pem {
            Some(pem) => KeyPair::from_pem(pem)?,
            None => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
        };
        let mut params = CertificateParams::new(spec.dns.clone())?;
        for uri in &spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into()?));
        }
        let name = spec.uris.first().or(spec.dns.first());
        params
            .distinguished_name
            .push(DnType::CommonName, name.map_or("leaf", |n| n.as_str()));
        params.not_before = time(spec.not_before)?;
        params.not_after = time(spec.not_after)?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain_pem = cert.pem();
        for pem in &self.above {
            chain_pem.push_str(pem);
        }
        Ok(Svid {
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }
}

fn ca_params(name: &str) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = time(now - 24 * HOUR)?;
    params.not_after = time(now + 24 * 365 * HOUR)?;
    Ok(params)
}

impl Svid {
    /// Write `tls.cert`, `tls.key` and `tls.ca` (holding `bundle`, one or
    /// more root PEMs) into `dir`, replacing what was there.
    pub fn write(&self, dir: &Path, bundle: &[&str]) -> anyhow::Result<SvidFiles> {
        let files = SvidFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca: dir.join("ca.pem"),
        };
        std::fs::write(&files.cert, &self.chain_pem)?;
        std::fs::write(&files.key, &self.key_pem)?;
        std::fs::write(&files.ca, bundle.concat())?;
        Ok(files)
    }

    /// The chain and key as rustls takes them, for a peer built by hand.
    pub fn rustls(&self) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let chain = CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())?;
        Ok((chain, key))
    }
}

/// Keys in the three PEM forms of `tls.key` (fixed test keys, made with
/// openssl: rcgen writes PKCS#8 only and cannot make RSA keys on ring).
pub mod keys {
    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/tls/",
                $name
            ))
        };
    }
    /// P-256, PKCS#8 (`PRIVATE KEY`).
    pub const EC_PKCS8: &str = fixture!("ec-pkcs8.pem");
    /// The same key, SEC1 (`EC PRIVATE KEY`).
    pub const EC_SEC1: &str = fixture!("ec-sec1.pem");
    /// RSA 2048, PKCS#8.
    pub const RSA_PKCS8: &str = fixture!("rsa-pkcs8.pem");
    /// The same key, PKCS#1 (`RSA PRIVATE KEY`).
    pub const RSA_PKCS1: &str = fixture!("rsa-pkcs1.pem");
}
