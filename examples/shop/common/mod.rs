//! What the shop's services share: the generated gRPC code, settings from
//! the environment, serving, dialling a dependency through the sidecar, and
//! the one log line per call.
//!
//! Each binary includes this file with `#[path = "common/mod.rs"] mod common;`
//! and uses only part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod pb;

use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// The variable `name`, or `default` when it is unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => default.to_string(),
    }
}

/// The variable `name` parsed, or `default` when it is unset or empty.
pub fn env_parse<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}")),
        _ => Ok(default),
    }
}

/// The variable `name` as a duration such as `250ms` or `2s`.
pub fn env_duration(name: &str, default: Duration) -> anyhow::Result<Duration> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => {
            humantime::parse_duration(&v).with_context(|| format!("{name}={v:?}"))
        }
        _ => Ok(default),
    }
}

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
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
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
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// A channel to the service named `service` (`catalog`, `order`, ...).
///
/// With a sidecar (`via` is its listener, such as `127.0.0.1:15101`) the
/// connection goes to the sidecar and `service` travels in `:authority`,
/// which is what the sidecar routes by. Without one, `service` must be an
/// address to connect to. The connection is made at the first call, so the
/// dependency need not be up yet.
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

/// `1234` cents as `$12.34`.
pub fn dollars(cents: i64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
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
            Err(e) => format!("{}: {}", code_name(e.code()), e.message()),
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
