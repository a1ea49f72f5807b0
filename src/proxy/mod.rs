//! THE request path, in request order. Read this first.
//!
//! 1. name the request (request id, gRPC or not, authority); refuse what
//!    cannot be proxied (CONNECT, a head too large)
//! 2. route it: virtual host, then the first matching route, and the cluster
//!    (weighted clusters draw one)
//! 3. admission (`crate::admission`): authentication, authorization, rate limit
//! 4. set the deadline: route `timeout`, capped by the client's `grpc-timeout`
//! 5. call the cluster (`call.rs`): each try (`attempt.rs`) to an endpoint
//!    the balancer picks, hop-by-hop headers removed and `grpc-timeout` set
//!    to the time left, tried again as the retry policy decides
//! 6. stream the response back; when it ends, record metrics and the access log
//!
//! Every way out of this function goes through [`Exchange::respond`] or
//! [`Exchange::fail`] (in `exchange.rs`), so metrics and the access log see
//! every request once; every proxy-made answer is made in `crate::error`.

mod attempt;
mod call;
mod exchange;

use attempt::Pools;
use call::{call, Call};
use exchange::Exchange;

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, Version};

use crate::admission;
use crate::cluster::Endpoint;
use crate::error::{ErrorKind, ProxyError};
use crate::http::body::{ObservedBody, ProxyBody};
use crate::http::{grpc, headers};
use crate::listener::activity::RequestGuard;
use crate::listener::state::{ConnInfo, ListenerState, Target};
use crate::resilience::policy::RetryPolicy;
use crate::router::RequestInfo;

/// Proxy one request from a downstream client. The listener has already
/// kept or made its `x-request-id` (the request's span carries it).
pub async fn handle(
    state: Arc<ListenerState>,
    conn: Arc<ConnInfo>,
    busy: RequestGuard,
    mut req: Request<ProxyBody>,
) -> Response<ObservedBody> {
    // 1. Name the request; refuse what cannot be proxied. The peer's
    // identity reaches the app only as this connection's handshake verified it.
    headers::set_peer_identity(req.headers_mut(), conn.peer.as_ref());
    let mut ex = Exchange::new(state.clone(), &conn, busy, &req);
    if let Err(e) = check_head(&req, state.max_header_bytes) {
        return ex.fail(e);
    }

    // 2. Route: by authority, then (redirected connections) by original
    // destination, then (passthrough) to the original destination itself.
    let routed = match ex.authority.as_deref() {
        Some(authority) => route(&state, &conn, authority, &req),
        None => Err(ProxyError::new(
            ErrorKind::BadRequest,
            "request has no authority (Host header)",
        )),
    };
    let routed = match routed {
        Ok(r) => r,
        Err(e) => return ex.fail(e),
    };
    ex.target = Some(routed.target.clone());
    let cluster = routed.target.cluster.clone();

    // 3. Admission: authentication, authorization, rate limit.
    let admitted = admission::check(&state, &conn, routed.route, &mut req);
    if let Err(e) = admitted.await {
        return ex.fail(e);
    }

    // 4. Deadline: the route timeout, capped by the client's grpc-timeout.
    let client_timeout = req
        .headers()
        .get(grpc::GRPC_TIMEOUT)
        .and_then(|v| grpc::parse_timeout(v.as_bytes()));
    let timeout = match (routed.timeout, client_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    ex.deadline = timeout.map(|t| ex.start + t);

    // 5. Call the cluster: one max_requests slot for the whole request, kept
    // across its retries (a retry must not turn the app's answer into an
    // overflow), then the tries, as the route's retry policy allows.
    let Some(permit) = cluster.limits.request() else {
        cluster.metrics.overflow.inc();
        let what = format!(
            "cluster {} has {} requests in flight, its limit",
            cluster.name, cluster.limits.max_requests
        );
        return ex.fail(ProxyError::new(ErrorKind::Overflow, what));
    };
    ex.permit = Some(permit);
    let (mut head, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut head.headers);
    let c = Call {
        cluster: &cluster,
        policy: routed.policy.as_deref(),
        endpoint: routed.endpoint,
        proto: cluster.protocol,
        grpc: ex.grpc,
        deadline: ex.deadline,
        timeout,
        stream_idle_timeout: state.stream_idle_timeout,
        bytes_in: &ex.bytes_in,
    };
    let called = call(c, head, body, &Pools).await;
    ex.attempts = called.attempts;
    ex.in_flight = called.in_flight;
    ex.report_at_end = called.report_at_end;
    let mut resp = match called.result {
        Ok(resp) => resp,
        Err(e) => return ex.fail(e),
    };

    // 6. Stream the response back, in the client's HTTP version.
    headers::strip_hop_by_hop(resp.headers_mut());
    *resp.version_mut() = ex.version;
    ex.respond(resp, None)
}

/// Refuse a request head that cannot be proxied.
fn check_head(req: &Request<ProxyBody>, max_header_bytes: usize) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        // No tunnels: a CONNECT would otherwise go to the routed cluster
        // as a streaming request.
        return Err(ProxyError::new(
            ErrorKind::BadRequest,
            "CONNECT is not supported",
        ));
    }
    // An HTTP/1.1 head the listener's scan found ambiguous comes marked
    // (hyper leaves no trace of it in the headers).
    let marked = req.extensions().get::<headers::BadHead>().copied();
    if let Some(bad) = marked.or_else(|| headers::bad_request_head(req.uri(), req.headers())) {
        // Two parsers could read this head two ways (request smuggling).
        return Err(ProxyError::new(ErrorKind::BadRequest, bad.to_string()));
    }
    if head_size(req) > max_header_bytes {
        let what = format!("request headers exceed {max_header_bytes} bytes");
        return Err(ProxyError::new(ErrorKind::HeadersTooLarge, what));
    }
    Ok(())
}

/// Where routing sends a request.
struct Routed {
    target: Target,
    timeout: Option<Duration>,
    policy: Option<Arc<RetryPolicy>>,
    /// Passthrough: the original destination, the one endpoint to try.
    endpoint: Option<Arc<Endpoint>>,
    /// The route's id; `None` for passthrough.
    route: Option<usize>,
}

/// Step 2: the route for `authority` (then the original destination's
/// address), or, on a passthrough listener, the original destination.
fn route(
    state: &ListenerState,
    conn: &ConnInfo,
    authority: &str,
    req: &Request<ProxyBody>,
) -> Result<Routed, ProxyError> {
    let info = RequestInfo {
        authority,
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
    match (route, &state.passthrough, conn.orig_dst) {
        (Some(route), _, _) => {
            // 3. Cluster: weighted clusters draw one.
            let Some((_, target)) = route.action.pick() else {
                return Err(ProxyError::new(
                    ErrorKind::NoHealthyUpstream,
                    "route has no cluster",
                ));
            };
            Ok(Routed {
                target: target.clone(),
                timeout: route.timeout,
                policy: route.retry.clone(),
                endpoint: None,
                route: Some(route.id),
            })
        }
        (None, Some(p), Some(dst)) => Ok(Routed {
            target: Target {
                cluster: p.cluster.clone(),
                metrics: p.metrics.clone(),
            },
            timeout: None,
            policy: None,
            endpoint: Some(p.endpoint(dst)),
            route: None,
        }),
        _ => {
            let what = format!(
                "no route for {} {}{}",
                req.method(),
                authority,
                req.uri().path()
            );
            Err(ProxyError::new(ErrorKind::NoRoute, what))
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
