//! The `skiff` binary: parse the command line, then run, validate, explain or print the schema.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use skiff::config::{self, Config};
use skiff::router::{explain, RequestInfo};

/// Print a line to stdout; a closed pipe (`skiff validate | head`) is not an error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod cli;
use cli::{Cli, Command, IptablesArgs, RouteArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let result = match cli.command {
        Command::Run(a) => run(&a.config),
        Command::Validate(a) => return validate(&a.config),
        Command::Route(a) => route(&a),
        Command::Iptables(a) => iptables(&a),
        Command::Schema => serde_json::to_string_pretty(&config::json_schema())
            .map(|s| out!("{s}"))
            .context("printing the schema"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let filter = cli
        .log_level
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match cli.log_format.as_deref() {
        Some("json") => true,
        Some(_) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        // Each line carries the spans it was logged in (conn, req, upstream),
        // outermost first, with their fields.
        b.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init();
    } else {
        b.init();
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    let checked = config::check_file(path);
    for w in &checked.warnings {
        tracing::warn!("{w}");
    }
    checked.config.map_err(|errors| {
        let n = errors.0.len();
        anyhow::anyhow!(
            "{errors}\n{n} error{} in {}; nothing was started",
            if n == 1 { "" } else { "s" },
            path.display()
        )
    })
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = load(path)?;
    let threads = skiff::runtime::worker_threads(config.runtime.worker_threads);
    // One worker: the current-thread runtime, where tasks run on the thread
    // that polls them, without handing wake-ups between a worker and the
    // driver (about a fifth less CPU per request, see BENCHMARKS.md).
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = builder
        .thread_name("skiff-worker")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        tracing::info!(config = %path.display(), worker_threads = threads, version = env!("CARGO_PKG_VERSION"), "starting");
        let shutdown = shutdown_signal();
        let bound = skiff::app::build(config).await?.reload_from(path);
        bound.run(shutdown).await?;
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when it is first polled: call it before binding anything, so
/// a signal that comes early drains instead of killing the process.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async move {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    let checked = config::check_file(path);
    for w in &checked.warnings {
        out!("{w}");
    }
    let warned = match checked.warnings.len() {
        0 => String::new(),
        1 => "; 1 warning".to_string(),
        n => format!("; {n} warnings"),
    };
    match checked.config {
        Ok(c) => {
            let routes: usize = c
                .listeners
                .iter()
                .flat_map(|l| &l.virtual_hosts)
                .map(|v| v.routes.len())
                .sum();
            let n = |count: usize, word: &str| {
                format!("{count} {word}{}", if count == 1 { "" } else { "s" })
            };
            out!(
                "{}: valid ({}, {}, {}){warned}",
                path.display(),
                n(c.listeners.len(), "listener"),
                n(routes, "route"),
                n(c.clusters.len(), "cluster")
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            out!("{errors}");
            let n = errors.0.len();
            out!(
                "{n} error{} in {}{warned}",
                if n == 1 { "" } else { "s" },
                path.display()
            );
            ExitCode::FAILURE
        }
    }
}

fn route(a: &RouteArgs) -> anyhow::Result<()> {
    let config = load(&a.config)?;
    let method =
        Method::from_bytes(a.method.as_bytes()).context("--method is not an HTTP method")?;
    let mut headers = HeaderMap::new();
    for h in &a.headers {
        let (k, v) = h
            .split_once('=')
            .with_context(|| format!("--header {h:?} is not name=value"))?;
        headers.append(
            HeaderName::from_bytes(k.trim().as_bytes())
                .with_context(|| format!("bad header name {k:?}"))?,
            HeaderValue::from_str(v).with_context(|| format!("bad header value {v:?}"))?,
        );
    }
    let req = RequestInfo {
        authority: &a.authority,
        path: &a.path,
        method: &method,
        headers: &headers,
    };
    out!(
        "request: {} {}{} {:?}",
        method,
        a.authority,
        a.path,
        a.headers
    );
    let peer = a
        .peer
        .as_deref()
        .map(skiff::identity::Identity::parse)
        .transpose()
        .context("--peer is not a SPIFFE ID")?;
    let report = explain::report(&config, &req, peer.as_ref(), a.listener.as_deref())
        .map_err(anyhow::Error::msg)?;
    out!("{}", report.trim_end());
    Ok(())
}

fn iptables(a: &IptablesArgs) -> anyhow::Result<()> {
    use skiff::iptables as ipt;
    let o = a.options();
    let steps = if a.clean {
        ipt::clean_plan(&o)
    } else {
        ipt::install_plan(&o)?
    };
    if a.dry_run {
        out!(
            "# skiff iptables{}: nat table, run as root with CAP_NET_ADMIN",
            if a.clean { " --clean" } else { "" }
        );
        for s in &steps {
            out!("{}", s.shell());
        }
        return Ok(());
    }
    let mut system = ipt::System;
    ipt::preflight(&o.families(), &mut system)?;
    ipt::apply(&steps, &mut system)?;
    if a.clean {
        ipt::verify_clean(&o.families(), &mut system)?;
        tracing::info!("interception rules removed");
    } else {
        tracing::info!(
            rules = steps.len(),
            outbound_port = o.outbound_port,
            inbound_port = o.inbound_port,
            proxy_uid = o.proxy_uid,
            "interception rules installed"
        );
    }
    Ok(())
}
