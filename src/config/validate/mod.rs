//! The rules serde cannot express: references, duplicates, address syntax,
//! bounds, and the keys whose behaviour is not built yet.
//!
//! Runs over whatever parsed ([`Draft`]), so a broken listener does not stop
//! the clusters from being checked. Every rule adds an error and goes on;
//! errors carry the YAML path of what they are about. A problem with a value
//! points at the value; a missing or conflicting part points at the mapping
//! that should hold it; a refused key points at the key.
//!
//! This file holds the entry point, the shared helpers and the table of keys
//! not built yet; the rules themselves are grouped by what they check:
//! [`addresses`] (ip:port and binds), [`listeners`] (limits, virtual hosts,
//! domains), [`routes`] (matches and cluster references), [`admission`]
//! (JWT and rate limits), [`clusters`] (endpoints, DNS discovery, balancing)
//! and [`resilience`].

mod addresses;
mod admission;
mod authorization;
mod clusters;
mod listeners;
mod resilience;
mod routes;
mod tls;
mod warnings;

pub(crate) use warnings::warnings;

use std::collections::HashMap;

use super::model::{Cluster, Listener, Route};
use super::parse::Draft;
use super::{ConfigError, Dur, Locator};

/// A key the schema accepts (docs/architecture.md, "Coming keys") whose
/// behaviour is not built yet.
/// It is refused, never silently ignored. Delete its row in the change that
/// builds the behaviour.
struct NotYet<T> {
    /// The key, as it appears in the path.
    key: &'static str,
    /// How the message names what was written.
    what: &'static str,
    used: fn(&T) -> bool,
    hint: &'static str,
}

const NOT_YET_TOP_LEVEL: &[NotYet<Draft>] = &[];

const NOT_YET_LISTENER: &[NotYet<Listener>] = &[];

const NOT_YET_ROUTE: &[NotYet<Route>] = &[];

const NOT_YET_CLUSTER: &[NotYet<Cluster>] = &[];

/// Check every rule over what parsed; the errors come back unsorted.
pub(crate) fn validate(draft: &Draft, at: &Locator<'_>) -> Vec<ConfigError> {
    let mut v = Rules {
        at,
        errors: Vec::new(),
    };
    v.not_yet(NOT_YET_TOP_LEVEL, draft, "");
    v.process(draft);
    v.mesh_tls(draft);
    v.resolver(draft);
    v.addresses(draft);
    v.listeners(draft);
    v.clusters(draft);
    v.errors
}

struct Rules<'a> {
    at: &'a Locator<'a>,
    errors: Vec<ConfigError>,
}

impl Rules<'_> {
    fn value(&mut self, path: &str, message: String) {
        self.errors.push(self.at.node(path, message));
    }

    fn not_yet<T>(&mut self, table: &[NotYet<T>], item: &T, base: &str) {
        for row in table.iter().filter(|row| (row.used)(item)) {
            let path = if base.is_empty() {
                row.key.to_string()
            } else {
                format!("{base}.{}", row.key)
            };
            let message = format!("{} is not supported yet; {}", row.what, row.hint);
            self.errors.push(self.at.key(&path, message));
        }
    }

    /// "on line N" for a message that refers to another place.
    fn line_of(&self, path: &str) -> String {
        self.at
            .line(path)
            .map(|l| format!(" (line {l})"))
            .unwrap_or_default()
    }

    fn positive(&mut self, path: &str, d: Dur, what: &str) {
        if d.get().is_zero() {
            self.value(path, format!("{what} must be greater than 0"));
        }
    }

    fn process(&mut self, d: &Draft) {
        if d.runtime.worker_threads == Some(0) {
            let message = "`worker_threads` must be at least 1; leave it out to use every CPU this process may use";
            self.value("runtime.worker_threads", message.into());
        }
        if let Some(log) = &d.access_log {
            if log.path.trim().is_empty() {
                let message = "`path` cannot be empty: write `stdout`, `stderr` or a file path";
                self.value("access_log.path", message.into());
            }
        }
    }

    /// Non-empty and unique among its kind; `names` maps names to the index first seen.
    fn name<'n>(
        &mut self,
        path: &str,
        name: &'n str,
        kind: &str,
        names: &mut HashMap<&'n str, usize>,
        index: usize,
        list: &str,
    ) {
        if name.trim().is_empty() {
            self.value(path, format!("a {kind} needs a name"));
        } else if let Some(first) = names.get(name) {
            let message = format!(
                "{kind} name `{name}` is already used{}; names must be unique",
                self.line_of(&format!("{list}[{first}].name"))
            );
            self.value(path, message);
        } else {
            names.insert(name, index);
        }
    }
}

/// A host name's labels: 1–63 letters, digits, `-` (not first or last) or
/// `_` each, 253 bytes in all. Used for DNS names and virtual host domains.
fn host_labels_ok(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}
