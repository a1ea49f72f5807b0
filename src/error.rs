//! What the proxy answers when it, not the app, ends a request
//! (docs/architecture.md, "Errors").
//!
//! This is the one place where a cause becomes an answer: every proxy-made
//! response, the trailers that end a stream the proxy cuts short, the
//! access-log flags and the `x-skiff-error` kinds are made here and nowhere
//! else, so they stay in step.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::http::body::{ProxyBody, StreamOutcome};
use crate::http::grpc;
use crate::upstream::UpstreamError;

/// The header naming a proxy-made error's cause. An app's response never carries it.
pub const ERROR_HEADER: &str = "x-skiff-error";

/// Why the proxy ended a request itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NoRoute,
    NoHealthyUpstream,
    ConnectFailure,
    UpstreamReset,
    Timeout,
    Overflow,
    RateLimited,
    Unauthenticated,
    /// A `jwt:` listener has no key set at all (none loaded yet): the
    /// proxy cannot tell a good token from a bad one, so it is unavailable,
    /// not the client unauthenticated.
    NoJwks,
    Forbidden,
    BadRequest,
    HeadersTooLarge,
}

impl ErrorKind {
    /// Every kind, for pre-registering metric children.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::NoRoute,
        ErrorKind::NoHealthyUpstream,
        ErrorKind::ConnectFailure,
        ErrorKind::UpstreamReset,
        ErrorKind::Timeout,
        ErrorKind::Overflow,
        ErrorKind::RateLimited,
        ErrorKind::Unauthenticated,
        ErrorKind::NoJwks,
        ErrorKind::Forbidden,
        ErrorKind::BadRequest,
        ErrorKind::HeadersTooLarge,
    ];

    /// The value of `x-skiff-error` and the `kind` label of `skiff_proxy_errors_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no_route",
            ErrorKind::NoHealthyUpstream => "no_healthy_upstream",
            ErrorKind::ConnectFailure => "connect_failure",
            ErrorKind::UpstreamReset => "upstream_reset",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Overflow => "overflow",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::NoJwks => "no_jwks",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::BadRequest | ErrorKind::HeadersTooLarge => "bad_request",
        }
    }

    /// The short access-log flag, in Envoy's vocabulary.
    pub fn flag(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "NR",
            ErrorKind::NoHealthyUpstream => "UH",
            ErrorKind::ConnectFailure => "UF",
            ErrorKind::UpstreamReset => "UR",
            ErrorKind::Timeout => "UT",
            ErrorKind::Overflow => "UO",
            ErrorKind::RateLimited => "RL",
            ErrorKind::Unauthenticated => "UAEX",
            ErrorKind::NoJwks => "NJ",
            ErrorKind::Forbidden => "RBAC",
            ErrorKind::BadRequest | ErrorKind::HeadersTooLarge => "DPE",
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::NoHealthyUpstream | ErrorKind::Overflow | ErrorKind::NoJwks => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::ConnectFailure | ErrorKind::UpstreamReset => StatusCode::BAD_GATEWAY,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    pub fn grpc_status(self) -> u8 {
        match self {
            ErrorKind::NoRoute => grpc::UNIMPLEMENTED,
            ErrorKind::NoHealthyUpstream
            | ErrorKind::Overflow
            | ErrorKind::NoJwks
            | ErrorKind::ConnectFailure
            | ErrorKind::UpstreamReset => grpc::UNAVAILABLE,
            ErrorKind::Timeout => grpc::DEADLINE_EXCEEDED,
            ErrorKind::RateLimited => grpc::RESOURCE_EXHAUSTED,
            ErrorKind::Unauthenticated => grpc::UNAUTHENTICATED,
            ErrorKind::Forbidden => grpc::PERMISSION_DENIED,
            ErrorKind::BadRequest | ErrorKind::HeadersTooLarge => grpc::INTERNAL,
        }
    }
}

