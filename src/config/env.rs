//! `${VAR}` expansion on the raw config text, before YAML parsing.
//!
//! Expanding the text (rather than parsed values) lets a variable stand for
//! any part of a scalar — `${POD_IP}:15006` — and keeps the rule simple to
//! state. Two promises keep error positions honest: line numbers never move
//! (a value containing a line break is refused), and [`Expanded::original_column`]
//! maps a column of the expanded text back to the column the operator wrote.
//!
//! The rules, as `docs/config.md` states them:
//! - `${NAME}` is replaced by the variable's value; unset is an error.
//! - `${NAME:-default}` uses `default` when `NAME` is unset or empty.
//! - `$$` is a literal `$` (so `$${NAME}` is the text `${NAME}`).
//! - any other `$` is kept as it is; `$NAME` without braces is not expanded.
//! - comments are left alone: nothing after a `#` that starts a comment is expanded.
//! - values are pasted in as they are; quote the scalar if a value may hold YAML syntax.

use std::collections::BTreeMap;

/// The config text after expansion, with what is needed to map positions back.
#[derive(Clone, Debug, Default)]
pub struct Expanded {
    /// The expanded text; it has exactly the lines of the original.
    pub text: String,
    /// Per 1-based line, the replacements made on it, left to right.
    edits: BTreeMap<usize, Vec<Edit>>,
}

/// One replacement on a line, in 1-based character columns.
#[derive(Clone, Copy, Debug)]
struct Edit {
    original_col: usize,
    original_len: usize,
    expanded_col: usize,
    expanded_len: usize,
}

/// Why the text could not be expanded, at the `$` where the trouble starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvError {
    /// 1-based line and column in the original text.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Expanded {
    /// The column in the original text of `column` (1-based, in characters)
    /// on `line` of the expanded text. A column inside a substituted value
    /// maps to the `$` that produced it.
    pub fn original_column(&self, line: usize, column: usize) -> usize {
        let Some(edits) = self.edits.get(&line) else {
            return column;
        };
        // `column + shift` for columns between edits; shift grows or shrinks after each edit.
        let mut shift: isize = 0;
        for e in edits {
            if column < e.expanded_col {
                break;
            }
            if column < e.expanded_col + e.expanded_len {
                return e.original_col;
            }
            shift = (e.original_col + e.original_len) as isize
                - (e.expanded_col + e.expanded_len) as isize;
        }
        column.saturating_add_signed(shift).max(1)
    }
}

