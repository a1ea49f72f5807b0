//! Authorization by identity: who may call what on a listener.
//!
//! A listener's `authorization:` is a list of rules, each `allow` or `deny`
//! with what it matches: the peer (verified SPIFFE IDs as `principals`, or
//! `unauthenticated: true` for a peer without one), the path and the
//! method. The first rule that matches decides; when rules exist and none
//! matches, the request is denied. A listener without rules allows all.
//!
//! A principal never matches a plaintext peer, not even `*`: a rule meant
//! for identities must not silently stop applying when a peer comes without
//! one (on a permissive listener, a `deny: {principals: [...]}` lets
//! plaintext through; only `unauthenticated: true` names those peers).

use http::Method;

use crate::config::{AuthorizationMatch, AuthorizationRule};
use crate::identity::Identity;

/// A pattern of a principal or a path: exact, a prefix (written with a
/// trailing `*`), or anything (`*`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(s: &str) -> Pattern {
        match s.strip_suffix('*') {
            Some("") => Pattern::Any,
            Some(prefix) => Pattern::Prefix(prefix.to_owned()),
            None => Pattern::Exact(s.to_owned()),
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => e == s,
            Pattern::Prefix(p) => s.starts_with(p.as_str()),
        }
    }
}

#[derive(Clone, Debug)]
struct Rule {
    allow: bool,
    principals: Vec<Pattern>,
    unauthenticated: bool,
    paths: Vec<Pattern>,
    methods: Vec<Method>,
}

impl Rule {
    fn matches(&self, peer: Option<&Identity>, path: &str, method: &Method) -> bool {
        let any_peer = self.principals.is_empty() && !self.unauthenticated;
        let peer_ok = any_peer
            || match peer {
                Some(id) => self.principals.iter().any(|p| p.matches(id.as_str())),
                None => self.unauthenticated,
            };
        peer_ok
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
            && (self.methods.is_empty() || self.methods.contains(method))
    }
}

/// A listener's rules, ready to decide.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

/// What the policy decided, and which rule did (`None`: no rule matched,
/// so the default — deny — applies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub rule: Option<usize>,
}

impl Policy {
    /// Build from validated rules; a rule with an invalid part is skipped
    /// (validation refuses such a config before it gets here).
    pub fn from_config(rules: &[AuthorizationRule]) -> Policy {
        let rules = rules
            .iter()
            .filter_map(|r| {
                let (allow, m) = match (&r.allow, &r.deny) {
                    (Some(m), None) => (true, m),
                    (None, Some(m)) => (false, m),
                    _ => return None,
                };
                Some(Rule {
                    allow,
                    principals: m.principals.iter().map(|p| Pattern::parse(p)).collect(),
                    unauthenticated: m.unauthenticated,
                    paths: m.paths.iter().map(|p| Pattern::parse(p)).collect(),
                    methods: m
                        .methods
                        .iter()
                        .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                        .collect(),
                })
            })
            .collect();
        Policy { rules }
    }

    /// The first rule that matches decides; none: deny.
    pub fn decide(&self, peer: Option<&Identity>, path: &str, method: &Method) -> Verdict {
        for (i, r) in self.rules.iter().enumerate() {
            if r.matches(peer, path, method) {
                return Verdict {
                    allowed: r.allow,
                    rule: Some(i),
                };
            }
        }
        Verdict {
            allowed: false,
            rule: None,
        }
    }

    /// Whether every rule that names peers names them by principal and
    /// denies: on a listener that also takes plaintext, such rules let every
    /// plaintext peer through (a principal never matches one).
    pub fn only_denies_principals(&self) -> bool {
        !self.rules.is_empty()
            && self
                .rules
                .iter()
                .all(|r| !r.allow && !r.principals.is_empty() && !r.unauthenticated)
    }
}

/// What is wrong with one rule, as (key under the rule, message) pairs,
/// for validation.
pub fn check_rule(rule: &AuthorizationRule) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let (key, m): (&str, &AuthorizationMatch) = match (&rule.allow, &rule.deny) {
        (Some(m), None) => ("allow", m),
        (None, Some(m)) => ("deny", m),
        (Some(_), Some(_)) => {
            errors.push((
                String::new(),
                "a rule is either `allow` or `deny`, not both".into(),
            ));
            return errors;
        }
        (None, None) => {
            errors.push((
                String::new(),
                "a rule needs `allow` or `deny` with what it matches".into(),
            ));
            return errors;
        }
    };
    for (i, p) in m.principals.iter().enumerate() {
        if let Some(why) = principal_problem(p) {
            errors.push((format!("{key}.principals[{i}]"), why));
        }
    }
    for (i, p) in m.paths.iter().enumerate() {
        let ok =
            p == "*" || (p.starts_with('/') && !p.strip_suffix('*').unwrap_or(p).contains('*'));
        if !ok {
            errors.push((
                format!("{key}.paths[{i}]"),
                format!("path {p:?} must start with / (exact, or a prefix ending in *), or be *"),
            ));
        }
    }
    for (i, method) in m.methods.iter().enumerate() {
        if Method::from_bytes(method.as_bytes()).is_err() || method.is_empty() {
            errors.push((
                format!("{key}.methods[{i}]"),
                format!("{method:?} is not an HTTP method"),
            ));
        }
    }
    errors
}

