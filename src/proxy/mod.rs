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
//! [`Exchange::fail`] (in `exchange.rs`), so metrics and the access log see
//! every request once. Each try's helpers are in `attempt.rs`.

mod attempt;
mod exchange;

use attempt::{await_head, clone_head, count_attempt, peek_grpc_status, TryError, ATTEMPT_COUNT};
use exchange::Exchange;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, Version};
use tokio::time::Instant;

use crate::access_log::AccessLog;
use crate::cluster::passthrough::Passthrough;
use crate::cluster::{Cluster, Endpoint, UpstreamProtocol};
use crate::error::{ErrorKind, ProxyError};
use crate::http::body::{ObservedBody, ProxyBody, RequestBody};
use crate::http::{grpc, headers};
use crate::listener::activity::RequestGuard;
use crate::listener::Serving;
use crate::metrics::{ListenerMetrics, RouteMetrics};
use crate::resilience::policy::Outcome;
use crate::resilience::replay::Replay;
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
    busy: RequestGuard,
    mut req: Request<ProxyBody>,
) -> Response<ObservedBody> {
    // 1. Name the request.
    headers::ensure_request_id(req.headers_mut());
    let mut ex = Exchange::new(state.clone(), conn.client, busy, &req);
    if req.method() == Method::CONNECT {
        // No tunnels: a CONNECT would otherwise go to the routed cluster
        // as a streaming request.
        return ex.fail(ProxyError::new(
            ErrorKind::BadRequest,
            "CONNECT is not supported",
        ));
    }
    if head_size(&req) > state.max_header_bytes {
        let what = format!("request headers exceed {} bytes", state.max_header_bytes);
        return ex.fail(ProxyError::new(ErrorKind::HeadersTooLarge, what));
    }
    // Taken out for the lookup, which borrows it while `ex` stays usable,
    // and put back before anything can fail.
    let Some(authority) = ex.authority.take() else {
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
    let route = state.router.route(&info).or_else(|| {
        let dst = conn.orig_dst?.to_string();
        state.router.route(&RequestInfo {
            authority: &dst,
            ..info
        })
    });
    ex.authority = Some(authority);
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
                ex.authority.as_deref().unwrap_or_default(),
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
    let tries = policy.as_ref().map_or(1, |p| p.attempts);
    // Nothing is kept of the body when no other try can follow.
    let replay_cap = match &policy {
        Some(p) if tries > 1 => p.replay_bytes,
        _ => 0,
    };
    let replay = Replay::new(body, replay_cap, ex.bytes_in.clone());
    if let Some(p) = &policy {
        p.deposit();
    }
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
        if attempt < tries {
            tried.push(endpoint.addr);
        }
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
            sent_at,
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
                let now = Instant::now();
                let rtt = now.saturating_duration_since(sent_at);
                endpoint.record_latency(rtt, now);
                cluster.median_latency.observe(rtt);
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
