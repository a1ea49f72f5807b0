//! The `skiff` binary's command line (docs/architecture.md, "Command line"):
//! help, validate, route, schema, and `run`'s start-up failure and graceful
//! SIGTERM.

mod support;

use std::time::Duration;

use anyhow::anyhow;
use support::http_backend::HttpBackend;
use support::http_client::HttpClient;
use support::process::{skiff, SkiffProcess};
use support::scratch::ScratchDir;
use support::{eventually, Proto, ProxyConfig};

/// The subcommands clap lists under "Commands:" in `skiff --help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.trim_start().starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn help_for_the_binary_and_every_subcommand() -> anyhow::Result<()> {
    let out = skiff(&["--help"])?;
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let commands = subcommands(&out.stdout);
    for want in ["run", "validate", "route", "schema"] {
        assert!(
            commands.iter().any(|c| c == want),
            "`{want}` missing from --help: {}",
            out.stdout
        );
    }
    for c in &commands {
        let out = skiff(&[c, "--help"])?;
        assert_eq!(
            out.code(),
            Some(0),
            "skiff {c} --help: {}{}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stdout.contains("Usage"),
            "skiff {c} --help: {}",
            out.stdout
        );
    }
    let out = skiff(&["--version"])?;
    assert_eq!(out.code(), Some(0));
    let out = skiff(&["no-such-command"])?;
    assert_ne!(out.code(), Some(0));
    Ok(())
}

const GOOD: &str = r#"admin:
  address: 127.0.0.1:0
listeners:
  - name: outbound
    address: 127.0.0.1:0
    virtual_hosts:
      - name: inventory
        domains: ["inventory", "inventory:50051"]
        routes:
          - name: grpc
            match: { prefix: "/shop.Inventory/" }
            cluster: inventory
            timeout: 2s
clusters:
  - name: inventory
    protocol: http2
    endpoints: ["127.0.0.1:50051"]
"#;

#[test]
fn validate_accepts_a_good_config() -> anyhow::Result<()> {
    let dir = ScratchDir::new("cli")?;
    let path = dir.write("good.yaml", GOOD)?;
    let out = skiff(&["validate", "--config", &path.display().to_string()])?;
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    Ok(())
}

/// Line, column and the rest of a `file:line:col: path: message` line.
type ErrorLine = (usize, usize, String);

/// The `file:line:col: path: message` lines of validate's output.
fn error_lines(text: &str, file: &str) -> Vec<ErrorLine> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(file)?.strip_prefix(':')?;
            let mut parts = rest.splitn(3, ':');
            let line = parts.next()?.parse().ok()?;
            let col = parts.next()?.parse().ok()?;
            Some((line, col, parts.next()?.trim().to_string()))
        })
        .collect()
}

/// `skiff validate` on `yaml`, which must exit 1: the file's name, the
/// whole output and its error lines.
fn validate_rejects(yaml: &str) -> anyhow::Result<(String, String, Vec<ErrorLine>)> {
    let dir = ScratchDir::new("cli")?;
    let path = dir.write("bad.yaml", yaml)?;
    let file = path.display().to_string();
    let out = skiff(&["validate", "--config", &file])?;
    assert_eq!(out.code(), Some(1), "{}{}", out.stdout, out.stderr);
    let text = format!("{}{}", out.stdout, out.stderr);
    let errors = error_lines(&text, &file);
    Ok((file, text, errors))
}

#[test]
fn validate_reports_an_unknown_key_with_its_line() -> anyhow::Result<()> {
    // Line 17 has a key the schema does not know.
    let bad = GOOD.replace(
        "    protocol: http2\n",
        "    protocol: http2\n    colour: blue\n",
    );
    assert_eq!(bad.lines().nth(16), Some("    colour: blue"));
    let (file, text, errors) = validate_rejects(&bad)?;
    assert!(
        errors
            .iter()
            .any(|(line, _, rest)| *line == 17 && rest.contains("colour")),
        "want `{file}:17:<col>: ...colour...`, got:\n{text}"
    );
    Ok(())
}

