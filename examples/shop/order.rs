//! The shop's front door: places orders, using the catalog (prices), the
//! inventory (stock) and payment, and tells a watcher how the order goes.
//!
//! Its calls to the other three go through its own Skiff's outbound
//! listener, naming the service in `:authority`; Skiff picks the route by
//! that name and adds the timeouts and retries of config/shop/order.yaml.
//! This code has no retry loop and no timeout of its own.
//!
//! Run with `cargo run --example shop_order`, or the whole shop with
//! `scripts/shop.sh` (docs/shop.md). Settings:
//!
//! - `ADDR`: where to listen (default `127.0.0.1:50151`).
//! - `OUTBOUND_ADDR`: its Skiff's outbound listener (default
//!   `127.0.0.1:15101`); `none` to call the services directly at the
//!   addresses below.
//! - `CATALOG_ADDR`, `INVENTORY_ADDR`, `PAYMENT_ADDR`: the services, by the
//!   names Skiff routes (defaults `catalog`, `inventory`, `payment`).
//! - `ORDER_STEP`: how long packing, shipping and delivery each take
//!   (default `500ms`).

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use common::pb::catalog_client::CatalogClient;
use common::pb::inventory_client::InventoryClient;
use common::pb::order_server::OrderServer;
use common::pb::payment_client::PaymentClient;
use common::pb::{
    ChargeRequest, GetProductRequest, OrderStatus, OrderUpdate, PlaceOrderRequest,
    PlaceOrderResponse, ReleaseRequest, ReserveRequest, WatchOrderRequest,
};
use common::{failed, Call};

/// The order service: its three dependencies and the orders placed so far.
pub struct Order {
    catalog: CatalogClient<Channel>,
    inventory: InventoryClient<Channel>,
    payment: PaymentClient<Channel>,
    /// The latest update of each order, by order id.
    orders: Mutex<HashMap<String, watch::Receiver<OrderUpdate>>>,
    /// Order ids are `ord-<this process>-<n>`: unique across restarts, as
    /// payment remembers them.
    id_prefix: String,
    next_id: AtomicU64,
    step: Duration,
}

impl Order {
    /// `catalog`, `inventory` and `payment` are channels to those services;
    /// an order moves on one status every `step`.
    pub fn new(catalog: Channel, inventory: Channel, payment: Channel, step: Duration) -> Order {
        Order {
            catalog: CatalogClient::new(catalog),
            inventory: InventoryClient::new(inventory),
            payment: PaymentClient::new(payment),
            orders: Mutex::new(HashMap::new()),
            id_prefix: std::iter::repeat_with(fastrand::lowercase)
                .take(4)
                .collect(),
            next_id: AtomicU64::new(1),
            step,
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
                OrderServer::new(self),
                common::incoming(listener),
                shutdown,
            )
            .await
    }

    async fn place(&self, req: PlaceOrderRequest) -> Result<PlaceOrderResponse, Status> {
        if req.customer.is_empty() {
            return Err(Status::invalid_argument("customer is required"));
        }
        if req.items.is_empty() {
            return Err(Status::invalid_argument("an order needs at least one item"));
        }
        let order_id = format!(
            "ord-{}-{}",
            self.id_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );

        // 1. Price the items.
        let mut total_cents = 0;
        for item in &req.items {
            let product = self
                .catalog
                .clone()
                .get_product(GetProductRequest {
                    sku: item.sku.clone(),
                })
                .await
                .map_err(|e| failed("catalog", e))?
                .into_inner();
            total_cents += product.price_cents * i64::from(item.quantity);
        }

        // 2. Take them out of stock.
        let reserved = self
            .inventory
            .clone()
            .reserve(ReserveRequest {
                order_id: order_id.clone(),
                items: req.items.clone(),
            })
            .await;
        if let Err(e) = reserved {
            // A timeout leaves it open whether the items were reserved.
            self.release(&order_id).await;
            return Err(failed("inventory", e));
        }

        // 3. Charge the customer; on failure put the items back.
        let charged = self
            .payment
            .clone()
            .charge(ChargeRequest {
                order_id: order_id.clone(),
                customer: req.customer.clone(),
                amount_cents: total_cents,
            })
            .await;
        let payment = match charged {
            Ok(r) => r.into_inner(),
            Err(e) => {
                self.release(&order_id).await;
                return Err(failed("payment", e));
            }
        };

        // 4. Paid: from here on the order moves by itself.
        self.track(
            &order_id,
            format!(
                "paid {} ({})",
                common::dollars(total_cents),
                payment.payment_id
            ),
        );
        Ok(PlaceOrderResponse {
            order_id,
            total_cents,
            payment_id: payment.payment_id,
            status: OrderStatus::Paid.into(),
        })
    }

