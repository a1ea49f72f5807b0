//! Rules for TLS: this workload's identity files (top-level `tls`), a
//! listener's mode and a cluster's mesh or simple TLS.

use super::Rules;
use crate::config::model::{Cluster, ClusterTlsMode, Listener, ListenerTlsMode};
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
        if tls.mode != ListenerTlsMode::Terminate {
            for (key, given) in [("cert", &tls.cert), ("key", &tls.key)] {
                if given.is_some() {
                    let message = format!(
                        "`{key}` belongs to `mode: terminate`; a mesh listener uses the top-level `tls` identity"
                    );
                    self.key_error(&format!("{path}.{key}"), message);
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
