//! The routes of one virtual host, indexed by path, so finding the first
//! match does not try every route in turn.
//!
//! A route's path condition is one of: none, an exact path, or a prefix.
//! Routes without one sit in a list and exact paths in a hash map. Prefixes
//! that end in `/` — gRPC's `/package.Service/`, REST's `/api/v1/` — can only
//! match the path up to one of its own slashes, so they sit in a hash map
//! too, looked up once per slash of the path (up to the deepest such
//! prefix). Other prefixes sit in a radix trie. Each node stands for the
//! prefix spelled by the bytes on the edges from the root down to it (the
//! root for the empty prefix) and holds the routes whose prefix that is. An
//! edge carries as many bytes as it can: every node but the root holds
//! routes or has two children or more. The children of a node differ in the
//! first byte of their edges and are kept sorted by it. The nodes whose
//! prefix the request path starts with — its stored prefixes, and the points
//! where those part from other prefixes — lie on one walk down from the
//! root, each step a binary search over at most 256 first bytes and a
//! comparison with one edge. Each step consumes at least one byte of
//! the path, so a lookup takes at most as many steps as the path is long,
//! however many prefixes the trie holds. Each node also keeps the smallest
//! route index at or below it; the walk stops at a node whose least index is
//! not below the best match found so far, as nothing under it can come first.
//!
//! Each list holds route indices in config order, so the first match is the
//! smallest index, over all lists, whose other conditions (method, headers)
//! hold: the order is exactly the one a scan of the routes would find.

use std::collections::HashMap;
use std::mem::take;

use super::PathMatch;

#[derive(Default)]
pub(super) struct RouteIndex {
    any: Vec<usize>,
    exact: HashMap<Box<str>, Vec<usize>>,
    /// Prefixes ending in `/`.
    at_slash: HashMap<Box<str>, Vec<usize>>,
    /// The most slashes in a key of `at_slash`.
    deepest: usize,
    /// The other prefixes. The root stands for the empty prefix.
    trie: Node,
}

/// One node of the prefix trie.
struct Node {
    /// The bytes this node's prefix adds to its parent's; empty at the root
    /// only.
    edge: Box<[u8]>,
    /// The routes whose prefix ends here, in config order.
    routes: Vec<usize>,
    /// The smallest route index here or anywhere below; `usize::MAX` in an
    /// empty trie.
    least: usize,
    /// The children, each with the first byte of its edge, sorted by that
    /// byte.
    children: Vec<(u8, Node)>,
}

impl Default for Node {
    fn default() -> Self {
        Node {
            edge: Box::default(),
            routes: Vec::new(),
            least: usize::MAX,
            children: Vec::new(),
        }
    }
}

impl Node {
    /// Adds `route` under `prefix`, with `self` as the root. Routes must be
    /// added in config order.
    fn insert(&mut self, prefix: &[u8], route: usize) {
        let mut node = self;
        let mut rest = prefix;
        loop {
            node.least = node.least.min(route);
            let Some(&first) = rest.first() else {
                node.routes.push(route);
                return;
            };
            let at = match node.children.binary_search_by_key(&first, |(b, _)| *b) {
                Ok(at) => at,
                Err(at) => {
                    let leaf = Node {
                        edge: rest.into(),
                        routes: vec![route],
                        least: route,
                        children: Vec::new(),
                    };
                    node.children.insert(at, (first, leaf));
                    return;
                }
            };
            let Some((_, child)) = node.children.get_mut(at) else {
                return;
            };
            let common = common_prefix_len(&child.edge, rest);
            if common < child.edge.len() {
                child.split(common);
            }
            rest = rest.get(common..).unwrap_or_default();
            node = child;
        }
    }

    /// Cuts this node's edge after its first `len` bytes (`0 < len <
    /// edge.len()`): the node keeps those bytes, and a new only child takes
    /// the rest of the edge together with the node's routes and children.
    fn split(&mut self, len: usize) {
        let Some((head, tail)) = self.edge.split_at_checked(len) else {
            return;
        };
        let Some(&first) = tail.first() else {
            return;
        };
        let lower = Node {
            edge: tail.into(),
            routes: take(&mut self.routes),
            least: self.least,
            children: take(&mut self.children),
        };
        self.edge = head.into();
        self.children = vec![(first, lower)];
    }
}

