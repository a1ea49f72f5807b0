//! The manifests in `deploy/`: every Skiff config in a ConfigMap passes the
//! same validation as `skiff validate`; each pod agrees with its config (the
//! ports iptables redirects to are the ports Skiff listens on, the probes hit
//! the admin port, the proxy runs as the UID iptables exempts); the
//! kustomization lists every file; and the resources match the Kubernetes
//! schemas (the PyPI package `kubernetes-validate`; skipped with a reason
//! when it is missing, unless `SKIFF_REQUIRE_PEERS=1`).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_yaml::Value;
use skiff::config::{self, Config, Direction};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// The oldest Kubernetes with native sidecars (`restartPolicy: Always` on an
/// init container).
const OLDEST_KUBERNETES: &str = "1.29.0";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every `.yaml` file under `deploy/`, sorted.
fn manifest_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![deploy_dir()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(
        !files.is_empty(),
        "no manifests in {}",
        deploy_dir().display()
    );
    files
}

/// One resource of a manifest file.
struct Resource {
    file: String,
    doc: Value,
}

impl Resource {
    fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap_or_default()
    }

    fn what(&self) -> String {
        format!("{} {}/{}", self.file, self.kind(), self.name())
    }
}

fn resources() -> Vec<Resource> {
    let mut out = Vec::new();
    for path in manifest_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .display()
            .to_string();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("{file} is not valid YAML: {e}"));
            if !doc.is_null() {
                out.push(Resource {
                    file: file.clone(),
                    doc,
                });
            }
        }
    }
    out
}

/// Every Skiff config held in a ConfigMap: (ConfigMap name, key) -> config.
fn skiff_configs(all: &[Resource]) -> anyhow::Result<BTreeMap<(String, String), Config>> {
    let mut configs = BTreeMap::new();
    let mut errors = Vec::new();
    for r in all.iter().filter(|r| r.kind() == "ConfigMap") {
        let Some(data) = r.doc["data"].as_mapping() else {
            continue;
        };
        for (key, text) in data {
            let (Some(key), Some(text)) = (key.as_str(), text.as_str()) else {
                bail!("{}: data must map names to strings", r.what());
            };
            if !key.ends_with(".yaml") {
                continue;
            }
            let origin = format!("{}[{key}]", r.what());
            match config::load_str(text, &origin) {
                Ok(c) => {
                    configs.insert((r.name().to_string(), key.to_string()), c);
                }
                Err(e) => errors.push(format!("{origin}:\n{e}")),
            }
        }
    }
    if !errors.is_empty() {
        bail!(
            "configs that skiff validate refuses:\n{}",
            errors.join("\n")
        );
    }
    Ok(configs)
}

#[test]
fn every_skiff_config_in_a_configmap_is_valid() -> anyhow::Result<()> {
    let all = resources();
    let configs = skiff_configs(&all)?;
    let names: Vec<&str> = configs.keys().map(|(cm, _)| cm.as_str()).collect();
    for want in [
        "skiff-gateway",
        "skiff-order",
        "skiff-catalog",
        "skiff-inventory",
        "skiff-payment",
    ] {
        assert!(
            names.contains(&want),
            "no config in ConfigMap {want}: {names:?}"
        );
    }

    // And through the binary, as an operator would check an edit.
    let dir = std::env::temp_dir().join(format!("skiff-manifests-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for r in all.iter().filter(|r| r.kind() == "ConfigMap") {
        let Some(text) = r.doc["data"]["skiff.yaml"].as_str() else {
            continue;
        };
        let file = dir.join(format!("{}.yaml", r.name()));
        std::fs::write(&file, text)?;
        let out = Command::new(SKIFF)
            .args(["validate", "--config"])
            .arg(&file)
            .output()?;
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: {said}", r.what());
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A container found by name in `initContainers` or `containers`.
struct Container<'a> {
    spec: &'a Value,
    init: bool,
    index: usize,
}

fn containers(pod: &Value) -> BTreeMap<String, Container<'_>> {
    let mut out = BTreeMap::new();
    for (field, init) in [("initContainers", true), ("containers", false)] {
        for (index, c) in pod[field].as_sequence().into_iter().flatten().enumerate() {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            out.insert(
                name,
                Container {
                    spec: c,
                    init,
                    index,
                },
            );
        }
    }
    out
}

/// The value of `--flag=value` or `--flag value` in a container's args.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let eq = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(&eq)
            .or_else(|| (a == name).then(|| args.get(i + 1).map(String::as_str))?)
    })
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {address:?}"))
}

