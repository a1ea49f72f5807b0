//! HTTP/1.1 to an upstream: a keep-alive pool of idle connections.
//!
//! A connection goes back to the pool once its response body has been read
//! to the end. A request sent on a reused connection that the upstream had
//! just closed (the keep-alive race) comes back unsent from hyper, and is
//! sent again on a fresh connection: it never reached the app.

use http::header::HOST;
use http::{HeaderValue, Request, Response, Version};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Pool, UpstreamError};
use crate::http::body::{ProxyBody, RequestBody};

type Sender = http1::SendRequest<RequestBody>;

pub(super) struct Idle {
    sender: Sender,
    since: Instant,
}

impl Pool {
    fn take_idle_h1(&self) -> Option<Sender> {
        let mut idle = self.h1.lock().ok()?;
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < self.config.idle_timeout
                && !c.sender.is_closed()
                && c.sender.is_ready()
            {
                return Some(c.sender);
            }
        }
        None
    }

    async fn connect_h1(&self) -> Result<Sender, UpstreamError> {
        let (io, permit) = self.connect().await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Handshake {
                addr: self.addr,
                reason: format!("HTTP/1.1: {e}"),
            })?;
        let span = tracing::debug_span!("upstream", addr = %self.addr);
        let driven = async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
            }
            drop(permit);
        };
        tokio::spawn(driven.instrument(span));
        Ok(sender)
    }

    pub(super) async fn send_h1(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let mut req = origin_form(req);
        let (sender, response) = loop {
            let Some(mut sender) = self.take_idle_h1() else {
                let mut sender = self.connect_h1().await?;
                let response = sender.send_request(req);
                break (sender, response);
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let resp = resp.map(ProxyBody::hyper);
                    self.return_when_done(sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the connection was closing. Use another.
                    Some(unsent) => req = unsent,
                    None => return Err(self.h1_error(e.into_error())),
                },
            }
        };
        let resp = response.await.map_err(|e| self.h1_error(e))?;
        self.return_when_done(sender);
        Ok(resp.map(ProxyBody::hyper))
    }

    /// Put the connection back in the pool once the response has been read to the end.
    fn return_when_done(&self, mut sender: Sender) {
        let max_idle = self.config.max_idle;
        if max_idle == 0 {
            return;
        }
        // The task must not keep a removed endpoint's pool alive.
        let idle = std::sync::Arc::downgrade(&self.h1);
        let retired = self.retired.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_err() || retired.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            if let Some(idle) = idle.upgrade() {
                if let Ok(mut idle) = idle.lock() {
                    if idle.len() < max_idle {
                        idle.push(Idle {
                            sender,
                            since: Instant::now(),
                        });
                    }
                }
            }
        });
    }

    fn h1_error(&self, e: hyper::Error) -> UpstreamError {
        UpstreamError::Reset {
            addr: self.addr,
            reason: e.to_string(),
        }
    }
}

/// HTTP/1.1 takes the path in the request line and the authority in Host.
fn origin_form(req: Request<RequestBody>) -> Request<RequestBody> {
    let (mut parts, body) = req.into_parts();
    if let Some(authority) = parts.uri.authority() {
        if !parts.headers.contains_key(HOST) {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(HOST, v);
            }
        }
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        if let Ok(uri) = pq.parse() {
            parts.uri = uri;
        }
    }
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, body)
}
