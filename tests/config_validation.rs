//! Config validation, one fixture per rule (`tests/fixtures/config/`).
//!
//! Each fixture holds exactly one mistake; its test checks that it is the
//! only error and that the error has the right line:column, YAML path and
//! words. The examples in `config/` must load as they are.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use skiff::config::{self, ConfigError};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

/// Every error `file` produces; panics if it loads.
fn errors(name: &str) -> Vec<ConfigError> {
    match config::load_file(&fixture(name)) {
        Ok(_) => panic!("{name} should be refused"),
        Err(e) => e.0,
    }
}

/// `file` has exactly one error, at `line:column`, about `path`, saying `words`.
fn assert_one(name: &str, line: usize, column: usize, path: &str, words: &str) {
    let errors = errors(name);
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors.len(),
        1,
        "{name}: expected one error, got:\n{}",
        shown.join("\n")
    );
    let e = &errors[0];
    assert_eq!(
        (e.line, e.column),
        (Some(line), Some(column)),
        "{name}: {e}"
    );
    assert_eq!(e.path, path, "{name}: {e}");
    assert!(
        e.message.contains(words),
        "{name}: expected {words:?} in: {e}"
    );
    assert!(e.file.ends_with(name), "{name}: {e}");
}

macro_rules! rule {
    ($test:ident, $file:literal, $line:literal : $col:literal, $path:literal, $words:literal) => {
        #[test]
        fn $test() {
            assert_one($file, $line, $col, $path, $words);
        }
    };
}

// Parsing: syntax, duplicate and unknown keys, types, environment.
rule!(syntax_error, "syntax_error.yaml", 10:9, "", "YAML syntax error: did not find expected ',' or ']'");
rule!(duplicate_key, "duplicate_key.yaml", 16:5, "clusters[0].name", "key `name` is written twice in the same mapping (first on line 14)");
rule!(unknown_top_level_key, "unknown_top_level_key.yaml", 4:1, "listener", "unknown key `listener` at the top level; did you mean `listeners`?");
rule!(unknown_key, "unknown_key.yaml", 7:5, "listeners[0].protocl", "unknown key `protocl` in listener; did you mean `protocol`?");
rule!(missing_section, "missing_section.yaml", 2:1, "", "missing required section `admin`");
rule!(missing_key, "missing_key.yaml", 8:9, "listeners[0].virtual_hosts[0]", "missing required key `domains` in virtual host");
rule!(wrong_type, "wrong_type.yaml", 9:18, "listeners[0].virtual_hosts[0].domains", "expected a list, found the number `5`");
rule!(unknown_enum_value, "unknown_enum_value.yaml", 15:15, "clusters[0].protocol", "unknown value `h2`; expected one of `auto`, `http1`, `http2`");
rule!(bad_duration, "bad_duration.yaml", 13:22, "listeners[0].virtual_hosts[0].routes[0].timeout", "expected a duration");
rule!(unset_env_var, "unset_env_var.yaml", 3:12, "", "environment variable `SKIFF_TEST_SURELY_UNSET_VAR` is not set");

// Addresses.
rule!(admin_address, "admin_address.yaml", 3:12, "admin.address", "expected a string, found the number `15000`");
rule!(admin_not_loopback, "admin_not_loopback.yaml", 3:12, "admin.address", "`0.0.0.0:15000` is not a loopback address");
rule!(listener_address_hostname, "listener_address_hostname.yaml", 6:14, "listeners[0].address", "`localhost` is not an IP address");
rule!(duplicate_listener_name, "duplicate_listener_name.yaml", 13:11, "listeners[1].name", "listener name `outbound` is already used (line 5)");
rule!(overlapping_listeners, "overlapping_listeners.yaml", 14:14, "listeners[1].address", "`0.0.0.0:15001` overlaps listener `outbound` at `127.0.0.1:15001` (line 6)");
rule!(listener_overlaps_admin, "listener_overlaps_admin.yaml", 6:14, "listeners[0].address", "overlaps the admin server at `127.0.0.1:15000` (line 3)");
rule!(no_listeners, "no_listeners.yaml", 4:12, "listeners", "at least one listener is needed");

// Virtual hosts.
rule!(no_virtual_hosts, "no_virtual_hosts.yaml", 7:20, "listeners[0].virtual_hosts", "a listener needs at least one virtual host");
rule!(duplicate_virtual_host_name, "duplicate_virtual_host_name.yaml", 12:15, "listeners[0].virtual_hosts[1].name", "virtual host name `inventory` is already used (line 8)");
rule!(empty_domains, "empty_domains.yaml", 9:18, "listeners[0].virtual_hosts[0].domains", "a virtual host needs at least one domain");
rule!(invalid_domain, "invalid_domain.yaml", 9:32, "listeners[0].virtual_hosts[0].domains[1]", "`inventory.*` is not a valid domain: `*` may only stand alone");
rule!(duplicate_domain, "duplicate_domain.yaml", 15:13, "listeners[0].virtual_hosts[1].domains[1]", "domain `Inventory` is also listed by virtual host `inventory` (line 9)");
rule!(empty_routes, "empty_routes.yaml", 10:17, "listeners[0].virtual_hosts[0].routes", "a virtual host needs at least one route");

