//! Header hygiene (docs/architecture.md, "Header rules"): hop-by-hop
//! headers stay on their hop, `x-request-id` is kept or made, `traceparent`
//! passes untouched, `x-skiff-peer-identity` is only ever the verified one;
//! and the request heads that must be refused with 400 because two parsers
//! could read them two ways ([`bad_request_head`]).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Uri};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Remove hop-by-hop headers: the fixed list, `te` unless it is exactly
/// `trailers` (gRPC needs that one), and any header the `connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none of these (gRPC only `te: trailers`): one pass
    // over the names instead of a lookup per hop-by-hop header.
    let hop = |n: &HeaderName| {
        n == header::CONNECTION
            || n == header::TRANSFER_ENCODING
            || n == header::UPGRADE
            || n == header::TE
            || n == KEEP_ALIVE
            || n == PROXY_CONNECTION
    };
    if !headers.keys().any(hop) {
        return;
    }
    if headers.keys().filter(|n| hop(n)).all(|n| n == header::TE)
        && headers.get_all(header::TE).iter().count() == 1
        && headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes() == b"trailers")
    {
        return;
    }
    // Every `connection` line names headers of this hop, not only the first
    // (`HeaderMap::remove` drops them all but returns only the first).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or_default().split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .filter(|n| *n != header::TE)
        .collect();
    headers.remove(header::CONNECTION);
    for name in named {
        headers.remove(name);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
    let te_is_trailers = {
        let mut values = headers.get_all(header::TE).iter();
        match (values.next(), values.next()) {
            (None, _) => true,
            (Some(v), None) => v.as_bytes().eq_ignore_ascii_case(b"trailers"),
            _ => false,
        }
    };
    if !te_is_trailers {
        headers.remove(header::TE);
    } else if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        // HTTP/2 allows `te` only as exactly `trailers` (h2 refuses `Trailers`).
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Give the request an `x-request-id`: a random UUID v4 when it has none
/// or an empty one.
///
/// The value is marked never-indexed: one unique per request would only
/// churn every hop's HPACK table.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    if let Some(v) = headers.get_mut(&REQUEST_ID) {
        if !v.is_empty() {
            v.set_sensitive(true);
            return;
        }
    }
    let mut id = new_request_id();
    id.set_sensitive(true);
    headers.insert(REQUEST_ID, id);
}

/// A random UUID v4 in its usual text form.
pub fn new_request_id() -> HeaderValue {
    let mut b = [0u8; 16];
    fastrand::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut j = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = HEX[usize::from(byte >> 4)];
        out[j + 1] = HEX[usize::from(byte & 0xf)];
        j += 2;
    }
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("0"))
}

/// The verified identity of the downstream peer, as the app reads it.
pub const PEER_IDENTITY: HeaderName = HeaderName::from_static("x-skiff-peer-identity");

/// Remove any `x-skiff-peer-identity` the client sent — it is never
/// trusted — and set it to `peer`, the identity this connection's handshake
/// verified, when there is one.
pub fn set_peer_identity(headers: &mut HeaderMap, peer: Option<&crate::identity::Identity>) {
    headers.remove(&PEER_IDENTITY);
    if let Some(v) = peer.and_then(|p| HeaderValue::from_str(p.as_str()).ok()) {
        headers.insert(PEER_IDENTITY, v);
    }
}

/// Why a request head is refused with 400 before it goes anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadHead {
    /// More than one `Host` (RFC 9112 §3.2).
    TwoHosts,
    /// A `Host` that names another authority than the request target's
    /// (HTTP/1.1 absolute form, or HTTP/2 `:authority`; RFC 9113 §8.3.1).
    HostDisagrees,
    /// Both `Content-Length` and `Transfer-Encoding`: allowed by RFC 9112
    /// §6.3 (the length is ignored), but an app behind the proxy with a
    /// lenient parser may read the length instead. Refused as Envoy does.
    LengthAndTransferEncoding,
}

