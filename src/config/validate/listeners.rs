//! Rules for listeners: names, limits, virtual hosts and their domains.

use std::collections::HashMap;

use super::{Rules, NOT_YET_LISTENER};
use crate::config::model::Listener;
use crate::config::parse::Draft;

impl Rules<'_> {
    pub(super) fn listeners(&mut self, d: &Draft) {
        if d.listeners.is_empty() {
            self.value("listeners", "at least one listener is needed".into());
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, l) in &d.listeners {
            let base = format!("listeners[{i}]");
            self.not_yet(NOT_YET_LISTENER, l, &base);
            self.interception(l, &base);
            self.listener_tls(d, l, &base);
            self.name(
                &format!("{base}.name"),
                &l.name,
                "listener",
                &mut names,
                *i,
                "listeners",
            );
            self.limits(l, &base);
            self.authorization(l, &base);
            self.listener_admission(d, l, &base);
            self.virtual_hosts(d, l, &base);
        }
    }

    fn limits(&mut self, l: &Listener, base: &str) {
        let limits = &l.limits;
        let p = |key: &str| format!("{base}.limits.{key}");
        if limits.max_header_bytes < 1024 {
            let message = "`max_header_bytes` must be at least 1024: smaller heads cannot hold ordinary requests";
            self.value(&p("max_header_bytes"), message.into());
        }
        if limits.max_connections == 0 {
            let message = "`max_connections` must be at least 1: 0 would refuse every connection";
            self.value(&p("max_connections"), message.into());
        }
        if limits.max_concurrent_streams == 0 {
            let message =
                "`max_concurrent_streams` must be at least 1: 0 would refuse every HTTP/2 request";
            self.value(&p("max_concurrent_streams"), message.into());
        }
        for (key, window) in [
            ("initial_stream_window", limits.initial_stream_window),
            (
                "initial_connection_window",
                limits.initial_connection_window,
            ),
        ] {
            if !(H2_MIN_WINDOW..=H2_MAX_WINDOW).contains(&window) {
                let message = format!("`{key}` must be from {H2_MIN_WINDOW} to {H2_MAX_WINDOW} bytes (the HTTP/2 bounds)");
                self.value(&p(key), message);
            }
        }
        self.positive(
            &p("header_read_timeout"),
            limits.header_read_timeout,
            "`header_read_timeout`",
        );
        for (key, d) in [
            ("keepalive_interval", limits.keepalive_interval),
            ("stream_idle_timeout", limits.stream_idle_timeout),
            ("connection_idle_timeout", limits.connection_idle_timeout),
            ("detect_timeout", limits.detect_timeout),
            ("write_stall_timeout", limits.write_stall_timeout),
        ] {
            self.positive(&p(key), d, &format!("`{key}`"));
        }
        if limits.max_control_frames_per_stream == 0 {
            let message = "`max_control_frames_per_stream` must be at least 1: 0 would end every HTTP/2 connection at its first SETTINGS";
            self.value(&p("max_control_frames_per_stream"), message.into());
        }
        if limits.max_control_frames_per_data_frame == 0 {
            let message = "`max_control_frames_per_data_frame` must be at least 1: a client needs WINDOW_UPDATEs for the data it receives";
            self.value(&p("max_control_frames_per_data_frame"), message.into());
        }
    }

    fn virtual_hosts(&mut self, d: &Draft, l: &Listener, base: &str) {
        // A passthrough listener may route nothing itself: everything goes
        // to where it was going.
        if l.virtual_hosts.is_empty() && !(l.transparent && l.passthrough) {
            let message = "a listener needs at least one virtual host (or `transparent: true` with `passthrough: true`)".to_string();
            self.value(&format!("{base}.virtual_hosts"), message);
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        // lower-cased domain -> (virtual host index, domain index)
        let mut domains: HashMap<String, (usize, usize)> = HashMap::new();
        let list = format!("{base}.virtual_hosts");
        for (v, vh) in l.virtual_hosts.iter().enumerate() {
            let vbase = format!("{list}[{v}]");
            self.name(
                &format!("{vbase}.name"),
                &vh.name,
                "virtual host",
                &mut names,
                v,
                &list,
            );
            if vh.domains.is_empty() {
                let message =
                    "a virtual host needs at least one domain; `\"*\"` matches any authority";
                self.value(&format!("{vbase}.domains"), message.into());
            }
            for (k, domain) in vh.domains.iter().enumerate() {
                let path = format!("{vbase}.domains[{k}]");
                if let Err(e) = check_domain(domain) {
                    self.value(&path, e);
                    continue;
                }
                match domains.get(&domain.to_ascii_lowercase()) {
                    Some((fv, _)) if *fv == v => {
                        self.value(
                            &path,
                            format!("domain `{domain}` is listed twice in this virtual host"),
                        );
                    }
                    Some((fv, fk)) => {
                        let message = format!(
                            "domain `{domain}` is also listed by virtual host `{}`{}; an authority must lead to one virtual host",
                            l.virtual_hosts[*fv].name,
                            self.line_of(&format!("{list}[{fv}].domains[{fk}]"))
                        );
                        self.value(&path, message);
                    }
                    None => {
                        domains.insert(domain.to_ascii_lowercase(), (v, k));
                    }
                }
            }
            if vh.routes.is_empty() {
                self.value(
                    &format!("{vbase}.routes"),
                    "a virtual host needs at least one route".into(),
                );
            }
            for (r, route) in vh.routes.iter().enumerate() {
                self.route(d, l, route, &format!("{vbase}.routes[{r}]"));
            }
        }
    }
}

