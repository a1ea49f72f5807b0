//! One try of the request path: waiting for a response head, reading a
//! gRPC status that comes only in trailers, and what a try's outcome counts
//! as in the metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::http::body::ProxyBody;
use crate::http::grpc;
use crate::resilience::policy::Outcome;
use crate::upstream::UpstreamError;

/// Why a try got no response head.
pub(super) enum TryError {
    Upstream(UpstreamError),
    /// The try's deadline (route, per-try or grpc-timeout) passed.
    Timeout,
    /// Nothing moved for the stream idle timeout while waiting.
    Idle,
}

/// Wait for the response head: until the try's deadline, and while no
/// deadline is set, as long as the request body keeps moving within the
/// stream idle timeout (a client stream may take long before its answer).
pub(super) async fn await_head(
    sent: impl std::future::Future<Output = Result<Response<ProxyBody>, UpstreamError>>,
    sent_at: Instant,
    deadline: Option<Instant>,
    idle: Duration,
    bytes_in: &AtomicU64,
) -> Result<Response<ProxyBody>, TryError> {
    tokio::pin!(sent);
    let mut seen = bytes_in.load(Ordering::Relaxed);
    let mut since = sent_at;
    loop {
        let wake = since + idle;
        let until = deadline.map_or(wake, |d| d.min(wake));
        match tokio::time::timeout_at(until, &mut sent).await {
            Ok(r) => return r.map_err(TryError::Upstream),
            Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => {
                return Err(TryError::Timeout)
            }
            Err(_) => {
                let now = bytes_in.load(Ordering::Relaxed);
                if now == seen {
                    return Err(TryError::Idle);
                }
                seen = now;
                since = Instant::now();
            }
        }
    }
}

/// The upstream sees which try this is.
pub(super) const ATTEMPT_COUNT: http::HeaderName =
    http::HeaderName::from_static("x-skiff-attempt-count");

/// How long a gRPC response without a status in its head may be held back
/// to read its trailers, so a status there can still be retried.
const HOLD_FOR_TRAILERS: Duration = Duration::from_millis(250);

/// Read the first frame of a gRPC response that has no grpc-status in its
/// head: when the trailers come first (no message), their status decides
/// about a retry. The frame is handed back to the body either way.
pub(super) async fn peek_grpc_status(
    resp: &mut Response<ProxyBody>,
    deadline: Option<Instant>,
) -> Option<u8> {
    use http_body_util::BodyExt;
    let hold = Instant::now() + HOLD_FOR_TRAILERS;
    let until = deadline.map_or(hold, |d| d.min(hold));
    let body = resp.body_mut();
    match tokio::time::timeout_at(until, body.frame()).await {
        Ok(Some(Ok(frame))) => {
            let status = frame.trailers_ref().and_then(grpc::status_of);
            body.push_front(frame);
            status
        }
        _ => None,
    }
}

pub(super) fn clone_head(p: &http::request::Parts) -> http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

pub(super) fn count_attempt(cluster: &Cluster, outcome: Outcome) {
    let m = &cluster.metrics;
    match outcome {
        Outcome::Response(..) if !outcome.is_failure() => m.success.inc(),
        Outcome::Response(..) => m.failure.inc(),
        Outcome::PerTryTimeout => m.timeout.inc(),
        Outcome::Reset | Outcome::Refused => m.reset.inc(),
        Outcome::ConnectFailure => m.connect_failure.inc(),
    }
}
