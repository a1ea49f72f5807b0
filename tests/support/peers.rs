//! Other tools a test talks to (python3 with grpcio, curl, h2load). When one is
//! missing the test says why and skips; with `SKIFF_REQUIRE_PEERS=1` (as CI
//! sets it) a missing peer fails the test instead.

use std::process::{Command, Stdio};
use std::sync::OnceLock;

fn required() -> bool {
    std::env::var("SKIFF_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

/// `true` when the peer is here; otherwise prints why and returns `false`
/// (or panics when peers are required).
fn available(
    peer: &str,
    check: &OnceLock<Result<(), String>>,
    probe: impl FnOnce() -> Result<(), String>,
) -> bool {
    match check.get_or_init(probe) {
        Ok(()) => true,
        Err(why) => {
            assert!(
                !required(),
                "SKIFF_REQUIRE_PEERS=1 but {peer} is unavailable: {why}"
            );
            eprintln!("skipping: {peer} is unavailable ({why}); set SKIFF_REQUIRE_PEERS=1 to make this a failure");
            false
        }
    }
}

fn runs(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            text.trim()
        ))
    }
}

/// python3 with the grpcio package.
pub fn python_grpc() -> bool {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    available("python3 grpcio", &CHECK, || {
        runs("python3", &["-c", "import grpc"]).map(|_| ())
    })
}

/// curl with HTTP/2 support.
pub fn curl() -> bool {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    available("curl (with HTTP/2)", &CHECK, || {
        let v = runs("curl", &["--version"])?;
        if v.contains("HTTP2") {
            Ok(())
        } else {
            Err("curl was built without HTTP2".into())
        }
    })
}

/// h2load from nghttp2.
pub fn h2load() -> bool {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    available("h2load", &CHECK, || {
        runs("h2load", &["--version"]).map(|_| ())
    })
}

/// redis-server (the Debian package `redis-server`), for shared rate limits.
pub fn redis_server() -> bool {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    available("redis-server", &CHECK, || {
        runs("redis-server", &["--version"]).map(|_| ())
    })
}