// Routes.
rule!(route_without_cluster, "route_without_cluster.yaml", 11:13, "listeners[0].virtual_hosts[0].routes[0]", "a route needs `cluster: <name>` or `weighted_clusters");
rule!(route_with_both_clusters, "route_with_both_clusters.yaml", 11:13, "listeners[0].virtual_hosts[0].routes[0]", "`cluster` or `weighted_clusters`, not both");
rule!(unknown_cluster, "unknown_cluster.yaml", 10:53, "listeners[0].virtual_hosts[0].routes[0].cluster", "unknown cluster `inventroy`; did you mean `inventory`?");
rule!(empty_weighted_clusters, "empty_weighted_clusters.yaml", 11:32, "listeners[0].virtual_hosts[0].routes[0].weighted_clusters", "needs at least one");
rule!(zero_weight, "zero_weight.yaml", 13:47, "listeners[0].virtual_hosts[0].routes[0].weighted_clusters[1].weight", "`weight` must be greater than 0");
rule!(prefix_and_path, "prefix_and_path.yaml", 12:15, "listeners[0].virtual_hosts[0].routes[0].match", "`prefix` or `path` (exact), not both");
rule!(prefix_without_slash, "prefix_without_slash.yaml", 11:30, "listeners[0].virtual_hosts[0].routes[0].match.prefix", "`prefix` must start with `/`");
rule!(header_match_both, "header_match_both.yaml", 13:19, "listeners[0].virtual_hosts[0].routes[0].match.headers[0]", "`exact` or `present`, not both");
rule!(header_match_neither, "header_match_neither.yaml", 11:32, "listeners[0].virtual_hosts[0].routes[0].match.headers[0]", "needs `exact: <value>` or `present: true`");
rule!(header_name_invalid, "header_name_invalid.yaml", 11:40, "listeners[0].virtual_hosts[0].routes[0].match.headers[0].name", "`x canary` is not a valid header name");
rule!(method_lowercase, "method_lowercase.yaml", 11:43, "listeners[0].virtual_hosts[0].routes[0].match.method", "methods are case-sensitive and clients send `GET`");
rule!(method_invalid, "method_invalid.yaml", 11:43, "listeners[0].virtual_hosts[0].routes[0].match.method", "`GET/POST` is not an HTTP method");
rule!(zero_timeout, "zero_timeout.yaml", 13:22, "listeners[0].virtual_hosts[0].routes[0].timeout", "`timeout` must be greater than 0");

// Clusters.
rule!(duplicate_cluster_name, "duplicate_cluster_name.yaml", 16:11, "clusters[1].name", "cluster name `inventory` is already used (line 14)");
rule!(cluster_without_endpoints, "cluster_without_endpoints.yaml", 14:5, "clusters[0]", "a cluster needs `endpoints`");
rule!(empty_endpoints, "empty_endpoints.yaml", 15:16, "clusters[0].endpoints", "`endpoints` must list at least one ip:port");
rule!(endpoint_hostname, "endpoint_hostname.yaml", 17:20, "clusters[0].endpoints[1].address", "to reach a hostname, use `dns:` instead of `endpoints:`");
rule!(endpoint_weight, "endpoint_weight.yaml", 16:46, "clusters[0].endpoints[0].weight", "endpoint `weight` must be from 1 to 10000");
rule!(endpoint_unknown_key, "endpoint_unknown_key.yaml", 17:9, "clusters[0].endpoints[0].wieght", "unknown key `wieght` in endpoint; did you mean `weight`?");
rule!(endpoint_wrong_form, "endpoint_wrong_form.yaml", 15:35, "clusters[0].endpoints[1]", "an endpoint is an \"ip:port\" string or a mapping");
rule!(endpoints_and_dns, "endpoints_and_dns.yaml", 14:5, "clusters[0]", "from `endpoints` or from `dns`, not both");
rule!(dns_without_port, "dns_without_port.yaml", 16:7, "clusters[0].dns", "`dns` with `name` needs `port` too");
rule!(dns_bad_name, "dns_bad_name.yaml", 15:18, "clusters[0].dns.name", "`inventory shop` is not a DNS name");
rule!(dns_zero_refresh, "dns_zero_refresh.yaml", 15:71, "clusters[0].dns.refresh", "`refresh` must be greater than 0");
rule!(resolver_server, "resolver_server.yaml", 5:31, "resolver.servers[1]", "`dns.google` is not an ip:port address");
rule!(ring_hash_without_header, "ring_hash_without_header.yaml", 15:9, "clusters[0].lb", "`lb: ring_hash` needs `hash_header`");
rule!(hash_header_without_ring_hash, "hash_header_without_ring_hash.yaml", 16:5, "clusters[0].hash_header", "`hash_header` applies only to `lb: ring_hash`");
rule!(peak_ewma_without_policy, "peak_ewma_without_policy.yaml", 16:5, "clusters[0].peak_ewma", "`peak_ewma` applies only to `lb: peak_ewma`");
rule!(zero_connect_timeout, "zero_connect_timeout.yaml", 15:22, "clusters[0].connect_timeout", "`connect_timeout` must be greater than 0");

