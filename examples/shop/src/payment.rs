//! `shop payment`: charges a customer for an order and refunds it, into a
//! SQLite ledger every replica shares. Each order is charged at most once:
//! `payments` holds one row per order, `ledger` one line per movement of
//! money (a charge, a refund), and both change in one transaction.

use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tonic::{Request, Response, Status};

use crate::common::{self, db_error, Call, Health};
use crate::pb::payment_server::PaymentServer;
use crate::pb::{ChargeRequest, ChargeResponse, RefundRequest, RefundResponse};

/// The payment service's flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to listen; its sidecar's inbound listener sends every call here.
    #[arg(long, env = "ADDR", default_value = "127.0.0.1:50451")]
    pub addr: String,
    /// The ledger, shared by every replica; made if new.
    #[arg(long, env = "PAYMENT_DB", default_value = "payment.db")]
    pub db: String,
    /// The share of Charge calls that fail with UNAVAILABLE before charging,
    /// as a card network now and then does; the caller's sidecar retries.
    #[arg(long, env = "PAYMENT_FAILURE_RATE", default_value_t = 0.0)]
    pub failure_rate: f64,
    /// How long each Charge waits before it does anything.
    #[arg(long, env = "PAYMENT_LATENCY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency: Duration,
}

/// `payments.state`: `charged`, `refunded`, or `void` for an order refunded
/// before it was ever charged, which keeps a late Charge from charging.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    order_id     TEXT PRIMARY KEY,
    customer     TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('charged', 'refunded', 'void')),
    payment_id   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id     TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('charge', 'refund')),
    amount_cents INTEGER NOT NULL,
    UNIQUE (order_id, kind)
);
";

/// Open the ledger at `path`, making it if it is new.
pub fn open(path: &str) -> anyhow::Result<Connection> {
    let db = common::open_db(path)?;
    db.execute_batch(SCHEMA)?;
    Ok(db)
}

/// The payment service: one connection to the shared ledger.
pub struct Payment {
    db: common::Db,
    failure_rate: f64,
    latency: Duration,
    replica: String,
}

impl Payment {
    pub fn new(db: Connection, failure_rate: f64, latency: Duration, replica: String) -> Payment {
        Payment {
            db: common::Db::new(db),
            failure_rate,
            latency,
            replica,
        }
    }
}

