//! `shop order`: the front door. PlaceOrder prices the items (catalog),
//! reserves them (inventory) and charges the customer (payment); when a
//! step fails it undoes the ones before — refund, release — a small saga.
//! Orders live in a SQLite database the replicas share, so any replica
//! answers GetOrder and WatchOrder for any order.
//!
//! Its calls to the other three go through its own sidecar's outbound
//! listener, naming the service in `:authority`; the sidecar picks a
//! replica and adds the timeouts and retries of config/order.yaml. This
//! code has no retry loop on the way forward and no address of a replica.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::common::{self, db_error, Call, Db, Deadline, Health};
use crate::pb::catalog_client::CatalogClient;
use crate::pb::inventory_client::InventoryClient;
use crate::pb::order_server::OrderServer;
use crate::pb::payment_client::PaymentClient;
use crate::pb::{
    ChargeRequest, GetOrderRequest, GetProductRequest, Item, OrderInfo, OrderStatus, OrderUpdate,
    PlaceOrderRequest, PlaceOrderResponse, RefundRequest, ReleaseRequest, ReserveRequest,
    WatchOrderRequest,
};

/// The order service's flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to listen; its sidecar's inbound listener sends every call here.
    #[arg(long, env = "ADDR", default_value = "127.0.0.1:50151")]
    pub addr: String,
    /// Its sidecar's outbound listener: every call to catalog, inventory
    /// and payment goes there, by service name. `none`: dial the names
    /// below as they are (iptables brings the connections to the sidecar).
    #[arg(long, env = "OUTBOUND_ADDR", default_value = "127.0.0.1:15111")]
    pub outbound: String,
    /// The catalog, by the name its sidecar routes.
    #[arg(long, env = "CATALOG_ADDR", default_value = "catalog")]
    pub catalog: String,
    /// The inventory, likewise.
    #[arg(long, env = "INVENTORY_ADDR", default_value = "inventory")]
    pub inventory: String,
    /// The payment service, likewise.
    #[arg(long, env = "PAYMENT_ADDR", default_value = "payment")]
    pub payment: String,
    /// The orders database, shared by every replica; made if new.
    #[arg(long, env = "ORDER_DB", default_value = "order.db")]
    pub db: String,
    /// How long packing, shipping and delivery each take.
    #[arg(long, env = "ORDER_STEP", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub step: Duration,
}

/// `orders.state`: `pending` while PlaceOrder runs, then `paid` or `failed`
/// (with the status it failed with). A paid order moves on by itself: its
/// status follows from `paid_ms` and the step.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    order_id     TEXT PRIMARY KEY,
    customer     TEXT NOT NULL,
    items        TEXT NOT NULL,
    total_cents  INTEGER NOT NULL DEFAULT 0,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'paid', 'failed')),
    payment_id   TEXT NOT NULL DEFAULT '',
    failure_code INTEGER NOT NULL DEFAULT 0,
    failure      TEXT NOT NULL DEFAULT '',
    placed_ms    INTEGER NOT NULL,
    paid_ms      INTEGER
);
";

/// Open the orders database at `path`, making it if it is new.
pub fn open(path: &str) -> anyhow::Result<Connection> {
    let db = common::open_db(path)?;
    db.execute_batch(SCHEMA)?;
    Ok(db)
}

/// `book:1,mug:2`, as the orders table keeps items.
pub fn items_column(items: &[Item]) -> String {
    items
        .iter()
        .map(|i| format!("{}:{}", i.sku, i.quantity))
        .collect::<Vec<_>>()
        .join(",")
}