    /// Put an order's items back. Release is idempotent, so this is safe
    /// whether or not anything was reserved; a failure is logged, not
    /// returned, as the caller is already failing with a better reason.
    async fn release(&self, order_id: &str) {
        let released = self
            .inventory
            .clone()
            .release(ReleaseRequest {
                order_id: order_id.to_string(),
            })
            .await;
        if let Err(e) = released {
            common::log(format_args!(
                "releasing {order_id}: {}: {}",
                common::code_name(e.code()),
                e.message()
            ));
        }
    }

    /// Remember a paid order and move it on, one status per `step`.
    fn track(&self, order_id: &str, detail: String) {
        let update = |status: OrderStatus, detail: &str| OrderUpdate {
            order_id: order_id.to_string(),
            status: status.into(),
            detail: detail.to_string(),
        };
        let (tx, rx) = watch::channel(update(OrderStatus::Paid, &detail));
        if let Ok(mut orders) = self.orders.lock() {
            orders.insert(order_id.to_string(), rx);
        }
        let steps = [
            update(OrderStatus::Packed, "packed"),
            update(OrderStatus::Shipped, "handed to the carrier"),
            update(OrderStatus::Delivered, "delivered"),
        ];
        let step = self.step;
        tokio::spawn(async move {
            for next in steps {
                tokio::time::sleep(step).await;
                tx.send_replace(next);
            }
        });
    }
}

#[tonic::async_trait]
impl common::pb::order_server::Order for Order {
    async fn place_order(
        &self,
        req: Request<PlaceOrderRequest>,
    ) -> Result<Response<PlaceOrderResponse>, Status> {
        let req = req.into_inner();
        let call = Call::start(
            "Order/PlaceOrder",
            format!(
                "customer={} items=[{}]",
                req.customer,
                common::items_text(&req.items)
            ),
        );
        call.end(self.place(req).await.map(Response::new))
    }

    type WatchOrderStream = ReceiverStream<Result<OrderUpdate, Status>>;

    async fn watch_order(
        &self,
        req: Request<WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        let req = req.into_inner();
        let call = Call::start("Order/WatchOrder", format!("order={}", req.order_id));
        let found = match self.orders.lock() {
            Ok(orders) => orders.get(&req.order_id).cloned(),
            Err(_) => return call.end(Err(Status::internal("order state poisoned"))),
        };
        let Some(mut updates) = found else {
            return call.end(Err(Status::not_found(format!(
                "no order {:?}",
                req.order_id
            ))));
        };
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let update = updates.borrow_and_update().clone();
                let delivered = update.status() == OrderStatus::Delivered;
                if tx.send(Ok(update)).await.is_err() {
                    return; // the watcher went away; `call` says so
                }
                if delivered {
                    call.done();
                    return;
                }
                tokio::select! {
                    changed = updates.changed() => {
                        if changed.is_err() {
                            return; // the order stopped moving: not expected
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = common::env_or("ADDR", "127.0.0.1:50151");
    let outbound = common::env_or("OUTBOUND_ADDR", "127.0.0.1:15101");
    let via = (outbound != "none").then_some(outbound.as_str());
    let catalog = common::env_or("CATALOG_ADDR", "catalog");
    let inventory = common::env_or("INVENTORY_ADDR", "inventory");
    let payment = common::env_or("PAYMENT_ADDR", "payment");
    let step = common::env_duration("ORDER_STEP", Duration::from_millis(500))?;

    let order = Order::new(
        common::dial(&catalog, via)?,
        common::dial(&inventory, via)?,
        common::dial(&payment, via)?,
        step,
    );
    let listener = common::listen(&addr).await?;
    common::log(format_args!(
        "order listening on {addr}; calling {catalog}, {inventory} and {payment} via {}",
        via.unwrap_or("no sidecar")
    ));
    order.serve(listener, common::stop_signal()).await?;
    common::log("order stopped");
    Ok(())
}
