//! The plans as data, and run against an in-memory nat table that answers
//! as iptables does.

use std::collections::BTreeMap;

use super::*;

const BUILTIN: [&str; 4] = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"];

/// One family's nat table: chain -> rules, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Table(BTreeMap<String, Vec<Vec<String>>>);

impl Table {
    fn new() -> Table {
        Table(
            BUILTIN
                .iter()
                .map(|c| (c.to_string(), Vec::new()))
                .collect(),
        )
    }

    /// `iptables -S`-like lines, for assertions.
    fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (chain, rules) in &self.0 {
            if !BUILTIN.contains(&chain.as_str()) {
                out.push(format!("-N {chain}"));
            }
            for r in rules {
                out.push(format!("-A {chain} {}", r.join(" ")));
            }
        }
        out
    }

    fn referenced(&self, chain: &str) -> bool {
        self.0
            .values()
            .flatten()
            .any(|r| r.windows(2).any(|w| w[0] == "-j" && w[1] == chain))
    }
}

/// A fake `iptables`/`ip6tables`: `-N -F -X -A -C -D -S` on the nat table,
/// with the errors the real one gives for missing or busy chains.
#[derive(Debug)]
struct Fake {
    tables: BTreeMap<&'static str, Table>,
    permitted: bool,
    fail_on_append: Option<String>,
    log: Vec<String>,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            tables: [("iptables", Table::new()), ("ip6tables", Table::new())].into(),
            permitted: true,
            fail_on_append: None,
            log: Vec::new(),
        }
    }

    fn v4(&self) -> Vec<String> {
        self.tables["iptables"].lines()
    }

    fn v6(&self) -> Vec<String> {
        self.tables["ip6tables"].lines()
    }
}

fn ok(stdout: String) -> Result<Outcome, IptablesError> {
    Ok(Outcome {
        success: true,
        stdout,
        stderr: String::new(),
    })
}

fn fail(why: &str) -> Result<Outcome, IptablesError> {
    Ok(Outcome {
        success: false,
        stdout: String::new(),
        stderr: why.into(),
    })
}

