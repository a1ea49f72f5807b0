//! Addresses: `ip:port` parsing for binds, endpoints and DNS servers, and
//! the rule that no two sockets would bind the same port.

use std::net::SocketAddr;

use super::Rules;
use crate::config::parse::Draft;

impl Rules<'_> {
    /// Addresses parse, and no two sockets would bind the same port.
    pub(super) fn addresses(&mut self, d: &Draft) {
        // (path of the address, how to name its owner, the address)
        let mut binds: Vec<(String, String, SocketAddr)> = Vec::new();
        if let Some(admin) = &d.admin {
            match parse_bind_address(&admin.address) {
                Ok(a) => {
                    if !a.ip().is_loopback() && !admin.allow_remote {
                        let message = format!(
                            "`{a}` is not a loopback address: whoever reaches the admin server can drain or stop the proxy and read its config; bind 127.0.0.1, or set `allow_remote: true` beside `address` to serve it beyond this host"
                        );
                        self.value("admin.address", message);
                    }
                    binds.push(("admin.address".into(), "the admin server".into(), a));
                }
                Err(e) => self.value("admin.address", e),
            }
        }
        for (i, l) in &d.listeners {
            let path = format!("listeners[{i}].address");
            match parse_bind_address(&l.address) {
                Ok(a) => binds.push((path, format!("listener `{}`", l.name), a)),
                Err(e) => self.value(&path, e),
            }
        }
        for (j, (path, _, addr)) in binds.iter().enumerate() {
            if let Some((other_path, owner, other)) =
                binds[..j].iter().find(|(_, _, b)| overlaps(*b, *addr))
            {
                let message = format!(
                    "`{addr}` overlaps {owner} at `{other}`{}: both would bind port {}",
                    self.line_of(other_path),
                    addr.port()
                );
                self.value(path, message);
            }
        }
    }
}

/// `ip:port` for a socket to bind; port 0 picks a free port.
fn parse_bind_address(s: &str) -> Result<SocketAddr, String> {
    parse_ip_port(
        s,
        "listeners bind an IP address, such as `0.0.0.0` or `127.0.0.1`",
    )
}

/// `ip:port` of an upstream endpoint; hostnames need DNS discovery.
pub(super) fn parse_endpoint_address(s: &str) -> Result<SocketAddr, String> {
    let addr = parse_ip_port(s, "to reach a hostname, use `dns:` instead of `endpoints:`")?;
    if addr.port() == 0 {
        return Err(format!("`{s}`: port 0 cannot be connected to"));
    }
    Ok(addr)
}

pub(super) fn parse_ip_port(s: &str, hostname_hint: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = |why: String| Err(format!("`{s}` is not an ip:port address: {why}"));
    let Some((host, port)) = s.rsplit_once(':') else {
        return bad("the port is missing, as in `127.0.0.1:8080`".into());
    };
    if host.contains(':') && !host.starts_with('[') {
        return bad("write IPv6 addresses in brackets, as in `[::1]:8080`".into());
    }
    if port.parse::<u16>().is_err() {
        return bad(format!("the port `{port}` is not a number from 0 to 65535"));
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_err() {
        return bad(format!("`{host}` is not an IP address; {hostname_hint}"));
    }
    bad("expected the form `10.0.0.1:8080` or `[::1]:8080`".into())
}

/// Two binds collide when they share a port (not 0) and an IP, or one is a wildcard.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(parse_bind_address("127.0.0.1:0").is_ok());
        assert!(parse_bind_address("[::]:15006").is_ok());
        assert!(parse_bind_address("localhost:80")
            .unwrap_err()
            .contains("not an IP address"));
        assert!(parse_bind_address("127.0.0.1")
            .unwrap_err()
            .contains("port is missing"));
        assert!(parse_bind_address("::1:80")
            .unwrap_err()
            .contains("brackets"));
        assert!(parse_bind_address("1.2.3.4:x")
            .unwrap_err()
            .contains("port `x`"));
        assert!(parse_endpoint_address("inventory:50051")
            .unwrap_err()
            .contains("dns:"));
        assert!(parse_endpoint_address("10.0.0.1:0").is_err());
    }

    #[test]
    fn overlap_rules() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(overlaps(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(overlaps(a("10.0.0.1:80"), a("[::]:80")));
        assert!(!overlaps(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!overlaps(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(!overlaps(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }
}
