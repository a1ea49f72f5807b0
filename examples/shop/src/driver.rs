//! The shoppers: place orders through the gateway, `concurrency` at a time,
//! and keep count; a progress line on stderr while they do.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::common;
use crate::pb::catalog_client::CatalogClient;
use crate::pb::order_client::OrderClient;
use crate::pb::{
    GetOrderRequest, Item, ListProductsRequest, OrderStatus, PlaceOrderRequest, Product,
    WatchOrderRequest,
};

/// How long a shopper waits for PlaceOrder. Sent as `grpc-timeout`; every
/// hop caps its own timeouts by what is left of it.
pub const PLACE_TIMEOUT: Duration = Duration::from_secs(5);

/// How one order ended, as the shopper saw it.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub order_id: String,
    pub latency: Duration,
    /// The total charged, or the status it failed with.
    pub result: Result<i64, (Code, String)>,
}

/// What the driver counts; read by the progress line and the summary.
#[derive(Default)]
pub struct Stats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub in_flight: AtomicU64,
    pub outcomes: Mutex<Vec<Outcome>>,
    /// What --chaos did, and when (since the first order).
    pub chaos: Mutex<Vec<(Duration, String)>>,
    /// The statuses a WatchOrder stream of the first paid order showed.
    pub watched: Mutex<Vec<String>>,
    /// GetOrder answers checked against what PlaceOrder said, and the ones
    /// that disagreed.
    pub got: AtomicU64,
    pub got_wrong: Mutex<Vec<String>>,
    pub started: OnceLock<Instant>,
    /// The first order paid (the flooding client of --chaos asks for it).
    pub first_paid: OnceLock<String>,
    /// When the last order ended (a watch may go on after it).
    pub elapsed: Mutex<Option<Duration>>,
}

impl Stats {
    /// Orders that have ended, either way.
    pub fn done(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    pub fn since_start(&self) -> Duration {
        self.started.get().map(|t| t.elapsed()).unwrap_or_default()
    }

    pub fn note_chaos(&self, note: String) {
        common::log(format_args!("chaos: {note}"));
        if let Ok(mut c) = self.chaos.lock() {
            c.push((self.since_start(), note));
        }
    }

    fn record(&self, outcome: Outcome) {
        if let Ok(mut e) = self.elapsed.lock() {
            let now = self.since_start();
            if e.is_none_or(|e| e < now) {
                *e = Some(now);
            }
        }
        match outcome.result {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
        if let Ok(mut o) = self.outcomes.lock() {
            o.push(outcome);
        }
    }
}

/// Who a shopper is, on each call: `authorization: Bearer <token>`, a
/// token the launcher signed for `sub` = the shopper's name
/// (launcher::mint). The gateway verifies it and forwards `sub` to the
/// order service as `x-user-id`, removing any `x-user-id` a client sent.
#[derive(Clone)]
pub struct Shopper {
    /// The signed token; `None`: a client that sends none.
    pub token: Option<Arc<str>>,
}

impl Shopper {
    pub fn on<T>(&self, mut req: Request<T>) -> Request<T> {
        if let Some(token) = &self.token {
            if let Ok(v) = format!("Bearer {token}").parse() {
                req.metadata_mut().insert("authorization", v);
            }
        }
        req
    }
}

/// Where the shoppers reach the shop: the gateway's listener.
#[derive(Clone)]
pub struct Edge {
    pub addr: SocketAddr,
    /// The CA (PEM) that signed the gateway's edge certificate, when the
    /// edge speaks TLS; `None`: h2c.
    pub ca_pem: Option<String>,
}

impl Edge {
    /// A channel to the gateway, `:authority` `service`.
    pub fn dial(&self, service: &str) -> anyhow::Result<Channel> {
        let via = self.addr.to_string();
        match &self.ca_pem {
            None => common::dial(service, Some(&via)),
            Some(ca) => common::dial_tls(service, &via, ca, crate::mint::EDGE_NAME, None),
        }
    }
}

/// A random basket from `products`: one to three of them, one or two of
/// each; the few lamps only now and then, so that some orders fail for
/// want of stock, a cause the summary names.
fn basket(products: &[Product]) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    for _ in 0..fastrand::usize(1..=3) {
        let Some(p) = products.get(fastrand::usize(..products.len().max(1))) else {
            break;
        };
        if p.sku == "lamp" && fastrand::u8(..10) != 0 {
            continue;
        }
        if items.iter().any(|i| i.sku == p.sku) {
            continue;
        }
        items.push(Item {
            sku: p.sku.clone(),
            quantity: fastrand::u32(1..=2),
        });
    }
    if items.is_empty() {
        items.push(Item {
            sku: "book".into(),
            quantity: 1,
        });
    }
    items
}

/// The catalog, through the gateway (a server stream).
async fn list_products(mut catalog: CatalogClient<Channel>) -> anyhow::Result<Vec<Product>> {
    let mut req = Request::new(ListProductsRequest {});
    req.set_timeout(Duration::from_secs(5));
    let mut stream = catalog
        .list_products(req)
        .await
        .context("listing the catalog")?
        .into_inner();
    let mut products = Vec::new();
    while let Some(p) = stream.message().await.context("listing the catalog")? {
        products.push(p);
    }
    anyhow::ensure!(!products.is_empty(), "the catalog is empty");
    Ok(products)
}

/// Watch one order until it is delivered (or 10s pass), noting each status.
async fn watch(
    mut orders: OrderClient<Channel>,
    shopper: Shopper,
    order_id: String,
    stats: Arc<Stats>,
) {
    let run = async {
        let mut stream = orders
            .watch_order(shopper.on(Request::new(WatchOrderRequest {
                order_id: order_id.clone(),
            })))
            .await?
            .into_inner();
        while let Some(u) = stream.message().await? {
            if let Ok(mut w) = stats.watched.lock() {
                w.push(u.status().as_str_name().to_string());
            }
            if matches!(u.status(), OrderStatus::Delivered | OrderStatus::Failed) {
                break;
            }
        }
        Ok::<(), tonic::Status>(())
    };
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            if let Ok(mut w) = stats.watched.lock() {
                w.push(common::status_text(&e));
            }
        }
        Err(_) => {
            if let Ok(mut w) = stats.watched.lock() {
                w.push("(gave up after 10s)".into());
            }
        }
    }
}

