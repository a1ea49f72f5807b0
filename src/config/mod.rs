//! Configuration: parse the YAML (DESIGN §3), validate it, hand out a typed [`Config`].
//!
//! Three steps, in this order: expand `${VAR}` in the text ([`env`]), parse
//! with serde (unknown keys refused), then validate the rules that span
//! fields (`validate.rs`). Every error is collected with its file,
//! line:column ([`positions`]) and YAML path, so one run of `skiff validate`
//! shows everything there is to fix. Nothing binds before this passes.
//!
//! Parsing goes section by section — `admin`, `runtime`, each listener, each
//! cluster — and inside a section it goes on past an error by setting the bad
//! entry aside and trying again, so one typo does not hide the next one.
//! Rule errors about something that did not parse are left out: they would
//! only repeat the parse error in other words.

pub mod duration;
pub mod env;
pub mod model;
pub mod positions;
mod validate;

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

pub use duration::Dur;
pub use model::*;

use env::Expanded;
use positions::{Pos, PositionIndex};

/// One problem in a config file, located as precisely as the YAML allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name (or `<string>` for configs given as text).
    pub file: String,
    /// 1-based line and column of the offending key or value, when known.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// YAML path such as `listeners[0].virtual_hosts[1].routes[0].cluster`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one config file, in the order of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    fn sorted(mut errors: Vec<ConfigError>) -> ConfigErrors {
        errors.sort_by_key(|e| (e.line.unwrap_or(0), e.column.unwrap_or(0)));
        errors.dedup();
        ConfigErrors(errors)
    }
}

/// Read, expand, parse and validate the config file at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: origin.clone(),
            line: None,
            column: None,
            path: String::new(),
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    load_str(&text, &origin)
}

/// Expand `${VAR}` from the process environment, parse and validate `text`.
/// `origin` names the text in error messages (a file path, usually).
pub fn load_str(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    load_str_with_env(text, origin, &|name| std::env::var(name).ok())
}

/// As [`load_str`], with variables looked up through `env` (tests pass a map).
pub fn load_str_with_env(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let expanded = env::expand(text, env).map_err(|errors| {
        ConfigErrors::sorted(
            errors
                .into_iter()
                .map(|e| ConfigError {
                    file: origin.to_string(),
                    line: Some(e.line),
                    column: Some(e.column),
                    path: String::new(),
                    message: e.message,
                })
                .collect(),
        )
    })?;
    let mut root: Value = match serde_yaml::from_str(&expanded.text) {
        Ok(root) => root,
        Err(e) => return Err(syntax_errors(&e, origin, &expanded)),
    };
    // The text parsed, so the index builds too; an empty index only costs positions.
    let index = PositionIndex::build(&expanded.text).unwrap_or_default();
    let at = Locator {
        file: origin,
        index: &index,
        expanded: &expanded,
    };
    if let Err(e) = root.apply_merge() {
        return Err(ConfigErrors(vec![
            at.node("", format!("cannot apply a `<<` merge key: {e}"))
        ]));
    }

    let mut parse = Parse {
        at: &at,
        errors: Vec::new(),
        failed: HashSet::new(),
    };
    let draft = parse.document(root);
    let Parse {
        mut errors, failed, ..
    } = parse;
    errors.extend(
        validate::validate(&draft, &at)
            .into_iter()
            .filter(|e| !failed.iter().any(|f| related(&e.path, f))),
    );
    if errors.is_empty() {
        if let Some(config) = draft.into_config() {
            return Ok(config);
        }
        errors.push(at.node("", "the config is incomplete".to_string()));
    }
    Err(ConfigErrors::sorted(errors))
}

/// The JSON Schema of the config file, generated from the same types serde parses.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Config)).unwrap_or_default()
}

/// Turns a YAML path into a [`ConfigError`] with the position the text gives it.
pub(crate) struct Locator<'a> {
    file: &'a str,
    index: &'a PositionIndex,
    expanded: &'a Expanded,
}

impl Locator<'_> {
    /// An error about the key at `path` (unknown, not supported yet, ...).
    pub(crate) fn key(&self, path: &str, message: String) -> ConfigError {
        self.make(self.index.locate(path), path, message)
    }

    /// An error about the value at `path`, or about the mapping or list it is.
    pub(crate) fn node(&self, path: &str, message: String) -> ConfigError {
        self.make(self.index.locate_value(path), path, message)
    }

    /// The line the value at `path` is on, for messages that point elsewhere.
    pub(crate) fn line(&self, path: &str) -> Option<usize> {
        self.index.locate_value(path).map(|p| p.line)
    }

    fn make(&self, pos: Option<Pos>, path: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| self.expanded.original_column(p.line, p.column)),
            path: path.to_string(),
            message,
        }
    }
}

