//! A customer of the shop: lists the catalog, places an order and watches it
//! until it is delivered. With `--orders N` it places N orders one after
//! another instead, and counts how they ended.
//!
//! Run with `cargo run --example shop_client -- [--orders N] [--customer NAME] [SKU[:QTY]...]`
//! while the shop runs (`scripts/shop.sh`, docs/shop.md). Without SKUs it
//! orders one book and two mugs. Settings:
//!
//! - `ORDER_ADDR`: the order service's Skiff, inbound listener (default
//!   `127.0.0.1:15106`).
//! - `CATALOG_ADDR`: the catalog's Skiff, inbound listener (default
//!   `127.0.0.1:15206`).

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tonic::transport::Channel;
use tonic::Request;

use common::pb::catalog_client::CatalogClient;
use common::pb::order_client::OrderClient;
use common::pb::{
    Item, ListProductsRequest, OrderStatus, PlaceOrderRequest, PlaceOrderResponse,
    WatchOrderRequest,
};

/// How long the customer waits for an order to be placed. Sent along as
/// `grpc-timeout`; the sidecars cap their own timeouts by it.
const PLACE_TIMEOUT: Duration = Duration::from_secs(5);

struct Args {
    orders: Option<u32>,
    customer: String,
    items: Vec<Item>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        orders: None,
        customer: "ada".into(),
        items: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--orders" => {
                let n = it.next().context("--orders needs a number")?;
                args.orders = Some(n.parse().with_context(|| format!("--orders {n}"))?);
            }
            "--customer" => args.customer = it.next().context("--customer needs a name")?,
            "-h" | "--help" => {
                println!("usage: shop_client [--orders N] [--customer NAME] [SKU[:QTY]...]");
                std::process::exit(0);
            }
            flag if flag.starts_with('-') => bail!("unknown flag {flag}; try --help"),
            item => {
                let (sku, quantity) = item.split_once(':').unwrap_or((item, "1"));
                let quantity = quantity
                    .parse()
                    .with_context(|| format!("quantity in {item:?}"))?;
                args.items.push(Item {
                    sku: sku.to_string(),
                    quantity,
                });
            }
        }
    }
    if args.items.is_empty() {
        args.items = vec![
            Item {
                sku: "book".into(),
                quantity: 1,
            },
            Item {
                sku: "mug".into(),
                quantity: 2,
            },
        ];
    }
    Ok(args)
}

async fn place(
    orders: &mut OrderClient<Channel>,
    customer: &str,
    items: &[Item],
) -> Result<PlaceOrderResponse, tonic::Status> {
    let mut req = Request::new(PlaceOrderRequest {
        customer: customer.to_string(),
        items: items.to_vec(),
    });
    req.set_timeout(PLACE_TIMEOUT);
    orders.place_order(req).await.map(|r| r.into_inner())
}

fn status_text(e: &tonic::Status) -> String {
    format!("{}: {}", common::code_name(e.code()), e.message())
}

/// List the catalog, place one order, watch it to the end. `false` when
/// the order was not placed.
async fn one_order(
    mut catalog: CatalogClient<Channel>,
    mut orders: OrderClient<Channel>,
    args: &Args,
) -> anyhow::Result<bool> {
    println!("catalog:");
    let mut products = catalog
        .list_products(ListProductsRequest {})
        .await
        .context("listing the catalog")?
        .into_inner();
    while let Some(p) = products.message().await.context("listing the catalog")? {
        println!(
            "  {:<6} {:<28} {:>8}",
            p.sku,
            p.name,
            common::dollars(p.price_cents)
        );
    }

    println!(
        "\n{} orders {}:",
        args.customer,
        common::items_text(&args.items)
    );
    let started = Instant::now();
    let placed = match place(&mut orders, &args.customer, &args.items).await {
        Ok(placed) => placed,
        Err(e) => {
            println!(
                "  failed after {:.0?}: {}",
                started.elapsed(),
                status_text(&e)
            );
            return Ok(false);
        }
    };
    println!(
        "  {} placed in {:.0?}: {} paid ({})",
        placed.order_id,
        started.elapsed(),
        common::dollars(placed.total_cents),
        placed.payment_id
    );

    println!("\nwatching {}:", placed.order_id);
    let started = Instant::now();
    let mut updates = orders
        .watch_order(WatchOrderRequest {
            order_id: placed.order_id.clone(),
        })
        .await
        .context("watching the order")?
        .into_inner();
    while let Some(u) = updates.message().await.context("watching the order")? {
        println!(
            "  {:>6.1}s  {:<10} {}",
            started.elapsed().as_secs_f64(),
            u.status().as_str_name(),
            u.detail
        );
        if u.status() == OrderStatus::Delivered {
            break;
        }
    }
    Ok(true)
}

/// Place `n` orders one after another and count how they ended. `false`
/// when none was placed.
async fn many_orders(mut orders: OrderClient<Channel>, args: &Args, n: u32) -> bool {
    let mut ended: BTreeMap<String, u32> = BTreeMap::new();
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        match place(&mut orders, &args.customer, &args.items).await {
            Ok(placed) => {
                println!("  {:<16} OK in {:.0?}", placed.order_id, t.elapsed());
                *ended.entry("OK".into()).or_default() += 1;
            }
            Err(e) => {
                println!("  failed in {:.0?}: {}", t.elapsed(), status_text(&e));
                *ended.entry(common::code_name(e.code()).into()).or_default() += 1;
            }
        }
    }
    let summary: Vec<String> = ended.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!(
        "{n} orders in {:.1?}: {}",
        started.elapsed(),
        summary.join(", ")
    );
    ended.contains_key("OK")
}

async fn run() -> anyhow::Result<bool> {
    let args = parse_args()?;
    let order_addr = common::env_or("ORDER_ADDR", "127.0.0.1:15106");
    let catalog_addr = common::env_or("CATALOG_ADDR", "127.0.0.1:15206");
    let orders = OrderClient::new(common::dial("order", Some(&order_addr))?);
    match args.orders {
        Some(n) => Ok(many_orders(orders, &args, n).await),
        None => {
            let catalog = CatalogClient::new(common::dial("catalog", Some(&catalog_addr))?);
            one_order(catalog, orders, &args).await
        }
    }
}

/// Exit 0 when an order went through, 1 when none did, 2 on any other error.
#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("shop_client: {e:#}");
            ExitCode::from(2)
        }
    }
}
