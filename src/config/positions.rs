//! An index from YAML path to line:column, built from the config text.
//!
//! serde_yaml tells where a *syntax* error is, but a parsed value no longer
//! knows where it came from, so rule errors ("unknown cluster `x`") would have
//! no position. This index walks the same text with yaml-rust2's event parser
//! and records, for every node, where its key and its value start. Paths are
//! written the way errors print them: `listeners[0].virtual_hosts[1].domains[2]`.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column (columns count characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// A key written twice in one mapping (YAML forbids it; serde_yaml names only the first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateKey {
    /// Path of the repeated entry, e.g. `clusters[0].name`.
    pub path: String,
    pub first: Pos,
    pub again: Pos,
}

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    /// Where the key starts, for a mapping entry.
    key: Option<Pos>,
    /// Where the value starts: a scalar's first character (its quote, if
    /// quoted), a flow collection's bracket, a block sequence's first `-`, a
    /// block mapping's first key.
    value: Option<Pos>,
}

/// Positions of every key and value in one YAML document.
#[derive(Clone, Debug, Default)]
pub struct PositionIndex {
    entries: HashMap<String, Entry>,
    duplicates: Vec<DuplicateKey>,
}

impl PositionIndex {
    /// Index the first document of `text`. Fails only on YAML syntax errors,
    /// with the scanner's message and position.
    pub fn build(text: &str) -> Result<PositionIndex, (Pos, String)> {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        parser
            .load(&mut builder, false)
            .map_err(|e| (pos(e.marker()), e.info().to_string()))?;
        Ok(PositionIndex {
            entries: builder.entries,
            duplicates: builder.duplicates,
        })
    }

    /// Where the key of the mapping entry at `path` starts.
    pub fn key(&self, path: &str) -> Option<Pos> {
        self.entries.get(path).and_then(|e| e.key)
    }

    /// Where the value at `path` starts (`""` is the whole document).
    pub fn value(&self, path: &str) -> Option<Pos> {
        self.entries.get(path).and_then(|e| e.value)
    }

    /// The best position for `path`: its key, else its value, else that of
    /// the nearest enclosing node the text has (a path may name a key that
    /// is missing, or one that came from a merge).
    pub fn locate(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(found) = self.key(p).or_else(|| self.value(p)) {
                return Some(found);
            }
            if p.is_empty() {
                return None;
            }
            p = parent(p);
        }
    }

    /// Like [`locate`](Self::locate), but prefer the value over the key.
    pub fn locate_value(&self, path: &str) -> Option<Pos> {
        self.value(path).or_else(|| self.locate(path))
    }

    /// Keys written twice in one mapping, in the order they appear.
    pub fn duplicates(&self) -> &[DuplicateKey] {
        &self.duplicates
    }
}