impl Runner for Fake {
    fn run(&mut self, program: &str, args: &[String]) -> Result<Outcome, IptablesError> {
        self.log.push(format!("{program} {}", args.join(" ")));
        if !self.permitted {
            return fail("Permission denied (you must be root)");
        }
        let Some(t) = self.tables.get_mut(program) else {
            return Err(IptablesError::Missing {
                program: program.into(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        };
        assert_eq!(&args[..2], ["-t", "nat"], "only the nat table is touched");
        let op = args[2].as_str();
        let chain = args.get(3).cloned().unwrap_or_default();
        let spec: Vec<String> = args.iter().skip(4).cloned().collect();
        let exists = t.0.contains_key(&chain);
        match op {
            "-S" if chain.is_empty() => ok(t.lines().join("\n")),
            "-S" if exists => ok(String::new()),
            "-N" if exists => fail("Chain already exists."),
            "-N" => {
                t.0.insert(chain, Vec::new());
                ok(String::new())
            }
            "-F" if exists => {
                t.0.insert(chain, Vec::new());
                ok(String::new())
            }
            "-X" if exists && !BUILTIN.contains(&chain.as_str()) => {
                if !t.0[&chain].is_empty() || t.referenced(&chain) {
                    return fail("CHAIN_DEL failed (Device or resource busy)");
                }
                t.0.remove(&chain);
                ok(String::new())
            }
            "-A" if exists => {
                if self.fail_on_append.as_deref() == Some(chain.as_str()) {
                    return fail("Invalid argument");
                }
                let target = spec
                    .windows(2)
                    .find(|w| w[0] == "-j")
                    .map(|w| w[1].clone())
                    .unwrap_or_default();
                let known = ["RETURN", "REDIRECT", "ACCEPT"].contains(&target.as_str())
                    || t.0.contains_key(&target);
                if !known {
                    return fail("Couldn't load target");
                }
                if let Some(rules) = t.0.get_mut(&chain) {
                    rules.push(spec);
                }
                ok(String::new())
            }
            "-C" if exists && t.0[&chain].contains(&spec) => ok(String::new()),
            "-D" if exists => {
                let rules = t.0.get_mut(&chain).map(|r| {
                    let at = r.iter().position(|x| *x == spec);
                    at.map(|i| r.remove(i))
                });
                match rules.flatten() {
                    Some(_) => ok(String::new()),
                    None => fail("Bad rule (does a matching rule exist in that chain?)."),
                }
            }
            _ => fail("No chain/target/match by that name."),
        }
    }
}

fn lines(rules: &[Rule]) -> Vec<String> {
    rules.iter().map(Rule::save_line).collect()
}

#[test]
fn default_rules() {
    assert_eq!(
        lines(&chain_rules(&Options::default(), Family::V4)),
        [
            "-A SKIFF_INBOUND -p tcp -m tcp --dport 15000 -j RETURN",
            "-A SKIFF_INBOUND -p tcp -j SKIFF_IN_REDIRECT",
            "-A SKIFF_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-A SKIFF_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A SKIFF_OUTPUT -o lo -j RETURN",
            "-A SKIFF_OUTPUT -p tcp -m tcp --dport 15000 -j RETURN",
            "-A SKIFF_OUTPUT -p tcp -j SKIFF_OUT_REDIRECT",
            "-A SKIFF_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        ]
    );
    assert_eq!(
        lines(&jumps()),
        [
            "-A PREROUTING -p tcp -j SKIFF_INBOUND",
            "-A OUTPUT -p tcp -j SKIFF_OUTPUT"
        ]
    );
}

fn custom() -> Options {
    Options {
        proxy_uid: 2102,
        outbound_port: 4140,
        inbound_port: 4143,
        admin_port: 4191,
        exclude_outbound_ports: vec![3306, 443],
        exclude_inbound_ports: vec![22],
        exclude_outbound_cidrs: vec![
            "169.254.169.254".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
            "10.96.0.0/12".parse().unwrap(),
        ],
        ipv6: true,
    }
}

#[test]
fn options_shape_the_rules_per_family() {
    let v4 = lines(&chain_rules(&custom(), Family::V4));
    assert_eq!(
        v4,
        [
            "-A SKIFF_INBOUND -p tcp -m tcp --dport 4191 -j RETURN",
            "-A SKIFF_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
            "-A SKIFF_INBOUND -p tcp -j SKIFF_IN_REDIRECT",
            "-A SKIFF_IN_REDIRECT -p tcp -j REDIRECT --to-ports 4143",
            "-A SKIFF_OUTPUT -m owner --uid-owner 2102 -j RETURN",
            "-A SKIFF_OUTPUT -o lo -j RETURN",
            "-A SKIFF_OUTPUT -p tcp -m tcp --dport 4191 -j RETURN",
            "-A SKIFF_OUTPUT -p tcp -m tcp --dport 3306 -j RETURN",
            "-A SKIFF_OUTPUT -p tcp -m tcp --dport 443 -j RETURN",
            "-A SKIFF_OUTPUT -d 169.254.169.254/32 -j RETURN",
            "-A SKIFF_OUTPUT -d 10.96.0.0/12 -j RETURN",
            "-A SKIFF_OUTPUT -p tcp -j SKIFF_OUT_REDIRECT",
            "-A SKIFF_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 4140",
        ]
    );
    let v6 = lines(&chain_rules(&custom(), Family::V6));
    assert!(v6.contains(&"-A SKIFF_OUTPUT -d fd00::/8 -j RETURN".to_string()));
    assert!(!v6.iter().any(|l| l.contains("10.96.0.0")), "{v6:?}");
    assert!(!v4.iter().any(|l| l.contains("fd00")), "{v4:?}");

    let plan = install_plan(&custom()).unwrap();
    assert!(plan.iter().any(|s| s.shell().starts_with("ip6tables ")));
    let plan = install_plan(&Options::default()).unwrap();
    assert!(plan.iter().all(|s| s.shell().starts_with("iptables ")));
}

#[test]
fn cidrs_are_normalised() {
    let cases = [
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("10.0.0.1", "10.0.0.1/32"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        (" 192.168.7.9/24 ", "192.168.7.0/24"),
        ("fd00::1/8", "fd00::/8"),
        ("::1", "::1/128"),
    ];
    for (given, want) in cases {
        assert_eq!(given.parse::<Cidr>().unwrap().to_string(), want, "{given}");
    }
    for bad in [
        "",
        "10.0.0.0/33",
        "fd00::/129",
        "10.0.0/8",
        "host.example/8",
        "10.0.0.0/x",
    ] {
        assert!(bad.parse::<Cidr>().is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn bad_options_are_all_reported() {
    let o = Options {
        outbound_port: 15000,
        inbound_port: 0,
        exclude_outbound_ports: vec![0],
        exclude_outbound_cidrs: vec!["fd00::/8".parse().unwrap()],
        ..Options::default()
    };
    let err = install_plan(&o).unwrap_err().to_string();
    for want in [
        "--inbound-port must not be 0",
        "--outbound-port and --admin-port are both 15000",
        "--exclude-outbound-ports: port 0",
        "fd00::/8 is IPv6: add --ipv6",
    ] {
        assert!(err.contains(want), "{want:?} missing from:\n{err}");
    }
    let o = Options {
        exclude_inbound_ports: vec![15006],
        ..Options::default()
    };
    assert!(install_plan(&o).is_err());
}

#[test]
fn install_twice_changes_nothing() {
    let mut fake = Fake::new();
    // Someone else's rule in OUTPUT stays where it is.
    fake.tables
        .get_mut("iptables")
        .unwrap()
        .0
        .get_mut("OUTPUT")
        .unwrap()
        .push(vec![
            "-d".into(),
            "192.0.2.1/32".into(),
            "-j".into(),
            "ACCEPT".into(),
        ]);
    let plan = install_plan(&Options::default()).unwrap();
    apply(&plan, &mut fake).unwrap();
    let once = fake.v4();
    let want: Vec<String> = CHAINS
        .iter()
        .map(|c| format!("-N {c}"))
        .chain(lines(&chain_rules(&Options::default(), Family::V4)))
        .chain(lines(&jumps()))
        .collect();
    for w in &want {
        assert_eq!(
            once.iter().filter(|l| *l == w).count(),
            1,
            "{w} in {once:#?}"
        );
    }
    assert!(once.contains(&"-A OUTPUT -d 192.0.2.1/32 -j ACCEPT".to_string()));

    fake.log.clear();
    apply(&plan, &mut fake).unwrap();
    assert_eq!(fake.v4(), once, "a second run changed the table");
    assert!(
        !fake
            .log
            .iter()
            .any(|c| c.contains("-A PREROUTING") || c.contains("-A OUTPUT")),
        "the jumps were appended again: {:#?}",
        fake.log
    );
    assert!(
        fake.v6().iter().all(|l| !l.contains("SKIFF")),
        "no --ipv6, no ip6tables"
    );
}

#[test]
fn a_new_run_replaces_the_old_rules() {
    let mut fake = Fake::new();
    apply(&install_plan(&custom()).unwrap(), &mut fake).unwrap();
    assert!(fake
        .v6()
        .contains(&"-A SKIFF_OUTPUT -d fd00::/8 -j RETURN".to_string()));
    let o = Options {
        ipv6: true,
        ..Options::default()
    };
    apply(&install_plan(&o).unwrap(), &mut fake).unwrap();
    let v4 = fake.v4();
    assert!(
        !v4.iter().any(|l| l.contains("3306") || l.contains("4140")),
        "{v4:#?}"
    );
    for rule in lines(&chain_rules(&o, Family::V4)) {
        assert!(v4.contains(&rule), "{rule} missing");
    }
}

#[test]
fn clean_removes_everything_and_may_run_again() {
    let mut fake = Fake::new();
    let before = (fake.v4(), fake.v6());
    apply(&install_plan(&custom()).unwrap(), &mut fake).unwrap();
    // A jump added twice by hand goes too.
    let dup = jumps()[1].clone();
    apply(&[Step::Append(Family::V4, dup)], &mut fake).unwrap();

    let plan = clean_plan(&custom());
    apply(&plan, &mut fake).unwrap();
    verify_clean(&custom().families(), &mut fake).unwrap();
    assert_eq!((fake.v4(), fake.v6()), before);

    apply(&plan, &mut fake).unwrap();
    verify_clean(&custom().families(), &mut fake).unwrap();
}

#[test]
fn leftovers_after_clean_are_an_error() {
    let mut fake = Fake::new();
    apply(&install_plan(&Options::default()).unwrap(), &mut fake).unwrap();
    let err = verify_clean(&[Family::V4], &mut fake)
        .unwrap_err()
        .to_string();
    assert!(err.contains("-N SKIFF_INBOUND"), "{err}");
}

#[test]
fn dry_run_lines_are_shell() {
    let plan = install_plan(&Options::default()).unwrap();
    let text: Vec<String> = plan.iter().map(Step::shell).collect();
    assert_eq!(
        text[0],
        "iptables -t nat -N SKIFF_INBOUND 2>/dev/null || iptables -t nat -F SKIFF_INBOUND"
    );
    assert!(text.contains(
        &"iptables -t nat -A SKIFF_OUTPUT -m owner --uid-owner 1337 -j RETURN".to_string()
    ));
    assert_eq!(
        text.last().unwrap(),
        "iptables -t nat -C OUTPUT -p tcp -j SKIFF_OUTPUT 2>/dev/null || iptables -t nat -A OUTPUT -p tcp -j SKIFF_OUTPUT"
    );
    let clean: Vec<String> = clean_plan(&Options::default())
        .iter()
        .map(Step::shell)
        .collect();
    assert_eq!(
        clean[0],
        "while iptables -t nat -D PREROUTING -p tcp -j SKIFF_INBOUND 2>/dev/null; do :; done"
    );
    assert_eq!(
        clean.last().unwrap(),
        "iptables -t nat -X SKIFF_OUT_REDIRECT 2>/dev/null || true"
    );
}

#[test]
fn without_privilege_the_error_says_what_is_needed() {
    let mut fake = Fake::new();
    fake.permitted = false;
    let err = preflight(&[Family::V4], &mut fake).unwrap_err().to_string();
    assert!(err.contains("CAP_NET_ADMIN"), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
}

#[test]
fn the_first_failure_stops_the_run() {
    let mut fake = Fake::new();
    fake.fail_on_append = Some(OUTPUT.into());
    let err = apply(&install_plan(&Options::default()).unwrap(), &mut fake)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "`iptables -t nat -A SKIFF_OUTPUT -m owner --uid-owner 1337 -j RETURN` failed"
        ),
        "{err}"
    );
    assert!(
        !fake.v4().iter().any(|l| l.starts_with("-A OUTPUT")),
        "no jump after a failure"
    );
}

#[test]
fn a_missing_program_is_named() {
    let mut fake = Fake::new();
    fake.tables.remove("ip6tables");
    let err = preflight(&[Family::V4, Family::V6], &mut fake)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`ip6tables`") && err.contains("iptables package"),
        "{err}"
    );
}