/// The number a container port refers to (a name or a number).
fn container_port(c: &Value, port: &Value) -> Option<u64> {
    if let Some(n) = port.as_u64() {
        return Some(n);
    }
    let name = port.as_str()?;
    c["ports"]
        .as_sequence()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))?["containerPort"]
        .as_u64()
}

/// Checks one pod template against the Skiff config it mounts; returns the
/// problems found.
fn check_pod(
    what: &str,
    template: &Value,
    configs: &BTreeMap<(String, String), Config>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut fail = |m: String| problems.push(format!("{what}: {m}"));
    let pod = &template["spec"];
    let all = containers(pod);
    let Some(skiff) = all.get("skiff") else {
        fail("no container named skiff".into());
        return problems;
    };
    let s = skiff.spec;
    let init = all.get("skiff-init");
    let app: Vec<&Container<'_>> = all
        .iter()
        .filter(|(n, _)| n.as_str() != "skiff" && n.as_str() != "skiff-init")
        .map(|(_, c)| c)
        .collect();

    // The sidecar is native (an init container that stays) when there is an app.
    if !app.is_empty() {
        if !skiff.init || s["restartPolicy"].as_str() != Some("Always") {
            fail("skiff must be an init container with restartPolicy: Always".into());
        }
        match init {
            Some(i) if i.init && i.index < skiff.index => {}
            _ => fail("skiff-init must be an init container before skiff".into()),
        }
    }

    // Its config: mounted as a directory, so edits reach the pod.
    let args = strings(&s["args"]);
    let Some(path) = flag(&args, "--config") else {
        fail(format!("skiff args {args:?} name no --config"));
        return problems;
    };
    let Some((dir, key)) = path.rsplit_once('/') else {
        fail(format!("--config {path} is not a path"));
        return problems;
    };
    let mount = s["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"].as_str() == Some(dir));
    let Some(mount) = mount else {
        fail(format!("nothing is mounted at {dir}"));
        return problems;
    };
    if !mount["subPath"].is_null() {
        fail("the config is mounted with subPath: ConfigMap edits would never arrive".into());
    }
    let volume = pod["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"]);
    let cm = volume.and_then(|v| v["configMap"]["name"].as_str());
    let Some(config) = cm.and_then(|cm| configs.get(&(cm.to_string(), key.to_string()))) else {
        fail(format!(
            "no ConfigMap {cm:?} with key {key} holds its config"
        ));
        return problems;
    };

    // Admin: reachable from kubelet, probed, scraped.
    let admin = port_of(&config.admin.address);
    if config.admin.address.starts_with("127.") || config.admin.address.starts_with("[::1]") {
        fail(format!(
            "admin.address {} is loopback: kubelet's probes cannot reach it",
            config.admin.address
        ));
    }
    for (probe, path) in [
        ("startupProbe", "/ready"),
        ("readinessProbe", "/ready"),
        ("livenessProbe", "/live"),
    ] {
        let get = &s[probe]["httpGet"];
        if get["path"].as_str() != Some(path)
            || container_port(s, &get["port"]) != Some(admin.into())
        {
            fail(format!("{probe} must GET {path} on the admin port {admin}"));
        }
    }
    let notes = &template["metadata"]["annotations"];
    let want_notes = [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", admin.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
    ];
    for (k, v) in want_notes {
        if notes[k].as_str() != Some(v.as_str()) {
            fail(format!("annotation {k} must be {v:?}"));
        }
    }

    // Locked down: non-root, read-only, no capabilities.
    let sc = &s["securityContext"];
    let proxy_uid = sc["runAsUser"].as_u64();
    for (k, v) in [
        ("runAsNonRoot", Value::Bool(true)),
        ("readOnlyRootFilesystem", Value::Bool(true)),
        ("allowPrivilegeEscalation", Value::Bool(false)),
    ] {
        if sc[k] != v {
            fail(format!("skiff securityContext.{k} must be {v:?}"));
        }
    }
    if proxy_uid != Some(1337) {
        fail("skiff must run as UID 1337".into());
    }
    for (name, c) in &all {
        let caps = &c.spec["securityContext"]["capabilities"];
        if strings(&caps["drop"]) != ["ALL"] {
            fail(format!("{name} must drop ALL capabilities"));
        }
        let added = strings(&caps["add"]);
        let want: &[&str] = if name == "skiff-init" {
            &["NET_ADMIN"]
        } else {
            &[]
        };
        if added != want {
            fail(format!(
                "{name} adds capabilities {added:?}, expected {want:?}"
            ));
        }
        if c.spec["resources"]["requests"].is_null() || c.spec["resources"]["limits"].is_null() {
            fail(format!("{name} needs resource requests and limits"));
        }
    }
    for c in &app {
        let uid = c.spec["securityContext"]["runAsUser"].as_u64();
        if uid.is_none() || uid == proxy_uid {
            fail(format!(
                "{} must run as a UID of its own, not the proxy's: its traffic would not be redirected",
                c.spec["name"].as_str().unwrap_or_default()
            ));
        }
    }

    // The init container redirects to where Skiff listens.
    let Some(init) = init else {
        return problems;
    };
    let init_args = strings(&init.spec["args"]);
    let dry_run = Command::new(SKIFF)
        .args(init_args.iter().chain(&["--dry-run".to_string()]))
        .stdin(Stdio::null())
        .output();
    match dry_run {
        Ok(out) if out.status.success() => {}
        Ok(out) => fail(format!(
            "`skiff {}` is refused: {}",
            init_args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => fail(format!("cannot run skiff: {e}")),
    }
    if init_args.first().map(String::as_str) != Some("iptables") {
        fail(format!(
            "skiff-init runs {init_args:?}, not `skiff iptables`"
        ));
    }
    if init.spec["securityContext"]["runAsUser"].as_u64() != Some(0) {
        fail("skiff-init must run as root (iptables)".into());
    }
    let number = |name: &str, default: u64| -> u64 {
        flag(&init_args, name).map_or(default, |v| v.parse().unwrap_or(0))
    };
    if Some(number("--proxy-uid", 1337)) != proxy_uid {
        fail("skiff-init --proxy-uid is not the UID skiff runs as".into());
    }
    if number("--admin-port", 15000) != u64::from(admin) {
        fail("skiff-init --admin-port is not the admin port".into());
    }
    for (direction, name, default) in [
        (Direction::Outbound, "--outbound-port", 15001),
        (Direction::Inbound, "--inbound-port", 15006),
    ] {
        let port = number(name, default);
        let listener = config
            .listeners
            .iter()
            .find(|l| l.direction == direction && u64::from(port_of(&l.address)) == port);
        match listener {
            None => fail(format!("no {direction:?} listener on port {port} ({name})")),
            Some(l) if !l.transparent => {
                fail(format!("listener {} needs transparent: true", l.name))
            }
            Some(l) => {
                let ip = l.address.rsplit_once(':').map_or("", |(ip, _)| ip);
                let reachable = match direction {
                    // REDIRECT sends the pod's own traffic to 127.0.0.1.
                    Direction::Outbound => ip == "127.0.0.1" || ip == "0.0.0.0",
                    // and traffic from outside to the address it came to.
                    Direction::Inbound => ip == "0.0.0.0",
                };
                if !reachable {
                    fail(format!(
                        "listener {} on {ip} misses redirected traffic",
                        l.name
                    ));
                }
            }
        }
    }
    problems
}

#[test]
fn every_pod_agrees_with_its_skiff_config() -> anyhow::Result<()> {
    let all = resources();
    let configs = skiff_configs(&all)?;
    let mut problems = Vec::new();
    let mut checked = 0;
    for d in all.iter().filter(|r| r.kind() == "Deployment") {
        problems.extend(check_pod(&d.what(), &d.doc["spec"]["template"], &configs));
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} Deployments");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn dns_clusters_name_headless_services() -> anyhow::Result<()> {
    let all = resources();
    let configs = skiff_configs(&all)?;
    let services: BTreeMap<&str, &Value> = all
        .iter()
        .filter(|r| r.kind() == "Service")
        .map(|r| (r.name(), &r.doc))
        .collect();
    let mut problems = Vec::new();
    for ((cm, _), config) in &configs {
        for c in &config.clusters {
            let Some(dns) = &c.dns else { continue };
            let Some(name) = &dns.name else { continue };
            // A name outside the cluster (the identity provider's) is no Service.
            let in_cluster = !name.contains('.')
                || name.ends_with(".svc")
                || name.ends_with(".svc.cluster.local");
            if !in_cluster {
                continue;
            }
            let svc = name.split('.').next().unwrap_or_default();
            match services.get(svc) {
                None => problems.push(format!(
                    "{cm}: cluster {} resolves {name}: no Service {svc}",
                    c.name
                )),
                Some(s) => {
                    if s["spec"]["clusterIP"].as_str() != Some("None") {
                        problems.push(format!(
                            "{cm}: Service {svc} is not headless: DNS would answer one virtual IP"
                        ));
                    }
                    let ports: Vec<u64> = s["spec"]["ports"]
                        .as_sequence()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p["port"].as_u64())
                        .collect();
                    if dns.port.is_some_and(|p| !ports.contains(&u64::from(p))) {
                        problems.push(format!("{cm}: Service {svc} has no port {:?}", dns.port));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn every_sidecar_knows_the_same_services() -> anyhow::Result<()> {
    let all = resources();
    let configs = skiff_configs(&all)?;
    let outbound: BTreeMap<&str, String> = configs
        .iter()
        .filter_map(|((cm, _), c)| {
            let l = c
                .listeners
                .iter()
                .find(|l| l.direction == Direction::Outbound)?;
            let mut used: BTreeSet<&str> = BTreeSet::new();
            for vh in &l.virtual_hosts {
                for r in &vh.routes {
                    used.extend(r.cluster.as_deref());
                }
            }
            let clusters: Vec<_> = c
                .clusters
                .iter()
                .filter(|c| used.contains(c.name.as_str()))
                .collect();
            Some((
                cm.as_str(),
                serde_json::to_string(&(l, clusters)).unwrap_or_default(),
            ))
        })
        .collect();
    assert!(outbound.len() >= 4, "{:?}", outbound.keys());
    let first = outbound.values().next().unwrap();
    for (cm, block) in &outbound {
        assert_eq!(
            block, first,
            "{cm}: its outbound listener or clusters differ from the others'"
        );
    }
    Ok(())
}

#[test]
fn kustomizations_list_every_manifest() -> anyhow::Result<()> {
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for f in manifest_files() {
        dirs.extend(f.parent().map(Path::to_path_buf));
    }
    for dir in dirs {
        let k = dir.join("kustomization.yaml");
        let text = std::fs::read_to_string(&k)
            .with_context(|| format!("{} has no kustomization.yaml", dir.display()))?;
        let doc: Value = serde_yaml::from_str(&text)?;
        let listed: BTreeSet<String> = strings(&doc["resources"]).into_iter().collect();
        let present: BTreeSet<String> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
            .collect();
        assert_eq!(listed, present, "{}: resources vs files", k.display());
    }
    Ok(())
}

#[test]
fn the_podmonitor_selects_every_skiff() -> anyhow::Result<()> {
    let all = resources();
    let monitors: Vec<&Resource> = all.iter().filter(|r| r.kind() == "PodMonitor").collect();
    assert_eq!(monitors.len(), 1);
    let m = &monitors[0].doc;
    assert_eq!(m["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    let selector = m["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .context("PodMonitor spec.selector.matchLabels")?;
    let endpoint = &m["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    let port = endpoint["port"]
        .as_str()
        .context("podMetricsEndpoints[0].port")?;
    for d in all.iter().filter(|r| r.kind() == "Deployment") {
        let t = &d.doc["spec"]["template"];
        for (k, v) in selector {
            assert_eq!(&t["metadata"]["labels"][k], v, "{}: label {k:?}", d.what());
        }
        let named = containers(&t["spec"])
            .values()
            .any(|c| container_port(c.spec, &Value::from(port)).is_some());
        assert!(named, "{}: no container port named {port}", d.what());
    }
    Ok(())
}

#[test]
fn images_are_the_ones_the_dockerfile_builds() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile"))?;
    let shop_cargo = std::fs::read_to_string(root.join("examples/shop/Cargo.toml"))?;
    let all = resources();
    let mut images = BTreeSet::new();
    for d in all.iter().filter(|r| r.kind() == "Deployment") {
        for c in containers(&d.doc["spec"]["template"]["spec"]).values() {
            let image = c.spec["image"].as_str().unwrap_or_default();
            images.insert(image.rsplit_once(':').map_or(image, |(i, _)| i).to_string());
            // The shop image holds one binary, `shop`; the command's
            // argument picks the service.
            if image.contains("/skiff-shop:") {
                let command = strings(&c.spec["command"]);
                let bin = command
                    .first()
                    .and_then(|c| c.rsplit('/').next())
                    .unwrap_or_default()
                    .to_string();
                assert_eq!(bin, "shop", "{}: {command:?}", d.what());
                assert!(
                    dockerfile.contains("cargo build --release --locked -p shop")
                        && dockerfile.contains("target/release/shop "),
                    "{}: the Dockerfile's shop stage does not build `shop`",
                    d.what()
                );
                assert!(
                    shop_cargo.contains("name = \"shop\""),
                    "no binary `shop` in examples/shop/Cargo.toml"
                );
                let service = command.get(1).map(String::as_str).unwrap_or_default();
                assert!(
                    ["order", "catalog", "inventory", "payment"].contains(&service),
                    "{}: `shop {service}` is not a shop service",
                    d.what()
                );
            }
        }
    }
    let k: Value = serde_yaml::from_str(&std::fs::read_to_string(
        deploy_dir().join("kustomization.yaml"),
    )?)?;
    let listed: BTreeSet<String> = k["images"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        images, listed,
        "images in the Deployments vs kustomization.yaml images:"
    );
    for (target, image) in [("init", "skiff-init"), ("shop", "skiff-shop")] {
        assert!(
            dockerfile.contains(&format!(" AS {target}\n")),
            "no `--target {target}` stage for {image}"
        );
    }
    Ok(())
}

fn peers_required() -> bool {
    std::env::var("SKIFF_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

/// Kinds that have no schema in `kubernetes-validate`: it warns and skips
/// them (cert-manager's Certificate and Issuer are CRDs too). Any other
/// kind without a schema is a mistake (an apiVersion typo).
const NO_SCHEMA: [&str; 4] = ["Kustomization", "PodMonitor", "Certificate", "Issuer"];

#[test]
fn manifests_match_the_kubernetes_schemas() -> anyhow::Result<()> {
    let probe = Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        let why = match probe {
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => format!("no python3: {e}"),
        };
        assert!(
            !peers_required(),
            "SKIFF_REQUIRE_PEERS=1 but the PyPI package kubernetes-validate is unavailable: {why}"
        );
        eprintln!("skipping: kubernetes-validate is unavailable ({why}); `pip install kubernetes-validate`, or set SKIFF_REQUIRE_PEERS=1 to make this a failure");
        return Ok(());
    }
    let files: Vec<String> = manifest_files()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    // The oldest version with native sidecars, and the newest it knows.
    for version in [Some(OLDEST_KUBERNETES), None] {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "kubernetes_validate", "--strict"]);
        if let Some(v) = version {
            cmd.args(["-k", v]);
        }
        let out = cmd.args(&files).stdin(Stdio::null()).output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("ERROR")
                    || l.starts_with("FATAL")
                    || (l.starts_with("WARN")
                        && !NO_SCHEMA.iter().any(|k| l.contains(&format!("kind {k} "))))
            })
            .collect();
        assert!(
            out.status.success() && bad.is_empty(),
            "kubernetes-validate ({}):\n{}",
            version.unwrap_or("newest"),
            if bad.is_empty() {
                text.clone()
            } else {
                bad.join("\n")
            }
        );
        let passed = text
            .lines()
            .filter(|l| l.contains(" passed for resource deployment/"))
            .count();
        assert!(
            passed >= 5,
            "only {passed} Deployments were checked:\n{text}"
        );
    }
    Ok(())
}

/// The pod's Skiff config: the one in the ConfigMap mounted at `--config`'s directory.
fn pod_config<'c>(
    template: &Value,
    configs: &'c BTreeMap<(String, String), Config>,
) -> Option<&'c Config> {
    let pod = &template["spec"];
    let all = containers(pod);
    let s = all.get("skiff")?.spec;
    let args = strings(&s["args"]);
    let (dir, key) = flag(&args, "--config")?.rsplit_once('/')?;
    let mount = s["volumeMounts"]
        .as_sequence()?
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(dir))?;
    let cm = pod["volumes"]
        .as_sequence()?
        .iter()
        .find(|v| v["name"] == mount["name"])?["configMap"]["name"]
        .as_str()?;
    configs.get(&(cm.to_string(), key.to_string()))
}

/// The shop in mTLS: every Skiff reads its SVID from a csi-driver-spiffe
/// volume at the paths of its `tls` (the file names the driver writes),
/// runs as the ServiceAccount its callers expect, takes only mTLS on its
/// inbound listener with authorization rules naming shop identities, and
/// keeps kubelet's plaintext health probe off that listener.
#[test]
fn every_shop_pod_proves_its_identity_and_takes_only_mtls() -> anyhow::Result<()> {
    let all = resources();
    let configs = skiff_configs(&all)?;
    let accounts: BTreeSet<&str> = all
        .iter()
        .filter(|r| r.kind() == "ServiceAccount")
        .map(Resource::name)
        .collect();
    let mut expected: BTreeSet<String> = BTreeSet::new();
    let mut proven: BTreeSet<String> = BTreeSet::new();
    let mut problems = Vec::new();
    for d in all.iter().filter(|r| r.kind() == "Deployment") {
        let what = d.what();
        let mut fail = |m: String| problems.push(format!("{what}: {m}"));
        let template = &d.doc["spec"]["template"];
        let pod = &template["spec"];
        let Some(config) = pod_config(template, &configs) else {
            fail("no Skiff config found".into());
            continue;
        };
        let Some(tls) = &config.tls else {
            fail("its Skiff has no top-level tls".into());
            continue;
        };
        let dir = tls.cert.rsplit_once('/').map_or("", |(d, _)| d);
        for (file, want) in [
            (&tls.cert, "tls.crt"),
            (&tls.key, "tls.key"),
            (&tls.ca, "ca.crt"),
        ] {
            if *file != format!("{dir}/{want}") {
                fail(format!(
                    "tls file {file} is not {dir}/{want}, as csi-driver-spiffe writes it"
                ));
            }
        }
        let skiff = containers(pod).get("skiff").map(|c| c.spec);
        let mount = skiff.and_then(|s| {
            s["volumeMounts"]
                .as_sequence()?
                .iter()
                .find(|m| m["mountPath"].as_str() == Some(dir))
        });
        let volume = mount.and_then(|m| {
            pod["volumes"]
                .as_sequence()?
                .iter()
                .find(|v| v["name"] == m["name"])
        });
        match volume {
            Some(v) if v["csi"]["driver"].as_str() == Some("spiffe.csi.cert-manager.io") => {}
            _ => fail(format!("no csi-driver-spiffe volume is mounted at {dir}")),
        }
        if pod["securityContext"]["fsGroup"].as_u64() != Some(1337) {
            fail("fsGroup must be 1337, the proxy's group, to read the key".into());
        }
        let account = pod["serviceAccountName"].as_str().unwrap_or_default();
        if !accounts.contains(account) {
            fail(format!("ServiceAccount {account:?} is not in deploy/"));
        }
        proven.insert(format!("spiffe://cluster.local/ns/shop/sa/{account}"));
        for c in &config.clusters {
            if let Some(t) = &c.tls {
                expected.extend(t.identities.iter().cloned());
            }
        }
        let inbound = config
            .listeners
            .iter()
            .find(|l| l.transparent && l.direction == Direction::Inbound);
        if let Some(l) = inbound {
            if l.tls.as_ref().map(|t| t.mode) != Some(config::ListenerTlsMode::Strict) {
                fail(format!("listener {} is not tls.mode: strict", l.name));
            }
            let rules = l.authorization.as_deref().unwrap_or_default();
            let named: Vec<&String> = rules
                .iter()
                .filter_map(|r| r.allow.as_ref())
                .flat_map(|m| &m.principals)
                .collect();
            if named.is_empty() {
                fail(format!("listener {} allows no shop identity", l.name));
            }
            expected.extend(named.into_iter().cloned());
            // kubelet's gRPC probe needs a plaintext port that is not redirected.
            let init = containers(pod)
                .get("skiff-init")
                .map(|c| strings(&c.spec["args"]));
            let excluded = init
                .as_deref()
                .and_then(|a| flag(a, "--exclude-inbound-ports"))
                .unwrap_or_default()
                .split(',')
                .map(str::to_string)
                .collect::<Vec<_>>();
            for c in pod["containers"].as_sequence().into_iter().flatten() {
                if let Some(port) = c["readinessProbe"]["grpc"]["port"].as_u64() {
                    let plain = config.listeners.iter().any(|l| {
                        u64::from(port_of(&l.address)) == port
                            && l.tls
                                .as_ref()
                                .is_none_or(|t| t.mode == config::ListenerTlsMode::Disabled)
                    });
                    if !plain || !excluded.contains(&port.to_string()) {
                        fail(format!(
                            "the gRPC probe's port {port} must be a plaintext Skiff listener excluded from redirection"
                        ));
                    }
                }
            }
        }
    }
    let unproven: Vec<&String> = expected.difference(&proven).collect();
    if !unproven.is_empty() {
        problems.push(format!(
            "identities expected but no pod runs as them: {unproven:?}"
        ));
    }
    assert!(proven.len() >= 5, "{proven:?}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// The gateway is the shop's edge: its listener terminates HTTPS with the
/// files of the Secret cert-manager's Certificate fills, checks JWTs, and
/// keeps its rate limits in a Redis the manifests run, on the port its
/// Service has; the Service in front of it speaks HTTPS.
#[test]
fn the_gateway_terminates_https_checks_jwts_and_shares_its_limits() -> anyhow::Result<()> {
    use skiff::config::model::ListenerTlsMode;
    let all = resources();
    let configs = skiff_configs(&all)?;
    let find = |kind: &str, name: &str| {
        all.iter()
            .find(|r| r.kind() == kind && r.name() == name)
            .with_context(|| format!("no {kind} {name}"))
    };
    let deployment = find("Deployment", "gateway")?;
    let template = &deployment.doc["spec"]["template"];
    let pod = &template["spec"];
    let config = pod_config(template, &configs).context("the gateway's Skiff config")?;
    let listener = config
        .listeners
        .iter()
        .find(|l| l.name == "gateway")
        .context("no listener gateway")?;

    // Edge TLS from the Certificate's Secret, mounted where the config reads it.
    let tls = listener
        .tls
        .as_ref()
        .context("the gateway listener has no tls")?;
    assert_eq!(tls.mode, ListenerTlsMode::Terminate);
    let cert = tls.cert.as_deref().context("no tls.cert")?;
    let key = tls.key.as_deref().context("no tls.key")?;
    let dir = cert.rsplit_once('/').map_or("", |(d, _)| d);
    assert_eq!(key, format!("{dir}/tls.key"), "cert-manager writes tls.key");
    assert_eq!(
        cert,
        format!("{dir}/tls.crt"),
        "cert-manager writes tls.crt"
    );
    let skiff = containers(pod)
        .get("skiff")
        .map(|c| c.spec)
        .context("no skiff")?;
    let mount = skiff["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"].as_str() == Some(dir))
        .with_context(|| format!("nothing is mounted at {dir}"))?;
    let secret = pod["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .and_then(|v| v["secret"]["secretName"].as_str())
        .context("the edge files are not a Secret volume")?;
    let issued = all
        .iter()
        .any(|r| r.kind() == "Certificate" && r.doc["spec"]["secretName"].as_str() == Some(secret));
    assert!(issued, "no Certificate fills the Secret {secret}");

    // JWT on every route but the catalog's, from a key set fetched over https.
    let jwt = listener.jwt.as_ref().context("the gateway checks no JWT")?;
    assert!(!jwt.issuer.is_empty() && !jwt.audiences.is_empty());

    // Shared rate limits: a Redis Service on the URL's port.
    let limit = listener.rate_limit.as_ref().context("no rate_limit")?;
    let shared = limit
        .shared
        .as_ref()
        .context("the rate limit is not shared")?;
    let rest = shared
        .redis
        .strip_prefix("redis://")
        .context("not redis://")?;
    let (host, port) = rest.rsplit_once(':').context("no port in the Redis URL")?;
    let svc = find("Service", host.split('.').next().unwrap_or_default())?;
    let ports: Vec<String> = svc.doc["spec"]["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|p| p["port"].as_u64().map(|p| p.to_string()))
        .collect();
    assert!(
        ports.iter().any(|p| p == port),
        "Service {host} has no port {port}"
    );

    // The gateway's Service: HTTPS to the listener's port.
    let listen_port = port_of(&listener.address);
    let service = find("Service", "gateway")?;
    let target = service.doc["spec"]["ports"][0]["targetPort"].clone();
    let container = skiff["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == target || p["containerPort"] == target)
        .and_then(|p| p["containerPort"].as_u64());
    assert_eq!(
        container,
        Some(u64::from(listen_port)),
        "the Service does not reach the listener"
    );
    assert_eq!(
        service.doc["spec"]["ports"][0]["appProtocol"].as_str(),
        Some("https")
    );
    Ok(())
}
