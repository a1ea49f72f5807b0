//! What the proxy answers when it, not the app, ends a request (DESIGN §6).
//!
//! Every proxy-made response is built here and nowhere else, so the status
//! codes, gRPC codes, `x-skiff-error` kinds and access-log flags stay in step.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::http::body::ProxyBody;
use crate::http::grpc;

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
    Forbidden,
    BadRequest,
    HeadersTooLarge,
}

impl ErrorKind {
    /// Every kind, for pre-registering metric children.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::NoRoute,
        ErrorKind::NoHealthyUpstream,
        ErrorKind::ConnectFailure,
        ErrorKind::UpstreamReset,
        ErrorKind::Timeout,
        ErrorKind::Overflow,
        ErrorKind::RateLimited,
        ErrorKind::Unauthenticated,
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
            ErrorKind::Forbidden => "RBAC",
            ErrorKind::BadRequest | ErrorKind::HeadersTooLarge => "DPE",
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::NoHealthyUpstream | ErrorKind::Overflow => StatusCode::SERVICE_UNAVAILABLE,
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

/// A request the proxy ended, with a message for the caller.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {detail}", kind.as_str())]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        ProxyError {
            kind,
            detail: detail.into(),
        }
    }

    /// The response for this error: trailers-only gRPC when the request was
    /// gRPC, else a plain status with a one-line text body.
    pub fn to_response(&self, is_grpc: bool) -> Response<ProxyBody> {
        let kind = HeaderValue::from_static(self.kind.as_str());
        let mut resp = if is_grpc {
            grpc::trailers_only(self.kind.grpc_status(), &self.detail)
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
            if self.kind == ErrorKind::RateLimited {
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            if self.kind == ErrorKind::Unauthenticated {
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
            }
            r
        };
        resp.headers_mut().insert(ERROR_HEADER, kind);
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_matches_design_table() {
        let cases = [
            (ErrorKind::NoRoute, 404, 12),
            (ErrorKind::NoHealthyUpstream, 503, 14),
            (ErrorKind::Overflow, 503, 14),
            (ErrorKind::ConnectFailure, 502, 14),
            (ErrorKind::UpstreamReset, 502, 14),
            (ErrorKind::Timeout, 504, 4),
            (ErrorKind::RateLimited, 429, 8),
            (ErrorKind::Unauthenticated, 401, 16),
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
        let r = ProxyError::new(ErrorKind::RateLimited, "slow down").to_response(false);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(r.headers()[ERROR_HEADER], "rate_limited");
    }
}
