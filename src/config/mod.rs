//! Configuration: parse the YAML (every key in docs/config.md), validate it,
//! hand out a typed [`Config`].
//!
//! Three steps, in this order: expand `${VAR}` in the text ([`env`]), parse
//! with serde (unknown keys refused), then validate the rules that span
//! fields (`validate/`). Every error is collected with its file,
//! line:column ([`positions`]) and YAML path, so one run of `skiff validate`
//! shows everything there is to fix. Nothing binds before this passes.
//!
//! Parsing goes section by section — `admin`, `runtime`, each listener, each
//! cluster — and inside a section it goes on past an error by setting the bad
//! entry aside and trying again, so one typo does not hide the next one.
//! Rule errors about something that did not parse are left out: they would
//! only repeat the parse error in other words.
//!
//! The parse pass lives in `parse.rs`, the words of its messages in
//! `wording.rs`; this file holds the error types, the `load_*` entry points
//! and the `Locator` that gives every error its line and column.

pub mod duration;
pub mod env;
pub mod model;
mod parse;
pub mod positions;
#[cfg(test)]
mod props;
mod validate;
mod wording;

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde_yaml::Value;

pub use duration::Dur;
pub use model::*;

use env::Expanded;
use parse::Parse;
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

/// Something valid in a config that is probably not what was meant: the
/// same place and path as an error, printed with `warning:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning(pub ConfigError);

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.0;
        write!(f, "{}", w.file)?;
        if let Some(line) = w.line {
            write!(f, ":{line}")?;
            if let Some(col) = w.column {
                write!(f, ":{col}")?;
            }
        }
        if !w.path.is_empty() {
            write!(f, ": {}", w.path)?;
        }
        write!(f, ": warning: {}", w.message)
    }
}

/// A config checked: the config or its errors, and the warnings either
/// way (in file order).
#[derive(Debug)]
pub struct Checked {
    pub config: Result<Config, ConfigErrors>,
    pub warnings: Vec<ConfigWarning>,
}

/// As [`load_file`], with the warnings (`skiff validate`, `skiff run`).
pub fn check_file(path: &Path) -> Checked {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut warnings = Vec::new();
            let config = load_checked(
                &text,
                &origin,
                &|name| std::env::var(name).ok(),
                &mut warnings,
            );
            Checked { config, warnings }
        }
        Err(_) => Checked {
            config: load_file(path),
            warnings: Vec::new(),
        },
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
    load_checked(text, origin, env, &mut Vec::new())
}

/// The loading itself; the warnings about what parsed go to `warnings`.
fn load_checked(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<ConfigWarning>,
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
    // Every error needs a position, so the text must be YAML the position
    // index reads too. It is the stricter parser: libyaml lets through
    // text the YAML spec refuses (a flow collection continued at column 1,
    // a `?` key with no space after it), which would leave every error of
    // the file without a line.
    let index = match PositionIndex::build(&expanded.text) {
        Ok(index) => index,
        Err((pos, message)) => {
            return Err(ConfigErrors(vec![ConfigError {
                file: origin.to_string(),
                line: Some(pos.line),
                column: Some(expanded.original_column(pos.line, pos.column)),
                path: String::new(),
                message: format!("YAML syntax error: {message}"),
            }]))
        }
    };
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
    let mut found = validate::warnings(&draft, &at);
    found.sort_by_key(|w| (w.line.unwrap_or(0), w.column.unwrap_or(0)));
    warnings.extend(found.into_iter().map(ConfigWarning));
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

    /// Whether the file writes a value at `path` (a key with a default may be absent).
    pub(crate) fn exists(&self, path: &str) -> bool {
        self.index.value(path).is_some()
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
    // serde_yaml gives some errors (a second document, say) no location:
    // the index parser's, or else where the document starts.
    let pos = e
        .location()
        .map(|l| Pos {
            line: l.line(),
            column: l.column(),
        })
        .or_else(|| PositionIndex::build(&expanded.text).err().map(|(p, _)| p))
        .or_else(|| document_start(&expanded.text));
    let mut message = e.to_string();
    if let Some(p) = pos {
        // The position is printed in front already; keep only the rest.
        message = message.replacen(&format!(" at line {} column {}", p.line, p.column), "", 1);
    }
    ConfigErrors(vec![at(pos, "", format!("YAML syntax error: {message}"))])
}

/// The first character of the first line that is not blank or a comment.
fn document_start(text: &str) -> Option<Pos> {
    text.lines().enumerate().find_map(|(i, l)| {
        let trimmed = l.trim_start();
        (!trimmed.is_empty() && !trimmed.starts_with('#')).then(|| Pos {
            line: i + 1,
            column: l.chars().count() - trimmed.chars().count() + 1,
        })
    })
}
