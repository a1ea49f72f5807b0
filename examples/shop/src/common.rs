//! What the shop's services share: serving with gRPC health and a graceful
//! stop, dialling a dependency through the sidecar, the caller's deadline
//! carried on to every downstream call, and the one log line per call.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::pb;
use crate::pb::health::health_check_response::ServingStatus;
use crate::pb::health::health_server::HealthServer;
use crate::pb::health::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
};

/// Listen on `addr` (an `ip:port`).
pub async fn listen(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}

/// The connections a tonic server takes from `listener`.
pub fn incoming(listener: TcpListener) -> TcpListenerStream {
    TcpListenerStream::new(listener)
}

/// Resolves on Ctrl-C or SIGTERM: the server then stops taking calls and
/// finishes the ones in flight.
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let ctrl_c = tokio::signal::ctrl_c();
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// The standard `grpc.health.v1.Health` of one service: SERVING while it
/// takes calls, NOT_SERVING once it is stopping.
#[derive(Clone)]
pub struct Health {
    /// The service's full name, such as `shop.Catalog`.
    service: &'static str,
    status: watch::Receiver<ServingStatus>,
}

impl Health {
    /// The health of `service`, and the sender that changes it.
    pub fn new(service: &'static str) -> (Health, watch::Sender<ServingStatus>) {
        let (tx, rx) = watch::channel(ServingStatus::Serving);
        (
            Health {
                service,
                status: rx,
            },
            tx,
        )
    }

    fn of(&self, service: &str) -> Option<ServingStatus> {
        // "" is the server as a whole.
        (service.is_empty() || service == self.service).then(|| *self.status.borrow())
    }
}

#[tonic::async_trait]
impl pb::health::health_server::Health for Health {
    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = req.into_inner().service;
        match self.of(&service) {
            Some(s) => Ok(Response::new(HealthCheckResponse { status: s.into() })),
            None => Err(Status::not_found(format!("no service {service:?}"))),
        }
    }

    async fn list(
        &self,
        _req: Request<HealthListRequest>,
    ) -> Result<Response<HealthListResponse>, Status> {
        let status = HealthCheckResponse {
            status: (*self.status.borrow()).into(),
        };
        let statuses = [(String::new(), status), (self.service.to_string(), status)];
        Ok(Response::new(HealthListResponse {
            statuses: statuses.into_iter().collect(),
        }))
    }

    type WatchStream = ReceiverStream<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = req.into_inner().service;
        let known = self.of(&service).is_some();
        let mut status = self.status.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            loop {
                let s = if known {
                    *status.borrow_and_update()
                } else {
                    ServingStatus::ServiceUnknown
                };
                let msg = HealthCheckResponse { status: s.into() };
                if tx.send(Ok(msg)).await.is_err() || status.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A service and `grpc.health.v1.Health` on one port, told apart by path
/// (what tonic's `router` feature does, without the axum it brings).
#[derive(Clone)]
pub struct WithHealth<S> {
    health: HealthServer<Health>,
    service: S,
}

type Body = tonic::body::Body;

impl<S> Service<http::Request<Body>> for WithHealth<S>
where
    S: Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
            Future = BoxFuture<http::Response<Body>, Infallible>,
        > + Clone
        + Send
        + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path().starts_with("/grpc.health.v1.Health/") {
            self.health.call(req)
        } else {
            self.service.call(req)
        }
    }
}

/// Serve `service` and its health on `listener` until Ctrl-C or SIGTERM,
/// then say NOT_SERVING and finish the calls in flight.
pub async fn serve<S>(
    name: &str,
    service: S,
    health: Health,
    serving: watch::Sender<ServingStatus>,
    listener: TcpListener,
) -> anyhow::Result<()>
where
    WithHealth<S>: Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
            Future = BoxFuture<http::Response<Body>, Infallible>,
        > + Clone
        + Send
        + 'static,
{
    let stopping = async move {
        stop_signal().await;
        log(format_args!(
            "{name}: stopping, finishing the calls in flight"
        ));
        serving.send_replace(ServingStatus::NotServing);
    };
    let both = WithHealth {
        health: HealthServer::new(health),
        service,
    };
    tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(both, incoming(listener), stopping)
        .await
        .with_context(|| format!("{name} serving"))?;
    log(format_args!("{name}: stopped"));
    Ok(())
}

