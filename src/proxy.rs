//! THE request path, in request order. Read this first.
//!
//! 1. name the request (request id, gRPC or not, authority)
//! 2. route it: virtual host, then the first matching route
//! 3. pick the cluster (weighted clusters draw one) and an endpoint
//! 4. set the deadline: route `timeout`, capped by the client's `grpc-timeout`
//! 5. send upstream with hop-by-hop headers removed and `grpc-timeout` set to the time left
//! 6. stream the response back; when it ends, record metrics and the access log
//!
//! Every way out of this function goes through [`Exchange::respond`] or
//! [`Exchange::fail`], so metrics and the access log see every request once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::access_log::{AccessLog, Entry};
use crate::cluster::passthrough::Passthrough;
use crate::cluster::{Cluster, Endpoint, InFlight, UpstreamProtocol};
use crate::error::{ErrorKind, ProxyError};
use crate::http::body::{
    IdleTimer, ObservedBody, OnStreamEnd, ProxyBody, RequestBody, StreamEnd, StreamOutcome,
};
use crate::http::{grpc, headers};
use crate::listener::Serving;
use crate::metrics::{ListenerMetrics, RouteMetrics};
use crate::resilience::breaker::Permit;
use crate::resilience::policy::Outcome;
use crate::resilience::replay::{Replay, DEFAULT_REPLAY_BYTES};
use crate::router::{RequestInfo, Router};
use crate::upstream::{Protocol, UpstreamError};

/// Where a route sends requests: a cluster and the metrics of this listener × that cluster.
#[derive(Clone)]
pub struct Target {
    pub cluster: Arc<Cluster>,
    pub metrics: Arc<RouteMetrics>,
}

/// Where a downstream connection came from and, when it was redirected
/// by iptables, where it was going.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub orig_dst: Option<SocketAddr>,
}

/// Everything one listener's requests need, shared by its connections.
/// A config reload swaps in a new one; requests in flight keep theirs.
pub struct ListenerState {
    pub name: Arc<str>,
    pub router: Router<Target>,
    pub metrics: ListenerMetrics,
    /// Metrics for requests that never reached a cluster (`cluster=""`).
    pub unrouted: Arc<RouteMetrics>,
    pub access_log: Option<Arc<AccessLog>>,
    /// Largest request head accepted; hyper's own limits sit above it so the
    /// proxy answers 431 itself, with `x-skiff-error`.
    pub max_header_bytes: usize,
    /// End a request when nothing moves either way for this long.
    pub stream_idle_timeout: Duration,
    /// Accept-time settings: hyper limits, transparency, detection.
    pub serving: Arc<Serving>,
    /// `passthrough: true` on a transparent listener: unrouted requests go
    /// to their original destination.
    pub passthrough: Option<Passthrough>,
}

