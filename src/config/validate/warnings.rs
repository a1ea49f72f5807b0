//! Warnings: configs that are valid and do what they say, but probably not
//! what their author meant. `skiff validate` prints them beside the errors
//! (exit 0 when there are only warnings) and `skiff run` logs them.
//!
//! The first one is the trap of Istio's ISTIO-SECURITY-2021-003: on a
//! `permissive` listener, a `deny` rule about principals never matches a
//! plaintext peer (it has no identity), so a caller the rule is meant to
//! keep out gets in by not using TLS, when another rule lets plaintext
//! peers in.

use crate::config::model::{AuthorizationMatch, Listener, ListenerTlsMode};
use crate::config::parse::Draft;
use crate::config::{ConfigError, Locator};

/// Every warning about what parsed, unsorted.
pub(crate) fn warnings(d: &Draft, at: &Locator<'_>) -> Vec<ConfigError> {
    let mut out = Vec::new();
    for (i, l) in &d.listeners {
        permissive_denials(l, &format!("listeners[{i}]"), at, &mut out);
    }
    out
}

/// Whether a rule's match can hold for a peer without a verified identity.
fn matches_plaintext(m: &AuthorizationMatch) -> bool {
    m.unauthenticated || m.principals.is_empty()
}

/// On a permissive listener: each `deny` by principals only, while some
/// `allow` lets plaintext peers in.
fn permissive_denials(l: &Listener, base: &str, at: &Locator<'_>, out: &mut Vec<ConfigError>) {
    let permissive = l
        .tls
        .as_ref()
        .is_some_and(|t| t.mode == ListenerTlsMode::Permissive);
    let Some(rules) = l.authorization.as_deref().filter(|_| permissive) else {
        return;
    };
    let Some(open) = rules
        .iter()
        .position(|r| r.allow.as_ref().is_some_and(matches_plaintext))
    else {
        return;
    };
    let open_path = format!("{base}.authorization[{open}]");
    let open_line = at
        .line(&open_path)
        .map(|n| format!(" (line {n})"))
        .unwrap_or_default();
    for (k, rule) in rules.iter().enumerate() {
        let Some(deny) = &rule.deny else { continue };
        if deny.principals.is_empty() || deny.unauthenticated {
            continue;
        }
        let message = format!(
            "on a `permissive` listener this rule never matches a plaintext peer, and `authorization[{open}]`{open_line} lets plaintext peers in: a caller it keeps out can connect without TLS and pass; add `unauthenticated: true` to deny plaintext peers too, or make the listener `tls.mode: strict`"
        );
        out.push(at.node(
            &format!("{base}.authorization[{k}].deny.principals"),
            message,
        ));
    }
}