/// Place orders through the gateway at `edge` as `shoppers` (in turn):
/// `requests` of them (or until `stop`), `concurrency` at a time, `rate` a
/// second at most (0: no limit).
/// Returns once every order has ended.
pub async fn drive(
    edge: Edge,
    shoppers: Vec<Shopper>,
    requests: Option<u64>,
    concurrency: usize,
    rate: f64,
    stop: watch::Receiver<bool>,
    stats: Arc<Stats>,
) -> anyhow::Result<()> {
    anyhow::ensure!(!shoppers.is_empty(), "no shoppers");
    let shoppers = Arc::new(shoppers);
    let catalog = CatalogClient::new(edge.dial("catalog")?);
    let orders = OrderClient::new(edge.dial("order")?);
    let products = Arc::new(list_products(catalog).await?);
    let run: String = std::iter::repeat_with(fastrand::lowercase)
        .take(4)
        .collect();
    let next = Arc::new(AtomicU64::new(0));
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now();
    let _ = stats.started.set(start);
    // Order i starts no sooner than i/rate after the first.
    let pace = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (orders, shoppers, products, stats, next, stop, run, watching) = (
            orders.clone(),
            shoppers.clone(),
            products.clone(),
            stats.clone(),
            next.clone(),
            stop.clone(),
            run.clone(),
            watching.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut watcher = None;
            loop {
                if *stop.borrow() {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if requests.is_some_and(|n| i >= n) {
                    break;
                }
                if let Some(pace) = pace {
                    let at = start + pace.mul_f64(i as f64);
                    let mut stop = stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
                let Some(shopper) = shoppers.get(i as usize % shoppers.len()).cloned() else {
                    break;
                };
                let order_id = format!("{run}-{:05}", i + 1);
                let items = basket(&products);
                let mut req = Request::new(PlaceOrderRequest {
                    items: items.clone(),
                    order_id: order_id.clone(),
                });
                req.set_timeout(PLACE_TIMEOUT);
                stats.in_flight.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let placed = orders.clone().place_order(shopper.on(req)).await;
                stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                let latency = t.elapsed();
                let result = match placed {
                    Ok(r) => {
                        let r = r.into_inner();
                        let _ = stats.first_paid.set(r.order_id.clone());
                        if !watching.swap(true, Ordering::Relaxed) {
                            watcher = Some(tokio::spawn(watch(
                                orders.clone(),
                                shopper.clone(),
                                r.order_id.clone(),
                                stats.clone(),
                            )));
                        }
                        if i % 10 == 0 {
                            check_get(&orders, &shopper, &r.order_id, r.total_cents, &stats).await;
                        }
                        Ok(r.total_cents)
                    }
                    Err(e) => Err((e.code(), e.message().to_string())),
                };
                stats.record(Outcome {
                    order_id,
                    latency,
                    result,
                });
            }
            if let Some(w) = watcher {
                let _ = w.await;
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    Ok(())
}

/// GetOrder must say what PlaceOrder said, from whichever replica answers.
async fn check_get(
    orders: &OrderClient<Channel>,
    shopper: &Shopper,
    order_id: &str,
    total_cents: i64,
    stats: &Stats,
) {
    let mut req = Request::new(GetOrderRequest {
        order_id: order_id.to_string(),
    });
    req.set_timeout(Duration::from_secs(2));
    let got = orders.clone().get_order(shopper.on(req)).await;
    stats.got.fetch_add(1, Ordering::Relaxed);
    let wrong = match got {
        Ok(info) => {
            let info = info.into_inner();
            (info.total_cents != total_cents || info.status() == OrderStatus::Failed)
                .then(|| format!("{order_id}: GetOrder says {info:?}"))
        }
        Err(e) => Some(format!("{order_id}: GetOrder: {}", common::status_text(&e))),
    };
    if let Some(w) = wrong {
        if let Ok(mut g) = stats.got_wrong.lock() {
            g.push(w);
        }
    }
}

/// The progress line on stderr until `stop`: rewritten in place on a
/// terminal, one line every 2s otherwise.
pub async fn progress(stats: Arc<Stats>, requests: Option<u64>, mut stop: watch::Receiver<bool>) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(2)
    };
    let line = |stats: &Stats| {
        let done = stats.done();
        let secs = stats.since_start().as_secs_f64().max(0.001);
        let of = requests.map(|n| format!("/{n}")).unwrap_or_default();
        let chaos = stats
            .chaos
            .lock()
            .ok()
            .and_then(|c| c.last().map(|(_, n)| format!(" · chaos: {n}")))
            .unwrap_or_default();
        format!(
            "shop: {done}{of} orders · {} ok · {} failed · {} in flight · {:.1}/s{chaos}",
            stats.ok.load(Ordering::Relaxed),
            stats.failed.load(Ordering::Relaxed),
            stats.in_flight.load(Ordering::Relaxed),
            done as f64 / secs,
        )
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
        let done = *stop.borrow();
        if tty {
            eprint!("\r\x1b[K{}", line(&stats));
            if done {
                eprintln!();
            }
        } else {
            eprintln!("{}", line(&stats));
        }
        if done {
            return;
        }
    }
}
