//! The shop's inventory: how many of each product are left, and which
//! order holds which items.
//!
//! Run with `cargo run --example shop_inventory`, or the whole shop with
//! `scripts/shop.sh` (docs/shop.md). Settings:
//!
//! - `ADDR`: where to listen (default `127.0.0.1:50351`).
//! - `INVENTORY_SLOW_RATE`: the share of `Reserve` calls that are slow
//!   (default `0.1`), so that the order sidecar's per-try timeout and retry
//!   have something to do.
//! - `INVENTORY_SLOW_DELAY`: how slow (default `2s`).

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use common::pb::inventory_server::InventoryServer;
use common::pb::{Item, ReleaseRequest, ReleaseResponse, Reservation, ReserveRequest};
use common::Call;

/// The inventory service: stock in memory.
pub struct Inventory {
    state: Mutex<State>,
    slow_rate: f64,
    slow_delay: Duration,
}

#[derive(Default)]
struct State {
    /// Units left, by SKU.
    stock: HashMap<String, u32>,
    /// The items each order holds, by order id.
    reserved: HashMap<String, Vec<Item>>,
}

impl Inventory {
    /// `slow_rate` of the `Reserve` calls wait `slow_delay` first.
    pub fn new(slow_rate: f64, slow_delay: Duration) -> Inventory {
        let stock = [("book", 1000), ("mug", 1000), ("rope", 1000), ("lamp", 3)];
        Inventory {
            state: Mutex::new(State {
                stock: stock.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
                reserved: HashMap::new(),
            }),
            slow_rate,
            slow_delay,
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
                InventoryServer::new(self),
                common::incoming(listener),
                shutdown,
            )
            .await
    }

    fn reserve_now(&self, req: &ReserveRequest) -> Result<Reservation, Status> {
        if req.order_id.is_empty() {
            return Err(Status::invalid_argument("order_id is required"));
        }
        let mut state = self
            .state
            .lock()
            .map_err(|_| Status::internal("inventory state poisoned"))?;
        let left = |state: &State| {
            req.items
                .iter()
                .map(|i| Item {
                    sku: i.sku.clone(),
                    quantity: state.stock.get(&i.sku).copied().unwrap_or(0),
                })
                .collect()
        };
        // Reserve is idempotent: a retried call finds its first reservation.
        if state.reserved.contains_key(&req.order_id) {
            return Ok(Reservation {
                order_id: req.order_id.clone(),
                left: left(&state),
            });
        }
        // Check everything first: all or nothing.
        let mut wanted: HashMap<&str, u32> = HashMap::new();
        for item in &req.items {
            if item.quantity == 0 {
                return Err(Status::invalid_argument(format!(
                    "quantity of {} must be at least 1",
                    item.sku
                )));
            }
            *wanted.entry(&item.sku).or_default() += item.quantity;
        }
        for (sku, quantity) in &wanted {
            let Some(&have) = state.stock.get(*sku) else {
                return Err(Status::not_found(format!("no stock of {sku:?}")));
            };
            if have < *quantity {
                return Err(Status::failed_precondition(format!(
                    "only {have} {sku} left, {quantity} wanted"
                )));
            }
        }
        for (sku, quantity) in &wanted {
            if let Some(have) = state.stock.get_mut(*sku) {
                *have -= quantity;
            }
        }
        state
            .reserved
            .insert(req.order_id.clone(), req.items.clone());
        Ok(Reservation {
            order_id: req.order_id.clone(),
            left: left(&state),
        })
    }

    fn release_now(&self, order_id: &str) -> Result<usize, Status> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| Status::internal("inventory state poisoned"))?;
        let Some(items) = state.reserved.remove(order_id) else {
            return Ok(0); // nothing held: releasing twice is fine
        };
        for item in &items {
            *state.stock.entry(item.sku.clone()).or_default() += item.quantity;
        }
        Ok(items.len())
    }
}

#[tonic::async_trait]
impl common::pb::inventory_server::Inventory for Inventory {
    async fn reserve(&self, req: Request<ReserveRequest>) -> Result<Response<Reservation>, Status> {
        let req = req.into_inner();
        let slow = fastrand::f64() < self.slow_rate;
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
        call.end(self.reserve_now(&req).map(Response::new))
    }

    async fn release(
        &self,
        req: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let req = req.into_inner();
        let call = Call::start("Inventory/Release", format!("order={}", req.order_id));
        call.end(
            self.release_now(&req.order_id)
                .map(|_| Response::new(ReleaseResponse {})),
        )
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = common::env_or("ADDR", "127.0.0.1:50351");
    let slow_rate = common::env_parse("INVENTORY_SLOW_RATE", 0.1)?;
    let slow_delay = common::env_duration("INVENTORY_SLOW_DELAY", Duration::from_secs(2))?;
    let listener = common::listen(&addr).await?;
    common::log(format_args!(
        "inventory listening on {addr} (slow: {slow_rate} of Reserve calls wait {slow_delay:?})"
    ));
    Inventory::new(slow_rate, slow_delay)
        .serve(listener, common::stop_signal())
        .await?;
    common::log("inventory stopped");
    Ok(())
}