#[test]
fn validate_reports_every_rule_error_with_path_and_line() -> anyhow::Result<()> {
    // Two routes naming clusters that do not exist, on lines 12 and 15.
    let bad = GOOD.replace(
        "            cluster: inventory\n            timeout: 2s\n",
        "            cluster: invntory\n            timeout: 2s\n          - match: { prefix: \"/other/\" }\n            cluster: missing\n",
    );
    assert_eq!(bad.lines().nth(11), Some("            cluster: invntory"));
    assert_eq!(bad.lines().nth(14), Some("            cluster: missing"));
    let (file, text, errors) = validate_rejects(&bad)?;
    for (line, path, name) in [
        (
            12,
            "listeners[0].virtual_hosts[0].routes[0].cluster",
            "invntory",
        ),
        (
            15,
            "listeners[0].virtual_hosts[0].routes[1].cluster",
            "missing",
        ),
    ] {
        assert!(
            errors
                .iter()
                .any(|(l, _, rest)| *l == line && rest.starts_with(path) && rest.contains(name)),
            "want `{file}:{line}:<col>: {path}: ...{name}...`, got:\n{text}"
        );
    }
    Ok(())
}

#[test]
fn route_explains_a_match_and_a_miss() -> anyhow::Result<()> {
    let dir = ScratchDir::new("cli")?;
    let path = dir.write("good.yaml", GOOD)?;
    let file = path.display().to_string();

    let out = skiff(&[
        "route",
        "--config",
        &file,
        "--authority",
        "inventory:50051",
        "--path",
        "/shop.Inventory/Get",
        "--method",
        "POST",
        "--header",
        "content-type=application/grpc",
    ])?;
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    for want in ["outbound", "inventory", "grpc", "MATCH", "2s"] {
        assert!(
            out.stdout.contains(want),
            "`{want}` missing from:\n{}",
            out.stdout
        );
    }

    let out = skiff(&[
        "route",
        "--config",
        &file,
        "--authority",
        "inventory",
        "--path",
        "/shop.Payment/Pay",
    ])?;
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let lower = out.stdout.to_lowercase();
    assert!(
        lower.contains("no route") && lower.contains("404"),
        "a miss should say so:\n{}",
        out.stdout
    );
    assert!(!out.stdout.contains("MATCH"), "{}", out.stdout);

    let out = skiff(&[
        "route",
        "--config",
        &file,
        "--authority",
        "payments",
        "--path",
        "/shop.Inventory/Get",
    ])?;
    assert!(
        out.stdout.to_lowercase().contains("no virtual host"),
        "{}",
        out.stdout
    );
    Ok(())
}

#[test]
fn schema_is_json_schema_of_the_config() -> anyhow::Result<()> {
    let out = skiff(&["schema"])?;
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
    assert!(
        v["$schema"]
            .as_str()
            .is_some_and(|s| s.contains("json-schema.org")),
        "no $schema: {v}"
    );
    for key in ["admin", "listeners", "clusters"] {
        assert!(
            v["properties"].get(key).is_some(),
            "no `{key}` property in the schema"
        );
    }
    // The admission keys, with their defaults.
    let defs = &v["$defs"];
    let default = |def: &str, key: &str| defs[def]["properties"][key]["default"].clone();
    assert_eq!(default("Jwt", "leeway"), "30s");
    assert_eq!(default("Jwt", "forward_token"), true);
    assert_eq!(default("RateLimit", "key"), "client_ip");
    assert_eq!(default("RateLimit", "max_keys"), 100_000);
    for key in ["file", "uri", "cluster", "refresh"] {
        assert!(
            defs["JwksSource"]["properties"].get(key).is_some(),
            "jwks.{key}"
        );
    }
    for key in ["jwt", "rate_limit"] {
        assert!(
            defs["Route"]["properties"].get(key).is_some(),
            "route {key}"
        );
    }
    Ok(())
}