impl std::fmt::Display for BadHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadHead::TwoHosts => "more than one Host header",
            BadHead::HostDisagrees => "the Host header disagrees with the request target",
            BadHead::LengthAndTransferEncoding => "both Content-Length and Transfer-Encoding",
        })
    }
}

/// Why the request head of `uri` and `headers` must be answered with 400,
/// or `None` when nothing in it is ambiguous.
///
/// hyper's HTTP/1.1 server drops `Content-Length` from a request that also
/// has `Transfer-Encoding` (and closes the connection after the response),
/// so for HTTP/1.1 [`BadHead::LengthAndTransferEncoding`] rarely shows
/// here (the test `hyper_drops_content_length_beside_chunked` records what
/// hyper leaves): the listener's scan of the raw heads
/// (`listener/head_scan.rs`) finds it and marks the request with it.
pub fn bad_request_head(uri: &Uri, headers: &HeaderMap) -> Option<BadHead> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some(BadHead::TwoHosts);
    }
    if let (Some(host), Some(target)) = (host, uri.authority()) {
        if !same_authority(host.as_bytes(), target, uri.scheme_str()) {
            return Some(BadHead::HostDisagrees);
        }
    }
    if headers.contains_key(header::CONTENT_LENGTH)
        && headers.contains_key(header::TRANSFER_ENCODING)
    {
        return Some(BadHead::LengthAndTransferEncoding);
    }
    None
}