/// Proxy one request from a downstream client.
pub async fn handle(
    state: Arc<ListenerState>,
    conn: ConnInfo,
    mut req: Request<Incoming>,
) -> Response<ObservedBody> {
    // 1. Name the request.
    let request_id = headers::ensure_request_id(req.headers_mut());
    let mut ex = Exchange::new(state.clone(), conn.client, &req, request_id);
    if head_size(&req) > state.max_header_bytes {
        let what = format!("request headers exceed {} bytes", state.max_header_bytes);
        return ex.fail(ProxyError::new(ErrorKind::HeadersTooLarge, what));
    }
    let Some(authority) = ex.authority.clone() else {
        return ex.fail(ProxyError::new(
            ErrorKind::BadRequest,
            "request has no authority (Host header)",
        ));
    };

    // 2. Route: by authority, then (redirected connections) by original
    // destination, then (passthrough) to the original destination itself.
    let info = RequestInfo {
        authority: &authority,
        path: req.uri().path(),
        method: req.method(),
        headers: req.headers(),
    };
    let by_dst = conn.orig_dst.map(|d| d.to_string());
    let route = state.router.route(&info).or_else(|| {
        let dst = by_dst.as_deref()?;
        state.router.route(&RequestInfo {
            authority: dst,
            ..info
        })
    });
    let mut fixed_endpoint: Option<Arc<Endpoint>> = None;
    let (target, timeout, policy) = match (route, &state.passthrough, conn.orig_dst) {
        (Some(route), _, _) => {
            // 3. Cluster.
            let Some((_, target)) = route.action.pick() else {
                return ex.fail(ProxyError::new(
                    ErrorKind::NoHealthyUpstream,
                    "route has no cluster",
                ));
            };
            (target.clone(), route.timeout, route.retry.clone())
        }
        (None, Some(p), Some(dst)) => {
            fixed_endpoint = Some(p.endpoint(dst));
            let target = Target {
                cluster: p.cluster.clone(),
                metrics: p.metrics.clone(),
            };
            (target, None, None)
        }
        _ => {
            let what = format!(
                "no route for {} {}{}",
                req.method(),
                authority,
                req.uri().path()
            );
            return ex.fail(ProxyError::new(ErrorKind::NoRoute, what));
        }
    };
    ex.target = Some(target.clone());
    let cluster = target.cluster.clone();

    // 4. Deadline: the route timeout, capped by the client's grpc-timeout.
    let client_deadline = req
        .headers()
        .get(grpc::GRPC_TIMEOUT)
        .and_then(|v| grpc::parse_timeout(v.as_bytes()));
    let budget = match (timeout, client_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    ex.deadline = budget.map(|b| ex.start + b);

    // 5. Send upstream, trying again as the route's retry policy allows.
    let proto = match (cluster.protocol, req.version()) {
        (UpstreamProtocol::Http2, _) => Protocol::Http2,
        (UpstreamProtocol::Http1, _) => Protocol::Http1,
        (UpstreamProtocol::Auto, Version::HTTP_2) => Protocol::Http2,
        (UpstreamProtocol::Auto, _) => Protocol::Http1,
    };
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    let method = parts.method.clone();
    let replay_cap = policy
        .as_ref()
        .map_or(DEFAULT_REPLAY_BYTES, |p| p.replay_bytes);
    let replay = Replay::new(body, replay_cap, ex.bytes_in.clone());
    if let Some(p) = &policy {
        p.deposit();
    }
    let tries = policy.as_ref().map_or(1, |p| p.attempts);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut head = Some(parts);
    // One max_requests slot for the whole request, kept across its retries:
    // a retry must not turn the app's answer into an overflow.
    let Some(permit) = cluster.limits.request() else {
        cluster.metrics.overflow.inc();
        let what = format!(
            "cluster {} has {} requests in flight, its limit",
            cluster.name, cluster.limits.max_requests
        );
        return ex.fail(ProxyError::new(ErrorKind::Overflow, what));
    };
    ex.permit = Some(permit);
    loop {
        ex.attempts += 1;
        let attempt = ex.attempts;
        let picked = fixed_endpoint.clone().or_else(|| {
            head.as_ref()
                .and_then(|h| cluster.pick_avoiding(&h.headers, &tried))
        });
        let Some(endpoint) = picked else {
            let what = format!("cluster {} has no healthy endpoint", cluster.name);
            return ex.fail(ProxyError::new(ErrorKind::NoHealthyUpstream, what));
        };
        tried.push(endpoint.addr);
        let in_flight = endpoint.start_request();

        // The head is copied only while another try may follow.
        let parts = if attempt < tries {
            head.as_ref().map(clone_head)
        } else {
            head.take()
        };
        let Some(mut parts) = parts else {
            return ex.fail(ProxyError::new(ErrorKind::BadRequest, "request head lost"));
        };
        let per_try = policy
            .as_ref()
            .and_then(|p| p.per_try_timeout)
            .map(|t| Instant::now() + t);
        let try_deadline = match (ex.deadline, per_try) {
            (Some(d), Some(t)) => Some(d.min(t)),
            (d, t) => d.or(t),
        };
        // The try ends before the request's own deadline: its end is a per-try timeout.
        let capped_by_try = per_try.is_some_and(|t| ex.deadline.is_none_or(|d| t < d));
        if let (Some(d), true) = (try_deadline, ex.grpc) {
            let left = d.saturating_duration_since(Instant::now());
            parts
                .headers
                .insert(grpc::GRPC_TIMEOUT, grpc::encode_timeout(left));
        }
        if policy.is_some() {
            parts
                .headers
                .insert(ATTEMPT_COUNT, HeaderValue::from(attempt));
        }
        let upstream_req = Request::from_parts(parts, RequestBody::Client(replay.next_try()));
        let sent_at = Instant::now();
        let sent = endpoint.pool.send(proto, upstream_req);
        let result = await_head(
            sent,
            try_deadline,
            ex.state.stream_idle_timeout,
            &ex.bytes_in,
        )
        .await;
        if let Err(TryError::Idle) = result {
            cluster.metrics.timeout.inc();
            ex.in_flight = Some(in_flight);
            let what = format!(
                "no response and no request byte for {:?} (stream_idle_timeout)",
                ex.state.stream_idle_timeout
            );
            return ex.fail(ProxyError::new(ErrorKind::Timeout, what));
        }

        // What the try came to.
        let (outcome, result) = match result {
            Ok(mut resp) => {
                endpoint.record_latency(sent_at.elapsed());
                cluster.median_latency.observe(sent_at.elapsed());
                let mut grpc_status = grpc::status_of(resp.headers());
                let hold = policy
                    .as_ref()
                    .is_some_and(|p| p.wants_grpc_status() && attempt < tries);
                if hold && ex.grpc && grpc_status.is_none() && resp.status() == 200 {
                    grpc_status = peek_grpc_status(&mut resp, try_deadline).await;
                }
                // The upstream (its own proxy, often) enforced the grpc-timeout we
                // forwarded, a moment before our own per-try timer: that is our
                // per-try timeout, not the app's answer.
                let expired_here = capped_by_try
                    && (grpc_status == Some(grpc::DEADLINE_EXCEEDED)
                        || resp
                            .headers()
                            .get(crate::error::ERROR_HEADER)
                            .is_some_and(|v| v == "timeout"));
                let outcome = if expired_here {
                    Outcome::PerTryTimeout
                } else {
                    Outcome::Response(resp.status().as_u16(), grpc_status)
                };
                (outcome, Ok(resp))
            }
            Err(TryError::Timeout | TryError::Idle) => {
                (Outcome::PerTryTimeout, Err(TryError::Timeout))
            }
            Err(TryError::Upstream(e)) => {
                let outcome = match &e {
                    UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. } => {
                        Outcome::ConnectFailure
                    }
                    UpstreamError::Refused { .. } => Outcome::Refused,
                    UpstreamError::Reset { .. } => Outcome::Reset,
                    UpstreamError::Overflow { .. } => {
                        cluster.metrics.overflow.inc();
                        return ex.fail(ProxyError::new(ErrorKind::Overflow, e.to_string()));
                    }
                    UpstreamError::Invalid { .. } => {
                        return ex.fail(ProxyError::new(ErrorKind::BadRequest, e.to_string()));
                    }
                };
                (outcome, Err(TryError::Upstream(e)))
            }
        };
        count_attempt(&cluster, outcome);
        if outcome.is_failure() {
            endpoint.record_failure();
        }
        // A gRPC status that only the trailers will tell is reported when the stream ends.
        let status_in_trailers = ex.grpc && outcome == Outcome::Response(200, None);
        if !status_in_trailers {
            cluster.report(&endpoint, outcome.is_failure());
        }
        ex.report_at_end = status_in_trailers;

        // Try again?
        let out_of_time = ex.deadline.is_some_and(|d| Instant::now() >= d);
        if let (Some(p), false) = (&policy, out_of_time) {
            if attempt < tries && p.retries(outcome, &method, ex.grpc) {
                let left = ex
                    .deadline
                    .map(|d| d.saturating_duration_since(Instant::now()));
                if !replay.can_retry() {
                    cluster.metrics.retry_skipped_body.inc();
                } else if left.is_some_and(|l| l < cluster.median_latency.get()) {
                    cluster.metrics.retry_skipped_deadline.inc();
                } else if !p.withdraw() {
                    cluster.metrics.retry_budget_exhausted.inc();
                } else {
                    cluster.metrics.retries.inc();
                    drop((result, in_flight));
                    let wait = p.backoff(attempt);
                    let wait = left.map_or(wait, |l| wait.min(l));
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
        }

        // This answer stands.
        ex.in_flight = Some(in_flight);
        let mut resp = match result {
            Ok(resp) => resp,
            Err(TryError::Timeout | TryError::Idle) => {
                let what = if out_of_time {
                    format!("no response within {:?}", budget.unwrap_or_default())
                } else {
                    "no response within the per-try timeout".to_owned()
                };
                return ex.fail(ProxyError::new(ErrorKind::Timeout, what));
            }
            Err(TryError::Upstream(e)) => {
                let kind = match outcome {
                    Outcome::ConnectFailure => ErrorKind::ConnectFailure,
                    _ => ErrorKind::UpstreamReset,
                };
                return ex.fail(ProxyError::new(kind, e.to_string()));
            }
        };
        replay.commit();

        // 6. Stream the response back, in the client's HTTP version.
        headers::strip_hop_by_hop(resp.headers_mut());
        *resp.version_mut() = ex.version;
        return ex.respond(resp, None);
    }
}

/// Why a try got no response head.
enum TryError {
    Upstream(UpstreamError),
    /// The try's deadline (route, per-try or grpc-timeout) passed.
    Timeout,
    /// Nothing moved for the stream idle timeout while waiting.
    Idle,
}

/// Wait for the response head: until the try's deadline, and while no
/// deadline is set, as long as the request body keeps moving within the
/// stream idle timeout (a client stream may take long before its answer).
async fn await_head(
    sent: impl std::future::Future<Output = Result<Response<ProxyBody>, UpstreamError>>,
    deadline: Option<Instant>,
    idle: Duration,
    bytes_in: &AtomicU64,
) -> Result<Response<ProxyBody>, TryError> {
    tokio::pin!(sent);
    let mut seen = bytes_in.load(Ordering::Relaxed);
    loop {
        let wake = Instant::now() + idle;
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
            }
        }
    }
}

