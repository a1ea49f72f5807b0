//! The command line (DESIGN §2).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "skiff",
    version,
    about = "A lightweight sidecar proxy for HTTP/1.1, HTTP/2 and gRPC",
    long_about = "Skiff runs beside a service, proxies its east-west HTTP and gRPC traffic, \
                  and is configured by one YAML file. See docs/config.md for the schema."
)]
pub struct Cli {
    /// Log filter, e.g. `info`, `skiff=debug` (also SKIFF_LOG, then RUST_LOG).
    #[arg(long, global = true, env = "SKIFF_LOG")]
    pub log_level: Option<String>,

    /// Log format: json (default when stdout is not a terminal) or text.
    #[arg(long, global = true, value_parser = ["json", "text"])]
    pub log_format: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy.
    Run(ConfigArg),
    /// Check a config file; print every error with line:column; exit 1 if any.
    Validate(ConfigArg),
    /// Explain which listener, virtual host, route and cluster a request would get, and why.
    Route(RouteArgs),
    /// Print the JSON Schema of the config file (for editors and config CI).
    Schema,
}

#[derive(Args, Debug)]
pub struct ConfigArg {
    /// The YAML config file.
    #[arg(short, long, env = "SKIFF_CONFIG")]
    pub config: PathBuf,
}

#[derive(Args, Debug)]
pub struct RouteArgs {
    /// The YAML config file.
    #[arg(short, long, env = "SKIFF_CONFIG")]
    pub config: PathBuf,
    /// The request's authority (`:authority` or Host), e.g. `inventory:50051`.
    #[arg(long)]
    pub authority: String,
    /// The request path, e.g. `/shop.Inventory/Get`.
    #[arg(long)]
    pub path: String,
    /// The request method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// A request header as `name=value`; repeat for more.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// Only explain for this listener (default: every listener).
    #[arg(long)]
    pub listener: Option<String>,
}
