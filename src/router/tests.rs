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
