//! Admission: whether a request may go on, decided after routing (a route
//! may have rules of its own) and before the cluster sees anything — in
//! this order: authentication, authorization, rate limit, so that a denied
//! request uses no rate budget.

pub mod authorization;

use http::Request;

use crate::error::{ErrorKind, ProxyError};
use crate::listener::state::{ConnInfo, ListenerState};

/// Decide whether `req` may go on.
pub fn check<B>(
    state: &ListenerState,
    conn: &ConnInfo,
    req: &Request<B>,
) -> Result<(), ProxyError> {
    if let Some(policy) = &state.authorization {
        let verdict = policy.decide(conn.peer.as_ref(), req.uri().path(), req.method());
        if !verdict.allowed {
            state.metrics.authz_denied.inc();
            let who = conn
                .peer
                .as_ref()
                .map_or("a peer without a verified identity".to_owned(), |p| {
                    p.to_string()
                });
            let why = match verdict.rule {
                Some(i) => format!("authorization rule {i} denies"),
                None => "no authorization rule allows".to_owned(),
            };
            let what = format!("{why} {} {} from {who}", req.method(), req.uri().path());
            return Err(ProxyError::new(ErrorKind::Forbidden, what));
        }
    }
    Ok(())
}
