//! The routes of one virtual host, indexed by path, so finding the first
//! match does not try every route in turn.
//!
//! A route's path condition is one of: none, an exact path, or a prefix.
//! Routes without one sit in a list and exact paths in a hash map. Prefixes
//! that end in `/` — gRPC's `/package.Service/`, REST's `/api/v1/` — can only
//! match the path up to one of its own slashes, so they sit in a hash map
//! too, looked up once per slash of the path (up to the deepest such
//! prefix). Other prefixes sit in a sorted array where each entry points at
//! the longest other prefix it starts with: the prefixes of a request path
//! are found with one binary search — the greatest entry not after the
//! path — and a walk up that entry's chain, on which every prefix of the
//! path lies. (If `q` is a prefix of the path and `e` the greatest entry not
//! after it, then `q ≤ e ≤ path`, and anything between `q` and `path`
//! starts with `q`.)
//!
//! Each list holds route indices in config order, so the first match is the
//! smallest index, over all lists, whose other conditions (method, headers)
//! hold: the order is exactly the one a scan of the routes would find.

use std::collections::HashMap;

use super::PathMatch;

#[derive(Default)]
pub(super) struct RouteIndex {
    any: Vec<usize>,
    exact: HashMap<Box<str>, Vec<usize>>,
    /// Prefixes ending in `/`.
    at_slash: HashMap<Box<str>, Vec<usize>>,
    /// The most slashes in a key of `at_slash`.
    deepest: usize,
    /// The other prefixes, sorted.
    prefixes: Vec<PrefixEntry>,
}

struct PrefixEntry {
    prefix: Box<str>,
    routes: Vec<usize>,
    /// The entry of the longest other prefix that `prefix` starts with.
    parent: Option<usize>,
}

impl RouteIndex {
    pub(super) fn build<'a>(paths: impl IntoIterator<Item = &'a PathMatch>) -> Self {
        let mut index = RouteIndex::default();
        let mut by_prefix: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, path) in paths.into_iter().enumerate() {
            match path {
                PathMatch::Any => index.any.push(i),
                PathMatch::Exact(p) => index.exact.entry(p.as_str().into()).or_default().push(i),
                PathMatch::Prefix(p) if p.ends_with('/') => {
                    index.deepest = index.deepest.max(p.matches('/').count());
                    index.at_slash.entry(p.as_str().into()).or_default().push(i);
                }
                PathMatch::Prefix(p) => by_prefix.entry(p.as_str()).or_default().push(i),
            }
        }
        let mut sorted: Vec<(&str, Vec<usize>)> = by_prefix.into_iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        // In sorted order a prefix comes before everything that extends it,
        // so a stack of the open chain finds each entry's parent.
        let mut chain: Vec<usize> = Vec::new();
        for (i, (prefix, routes)) in sorted.into_iter().enumerate() {
            while let Some(&top) = chain.last() {
                if index
                    .prefixes
                    .get(top)
                    .is_some_and(|e| prefix.starts_with(&*e.prefix))
                {
                    break;
                }
                chain.pop();
            }
            index.prefixes.push(PrefixEntry {
                prefix: prefix.into(),
                routes,
                parent: chain.last().copied(),
            });
            chain.push(i);
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
        if self.prefixes.is_empty() {
            return best;
        }
        let after = self
            .prefixes
            .partition_point(|e| e.prefix.as_bytes() <= path.as_bytes());
        if let Some(last) = after.checked_sub(1) {
            let common = self.prefixes.get(last).map_or(0, |e| {
                common_prefix_len(e.prefix.as_bytes(), path.as_bytes())
            });
            let mut at = Some(last);
            while let Some(e) = at.and_then(|i| self.prefixes.get(i)) {
                if e.prefix.len() <= common {
                    consider(&e.routes, &mut best);
                }
                at = e.parent;
            }
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
    fn prefixes_off_the_greatest_entry_are_found_on_its_chain() {
        // "/ab/zz" sorts after "/ab/x" (not a prefix of it); "/ab" and "/a"
        // are on "/ab/x"'s chain.
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