/// Whether an error at `path` is about something that failed to parse at
/// `failed`: the same node, inside it, or a node holding it.
fn related(path: &str, failed: &str) -> bool {
    fn within(inner: &str, outer: &str) -> bool {
        outer.is_empty()
            || inner == outer
            || (inner.starts_with(outer)
                && matches!(inner.as_bytes().get(outer.len()), Some(b'.' | b'[')))
    }
    within(path, failed) || within(failed, path)
}

/// serde_yaml's syntax error, or every repeated key when that is the trouble.
fn syntax_errors(e: &serde_yaml::Error, origin: &str, expanded: &Expanded) -> ConfigErrors {
    let at = |pos: Option<Pos>, path: &str, message: String| ConfigError {
        file: origin.to_string(),
        line: pos.map(|p| p.line),
        column: pos.map(|p| expanded.original_column(p.line, p.column)),
        path: path.to_string(),
        message,
    };
    if e.to_string().contains("duplicate entry with key") {
        if let Ok(index) = PositionIndex::build(&expanded.text) {
            let errors: Vec<_> = index
                .duplicates()
                .iter()
                .map(|d| {
                    let key = d.path.rsplit('.').next().unwrap_or(&d.path);
                    let message = format!(
                        "key `{key}` is written twice in the same mapping (first on line {}); keep one",
                        d.first.line
                    );
                    at(Some(d.again), &d.path, message)
                })
                .collect();
            if !errors.is_empty() {
                return ConfigErrors::sorted(errors);
            }
        }
    }
    let pos = e.location().map(|l| Pos {
        line: l.line(),
        column: l.column(),
    });
    let mut message = e.to_string();
    if let Some(p) = pos {
        // The position is printed in front already; keep only the rest.
        message = message.replacen(&format!(" at line {} column {}", p.line, p.column), "", 1);
    }
    ConfigErrors(vec![at(pos, "", format!("YAML syntax error: {message}"))])
}

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
    fn into_config(self) -> Option<Config> {
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
struct Parse<'a> {
    at: &'a Locator<'a>,
    errors: Vec<ConfigError>,
    /// Paths that failed to parse; rule errors about them are dropped.
    failed: HashSet<String>,
}

impl Parse<'_> {
    fn document(&mut self, root: Value) -> Draft {
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
                let holder = positions::parent(&path);
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
        "name" | "address" | "cluster" | "mode" | "issuer" | "jwks_file" | "cert" | "key"
        | "ca" | "path" => Value::from(""),
        "domains" | "routes" | "virtual_hosts" | "servers" => Value::Sequence(Vec::new()),
        "attempts" | "weight" | "min_per_second" | "requests_per_second" | "burst" => {
            Value::from(0)
        }
        "ratio" => Value::from(0.0),
        "base" | "max" => Value::from("0s"),
        "allow" => Value::Mapping(Default::default()),
        _ => return None,
    })
}

