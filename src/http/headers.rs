//! Header hygiene (docs/architecture.md, "Header rules"): hop-by-hop
//! headers stay on their hop, `x-request-id` is kept or made, `traceparent`
//! passes untouched.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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
    if let Some(conn) = headers.remove(header::CONNECTION) {
        for name in conn
            .to_str()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                if name != header::TE {
                    headers.remove(name);
                }
            }
        }
        // Other values of the connection header may have been folded into more lines.
        while headers.remove(header::CONNECTION).is_some() {}
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
}
