use super::*;
use http::HeaderValue;

fn router(yaml: &str) -> Router<String> {
    let l: config::Listener = serde_yaml::from_str(yaml).unwrap();
    Router::build(&l, |c| Some(c.to_owned())).unwrap()
}

fn req<'a>(authority: &'a str, path: &'a str, headers: &'a HeaderMap) -> RequestInfo<'a> {
    RequestInfo {
        authority,
        path,
        method: &Method::GET,
        headers,
    }
}

const LISTENER: &str = r#"
name: outbound
address: 127.0.0.1:0
virtual_hosts:
  - name: inventory
    domains: ["inventory", "inventory:50051", "inventory.shop.svc.cluster.local"]
    routes:
      - name: canary
        match: { prefix: "/shop.Inventory/", headers: [{ name: x-canary, exact: "1" }] }
        cluster: inventory-canary
      - match: { prefix: "/shop.Inventory/" }
        cluster: inventory
  - name: wild
    domains: ["*.example.com"]
    routes:
      - match: { path: "/exact" }
        cluster: exact
      - match: { prefix: "/", method: POST }
        cluster: posts
  - name: deep
    domains: ["*.api.example.com"]
    routes:
      - cluster: deep
  - name: fallback
    domains: ["*"]
    routes:
      - cluster: default
"#;

fn cluster_of(r: &Route<String>) -> &str {
    match &r.action {
        RouteAction::Cluster { target, .. } => target,
        RouteAction::Weighted { .. } => "weighted",
    }
}

#[test]
fn virtual_host_by_exact_host_port_suffix_and_any() {
    let r = router(LISTENER);
    let vh = |a: &str| r.virtual_host(a).map(|(v, _)| v.name.as_str());
    assert_eq!(vh("inventory"), Some("inventory"));
    assert_eq!(vh("inventory:50051"), Some("inventory"));
    assert_eq!(vh("inventory:8080"), Some("inventory")); // host without port
    assert_eq!(vh("INVENTORY.shop.svc.cluster.local"), Some("inventory"));
    assert_eq!(vh("a.example.com"), Some("wild"));
    assert_eq!(vh("a.b.example.com:443"), Some("wild"));
    assert_eq!(vh("x.api.example.com"), Some("deep")); // longest suffix wins
    assert_eq!(vh("example.com"), Some("fallback")); // *.suffix needs a label before it
    assert_eq!(vh("[::1]:80"), Some("fallback"));
}

#[test]
fn first_matching_route_wins() {
    let r = router(LISTENER);
    let mut h = HeaderMap::new();
    let got = r
        .route(&req("inventory", "/shop.Inventory/Get", &h))
        .unwrap();
    assert_eq!(cluster_of(got), "inventory");
    h.insert("x-canary", HeaderValue::from_static("1"));
    let got = r
        .route(&req("inventory", "/shop.Inventory/Get", &h))
        .unwrap();
    assert_eq!(cluster_of(got), "inventory-canary");
    assert!(r.route(&req("inventory", "/other", &h)).is_none());
}

#[test]
fn exact_path_and_method() {
    let r = router(LISTENER);
    let h = HeaderMap::new();
    assert_eq!(
        cluster_of(r.route(&req("a.example.com", "/exact", &h)).unwrap()),
        "exact"
    );
    assert!(r.route(&req("a.example.com", "/exact/more", &h)).is_none()); // GET is not POST
    let post = RequestInfo {
        method: &Method::POST,
        ..req("a.example.com", "/exact/more", &h)
    };
    assert_eq!(cluster_of(r.route(&post).unwrap()), "posts");
}

#[test]
fn explain_says_why_earlier_routes_failed() {
    let r = router(LISTENER);
    let h = HeaderMap::new();
    let e = r.explain(&req("inventory:50051", "/shop.Inventory/Get", &h));
    let (name, how) = e.virtual_host.unwrap();
    assert_eq!(name, "inventory");
    assert_eq!(how, VhostDecision::Exact("inventory:50051".into()));
    assert_eq!(e.routes.len(), 2);
    assert_eq!(
        e.routes[0].1,
        Err(Mismatch::HeaderValue {
            name: "x-canary".into(),
            expected: "1".into()
        })
    );
    assert_eq!(e.matched, Some(1));
}