// Resilience: retries, health checks, outlier detection, circuit breaking.
rule!(retry_unknown_condition, "retry_unknown_condition.yaml", 13:53, "listeners[0].virtual_hosts[0].routes[0].retry.on[1]", "unknown retry condition \"teapot\"");
rule!(retry_attempts, "retry_attempts.yaml", 13:32, "listeners[0].virtual_hosts[0].routes[0].retry.attempts", "`attempts` counts every try, the first included: from 1 to 10");
rule!(retry_budget_ratio, "retry_budget_ratio.yaml", 13:63, "listeners[0].virtual_hosts[0].routes[0].retry.budget.ratio", "`ratio` is the share of requests that may be retried");
rule!(retry_backoff_order, "retry_backoff_order.yaml", 13:72, "listeners[0].virtual_hosts[0].routes[0].retry.backoff.max", "`max` (100ms) must not be less than `base` (1s)");
rule!(health_check_both, "health_check_both.yaml", 16:19, "clusters[0].health_check", "a health check is `grpc` or `http`, not both");
rule!(outlier_percent, "outlier_percent.yaml", 16:73, "clusters[0].outlier_detection.max_ejection_percent", "`max_ejection_percent` is a percentage");
rule!(breaker_zero, "breaker_zero.yaml", 16:38, "clusters[0].circuit_breaker.max_requests", "`max_requests` must be at least 1");
rule!(panic_threshold, "panic_threshold.yaml", 16:22, "clusters[0].panic_threshold", "`panic_threshold` is a percentage: from 0 to 100");

// Admission: JWT and rate limits.
rule!(jwt_empty_issuer, "jwt_empty_issuer.yaml", 8:15, "listeners[0].jwt.issuer", "`issuer` cannot be empty: it is the `iss` every token must c");
rule!(jwt_forward_bad_header, "jwt_forward_bad_header.yaml", 12:14, "listeners[0].jwt.forward_claims.sub", "`x user` is not a valid header name: names are letters, digi");
rule!(jwt_forward_reserved_header, "jwt_forward_reserved_header.yaml", 12:14, "listeners[0].jwt.forward_claims.sub", "claims cannot be forwarded in `x-skiff-user`: HTTP or the pr");
rule!(jwt_forward_same_header, "jwt_forward_same_header.yaml", 13:14, "listeners[0].jwt.forward_claims.sub", "claims `email` and `sub` are both forwarded in `x-user`; a h");
rule!(jwt_jwks_both, "jwt_jwks_both.yaml", 11:9, "listeners[0].jwt.jwks", "`jwks` takes its keys from `file` or from `uri`, not both");
rule!(jwt_jwks_file_with_refresh, "jwt_jwks_file_with_refresh.yaml", 12:18, "listeners[0].jwt.jwks.refresh", "`refresh` goes with `uri`; a `file` is re-read whenever it c");
rule!(jwt_jwks_https, "jwt_jwks_https.yaml", 11:14, "listeners[0].jwt.jwks.uri", "`https://auth.shop.example/.well-known/jwks.json` is https, but cluster `auth` (line 22) has no `tls`: give it `tls: { mode: simple");
rule!(jwt_jwks_http_to_tls_cluster, "jwt_jwks_http_to_tls_cluster.yaml", 11:14, "listeners[0].jwt.jwks.uri", "`http://auth.shop.example/.well-known/jwks.json` is http, but cluster `auth` (line 22) speaks TLS (`tls.mode: simple`): write `https://`");
rule!(jwt_jwks_neither, "jwt_jwks_neither.yaml", 10:13, "listeners[0].jwt.jwks", "`jwks` needs `file: <path of a JWK Set>` or `uri: http://...");
rule!(jwt_jwks_unknown_cluster, "jwt_jwks_unknown_cluster.yaml", 12:18, "listeners[0].jwt.jwks.cluster", "unknown cluster `auht`; the clusters are `shop`, `auth`");
rule!(jwt_jwks_uri_without_cluster, "jwt_jwks_uri_without_cluster.yaml", 11:9, "listeners[0].jwt.jwks", "`uri` needs the `cluster` that serves it (its endpoints, tim");
rule!(jwt_jwks_zero_refresh, "jwt_jwks_zero_refresh.yaml", 13:18, "listeners[0].jwt.jwks.refresh", "`refresh` must be greater than 0");
rule!(jwt_leeway_too_long, "jwt_leeway_too_long.yaml", 11:15, "listeners[0].jwt.leeway", "`leeway` may be at most 300s: it allows for clock skew, and ");
rule!(jwt_no_audiences, "jwt_no_audiences.yaml", 8:7, "listeners[0].jwt", "`audiences` needs at least one audience: a token's `aud` mus");
rule!(rate_limit_bad_fallback, "rate_limit_bad_fallback.yaml", 9:60, "listeners[0].rate_limit.shared.fallback", "unknown value `open`; expected one of `local`, `allow`, `den");
rule!(rate_limit_bad_key, "rate_limit_bad_key.yaml", 9:12, "listeners[0].rate_limit.key", "unknown rate limit key `user`; write `client_ip`, `header:<n");
rule!(rate_limit_claim_on_public_route, "rate_limit_claim_on_public_route.yaml", 18:56, "listeners[0].virtual_hosts[0].routes[0].rate_limit.key", "`claim:sub` needs a verified token, but this route says `jwt");
rule!(rate_limit_claim_without_jwt, "rate_limit_claim_without_jwt.yaml", 9:12, "listeners[0].rate_limit.key", "`claim:sub` needs a verified token, but the listener has no ");
rule!(rate_limit_max_keys_zero, "rate_limit_max_keys_zero.yaml", 9:17, "listeners[0].rate_limit.max_keys", "`max_keys` must be at least 1");
rule!(rate_limit_xff_with_header_key, "rate_limit_xff_with_header_key.yaml", 10:25, "listeners[0].rate_limit.xff_trusted_hops", "`xff_trusted_hops` goes with `key: client_ip`");
rule!(rate_limit_xff_zero, "rate_limit_xff_zero.yaml", 9:25, "listeners[0].rate_limit.xff_trusted_hops", "`xff_trusted_hops` must be at least 1; leave it out to use t");
rule!(rate_limit_zero_burst, "rate_limit_zero_burst.yaml", 9:14, "listeners[0].rate_limit.burst", "`burst` must be at least 1: a bucket of 0 refuses every requ");
rule!(rate_limit_zero_rate, "rate_limit_zero_rate.yaml", 8:28, "listeners[0].rate_limit.requests_per_second", "`requests_per_second` must be greater than 0 (fractions are ");
rule!(route_jwt_true_without_jwt, "route_jwt_true_without_jwt.yaml", 13:18, "listeners[0].virtual_hosts[0].routes[0].jwt", "`jwt: true` asks for the listener's token check, but the lis");