/// The items of an `items` column.
pub fn parse_items(column: &str) -> Vec<Item> {
    column
        .split(',')
        .filter_map(|i| {
            let (sku, q) = i.split_once(':')?;
            Some(Item {
                sku: sku.to_string(),
                quantity: q.parse().ok()?,
            })
        })
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A row of `orders`.
struct Row {
    order_id: String,
    customer: String,
    items: String,
    total_cents: i64,
    state: String,
    payment_id: String,
    failure_code: i32,
    failure: String,
    paid_ms: Option<i64>,
}

fn read(db: &Connection, order_id: &str) -> Result<Option<Row>, Status> {
    db.query_row(
        "SELECT order_id, customer, items, total_cents, state, payment_id, failure_code,
                failure, paid_ms
         FROM orders WHERE order_id = ?1",
        [order_id],
        |r| {
            Ok(Row {
                order_id: r.get(0)?,
                customer: r.get(1)?,
                items: r.get(2)?,
                total_cents: r.get(3)?,
                state: r.get(4)?,
                payment_id: r.get(5)?,
                failure_code: r.get(6)?,
                failure: r.get(7)?,
                paid_ms: r.get(8)?,
            })
        },
    )
    .optional()
    .map_err(db_error)
}

impl Row {
    /// Where the order is now, and what to say about it.
    fn status(&self, step: Duration) -> (OrderStatus, String) {
        match self.state.as_str() {
            "pending" => (OrderStatus::Pending, "being placed".into()),
            "failed" => (OrderStatus::Failed, self.failure.clone()),
            _ => {
                let step_ms = i64::try_from(step.as_millis()).unwrap_or(i64::MAX).max(1);
                let since = now_ms() - self.paid_ms.unwrap_or(0);
                match since / step_ms {
                    0 => (
                        OrderStatus::Paid,
                        format!(
                            "paid {} ({})",
                            common::dollars(self.total_cents),
                            self.payment_id
                        ),
                    ),
                    1 => (OrderStatus::Packed, "packed".into()),
                    2 => (OrderStatus::Shipped, "handed to the carrier".into()),
                    _ => (OrderStatus::Delivered, "delivered".into()),
                }
            }
        }
    }

    fn failure_status(&self) -> Status {
        Status::new(Code::from_i32(self.failure_code), self.failure.clone())
    }
}

/// What a PlaceOrder handler and its saga share.
struct Inner {
    catalog: CatalogClient<Channel>,
    inventory: InventoryClient<Channel>,
    payment: PaymentClient<Channel>,
    db: Db,
    /// Made-up order ids are `<this process>-<n>`.
    id_prefix: String,
    next_id: std::sync::atomic::AtomicU64,
}

/// The order service.
pub struct Order {
    inner: Arc<Inner>,
    step: Duration,
}

impl Order {
    /// The dependencies as `args` names them.
    pub fn new(args: &Args, db: Connection) -> anyhow::Result<Order> {
        let via = (args.outbound != "none").then_some(args.outbound.as_str());
        Ok(Order {
            inner: Arc::new(Inner {
                catalog: CatalogClient::new(common::dial(&args.catalog, via)?),
                inventory: InventoryClient::new(common::dial(&args.inventory, via)?),
                payment: PaymentClient::new(common::dial(&args.payment, via)?),
                db: Db::new(db),
                id_prefix: std::iter::repeat_with(fastrand::lowercase)
                    .take(4)
                    .collect(),
                next_id: std::sync::atomic::AtomicU64::new(1),
            }),
            step: args.step,
        })
    }
}

/// What a failed order must undo: the steps that may have happened (a
/// call that timed out may have done its work), latest first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Undo {
    /// Pricing failed: nothing was asked of anyone.
    Nothing,
    /// Reserving failed: release (the reservation may have been made).
    Release,
    /// Charging failed: refund (the charge may have been made), release.
    RefundAndRelease,
}

/// How many times an undo step (refund, release) is tried before the
/// order is left for a person to look at.
const UNDO_TRIES: u32 = 6;

impl Inner {
    /// Note the order as pending; `Err` with the answer when it exists
    /// already (PlaceOrder is idempotent by order id).
    async fn begin(
        &self,
        order_id: &str,
        customer: &str,
        items: &[Item],
    ) -> Result<Option<PlaceOrderResponse>, Status> {
        let (order_id, customer, items) = (
            order_id.to_string(),
            customer.to_string(),
            items_column(items),
        );
        self.db
            .run(move |db| {
                let inserted = db
                    .execute(
                        "INSERT OR IGNORE INTO orders (order_id, customer, items, state, placed_ms)
                         VALUES (?1, ?2, ?3, 'pending', ?4)",
                        params![order_id, customer, items, now_ms()],
                    )
                    .map_err(db_error)?;
                if inserted == 1 {
                    return Ok(None);
                }
                let Some(row) = read(db, &order_id)? else {
                    return Err(Status::internal(format!("order {order_id} vanished")));
                };
                if row.customer != customer || row.items != items {
                    return Err(Status::already_exists(format!(
                        "order {order_id} exists with other items or another customer"
                    )));
                }
                match row.state.as_str() {
                    "paid" => Ok(Some(PlaceOrderResponse {
                        order_id: row.order_id.clone(),
                        total_cents: row.total_cents,
                        payment_id: row.payment_id.clone(),
                        status: OrderStatus::Paid.into(),
                    })),
                    "failed" => Err(row.failure_status()),
                    _ => Err(Status::aborted(format!(
                        "order {order_id} is being placed by another call"
                    ))),
                }
            })
            .await
    }

