//! The shop's credentials, minted at start into `<dir>/tls` — what SPIRE
//! (or cert-manager) and an identity provider would hand out in a cluster:
//!
//! ```text
//! <dir>/tls/ca.pem                     the trust bundle: one root, shop.local
//! <dir>/tls/<workload>/cert.pem        an X.509 SVID, spiffe://shop.local/ns/shop/sa/<workload>
//! <dir>/tls/<workload>/key.pem         (order, catalog, inventory, payment, gateway)
//! <dir>/tls/edge/tls.crt, tls.key      the gateway's edge certificate: localhost, 127.0.0.1
//! <dir>/tls/jwks.json                  the public half of the token signing key
//! ```
//!
//! All ECDSA P-256, as SPIRE and istiod issue them. The SVIDs are valid
//! for a day and the root for a year, from an hour ago (clock skew). The
//! signing key never leaves the launcher: [`Signer`] signs the shoppers'
//! tokens (ES256), and the gateway verifies them with `jwks.json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};

/// The shop's trust domain.
pub const TRUST_DOMAIN: &str = "shop.local";
/// The `iss` of the shoppers' tokens, and what the gateway's `jwt.issuer` says.
pub const ISSUER: &str = "https://auth.shop.local";
/// The `aud` of the shoppers' tokens: the gateway's `jwt.audiences`.
pub const AUDIENCE: &str = "shop-api";
/// The `kid` of the signing key in `jwks.json`.
pub const KID: &str = "shop-1";
/// The name the edge certificate is for (and `127.0.0.1`).
pub const EDGE_NAME: &str = "localhost";

const HOUR: Duration = Duration::from_secs(3600);

/// The SPIFFE ID of a workload of the shop.
pub fn spiffe_id(workload: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/{workload}")
}

/// What was minted, and where.
pub struct Minted {
    /// `<dir>/tls`: what the configs call `${TLS_DIR}`.
    pub dir: PathBuf,
    /// The trust bundle (PEM), for clients of the edge and of the mesh.
    pub ca_pem: String,
    /// The key the gateway trusts (its public half is in `jwks.json`).
    pub signer: Signer,
    /// A key of the same `kid` that the gateway does not know: its tokens
    /// look right and fail the signature check (--chaos).
    pub forger: Signer,
}

impl Minted {
    /// The SVID files of `workload`: its chain and its key (PEM).
    pub fn svid_pem(&self, workload: &str) -> anyhow::Result<(String, String)> {
        let dir = self.dir.join(workload);
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .with_context(|| format!("reading {}", dir.join(f).display()))
        };
        Ok((read("cert.pem")?, read("key.pem")?))
    }
}

