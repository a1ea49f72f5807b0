//! `skiff iptables`: the pod's interception rules, as istio-iptables and
//! linkerd's proxy-init install them.
//!
//! An init container runs this once, as root with NET_ADMIN, before the app
//! and the sidecar start; after it, the app's TCP connections go to the
//! outbound listener and the TCP connections coming into the pod go to the
//! inbound listener, and the app has no idea. Only the `nat` table is
//! touched, and only through chains of our own:
//!
//! ```text
//! PREROUTING -p tcp -> SKIFF_INBOUND                  (connections into the pod)
//!   admin port, --exclude-inbound-ports              RETURN
//!   everything else                                  -> SKIFF_IN_REDIRECT: REDIRECT --to-ports 15006
//! OUTPUT -p tcp -> SKIFF_OUTPUT                       (connections the pod makes)
//!   the proxy's UID                                  RETURN  (its own upstream calls: no loop)
//!   out over lo                                      RETURN  (the app to itself: 127/8, its own pod IPs)
//!   admin port, --exclude-outbound-ports / -cidrs    RETURN
//!   everything else                                  -> SKIFF_OUT_REDIRECT: REDIRECT --to-ports 15001
//! ```
//!
//! The rules are built as data by pure functions ([`install_plan`],
//! [`clean_plan`]) and only then run ([`apply`]), so `--dry-run` prints
//! exactly what a real run does, and the unit tests check the plans and run
//! them against an in-memory table. Running twice changes nothing: our
//! chains are created or flushed, then refilled, and the jumps into them are
//! checked (`-C`) before they are appended.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

mod run;
pub use run::{apply, preflight, verify_clean, Outcome, Runner, System};

/// The inbound entry chain, jumped to from `PREROUTING`.
pub const INBOUND: &str = "SKIFF_INBOUND";
/// Redirects to the inbound listener.
pub const IN_REDIRECT: &str = "SKIFF_IN_REDIRECT";
/// The outbound entry chain, jumped to from `OUTPUT`.
pub const OUTPUT: &str = "SKIFF_OUTPUT";
/// Redirects to the outbound listener.
pub const OUT_REDIRECT: &str = "SKIFF_OUT_REDIRECT";
/// Every chain we own, entry chains first (they refer to the redirect chains).
pub const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTPUT, OUT_REDIRECT];

/// What went wrong while planning or installing the rules.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("{0}")]
    Options(String),
    #[error("cannot run `{program}` ({source}); the image of the init container needs the iptables package")]
    Missing {
        program: String,
        source: std::io::Error,
    },
    #[error("`{program}` may not change the nat table: {message}\nskiff iptables needs root and CAP_NET_ADMIN: in Kubernetes, an init container with runAsUser: 0 and capabilities.add: [NET_ADMIN]")]
    NotPermitted { program: String, message: String },
    #[error("`{command}` failed: {message}")]
    Failed { command: String, message: String },
    #[error("`{program}` still lists our chains after --clean:\n{left}")]
    Leftover { program: String, left: String },
}

/// The IP version a rule set is for: `iptables` or `ip6tables`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The program that edits this family's tables.
    pub fn program(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The `-save` program that lists them.
    pub fn save_program(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }
}

/// An address range such as `10.0.0.0/8` or `fd00::/8`; a bare address is
/// a /32 (/128). Host bits are cleared, as iptables itself does, so the
/// text is the one `iptables-save` prints back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The family the range belongs to.
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or address/prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What to intercept and what to leave alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The UID the proxy runs as; its connections are never redirected.
    pub proxy_uid: u32,
    /// The outbound listener's port.
    pub outbound_port: u16,
    /// The inbound listener's port.
    pub inbound_port: u16,
    /// The admin port: never redirected, either way (probes, scrapes).
    pub admin_port: u16,
    /// Destination ports whose outbound connections go direct.
    pub exclude_outbound_ports: Vec<u16>,
    /// Pod ports whose inbound connections go straight to the app.
    pub exclude_inbound_ports: Vec<u16>,
    /// Destination ranges whose outbound connections go direct.
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Also install the rules for IPv6 (ip6tables).
    pub ipv6: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            proxy_uid: 1337,
            outbound_port: 15001,
            inbound_port: 15006,
            admin_port: 15000,
            exclude_outbound_ports: Vec::new(),
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            ipv6: false,
        }
    }
}