/// The path of the node that holds `path`: `a.b[0].c` → `a.b[0]` → `a.b` → `a` → ``.
pub fn parent(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

fn pos(m: &Marker) -> Pos {
    // yaml-rust2 lines are 1-based, columns 0-based.
    Pos {
        line: m.line(),
        column: m.col() + 1,
    }
}

/// A collection being walked. `path` is `None` under a complex (non-scalar) key.
#[derive(Debug)]
enum Frame {
    Map {
        path: Option<String>,
        /// The key whose value comes next; `None` while a key is expected.
        key: Option<Option<String>>,
        seen: HashMap<String, Pos>,
        /// Set when the mapping's position should come from its first key (block style).
        first_key_pending: bool,
    },
    Seq {
        path: Option<String>,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    entries: HashMap<String, Entry>,
    duplicates: Vec<DuplicateKey>,
}

impl Builder {
    /// A node starts at `at`: work out its path from the enclosing frame.
    /// Returns `(path, is_key)`.
    fn place(&mut self, scalar: Option<&str>, at: Pos) -> (Option<String>, bool) {
        let Some(top) = self.stack.last_mut() else {
            // The document's root node.
            return (Some(String::new()), false);
        };
        match top {
            Frame::Seq { path, next } => {
                let p = path.as_ref().map(|p| format!("{p}[{next}]"));
                *next += 1;
                (p, false)
            }
            Frame::Map {
                path,
                key,
                seen,
                first_key_pending,
            } => match key.take() {
                None => {
                    // This node is a key.
                    let parent_path = path.clone();
                    let map_path = parent_path.clone();
                    let name = scalar.map(str::to_string);
                    *key = Some(name.clone());
                    if *first_key_pending {
                        *first_key_pending = false;
                        if let Some(mp) = &map_path {
                            let e = self.entries.entry(mp.clone()).or_default();
                            if e.value.is_none_or(|v| at < v) {
                                e.value = Some(at);
                            }
                        }
                    }
                    let (Some(parent_path), Some(name)) = (parent_path, name) else {
                        return (None, true);
                    };
                    let p = join(&parent_path, &name);
                    if let Some(first) = seen.get(&name) {
                        // The repeated entry's value has no path of its own.
                        *key = Some(None);
                        self.duplicates.push(DuplicateKey {
                            path: p,
                            first: *first,
                            again: at,
                        });
                        return (None, true);
                    }
                    seen.insert(name, at);
                    (Some(p), true)
                }
                Some(name) => {
                    // This node is the value of `name`.
                    let p = match (path.as_ref(), name) {
                        (Some(path), Some(name)) => Some(join(path, &name)),
                        _ => None,
                    };
                    (p, false)
                }
            },
        }
    }

    fn record(&mut self, path: &Option<String>, is_key: bool, at: Pos) {
        let Some(p) = path else { return };
        let e = self.entries.entry(p.clone()).or_default();
        if is_key {
            e.key = Some(at);
        } else {
            e.value = Some(at);
        }
    }

    /// A scalar or alias: a leaf.
    fn leaf(&mut self, scalar: Option<&str>, at: Pos) {
        let (path, is_key) = self.place(scalar, at);
        self.record(&path, is_key, at);
    }

    /// A mapping or sequence starts.
    fn open(&mut self, is_map: bool, at: Pos) {
        let (path, is_key) = self.place(None, at);
        let path = if is_key { None } else { path };
        self.record(&path, false, at);
        self.stack.push(if is_map {
            Frame::Map {
                path,
                key: None,
                seen: HashMap::new(),
                first_key_pending: true,
            }
        } else {
            Frame::Seq { path, next: 0 }
        });
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let at = pos(&mark);
        match ev {
            Event::Scalar(value, ..) => self.leaf(Some(&value), at),
            Event::Alias(_) => self.leaf(None, at),
            Event::MappingStart(..) => self.open(true, at),
            Event::SequenceStart(..) => self.open(false, at),
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn p(line: usize, column: usize) -> Option<Pos> {
        Some(Pos { line, column })
    }

    const BLOCK: &str = "\
admin:
  address: 127.0.0.1:15000
listeners:
  - name: outbound
    address: \"127.0.0.1:15001\"
    virtual_hosts:
      - name: a
        domains: [\"a\", b]
        routes:
          - match: { prefix: \"/x\" }
            cluster: inventory
      - name: b
        domains:
          - \"c\"
          - d
        routes:
          - match:
              path: /y
            cluster: other
";

    #[test]
    fn block_style_keys_and_values() {
        let ix = PositionIndex::build(BLOCK).unwrap();
        assert_eq!(ix.key("admin"), p(1, 1));
        assert_eq!(ix.value("admin"), p(2, 3));
        assert_eq!(ix.key("admin.address"), p(2, 3));
        assert_eq!(ix.value("admin.address"), p(2, 12));
        assert_eq!(ix.value("listeners"), p(4, 3));
        assert_eq!(ix.value("listeners[0]"), p(4, 5));
        assert_eq!(ix.key("listeners[0].name"), p(4, 5));
        assert_eq!(ix.value("listeners[0].address"), p(5, 14));
        assert_eq!(ix.value("listeners[0].virtual_hosts[1]"), p(12, 9));
        assert_eq!(
            ix.value("listeners[0].virtual_hosts[1].domains[1]"),
            p(15, 13)
        );
        assert_eq!(
            ix.key("listeners[0].virtual_hosts[1].routes[0].match.path"),
            p(18, 15)
        );
        assert_eq!(
            ix.key("listeners[0].virtual_hosts[1].routes[0].cluster"),
            p(19, 13)
        );
        assert_eq!(
            ix.value("listeners[0].virtual_hosts[1].routes[0].cluster"),
            p(19, 22)
        );
        assert_eq!(ix.value(""), p(1, 1));
    }

    #[test]
    fn flow_style_keys_and_values() {
        let ix = PositionIndex::build(BLOCK).unwrap();
        let route = "listeners[0].virtual_hosts[0].routes[0]";
        assert_eq!(ix.value(&format!("{route}.match")), p(10, 20));
        assert_eq!(ix.key(&format!("{route}.match.prefix")), p(10, 22));
        assert_eq!(ix.value(&format!("{route}.match.prefix")), p(10, 30));
        assert_eq!(ix.value("listeners[0].virtual_hosts[0].domains"), p(8, 18));
        assert_eq!(
            ix.value("listeners[0].virtual_hosts[0].domains[0]"),
            p(8, 19)
        );
        assert_eq!(
            ix.value("listeners[0].virtual_hosts[0].domains[1]"),
            p(8, 24)
        );
        let ix = PositionIndex::build("{a: [1, {b: c}], d: x}").unwrap();
        assert_eq!(ix.value(""), p(1, 1));
        assert_eq!(ix.key("a"), p(1, 2));
        assert_eq!(ix.value("a[1]"), p(1, 9));
        assert_eq!(ix.key("a[1].b"), p(1, 10));
        assert_eq!(ix.key("d"), p(1, 18));
    }

    #[test]
    fn locate_falls_back_to_the_nearest_node() {
        let ix = PositionIndex::build(BLOCK).unwrap();
        assert_eq!(ix.locate("admin.address"), p(2, 3));
        assert_eq!(ix.locate_value("admin.address"), p(2, 12));
        assert_eq!(ix.locate("admin.nope"), p(1, 1));
        assert_eq!(
            ix.locate("listeners[0].virtual_hosts[0].routes[0].timeout"),
            p(10, 13)
        );
        assert_eq!(ix.locate("listeners[7].x"), p(3, 1));
        assert_eq!(ix.locate("nothing"), p(1, 1));
    }

    #[test]
    fn duplicate_keys_are_listed_and_keep_the_first_position() {
        let ix = PositionIndex::build("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n").unwrap();
        assert_eq!(
            ix.duplicates(),
            &[
                DuplicateKey {
                    path: "b.c".into(),
                    first: Pos { line: 3, column: 3 },
                    again: Pos { line: 4, column: 3 }
                },
                DuplicateKey {
                    path: "a".into(),
                    first: Pos { line: 1, column: 1 },
                    again: Pos { line: 5, column: 1 }
                },
            ]
        );
        assert_eq!(ix.value("a"), p(1, 4));
        assert_eq!(ix.value("b.c"), p(3, 6));
    }

    #[test]
    fn aliases_complex_keys_and_syntax_errors() {
        let ix = PositionIndex::build("x: &a {k: 1}\ny: *a\n? [1, 2]\n: v\nz: 1\n").unwrap();
        assert_eq!(ix.value("y"), p(2, 4));
        assert_eq!(ix.key("z"), p(5, 1));
        let (at, msg) = PositionIndex::build("a: [1,\n").unwrap_err();
        assert!(at.line >= 1 && !msg.is_empty());
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent("a.b[0].c"), "a.b[0]");
        assert_eq!(parent("a.b[0]"), "a.b");
        assert_eq!(parent("a"), "");
        assert_eq!(parent(""), "");
    }
}