/// The upstream sees which try this is.
const ATTEMPT_COUNT: http::HeaderName = http::HeaderName::from_static("x-skiff-attempt-count");

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

fn clone_head(p: &http::request::Parts) -> http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

fn count_attempt(cluster: &Cluster, outcome: Outcome) {
    let m = &cluster.metrics;
    match outcome {
        Outcome::Response(..) if !outcome.is_failure() => m.success.inc(),
        Outcome::Response(..) => m.failure.inc(),
        Outcome::PerTryTimeout => m.timeout.inc(),
        Outcome::Reset | Outcome::Refused => m.reset.inc(),
        Outcome::ConnectFailure => m.connect_failure.inc(),
    }
}

/// One request's bookkeeping, from arrival to the end of its response stream.
struct Exchange {
    state: Arc<ListenerState>,
    start: Instant,
    client: SocketAddr,
    grpc: bool,
    version: Version,
    authority: Option<String>,
    deadline: Option<Instant>,
    target: Option<Target>,
    bytes_in: Arc<AtomicU64>,
    in_flight: Option<InFlight>,
    /// The cluster's max_requests slot, held until the response stream ends.
    permit: Option<Permit>,
    /// Report the try to outlier detection when the stream ends (its gRPC
    /// status comes in the trailers).
    report_at_end: bool,
    attempts: u32,
    log: Option<LogFields>,
}