// Limits and process settings.
rule!(max_header_bytes, "max_header_bytes.yaml", 8:25, "listeners[0].limits.max_header_bytes", "`max_header_bytes` must be at least 1024");
rule!(window_out_of_bounds, "window_out_of_bounds.yaml", 7:38, "listeners[0].limits.initial_stream_window", "must be from 65535 to 2147483647 bytes");
rule!(zero_streams, "zero_streams.yaml", 8:31, "listeners[0].limits.max_concurrent_streams", "`max_concurrent_streams` must be at least 1");
rule!(zero_control_frames, "zero_control_frames.yaml", 8:38, "listeners[0].limits.max_control_frames_per_stream", "`max_control_frames_per_stream` must be at least 1");
rule!(zero_control_frames_per_data, "zero_control_frames_per_data.yaml", 8:42, "listeners[0].limits.max_control_frames_per_data_frame", "`max_control_frames_per_data_frame` must be at least 1");
rule!(zero_write_stall, "zero_write_stall.yaml", 8:28, "listeners[0].limits.write_stall_timeout", "`write_stall_timeout` must be greater than 0");
rule!(empty_access_log_path, "empty_access_log_path.yaml", 5:9, "access_log.path", "`path` cannot be empty");
rule!(zero_worker_threads, "zero_worker_threads.yaml", 5:19, "runtime.worker_threads", "`worker_threads` must be at least 1");

// Authorization.
rule!(authorization_bad_principal, "authorization_bad_principal.yaml", 8:31, "listeners[0].authorization[0].allow.principals[0]", "principal \"order\" is not a SPIFFE ID");
rule!(authorization_allow_and_deny, "authorization_allow_and_deny.yaml", 8:9, "listeners[0].authorization[0]", "either `allow` or `deny`, not both");

#[test]
fn every_key_of_the_agreed_shape_is_accepted() {
    // docs/architecture.md, "Coming keys": every key of the shape is built.
    // A key the schema takes before its behaviour is built gets a row in the
    // NOT_YET tables of src/config/validate/mod.rs, and a test here that it
    // is refused at its line and column with "is not supported yet".
    let config = config::load_file(&fixture("agreed_shape.yaml"))
        .unwrap_or_else(|e| panic!("agreed_shape.yaml should be accepted: {e}"));
    let l = &config.listeners[0];
    assert!(l.tls.is_some() && l.jwt.is_some() && l.authorization.is_some());
    assert!(l.rate_limit.as_ref().is_some_and(|r| r.shared.is_some()));
    let route = &l.virtual_hosts[0].routes[0];
    assert!(route
        .rate_limit
        .as_ref()
        .is_some_and(|r| r.shared.is_some()));
}