impl ErrorKind {
    /// The kind named by a response's `x-skiff-error` header: the answer of
    /// a proxy (this one's peer sidecar, often), not of an app.
    pub fn of_response(headers: &HeaderMap) -> Option<ErrorKind> {
        let v = headers.get(ERROR_HEADER)?.as_bytes();
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.as_str().as_bytes() == v)
    }
}

/// The access-log flag of a client that left before its response ended.
pub const FLAG_DOWNSTREAM_CLOSED: &str = "DC";
/// The access-log flag of a stream ended by the stream idle timeout.
pub const FLAG_STREAM_IDLE: &str = "SI";

/// What a response stream that did not end complete says: the error kind
/// the proxy counts it as (none when the proxy did not end it) and its
/// access-log flag. `None` for a stream that ended complete.
pub fn stream_end(outcome: StreamOutcome) -> Option<(Option<ErrorKind>, &'static str)> {
    match outcome {
        StreamOutcome::Complete => None,
        StreamOutcome::Timeout => Some((Some(ErrorKind::Timeout), ErrorKind::Timeout.flag())),
        StreamOutcome::Idle => Some((Some(ErrorKind::Timeout), FLAG_STREAM_IDLE)),
        StreamOutcome::UpstreamError => Some((None, ErrorKind::UpstreamReset.flag())),
        StreamOutcome::Cancelled => Some((None, FLAG_DOWNSTREAM_CLOSED)),
    }
}

/// The trailers that end a gRPC response stream the proxy cuts short (its
/// deadline passed, or nothing moved for the stream idle timeout): the
/// [`Expiry`](crate::http::body::Expiry) of gRPC responses.
pub fn expired_grpc_stream(outcome: StreamOutcome) -> HeaderMap {
    let message = match outcome {
        StreamOutcome::Idle => "stream idle timeout: nothing moved",
        _ => "deadline exceeded while streaming the response",
    };
    let mut t = HeaderMap::new();
    grpc_status_fields(&mut t, ErrorKind::Timeout, message);
    t
}

/// `grpc-status`, `grpc-message` and `x-skiff-error` of a proxy-made end.
fn grpc_status_fields(h: &mut HeaderMap, kind: ErrorKind, message: &str) {
    h.insert(
        grpc::GRPC_STATUS,
        HeaderValue::from(u16::from(kind.grpc_status())),
    );
    if let Ok(v) = HeaderValue::from_str(&grpc::percent_encode(message)) {
        h.insert(grpc::GRPC_MESSAGE, v);
    }
    h.insert(ERROR_HEADER, HeaderValue::from_static(kind.as_str()));
}

/// The IETF rate-limit fields of a 429 (draft-ietf-httpapi-ratelimit-headers):
/// `RateLimit-Policy: "default";q=<quota>;w=<window>` and
/// `RateLimit: "default";r=<remaining>;t=<seconds until a token>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitFields {
    /// Requests allowed per `window_secs`, sustained.
    pub quota: u64,
    pub window_secs: u64,
    /// Requests that would pass now.
    pub remaining: u64,
}

/// The policy name in both rate-limit fields.
const RATE_LIMIT_POLICY: &str = "default";