/// The text between `start` and the next `end` in `s`.
fn between<'s>(s: &'s str, start: &str, end: &str) -> Option<&'s str> {
    let rest = &s[s.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

/// The names serde lists after "expected" in an unknown field/variant message.
fn expected_names(message: &str) -> Vec<&str> {
    let Some(i) = message.find("expected") else {
        return Vec::new();
    };
    message[i..].split('`').skip(1).step_by(2).collect()
}

/// "unknown key `foo` in listener; expected one of `name`, ... (did you mean `bar`?)"
fn unknown_key(key: &str, holder: &str, expected: &[&str]) -> String {
    let place = if holder.is_empty() {
        "at the top level".to_string()
    } else {
        format!("in {}", noun(holder))
    };
    let mut message = format!("unknown key `{key}` {place}");
    if let Some(close) = validate::closest(key, expected.iter().copied()) {
        message.push_str(&format!("; did you mean `{close}`?"));
    } else if let [only] = expected {
        message.push_str(&format!("; the only key here is `{only}`"));
    } else if !expected.is_empty() {
        message.push_str(&format!(
            "; expected one of {}",
            ticked(expected.iter().copied())
        ));
    }
    message
}

/// "`a`, `b`, `c`"
pub(crate) fn ticked<'s>(names: impl IntoIterator<Item = &'s str>) -> String {
    names
        .into_iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the mapping at `path` is, in words: `listener`, `route match`, `` `admin` ``.
fn noun(path: &str) -> String {
    let last = path.rsplit('.').next().unwrap_or(path);
    let (name, is_item) = match last.find('[') {
        Some(i) => (&last[..i], true),
        None => (last, false),
    };
    let word = match (name, is_item) {
        ("listeners", true) => "listener",
        ("virtual_hosts", true) => "virtual host",
        ("routes", true) => "route",
        ("headers", true) => "header match",
        ("weighted_clusters", true) => "weighted cluster",
        ("clusters", true) => "cluster",
        ("endpoints", true) => "endpoint",
        ("authorization", true) => "authorization rule",
        ("match", false) => "route match",
        ("limits", false) => "listener limits",
        ("pool", false) => "connection pool",
        ("retry", false) => "retry policy",
        _ => return format!("`{last}`"),
    };
    word.to_string()
}

/// Keys whose values are durations (`Dur`).
const DURATION_KEYS: &[&str] = &[
    "timeout",
    "connect_timeout",
    "delay",
    "detect_timeout",
    "connection_idle_timeout",
    "stream_idle_timeout",
    "per_try_timeout",
    "header_read_timeout",
    "keepalive_interval",
    "idle_timeout",
    "refresh",
    "interval",
    "base_ejection_time",
    "base",
    "max",
    "discovery_timeout",
    "decay",
    "default_rtt",
];

/// Keys whose values are one of a few words, for when a non-word is given
/// (serde then names only "an enum").
const ENUM_KEYS: &[(&str, &[&str])] = &[
    ("protocol", &["auto", "http1", "http2"]),
    ("direction", &["inbound", "outbound"]),
    (
        "lb",
        &[
            "round_robin",
            "random",
            "least_request",
            "peak_ewma",
            "ring_hash",
        ],
    ),
];

/// serde's words for a value that has the wrong type, in an operator's words.
/// `path` says where the value is, which tells what it should have been.
fn humanize(message: &str, path: &str) -> String {
    if message.starts_with("data did not match any variant of untagged enum EndpointSpec") {
        return "an endpoint is an \"ip:port\" string or a mapping {address: \"ip:port\", weight: N}".to_string();
    }
    if let Some(value) = between(message, "unknown variant `", "`") {
        let expected = expected_names(message);
        let mut out = format!(
            "unknown value `{value}`; expected one of {}",
            ticked(expected.iter().copied())
        );
        if let Some(close) = validate::closest(value, expected.iter().copied()) {
            out.push_str(&format!(" (did you mean `{close}`?)"));
        }
        return out;
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            if let Some((found, expected)) = rest.rsplit_once(", expected ") {
                let key = path.rsplit('.').next().unwrap_or(path);
                let expected = if expected == "a string" && DURATION_KEYS.contains(&key) {
                    "a duration: a number and a unit (us, ms, s, m, h), like \"250ms\" or \"2s\""
                        .to_string()
                } else if let Some((_, words)) = ENUM_KEYS.iter().find(|(k, _)| *k == key) {
                    format!("one of {}", ticked(words.iter().copied()))
                } else {
                    expected_words(expected)
                };
                return format!("expected {expected}, found {}", found_words(found));
            }
        }
    }
    message.to_string()
}

fn expected_words(expected: &str) -> String {
    match expected {
        "u16" => "a whole number from 0 to 65535".into(),
        "u32" => "a whole number from 0 to 4294967295".into(),
        "u64" | "usize" => "a whole number, 0 or more".into(),
        "f64" | "f32" => "a number".into(),
        "a boolean" => "`true` or `false`".into(),
        "a sequence" => "a list".into(),
        "a map" => "a mapping".into(),
        e if e.starts_with("struct ") => "a mapping".into(),
        e => e.to_string(),
    }
}

fn found_words(found: &str) -> String {
    match found {
        "unit value" => "an empty value".into(),
        "map" => "a mapping".into(),
        "sequence" => "a list".into(),
        f => {
            for (serde, words) in [
                ("integer ", "the number "),
                ("floating point ", "the number "),
                ("string ", "the string "),
                ("boolean ", ""),
            ] {
                if let Some(rest) = f.strip_prefix(serde) {
                    return format!("{words}{rest}");
                }
            }
            f.to_string()
        }
    }
}

/// A value's kind, for "found ..." in messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "an empty value".into(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged `{}`", t.tag),
    }
}
