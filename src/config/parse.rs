//! The parse pass: YAML value → typed sections ([`Draft`]), every error
//! collected on the way.
//!
//! Each section, and each listener and cluster, is deserialized on its own.
//! When serde stops at an error, the error is reported, the bad entry is set
//! aside (or a missing required key is filled with a stand-in) and the
//! section is tried again, so one typo does not hide the next one. The paths
//! that failed are kept, so rule errors about them can be dropped.

use std::collections::HashSet;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::model::{
    AccessLog, Admin, Cluster, Config, Drain, Listener, MeshTls, Resolver, Runtime,
};
use super::wording::{between, describe, expected_names, humanize, noun, unknown_key};
use super::{ConfigError, Locator};

/// What parsed, section by section, for the rules to check.
pub(crate) struct Draft {
    pub admin: Option<Admin>,
    pub runtime: Runtime,
    pub access_log: Option<AccessLog>,
    pub resolver: Option<Resolver>,
    pub tls: Option<MeshTls>,
    pub drain: Drain,
    /// Listeners that parsed, with their index in the file.
    pub listeners: Vec<(usize, Listener)>,
    pub clusters: Vec<(usize, Cluster)>,
    /// Every cluster name in the file, parsed or not; `None` when `clusters`
    /// itself is unreadable (then references cannot be checked).
    pub cluster_names: Option<Vec<String>>,
}

impl Draft {
    pub(super) fn into_config(self) -> Option<Config> {
        Some(Config {
            admin: self.admin?,
            runtime: self.runtime,
            access_log: self.access_log,
            resolver: self.resolver,
            tls: self.tls,
            drain: self.drain,
            listeners: self.listeners.into_iter().map(|(_, l)| l).collect(),
            clusters: self.clusters.into_iter().map(|(_, c)| c).collect(),
        })
    }
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "admin",
    "runtime",
    "access_log",
    "resolver",
    "tls",
    "drain",
    "listeners",
    "clusters",
];

/// The parse step: YAML value → typed sections, errors collected.
pub(super) struct Parse<'a> {
    pub(super) at: &'a Locator<'a>,
    pub(super) errors: Vec<ConfigError>,
    /// Paths that failed to parse; rule errors about them are dropped.
    pub(super) failed: HashSet<String>,
}