/// A request the proxy ended, with a message for the caller and what the
/// answer needs beyond the kind.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {detail}", kind.as_str())]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub detail: String,
    /// When to come back (429, 503): `Retry-After`, in whole seconds rounded up.
    pub retry_after: Option<Duration>,
    /// The challenge of a 401 (`WWW-Authenticate`), e.g.
    /// `Bearer error="invalid_token", error_description="..."`.
    pub challenge: Option<String>,
    /// The rate-limit fields of a 429.
    pub rate_limit: Option<RateLimitFields>,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        ProxyError {
            kind,
            detail: detail.into(),
            retry_after: None,
            challenge: None,
            rate_limit: None,
        }
    }

    /// Tell the caller when to try again.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The `WWW-Authenticate` challenge of an unauthenticated request.
    pub fn with_challenge(mut self, challenge: impl Into<String>) -> Self {
        self.challenge = Some(challenge.into());
        self
    }

    /// The IETF `RateLimit-Policy` and `RateLimit` fields of a rate-limited
    /// answer; their reset (`t`) is the `Retry-After` time.
    pub fn with_rate_limit(mut self, fields: RateLimitFields) -> Self {
        self.rate_limit = Some(fields);
        self
    }

    /// The answer to a try that got no response from the upstream.
    pub fn upstream(e: &UpstreamError) -> Self {
        let kind = match e {
            UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. } => {
                ErrorKind::ConnectFailure
            }
            UpstreamError::Handshake { .. } => ErrorKind::ConnectFailure,
            UpstreamError::Reset { .. } | UpstreamError::Refused { .. } => ErrorKind::UpstreamReset,
            UpstreamError::Overflow { .. } => ErrorKind::Overflow,
            UpstreamError::Invalid { .. } => ErrorKind::BadRequest,
        };
        ProxyError::new(kind, e.to_string())
    }

    /// The response for this error: trailers-only gRPC when the request was
    /// gRPC (HTTP 200 whose headers end the stream), else a plain status with
    /// a one-line text body.
    pub fn to_response(&self, is_grpc: bool) -> Response<ProxyBody> {
        let mut resp = if is_grpc {
            let mut r = Response::new(ProxyBody::empty());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            grpc_status_fields(r.headers_mut(), self.kind, &self.detail);
            r
        } else {
            let mut r = Response::new(ProxyBody::full(Bytes::from(format!(
                "{}: {}\n",
                self.kind.as_str(),
                self.detail
            ))));
            *r.status_mut() = self.kind.http_status();
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r.headers_mut()
                .insert(ERROR_HEADER, HeaderValue::from_static(self.kind.as_str()));
            r
        };
        let h = resp.headers_mut();
        let retry_secs = self
            .retry_after
            .map(|after| (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1));
        if let Some(secs) = retry_secs {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(f) = self.rate_limit {
            let policy = format!("\"{RATE_LIMIT_POLICY}\";q={};w={}", f.quota, f.window_secs);
            let now = format!(
                "\"{RATE_LIMIT_POLICY}\";r={};t={}",
                f.remaining,
                retry_secs.unwrap_or(0)
            );
            for (name, value) in [("ratelimit-policy", policy), ("ratelimit", now)] {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    h.insert(name, v);
                }
            }
        }
        if self.kind == ErrorKind::Unauthenticated {
            let challenge = self
                .challenge
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok())
                .unwrap_or(HeaderValue::from_static("Bearer"));
            h.insert(http::header::WWW_AUTHENTICATE, challenge);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_matches_the_documented_table() {
        let cases = [
            (ErrorKind::NoRoute, 404, 12),
            (ErrorKind::NoHealthyUpstream, 503, 14),
            (ErrorKind::Overflow, 503, 14),
            (ErrorKind::ConnectFailure, 502, 14),
            (ErrorKind::UpstreamReset, 502, 14),
            (ErrorKind::Timeout, 504, 4),
            (ErrorKind::RateLimited, 429, 8),
            (ErrorKind::Unauthenticated, 401, 16),
            (ErrorKind::NoJwks, 503, 14),
            (ErrorKind::Forbidden, 403, 7),
            (ErrorKind::BadRequest, 400, 13),
            (ErrorKind::HeadersTooLarge, 431, 13),
        ];
        for (kind, http, grpc) in cases {
            assert_eq!(kind.http_status().as_u16(), http, "{kind:?}");
            assert_eq!(kind.grpc_status(), grpc, "{kind:?}");
        }
    }

    #[test]
    fn grpc_errors_are_trailers_only() {
        let r = ProxyError::new(ErrorKind::Timeout, "route timeout 2s elapsed").to_response(true);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "4");
        assert_eq!(
            r.headers()["grpc-message"],
            "route%20timeout%202s%20elapsed"
        );
        assert_eq!(r.headers()[ERROR_HEADER], "timeout");
        assert_eq!(r.headers()["content-type"], "application/grpc");
    }

    #[test]
    fn http_errors_carry_status_and_kind() {
        let r = ProxyError::new(ErrorKind::RateLimited, "slow down")
            .with_retry_after(Duration::from_secs(1))
            .to_response(false);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(r.headers()[ERROR_HEADER], "rate_limited");
    }

    #[test]
    fn rate_limited_answers_carry_the_ietf_fields() {
        let fields = RateLimitFields {
            quota: 100,
            window_secs: 1,
            remaining: 0,
        };
        for grpc in [false, true] {
            let r = ProxyError::new(ErrorKind::RateLimited, "over the limit")
                .with_retry_after(Duration::from_millis(1500))
                .with_rate_limit(fields)
                .to_response(grpc);
            assert_eq!(r.headers()["retry-after"], "2");
            assert_eq!(r.headers()["ratelimit-policy"], r#""default";q=100;w=1"#);
            assert_eq!(r.headers()["ratelimit"], r#""default";r=0;t=2"#);
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let after = |d| {
            ProxyError::new(ErrorKind::RateLimited, "slow down")
                .with_retry_after(d)
                .to_response(true)
                .headers()["retry-after"]
                .clone()
        };
        assert_eq!(after(Duration::from_millis(1200)), "2");
        assert_eq!(after(Duration::from_millis(10)), "1");
        assert_eq!(after(Duration::from_secs(30)), "30");
        let none = ProxyError::new(ErrorKind::Overflow, "full").to_response(false);
        assert!(none.headers().get("retry-after").is_none());
    }

    #[test]
    fn unauthenticated_carries_its_challenge() {
        let r = ProxyError::new(ErrorKind::Unauthenticated, "token expired")
            .with_challenge(r#"Bearer error="invalid_token", error_description="token expired""#)
            .to_response(false);
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()["www-authenticate"],
            r#"Bearer error="invalid_token", error_description="token expired""#
        );
        let bare = ProxyError::new(ErrorKind::Unauthenticated, "no token").to_response(true);
        assert_eq!(bare.headers()["www-authenticate"], "Bearer");
        assert_eq!(bare.headers()["grpc-status"], "16");
    }

    #[test]
    fn a_proxy_answer_is_recognised_by_its_header() {
        for kind in ErrorKind::ALL {
            let r = ProxyError::new(kind, "x").to_response(false);
            let back = ErrorKind::of_response(r.headers()).unwrap();
            // 431 and 400 share the kind `bad_request`.
            assert_eq!(back.as_str(), kind.as_str());
        }
        assert_eq!(ErrorKind::of_response(&HeaderMap::new()), None);
    }

    #[test]
    fn streams_cut_short_end_with_a_deadline_status() {
        let t = expired_grpc_stream(StreamOutcome::Idle);
        assert_eq!(t["grpc-status"], "4");
        assert_eq!(t[ERROR_HEADER], "timeout");
        assert_eq!(
            t["grpc-message"],
            "stream%20idle%20timeout:%20nothing%20moved"
        );
        let t = expired_grpc_stream(StreamOutcome::Timeout);
        assert_eq!(
            t["grpc-message"],
            "deadline%20exceeded%20while%20streaming%20the%20response"
        );
        assert_eq!(
            stream_end(StreamOutcome::Idle),
            Some((Some(ErrorKind::Timeout), "SI"))
        );
        assert_eq!(stream_end(StreamOutcome::Cancelled), Some((None, "DC")));
        assert_eq!(stream_end(StreamOutcome::UpstreamError), Some((None, "UR")));
        assert_eq!(stream_end(StreamOutcome::Complete), None);
    }
}