/// A channel to the service `service` (`catalog`, `inventory`, ...).
///
/// With `via`, its sidecar's outbound listener (such as `127.0.0.1:15101`),
/// the connection goes to the sidecar and `service` travels in
/// `:authority`, which is what the sidecar routes by: where the replicas
/// of `service` are is the sidecar's business. Without (`--outbound none`,
/// as in deploy/ where iptables brings every connection to Skiff),
/// `service` is dialled as it is, such as `catalog:50051`. The connection
/// is made at the first call, so the sidecar need not be up yet.
pub fn dial(service: &str, via: Option<&str>) -> anyhow::Result<Channel> {
    let origin = format!("http://{service}");
    let endpoint = match via {
        Some(proxy) => Endpoint::from_shared(format!("http://{proxy}"))?.origin(
            origin
                .parse()
                .with_context(|| format!("{service:?} is not a host name"))?,
        ),
        None => Endpoint::from_shared(origin)?,
    };
    Ok(endpoint
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// A channel over TLS to `addr` (an `ip:port`), `:authority` `service`:
/// the server's certificate must be signed by `ca_pem` and name
/// `server_name`; with `identity` (a chain and its key, PEM), the client
/// presents it (mTLS). For the shoppers at the gateway's edge, and for a
/// client that holds an SVID but no sidecar.
pub fn dial_tls(
    service: &str,
    addr: &str,
    ca_pem: &str,
    server_name: &str,
    identity: Option<(&str, &str)>,
) -> anyhow::Result<Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(server_name);
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let origin = format!("https://{service}");
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .origin(
            origin
                .parse()
                .with_context(|| format!("{service:?} is not a host name"))?,
        )
        .tls_config(tls)
        .context("TLS settings")?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// When the caller stops waiting: the `grpc-timeout` it sent, counted from
/// when its call arrived. Like a Go `context.Context`, it is handed to
/// every downstream call, which then carries the time that is left, so no
/// hop works on for a caller that has gone.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// The deadline of an incoming call (none when the caller set none).
    pub fn of<T>(req: &Request<T>) -> Deadline {
        let timeout = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        Deadline(timeout.map(|t| Instant::now() + t))
    }

    /// A downstream call's request, carrying the time left. Already past:
    /// DEADLINE_EXCEEDED without calling.
    pub fn request<T>(&self, message: T) -> Result<Request<T>, Status> {
        let mut req = Request::new(message);
        if let Some(at) = self.0 {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Status::deadline_exceeded(
                    "the caller's deadline has passed",
                ));
            }
            req.set_timeout(left);
        }
        Ok(req)
    }
}

/// `grpc-timeout`'s value (`250m`, `2S`, `100000u`, ...) as a duration.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A dependency's failure as this call's failure: the same code, so the
/// caller can tell "no such product" from "try again later", and the
/// dependency named in the message. An error the sidecar made itself (no
/// route, timeout, connection refused) carries `x-skiff-error`; say so.
pub fn failed(dependency: &str, e: Status) -> Status {
    let by_proxy = e
        .metadata()
        .get("x-skiff-error")
        .and_then(|v| v.to_str().ok())
        .map(|kind| format!(" (skiff: {kind})"))
        .unwrap_or_default();
    Status::new(e.code(), format!("{dependency}: {}{by_proxy}", e.message()))
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// A SQLite error as a status: a busy database is worth another try.
pub fn db_error(e: rusqlite::Error) -> Status {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            Status::unavailable(format!("database busy: {e}"))
        }
        _ => Status::internal(format!("database: {e}")),
    }
}

/// A service's connection to its database, used off the async threads.
#[derive(Clone)]
pub struct Db(Arc<Mutex<rusqlite::Connection>>);

impl Db {
    pub fn new(conn: rusqlite::Connection) -> Db {
        Db(Arc::new(Mutex::new(conn)))
    }

    /// Run `f` on the database in a blocking thread. It runs to the end
    /// even if the caller goes away meanwhile: a transaction is all or
    /// nothing either way.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let db = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut db = db
                .lock()
                .map_err(|_| Status::internal("database connection poisoned"))?;
            f(&mut db)
        })
        .await
        .map_err(|e| Status::internal(format!("database task: {e}")))?
    }
}

