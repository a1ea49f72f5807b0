//! `shop inventory`: how many of each product are left, and which order
//! holds which items, in a SQLite database every replica shares (WAL, so
//! one replica writes while the others read; a busy timeout, so they take
//! turns). Each Reserve and Release is one transaction.

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tonic::{Request, Response, Status};

use crate::common::{self, db_error, Call, Health};
use crate::pb::inventory_server::InventoryServer;
use crate::pb::{Item, ReleaseRequest, ReleaseResponse, Reservation, ReserveRequest};

/// The inventory's flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to listen; its sidecar's inbound listener sends every call here.
    #[arg(long, env = "ADDR", default_value = "127.0.0.1:50351")]
    pub addr: String,
    /// The stock database, shared by every replica; made and stocked if new.
    #[arg(long, env = "INVENTORY_DB", default_value = "inventory.db")]
    pub db: String,
    /// The share of Reserve calls that are slow, so the caller's per-try
    /// timeout and retry have something to do.
    #[arg(long, env = "INVENTORY_SLOW_RATE", default_value_t = 0.0)]
    pub slow_rate: f64,
    /// How slow a slow Reserve is.
    #[arg(long, env = "INVENTORY_SLOW_DELAY", default_value = "2s", value_parser = humantime::parse_duration)]
    pub slow_delay: Duration,
}

/// The stock a new database starts with, by SKU: plenty of everything but
/// lamps, so some orders fail with a reason.
pub const STARTING_STOCK: &[(&str, i64)] =
    &[("book", 1000), ("mug", 1000), ("rope", 1000), ("lamp", 3)];

/// The tables. `orders.state` is `reserved` or `released`; a released
/// order keeps its row, so that a Reserve arriving after its Release (a
/// retry that was slow) takes nothing.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stock (
    sku      TEXT PRIMARY KEY,
    starting INTEGER NOT NULL,
    left     INTEGER NOT NULL CHECK (left >= 0)
);
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY,
    state    TEXT NOT NULL CHECK (state IN ('reserved', 'released'))
);
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    sku      TEXT NOT NULL REFERENCES stock (sku),
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, sku)
);
";

/// Open the database at `path`, making and stocking it if it is new.
pub fn open(path: &str) -> anyhow::Result<Connection> {
    let mut db = common::open_db(path)?;
    let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA)?;
    for (sku, n) in STARTING_STOCK {
        tx.execute(
            "INSERT OR IGNORE INTO stock (sku, starting, left) VALUES (?1, ?2, ?2)",
            params![sku, n],
        )?;
    }
    tx.commit()?;
    Ok(db)
}

/// The inventory service: one connection to the shared database.
pub struct Inventory {
    db: common::Db,
    slow_rate: f64,
    slow_delay: Duration,
}

impl Inventory {
    pub fn new(db: Connection, slow_rate: f64, slow_delay: Duration) -> Inventory {
        Inventory {
            db: common::Db::new(db),
            slow_rate,
            slow_delay,
        }
    }
}

/// Stock left of `skus`.
fn left_of(tx: &rusqlite::Transaction, skus: &[String]) -> Result<Vec<Item>, rusqlite::Error> {
    skus.iter()
        .map(|sku| {
            let left: Option<i64> = tx
                .query_row("SELECT left FROM stock WHERE sku = ?1", [sku], |r| r.get(0))
                .optional()?;
            Ok(Item {
                sku: sku.clone(),
                quantity: u32::try_from(left.unwrap_or(0)).unwrap_or(0),
            })
        })
        .collect()
}

fn reserve(db: &mut Connection, req: &ReserveRequest) -> Result<Reservation, Status> {
    if req.order_id.is_empty() {
        return Err(Status::invalid_argument("order_id is required"));
    }
    let mut wanted: BTreeMap<String, i64> = BTreeMap::new();
    for item in &req.items {
        if item.quantity == 0 {
            return Err(Status::invalid_argument(format!(
                "quantity of {} must be at least 1",
                item.sku
            )));
        }
        *wanted.entry(item.sku.clone()).or_default() += i64::from(item.quantity);
    }
    let skus: Vec<String> = wanted.keys().cloned().collect();
    let tx = db
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_error)?;
    let state: Option<String> = tx
        .query_row(
            "SELECT state FROM orders WHERE order_id = ?1",
            [&req.order_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_error)?;
    match state.as_deref() {
        // Reserve is idempotent: a retried call finds its first reservation.
        Some("reserved") => {
            let left = left_of(&tx, &skus).map_err(db_error)?;
            return Ok(Reservation {
                order_id: req.order_id.clone(),
                left,
            });
        }
        Some(_) => {
            return Err(Status::failed_precondition(format!(
                "order {} was released",
                req.order_id
            )))
        }
        None => {}
    }
    // Check everything first: all or nothing.
    for (sku, quantity) in &wanted {
        let have: Option<i64> = tx
            .query_row("SELECT left FROM stock WHERE sku = ?1", [sku], |r| r.get(0))
            .optional()
            .map_err(db_error)?;
        let Some(have) = have else {
            return Err(Status::not_found(format!("no stock of {sku:?}")));
        };
        if have < *quantity {
            return Err(Status::failed_precondition(format!(
                "out of stock: only {have} {sku} left, {quantity} wanted"
            )));
        }
    }
    tx.execute(
        "INSERT INTO orders (order_id, state) VALUES (?1, 'reserved')",
        [&req.order_id],
    )
    .map_err(db_error)?;
    for (sku, quantity) in &wanted {
        tx.execute(
            "UPDATE stock SET left = left - ?2 WHERE sku = ?1",
            params![sku, quantity],
        )
        .map_err(db_error)?;
        tx.execute(
            "INSERT INTO reservations (order_id, sku, quantity) VALUES (?1, ?2, ?3)",
            params![req.order_id, sku, quantity],
        )
        .map_err(db_error)?;
    }
    let left = left_of(&tx, &skus).map_err(db_error)?;
    tx.commit().map_err(db_error)?;
    Ok(Reservation {
        order_id: req.order_id.clone(),
        left,
    })
}