impl Parse<'_> {
    pub(super) fn document(&mut self, root: Value) -> Draft {
        let mut draft = Draft {
            admin: None,
            runtime: Runtime::default(),
            access_log: None,
            resolver: None,
            tls: None,
            drain: Drain::default(),
            listeners: Vec::new(),
            clusters: Vec::new(),
            cluster_names: Some(Vec::new()),
        };
        let map = match root {
            Value::Mapping(map) => map,
            other => {
                let message = match other {
                    Value::Null => {
                        "the config is empty; it needs at least `admin` and `listeners`".to_string()
                    }
                    other => format!(
                        "the config must be a mapping of sections, found {}",
                        describe(&other)
                    ),
                };
                self.errors.push(self.at.node("", message));
                // Nothing else can be said about a file without sections.
                self.failed.insert(String::new());
                return draft;
            }
        };
        let mut seen = HashSet::new();
        for (key, value) in map {
            let Some(key) = key.as_str().map(str::to_string) else {
                let message = format!("keys are names, found {}", describe(&key));
                self.errors.push(self.at.node("", message));
                continue;
            };
            seen.insert(key.clone());
            match key.as_str() {
                "admin" => draft.admin = self.section(value, "admin"),
                "runtime" => draft.runtime = self.optional(value, "runtime").unwrap_or_default(),
                "access_log" => draft.access_log = self.optional(value, "access_log"),
                "resolver" => draft.resolver = self.optional(value, "resolver"),
                "tls" => draft.tls = self.optional(value, "tls"),
                "drain" => draft.drain = self.optional(value, "drain").unwrap_or_default(),
                "listeners" => draft.listeners = self.list(value, "listeners", None),
                "clusters" => {
                    let mut names = Vec::new();
                    draft.clusters = self.list(value, "clusters", Some(&mut names));
                    draft.cluster_names = (!self.failed.contains("clusters")).then_some(names);
                }
                // Extension keys, as in Compose files: a place for `&anchors`.
                _ if key.starts_with("x-") => {}
                _ => {
                    let message = unknown_key(&key, "", TOP_LEVEL_KEYS);
                    self.errors.push(self.at.key(&key, message));
                }
            }
        }
        for required in ["admin", "listeners"] {
            if !seen.contains(required) {
                let message = format!("missing required section `{required}`");
                self.errors.push(self.at.node("", message));
                self.failed.insert(required.to_string());
            }
        }
        draft
    }

    /// An optional section: absent and empty (`runtime:`) mean the same.
    fn optional<T: DeserializeOwned>(&mut self, value: Value, path: &str) -> Option<T> {
        if value.is_null() {
            return None;
        }
        self.section(value, path)
    }

    /// A list section, each item parsed on its own. Collects item names if asked.
    fn list<T: DeserializeOwned>(
        &mut self,
        value: Value,
        path: &str,
        names: Option<&mut Vec<String>>,
    ) -> Vec<(usize, T)> {
        let items = match value {
            Value::Sequence(items) => items,
            Value::Null => Vec::new(),
            other => {
                let message = format!(
                    "expected a list (`- name: ...` items), found {}",
                    describe(&other)
                );
                self.errors.push(self.at.node(path, message));
                self.failed.insert(path.to_string());
                return Vec::new();
            }
        };
        if let Some(names) = names {
            names.extend(
                items
                    .iter()
                    .filter_map(|item| item.get("name")?.as_str().map(str::to_string)),
            );
        }
        let mut parsed = Vec::new();
        for (i, mut item) in items.into_iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            if path == "clusters" {
                self.endpoint_keys(&mut item, &item_path);
            }
            if let Some(t) = self.section(item, &item_path) {
                parsed.push((i, t));
            }
        }
        parsed
    }

    /// `endpoints` items are a string or `{address, weight}`: an untagged enum,
    /// for which serde ignores unknown keys. Refuse them here.
    fn endpoint_keys(&mut self, cluster: &mut Value, cluster_path: &str) {
        let Some(Value::Sequence(endpoints)) = cluster.get_mut("endpoints") else {
            return;
        };
        for (i, endpoint) in endpoints.iter_mut().enumerate() {
            let Value::Mapping(map) = endpoint else {
                continue;
            };
            let unknown: Vec<Value> = map
                .keys()
                .filter(|k| !matches!(k.as_str(), Some("address" | "weight")))
                .cloned()
                .collect();
            for key in unknown {
                let name = key.as_str().map_or_else(|| describe(&key), str::to_string);
                let holder = format!("{cluster_path}.endpoints[{i}]");
                let path = format!("{holder}.{name}");
                let message = unknown_key(&name, &holder, &["address", "weight"]);
                self.errors.push(self.at.key(&path, message));
                map.remove(&key);
            }
        }
    }

    /// Deserialize one section; on an error, report it, set the bad entry
    /// aside and try again, until the section parses or nothing is left.
    fn section<T: DeserializeOwned>(&mut self, mut value: Value, base: &str) -> Option<T> {
        // Required keys already filled in with a stand-in, so it is done once.
        let mut stood_in = HashSet::new();
        // Each round removes or fills one entry; the bound is a backstop.
        for _ in 0..256 {
            let error = match serde_path_to_error::deserialize::<_, T>(&value) {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let segs: Vec<Seg> = error
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                    _ => None,
                })
                .collect();
            let path = join_path(base, &segs);
            let message = error.inner().to_string();
            if let Some(key) = between(&message, "unknown field `", "`") {
                let holder = super::positions::parent(&path);
                self.errors.push(
                    self.at
                        .key(&path, unknown_key(key, holder, &expected_names(&message))),
                );
                if !remove(&mut value, &segs) {
                    return None;
                }
            } else if let Some(key) = between(&message, "missing field `", "`") {
                let key_path = format!("{path}.{key}");
                if self.failed.insert(key_path.clone()) {
                    let message = format!("missing required key `{key}` in {}", noun(&path));
                    self.errors.push(self.at.node(&path, message));
                }
                let filled = stood_in.insert(key_path)
                    && stand_in(key).is_some_and(|v| insert(&mut value, &segs, key, v));
                if !filled && !self.set_aside(&mut value, &segs, base) {
                    return None;
                }
            } else {
                self.errors
                    .push(self.at.node(&path, humanize(&message, &path)));
                // A bad item in a list of strings (domains, endpoints) is
                // replaced by a stand-in, so its siblings are still checked.
                let string_item = matches!(segs.last(), Some(Seg::Index(_)))
                    && (message.contains("expected a string")
                        || message.contains("untagged enum EndpointSpec"));
                if string_item && replace(&mut value, &segs, Value::from("")) {
                    self.failed.insert(path);
                    continue;
                }
                if !self.set_aside(&mut value, &segs, base) {
                    return None;
                }
            }
        }
        None
    }

    /// Remove the innermost mapping entry on `segs` and remember it failed.
    fn set_aside(&mut self, value: &mut Value, segs: &[Seg], base: &str) -> bool {
        let Some(last_key) = segs.iter().rposition(|s| matches!(s, Seg::Key(_))) else {
            self.failed.insert(base.to_string());
            return false;
        };
        let entry = &segs[..=last_key];
        self.failed.insert(join_path(base, entry));
        remove(value, entry)
    }
}