fn offset(t: SystemTime) -> anyhow::Result<time::OffsetDateTime> {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(time::OffsetDateTime::from_unix_timestamp(i64::try_from(
        secs,
    )?)?)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("making {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A leaf signed by `ca`: an SVID for `uri` (with `dns` too, so that a
/// plain TLS client that checks names, such as tonic's, can dial it), or
/// the edge certificate (no URI).
fn leaf(
    ca: &Issuer<'_, KeyPair>,
    uri: Option<&str>,
    dns: &[&str],
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    if let Some(uri) = uri {
        params.subject_alt_names.push(SanType::URI(uri.try_into()?));
    }
    params.distinguished_name.push(
        DnType::CommonName,
        uri.or(dns.first().copied()).unwrap_or("shop"),
    );
    let now = SystemTime::now();
    params.not_before = offset(now - HOUR)?;
    params.not_after = offset(now + 24 * HOUR)?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Mint everything into `<run_dir>/tls`: the CA, an SVID for each of
/// `workloads`, the edge certificate and the token signing key.
pub fn mint(run_dir: &Path, workloads: &[&str]) -> anyhow::Result<Minted> {
    let dir = run_dir.join("tls");
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{TRUST_DOMAIN} root"));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    ca.not_before = offset(now - HOUR)?;
    ca.not_after = offset(now + 24 * 365 * HOUR)?;
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    write(&dir.join("ca.pem"), &ca_pem)?;

    for w in workloads {
        let dns = format!("{w}.{TRUST_DOMAIN}");
        let (cert, key) = leaf(&issuer, Some(&spiffe_id(w)), &[&dns])?;
        write(&dir.join(w).join("cert.pem"), &cert)?;
        write(&dir.join(w).join("key.pem"), &key)?;
    }
    let (cert, key) = leaf(&issuer, None, &[EDGE_NAME, "127.0.0.1"])?;
    write(&dir.join("edge/tls.crt"), &cert)?;
    write(&dir.join("edge/tls.key"), &key)?;

    let signer = Signer::new(KID)?;
    let jwks = format!("{{\"keys\": [{}]}}\n", signer.jwk());
    write(&dir.join("jwks.json"), &jwks)?;
    Ok(Minted {
        dir,
        ca_pem,
        signer,
        forger: Signer::new(KID)?,
    })
}

/// An ES256 signing key.
pub struct Signer {
    kid: String,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Seconds since the epoch.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Signer {
    /// A fresh P-256 key named `kid`.
    pub fn new(kid: &str) -> anyhow::Result<Signer> {
        let rng = SystemRandom::new();
        let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .map_err(|_| anyhow::anyhow!("making a P-256 key"))?;
        let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow::anyhow!("reading the P-256 key back: {e}"))?;
        Ok(Signer {
            kid: kid.to_string(),
            key,
            rng,
        })
    }

    /// The public key as a JWK (RFC 7517): `x` and `y` of the point.
    pub fn jwk(&self) -> String {
        // Uncompressed point: 0x04, then X and Y, 32 bytes each.
        let point = self.key.public_key().as_ref();
        let (x, y) = (
            point.get(1..33).unwrap_or_default(),
            point.get(33..65).unwrap_or_default(),
        );
        format!(
            "{{\"kty\": \"EC\", \"crv\": \"P-256\", \"use\": \"sig\", \"alg\": \"ES256\", \
             \"kid\": \"{}\", \"x\": \"{}\", \"y\": \"{}\"}}",
            self.kid,
            b64(x),
            b64(y)
        )
    }

    /// A token for `sub` (letters, digits and `-` only: it is written into
    /// the JSON as it is), from [`ISSUER`] for [`AUDIENCE`], valid for
    /// `ttl` from now.
    pub fn token(&self, sub: &str, ttl: Duration) -> anyhow::Result<String> {
        self.token_at(sub, now_secs(), ttl)
    }

    /// A token for `sub` that expired two hours ago.
    pub fn expired(&self, sub: &str) -> anyhow::Result<String> {
        self.token_at(sub, now_secs().saturating_sub(3 * 3600), HOUR)
    }

    fn token_at(&self, sub: &str, iat: u64, ttl: Duration) -> anyhow::Result<String> {
        anyhow::ensure!(
            sub.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "a subject of letters, digits and -, not {sub:?}"
        );
        let header = format!(
            "{{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"{}\"}}",
            self.kid
        );
        let claims = format!(
            "{{\"iss\":\"{ISSUER}\",\"aud\":\"{AUDIENCE}\",\"sub\":\"{sub}\",\"iat\":{iat},\"exp\":{}}}",
            iat + ttl.as_secs()
        );
        let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        // ES256 (RFC 7518 §3.4): the signature is R || S, 32 bytes each,
        // which is what the FIXED signing algorithm gives.
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| anyhow::anyhow!("signing a token"))?;
        Ok(format!("{signing_input}.{}", b64(sig.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

    #[test]
    fn a_token_verifies_with_the_public_key_and_says_who() {
        let s = Signer::new("k").unwrap();
        let token = s.token("shopper-1", HOUR).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, s.key.public_key().as_ref());
        let input = format!("{}.{}", parts[0], parts[1]);
        public.verify(input.as_bytes(), &sig).unwrap();
        let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert!(claims.contains("\"sub\":\"shopper-1\""), "{claims}");
        assert!(claims.contains(ISSUER), "{claims}");
        assert!(s.token("a\"b", HOUR).is_err());
    }

    #[test]
    fn everything_is_written_where_the_configs_look() {
        let dir = std::env::temp_dir().join(format!("shop-mint-{}", std::process::id()));
        let m = mint(&dir, &["order", "gateway"]).unwrap();
        for f in [
            "ca.pem",
            "order/cert.pem",
            "order/key.pem",
            "gateway/cert.pem",
            "edge/tls.crt",
            "edge/tls.key",
            "jwks.json",
        ] {
            assert!(m.dir.join(f).exists(), "{f}");
        }
        let jwks = std::fs::read_to_string(m.dir.join("jwks.json")).unwrap();
        assert!(jwks.contains("\"kid\": \"shop-1\""), "{jwks}");
        let (cert, key) = m.svid_pem("order").unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
