//! The demo shop (examples/shop, docs/shop.md) end to end: its four services
//! and four proxies in process, on ephemeral ports, each proxy configured by
//! its file in config/shop/ with the fixed addresses swapped for the real
//! ones. An order goes client -> order's proxy -> order -> order's proxy ->
//! the other services' proxies -> catalog, inventory, payment.

// A failed unwrap is a failed test. Each service file is a binary of its
// own and includes examples/shop/common itself; here, with the four side by
// side, that module is compiled once per service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::duplicate_mod)]

mod support;

#[path = "../examples/shop/common/mod.rs"]
mod common;

#[path = "../examples/shop/catalog.rs"]
#[allow(dead_code)]
mod catalog;
#[path = "../examples/shop/inventory.rs"]
#[allow(dead_code)]
mod inventory;
#[path = "../examples/shop/order.rs"]
#[allow(dead_code)]
mod order;
#[path = "../examples/shop/payment.rs"]
#[allow(dead_code)]
mod payment;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::Code;

use common::pb::order_client::OrderClient;
use common::pb::{Item, OrderStatus, PlaceOrderRequest, WatchOrderRequest};
use support::{within, AbortOnDrop, Proxy};

const LIMIT: Duration = Duration::from_secs(20);

/// How the shop misbehaves.
#[derive(Clone, Copy, Default)]
struct Faults {
    payment_failure_rate: f64,
    inventory_slow_rate: f64,
}

struct Shop {
    /// The order service's proxy; the client calls its `inbound` listener.
    order_proxy: Proxy,
    catalog_proxy: Proxy,
    inventory_proxy: Proxy,
    payment_proxy: Proxy,
    _apps: Vec<AbortOnDrop>,
}

/// The fixed addresses of config/shop/*.yaml (see config/shop/order.yaml).
fn app_addr(n: u8) -> String {
    format!("127.0.0.1:50{n}51")
}
fn inbound_addr(n: u8) -> String {
    format!("127.0.0.1:15{n}06")
}
fn admin_addr(n: u8) -> String {
    format!("127.0.0.1:15{n}00")
}
const ORDER_OUTBOUND: &str = "127.0.0.1:15101";

/// config/shop/`name`.yaml with each `(fixed, real)` address swapped, and
/// the access log off (it would write to the test's stdout).
fn shop_config(name: &str, swaps: &[(String, String)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("config/shop/{name}.yaml"));
    let mut yaml = std::fs::read_to_string(&path).unwrap();
    for (fixed, real) in swaps {
        assert!(yaml.contains(fixed.as_str()), "{name}.yaml: no {fixed}");
        yaml = yaml.replace(fixed.as_str(), real);
    }
    assert!(yaml.contains("  path: stdout"), "{name}.yaml: access log");
    yaml.replace("  path: stdout", "  enabled: false")
}

/// A service's app on 127.0.0.1:0.
async fn listen() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn serve<E: std::fmt::Debug>(
    fut: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
) -> AbortOnDrop {
    AbortOnDrop::spawn(async move {
        if let Err(e) = fut.await {
            panic!("shop service failed: {e:?}");
        }
    })
}

impl Shop {
    async fn start(faults: Faults) -> Shop {
        let never = std::future::pending::<()>;
        let (catalog_l, catalog_a) = listen().await;
        let (inventory_l, inventory_a) = listen().await;
        let (payment_l, payment_a) = listen().await;
        let (order_l, order_a) = listen().await;
        let mut apps = vec![
            serve(catalog::Catalog::new(catalog::products()).serve(catalog_l, never())),
            serve(
                inventory::Inventory::new(faults.inventory_slow_rate, Duration::from_secs(5))
                    .serve(inventory_l, never()),
            ),
            serve(payment::Payment::new(faults.payment_failure_rate).serve(payment_l, never())),
        ];

        // The proxies of the three called services: own addresses ephemeral,
        // the app's address real.
        let leaf = |name: &str, n: u8, app: SocketAddr| {
            shop_config(
                name,
                &[
                    (admin_addr(n), "127.0.0.1:0".into()),
                    (inbound_addr(n), "127.0.0.1:0".into()),
                    (app_addr(n), app.to_string()),
                ],
            )
        };
        let catalog_proxy = Proxy::start(&leaf("catalog", 2, catalog_a)).await.unwrap();
        let inventory_proxy = Proxy::start(&leaf("inventory", 3, inventory_a))
            .await
            .unwrap();
        let payment_proxy = Proxy::start(&leaf("payment", 4, payment_a)).await.unwrap();
        let inbound = |p: &Proxy| p.listener("inbound").unwrap().to_string();

        // The order's proxy sends the calls to the others' proxies.
        let order_proxy = Proxy::start(&shop_config(
            "order",
            &[
                (admin_addr(1), "127.0.0.1:0".into()),
                (inbound_addr(1), "127.0.0.1:0".into()),
                (ORDER_OUTBOUND.into(), "127.0.0.1:0".into()),
                (app_addr(1), order_a.to_string()),
                (inbound_addr(2), inbound(&catalog_proxy)),
                (inbound_addr(3), inbound(&inventory_proxy)),
                (inbound_addr(4), inbound(&payment_proxy)),
            ],
        ))
        .await
        .unwrap();

        // The order app calls through its proxy's outbound listener, by name.
        let outbound = order_proxy.listener("outbound").unwrap().to_string();
        let dial = |service: &str| common::dial(service, Some(&outbound)).unwrap();
        let order = order::Order::new(
            dial("catalog"),
            dial("inventory"),
            dial("payment"),
            Duration::from_millis(50),
        );
        apps.push(serve(order.serve(order_l, never())));

        Shop {
            order_proxy,
            catalog_proxy,
            inventory_proxy,
            payment_proxy,
            _apps: apps,
        }
    }

