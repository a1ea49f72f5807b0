//! serde's and serde_yaml's messages, in the words an operator reads.
//!
//! serde names Rust types ("u16", "struct Listener", "an enum"); these
//! functions name what to write instead ("a whole number from 0 to 65535",
//! "a mapping", "one of `auto`, `http1`, `http2`"), say where an unknown key
//! was found, and suggest the closest known name for a likely typo. Plain
//! text in, plain text out: positions and paths are the caller's.

use serde_yaml::Value;

/// The text between `start` and the next `end` in `s`.
pub(super) fn between<'s>(s: &'s str, start: &str, end: &str) -> Option<&'s str> {
    let rest = &s[s.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

/// The names serde lists after "expected" in an unknown field/variant message.
pub(super) fn expected_names(message: &str) -> Vec<&str> {
    let Some(i) = message.find("expected") else {
        return Vec::new();
    };
    message[i..].split('`').skip(1).step_by(2).collect()
}

/// "unknown key `foo` in listener; expected one of `name`, ... (did you mean `bar`?)"
pub(super) fn unknown_key(key: &str, holder: &str, expected: &[&str]) -> String {
    let place = if holder.is_empty() {
        "at the top level".to_string()
    } else {
        format!("in {}", noun(holder))
    };
    let mut message = format!("unknown key `{key}` {place}");
    if let Some(close) = closest(key, expected.iter().copied()) {
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
pub(super) fn noun(path: &str) -> String {
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
    "write_stall_timeout",
    "idle_timeout",
    "refresh",
    "interval",
    "base_ejection_time",
    "base",
    "max",
    "discovery_timeout",
    "decay",
    "default_rtt",
    "leeway",
];

/// Keys whose values are one of a few words, for when a non-word is given
/// (serde then names only "an enum").
const ENUM_KEYS: &[(&str, &[&str])] = &[
    ("protocol", &["auto", "http1", "http2"]),
    ("direction", &["inbound", "outbound"]),
    ("fallback", &["local", "allow", "deny"]),
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
pub(super) fn humanize(message: &str, path: &str) -> String {
    if message.starts_with("data did not match any variant of untagged enum EndpointSpec") {
        return "an endpoint is an \"ip:port\" string or a mapping {address: \"ip:port\", weight: N}".to_string();
    }
    if let Some(value) = between(message, "unknown variant `", "`") {
        let expected = expected_names(message);
        let mut out = format!(
            "unknown value `{value}`; expected one of {}",
            ticked(expected.iter().copied())
        );
        if let Some(close) = closest(value, expected.iter().copied()) {
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
pub(super) fn describe(v: &Value) -> String {
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

/// The candidate closest to `word`, if close enough to be a likely typo.
pub(crate) fn closest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (edit_distance(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            closest("inventroy", ["inventory", "payment"]),
            Some("inventory")
        );
        assert_eq!(
            closest("virtual_host", ["name", "virtual_hosts"]),
            Some("virtual_hosts")
        );
        assert_eq!(closest("zzz", ["inventory", "payment"]), None);
        assert_eq!(closest("Payment", ["payment"]), Some("payment"));
    }
}