    /// The saga: price, reserve, charge; undo on failure. Runs in a task of
    /// its own, so that it finishes (and undoes) even when the caller goes
    /// away halfway.
    async fn place(
        &self,
        deadline: Deadline,
        order_id: String,
        customer: String,
        items: Vec<Item>,
    ) -> Result<PlaceOrderResponse, Status> {
        // 1. Price the items. Nothing to undo if this fails.
        let mut total_cents = 0;
        for item in &items {
            let priced = self
                .catalog
                .clone()
                .get_product(deadline.request(GetProductRequest {
                    sku: item.sku.clone(),
                })?)
                .await;
            match priced {
                Ok(p) => total_cents += p.into_inner().price_cents * i64::from(item.quantity),
                Err(e) => {
                    return self
                        .fail(&order_id, failed("catalog", e), Undo::Nothing)
                        .await
                }
            }
        }

        // 2. Take them out of stock. A timeout leaves it open whether they
        // were reserved; the undo releases them either way.
        let reserved = match deadline.request(ReserveRequest {
            order_id: order_id.clone(),
            items: items.clone(),
        }) {
            Ok(req) => self.inventory.clone().reserve(req).await,
            Err(e) => Err(e),
        };
        if let Err(e) = reserved {
            return self
                .fail(&order_id, failed("inventory", e), Undo::Release)
                .await;
        }

        // 3. Charge the customer. A timeout leaves it open whether the
        // money was taken; the undo refunds it either way.
        let charged = match deadline.request(ChargeRequest {
            order_id: order_id.clone(),
            customer: customer.clone(),
            amount_cents: total_cents,
        }) {
            Ok(req) => self.payment.clone().charge(req).await,
            Err(e) => Err(e),
        };
        let payment_id = match charged {
            Ok(r) => r.into_inner().payment_id,
            Err(e) => {
                return self
                    .fail(&order_id, failed("payment", e), Undo::RefundAndRelease)
                    .await
            }
        };

        // 4. Paid: from here on the order moves by itself.
        let (id, pid) = (order_id.clone(), payment_id.clone());
        let noted = self
            .db
            .run(move |db| {
                db.execute(
                    "UPDATE orders SET state = 'paid', total_cents = ?2, payment_id = ?3,
                         paid_ms = ?4 WHERE order_id = ?1",
                    params![id, total_cents, pid, now_ms()],
                )
                .map_err(db_error)
            })
            .await;
        if let Err(e) = noted {
            return self.fail(&order_id, e, Undo::RefundAndRelease).await;
        }
        Ok(PlaceOrderResponse {
            order_id,
            total_cents,
            payment_id,
            status: OrderStatus::Paid.into(),
        })
    }

    /// Undo what the order did, note it failed with `why`, and fail with
    /// `why`.
    async fn fail(
        &self,
        order_id: &str,
        why: Status,
        undo: Undo,
    ) -> Result<PlaceOrderResponse, Status> {
        let mut note = common::status_text(&why);
        if undo == Undo::RefundAndRelease {
            if let Err(e) = self.undo_refund(order_id).await {
                note.push_str(&format!("; REFUND NOT DONE: {}", common::status_text(&e)));
            }
        }
        if undo != Undo::Nothing {
            if let Err(e) = self.undo_release(order_id).await {
                note.push_str(&format!("; RELEASE NOT DONE: {}", common::status_text(&e)));
            }
        }
        let (id, code, text) = (order_id.to_string(), why.code() as i32, note);
        let noted = self
            .db
            .run(move |db| {
                db.execute(
                    "UPDATE orders SET state = 'failed', failure_code = ?2, failure = ?3
                     WHERE order_id = ?1",
                    params![id, code, text],
                )
                .map_err(db_error)
            })
            .await;
        if let Err(e) = noted {
            common::log(format_args!(
                "order {order_id}: noting the failure: {}",
                common::status_text(&e)
            ));
        }
        Err(why)
    }

    /// Refund `order_id`, trying a few times: an undo must not give up at
    /// the first error, and it is not bound by the caller's deadline (the
    /// caller may be gone; the money must come back anyway).
    async fn undo_refund(&self, order_id: &str) -> Result<(), Status> {
        undo(|| {
            let mut req = Request::new(RefundRequest {
                order_id: order_id.to_string(),
            });
            req.set_timeout(Duration::from_secs(1));
            let mut payment = self.payment.clone();
            async move { payment.refund(req).await.map(|_| ()) }
        })
        .await
        .map_err(|e| failed("payment", e))
    }

    async fn undo_release(&self, order_id: &str) -> Result<(), Status> {
        undo(|| {
            let mut req = Request::new(ReleaseRequest {
                order_id: order_id.to_string(),
            });
            req.set_timeout(Duration::from_secs(1));
            let mut inventory = self.inventory.clone();
            async move { inventory.release(req).await.map(|_| ()) }
        })
        .await
        .map_err(|e| failed("inventory", e))
    }
}

