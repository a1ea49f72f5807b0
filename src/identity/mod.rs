//! Workload identity: a SPIFFE ID (`spiffe://<trust-domain>/<path>`), the
//! name a peer proves with its X.509 SVID in a mesh TLS handshake.
//!
//! The identity is what the access log, authorization and the headers to
//! the app read of a connection's peer; it is set on a connection only when a
//! handshake verified it, never taken from anything the peer sent in clear.
//!
//! [`store`] holds this workload's own credentials: its SVID and the trust
//! bundle, re-read when the files change.

use std::fmt;
use std::sync::Arc;

pub mod store;

pub use store::{CertsView, CredentialPaths, CredentialStore, Credentials};

/// A verified peer identity: a SPIFFE ID.
///
/// Cheap to clone (shared text); compared and hashed by its URI.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    uri: Arc<str>,
    /// Where the trust domain ends in `uri` (after `spiffe://`).
    domain_end: usize,
}

/// Why a string is not a SPIFFE ID (the rules of the SPIFFE ID standard, §2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("a SPIFFE ID starts with spiffe://")]
    Scheme,
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    #[error("the trust domain may hold only lowercase letters, digits, '.', '-' and '_'")]
    TrustDomainChars,
    #[error("a path segment is empty, '.' or '..'")]
    Segment,
    #[error("a path segment may hold only letters, digits, '.', '-' and '_'")]
    PathChars,
    #[error("a SPIFFE ID has no query, fragment, port or user info")]
    Extra,
    #[error("a SPIFFE ID is at most 2048 bytes")]
    TooLong,
}

const SCHEME: &str = "spiffe://";

impl Identity {
    /// Parse a SPIFFE ID, as strictly as the standard asks.
    pub fn parse(s: &str) -> Result<Identity, IdentityError> {
        if s.len() > 2048 {
            return Err(IdentityError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(IdentityError::Scheme)?;
        if rest.contains(['?', '#', '@']) {
            return Err(IdentityError::Extra);
        }
        let (domain, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if domain.is_empty() {
            return Err(IdentityError::EmptyTrustDomain);
        }
        if domain.contains(':') {
            return Err(IdentityError::Extra);
        }
        let domain_ok = domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !domain_ok {
            return Err(IdentityError::TrustDomainChars);
        }
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                if seg.is_empty() || seg == "." || seg == ".." {
                    return Err(IdentityError::Segment);
                }
                if !seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
                {
                    return Err(IdentityError::PathChars);
                }
            }
        }
        Ok(Identity {
            uri: Arc::from(s),
            domain_end: SCHEME.len() + domain.len(),
        })
    }

    /// The whole ID, `spiffe://cluster.local/ns/shop/sa/order`.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain, `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.domain_end]
    }

    /// The path, `/ns/shop/sa/order` (empty for a trust domain's own ID).
    pub fn path(&self) -> &str {
        &self.uri[self.domain_end..]
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.uri)
    }
}

impl std::str::FromStr for Identity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identity::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_of_a_workload_id() {
        let id = Identity::parse("spiffe://cluster.local/ns/shop/sa/order").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/shop/sa/order");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/order");
        let td = Identity::parse("spiffe://example.org").unwrap();
        assert_eq!(td.trust_domain(), "example.org");
        assert_eq!(td.path(), "");
    }

    #[test]
    fn refuses_what_the_standard_refuses() {
        use IdentityError::*;
        let cases = [
            ("https://cluster.local/ns/a", Scheme),
            ("spiffe:///ns/a", EmptyTrustDomain),
            ("spiffe://Cluster.local/ns/a", TrustDomainChars),
            ("spiffe://cluster.local:8080/ns/a", Extra),
            ("spiffe://user@cluster.local/ns/a", Extra),
            ("spiffe://cluster.local/ns/a?x=1", Extra),
            ("spiffe://cluster.local/ns//a", Segment),
            ("spiffe://cluster.local/ns/../a", Segment),
            ("spiffe://cluster.local/ns/a/", Segment),
            ("spiffe://cluster.local/ns/a b", PathChars),
        ];
        for (s, want) in cases {
            assert_eq!(Identity::parse(s), Err(want), "{s}");
        }
    }
}
