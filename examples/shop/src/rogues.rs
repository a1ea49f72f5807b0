//! The clients that should be turned away (`--chaos`), each a task beside
//! the shoppers, bounded in calls and in time:
//!
//! - **the flooder**, a logged-in user who asks for the same order as fast
//!   as it can: the gateway's `rate_limit` (per `sub`) answers most calls
//!   with 429 / RESOURCE_EXHAUSTED;
//! - **the anonymous client**, who places orders with no token, a forged
//!   one (right `kid`, another key) or an expired one: 401 /
//!   UNAUTHENTICATED, and no order is ever made;
//! - **the intruder**, a workload of the mesh (it holds catalog's SVID)
//!   calling payment's sidecar directly over mTLS: the handshake succeeds,
//!   and payment's `authorization:` (order only) answers 403 /
//!   PERMISSION_DENIED. Had one got through, the consistency check would
//!   find a charge no order knows of.
//!
//! What each was told is tallied by status, for the summary.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::common;
use crate::driver::{Edge, Shopper};
use crate::pb::order_client::OrderClient;
use crate::pb::payment_client::PaymentClient;
use crate::pb::{ChargeRequest, GetOrderRequest, Item, PlaceOrderRequest};

/// How long any of them may go on.
const LIMIT: Duration = Duration::from_secs(15);

/// What one rogue client was told, by status.
#[derive(Default)]
pub struct Tally {
    pub by_code: Mutex<BTreeMap<&'static str, u64>>,
}

impl Tally {
    fn note<T>(&self, r: &Result<T, tonic::Status>) {
        let code = match r {
            Ok(_) => Code::Ok,
            Err(e) => e.code(),
        };
        if let Ok(mut m) = self.by_code.lock() {
            *m.entry(common::code_name(code)).or_default() += 1;
        }
    }

    /// `3 OK, 97 RESOURCE_EXHAUSTED`, or `-`.
    pub fn text(&self) -> String {
        let m = self.by_code.lock().map(|m| m.clone()).unwrap_or_default();
        if m.is_empty() {
            return "-".into();
        }
        m.iter()
            .map(|(code, n)| format!("{n} {code}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The three clients' tallies.
#[derive(Default)]
pub struct Rogues {
    pub flooder: Tally,
    pub anonymous: Tally,
    pub intruder: Tally,
}

/// Run `calls` calls of `one`, `concurrency` at a time, until done or
/// [`LIMIT`].
async fn bounded<F, Fut>(calls: u64, concurrency: u64, one: F)
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + LIMIT;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, one) = (next.clone(), one.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls || Instant::now() > until {
                    break;
                }
                let _ = tokio::time::timeout_at(until.into(), one(i)).await;
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
}

/// The flooder: `calls` GetOrder of `order_id` as `user`, 8 at a time.
pub async fn flood(edge: Edge, user: Shopper, order_id: String, calls: u64, rogues: Arc<Rogues>) {
    let Ok(channel) = edge.dial("order") else {
        return;
    };
    let orders = OrderClient::new(channel);
    bounded(calls, 8, move |_| {
        let (mut orders, user, order_id, rogues) = (
            orders.clone(),
            user.clone(),
            order_id.clone(),
            rogues.clone(),
        );
        async move {
            let mut req = Request::new(GetOrderRequest { order_id });
            req.set_timeout(Duration::from_secs(2));
            let r = orders.get_order(user.on(req)).await;
            rogues.flooder.note(&r);
        }
    })
    .await;
}

/// The anonymous client: `calls` PlaceOrder, paced 20 a second, in turn
/// with no token, with `forged` and with `expired`.
pub async fn anonymous(
    edge: Edge,
    forged: Arc<str>,
    expired: Arc<str>,
    calls: u64,
    rogues: Arc<Rogues>,
) {
    let Ok(channel) = edge.dial("order") else {
        return;
    };
    let orders = OrderClient::new(channel);
    bounded(calls, 1, move |i| {
        let (mut orders, rogues) = (orders.clone(), rogues.clone());
        let token = match i % 3 {
            0 => None,
            1 => Some(forged.clone()),
            _ => Some(expired.clone()),
        };
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let who = Shopper { token };
            let mut req = Request::new(PlaceOrderRequest {
                order_id: format!("anonymous-{i:04}"),
                items: vec![Item {
                    sku: "book".into(),
                    quantity: 1,
                }],
            });
            req.set_timeout(Duration::from_secs(2));
            let r = orders.place_order(who.on(req)).await;
            rogues.anonymous.note(&r);
        }
    })
    .await;
}

/// The intruder: `calls` Charge straight at payment's sidecar `addr`
/// (its inbound listener), over mTLS with `svid` (chain, key), paced 20 a
/// second.
pub async fn intrude(
    addr: std::net::SocketAddr,
    ca_pem: String,
    svid: (String, String),
    calls: u64,
    rogues: Arc<Rogues>,
) {
    let server_name = format!("payment.{}", crate::mint::TRUST_DOMAIN);
    let channel: Channel = match common::dial_tls(
        "payment",
        &addr.to_string(),
        &ca_pem,
        &server_name,
        Some((&svid.0, &svid.1)),
    ) {
        Ok(c) => c,
        Err(e) => {
            common::log(format_args!("intruder: {e:#}"));
            return;
        }
    };
    let payments = PaymentClient::new(channel);
    bounded(calls, 1, move |i| {
        let (mut payments, rogues) = (payments.clone(), rogues.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut req = Request::new(ChargeRequest {
                order_id: format!("intruder-{i:04}"),
                customer: "intruder".into(),
                amount_cents: 100,
            });
            req.set_timeout(Duration::from_secs(2));
            let r = payments.charge(req).await;
            if let Err(e) = &r {
                if e.code() != Code::PermissionDenied {
                    common::log(format_args!("intruder: {}", common::status_text(e)));
                }
            }
            rogues.intruder.note(&r);
        }
    })
    .await;
}
