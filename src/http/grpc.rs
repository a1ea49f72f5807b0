//! gRPC over HTTP/2 as the proxy needs it: recognising calls, deadlines in
//! `grpc-timeout`, statuses and messages. The proxy's own gRPC answers are
//! made in `crate::error`.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};

pub const OK: u8 = 0;
pub const CANCELLED: u8 = 1;
pub const UNKNOWN: u8 = 2;
pub const DEADLINE_EXCEEDED: u8 = 4;
pub const PERMISSION_DENIED: u8 = 7;
pub const RESOURCE_EXHAUSTED: u8 = 8;
pub const UNIMPLEMENTED: u8 = 12;
pub const INTERNAL: u8 = 13;
pub const UNAVAILABLE: u8 = 14;
pub const DATA_LOSS: u8 = 15;
pub const UNAUTHENTICATED: u8 = 16;

pub const GRPC_TIMEOUT: &str = "grpc-timeout";
pub const GRPC_STATUS: &str = "grpc-status";
pub const GRPC_MESSAGE: &str = "grpc-message";

/// A request is gRPC when its content-type starts with `application/grpc`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Parse a `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n.checked_mul(3600)?),
        b'M' => Duration::from_secs(n.checked_mul(60)?),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encode `d` as a `grpc-timeout` value with the finest unit that fits 8 digits,
/// never rounding up (the upstream must not get more time than is left).
pub fn encode_timeout(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let candidates = [
        (d.as_nanos(), 'n'),
        (d.as_micros(), 'u'),
        (d.as_millis(), 'm'),
        (u128::from(d.as_secs()), 'S'),
        (u128::from(d.as_secs() / 60), 'M'),
        (u128::from(d.as_secs() / 3600), 'H'),
    ];
    let (n, unit) = candidates
        .into_iter()
        .find(|(n, _)| *n <= MAX)
        .unwrap_or((MAX, 'H'));
    let mut buf = n.to_string();
    buf.push(unit);
    HeaderValue::from_str(&buf).unwrap_or(HeaderValue::from_static("99999999H"))
}

/// The grpc-status in `headers` (a trailers-only response, or the trailers).
pub fn status_of(headers: &HeaderMap) -> Option<u8> {
    let v = headers.get(GRPC_STATUS)?;
    std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok()
}

/// Percent-encode a grpc-message as the gRPC spec asks: everything outside
/// printable ASCII 0x20..=0x7E, and `%` itself.
pub fn percent_encode(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for &b in msg.as_bytes() {
        if (0x21..=0x7E).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout(b"99u"), Some(Duration::from_micros(99)));
        assert_eq!(parse_timeout(b"7n"), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn refuses_malformed_timeouts() {
        for bad in [&b""[..], b"m", b"123456789m", b"12x", b"-1S", b"1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn encodes_without_rounding_up() {
        assert_eq!(encode_timeout(Duration::from_millis(1500)), "1500000u");
        assert_eq!(encode_timeout(Duration::from_nanos(42)), "42n");
        assert_eq!(encode_timeout(Duration::from_secs(3 * 86400)), "259200S");
        let d = Duration::from_millis(123_456_789);
        let back = parse_timeout(encode_timeout(d).as_bytes()).unwrap();
        // 123456789ms needs the seconds unit: truncated, never rounded up.
        assert_eq!(back, Duration::from_secs(123_456));
        assert!(back <= d);
    }

    #[test]
    fn recognises_grpc_content_types() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&h));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        assert!(!is_grpc(&h));
    }

    #[test]
    fn percent_encodes_messages() {
        assert_eq!(percent_encode("a b%c"), "a%20b%25c");
        assert_eq!(percent_encode("ü"), "%C3%BC");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// The unit of an encoded value, in nanoseconds.
        fn unit_of(v: &HeaderValue) -> u128 {
            match v.as_bytes().last() {
                Some(b'n') => 1,
                Some(b'u') => 1_000,
                Some(b'm') => 1_000_000,
                Some(b'S') => 1_000_000_000,
                Some(b'M') => 60_000_000_000,
                _ => 3_600_000_000_000,
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            /// Bound: never more time than given, and less only by what
            /// the unit cannot show; the value is one grpc-timeout accepts.
            #[test]
            fn encoding_never_gives_more_time(secs in 0u64..(400_000_000 * 3600), nanos in 0u32..1_000_000_000) {
                let d = Duration::new(secs, nanos);
                let v = encode_timeout(d);
                let back = parse_timeout(v.as_bytes());
                prop_assert!(back.is_some(), "{v:?} does not parse");
                let back = back.unwrap_or_default();
                prop_assert!(back <= d, "{d:?} became {back:?} ({v:?})");
                if d <= Duration::from_secs(99_999_999 * 3600) {
                    prop_assert!(d.as_nanos() - back.as_nanos() < unit_of(&v), "{d:?} -> {v:?}");
                }
            }

            /// Any bytes: an answer, never a panic; what parses encodes back
            /// to the same time.
            #[test]
            fn any_value_is_judged(value in prop::collection::vec(any::<u8>(), 0..12)) {
                if let Some(d) = parse_timeout(&value) {
                    prop_assert_eq!(parse_timeout(encode_timeout(d).as_bytes()), Some(d));
                }
            }

            #[test]
            fn well_formed_values_parse(n in 0u64..100_000_000, unit in prop::sample::select(vec!['H', 'M', 'S', 'm', 'u', 'n'])) {
                let d = parse_timeout(format!("{n}{unit}").as_bytes());
                prop_assert!(d.is_some());
                prop_assert_eq!(parse_timeout(encode_timeout(d.unwrap_or_default()).as_bytes()), d);
            }
        }
    }
}