#[test]
fn run_with_a_bad_config_binds_nothing_and_fails() -> anyhow::Result<()> {
    let dir = ScratchDir::new("cli")?;
    let bad = GOOD.replace("cluster: inventory\n", "cluster: nowhere\n");
    let path = dir.write("bad.yaml", &bad)?;
    let out = skiff(&["run", "--config", &path.display().to_string()])?;
    assert_ne!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("nowhere"),
        "the error should name the problem:\n{text}"
    );
    let (admin, listeners) =
        support::process::bound_addresses(&text.lines().map(str::to_string).collect::<Vec<_>>());
    assert!(
        admin.is_none() && listeners.is_empty(),
        "something was bound:\n{text}"
    );

    let out = skiff(&["run", "--config", "/nonexistent/skiff.yaml"])?;
    assert_ne!(out.code(), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_in_flight_request_finish_then_exits_zero() -> anyhow::Result<()> {
    let backend = HttpBackend::start().await?;
    let dir = ScratchDir::new("cli")?;
    let config = dir.write(
        "run.yaml",
        ProxyConfig::new("http1", backend.addr()).render(),
    )?;
    let mut proxy =
        tokio::task::spawn_blocking(move || SkiffProcess::start(&config, &["main"])).await??;
    let addr = proxy.listener("main")?;

    // A request that takes 2 s at the backend.
    let mut c = HttpClient::connect(addr, Proto::H1).await?;
    let in_flight = tokio::spawn(async move { c.get("/?delay_ms=2000").await });
    eventually(Duration::from_secs(10), || async {
        anyhow::ensure!(
            !backend.seen().is_empty(),
            "the request has not reached the backend"
        );
        Ok(())
    })
    .await?;

    proxy.child.sigterm()?;
    let (parts, body) = in_flight.await??;
    assert_eq!(
        parts.status,
        200,
        "the in-flight request was cut: {}",
        body.text()
    );
    assert_eq!(body.text(), "ok");

    let lines = proxy.lines.clone();
    let status =
        tokio::task::spawn_blocking(move || proxy.child.wait_timeout(Duration::from_secs(30)))
            .await??
            .ok_or_else(|| {
                anyhow!(
                    "skiff still running 30 s after SIGTERM:\n{}",
                    lines.joined()
                )
            })?;
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM:\n{}",
        lines.joined()
    );
    Ok(())
}

#[test]
fn route_shows_which_authorization_rule_decides_for_a_peer() -> anyhow::Result<()> {
    let dir = ScratchDir::new("cli")?;
    let path = dir.write(
        "authz.yaml",
        r#"admin: { address: 127.0.0.1:15000 }
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    authorization:
      - allow: { principals: ["spiffe://cluster.local/ns/shop/sa/order"], paths: ["/shop.Payment/*"] }
      - deny: { principals: ["*"] }
    virtual_hosts:
      - name: local
        domains: ["*"]
        routes:
          - match: { prefix: "/" }
            cluster: app
clusters:
  - name: app
    endpoints: ["127.0.0.1:8080"]
"#,
    )?;
    let file = path.display().to_string();
    let route = |peer: Option<&str>| {
        let mut args = vec![
            "route",
            "--config",
            &file,
            "--authority",
            "payment",
            "--path",
            "/shop.Payment/Charge",
            "--method",
            "POST",
        ];
        if let Some(p) = peer {
            args.extend(["--peer", p]);
        }
        skiff(&args)
    };
    let out = route(Some("spiffe://cluster.local/ns/shop/sa/order"))?;
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("rule 0") && out.stdout.contains("allows"),
        "{}",
        out.stdout
    );
    let out = route(Some("spiffe://cluster.local/ns/shop/sa/catalog"))?;
    assert!(
        out.stdout.contains("rule 1") && out.stdout.contains("403"),
        "{}",
        out.stdout
    );
    let out = route(None)?;
    assert!(
        out.stdout.contains("plaintext peer") && out.stdout.contains("no rule matches"),
        "{}",
        out.stdout
    );
    let out = route(Some("order"))?;
    assert_ne!(
        out.code(),
        Some(0),
        "a --peer that is not a SPIFFE ID is refused"
    );
    assert!(out.stderr.contains("--peer"), "{}", out.stderr);
    Ok(())
}