// Mesh TLS: this workload's identity, listener modes, cluster mesh and simple TLS.
rule!(tls_empty_file, "tls_empty_file.yaml", 5:9, "tls.cert", "`cert` cannot be empty");
rule!(tls_missing_ca, "tls_missing_ca.yaml", 5:3, "tls", "missing required key `ca` in `tls`");
rule!(tls_listener_mode, "tls_listener_mode.yaml", 11:18, "listeners[0].tls.mode", "unknown value `mtls`; expected one of `strict`, `permissive`, `disabled`");
rule!(tls_listener_without_identity, "tls_listener_without_identity.yaml", 7:5, "listeners[0].tls", "listener `tls.mode: strict` needs this workload's identity: add a top-level `tls`");
rule!(tls_listener_cert_without_terminate, "tls_listener_cert_without_terminate.yaml", 11:26, "listeners[0].tls.cert", "`cert` belongs to `mode: terminate`");
rule!(tls_cluster_mode, "tls_cluster_mode.yaml", 20:18, "clusters[0].tls.mode", "unknown value `tls`; expected one of `mesh`, `simple`, `disabled`");
rule!(tls_cluster_without_identity, "tls_cluster_without_identity.yaml", 16:5, "clusters[0].tls", "cluster `tls.mode: mesh` needs this workload's identity");
rule!(tls_cluster_no_identities, "tls_cluster_no_identities.yaml", 20:10, "clusters[0].tls", "`mode: mesh` needs `identities`");
rule!(tls_cluster_bad_identity, "tls_cluster_bad_identity.yaml", 20:78, "clusters[0].tls.identities[1]", "`shop/app` is not a SPIFFE ID: a SPIFFE ID starts with spiffe://");
rule!(tls_cluster_simple_without_server_name, "tls_cluster_simple_without_server_name.yaml", 20:10, "clusters[0].tls", "`mode: simple` needs `server_name`");
rule!(tls_terminate_without_key, "tls_terminate_without_key.yaml", 7:10, "listeners[0].tls", "`mode: terminate` needs `key`: the certificate's private key (PEM) served to clients that match no `sni` entry");
rule!(tls_terminate_sni_no_domains, "tls_terminate_sni_no_domains.yaml", 12:22, "listeners[0].tls.sni[0].domains", "`domains` needs at least one server name");
rule!(tls_terminate_sni_port, "tls_terminate_sni_port.yaml", 12:23, "listeners[0].tls.sni[0].domains[0]", "`api.shop.example:443` is not a server name: SNI carries no port");
rule!(tls_terminate_sni_twice, "tls_terminate_sni_twice.yaml", 13:41, "listeners[0].tls.sni[1].domains[1]", "`API.shop.example` is already served by another certificate (line 12)");
rule!(tls_terminate_sni_empty_key, "tls_terminate_sni_empty_key.yaml", 12:78, "listeners[0].tls.sni[0].key", "`key` cannot be empty");
rule!(tls_sni_without_terminate, "tls_sni_without_terminate.yaml", 7:28, "listeners[0].tls.sni", "`sni` belongs to `mode: terminate`");
rule!(tls_cluster_stray_key, "tls_cluster_stray_key.yaml", 20:79, "clusters[0].tls.server_name", "`server_name` does not apply to `mode: mesh`");

#[test]
fn every_mesh_tls_form_is_accepted() {
    use skiff::config::model::{ClusterTlsMode, ListenerTlsMode};
    let config = config::load_file(&fixture("tls_mesh.yaml")).unwrap();
    assert_eq!(config.tls.as_ref().unwrap().ca, "/var/run/skiff/tls/ca.pem");
    let modes: Vec<_> = config
        .listeners
        .iter()
        .map(|l| l.tls.as_ref().unwrap().mode)
        .collect();
    assert_eq!(
        modes,
        [ListenerTlsMode::Strict, ListenerTlsMode::Permissive]
    );
    let payment = config.clusters[1].tls.as_ref().unwrap();
    assert_eq!(payment.mode, ClusterTlsMode::Mesh);
    assert_eq!(payment.identities.len(), 2);
    let auth = config.clusters[2].tls.as_ref().unwrap();
    assert_eq!(auth.mode, ClusterTlsMode::Simple);
    assert_eq!(auth.server_name.as_deref(), Some("auth.example.com"));
    assert!(config.clusters[3].tls.as_ref().unwrap().ca.is_none());
}

#[test]
fn every_edge_tls_form_is_accepted() {
    use skiff::config::model::{ClusterTlsMode, ListenerTlsMode};
    let config = config::load_file(&fixture("tls_terminate.yaml")).unwrap();
    let tls = config.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.mode, ListenerTlsMode::Terminate);
    assert_eq!(tls.key.as_deref(), Some("/etc/skiff/edge/tls.key"));
    assert_eq!(tls.sni.len(), 2);
    assert_eq!(tls.sni[1].domains, ["*.admin.shop.example"]);
    assert!(config.tls.is_none(), "edge TLS needs no mesh identity");
    let auth = config.clusters[1].tls.as_ref().unwrap();
    assert_eq!(auth.mode, ClusterTlsMode::Simple);
}