/// Open the SQLite database the replicas of a service share: WAL, so one
/// writes while the others read, and a busy timeout, so a replica waits its
/// turn instead of failing.
pub fn open_db(path: &str) -> anyhow::Result<rusqlite::Connection> {
    let db = rusqlite::Connection::open(path).with_context(|| format!("opening {path}"))?;
    db.busy_timeout(Duration::from_secs(5))?;
    // Switching to WAL needs the file to itself for a moment; two replicas
    // starting together take turns.
    let mut tries = 0;
    loop {
        match db.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => break,
            Err(e) if tries < 50 && is_busy(&e) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e).with_context(|| format!("{path}: journal_mode=WAL")),
        }
    }
    db.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(db)
}

/// The caller's user, from `x-user-id`: the gateway sets it from the
/// verified JWT's `sub` (`jwt.forward_claims` in config/gateway.yaml), and
/// removes any copy a client sent.
pub fn user_of<T>(req: &Request<T>) -> Result<String, Status> {
    match req
        .metadata()
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
    {
        Some(u) if !u.is_empty() => Ok(u.to_string()),
        _ => Err(Status::unauthenticated("no x-user-id: who is asking?")),
    }
}

/// The name a gRPC status code has in the spec and in every other language.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `CODE: message`.
pub fn status_text(e: &Status) -> String {
    format!("{}: {}", code_name(e.code()), e.message())
}

/// `1234` cents as `$12.34`.
pub fn dollars(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let c = cents.unsigned_abs();
    format!("{sign}${}.{:02}", c / 100, c % 100)
}

/// `book x2, mug x1`.
pub fn items_text(items: &[pb::Item]) -> String {
    items
        .iter()
        .map(|i| format!("{} x{}", i.sku, i.quantity))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line on stderr, with the time first.
pub fn log(line: impl std::fmt::Display) {
    let now = humantime::format_rfc3339_millis(SystemTime::now());
    eprintln!("{now} {line}");
}

/// One log line per call, written when the call ends, like a `defer` in Go.
/// A handler that never ends because its caller went away (a deadline ran
/// out, the client hung up) is dropped by the server, and the line then
/// says CANCELLED.
pub struct Call {
    method: &'static str,
    detail: String,
    started: Instant,
    outcome: Option<String>,
}

impl Call {
    /// `method` as `Service/Method`; `detail` says what was asked.
    pub fn start(method: &'static str, detail: impl Into<String>) -> Call {
        Call {
            method,
            detail: detail.into(),
            started: Instant::now(),
            outcome: None,
        }
    }

    /// Note how the call ended and hand its result on.
    pub fn end<T>(mut self, result: Result<T, Status>) -> Result<T, Status> {
        self.outcome = Some(match &result {
            Ok(_) => "OK".to_string(),
            Err(e) => status_text(e),
        });
        result
    }

    /// Note that a streaming call sent its last message.
    pub fn done(self) {
        let _ = self.end(Ok(()));
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let outcome = self
            .outcome
            .take()
            .unwrap_or_else(|| "CANCELLED: the caller went away".into());
        let sep = if self.detail.is_empty() { "" } else { " " };
        log(format_args!(
            "{}{sep}{} -> {} ({:.1?})",
            self.method,
            self.detail,
            outcome,
            self.started.elapsed()
        ));
    }
}

/// A fresh SQLite database file for a test, removed (with its -wal and
/// -shm) on drop.
#[cfg(test)]
pub struct ScratchDb(std::path::PathBuf);

#[cfg(test)]
impl ScratchDb {
    pub fn new(service: &str) -> ScratchDb {
        ScratchDb(std::env::temp_dir().join(format!(
            "shop-{service}-test-{}-{}.db",
            std::process::id(),
            fastrand::u64(..)
        )))
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

#[cfg(test)]
impl Drop for ScratchDb {
    fn drop(&mut self) {
        for ext in ["", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(ext);
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
    }

    #[test]
    fn dollars_read_as_money() {
        assert_eq!(dollars(2450), "$24.50");
        assert_eq!(dollars(-5), "-$0.05");
    }
}