/// Put back what `order_id` holds; `true` when it held something.
fn release(db: &mut Connection, order_id: &str) -> Result<bool, Status> {
    if order_id.is_empty() {
        return Err(Status::invalid_argument("order_id is required"));
    }
    let tx = db
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_error)?;
    let state: Option<String> = tx
        .query_row(
            "SELECT state FROM orders WHERE order_id = ?1",
            [order_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_error)?;
    let released = match state.as_deref() {
        Some("reserved") => {
            tx.execute(
                "UPDATE stock SET left = left + (SELECT quantity FROM reservations r
                     WHERE r.order_id = ?1 AND r.sku = stock.sku)
                 WHERE sku IN (SELECT sku FROM reservations WHERE order_id = ?1)",
                [order_id],
            )
            .map_err(db_error)?;
            tx.execute(
                "UPDATE orders SET state = 'released' WHERE order_id = ?1",
                [order_id],
            )
            .map_err(db_error)?;
            true
        }
        // Released already: releasing twice is fine.
        Some(_) => false,
        // Never reserved (or not yet): remember it as released, so a late
        // Reserve takes nothing.
        None => {
            tx.execute(
                "INSERT INTO orders (order_id, state) VALUES (?1, 'released')",
                [order_id],
            )
            .map_err(db_error)?;
            false
        }
    };
    tx.commit().map_err(db_error)?;
    Ok(released)
}

#[tonic::async_trait]
impl crate::pb::inventory_server::Inventory for Inventory {
    async fn reserve(&self, req: Request<ReserveRequest>) -> Result<Response<Reservation>, Status> {
        let req = req.into_inner();
        let slow = self.slow_rate > 0.0 && fastrand::f64() < self.slow_rate;
        let call = Call::start(
            "Inventory/Reserve",
            format!(
                "order={} items=[{}]{}",
                req.order_id,
                common::items_text(&req.items),
                if slow { " slow" } else { "" }
            ),
        );
        if slow {
            // If the caller gives up first, this call is dropped here and
            // nothing is reserved.
            tokio::time::sleep(self.slow_delay).await;
        }
        let result = self.db.run(move |db| reserve(db, &req)).await;
        call.end(result.map(Response::new))
    }

    async fn release(
        &self,
        req: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let order_id = req.into_inner().order_id;
        let call = Call::start("Inventory/Release", format!("order={order_id}"));
        let result = self.db.run(move |db| release(db, &order_id)).await;
        call.end(result.map(|released| Response::new(ReleaseResponse { released })))
    }
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    let db = open(&args.db)?;
    let listener = common::listen(&args.addr).await?;
    let (health, serving) = Health::new("shop.Inventory");
    common::log(format_args!(
        "inventory listening on {}, stock in {} (slow: {} of Reserve calls wait {:?})",
        args.addr, args.db, args.slow_rate, args.slow_delay
    ));
    let inventory = Inventory::new(db, args.slow_rate, args.slow_delay);
    common::serve(
        "inventory",
        InventoryServer::new(inventory),
        health,
        serving,
        listener,
    )
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn db() -> (Connection, common::ScratchDb) {
        let scratch = common::ScratchDb::new("inventory");
        (open(scratch.path()).unwrap(), scratch)
    }

    fn req(order: &str, sku: &str, quantity: u32) -> ReserveRequest {
        ReserveRequest {
            order_id: order.into(),
            items: vec![Item {
                sku: sku.into(),
                quantity,
            }],
        }
    }

    fn left(db: &Connection, sku: &str) -> i64 {
        db.query_row("SELECT left FROM stock WHERE sku = ?1", [sku], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_retried_reserve_reserves_once() {
        let (mut db, _scratch) = db();
        reserve(&mut db, &req("o1", "lamp", 2)).unwrap();
        reserve(&mut db, &req("o1", "lamp", 2)).unwrap();
        assert_eq!(left(&db, "lamp"), 1);
        let err = reserve(&mut db, &req("o2", "lamp", 2)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(release(&mut db, "o1").unwrap());
        assert!(!release(&mut db, "o1").unwrap());
        assert_eq!(left(&db, "lamp"), 3);
    }

    #[test]
    fn a_reserve_after_its_release_takes_nothing() {
        let (mut db, _scratch) = db();
        assert!(!release(&mut db, "o1").unwrap());
        let err = reserve(&mut db, &req("o1", "book", 1)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert_eq!(left(&db, "book"), 1000);
    }
}
