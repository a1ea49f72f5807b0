//! One request's bookkeeping, from arrival to the end of its response
//! stream: proxy-made answers, the observed response body, and what is
//! recorded (metrics, outlier reports, the access log) when the stream ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, Version};
use tokio::time::Instant;

use crate::access_log::Entry;
use crate::cluster::InFlight;
use crate::error::{self, ErrorKind, ProxyError};
use crate::http::body::{
    Expiry, IdleTimer, ObservedBody, OnStreamEnd, ProxyBody, StreamEnd, StreamOutcome,
};
use crate::http::{grpc, headers};
use crate::identity::Identity;
use crate::listener::activity::RequestGuard;
use crate::listener::state::{ClientFault, ConnInfo, ConnTls, ListenerState, Target};
use crate::resilience::breaker::Permit;
use crate::resilience::policy::Outcome;

/// One request's bookkeeping, from arrival to the end of its response stream.
pub(super) struct Exchange {
    pub(super) state: Arc<ListenerState>,
    pub(super) start: Instant,
    pub(super) client: SocketAddr,
    pub(super) grpc: bool,
    pub(super) version: Version,
    pub(super) authority: Option<String>,
    pub(super) deadline: Option<Instant>,
    pub(super) target: Option<Target>,
    pub(super) bytes_in: Arc<AtomicU64>,
    pub(super) in_flight: Option<InFlight>,
    /// The cluster's max_requests slot, held until the response stream ends.
    pub(super) permit: Option<Permit>,
    /// Report the try to outlier detection when the stream ends (a head
    /// that looked fine: the stream may still break, or carry a failing
    /// gRPC status in its trailers).
    pub(super) report_at_end: bool,
    pub(super) attempts: u32,
    log: Option<LogFields>,
    /// Handed to a response stream, which records the request when it ends;
    /// an exchange dropped before that (the client reset the stream or
    /// closed the connection before the response head) records itself.
    handed_over: bool,
    /// Keeps the downstream connection counted busy until the stream ends.
    _busy: RequestGuard,
    /// Set when the downstream server reset the stream for the client's
    /// protocol error.
    fault: Option<ClientFault>,
}

/// What the access log needs beyond the metrics; only kept when it is on.
struct LogFields {
    version: Version,
    tls: Option<ConnTls>,
    peer: Option<Identity>,
    method: http::Method,
    path: String,
    request_id: HeaderValue,
}

impl Exchange {
    pub(super) fn new<B>(
        state: Arc<ListenerState>,
        conn: &ConnInfo,
        busy: RequestGuard,
        req: &Request<B>,
    ) -> Self {
        let client = conn.client;
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .filter(|a| !a.is_empty());
        let log = state.access_log.is_some().then(|| LogFields {
            version: req.version(),
            tls: conn.tls,
            peer: conn.peer.clone(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            request_id: req
                .headers()
                .get(headers::REQUEST_ID)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("")),
        });
        Exchange {
            state,
            start: Instant::now(),
            client,
            grpc: grpc::is_grpc(req.headers()),
            version: req.version(),
            authority,
            deadline: None,
            target: None,
            bytes_in: Arc::new(AtomicU64::new(0)),
            in_flight: None,
            permit: None,
            report_at_end: false,
            attempts: 0,
            log,
            handed_over: false,
            _busy: busy,
            fault: req.extensions().get::<ClientFault>().cloned(),
        }
    }

    /// Answer with a proxy-made error (made in `crate::error`).
    pub(super) fn fail(self, err: ProxyError) -> Response<ObservedBody> {
        tracing::debug!(error = %err, "proxy error");
        self.state.metrics.proxy_error(err.kind);
        let resp = err.to_response(self.grpc);
        self.respond(resp, Some(err.kind.flag()))
    }

