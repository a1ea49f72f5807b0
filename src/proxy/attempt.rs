//! One try of the request path: send the request to one endpoint, wait for
//! its response head, and say what the try came to (an [`Outcome`]), reading
//! a gRPC status that only the trailers tell when a retry may depend on it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tokio::time::Instant;

use crate::cluster::{Cluster, Endpoint};
use crate::error::ErrorKind;
use crate::http::body::{ProxyBody, RequestBody};
use crate::http::grpc;
use crate::resilience::policy::Outcome;
use crate::upstream::{Protocol, UpstreamError};

/// Where a try is sent: the endpoint's connection pool in the proxy, a
/// script in the tests of the retry loop.
pub(crate) trait Upstream: Sync {
    fn send(
        &self,
        endpoint: &Endpoint,
        proto: Protocol,
        req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, UpstreamError>> + Send;
}

/// The endpoints' own connection pools.
pub(crate) struct Pools;

impl Upstream for Pools {
    fn send(
        &self,
        endpoint: &Endpoint,
        proto: Protocol,
        req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, UpstreamError>> + Send {
        endpoint.pool.send(proto, req)
    }
}

/// What one try needs beyond the request.
pub(super) struct TrySpec {
    pub attempt: u32,
    /// The try's own deadline: the request's, or its per-try timeout if sooner.
    pub deadline: Option<Instant>,
    /// The try ends before the request's own deadline: its end is a per-try timeout.
    pub capped_by_try: bool,
    pub grpc: bool,
    /// Write `x-skiff-attempt-count` (the route has a retry policy).
    pub count_attempts: bool,
    /// Read a trailers-only gRPC status before deciding (a retry may follow on it).
    pub hold_for_status: bool,
    pub stream_idle_timeout: Duration,
}

/// Why a try got no response head.
pub(super) enum TryError {
    Upstream(UpstreamError),
    /// The try's deadline (route, per-try or grpc-timeout) passed.
    Timeout,
    /// Nothing moved for the stream idle timeout while waiting.
    Idle,
}

/// Send one try to `endpoint` and wait for its response head.
pub(super) async fn attempt<U: Upstream>(
    upstream: &U,
    cluster: &Cluster,
    endpoint: &Endpoint,
    proto: Protocol,
    mut req: Request<RequestBody>,
    spec: &TrySpec,
    bytes_in: &AtomicU64,
) -> (Outcome, Result<Response<ProxyBody>, TryError>) {
    if let (Some(d), true) = (spec.deadline, spec.grpc) {
        let left = d.saturating_duration_since(Instant::now());
        req.headers_mut()
            .insert(grpc::GRPC_TIMEOUT, grpc::encode_timeout(left));
    }
    if spec.count_attempts {
        req.headers_mut()
            .insert(ATTEMPT_COUNT, HeaderValue::from(spec.attempt));
    }
    let sent_at = Instant::now();
    let sent = upstream.send(endpoint, proto, req);
    let result = await_head(
        sent,
        sent_at,
        spec.deadline,
        spec.stream_idle_timeout,
        bytes_in,
    )
    .await;
    match result {
        Ok(mut resp) => {
            let now = Instant::now();
            let rtt = now.saturating_duration_since(sent_at);
            endpoint.record_latency(rtt, now);
            cluster.median_latency.observe(rtt);
            let mut grpc_status = grpc::status_of(resp.headers());
            if spec.hold_for_status && spec.grpc && grpc_status.is_none() && resp.status() == 200 {
                grpc_status = peek_grpc_status(&mut resp, spec.deadline).await;
            }
            // The upstream (its own proxy, often) enforced the grpc-timeout we
            // forwarded, a moment before our own per-try timer: that is our
            // per-try timeout, not the app's answer.
            let expired_here = spec.capped_by_try
                && (grpc_status == Some(grpc::DEADLINE_EXCEEDED)
                    || ErrorKind::of_response(resp.headers()) == Some(ErrorKind::Timeout));
            let outcome = if expired_here {
                Outcome::PerTryTimeout
            } else {
                Outcome::Response(resp.status().as_u16(), grpc_status)
            };
            (outcome, Ok(resp))
        }
        Err(TryError::Timeout) => (Outcome::PerTryTimeout, Err(TryError::Timeout)),
        Err(TryError::Idle) => (Outcome::PerTryTimeout, Err(TryError::Idle)),
        Err(TryError::Upstream(e)) => (outcome_of(&e), Err(TryError::Upstream(e))),
    }
}

/// What a try that got no response came to, for the retry policy and the
/// metrics. Overflow and an unsendable request end the request at once;
/// their outcome is never looked at.
fn outcome_of(e: &UpstreamError) -> Outcome {
    match e {
        UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. } => {
            Outcome::ConnectFailure
        }
        UpstreamError::Handshake { .. } => Outcome::ConnectFailure,
        UpstreamError::Refused { .. } => Outcome::Refused,
        UpstreamError::Reset { .. }
        | UpstreamError::Overflow { .. }
        | UpstreamError::Invalid { .. } => Outcome::Reset,
    }
}

/// Wait for the response head: until the try's deadline, and while no
/// deadline is set, as long as the request body keeps moving within the
/// stream idle timeout (a client stream may take long before its answer).
async fn await_head(
    sent: impl Future<Output = Result<Response<ProxyBody>, UpstreamError>>,
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
async fn peek_grpc_status(resp: &mut Response<ProxyBody>, deadline: Option<Instant>) -> Option<u8> {
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
