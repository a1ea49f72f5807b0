//! Rules for TLS: this workload's identity files (top-level `tls`), a
//! listener's mode (mesh, or edge with its certificates) and a cluster's
//! mesh or simple TLS.

use std::collections::HashMap;

use super::Rules;
use crate::config::model::{Cluster, ClusterTlsMode, Listener, ListenerTls, ListenerTlsMode};
use crate::config::parse::Draft;
use crate::identity::Identity;

impl Rules<'_> {
    fn key_error(&mut self, path: &str, message: String) {
        self.errors.push(self.at.key(path, message));
    }

    /// Top-level `tls`: the three files are named.
    pub(super) fn mesh_tls(&mut self, d: &Draft) {
        let Some(tls) = &d.tls else { return };
        for (key, value, what) in [
            ("cert", &tls.cert, "the certificate chain (PEM)"),
            ("key", &tls.key, "the private key (PEM)"),
            ("ca", &tls.ca, "the trust bundle (PEM)"),
        ] {
            if value.trim().is_empty() {
                let message = format!("`{key}` cannot be empty: give the path of {what}");
                self.value(&format!("tls.{key}"), message);
            }
        }
    }

    /// A listener's `tls`: strict and permissive need this workload's
    /// identity; `cert` and `key` belong to `terminate` only.
    pub(super) fn listener_tls(&mut self, d: &Draft, l: &Listener, base: &str) {
        let Some(tls) = &l.tls else { return };
        let path = format!("{base}.tls");
        if tls.mode.needs_mesh_identity() && d.tls.is_none() {
            let message = format!(
                "listener `tls.mode: {}` needs this workload's identity: add a top-level `tls` with `cert`, `key` and `ca`",
                mode_name(tls.mode)
            );
            self.key_error(&path, message);
        }
        if tls.mode == ListenerTlsMode::Terminate {
            return self.terminate(tls, &path);
        }
        let given = [
            ("cert", tls.cert.is_some()),
            ("key", tls.key.is_some()),
            ("sni", !tls.sni.is_empty()),
        ];
        let why = match tls.mode {
            ListenerTlsMode::Disabled => "a plaintext listener serves no certificate",
            _ => "a mesh listener uses the top-level `tls` identity",
        };
        for (key, _) in given.into_iter().filter(|(_, given)| *given) {
            let message = format!("`{key}` belongs to `mode: terminate`; {why}");
            self.key_error(&format!("{path}.{key}"), message);
        }
    }

    /// Edge TLS: a default certificate and key, and SNI certificates each
    /// for names of their own. The files are read when the listener starts
    /// (an unusable one stops the start, naming the file), as the mesh
    /// identity's are: a config is often checked where its secrets are not.
    fn terminate(&mut self, tls: &ListenerTls, path: &str) {
        for (key, given) in [("cert", &tls.cert), ("key", &tls.key)] {
            match given {
                None => {
                    let message = format!(
                        "`mode: terminate` needs `{key}`: the {} served to clients that match no `sni` entry",
                        if key == "cert" { "certificate chain (PEM)" } else { "certificate's private key (PEM)" }
                    );
                    self.value(path, message);
                }
                Some(file) if file.trim().is_empty() => {
                    let message = format!("`{key}` cannot be empty: give the path of a PEM file");
                    self.value(&format!("{path}.{key}"), message);
                }
                Some(_) => {}
            }
        }
        let mut seen: HashMap<String, String> = HashMap::new();
        for (i, entry) in tls.sni.iter().enumerate() {
            let base = format!("{path}.sni[{i}]");
            if entry.domains.is_empty() {
                let message = "`domains` needs at least one server name, like [\"api.shop.example\"] or [\"*.shop.example\"]";
                self.value(&format!("{base}.domains"), message.into());
            }
            for (j, domain) in entry.domains.iter().enumerate() {
                let at = format!("{base}.domains[{j}]");
                if let Err(message) = check_sni_domain(domain) {
                    self.value(&at, message);
                } else if let Some(first) = seen.insert(domain.to_ascii_lowercase(), at.clone()) {
                    let message = format!(
                        "`{domain}` is already served by another certificate{}; a name picks one certificate",
                        self.line_of(&first)
                    );
                    self.value(&at, message);
                }
            }
            for (key, file) in [("cert", &entry.cert), ("key", &entry.key)] {
                if file.trim().is_empty() {
                    let message = format!("`{key}` cannot be empty: give the path of a PEM file");
                    self.value(&format!("{base}.{key}"), message);
                }
            }
        }
    }

    /// A cluster's `tls`: `mesh` needs the identity and the upstream's
    /// SPIFFE IDs; `simple` needs the server's name.
    pub(super) fn cluster_tls(&mut self, d: &Draft, c: &Cluster, base: &str) {
        let Some(tls) = &c.tls else { return };
        let path = format!("{base}.tls");
        let stray = |key: &str, given: bool, mode: &str| {
            given.then(|| {
                (
                    format!("{path}.{key}"),
                    format!("`{key}` does not apply to `mode: {mode}`"),
                )
            })
        };
        let mut strays = Vec::new();
        match tls.mode {
            ClusterTlsMode::Mesh => {
                if d.tls.is_none() {
                    let message = "cluster `tls.mode: mesh` needs this workload's identity: add a top-level `tls` with `cert`, `key` and `ca`";
                    self.key_error(&path, message.into());
                }
                if tls.identities.is_empty() {
                    let message = "`mode: mesh` needs `identities`: the SPIFFE IDs the upstream may present, like [\"spiffe://cluster.local/ns/shop/sa/payment\"]";
                    self.value(&path, message.into());
                }
                for (k, id) in tls.identities.iter().enumerate() {
                    if let Err(e) = Identity::parse(id) {
                        let message = format!("`{id}` is not a SPIFFE ID: {e}");
                        self.value(&format!("{path}.identities[{k}]"), message);
                    }
                }
                strays.extend(stray("server_name", tls.server_name.is_some(), "mesh"));
                strays.extend(stray("ca", tls.ca.is_some(), "mesh"));
            }
            ClusterTlsMode::Simple => {
                match &tls.server_name {
                    None => {
                        let message = "`mode: simple` needs `server_name`: the name the server's certificate holds";
                        self.value(&path, message.into());
                    }
                    Some(name) => {
                        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                            let message = format!(
                                "`server_name` must be a DNS name or an IP address, not `{name}`"
                            );
                            self.value(&format!("{path}.server_name"), message);
                        }
                    }
                }
                if tls.ca.as_ref().is_some_and(|ca| ca.trim().is_empty()) {
                    let message = "`ca` cannot be empty: give a PEM file of roots, or leave it out to use the system's";
                    self.value(&format!("{path}.ca"), message.into());
                }
                strays.extend(stray("identities", !tls.identities.is_empty(), "simple"));
            }
            ClusterTlsMode::Disabled => {
                strays.extend(stray("identities", !tls.identities.is_empty(), "disabled"));
                strays.extend(stray("server_name", tls.server_name.is_some(), "disabled"));
                strays.extend(stray("ca", tls.ca.is_some(), "disabled"));
            }
        }
        for (p, message) in strays {
            self.key_error(&p, message);
        }
    }
}

