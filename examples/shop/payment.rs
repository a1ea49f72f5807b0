//! The shop's payments: charges a customer for an order.
//!
//! Run with `cargo run --example shop_payment`, or the whole shop with
//! `scripts/shop.sh` (docs/shop.md). Settings:
//!
//! - `ADDR`: where to listen (default `127.0.0.1:50451`).
//! - `PAYMENT_FAILURE_RATE`: the share of `Charge` calls that fail with
//!   UNAVAILABLE (default `0.2`), as a card network now and then does; the
//!   order sidecar retries them.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use common::pb::payment_server::PaymentServer;
use common::pb::{ChargeRequest, ChargeResponse};
use common::Call;

/// The payment service: remembers each order's payment.
pub struct Payment {
    failure_rate: f64,
    /// Payment id by order id.
    payments: Mutex<HashMap<String, String>>,
}

impl Payment {
    /// `failure_rate` of the `Charge` calls fail with UNAVAILABLE.
    pub fn new(failure_rate: f64) -> Payment {
        Payment {
            failure_rate,
            payments: Mutex::new(HashMap::new()),
        }
    }

    /// Serve on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .serve_with_incoming_shutdown(
                PaymentServer::new(self),
                common::incoming(listener),
                shutdown,
            )
            .await
    }

    fn charge_now(&self, req: &ChargeRequest) -> Result<ChargeResponse, Status> {
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
        let mut payments = self
            .payments
            .lock()
            .map_err(|_| Status::internal("payment state poisoned"))?;
        // Charge is idempotent: a retried call gets the first payment, and
        // the customer pays once. This is what makes it safe to retry.
        if let Some(id) = payments.get(&req.order_id) {
            return Ok(ChargeResponse {
                payment_id: id.clone(),
            });
        }
        if fastrand::f64() < self.failure_rate {
            // Nothing was charged, so trying again is safe: UNAVAILABLE
            // says exactly that.
            return Err(Status::unavailable("card network busy, try again"));
        }
        let id = format!("pay-{}", req.order_id.trim_start_matches("ord-"));
        payments.insert(req.order_id.clone(), id.clone());
        Ok(ChargeResponse { payment_id: id })
    }
}

#[tonic::async_trait]
impl common::pb::payment_server::Payment for Payment {
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
                "order={} customer={} amount={} try={attempt}",
                req.order_id,
                req.customer,
                common::dollars(req.amount_cents)
            ),
        );
        call.end(self.charge_now(&req).map(Response::new))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = common::env_or("ADDR", "127.0.0.1:50451");
    let failure_rate = common::env_parse("PAYMENT_FAILURE_RATE", 0.2)?;
    let listener = common::listen(&addr).await?;
    common::log(format_args!(
        "payment listening on {addr} (failing {failure_rate} of charges with UNAVAILABLE)"
    ));
    Payment::new(failure_rate)
        .serve(listener, common::stop_signal())
        .await?;
    common::log("payment stopped");
    Ok(())
}