impl RouteIndex {
    pub(super) fn build<'a>(paths: impl IntoIterator<Item = &'a PathMatch>) -> Self {
        let mut index = RouteIndex::default();
        for (i, path) in paths.into_iter().enumerate() {
            match path {
                PathMatch::Any => index.any.push(i),
                PathMatch::Exact(p) => index.exact.entry(p.as_str().into()).or_default().push(i),
                PathMatch::Prefix(p) if p.ends_with('/') => {
                    index.deepest = index.deepest.max(p.matches('/').count());
                    index.at_slash.entry(p.as_str().into()).or_default().push(i);
                }
                PathMatch::Prefix(p) => index.trie.insert(p.as_bytes(), i),
            }
        }
        index
    }

    /// The first route, in config order, whose path condition holds for
    /// `path` and for which `rest` (the route's other conditions) holds.
    pub(super) fn first(&self, path: &str, mut rest: impl FnMut(usize) -> bool) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut consider = |routes: &[usize], best: &mut Option<usize>| {
            for &i in routes {
                if best.is_some_and(|b| i >= b) {
                    return;
                }
                if rest(i) {
                    *best = Some(i);
                    return;
                }
            }
        };
        consider(&self.any, &mut best);
        if !self.exact.is_empty() {
            if let Some(routes) = self.exact.get(path) {
                consider(routes, &mut best);
            }
        }
        if !self.at_slash.is_empty() {
            let slashes = path.bytes().enumerate().filter(|(_, b)| *b == b'/');
            for (at, _) in slashes.take(self.deepest) {
                if let Some(routes) = path.get(..=at).and_then(|p| self.at_slash.get(p)) {
                    consider(routes, &mut best);
                }
            }
        }
        let mut node = &self.trie;
        let mut left = path.as_bytes();
        while best.is_none_or(|b| node.least < b) {
            consider(&node.routes, &mut best);
            let Some(&first) = left.first() else {
                break;
            };
            let Ok(at) = node.children.binary_search_by_key(&first, |(b, _)| *b) else {
                break;
            };
            let Some((_, child)) = node.children.get(at) else {
                break;
            };
            let Some(after) = left.strip_prefix(&*child.edge) else {
                break;
            };
            node = child;
            left = after;
        }
        best
    }
}

fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(paths: &[PathMatch]) -> RouteIndex {
        RouteIndex::build(paths)
    }

    fn p(s: &str) -> PathMatch {
        PathMatch::Prefix(s.into())
    }

    fn e(s: &str) -> PathMatch {
        PathMatch::Exact(s.into())
    }

    /// The first match as a scan of the routes finds it.
    fn scan(paths: &[PathMatch], path: &str, rest: impl Fn(usize) -> bool) -> Option<usize> {
        paths.iter().enumerate().position(|(i, m)| {
            let holds = match m {
                PathMatch::Any => true,
                PathMatch::Prefix(p) => path.starts_with(p.as_str()),
                PathMatch::Exact(p) => path == p,
            };
            holds && rest(i)
        })
    }

    /// The trie as text: each node's edge, its routes, then its children.
    fn shape(node: &Node) -> String {
        let mut out = format!("{:?}{:?}", String::from_utf8_lossy(&node.edge), node.routes);
        if !node.children.is_empty() {
            let children: Vec<String> = node.children.iter().map(|(_, c)| shape(c)).collect();
            out.push_str(&format!("{{{}}}", children.join(" ")));
        }
        out
    }

    #[test]
    fn edges_split_where_prefixes_part() {
        // Config validation wants prefixes to start with `/`, but the index
        // takes the empty prefix too: it sits at the root and matches all.
        let routes = [
            p("/abcdef"),
            p("/abc"), // a proper prefix of "/abcdef": that edge splits after "/abc"
            p("/abd"), // parts from "/abc" mid-edge: a node for "/ab" appears
            p("/ab"),  // ends exactly at that node
            p("/x"),   // parts at the first byte after "/"
            p(""),
            p("/abc"), // a second route on an existing node
        ];
        let ix = index(&routes);
        assert_eq!(
            shape(&ix.trie),
            r#"""[5]{"/"[]{"ab"[3]{"c"[1, 6]{"def"[0]} "d"[2]} "x"[4]}}"#
        );
        assert_eq!(ix.trie.least, 0);
        // Paths that end mid-edge, at a node, and past a leaf.
        let paths = [
            "", "/", "/a", "/ab", "/abc", "/abcd", "/abcdef", "/abcdefg", "/abd", "/abdx", "/abe",
            "/x", "/xy", "/y",
        ];
        for path in paths {
            for refused in 0..routes.len() {
                assert_eq!(
                    ix.first(path, |i| i != refused),
                    scan(&routes, path, |i| i != refused),
                    "path {path:?}, route {refused} refused"
                );
            }
        }
        assert_eq!(ix.first("/abcd", |_| true), Some(1));
        assert_eq!(ix.first("/abcd", |i| i != 1), Some(3));
        assert_eq!(ix.first("/a", |_| true), Some(5));
        assert_eq!(ix.first("/abcdef", |i| i == 5), Some(5));
        assert_eq!(ix.first("/abcdef", |i| i == 6), Some(6));

        let empty = index(&[]);
        assert_eq!(empty.trie.least, usize::MAX);
        assert_eq!(empty.first("/a", |_| true), None);
    }

    #[test]
    fn first_match_in_config_order() {
        let routes = [
            p("/a.B/"),
            e("/a.B/Get"),
            p("/a"),
            PathMatch::Any,
            p("/a.B/G"),
        ];
        let ix = index(&routes);
        assert_eq!(ix.first("/a.B/Get", |_| true), Some(0));
        assert_eq!(ix.first("/a.C/Get", |_| true), Some(2));
        assert_eq!(ix.first("/z", |_| true), Some(3));
        // Route 0 refuses (say, its method differs): the exact route is next.
        assert_eq!(ix.first("/a.B/Get", |i| i != 0), Some(1));
        assert_eq!(ix.first("/a.B/Get", |i| i > 3), Some(4));
        assert_eq!(ix.first("/a.B/Get", |_| false), None);
    }

    #[test]
    fn a_path_leaving_the_trie_mid_edge_keeps_the_prefixes_above() {
        // "/ab/zz" leaves the trie inside the edge to "/ab/x"; "/ab" and "/a"
        // are on the way there.
        let routes = [p("/ab/x"), p("/a"), p("/ab"), p("/b")];
        let ix = index(&routes);
        assert_eq!(ix.first("/ab/zz", |_| true), Some(1));
        assert_eq!(ix.first("/ab/zz", |i| i != 1), Some(2));
        assert_eq!(ix.first("/ab/x1", |_| true), Some(0));
        assert_eq!(ix.first("/", |_| true), None);
        assert_eq!(ix.first("", |_| true), None);
    }

    #[test]
    fn prefixes_ending_in_a_slash_match_at_the_paths_slashes() {
        let routes = [p("/api/v1/"), p("/api/"), e("/api/v1/x"), p("/api/v1/x/")];
        let ix = index(&routes);
        assert_eq!(ix.first("/api/v1/x", |_| true), Some(0));
        assert_eq!(ix.first("/api/v1/x", |i| i != 0), Some(1));
        assert_eq!(ix.first("/api/v1/x", |i| i > 1), Some(2));
        assert_eq!(ix.first("/api/v1/x/y", |i| i > 2), Some(3));
        assert_eq!(
            ix.first("/api/v1/x", |i| i > 2),
            None,
            "\"/api/v1/x/\" needs the slash"
        );
        assert_eq!(ix.first("/api", |_| true), None);
        assert_eq!(ix.first("/apiv1/", |_| true), None);
    }

    #[test]
    fn agrees_with_a_scan_over_many_paths() {
        // Prefixes and exact paths over a small alphabet, so they overlap a lot.
        let mut rng = fastrand::Rng::with_seed(7);
        let word = |rng: &mut fastrand::Rng, max: usize| -> String {
            let n = rng.usize(0..=max);
            std::iter::once('/')
                .chain((0..n).map(|_| ['a', 'b', '/', '.'][rng.usize(0..4)]))
                .collect()
        };
        for _ in 0..200 {
            let routes: Vec<PathMatch> = (0..rng.usize(1..30))
                .map(|_| match rng.u8(0..10) {
                    0 => PathMatch::Any,
                    1..=3 => e(&word(&mut rng, 4)),
                    _ => p(&word(&mut rng, 4)),
                })
                .collect();
            let ix = index(&routes);
            let refused = rng.usize(0..routes.len());
            for _ in 0..50 {
                let path = word(&mut rng, 6);
                assert_eq!(
                    ix.first(&path, |i| i != refused),
                    scan(&routes, &path, |i| i != refused),
                    "path {path:?} over {} routes",
                    routes.len()
                );
            }
        }
    }
}
