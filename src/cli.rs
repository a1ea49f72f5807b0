//! The command line (docs/architecture.md, "Command line").

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

    /// Log format: json (default when stderr, where logs go, is not a terminal) or text.
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
    /// Install (or print, or remove) the pod's traffic interception rules; the init container runs this.
    Iptables(IptablesArgs),
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
    /// The caller's verified identity (a SPIFFE ID), for the listener's
    /// authorization rules; without it the caller is a plaintext peer.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub peer: Option<String>,
}

/// `skiff iptables`: see `skiff::iptables` and docs/kubernetes.md.
#[derive(Args, Debug)]
pub struct IptablesArgs {
    /// Print the commands, one shell line each, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove every rule and chain that an install added.
    #[arg(long)]
    pub clean: bool,
    /// The UID the proxy runs as; its own connections are never redirected.
    #[arg(long, default_value_t = 1337)]
    pub proxy_uid: u32,
    /// The outbound listener's port: the app's TCP connections go there.
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// The inbound listener's port: TCP connections into the pod go there.
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// The admin port: never redirected (kubelet probes, Prometheus).
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
    /// Destination ports whose outbound connections go direct, e.g. `3306,5432`.
    #[arg(long, value_delimiter = ',', value_name = "PORT,..")]
    pub exclude_outbound_ports: Vec<u16>,
    /// Pod ports whose inbound connections go straight to the app.
    #[arg(long, value_delimiter = ',', value_name = "PORT,..")]
    pub exclude_inbound_ports: Vec<u16>,
    /// Destination ranges whose outbound connections go direct, e.g. `169.254.169.254/32`.
    #[arg(long, value_delimiter = ',', value_name = "CIDR,..")]
    pub exclude_outbound_cidrs: Vec<skiff::iptables::Cidr>,
    /// Also install (or remove) the rules for IPv6 with ip6tables.
    #[arg(long)]
    pub ipv6: bool,
}

impl IptablesArgs {
    /// The library's options from the flags.
    pub fn options(&self) -> skiff::iptables::Options {
        skiff::iptables::Options {
            proxy_uid: self.proxy_uid,
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            admin_port: self.admin_port,
            exclude_outbound_ports: self.exclude_outbound_ports.clone(),
            exclude_inbound_ports: self.exclude_inbound_ports.clone(),
            exclude_outbound_cidrs: self.exclude_outbound_cidrs.clone(),
            ipv6: self.ipv6,
        }
    }
}