    /// A client of the order service, through its proxy.
    fn client(&self) -> OrderClient<Channel> {
        let inbound = self.order_proxy.listener("inbound").unwrap().to_string();
        OrderClient::new(common::dial("order", Some(&inbound)).unwrap())
    }
}

fn book_and_two_mugs() -> PlaceOrderRequest {
    let item = |sku: &str, quantity| Item {
        sku: sku.into(),
        quantity,
    };
    PlaceOrderRequest {
        customer: "ada".into(),
        items: vec![item("book", 1), item("mug", 2)],
    }
}

/// The shop with `faults`, and the error that placing the order ends in.
async fn failed_order(faults: Faults) -> (Shop, tonic::Status) {
    let shop = Shop::start(faults).await;
    let mut client = shop.client();
    let err = within(LIMIT, "PlaceOrder", async {
        Ok(client.place_order(book_and_two_mugs()).await)
    })
    .await
    .unwrap()
    .unwrap_err();
    (shop, err)
}

async fn metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    proxy.metric(name, labels).await.unwrap()
}

#[tokio::test]
async fn an_order_is_placed_and_delivered_through_four_proxies() {
    let shop = Shop::start(Faults::default()).await;
    let mut client = shop.client();

    let placed = within(LIMIT, "PlaceOrder", async {
        Ok(client.place_order(book_and_two_mugs()).await?.into_inner())
    })
    .await
    .unwrap();
    assert_eq!(placed.total_cents, 2450 + 2 * 1200);
    assert_eq!(placed.status(), OrderStatus::Paid);
    assert!(placed.payment_id.starts_with("pay-"), "{placed:?}");

    let statuses = within(LIMIT, "WatchOrder", async {
        let mut updates = client
            .watch_order(WatchOrderRequest {
                order_id: placed.order_id.clone(),
            })
            .await?
            .into_inner();
        let mut seen = Vec::new();
        while let Some(u) = updates.message().await? {
            assert_eq!(u.order_id, placed.order_id);
            seen.push(u.status());
        }
        Ok(seen)
    })
    .await
    .unwrap();
    // The latest status first (PAID unless the watch started late), then
    // each change until DELIVERED.
    assert!(statuses.windows(2).all(|w| w[0] < w[1]), "{statuses:?}");
    assert_eq!(
        statuses.last(),
        Some(&OrderStatus::Delivered),
        "{statuses:?}"
    );

    // Each call went through the order's outbound listener, chosen by
    // authority, and through the called service's own proxy.
    let ok = [("grpc_status", "0")];
    for (cluster, calls, proxy) in [
        ("catalog", 2.0, &shop.catalog_proxy),
        ("inventory", 1.0, &shop.inventory_proxy),
        ("payment", 1.0, &shop.payment_proxy),
    ] {
        let out = [("listener", "outbound"), ("cluster", cluster), ok[0]];
        assert_eq!(
            metric(&shop.order_proxy, "skiff_requests_total", &out).await,
            calls,
            "{cluster} via the order's proxy"
        );
        let inb = [("listener", "inbound"), ok[0]];
        assert_eq!(
            metric(proxy, "skiff_requests_total", &inb).await,
            calls,
            "{cluster}'s own proxy"
        );
    }
}

#[tokio::test]
async fn an_unavailable_payment_is_tried_three_times() {
    let (shop, err) = failed_order(Faults {
        payment_failure_rate: 1.0,
        ..Faults::default()
    })
    .await;
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().starts_with("payment: card network busy"),
        "{err:?}"
    );

    let payment = [("cluster", "payment")];
    assert_eq!(
        metric(&shop.order_proxy, "skiff_retries_total", &payment).await,
        2.0
    );
    let failed = [("cluster", "payment"), ("result", "failure")];
    assert_eq!(
        metric(&shop.order_proxy, "skiff_upstream_attempts_total", &failed).await,
        3.0
    );
    let unavailable = [("listener", "inbound"), ("grpc_status", "14")];
    assert_eq!(
        metric(&shop.payment_proxy, "skiff_requests_total", &unavailable).await,
        3.0
    );
}

#[tokio::test]
async fn a_slow_inventory_runs_out_of_time() {
    let (shop, err) = failed_order(Faults {
        inventory_slow_rate: 1.0,
        ..Faults::default()
    })
    .await;
    // Two tries of 300ms (config/shop/order.yaml), then the error says who
    // gave up: a proxy, not the app.
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().starts_with("inventory: "), "{err:?}");
    assert!(err.message().ends_with("(skiff: timeout)"), "{err:?}");
    let inventory = [("cluster", "inventory")];
    assert_eq!(
        metric(&shop.order_proxy, "skiff_retries_total", &inventory).await,
        1.0
    );
}

#[test]
fn the_shop_configs_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/shop");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            skiff::config::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert_eq!(seen, 4, "one config per service in {}", dir.display());
}