impl Options {
    /// The families to install for: IPv4, and IPv6 with `--ipv6`.
    pub fn families(&self) -> Vec<Family> {
        if self.ipv6 {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }

    /// Every problem with the options, at once.
    pub fn check(&self) -> Result<(), IptablesError> {
        let mut problems = Vec::new();
        let ports = [
            ("--outbound-port", self.outbound_port),
            ("--inbound-port", self.inbound_port),
            ("--admin-port", self.admin_port),
        ];
        for (i, (name, port)) in ports.iter().enumerate() {
            if *port == 0 {
                problems.push(format!("{name} must not be 0"));
            }
            for (other, p) in &ports[..i] {
                if p == port {
                    problems.push(format!("{other} and {name} are both {port}"));
                }
            }
        }
        let excluded = [
            ("--exclude-outbound-ports", &self.exclude_outbound_ports),
            ("--exclude-inbound-ports", &self.exclude_inbound_ports),
        ];
        for (name, list) in excluded {
            if list.contains(&0) {
                problems.push(format!("{name}: port 0 is not a port"));
            }
        }
        if self.exclude_inbound_ports.contains(&self.inbound_port) {
            problems.push(format!(
                "--exclude-inbound-ports holds the inbound port {}",
                self.inbound_port
            ));
        }
        if !self.ipv6 {
            for c in &self.exclude_outbound_cidrs {
                if c.family() == Family::V6 {
                    problems.push(format!(
                        "--exclude-outbound-cidrs {c} is IPv6: add --ipv6 to install IPv6 rules"
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(IptablesError::Options(problems.join("\n")))
        }
    }
}

/// One rule: the chain it is in and its match and target, as iptables
/// takes them after `-A CHAIN` (and as `iptables-save` prints them).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub chain: String,
    pub spec: Vec<String>,
}

impl Rule {
    fn new(chain: &str, spec: &str) -> Rule {
        Rule {
            chain: chain.to_string(),
            spec: spec.split_whitespace().map(str::to_string).collect(),
        }
    }

    /// The line `iptables-save` prints for this rule, e.g.
    /// `-A SKIFF_OUTPUT -o lo -j RETURN`.
    pub fn save_line(&self) -> String {
        format!("-A {} {}", self.chain, self.spec.join(" "))
    }
}

/// The rules inside our chains, in order, for one family. Pure: the same
/// options give the same rules.
pub fn chain_rules(o: &Options, family: Family) -> Vec<Rule> {
    let mut rules = Vec::new();
    let port_return = |chain: &str, port: u16| {
        Rule::new(chain, &format!("-p tcp -m tcp --dport {port} -j RETURN"))
    };

    // Inbound: the admin port stays reachable for kubelet's probes and
    // Prometheus; excluded ports go straight to the app.
    rules.push(port_return(INBOUND, o.admin_port));
    for &p in &o.exclude_inbound_ports {
        rules.push(port_return(INBOUND, p));
    }
    rules.push(Rule::new(INBOUND, &format!("-p tcp -j {IN_REDIRECT}")));
    rules.push(Rule::new(
        IN_REDIRECT,
        &format!("-p tcp -j REDIRECT --to-ports {}", o.inbound_port),
    ));

    // Outbound. The proxy's own connections first: its calls upstream (and
    // to the app, over lo) must leave as they are, or they would loop back
    // into its own listener.
    rules.push(Rule::new(
        OUTPUT,
        &format!("-m owner --uid-owner {} -j RETURN", o.proxy_uid),
    ));
    // The app talking to itself: 127.0.0.0/8, ::1 and the pod's own
    // addresses are all routed out over lo. Such a call is local, not
    // east-west, and the inbound side never sees it either (nat PREROUTING
    // is not consulted again for a connection OUTPUT already saw).
    rules.push(Rule::new(OUTPUT, "-o lo -j RETURN"));
    rules.push(port_return(OUTPUT, o.admin_port));
    for &p in &o.exclude_outbound_ports {
        rules.push(port_return(OUTPUT, p));
    }
    for c in o
        .exclude_outbound_cidrs
        .iter()
        .filter(|c| c.family() == family)
    {
        rules.push(Rule::new(OUTPUT, &format!("-d {c} -j RETURN")));
    }
    rules.push(Rule::new(OUTPUT, &format!("-p tcp -j {OUT_REDIRECT}")));
    rules.push(Rule::new(
        OUT_REDIRECT,
        &format!("-p tcp -j REDIRECT --to-ports {}", o.outbound_port),
    ));
    rules
}

/// The jumps from the built-in chains into ours.
pub fn jumps() -> [Rule; 2] {
    [
        Rule::new("PREROUTING", &format!("-p tcp -j {INBOUND}")),
        Rule::new("OUTPUT", &format!("-p tcp -j {OUTPUT}")),
    ]
}

/// One change to the nat table of one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `-N chain`, or `-F chain` when it exists already.
    CreateOrFlush(Family, String),
    /// `-A rule`.
    Append(Family, Rule),
    /// `-C rule`, then `-A rule` when it is not there.
    AppendOnce(Family, Rule),
    /// `-D rule` until no copy is left.
    DeleteAll(Family, Rule),
    /// `-F chain`; a chain that is not there is fine.
    Flush(Family, String),
    /// `-X chain`; a chain that is not there is fine.
    DeleteChain(Family, String),
}

fn args(op: &str, chain: &str, spec: &[String]) -> Vec<String> {
    let mut a = vec!["-t".into(), "nat".into(), op.into(), chain.into()];
    a.extend(spec.iter().cloned());
    a
}

fn shell(family: Family, args: &[String]) -> String {
    format!("{} {}", family.program(), args.join(" "))
}

impl Step {
    fn family(&self) -> Family {
        match self {
            Step::CreateOrFlush(f, _)
            | Step::Append(f, _)
            | Step::AppendOnce(f, _)
            | Step::DeleteAll(f, _)
            | Step::Flush(f, _)
            | Step::DeleteChain(f, _) => *f,
        }
    }

    /// The step as one line of shell that does exactly what [`apply`] does.
    pub fn shell(&self) -> String {
        let f = self.family();
        match self {
            Step::CreateOrFlush(_, c) => format!(
                "{} 2>/dev/null || {}",
                shell(f, &args("-N", c, &[])),
                shell(f, &args("-F", c, &[]))
            ),
            Step::Append(_, r) => shell(f, &args("-A", &r.chain, &r.spec)),
            Step::AppendOnce(_, r) => format!(
                "{} 2>/dev/null || {}",
                shell(f, &args("-C", &r.chain, &r.spec)),
                shell(f, &args("-A", &r.chain, &r.spec))
            ),
            Step::DeleteAll(_, r) => format!(
                "while {} 2>/dev/null; do :; done",
                shell(f, &args("-D", &r.chain, &r.spec))
            ),
            Step::Flush(_, c) => format!("{} 2>/dev/null || true", shell(f, &args("-F", c, &[]))),
            Step::DeleteChain(_, c) => {
                format!("{} 2>/dev/null || true", shell(f, &args("-X", c, &[])))
            }
        }
    }
}

/// The steps that install the rules: our chains created (or emptied) and
/// filled, then the jumps into them added unless already there.
pub fn install_plan(o: &Options) -> Result<Vec<Step>, IptablesError> {
    o.check()?;
    let mut steps = Vec::new();
    for family in o.families() {
        for chain in CHAINS {
            steps.push(Step::CreateOrFlush(family, chain.into()));
        }
        for rule in chain_rules(o, family) {
            steps.push(Step::Append(family, rule));
        }
        for jump in jumps() {
            steps.push(Step::AppendOnce(family, jump));
        }
    }
    Ok(steps)
}

/// The steps that remove everything [`install_plan`] added: the jumps, then
/// our chains (emptied first, since the entry chains refer to the others).
pub fn clean_plan(o: &Options) -> Vec<Step> {
    let mut steps = Vec::new();
    for family in o.families() {
        for jump in jumps() {
            steps.push(Step::DeleteAll(family, jump));
        }
        for chain in CHAINS {
            steps.push(Step::Flush(family, chain.into()));
        }
        for chain in CHAINS {
            steps.push(Step::DeleteChain(family, chain.into()));
        }
    }
    steps
}

#[cfg(test)]
mod tests;