/// What the access log needs beyond the metrics; only kept when it is on.
struct LogFields {
    version: Version,
    method: http::Method,
    path: String,
    request_id: HeaderValue,
}

impl Exchange {
    fn new(
        state: Arc<ListenerState>,
        client: SocketAddr,
        req: &Request<Incoming>,
        request_id: HeaderValue,
    ) -> Self {
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
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            request_id,
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
        }
    }

    /// Answer with a proxy-made error (DESIGN §6).
    fn fail(self, err: ProxyError) -> Response<ObservedBody> {
        tracing::debug!(listener = %self.state.name, error = %err, "proxy error");
        self.state.metrics.proxy_error(err.kind);
        let resp = err.to_response(self.grpc);
        self.respond(resp, Some(err.kind.flag()))
    }

    /// Hand `resp` to the client, observed until its stream ends.
    fn respond(
        self,
        resp: Response<ProxyBody>,
        flag: Option<&'static str>,
    ) -> Response<ObservedBody> {
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
        let grpc = done.exchange.grpc;
        Response::from_parts(
            parts,
            ObservedBody::new(body, deadline, idle, grpc, Some(Box::new(done))),
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
        let Completion {
            exchange: ex,
            status,
            grpc_status,
            flag,
        } = *self;
        let elapsed = ex.start.elapsed();
        let grpc_status = end.grpc_status.or(grpc_status);
        let flag = flag.or(match end.outcome {
            StreamOutcome::Complete => None,
            StreamOutcome::Timeout => {
                ex.state.metrics.proxy_error(ErrorKind::Timeout);
                Some(ErrorKind::Timeout.flag())
            }
            StreamOutcome::UpstreamError => Some("UR"),
            StreamOutcome::Cancelled => Some("DC"),
            StreamOutcome::Idle => {
                ex.state.metrics.proxy_error(ErrorKind::Timeout);
                Some("SI")
            }
        });
        let grpc_status = match end.outcome {
            StreamOutcome::Timeout | StreamOutcome::Idle if ex.grpc => {
                Some(grpc::DEADLINE_EXCEEDED)
            }
            _ => grpc_status,
        };
        if ex.report_at_end {
            // The client leaving or the deadline passing says nothing about the endpoint.
            let failed = match end.outcome {
                StreamOutcome::Complete => {
                    Some(Outcome::Response(status, grpc_status).is_failure())
                }
                StreamOutcome::UpstreamError => Some(true),
                _ => None,
            };
            if let (Some(failed), Some(t), Some(f)) = (failed, &ex.target, &ex.in_flight) {
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
}

/// The size of a request head: for HTTP/1.1 its bytes on the wire (request
/// line, `name: value\r\n` per header), for HTTP/2 the header-list size of
/// RFC 9113 §6.5.2 (name + value + 32 per field, pseudo-headers included).
fn head_size<B>(req: &Request<B>) -> usize {
    let h2 = req.version() == Version::HTTP_2;
    let per_field = if h2 { 32 } else { 4 };
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + target + if h2 { 4 * 32 } else { 12 };
    req.headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + per_field)
        .sum::<usize>()
        + line
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