    /// Hand `resp` to the client, observed until its stream ends.
    pub(super) fn respond(
        mut self,
        resp: Response<ProxyBody>,
        flag: Option<&'static str>,
    ) -> Response<ObservedBody> {
        self.handed_over = true;
        let (parts, body) = resp.into_parts();
        let deadline = self
            .deadline
            .filter(|_| flag.is_none())
            .map(|d| Box::pin(tokio::time::sleep_until(d)));
        let idle = flag
            .is_none()
            .then(|| IdleTimer::new(self.state.stream_idle_timeout, self.bytes_in.clone()));
        let done = Completion {
            status: parts.status.as_u16(),
            grpc_status: grpc::status_of(&parts.headers),
            flag,
            exchange: self,
        };
        // A gRPC call cut short must still end with a grpc-status.
        let expiry = done
            .exchange
            .grpc
            .then_some(crate::error::expired_grpc_stream as Expiry);
        Response::from_parts(
            parts,
            ObservedBody::new(body, deadline, idle, expiry, Some(Box::new(done))),
        )
    }
}

/// Records the request when its response stream ends.
struct Completion {
    exchange: Exchange,
    status: u16,
    /// From the response head (trailers-only); trailers, if any, take over.
    grpc_status: Option<u8>,
    flag: Option<&'static str>,
}

impl OnStreamEnd for Completion {
    fn finish(self: Box<Self>, end: StreamEnd) {
        record(
            &self.exchange,
            self.status,
            self.grpc_status,
            self.flag,
            end,
        );
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.handed_over {
            // No response head reached the client: status 0, as Envoy logs it.
            let end = StreamEnd {
                outcome: StreamOutcome::Cancelled,
                bytes_out: 0,
                grpc_status: None,
            };
            // The server reset the stream for the client's protocol error:
            // the client's fault, not a client that left.
            let fault = self.fault.as_ref().is_some_and(ClientFault::is_set);
            let flag = fault.then(|| {
                self.state.metrics.proxy_error(ErrorKind::BadRequest);
                ErrorKind::BadRequest.flag()
            });
            record(self, 0, None, flag, end);
        }
    }
}

/// Metrics, the outlier report and the access log line of a request whose
/// response (status `status`, gRPC status from its head `grpc_status`) ended as `end` says.
fn record(
    ex: &Exchange,
    status: u16,
    grpc_status: Option<u8>,
    flag: Option<&'static str>,
    end: StreamEnd,
) {
    let elapsed = ex.start.elapsed();
    let mut grpc_status = end.grpc_status.or(grpc_status);
    let mut flag = flag;
    if let Some((kind, end_flag)) = error::stream_end(end.outcome) {
        flag = flag.or(Some(end_flag));
        if let Some(kind) = kind {
            // The proxy ended the stream itself (deadline, idle timeout).
            ex.state.metrics.proxy_error(kind);
            if ex.grpc {
                grpc_status = Some(kind.grpc_status());
            }
        }
    }
    if ex.report_at_end {
        // The client leaving or the deadline passing says nothing about the
        // endpoint; the upstream breaking the stream mid-response does.
        let failed = match end.outcome {
            StreamOutcome::Complete => Some(Outcome::Response(status, grpc_status).is_failure()),
            StreamOutcome::UpstreamError => Some(true),
            _ => None,
        };
        if let (Some(failed), Some(t), Some(f)) = (failed, &ex.target, &ex.in_flight) {
            if failed {
                f.endpoint().record_failure();
            }
            t.cluster.report(f.endpoint(), failed);
        }
    }
    let metrics = ex
        .target
        .as_ref()
        .map_or(&ex.state.unrouted, |t| &t.metrics);
    metrics.observe(status, grpc_status, elapsed.as_secs_f64());

    if let (Some(log), Some(fields)) = (&ex.state.access_log, &ex.log) {
        log.write(&Entry {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            listener: &ex.state.name,
            client: ex.client.to_string(),
            tls: fields.tls.map(ConnTls::as_str),
            peer: fields.peer.as_ref().map(Identity::as_str),
            protocol: version_str(fields.version),
            method: fields.method.as_str(),
            authority: ex.authority.as_deref().unwrap_or(""),
            path: &fields.path,
            status,
            grpc_status,
            duration_ms: round_ms(elapsed),
            cluster: ex.target.as_ref().map_or("", |t| &t.cluster.name),
            upstream: ex.in_flight.as_ref().map(|f| f.endpoint().addr.to_string()),
            bytes_in: ex.bytes_in.load(Ordering::Relaxed),
            bytes_out: end.bytes_out,
            flag: flag.unwrap_or("-"),
            attempts: ex.attempts,
            request_id: fields.request_id.to_str().unwrap_or(""),
        });
    }
}

fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/0.9",
    }
}
