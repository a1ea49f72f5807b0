//! Property tests of the loader: whatever the text, `load_str` returns a
//! config or errors that say where, and never panics.

use proptest::prelude::*;

use super::{load_str_with_env, ConfigError};

/// A config that loads, to break in small ways.
const VALID: &str = r#"admin:
  address: 127.0.0.1:15000
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    limits: { max_header_bytes: 8192, header_read_timeout: 5s }
    virtual_hosts:
      - name: local
        domains: ["*", "a.example:80"]
        routes:
          - match: { prefix: "/", headers: [{ name: x-a, exact: "1" }] }
            cluster: local_app
            timeout: 2s
            retry: { attempts: 2, on: [reset, "503"] }
clusters:
  - name: local_app
    lb: least_request
    endpoints: ["127.0.0.1:8080", { address: "127.0.0.1:8081", weight: 3 }]
    outlier_detection: { consecutive_failures: 3 }
"#;

/// Nothing but blanks and comments: an error about the whole file has no
/// line to point at.
fn blank(text: &str) -> bool {
    text.lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
}

fn load(text: &str) -> Result<(), Vec<ConfigError>> {
    let env = |name: &str| (name == "SET").then(|| "127.0.0.1".to_string());
    load_str_with_env(text, "prop.yaml", &env)
        .map(drop)
        .map_err(|e| e.0)
}

/// Bound: an answer, and every error of a file with content has a line.
fn check(text: &str) -> Result<(), TestCaseError> {
    let outcome = std::panic::catch_unwind(|| load(text));
    let Ok(result) = outcome else {
        return Err(TestCaseError::fail(format!(
            "the loader panicked on {text:?}"
        )));
    };
    if let Err(errors) = result {
        prop_assert!(!errors.is_empty(), "refused without an error: {text:?}");
        if !blank(text) {
            for e in &errors {
                prop_assert!(e.line.is_some(), "no position for `{e}` in {text:?}");
            }
        }
    }
    Ok(())
}

/// Pieces YAML and the schema are made of.
fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "\n",
        "  ",
        "- ",
        ": ",
        "{",
        "}",
        "[",
        "]",
        ",",
        "\"",
        "'",
        "#",
        "&a ",
        "*a",
        "<<: *a",
        "!!str ",
        "|",
        ">",
        "%",
        "@",
        "`",
        "~",
        "null",
        "0",
        "-1",
        "1e999",
        "4294967296",
        "0s",
        "1.5ms",
        "99999999999h",
        "${SET}",
        "${UNSET}",
        "$${",
        "admin",
        "address",
        "allow_remote",
        "listeners",
        "clusters",
        "name",
        "virtual_hosts",
        "domains",
        "routes",
        "match",
        "prefix",
        "path",
        "cluster",
        "endpoints",
        "weight",
        "limits",
        "retry",
        "attempts",
        "timeout",
        "tls",
        "key",
        "x-anchor",
        "127.0.0.1:0",
        "[::1]:0",
        "*",
        "\t",
        "\u{feff}",
        "é",
        "\u{0}",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Any text at all.
    #[test]
    fn any_text_is_answered(text in any::<String>()) {
        check(&text)?;
    }

    /// Text made of YAML's punctuation and the schema's words.
    #[test]
    fn yaml_like_text_is_answered(pieces in prop::collection::vec(piece(), 0..60)) {
        check(&pieces.concat())?;
    }

    /// A valid config with a few bytes cut, doubled or replaced.
    #[test]
    fn a_damaged_config_is_answered(
        edits in prop::collection::vec((0usize..VALID.len(), 0u8..3, piece()), 1..4)
    ) {
        let mut text = VALID.to_string();
        for (at, how, with) in edits {
            let mut at = at.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            match how {
                0 => {
                    let mut end = (at + 3).min(text.len());
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.replace_range(at..end, "");
                }
                1 => text.insert_str(at, with),
                _ => {
                    let mut end = (at + with.len()).min(text.len());
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.replace_range(at..end, with);
                }
            }
        }
        check(&text)?;
    }
}

#[test]
fn the_config_to_damage_is_valid() {
    assert_eq!(load(VALID).map_err(|e| e.len()), Ok(()));
}
