//! A replica of a service: a small HTTP/1.1 + h2c server that answers `ok`
//! and says who answered (`x-replica: ip:port`), counting its requests and
//! connections. [`replicas`] starts several on 127.0.0.2, 127.0.0.3, …
//! sharing one port, as the pods behind a headless service;
//! [`on_one_port`] does the same for any server (the flaky backend too).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::body::{self, TestBody};
use super::AbortOnDrop;

/// One replica on `ip:port`. A request waits `?delay_ms=N` when it asks,
/// else the delay set with [`Replica::set_delay`], before the answer.
pub struct Replica {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    connections: Arc<AtomicI64>,
    accepted: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
    _task: AbortOnDrop,
}

impl Replica {
    /// A replica on `addr` (port 0: any free port).
    pub async fn start(addr: SocketAddr) -> anyhow::Result<Replica> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicI64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (s, c, a, d) = (
            served.clone(),
            connections.clone(),
            accepted.clone(),
            delay_ms.clone(),
        );
        let task = AbortOnDrop::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                a.fetch_add(1, Ordering::SeqCst);
                let (s, c, d) = (s.clone(), c.clone(), d.clone());
                c.fetch_add(1, Ordering::SeqCst);
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        answer(req, addr, s.clone(), d.load(Ordering::SeqCst))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                    c.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Replica {
            addr,
            served,
            connections,
            accepted,
            delay_ms,
            _task: task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }

    pub fn v4(&self) -> Ipv4Addr {
        match self.addr.ip() {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        }
    }

    /// The `x-replica` value of its answers.
    pub fn id(&self) -> String {
        self.addr.to_string()
    }

    /// Hold every request this long before answering.
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests that reached this replica.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections open to this replica.
    pub fn connections(&self) -> i64 {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn answer(
    req: Request<Incoming>,
    me: SocketAddr,
    served: Arc<AtomicU64>,
    delay_ms: u64,
) -> Result<Response<TestBody>, Infallible> {
    served.fetch_add(1, Ordering::SeqCst);
    let asked = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("delay_ms="))
        .and_then(|v| v.parse::<u64>().ok());
    let delay_ms = asked.unwrap_or(delay_ms);
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let mut resp = Response::new(body::full("ok"));
    if let Ok(v) = HeaderValue::from_str(&me.to_string()) {
        resp.headers_mut().insert("x-replica", v);
    }
    Ok(resp)
}

/// `n` replicas on 127.0.0.2, 127.0.0.3, … all on the same port.
pub async fn replicas(n: u8) -> anyhow::Result<Vec<Replica>> {
    on_one_port(n, Replica::start, Replica::addr).await
}

/// `n` servers, each started by `start` at an address, on 127.0.0.2,
/// 127.0.0.3, … all on the port the first one got; `addr` reads back where
/// one listens. When the port is taken on another address, all of them go
/// and it starts over (10 tries).
pub async fn on_one_port<T, F, Fut>(
    n: u8,
    start: F,
    addr: impl Fn(&T) -> SocketAddr,
) -> anyhow::Result<Vec<T>>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut last = anyhow!("no attempt");
    for _ in 0..10 {
        let first = start(SocketAddr::from(([127, 0, 0, 2], 0))).await?;
        let port = addr(&first).port();
        let mut all = vec![first];
        for i in 1..n {
            match start(SocketAddr::from(([127, 0, 0, 2 + i], port))).await {
                Ok(r) => all.push(r),
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
        if all.len() == usize::from(n) {
            return Ok(all);
        }
    }
    Err(last.context("no port free on every replica address"))
}
