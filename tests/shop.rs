//! The demo shop's configs (examples/shop/config/) are real Skiff configs:
//! `skiff validate` accepts each, as it is (the `${VAR:-default}`
//! addresses of the fixed layout, and a default `TLS_DIR`) and with the
//! variables the launcher sets. They are the shop with mTLS on every hop,
//! `authorization:` on every inbound listener, and a gateway with `jwt`
//! and a rate limit; none of it commented out.
//! The shop itself runs end to end in examples/shop/tests/shop.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn configs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/shop/config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn validate(config: &Path, env: &[(&str, &str)]) {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["validate", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skiff validate {} with {env:?}:\n{}{}",
        config.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_shop_config_is_one_skiff_validate_accepts() {
    let files = configs();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["catalog", "gateway", "inventory", "order", "payment"],
        "one sidecar config per service, and the gateway's"
    );
    for f in &files {
        validate(f, &[]);
    }
    // The security is on, not left in comments: every sidecar is strict
    // mTLS with authorization, the gateway checks tokens and rates.
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let live: Vec<&str> = text
            .lines()
            .map(|l| l.split_once('#').map_or(l, |(code, _)| code).trim_end())
            .collect();
        let has = |key: &str| live.iter().any(|l| l.trim_start().starts_with(key));
        assert!(has("tls:"), "{}: no tls", f.display());
        if f.file_stem().unwrap() == "gateway" {
            for key in ["jwt:", "rate_limit:", "forward_claims: { sub: x-user-id }"] {
                assert!(has(key), "{}: no {key}", f.display());
            }
        } else {
            for key in ["tls: { mode: strict }", "authorization:"] {
                assert!(has(key), "{}: no {key}", f.display());
            }
        }
    }
}

#[test]
fn the_shop_configs_take_the_launchers_addresses() {
    // What the launcher sets (examples/shop/src/launcher.rs), with ports
    // unlike the defaults.
    let env = [
        ("ADMIN_ADDR", "127.0.0.1:41000"),
        ("INBOUND_ADDR", "127.0.0.1:41001"),
        ("OUTBOUND_ADDR", "127.0.0.1:41002"),
        ("APP_ADDR", "127.0.0.1:41003"),
        ("EDGE_ADDR", "127.0.0.1:41004"),
        ("ORDER_1", "127.0.0.1:41011"),
        ("ORDER_2", "127.0.0.1:41012"),
        ("CATALOG_1", "127.0.0.1:41021"),
        ("CATALOG_2", "127.0.0.1:41022"),
        ("INVENTORY_1", "127.0.0.1:41031"),
        ("INVENTORY_2", "127.0.0.1:41032"),
        ("PAYMENT_1", "127.0.0.1:41041"),
        ("PAYMENT_2", "127.0.0.1:41042"),
        ("TLS_DIR", "/tmp/skiff-shop-1234-0abc/tls"),
    ];
    for f in &configs() {
        validate(f, &env);
    }
}