#[test]
fn weighted_clusters_split_by_weight() {
    let r = router(
        r#"
name: l
address: 127.0.0.1:0
virtual_hosts:
  - name: v
    domains: ["*"]
    routes:
      - weighted_clusters: [{ cluster: a, weight: 90 }, { cluster: b, weight: 10 }]
"#,
    );
    let h = HeaderMap::new();
    let route = r.route(&req("x", "/", &h)).unwrap();
    let mut a = 0;
    for _ in 0..10_000 {
        if route.action.pick().unwrap().0 == "a" {
            a += 1;
        }
    }
    assert!((8_500..9_500).contains(&a), "a got {a} of 10000");
}

#[test]
fn lookup_does_not_scan_virtual_hosts() {
    // 10,000 virtual hosts: the lookup still answers from the maps.
    let mut yaml = String::from("name: l\naddress: 127.0.0.1:0\nvirtual_hosts:\n");
    for i in 0..10_000 {
        yaml.push_str(&format!(
            "  - name: v{i}\n    domains: [\"svc{i}\", \"*.ns{i}.svc\"]\n    routes: [{{ cluster: c{i} }}]\n"
        ));
    }
    let r = router(&yaml);
    let h = HeaderMap::new();
    assert_eq!(
        cluster_of(r.route(&req("svc9999", "/", &h)).unwrap()),
        "c9999"
    );
    assert_eq!(
        cluster_of(r.route(&req("x.ns42.svc:80", "/", &h)).unwrap()),
        "c42"
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// One route: its match (any, prefix or exact path), its method, and
    /// whether it wants header `x-a: 1`.
    #[derive(Clone, Debug)]
    struct Spec {
        path: (u8, String),
        method: Option<&'static str>,
        header: bool,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            (0u8..3, "/[ab/.]{0,4}"),
            prop::option::of(prop::sample::select(vec!["GET", "POST"])),
            any::<bool>(),
        )
            .prop_map(|(path, method, header)| Spec {
                path,
                method,
                header,
            })
    }

    fn listener(routes: &[Spec]) -> String {
        let mut y = String::from(
            "name: l\naddress: 127.0.0.1:0\nvirtual_hosts:\n  - name: v\n    domains: [\"*\"]\n    routes:\n",
        );
        for (i, r) in routes.iter().enumerate() {
            let mut m = Vec::new();
            match r.path.0 {
                0 => {}
                1 => m.push(format!("prefix: {}", serde_json::json!(r.path.1))),
                _ => m.push(format!("path: {}", serde_json::json!(r.path.1))),
            }
            if let Some(method) = r.method {
                m.push(format!("method: {method}"));
            }
            if r.header {
                m.push("headers: [{ name: x-a, exact: \"1\" }]".into());
            }
            y += &format!(
                "      - name: r{i}\n        match: {{ {} }}\n        cluster: c{i}\n",
                m.join(", ")
            );
        }
        y
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Bound: the path index picks exactly the route a scan of the
        /// routes in order would: the first whose match holds.
        #[test]
        fn the_index_picks_the_first_route_that_matches(
            routes in prop::collection::vec(spec(), 1..10),
            requests in prop::collection::vec(("/[ab/.]{0,6}", any::<bool>(), any::<bool>()), 1..10),
        ) {
            let r = router(&listener(&routes));
            let (vh, _) = r.virtual_host("any").unwrap();
            for (path, post, header) in requests {
                let mut h = HeaderMap::new();
                if header {
                    h.insert("x-a", HeaderValue::from_static("1"));
                }
                let method = if post { Method::POST } else { Method::GET };
                let req = RequestInfo { authority: "any", path: &path, method: &method, headers: &h };
                let scanned = vh.routes.iter().find(|route| route.check(&req).is_ok()).map(|route| route.name.clone());
                let indexed = r.route(&req).map(|route| route.name.clone());
                prop_assert_eq!(indexed, scanned, "{} {}", method, path);
            }
        }

        /// Any authority: an answer, never a panic, the same whatever the
        /// case of its letters.
        #[test]
        fn any_authority_finds_its_virtual_host(authority in any::<String>()) {
            let r = router(LISTENER);
            let name = |a: &str| r.virtual_host(a).map(|(v, _)| v.name.clone());
            prop_assert_eq!(name(&authority), name(&authority.to_ascii_uppercase()));
            let _ = host_of(&authority);
        }

        #[test]
        fn host_like_authorities_find_their_virtual_host(
            authority in "(\\[::1\\]|[a-z.]{0,8}(inventory|example\\.com)?)(:[0-9]{0,6})?"
        ) {
            let r = router(LISTENER);
            prop_assert!(r.virtual_host(&authority).is_some(), "the fallback `*` matches anything");
        }
    }
}