/// Whether a `Host` value names `target`: the same host (case aside) and
/// port, a missing port being the scheme's default.
fn same_authority(host: &[u8], target: &Authority, scheme: Option<&str>) -> bool {
    let Ok(host) = Authority::try_from(host) else {
        return false;
    };
    if host.as_str().contains('@') || target.as_str().contains('@') {
        // userinfo has no place in Host; compare nothing and refuse.
        return host.as_str().eq_ignore_ascii_case(target.as_str());
    }
    let default = match scheme {
        Some("https") => 443,
        _ => 80,
    };
    host.host().eq_ignore_ascii_case(target.host())
        && host.port_u16().unwrap_or(default) == target.port_u16().unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn removes_hop_by_hop_and_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("x-kept", "1"),
            ("traceparent", "00-abc-def-01"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["traceparent", "x-kept"]);
    }

    #[test]
    fn the_peer_identity_is_only_ever_the_verified_one() {
        let mut h = HeaderMap::new();
        h.append(
            PEER_IDENTITY,
            HeaderValue::from_static("spiffe://forged/sa/admin"),
        );
        h.append(
            PEER_IDENTITY,
            HeaderValue::from_static("spiffe://forged/sa/root"),
        );
        set_peer_identity(&mut h, None);
        assert!(h.get(PEER_IDENTITY).is_none(), "a client's copy is removed");
        let id =
            crate::identity::Identity::parse("spiffe://cluster.local/ns/shop/sa/order").unwrap();
        h.append(
            PEER_IDENTITY,
            HeaderValue::from_static("spiffe://forged/sa/admin"),
        );
        set_peer_identity(&mut h, Some(&id));
        let all: Vec<_> = h.get_all(PEER_IDENTITY).iter().collect();
        assert_eq!(all, ["spiffe://cluster.local/ns/shop/sa/order"]);
    }

    #[test]
    fn every_connection_line_names_hop_by_hop_headers() {
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("connection", "x-second"),
            ("x-second", "1"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn keeps_te_trailers_only() {
        let mut h = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["te"], "trailers");
        let mut h = map(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h);
        assert!(h.get("te").is_none());
        let mut h = map(&[("te", "Trailers")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["te"], "trailers", "written the one way HTTP/2 accepts");
    }

    #[test]
    fn request_id_kept_or_made() {
        let mut h = map(&[("x-request-id", "abc")]);
        ensure_request_id(&mut h);
        assert_eq!(h["x-request-id"], "abc");
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = &h["x-request-id"];
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        assert!(id.is_sensitive(), "never indexed in HPACK");
    }

    fn head(target: &str, pairs: &[(&'static str, &'static str)]) -> Option<BadHead> {
        let uri: Uri = target.parse().unwrap_or_default();
        bad_request_head(&uri, &map(pairs))
    }

    #[test]
    fn ordinary_heads_pass() {
        assert_eq!(head("/", &[("host", "a.example")]), None);
        assert_eq!(head("/", &[]), None, "HTTP/2 without host, or HTTP/1.0");
        assert_eq!(head("/", &[("content-length", "3")]), None);
        assert_eq!(head("/", &[("transfer-encoding", "chunked")]), None);
        assert_eq!(head("http://a.example/x", &[("host", "A.Example")]), None);
        assert_eq!(
            head("http://a.example/x", &[("host", "a.example:80")]),
            None
        );
        assert_eq!(
            head("https://a.example:443/", &[("host", "a.example")]),
            None
        );
        assert_eq!(
            head("http://a.example:8080/", &[("host", "a.example:8080")]),
            None
        );
        assert_eq!(head("http://[::1]:8080/", &[("host", "[::1]:8080")]), None);
    }

    #[test]
    fn two_hosts_are_refused() {
        let two = [("host", "a.example"), ("host", "b.example")];
        assert_eq!(head("/", &two), Some(BadHead::TwoHosts));
        let same = [("host", "a.example"), ("host", "a.example")];
        assert_eq!(head("/", &same), Some(BadHead::TwoHosts));
    }

    #[test]
    fn a_host_that_disagrees_with_the_target_is_refused() {
        let bad = Some(BadHead::HostDisagrees);
        assert_eq!(head("http://a.example/", &[("host", "b.example")]), bad);
        assert_eq!(
            head("http://a.example/", &[("host", "a.example:8080")]),
            bad
        );
        assert_eq!(head("http://a.example:81/", &[("host", "a.example")]), bad);
        assert_eq!(head("http://a.example/", &[("host", "a.example/x")]), bad);
        assert_eq!(head("http://a.example/", &[("host", "")]), bad);
        assert_eq!(head("http://u@a.example/", &[("host", "a.example")]), bad);
    }

    #[test]
    fn length_beside_transfer_encoding_is_refused() {
        let both = [("content-length", "3"), ("transfer-encoding", "chunked")];
        assert_eq!(head("/", &both), Some(BadHead::LengthAndTransferEncoding));
        assert!(BadHead::LengthAndTransferEncoding
            .to_string()
            .contains("Content-Length"));
    }

    /// What hyper's HTTP/1.1 server hands on for a request with both
    /// `Content-Length` and `Transfer-Encoding: chunked`, in either order:
    /// the `Transfer-Encoding` alone. Two `Host` lines are both kept.
    #[tokio::test]
    async fn hyper_drops_content_length_beside_chunked() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let requests: [&[u8]; 2] = [
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ];
        for (i, bytes) in requests.into_iter().enumerate() {
            let (mut client, server) = tokio::io::duplex(4096);
            let (tx, rx) = tokio::sync::oneshot::channel();
            let tx = std::sync::Mutex::new(Some(tx));
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                        let _ = tx.send(req.headers().clone());
                    }
                    async { Ok::<_, std::convert::Infallible>(http::Response::new(String::new())) }
                });
            let conn = tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(server), service),
            );
            client.write_all(bytes).await.unwrap();
            let seen = rx.await.unwrap();
            assert!(
                seen.get("content-length").is_none(),
                "request {i}: {seen:?}"
            );
            assert_eq!(seen["transfer-encoding"], "chunked", "request {i}");
            let hosts = seen.get_all("host").iter().count();
            assert_eq!(hosts, if i == 0 { 1 } else { 2 }, "request {i}");
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
            assert!(
                answer.contains("connection: close"),
                "request {i}: {answer}"
            );
            conn.abort();
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const HOP: [&str; 6] = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "te",
        ];

        fn name() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "connection",
                "keep-alive",
                "proxy-connection",
                "transfer-encoding",
                "upgrade",
                "te",
                "x-a",
                "x-b",
                "host",
                "content-length",
                "traceparent",
                "x-request-id",
            ])
        }

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "trailers",
                    "Trailers",
                    "gzip",
                    "close",
                    "keep-alive",
                    "x-a",
                    "x-b, te",
                    "te, x-a",
                    "chunked",
                    "",
                    " , ,",
                    "TE",
                ])
                .prop_map(str::to_string),
                "[ -~]{0,12}",
            ]
        }

        fn headers() -> impl Strategy<Value = HeaderMap> {
            prop::collection::vec((name(), value()), 0..10).prop_map(|pairs| {
                let mut h = HeaderMap::new();
                for (k, v) in pairs {
                    if let Ok(v) = HeaderValue::from_str(&v) {
                        h.append(k, v);
                    }
                }
                h
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            /// Bound: no hop-by-hop header survives but one `te: trailers`;
            /// what `connection` names is gone; the rest is kept; a second
            /// pass changes nothing.
            #[test]
            fn hop_by_hop_headers_never_pass(h in headers()) {
                let named: Vec<String> = h
                    .get_all("connection")
                    .iter()
                    .flat_map(|v| {
                        v.to_str()
                            .unwrap_or_default()
                            .split(',')
                            .map(|n| n.trim().to_ascii_lowercase())
                            .collect::<Vec<_>>()
                    })
                    .filter(|n| !n.is_empty() && n != "te")
                    .collect();
                let mut out = h.clone();
                strip_hop_by_hop(&mut out);
                for hop in &HOP[..5] {
                    prop_assert!(!out.contains_key(*hop), "{hop} passed: {out:?}");
                }
                let te: Vec<_> = out.get_all("te").iter().collect();
                prop_assert!(te.is_empty() || (te.len() == 1 && te[0] == "trailers"), "te {te:?}");
                for n in &named {
                    prop_assert!(!out.contains_key(n.as_str()), "{n} was named by connection: {out:?}");
                }
                for (k, v) in &h {
                    if !HOP.contains(&k.as_str()) && !named.iter().any(|n| n == k.as_str()) {
                        prop_assert!(out.get_all(k).iter().any(|o| o == v), "{k} lost");
                    }
                }
                let mut again = out.clone();
                strip_hop_by_hop(&mut again);
                prop_assert_eq!(again, out);
            }

            /// Bound: a non-empty request id, and one that was given is kept.
            #[test]
            fn a_request_id_is_always_there(h in headers(), id in "[ -~]{0,40}") {
                let mut h = h;
                let given = HeaderValue::from_str(&id).ok().filter(|v| !v.is_empty());
                if let Some(v) = &given {
                    h.insert(REQUEST_ID, v.clone());
                }
                ensure_request_id(&mut h);
                let got = h.get(REQUEST_ID).cloned().unwrap_or(HeaderValue::from_static(""));
                prop_assert!(!got.is_empty());
                if let Some(v) = given {
                    prop_assert_eq!(got, v);
                }
            }

            /// Any target and Host values: an answer, never a panic; one Host
            /// equal to an absolute target's authority always passes.
            #[test]
            fn request_heads_are_always_judged(
                target in "(http://|https://)?[a-zA-Z0-9.:@\\[\\]-]{0,20}(/[a-z]{0,5})?",
                hosts in prop::collection::vec("[ -~]{0,24}", 0..3),
            ) {
                let uri: Uri = target.parse().unwrap_or_default();
                let mut h = HeaderMap::new();
                for v in &hosts {
                    if let Ok(v) = HeaderValue::from_str(v) {
                        h.append(header::HOST, v);
                    }
                }
                let verdict = bad_request_head(&uri, &h);
                if h.get_all(header::HOST).iter().count() > 1 {
                    prop_assert_eq!(verdict, Some(BadHead::TwoHosts));
                }
                if let Some(a) = uri.authority().filter(|a| !a.as_str().contains('@')) {
                    let mut one = HeaderMap::new();
                    if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                        one.insert(header::HOST, v);
                        prop_assert_eq!(bad_request_head(&uri, &one), None);
                    }
                }
            }
        }
    }
}