fn mode_name(mode: ListenerTlsMode) -> &'static str {
    match mode {
        ListenerTlsMode::Strict => "strict",
        ListenerTlsMode::Permissive => "permissive",
        ListenerTlsMode::Disabled => "disabled",
        ListenerTlsMode::Terminate => "terminate",
    }
}

/// A name a client asks for by SNI: a host name (no port: SNI carries
/// none), or `*.suffix` for one label below `suffix`.
fn check_sni_domain(domain: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("`{domain}` is not a server name: {why}"));
    if domain.is_empty() {
        return bad("it is empty");
    }
    if domain == "*" {
        return bad("the default `cert` already serves every name no `sni` entry has");
    }
    let rest = domain.strip_prefix("*.").unwrap_or(domain);
    if rest.contains('*') {
        return bad("`*` may only begin a name (`*.shop.example`)");
    }
    if rest.contains(':') {
        return bad("SNI carries no port; leave it out");
    }
    if rest.parse::<std::net::IpAddr>().is_ok() {
        return bad("clients send no SNI for an IP address; the default `cert` serves those");
    }
    if !super::host_labels_ok(rest) {
        return bad("expected a host name of letters, digits, `-` and dots, or `*.suffix`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_sni_domain;

    #[test]
    fn sni_domains() {
        for ok in [
            "api.shop.example",
            "API.Shop.Example",
            "*.shop.example",
            "localhost",
        ] {
            assert_eq!(check_sni_domain(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "*", "a.*.b", "**.b", "api:443", "10.0.0.1", "a..b", "*.", "-a.b",
        ] {
            assert!(check_sni_domain(bad).is_err(), "{bad}");
        }
    }
}