/// Expand `${VAR}`, `${VAR:-default}` and `$$` in `text`, looking variables up
/// through `env`. Every problem is reported, not only the first.
pub fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Expanded, Vec<EnvError>> {
    let mut out = Expanded {
        text: String::with_capacity(text.len()),
        edits: BTreeMap::new(),
    };
    let mut errors = Vec::new();
    for (i, raw_line) in text.split_inclusive('\n').enumerate() {
        let line_no = i + 1;
        let edits = expand_line(raw_line, line_no, env, &mut out.text, &mut errors);
        if !edits.is_empty() {
            out.edits.insert(line_no, edits);
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn expand_line(
    line: &str,
    line_no: usize,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
    errors: &mut Vec<EnvError>,
) -> Vec<Edit> {
    let chars: Vec<char> = line.chars().collect();
    let comment = comment_start(&chars);
    let mut edits = Vec::new();
    let mut expanded_col = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if comment.is_some_and(|start| i >= start) || c != '$' {
            out.push(c);
            i += 1;
            expanded_col += 1;
            continue;
        }
        let error = |message: String| EnvError {
            line: line_no,
            column: i + 1,
            message,
        };
        let (consumed, mut value) = match chars.get(i + 1) {
            Some('$') => (2, "$".to_string()),
            Some('{') => match substitute(&chars[i + 2..], env) {
                Ok((len, name, value)) => {
                    if value.contains(['\n', '\r']) {
                        errors.push(error(format!(
                            "the value of `{name}` contains a line break; config values must fit on one line"
                        )));
                    }
                    (len + 2, value)
                }
                Err(message) => {
                    errors.push(error(message));
                    // Skip to the closing brace (or the line end) and go on looking for more.
                    let rest = chars[i..]
                        .iter()
                        .position(|&c| c == '}')
                        .map_or(chars.len() - i, |p| p + 1);
                    i += rest;
                    continue;
                }
            },
            _ => {
                out.push(c);
                i += 1;
                expanded_col += 1;
                continue;
            }
        };
        if value.contains(['\n', '\r']) {
            value.clear(); // reported above; keep the line count
        }
        let expanded_len = value.chars().count();
        edits.push(Edit {
            original_col: i + 1,
            original_len: consumed,
            expanded_col,
            expanded_len,
        });
        out.push_str(&value);
        expanded_col += expanded_len;
        i += consumed;
    }
    edits
}

/// Resolve the inside of `${...}`; `rest` starts just after `${`.
/// Returns the characters consumed (the closing `}` included), the name and the value.
fn substitute(
    rest: &[char],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(usize, String, String), String> {
    let Some(close) = rest.iter().position(|&c| c == '}') else {
        return Err(
            "`${` is not closed by `}` on this line; write `$$` for a literal `$`".to_string(),
        );
    };
    let inner: String = rest[..close].iter().collect();
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner.as_str(), None),
    };
    if !is_var_name(name) {
        return Err(format!(
            "`${{{inner}}}` is not a variable reference: names are letters, digits and `_`, not starting with a digit (forms: `${{NAME}}`, `${{NAME:-default}}`)"
        ));
    }
    if default.is_some_and(|d| d.contains("${")) {
        return Err(format!(
            "`${{{name}:-...}}`: a default cannot refer to another variable"
        ));
    }
    let value = match (env(name), default) {
        (Some(v), Some(d)) if v.is_empty() => d.to_string(),
        (Some(v), _) => v,
        (None, Some(d)) => d.to_string(),
        (None, None) => {
            return Err(format!(
                "environment variable `{name}` is not set; set it, or give a default with `${{{name}:-value}}`"
            ))
        }
    };
    Ok((close + 1, name.to_string(), value))
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Where a comment starts on this line, if it has one: a `#` at the line
/// start or after a blank, outside a quoted scalar. Quotes count only where a
/// scalar may start, so the apostrophe in `it's` does not open one.
fn comment_start(chars: &[char]) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let prev = if i == 0 { None } else { Some(chars[i - 1]) };
        match quote {
            Some('"') if c == '\\' => i += 1, // skip the escaped character
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => {
                let at_scalar_start =
                    prev.is_none_or(|p| p.is_whitespace() || matches!(p, '[' | '{' | ','));
                if (c == '"' || c == '\'') && at_scalar_start {
                    quote = Some(c);
                } else if c == '#' && prev.is_none_or(char::is_whitespace) {
                    return Some(i);
                }
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "POD_IP" => Some("10.1.2.3".into()),
            "EMPTY" => Some(String::new()),
            "MULTI" => Some("a\nb".into()),
            _ => None,
        }
    }

    fn ok(text: &str) -> String {
        expand(text, &env).unwrap().text
    }

    fn errs(text: &str) -> Vec<EnvError> {
        expand(text, &env).unwrap_err()
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        assert_eq!(
            ok("address: ${POD_IP}:15006\n"),
            "address: 10.1.2.3:15006\n"
        );
        assert_eq!(ok("a: ${NOPE:-127.0.0.1}\n"), "a: 127.0.0.1\n");
        assert_eq!(ok("a: ${POD_IP:-x}\n"), "a: 10.1.2.3\n");
        assert_eq!(ok("a: ${EMPTY:-fallback}\n"), "a: fallback\n");
        assert_eq!(ok("a: ${EMPTY}\n"), "a: \n");
        assert_eq!(ok("a: ${NOPE:-}\n"), "a: \n");
        assert_eq!(
            ok("a: \"${POD_IP}\" b: '${POD_IP}'"),
            "a: \"10.1.2.3\" b: '10.1.2.3'"
        );
    }

    #[test]
    fn dollar_rules() {
        assert_eq!(ok("a: $$\n"), "a: $\n");
        assert_eq!(ok("a: $${POD_IP}\n"), "a: ${POD_IP}\n");
        assert_eq!(ok("a: $HOME and 5$ and $\n"), "a: $HOME and 5$ and $\n");
    }

    #[test]
    fn comments_are_left_alone() {
        assert_eq!(ok("# uses ${UNSET}\n"), "# uses ${UNSET}\n");
        assert_eq!(
            ok("a: ${POD_IP} # not ${UNSET} $$\n"),
            "a: 10.1.2.3 # not ${UNSET} $$\n"
        );
        assert_eq!(ok("a: \"x # ${POD_IP}\"\n"), "a: \"x # 10.1.2.3\"\n");
        assert_eq!(
            ok("a: it's ${POD_IP} # ${UNSET}\n"),
            "a: it's 10.1.2.3 # ${UNSET}\n"
        );
        assert_eq!(ok("a: b#${POD_IP}\n"), "a: b#10.1.2.3\n");
    }

    #[test]
    fn unset_variables_are_errors_with_positions() {
        let e = errs("a: 1\nb: x ${ONE}\n  c: ${TWO} ${POD_IP}\n");
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].line, e[0].column), (2, 6));
        assert!(
            e[0].message.contains("`ONE` is not set"),
            "{}",
            e[0].message
        );
        assert_eq!((e[1].line, e[1].column), (3, 6));
        assert!(e[1].message.contains("`TWO`"));
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(errs("a: ${POD_IP\n")[0].message.contains("not closed"));
        assert!(errs("a: ${}\n")[0]
            .message
            .contains("not a variable reference"));
        assert!(errs("a: ${1X}\n")[0]
            .message
            .contains("not a variable reference"));
        assert!(errs("a: ${A:-${B}}\n")[0].message.contains("cannot refer"));
        assert!(errs("a: ${MULTI}\n")[0].message.contains("line break"));
    }

    #[test]
    fn lines_stay_put_and_columns_map_back() {
        let text = "x: 1\naddress: ${POD_IP}:15006 # c\ny: $$a ${NOPE:-ab}z\n";
        let e = expand(text, &env).unwrap();
        assert_eq!(e.text.lines().count(), text.lines().count());
        // line 2: "address: 10.1.2.3:15006" — `:15006` starts at expanded col 18, original col 19.
        assert_eq!(e.original_column(2, 10), 10); // inside the value -> the `$`
        assert_eq!(e.original_column(2, 17), 10);
        assert_eq!(e.original_column(2, 18), 19);
        assert_eq!(e.original_column(2, 1), 1);
        // line 3: "y: $a abz" — `a` after `$$` at expanded 5 -> original 6; `z` at 9 -> 17.
        assert_eq!(e.original_column(3, 5), 6);
        assert_eq!(e.original_column(3, 7), 8);
        assert_eq!(e.original_column(3, 9), 19);
        assert_eq!(e.original_column(1, 3), 3);
    }
}