/// One step of a path inside a section.
#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

fn join_path(base: &str, segs: &[Seg]) -> String {
    let mut path = base.to_string();
    for s in segs {
        match s {
            Seg::Key(k) if path.is_empty() => path.push_str(k),
            Seg::Key(k) => {
                path.push('.');
                path.push_str(k);
            }
            Seg::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    path
}

fn get_mut<'v>(value: &'v mut Value, segs: &[Seg]) -> Option<&'v mut Value> {
    segs.iter().try_fold(value, |v, s| match s {
        Seg::Key(k) => v.get_mut(k.as_str()),
        Seg::Index(i) => v.get_mut(*i),
    })
}

/// Remove the mapping entry `segs` points at; false when there is none.
fn remove(value: &mut Value, segs: &[Seg]) -> bool {
    let Some((Seg::Key(key), holder)) = segs.split_last() else {
        return false;
    };
    match get_mut(value, holder) {
        Some(Value::Mapping(map)) => map.remove(key.as_str()).is_some(),
        _ => false,
    }
}

fn replace(value: &mut Value, segs: &[Seg], v: Value) -> bool {
    match get_mut(value, segs) {
        Some(slot) => {
            *slot = v;
            true
        }
        None => false,
    }
}

fn insert(value: &mut Value, segs: &[Seg], key: &str, v: Value) -> bool {
    match get_mut(value, segs) {
        Some(Value::Mapping(map)) => map.insert(Value::from(key), v).is_none(),
        _ => false,
    }
}

/// A well-typed stand-in for a missing required key, so the rest of its
/// mapping can still be checked. Rule errors about the stand-in are dropped.
fn stand_in(key: &str) -> Option<Value> {
    Some(match key {
        // Both `tls.mode`s (listener and cluster) have `disabled`.
        "mode" => Value::from("disabled"),
        "name" | "address" | "cluster" | "issuer" | "jwks_file" | "cert" | "key" | "ca"
        | "path" | "redis" => Value::from(""),
        "domains" | "routes" | "virtual_hosts" | "servers" => Value::Sequence(Vec::new()),
        "attempts" | "weight" | "min_per_second" | "requests_per_second" | "burst" => {
            Value::from(0)
        }
        "ratio" => Value::from(0.0),
        "base" | "max" => Value::from("0s"),
        "allow" | "jwks" => Value::Mapping(Default::default()),
        _ => return None,
    })
}