#[test]
fn shared_rate_limits_have_their_url_and_timeout_checked() {
    let got: Vec<String> = errors("rate_limit_shared.yaml")
        .iter()
        .map(|e| {
            format!(
                "{}:{} {}: {}",
                e.line.unwrap_or(0),
                e.column.unwrap_or(0),
                e.path,
                e.message
            )
        })
        .collect();
    let r = "listeners[0].virtual_hosts[0].routes";
    let want = [
        "9:24 listeners[0].rate_limit.shared.redis: `127.0.0.1:6379` is not a Redis URL".to_string(),
        format!("16:68 {r}[0].rate_limit.shared.redis: `rediss://redis:6379` asks for TLS to Redis, which is not built"),
        format!("16:100 {r}[0].rate_limit.shared.timeout: `timeout` may be at most 1s"),
        format!("19:68 {r}[1].rate_limit.shared.redis: `redis://` names no host"),
        format!("19:89 {r}[1].rate_limit.shared.timeout: `timeout` must be greater than 0"),
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, w) in got.iter().zip(&want) {
        assert!(g.starts_with(w.as_str()), "{g}\nshould start with\n{w}");
    }
}

#[test]
fn a_gateway_listener_with_every_admission_key_loads() {
    let text = "\
admin: { address: 127.0.0.1:15000 }
listeners:
  - name: gateway
    address: 127.0.0.1:8080
    jwt:
      issuer: https://auth.shop.example
      audiences: [shop-api, shop-admin]
      jwks: { uri: http://auth/.well-known/jwks.json, cluster: auth, refresh: 5m }
      leeway: 10s
      forward_claims: { sub: x-user-id, email: x-user-email }
      forward_token: false
    rate_limit: { requests_per_second: 0.5, key: client_ip, xff_trusted_hops: 2, max_keys: 1000 }
    virtual_hosts:
      - name: shop
        domains: [\"*\"]
        routes:
          - match: { prefix: /public/ }
            cluster: shop
            jwt: false
            rate_limit: { requests_per_second: 20, burst: 40, key: \"header:x-api-key\" }
          - cluster: shop
            rate_limit: { requests_per_second: 100, key: \"claim:sub\", shared: { redis: \"redis://:pw@redis.shop:6379/1\", timeout: 10ms, fallback: allow } }
clusters:
  - { name: shop, endpoints: [\"127.0.0.1:9000\"] }
  - { name: auth, endpoints: [\"127.0.0.1:9001\"] }
";
    let c = config::load_str_with_env(text, "gateway.yaml", &|_| None).unwrap();
    let jwt = c.listeners[0].jwt.as_ref().unwrap();
    assert_eq!(jwt.leeway.get(), std::time::Duration::from_secs(10));
    assert!(!jwt.forward_token);
    let rl = c.listeners[0].rate_limit.as_ref().unwrap();
    assert_eq!(
        (rl.burst(), rl.max_keys),
        (1, 1000),
        "burst: the rate rounded up"
    );
    let routes = &c.listeners[0].virtual_hosts[0].routes;
    assert_eq!(routes[0].jwt, Some(false));
    assert_eq!(routes[1].rate_limit.as_ref().unwrap().burst(), 100);
    let shared = routes[1]
        .rate_limit
        .as_ref()
        .unwrap()
        .shared
        .as_ref()
        .unwrap();
    assert_eq!(shared.timeout.get(), std::time::Duration::from_millis(10));
    assert_eq!(
        shared.fallback,
        skiff::config::model::RateLimitFallback::Allow
    );
}

#[test]
fn a_shared_rate_limit_defaults_to_a_short_timeout_and_the_local_fallback() {
    let text = "\
admin: { address: 127.0.0.1:15000 }
listeners:
  - name: gateway
    address: 127.0.0.1:8080
    rate_limit: { requests_per_second: 50, shared: { redis: \"redis://127.0.0.1:6379\" } }
    virtual_hosts: [{ name: shop, domains: [\"*\"], routes: [{ cluster: shop }] }]
clusters:
  - { name: shop, endpoints: [\"127.0.0.1:9000\"] }
";
    let c = config::load_str_with_env(text, "gateway.yaml", &|_| None).unwrap();
    let shared = c.listeners[0]
        .rate_limit
        .as_ref()
        .unwrap()
        .shared
        .clone()
        .unwrap();
    assert_eq!(shared.timeout.get(), std::time::Duration::from_millis(25));
    assert_eq!(
        shared.fallback,
        skiff::config::model::RateLimitFallback::Local
    );
}

#[test]
fn off_values_of_later_features_and_every_supported_form_are_accepted() {
    let config = config::load_file(&fixture("explicit_defaults.yaml")).unwrap();
    assert_eq!(config.listeners.len(), 2);
    assert_eq!(config.clusters.len(), 3);
    assert_eq!(config.runtime.worker_threads, Some(2));
}

#[test]
fn every_error_in_a_file_is_reported_in_file_order() {
    let errors = errors("many_errors.yaml");
    let got: Vec<String> = errors
        .iter()
        .map(|e| {
            let file = e.file.rsplit('/').next().unwrap_or(&e.file);
            ConfigError {
                file: file.to_string(),
                ..e.clone()
            }
            .to_string()
        })
        .collect();
    let want = [
        "many_errors.yaml:4:3: admin.port: unknown key `port` in `admin`; expected one of `address`, `allow_remote`",
        "many_errors.yaml:13:22: listeners[0].virtual_hosts[0].routes[0].cluster: unknown cluster `inventroy`; did you mean `inventory`?",
        "many_errors.yaml:14:22: listeners[0].virtual_hosts[0].routes[0].timeout: expected a duration: a number and a unit (us, ms, s, m, h), like \"250ms\" or \"2s\", found the number `2`",
        "many_errors.yaml:16:14: listeners[1].address: `0.0.0.0:15001` overlaps listener `outbound` at `127.0.0.1:15001` (line 7): both would bind port 15001",
        "many_errors.yaml:17:15: listeners[1].protocol: unknown value `h3`; expected one of `auto`, `http1`, `http2`",
        "many_errors.yaml:25:17: clusters[0].endpoints[0]: `inventory:50051` is not an ip:port address: `inventory` is not an IP address; to reach a hostname, use `dns:` instead of `endpoints:`",
        "many_errors.yaml:27:16: clusters[1].endpoints: `endpoints` must list at least one ip:port",
    ];
    assert_eq!(got, want);
}

#[test]
fn an_error_inside_a_listener_does_not_hide_the_next_one() {
    let text = "\
admin: { address: 127.0.0.1:15000 }
listeners:
  - name: a
    address: 127.0.0.1:15001
    bogus: 1
    virtual_hosts:
      - name: v
        domains: [a, 7, \"b*\"]
        routes:
          - cluster: c
            timeout: fast
          - cluster: d
clusters: [{ name: c, endpoints: [\"10.0.0.1:80\"] }]
";
    let errors = config::load_str_with_env(text, "inline.yaml", &|_| None)
        .unwrap_err()
        .0;
    let got: Vec<(usize, usize, &str)> = errors
        .iter()
        .map(|e| (e.line.unwrap_or(0), e.column.unwrap_or(0), e.path.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (5, 5, "listeners[0].bogus"),
            (8, 22, "listeners[0].virtual_hosts[0].domains[1]"),
            (8, 25, "listeners[0].virtual_hosts[0].domains[2]"),
            (11, 22, "listeners[0].virtual_hosts[0].routes[0].timeout"),
            (12, 22, "listeners[0].virtual_hosts[0].routes[1].cluster"),
        ],
        "{}",
        skiff::config::ConfigErrors(errors.clone())
    );
}

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.get(name).cloned()
}

const ENV_CONFIG: &str = "\
# ${NOT_EXPANDED_IN_COMMENTS}
admin:
  address: ${ADMIN_IP:-127.0.0.1}:15000
listeners:
  - name: inbound
    address: ${POD_IP}:15006
    virtual_hosts:
      - name: local
        domains: [\"*\"]
        routes: [{ cluster: local_app }]
clusters:
  - name: local_app
    endpoints: [{ address: \"${APP_IP}:8080\", weight: ${APP_WEIGHT:-1} }]
";

#[test]
fn environment_variables_are_expanded_before_parsing() {
    let env = env_of(&[("POD_IP", "10.1.2.3"), ("APP_IP", "127.0.0.1")]);
    let config = config::load_str_with_env(ENV_CONFIG, "env.yaml", &env).unwrap();
    assert_eq!(config.admin.address, "127.0.0.1:15000");
    assert_eq!(config.listeners[0].address, "10.1.2.3:15006");
    let endpoint = &config.clusters[0].endpoints.as_ref().unwrap()[0];
    assert_eq!(
        (endpoint.address(), endpoint.weight()),
        ("127.0.0.1:8080", 1)
    );
}

#[test]
fn unset_variables_are_all_reported_at_their_place() {
    let errors = config::load_str_with_env(ENV_CONFIG, "env.yaml", &env_of(&[]))
        .unwrap_err()
        .0;
    let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(got[0].starts_with("env.yaml:6:14: environment variable `POD_IP` is not set"));
    assert!(got[1].starts_with("env.yaml:13:29: environment variable `APP_IP` is not set"));
}

#[test]
fn positions_after_an_expansion_point_into_the_text_as_written() {
    // `weight: 0` comes after `${APP_IP}`, which expands to a longer value.
    let env = env_of(&[
        ("POD_IP", "10.1.2.3"),
        ("APP_IP", "192.168.100.200"),
        ("APP_WEIGHT", "0"),
    ]);
    let errors = config::load_str_with_env(ENV_CONFIG, "env.yaml", &env)
        .unwrap_err()
        .0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e.path, "clusters[0].endpoints[0].weight");
    assert_eq!((e.line, e.column), (Some(13), Some(54)), "{e}");
}

#[test]
fn the_example_configs_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("config");
    // config/, its subdirectories, and the shop's (tests/shop.rs also runs
    // `skiff validate` on those).
    let mut dirs = vec![dir.clone(), root.join("examples/shop/config")];
    let mut seen = 0;
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                // The examples use only `${VAR:-default}`, so no variable needs setting.
                let text = std::fs::read_to_string(&path).unwrap();
                let result =
                    config::load_str_with_env(&text, &path.display().to_string(), &|_| None);
                if let Err(e) = result {
                    panic!("{} does not validate:\n{e}", path.display());
                }
                config::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
    }
    assert!(
        seen >= 8,
        "expected the examples in {} and examples/shop/config",
        dir.display()
    );
}

#[test]
fn an_empty_file_says_what_it_needs() {
    let errors = config::load_str_with_env("# nothing\n", "empty.yaml", &|_| None)
        .unwrap_err()
        .0;
    assert_eq!(errors.len(), 1);
    assert!(errors[0]
        .message
        .contains("needs at least `admin` and `listeners`"));
}

#[test]
fn a_missing_file_is_one_error_without_a_position() {
    let errors = config::load_file(Path::new("/nonexistent/skiff.yaml"))
        .unwrap_err()
        .0;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, None);
    assert!(errors[0]
        .to_string()
        .starts_with("/nonexistent/skiff.yaml: cannot read the config file"));
}

#[test]
fn anchors_live_under_x_keys_and_merge_keys_apply() {
    let text = "\
x-cluster-defaults: &defaults
  protocol: http2
  connect_timeout: 250ms
admin: { address: 127.0.0.1:15000 }
listeners:
  - name: l
    address: 127.0.0.1:15001
    virtual_hosts: [{ name: v, domains: [\"*\"], routes: [{ cluster: a }] }]
clusters:
  - <<: *defaults
    name: a
    endpoints: [\"10.0.0.1:80\"]
  - <<: *defaults
    name: b
    protocol: 2
    endpoints: [\"10.0.0.2:80\"]
";
    let errors = config::load_str_with_env(text, "x.yaml", &|_| None)
        .unwrap_err()
        .0;
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        ["x.yaml:15:15: clusters[1].protocol: expected one of `auto`, `http1`, `http2`, found the number `2`"]
    );
    let config = config::load_str_with_env(
        &text.replace("protocol: 2", "protocol: http1"),
        "x.yaml",
        &|_| None,
    )
    .unwrap();
    assert_eq!(config.clusters[0].protocol, config::UpstreamProtocol::Http2);
    assert_eq!(config.clusters[0].connect_timeout.to_string(), "250ms");
    assert_eq!(config.clusters[1].protocol, config::UpstreamProtocol::Http1);
}

#[test]
fn a_passthrough_listener_needs_no_virtual_host() {
    let yaml = "admin: { address: 127.0.0.1:15000 }\n\
                listeners:\n  - name: outbound\n    address: 127.0.0.1:15001\n    \
                transparent: true\n    passthrough: true\n    direction: outbound\n";
    let config = skiff::config::load_str(yaml, "passthrough.yaml")
        .unwrap_or_else(|e| panic!("a passthrough-only listener is valid: {e}"));
    assert!(config.listeners[0].virtual_hosts.is_empty());
}

#[test]
fn a_permissive_listener_denying_only_principals_is_valid_with_a_warning() {
    let name = "warn-permissive-deny-principals.yaml";
    let checked = config::check_file(&fixture(name));
    assert!(checked.config.is_ok(), "{:?}", checked.config.err());
    assert_eq!(checked.warnings.len(), 1, "{:?}", checked.warnings);
    let w = &checked.warnings[0].0;
    assert_eq!((w.line, w.column), (Some(15), Some(23)), "{w}");
    assert_eq!(w.path, "listeners[0].authorization[0].deny.principals");
    assert!(
        w.message.contains("unauthenticated: true") && w.message.contains("strict"),
        "{w}"
    );

    // `skiff validate` prints it in the errors' format and exits 0.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["validate", "--config"])
        .arg(fixture(name))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let line = format!(
        "{}:15:23: listeners[0].authorization[0].deny.principals: warning: on a `permissive` listener",
        fixture(name).display()
    );
    assert!(stdout.contains(&line), "{stdout}");
    assert!(
        stdout.contains("valid (") && stdout.contains("; 1 warning"),
        "{stdout}"
    );

    // Denying plaintext peers too, or a strict listener: no warning.
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    for fixed in [
        text.replace(
            "principals: [\"spiffe://cluster.local/ns/shop/sa/intruder\"]",
            "principals: [\"spiffe://cluster.local/ns/shop/sa/intruder\"]\n          unauthenticated: true",
        ),
        text.replace("mode: permissive", "mode: strict"),
    ] {
        let dir = std::env::temp_dir().join(format!("skiff-warn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fixed.yaml");
        std::fs::write(&path, &fixed).unwrap();
        let checked = config::check_file(&path);
        assert!(checked.config.is_ok());
        assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
    }
}
