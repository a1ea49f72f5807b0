//! The demo shop: four gRPC services (catalog, inventory, payment, order),
//! two replicas of each, every replica behind its own Skiff, and a gateway
//! Skiff in front. One binary: `shop` alone is the launcher that starts
//! them all as separate processes and drives orders through them;
//! `shop <service>` is one replica of a service. See README.md.

mod catalog;
mod common;
mod driver;
mod inventory;
mod launcher;
mod mint;
mod order;
mod payment;
mod pb;
mod report;
mod rogues;

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "shop",
    about = "The demo shop: every service twice, each replica behind its own Skiff",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    service: Option<Service>,
    #[command(flatten)]
    launch: launcher::Args,
}

/// One replica of a service (the launcher starts these).
#[derive(clap::Subcommand, Debug)]
enum Service {
    /// Products and prices.
    Catalog(catalog::Args),
    /// Stock, in SQLite.
    Inventory(inventory::Args),
    /// Charges and refunds, in a SQLite ledger.
    Payment(payment::Args),
    /// Places orders: catalog, then inventory, then payment.
    Order(order::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shop: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.service {
        Some(Service::Catalog(args)) => runtime.block_on(catalog::main(args)).map(|()| true),
        Some(Service::Inventory(args)) => runtime.block_on(inventory::main(args)).map(|()| true),
        Some(Service::Payment(args)) => runtime.block_on(payment::main(args)).map(|()| true),
        Some(Service::Order(args)) => runtime.block_on(order::main(args)).map(|()| true),
        None => runtime.block_on(launcher::main(cli.launch)),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("shop: {e:#}");
            ExitCode::from(2)
        }
    }
}