fn principal_problem(p: &str) -> Option<String> {
    if p == "*" {
        return None;
    }
    match p.strip_suffix('*') {
        Some(prefix) if prefix.starts_with("spiffe://") && !prefix.contains('*') => None,
        Some(_) => Some(format!(
            "principal {p:?}: a prefix pattern is a SPIFFE ID prefix ending in *, e.g. spiffe://cluster.local/ns/shop/*"
        )),
        None => Identity::parse(p)
            .err()
            .map(|e| format!("principal {p:?} is not a SPIFFE ID: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Vec<AuthorizationRule> {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn id(s: &str) -> Identity {
        Identity::parse(s).unwrap()
    }

    const SHOP: &str = r#"
- allow:
    principals: ["spiffe://cluster.local/ns/shop/sa/order"]
    paths: ["/shop.Payment/*"]
    methods: [POST]
- allow:
    unauthenticated: true
    paths: ["/grpc.health.v1.Health/Check"]
- deny: { principals: ["*"] }
"#;

    #[test]
    fn first_matching_rule_decides_and_none_denies() {
        let p = Policy::from_config(&rules(SHOP));
        let order = id("spiffe://cluster.local/ns/shop/sa/order");
        let catalog = id("spiffe://cluster.local/ns/shop/sa/catalog");
        let post = Method::POST;
        assert_eq!(
            p.decide(Some(&order), "/shop.Payment/Charge", &post),
            Verdict {
                allowed: true,
                rule: Some(0)
            }
        );
        assert_eq!(
            p.decide(Some(&order), "/shop.Payment/Charge", &Method::GET),
            Verdict {
                allowed: false,
                rule: Some(2)
            },
            "the method does not match rule 0; rule 2 denies any identity"
        );
        assert_eq!(
            p.decide(Some(&catalog), "/shop.Payment/Charge", &post),
            Verdict {
                allowed: false,
                rule: Some(2)
            }
        );
        assert_eq!(
            p.decide(None, "/grpc.health.v1.Health/Check", &post),
            Verdict {
                allowed: true,
                rule: Some(1)
            }
        );
        assert_eq!(
            p.decide(None, "/shop.Payment/Charge", &post),
            Verdict {
                allowed: false,
                rule: None
            },
            "no rule names plaintext peers for this path: the default denies"
        );
    }

    #[test]
    fn a_principal_never_matches_a_plaintext_peer() {
        let p = Policy::from_config(&rules(
            r#"[{ deny: { principals: ["*"] } }, { allow: {} }]"#,
        ));
        assert!(
            p.decide(None, "/x", &Method::GET).allowed,
            "deny * skips plaintext"
        );
        let anyone = id("spiffe://cluster.local/ns/a/sa/b");
        assert!(!p.decide(Some(&anyone), "/x", &Method::GET).allowed);
        assert!(!p.only_denies_principals(), "the last rule allows");
        let deny_only =
            Policy::from_config(&rules(r#"[{ deny: { principals: ["spiffe://td/x"] } }]"#));
        assert!(deny_only.only_denies_principals());
    }

    #[test]
    fn prefixes_and_exact_patterns() {
        let p = Policy::from_config(&rules(
            r#"[{ allow: { principals: ["spiffe://cluster.local/ns/shop/*"], paths: ["/a/*", "/exact"] } }]"#,
        ));
        let shop = id("spiffe://cluster.local/ns/shop/sa/x");
        let other = id("spiffe://cluster.local/ns/other/sa/x");
        assert!(p.decide(Some(&shop), "/a/b/c", &Method::GET).allowed);
        assert!(p.decide(Some(&shop), "/exact", &Method::GET).allowed);
        assert!(!p.decide(Some(&shop), "/exactly", &Method::GET).allowed);
        assert!(!p.decide(Some(&other), "/a/b", &Method::GET).allowed);
    }

    #[test]
    fn bad_rules_are_named() {
        let bad = rules(
            r#"
- allow: { principals: ["spiffe://cluster.local/ns/*/sa/x*", "order", "spiffe://Bad/x"], paths: ["shop/*"], methods: ["GE T"] }
- { allow: {}, deny: {} }
- {}
"#,
        );
        let e0 = check_rule(&bad[0]);
        let keys: Vec<&str> = e0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "allow.principals[0]",
                "allow.principals[1]",
                "allow.principals[2]",
                "allow.paths[0]",
                "allow.methods[0]"
            ]
        );
        assert!(check_rule(&bad[1])[0].1.contains("not both"));
        assert!(check_rule(&bad[2])[0].1.contains("needs `allow` or `deny`"));
        assert!(check_rule(&rules(SHOP)[0]).is_empty());
    }
}