/// HTTP/2 flow-control windows (RFC 9113 §6.5.2, §6.9.1).
const H2_MIN_WINDOW: u32 = 65_535;
const H2_MAX_WINDOW: u32 = (1 << 31) - 1;

/// A virtual host domain: `host`, `host:port`, `*.suffix` (optionally with a port) or `*`.
fn check_domain(domain: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("`{domain}` is not a valid domain: {why}"));
    if domain == "*" {
        return Ok(());
    }
    if domain.is_empty() {
        return Err("a domain cannot be empty; `\"*\"` matches any authority".into());
    }
    let wildcard = domain.strip_prefix("*.");
    let rest = wildcard.unwrap_or(domain);
    if rest.contains('*') {
        return bad("`*` may only stand alone (`*`) or begin a domain (`*.example.com`)");
    }
    if wildcard.is_some() && rest.contains(':') {
        return bad("`*.suffix` matches the host whatever the port; leave the port out");
    }
    if let Some(v6) = rest.strip_prefix('[') {
        let Some((ip, after)) = v6.split_once(']') else {
            return bad("`[` without `]`");
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("not an IPv6 address inside `[...]`");
        }
        return match after {
            "" => Ok(()),
            p => match p.strip_prefix(':') {
                Some(port) if valid_port(port) => Ok(()),
                _ => bad("expected `[ipv6]` or `[ipv6]:port`"),
            },
        };
    }
    let (host, port) = match rest.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    if port.is_some_and(|p| !valid_port(p)) {
        return bad("the port must be a number from 1 to 65535 (and IPv6 goes in brackets)");
    }
    if !super::host_labels_ok(host) {
        return bad("expected `host`, `host:port`, `*.suffix` or `*`, with host names made of letters, digits, `-` and dots");
    }
    Ok(())
}

fn valid_port(p: &str) -> bool {
    p.parse::<u16>().is_ok_and(|n| n > 0) && p.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        for ok in [
            "*",
            "inventory",
            "inventory:50051",
            "*.shop.svc",
            "a.b-c.d_e",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert_eq!(check_domain(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "in*ventory",
            "*inventory",
            "inventory.*",
            "a..b",
            "-a",
            "a:0",
            "*.x:80",
            "a:x",
            "a:99999",
            "::1",
            "[::1",
            "a b",
            "*.",
            "**",
        ] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
    }
}