fn charge(db: &mut Connection, req: &ChargeRequest, fail: bool) -> Result<ChargeResponse, Status> {
    if req.order_id.is_empty() || req.customer.is_empty() {
        return Err(Status::invalid_argument(
            "order_id and customer are required",
        ));
    }
    if req.amount_cents <= 0 {
        return Err(Status::invalid_argument(format!(
            "cannot charge {}",
            common::dollars(req.amount_cents)
        )));
    }
    let tx = db
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_error)?;
    let found: Option<(String, String, i64)> = tx
        .query_row(
            "SELECT state, payment_id, amount_cents FROM payments WHERE order_id = ?1",
            [&req.order_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(db_error)?;
    match found {
        // Charge is idempotent: a retried call gets the first payment, and
        // the customer pays once. This is what makes it safe to retry.
        Some((state, payment_id, amount)) if state == "charged" => {
            if amount != req.amount_cents {
                return Err(Status::already_exists(format!(
                    "order {} was charged {}, not {}",
                    req.order_id,
                    common::dollars(amount),
                    common::dollars(req.amount_cents)
                )));
            }
            return Ok(ChargeResponse { payment_id });
        }
        Some((state, ..)) => {
            return Err(Status::failed_precondition(format!(
                "order {} is {state}: not charging it",
                req.order_id
            )))
        }
        None => {}
    }
    if fail {
        // Nothing was charged, so trying again is safe: UNAVAILABLE says
        // exactly that.
        return Err(Status::unavailable("card network busy, try again"));
    }
    let payment_id = format!("pay-{}", req.order_id);
    tx.execute(
        "INSERT INTO payments (order_id, customer, amount_cents, state, payment_id)
         VALUES (?1, ?2, ?3, 'charged', ?4)",
        params![req.order_id, req.customer, req.amount_cents, payment_id],
    )
    .map_err(db_error)?;
    tx.execute(
        "INSERT INTO ledger (order_id, kind, amount_cents) VALUES (?1, 'charge', ?2)",
        params![req.order_id, req.amount_cents],
    )
    .map_err(db_error)?;
    tx.commit().map_err(db_error)?;
    Ok(ChargeResponse { payment_id })
}

/// Give back what `order_id` paid; how much that was.
fn refund(db: &mut Connection, order_id: &str) -> Result<i64, Status> {
    if order_id.is_empty() {
        return Err(Status::invalid_argument("order_id is required"));
    }
    let tx = db
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_error)?;
    let found: Option<(String, i64)> = tx
        .query_row(
            "SELECT state, amount_cents FROM payments WHERE order_id = ?1",
            [order_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db_error)?;
    let refunded = match found {
        Some((state, amount)) if state == "charged" => {
            tx.execute(
                "UPDATE payments SET state = 'refunded' WHERE order_id = ?1",
                [order_id],
            )
            .map_err(db_error)?;
            tx.execute(
                "INSERT INTO ledger (order_id, kind, amount_cents) VALUES (?1, 'refund', ?2)",
                params![order_id, -amount],
            )
            .map_err(db_error)?;
            amount
        }
        // Refunded or void already: refunding twice is fine.
        Some(_) => 0,
        // Never charged: void it, so that a late Charge charges nothing.
        None => {
            tx.execute(
                "INSERT INTO payments (order_id, customer, amount_cents, state, payment_id)
                 VALUES (?1, '', 0, 'void', '')",
                [order_id],
            )
            .map_err(db_error)?;
            0
        }
    };
    tx.commit().map_err(db_error)?;
    Ok(refunded)
}

#[tonic::async_trait]
impl crate::pb::payment_server::Payment for Payment {
    async fn charge(
        &self,
        req: Request<ChargeRequest>,
    ) -> Result<Response<ChargeResponse>, Status> {
        // A Skiff whose route retries numbers the tries of each call.
        let attempt = req
            .metadata()
            .get("x-skiff-attempt-count")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("1")
            .to_string();
        let req = req.into_inner();
        let call = Call::start(
            "Payment/Charge",
            format!(
                "order={} customer={} amount={} try={attempt} replica={}",
                req.order_id,
                req.customer,
                common::dollars(req.amount_cents),
                self.replica
            ),
        );
        if !self.latency.is_zero() {
            // A caller that gives up meanwhile drops this call here, before
            // anything is charged.
            tokio::time::sleep(self.latency).await;
        }
        let fail = self.failure_rate > 0.0 && fastrand::f64() < self.failure_rate;
        let result = self.db.run(move |db| charge(db, &req, fail)).await;
        call.end(result.map(Response::new))
    }

    async fn refund(
        &self,
        req: Request<RefundRequest>,
    ) -> Result<Response<RefundResponse>, Status> {
        let order_id = req.into_inner().order_id;
        let call = Call::start("Payment/Refund", format!("order={order_id}"));
        let result = self.db.run(move |db| refund(db, &order_id)).await;
        call.end(result.map(|refunded_cents| Response::new(RefundResponse { refunded_cents })))
    }
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    let db = open(&args.db)?;
    let listener = common::listen(&args.addr).await?;
    let (health, serving) = Health::new("shop.Payment");
    common::log(format_args!(
        "payment listening on {}, ledger in {} (latency {:?}, failing {} of charges with UNAVAILABLE)",
        args.addr, args.db, args.latency, args.failure_rate
    ));
    let payment = Payment::new(db, args.failure_rate, args.latency, args.addr.clone());
    common::serve(
        "payment",
        PaymentServer::new(payment),
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
        let scratch = common::ScratchDb::new("payment");
        (open(scratch.path()).unwrap(), scratch)
    }

    fn req(order: &str, amount_cents: i64) -> ChargeRequest {
        ChargeRequest {
            order_id: order.into(),
            customer: "ada".into(),
            amount_cents,
        }
    }

    fn ledger_sum(db: &Connection) -> i64 {
        db.query_row(
            "SELECT COALESCE(SUM(amount_cents), 0) FROM ledger",
            [],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn a_retried_charge_charges_once() {
        let (mut db, _scratch) = db();
        let first = charge(&mut db, &req("o1", 500), false).unwrap();
        let again = charge(&mut db, &req("o1", 500), false).unwrap();
        assert_eq!(first.payment_id, again.payment_id);
        assert_eq!(ledger_sum(&db), 500);
        assert_eq!(refund(&mut db, "o1").unwrap(), 500);
        assert_eq!(refund(&mut db, "o1").unwrap(), 0);
        assert_eq!(ledger_sum(&db), 0);
    }

    #[test]
    fn a_charge_after_its_refund_charges_nothing() {
        let (mut db, _scratch) = db();
        assert_eq!(refund(&mut db, "o1").unwrap(), 0);
        let err = charge(&mut db, &req("o1", 500), false).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert_eq!(ledger_sum(&db), 0);
    }
}