/// Try `step` up to UNDO_TRIES times, backing off 100ms, 200ms, ... 1s.
async fn undo<F, Fut>(mut step: F) -> Result<(), Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>>,
{
    let mut wait = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        tries += 1;
        match step().await {
            Ok(()) => return Ok(()),
            Err(e) if tries >= UNDO_TRIES => return Err(e),
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// A dependency's failure, named.
fn failed(dependency: &str, e: Status) -> Status {
    common::failed(dependency, e)
}

#[tonic::async_trait]
impl crate::pb::order_server::Order for Order {
    async fn place_order(
        &self,
        req: Request<PlaceOrderRequest>,
    ) -> Result<Response<PlaceOrderResponse>, Status> {
        let deadline = Deadline::of(&req);
        let customer = common::user_of(&req);
        let req = req.into_inner();
        let call = Call::start(
            "Order/PlaceOrder",
            format!(
                "order={} customer={} items=[{}]",
                req.order_id,
                customer.as_deref().unwrap_or("?"),
                common::items_text(&req.items)
            ),
        );
        let customer = match customer {
            Ok(c) => c,
            Err(e) => return call.end(Err(e)),
        };
        if req.items.is_empty() {
            return call.end(Err(Status::invalid_argument(
                "an order needs at least one item",
            )));
        }
        let order_id = if req.order_id.is_empty() {
            let n = self
                .inner
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("ord-{}-{n}", self.inner.id_prefix)
        } else {
            req.order_id.clone()
        };
        match self.inner.begin(&order_id, &customer, &req.items).await {
            Ok(Some(done)) => return call.end(Ok(Response::new(done))),
            Ok(None) => {}
            Err(e) => return call.end(Err(e)),
        }
        let inner = self.inner.clone();
        let saga =
            tokio::spawn(async move { inner.place(deadline, order_id, customer, req.items).await });
        let result = match saga.await {
            Ok(r) => r,
            Err(e) => Err(Status::internal(format!("placing the order: {e}"))),
        };
        call.end(result.map(Response::new))
    }

    async fn get_order(
        &self,
        req: Request<GetOrderRequest>,
    ) -> Result<Response<OrderInfo>, Status> {
        let order_id = req.into_inner().order_id;
        let call = Call::start("Order/GetOrder", format!("order={order_id}"));
        let step = self.step;
        let found = self
            .inner
            .db
            .run(move |db| read(db, &order_id).map(|r| (order_id, r)))
            .await;
        let info = found.and_then(|(order_id, row)| {
            let Some(row) = row else {
                return Err(Status::not_found(format!("no order {order_id:?}")));
            };
            let (status, _) = row.status(step);
            Ok(OrderInfo {
                items: parse_items(&row.items),
                status: status.into(),
                order_id: row.order_id,
                customer: row.customer,
                total_cents: row.total_cents,
                payment_id: row.payment_id,
                failure: row.failure,
            })
        });
        call.end(info.map(Response::new))
    }

    type WatchOrderStream = ReceiverStream<Result<OrderUpdate, Status>>;

    async fn watch_order(
        &self,
        req: Request<WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        let order_id = req.into_inner().order_id;
        let call = Call::start("Order/WatchOrder", format!("order={order_id}"));
        let (db, step) = (self.inner.db.clone(), self.step);
        let id = order_id.clone();
        if db.run(move |db| read(db, &id)).await?.is_none() {
            return call.end(Err(Status::not_found(format!("no order {order_id:?}"))));
        }
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            // The database is the truth every replica shares: look again
            // every 100ms, and say when the status changes.
            let mut last = None;
            loop {
                let id = order_id.clone();
                let row = match db.run(move |db| read(db, &id)).await {
                    Ok(Some(row)) => row,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let (status, detail) = row.status(step);
                if last != Some(status) {
                    last = Some(status);
                    let update = OrderUpdate {
                        order_id: order_id.clone(),
                        status: status.into(),
                        detail,
                    };
                    if tx.send(Ok(update)).await.is_err() {
                        return; // the watcher went away; `call` says so
                    }
                    if matches!(status, OrderStatus::Delivered | OrderStatus::Failed) {
                        call.done();
                        return;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    let db = open(&args.db)?;
    let order = Order::new(&args, db)?;
    let listener = common::listen(&args.addr).await?;
    let (health, serving) = Health::new("shop.Order");
    common::log(format_args!(
        "order listening on {}, orders in {}; calling catalog, inventory and payment via {}",
        args.addr, args.db, args.outbound
    ));
    common::serve("order", OrderServer::new(order), health, serving, listener).await
}
