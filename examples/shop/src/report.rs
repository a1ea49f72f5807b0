//! The end of a run: what every Skiff's `/metrics` says, whether the three
//! databases agree with each other and with the shoppers, and the summary
//! that puts both in front of a person.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tonic::Code;

use crate::common;
use crate::driver::Stats;
use crate::launcher::{http_get, Layout, Svc};
use crate::rogues::Rogues;

/// One sample of the Prometheus text format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a `/metrics` page (comments and unreadable lines skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `a="x",b="y \"quoted\""` as a map.
fn parse_labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return None,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        labels.insert(key.trim_start_matches(',').to_string(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

/// Every Skiff's samples, by its name (`order-1`, ..., `gateway`).
pub struct Metrics {
    pub by_proxy: BTreeMap<String, Vec<Sample>>,
    /// The Skiffs that did not answer.
    pub missing: Vec<String>,
}

/// Read `/metrics` of every sidecar and the gateway.
pub async fn scrape(layout: &Layout) -> Metrics {
    let mut targets: Vec<(String, SocketAddr)> = layout
        .replicas
        .iter()
        .map(|r| (r.name(), r.admin))
        .collect();
    targets.push(("gateway".into(), layout.gateway_admin));
    let mut m = Metrics {
        by_proxy: BTreeMap::new(),
        missing: Vec::new(),
    };
    for (name, admin) in targets {
        match http_get(admin, "/metrics").await {
            Ok((200, body)) => {
                m.by_proxy.insert(name, parse(&body));
            }
            _ => m.missing.push(name),
        }
    }
    m
}

impl Metrics {
    /// The sum of `name` over the Skiffs `proxies` (a prefix such as
    /// `order-`, or `gateway`) whose labels include `want`.
    fn sum(&self, proxies: &[&str], name: &str, want: &[(&str, &str)]) -> f64 {
        self.samples(proxies, name, want).map(|s| s.value).sum()
    }

    fn samples<'a>(
        &'a self,
        proxies: &'a [&str],
        name: &'a str,
        want: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.by_proxy
            .iter()
            .filter(move |(p, _)| proxies.iter().any(|want| p.starts_with(want)))
            .flat_map(|(_, samples)| samples.iter())
            .filter(move |s| {
                s.name == name
                    && want
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
    }

    /// The `q` quantile of `skiff_request_duration_seconds` over the
    /// matching series, from their buckets merged, as Prometheus'
    /// `histogram_quantile` interpolates it.
    fn quantile(&self, proxies: &[&str], want: &[(&str, &str)], q: f64) -> Option<Duration> {
        let mut buckets: BTreeMap<u64, f64> = BTreeMap::new(); // le in ns -> count
        let mut inf = 0.0;
        for s in self.samples(proxies, "skiff_request_duration_seconds_bucket", want) {
            match s.labels.get("le").map(String::as_str) {
                Some("+Inf") => inf += s.value,
                Some(le) => {
                    if let Ok(le) = le.parse::<f64>() {
                        *buckets.entry((le * 1e9) as u64).or_default() += s.value;
                    }
                }
                None => {}
            }
        }
        histogram_quantile(&buckets, inf, q)
    }
}

/// `buckets`: cumulative counts by upper bound (ns); `total`: the +Inf
/// bucket. Linear within the bucket the rank falls in.
fn histogram_quantile(buckets: &BTreeMap<u64, f64>, total: f64, q: f64) -> Option<Duration> {
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0u64, 0.0f64);
    for (&le, &count) in buckets {
        if count >= rank {
            let in_bucket = count - lower.1;
            let share = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            let ns = lower.0 as f64 + (le - lower.0) as f64 * share;
            return Some(Duration::from_nanos(ns as u64));
        }
        lower = (le, count);
    }
    // Beyond the last finite bucket: say its bound.
    Some(Duration::from_nanos(lower.0))
}

/// Who calls each service, as (Skiff name prefixes, listener).
fn callers(svc: Svc) -> Vec<(&'static str, &'static str)> {
    match svc {
        Svc::Order => vec![("gateway", "gateway")],
        Svc::Catalog => vec![("order-", "outbound"), ("gateway", "gateway")],
        Svc::Inventory | Svc::Payment => vec![("order-", "outbound")],
    }
}

fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) if d < Duration::from_millis(10) => format!("{:.1}ms", d.as_secs_f64() * 1e3),
        Some(d) => format!("{:.0}ms", d.as_secs_f64() * 1e3),
        None => "-".into(),
    }
}

/// The kinds of proxy error that have a column of their own.
const ADMISSION_KINDS: [&str; 3] = ["unauthenticated", "rate_limited", "forbidden"];

/// The table of what the Skiffs saw, one row per service: calls, success,
/// latency, retries and ejections as the callers' Skiffs counted them; the
/// calls the gateway refused (401: no valid token, 429: rate limited, as
/// the gRPC status of its answers to calls for that service); the calls
/// the service's own Skiffs denied (403, `skiff_authz_denied_total`); the
/// mTLS handshakes they accepted (`skiff_tls_handshakes_total`).
fn metrics_table(m: &Metrics, layout: &Layout) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>6} {:>7} {:>7} {:>7} {:>6} {:>6} {:>7} {:>5} {:>5} {:>5} {:>6}  {:<26} served by replica (ok%)",
        "service",
        "calls",
        "ok",
        "p50",
        "p99",
        "tries",
        "retry",
        "ejected",
        "401",
        "429",
        "403",
        "mTLS",
        "skiff errors"
    );
    for svc in Svc::ALL {
        let name = svc.name();
        let (mut calls, mut ok, mut tries, mut retries, mut ejected) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let (mut unauthenticated, mut limited) = (0.0, 0.0);
        let mut latencies: Vec<(Vec<&str>, &str)> = Vec::new();
        let mut errors: BTreeMap<String, f64> = BTreeMap::new();
        for (proxy, listener) in callers(svc) {
            let p = [proxy];
            calls += m.sum(
                &p,
                "skiff_requests_total",
                &[("listener", listener), ("cluster", name)],
            );
            ok += m.sum(
                &p,
                "skiff_requests_total",
                &[
                    ("listener", listener),
                    ("cluster", name),
                    ("grpc_status", "0"),
                ],
            );
            if listener == "gateway" {
                // Refused at the gateway's admission, before any try.
                let refused = |code| {
                    m.sum(
                        &p,
                        "skiff_requests_total",
                        &[
                            ("listener", listener),
                            ("cluster", name),
                            ("grpc_status", code),
                        ],
                    )
                };
                unauthenticated += refused("16");
                limited += refused("8");
            }
            tries += m.sum(&p, "skiff_upstream_attempts_total", &[("cluster", name)]);
            retries += m.sum(&p, "skiff_retries_total", &[("cluster", name)]);
            ejected += m.sum(&p, "skiff_outlier_ejections_total", &[("cluster", name)]);
            latencies.push((vec![proxy], listener));
        }
        // The errors a Skiff made itself (refused connection, timeout, no
        // healthy replica...), counted per listener: by the service's own
        // sidecars, and for order also by the gateway, whose listener takes
        // only order's calls and the catalog's few.
        let mut sources: Vec<(String, &str)> =
            layout.of(svc).map(|r| (r.name(), "inbound")).collect();
        if svc == Svc::Order {
            sources.push(("gateway".into(), "gateway"));
        }
        for (proxy, listener) in &sources {
            let p = [proxy.as_str()];
            for s in m.samples(&p, "skiff_proxy_errors_total", &[("listener", listener)]) {
                if s.value > 0.0 {
                    if let Some(kind) = s
                        .labels
                        .get("kind")
                        .filter(|k| !ADMISSION_KINDS.contains(&k.as_str()))
                    {
                        *errors.entry(kind.clone()).or_default() += s.value;
                    }
                }
            }
        }
        // p50/p99 over every caller's histogram of calls to this service.
        let mut buckets_proxies: Vec<&str> = Vec::new();
        let mut listener = "outbound";
        for (p, l) in &latencies {
            buckets_proxies.extend(p.iter().copied());
            listener = l;
        }
        let (p50, p99) = if latencies.len() == 1 {
            let want = [("listener", listener), ("cluster", name)];
            (
                m.quantile(&buckets_proxies, &want, 0.5),
                m.quantile(&buckets_proxies, &want, 0.99),
            )
        } else {
            let want = [("cluster", name)];
            (
                m.quantile(&buckets_proxies, &want, 0.5),
                m.quantile(&buckets_proxies, &want, 0.99),
            )
        };
        let own: Vec<String> = layout.of(svc).map(|r| r.name()).collect();
        let own: Vec<&str> = own.iter().map(String::as_str).collect();
        let denied = m.sum(&own, "skiff_authz_denied_total", &[]);
        let handshakes = m.sum(
            &own,
            "skiff_tls_handshakes_total",
            &[("side", "inbound"), ("result", "success")],
        );
        let at_gateway = callers(svc).iter().any(|(p, _)| *p == "gateway");
        let gateway_count = |n: f64| {
            if at_gateway {
                format!("{n:.0}")
            } else {
                "-".into()
            }
        };
        let served: Vec<String> = layout
            .of(svc)
            .map(|r| {
                let p = r.name();
                let p = [p.as_str()];
                let all = m.sum(&p, "skiff_requests_total", &[("listener", "inbound")]);
                let good = m.sum(
                    &p,
                    "skiff_requests_total",
                    &[("listener", "inbound"), ("grpc_status", "0")],
                );
                format!("r{} {:.0} ({})", r.r, all, pct(good, all))
            })
            .collect();
        let errors = if errors.is_empty() {
            "-".to_string()
        } else {
            errors
                .iter()
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "{:<10} {:>6.0} {:>7} {:>7} {:>7} {:>6.0} {:>6.0} {:>7.0} {:>5} {:>5} {:>5.0} {:>6.0}  {:<26} {}",
            name,
            calls,
            pct(ok, calls - unauthenticated - limited),
            ms(p50),
            ms(p99),
            tries,
            retries,
            ejected,
            gateway_count(unauthenticated),
            gateway_count(limited),
            denied,
            handshakes,
            errors,
            served.join(", ")
        );
    }
    out
}

fn pct(part: f64, all: f64) -> String {
    if all <= 0.0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * part / all)
    }
}

/// What the databases say, checked.
#[derive(Default)]
pub struct Consistency {
    pub orders: u64,
    pub paid: u64,
    pub failed: u64,
    /// Failed orders by cause (digits blanked, so alike causes group).
    pub causes: BTreeMap<String, u64>,
    /// Every broken rule, one line each.
    pub problems: Vec<String>,
    /// Failures without a cause a person could act on.
    pub unexplained: Vec<String>,
    pub ledger_cents: i64,
    pub paid_cents: i64,
    /// sku -> (starting, left, reserved).
    pub stock: BTreeMap<String, (i64, i64, i64)>,
}

impl Consistency {
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.unexplained.is_empty()
    }
}

/// `FAILED_PRECONDITION: inventory: out of stock: only 1 lamp left` as
/// `FAILED_PRECONDITION: inventory: out of stock: only # lamp left`.
fn cause_key(text: &str) -> String {
    let mut key: String = text
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    // Order ids vary by order; drop what follows "order ".
    if let Some(i) = key.find("order ") {
        key.truncate(i + 6);
        key.push('…');
    }
    let mut s = String::new();
    let mut last_hash = false;
    for c in key.chars() {
        if c == '#' && last_hash {
            continue;
        }
        last_hash = c == '#';
        s.push(c);
    }
    s
}

fn open_ro(path: &Path) -> rusqlite::Result<Connection> {
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    db.busy_timeout(Duration::from_secs(5))?;
    Ok(db)
}

/// Check the databases in `data` against each other and against what the
/// shoppers saw (`stats`).
pub fn check(data: &Path, stats: &Stats) -> Consistency {
    let mut c = Consistency::default();
    if let Err(e) = check_into(data, stats, &mut c) {
        c.problems.push(format!("reading the databases: {e}"));
    }
    c
}

struct OrderRow {
    state: String,
    items: String,
    total: i64,
    failure: String,
    failure_code: i32,
}

fn check_into(data: &Path, stats: &Stats, c: &mut Consistency) -> rusqlite::Result<()> {
    let orders_db = open_ro(&data.join("order.db"))?;
    let inventory = open_ro(&data.join("inventory.db"))?;
    let payment = open_ro(&data.join("payment.db"))?;

    let mut orders: BTreeMap<String, OrderRow> = BTreeMap::new();
    let mut q = orders_db
        .prepare("SELECT order_id, state, items, total_cents, failure, failure_code FROM orders")?;
    let rows = q.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            OrderRow {
                state: r.get(1)?,
                items: r.get(2)?,
                total: r.get(3)?,
                failure: r.get(4)?,
                failure_code: r.get(5)?,
            },
        ))
    })?;
    for row in rows {
        let (id, row) = row?;
        orders.insert(id, row);
    }

    // Inventory: what each order holds, and the stock.
    let mut held: BTreeMap<String, (String, BTreeMap<String, i64>)> = BTreeMap::new();
    let mut q = inventory.prepare(
        "SELECT o.order_id, o.state, r.sku, r.quantity
         FROM orders o LEFT JOIN reservations r ON r.order_id = o.order_id",
    )?;
    let rows = q.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<i64>>(3)?,
        ))
    })?;
    for row in rows {
        let (id, state, sku, quantity) = row?;
        let entry = held.entry(id).or_insert_with(|| (state, BTreeMap::new()));
        if let (Some(sku), Some(q)) = (sku, quantity) {
            entry.1.insert(sku, q);
        }
    }
    let mut q = inventory.prepare(
        "SELECT s.sku, s.starting, s.left,
                COALESCE((SELECT SUM(r.quantity) FROM reservations r JOIN orders o
                          ON o.order_id = r.order_id
                          WHERE r.sku = s.sku AND o.state = 'reserved'), 0)
         FROM stock s",
    )?;
    let rows = q.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?;
    for row in rows {
        let (sku, starting, left, reserved): (String, i64, i64, i64) = row?;
        if left + reserved != starting {
            c.problems.push(format!(
                "stock of {sku}: {left} left + {reserved} reserved != {starting} at the start"
            ));
        }
        c.stock.insert(sku, (starting, left, reserved));
    }

    // Payment: each order's state and net money, and double charges.
    let mut paid: BTreeMap<String, (String, i64)> = BTreeMap::new();
    let mut q = payment.prepare(
        "SELECT p.order_id, p.state,
                COALESCE((SELECT SUM(l.amount_cents) FROM ledger l WHERE l.order_id = p.order_id), 0)
         FROM payments p",
    )?;
    let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))?;
    for row in rows {
        let (id, state, net) = row?;
        paid.insert(id, (state, net));
    }
    c.ledger_cents = payment.query_row(
        "SELECT COALESCE(SUM(amount_cents), 0) FROM ledger",
        [],
        |r| r.get(0),
    )?;
    let mut q = payment.prepare(
        "SELECT order_id, COUNT(*) FROM ledger WHERE kind = 'charge'
         GROUP BY order_id HAVING COUNT(*) > 1",
    )?;
    let twice = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in twice {
        let (id, n) = row?;
        c.problems.push(format!("{id}: charged {n} times"));
    }

    // Each order, in all three.
    for (id, o) in &orders {
        c.orders += 1;
        let inv = held.get(id);
        let pay = paid.get(id);
        match o.state.as_str() {
            "paid" => {
                c.paid += 1;
                c.paid_cents += o.total;
                let want: BTreeMap<String, i64> = crate::order::parse_items(&o.items)
                    .into_iter()
                    .fold(BTreeMap::new(), |mut m, i| {
                        *m.entry(i.sku).or_default() += i64::from(i.quantity);
                        m
                    });
                match inv {
                    Some((state, items)) if state == "reserved" && *items == want => {}
                    other => c.problems.push(format!(
                        "{id}: paid, but inventory holds {other:?} (wanted {want:?})"
                    )),
                }
                match pay {
                    Some((state, net)) if state == "charged" && *net == o.total => {}
                    other => c.problems.push(format!(
                        "{id}: paid {}, but payment has {other:?}",
                        common::dollars(o.total)
                    )),
                }
            }
            "failed" => {
                c.failed += 1;
                if let Some((state, _)) = inv {
                    if state == "reserved" {
                        c.problems
                            .push(format!("{id}: failed, but its stock is still reserved"));
                    }
                }
                if let Some((state, net)) = pay {
                    if state == "charged" || *net != 0 {
                        c.problems.push(format!(
                            "{id}: failed, but payment has {state} with {} kept",
                            common::dollars(*net)
                        ));
                    }
                }
                let code = Code::from_i32(o.failure_code);
                if o.failure.is_empty() || matches!(code, Code::Unknown | Code::Internal) {
                    c.unexplained.push(format!("{id}: {}", o.failure));
                }
                *c.causes.entry(cause_key(&o.failure)).or_default() += 1;
            }
            state => c
                .problems
                .push(format!("{id}: still {state}: its PlaceOrder never ended")),
        }
    }
    if c.ledger_cents != c.paid_cents {
        c.problems.push(format!(
            "the ledger holds {}, the paid orders total {}",
            common::dollars(c.ledger_cents),
            common::dollars(c.paid_cents)
        ));
    }
    // Reservations and payments of orders the order service never noted.
    let known: BTreeSet<&String> = orders.keys().collect();
    for (id, (state, _)) in &held {
        if state == "reserved" && !known.contains(id) {
            c.problems
                .push(format!("{id}: reserved in inventory, unknown to order"));
        }
    }
    for (id, (state, _)) in &paid {
        if state == "charged" && !known.contains(id) {
            c.problems.push(format!("{id}: charged, unknown to order"));
        }
    }

    // What the shoppers were told must be what happened.
    let outcomes = stats.outcomes.lock().map(|o| o.clone()).unwrap_or_default();
    for out in &outcomes {
        let row = orders.get(&out.order_id);
        match (&out.result, row) {
            (Ok(total), Some(o)) if o.state == "paid" && o.total == *total => {}
            (Ok(_), other) => c.problems.push(format!(
                "{}: the shopper was told it was placed; order has {}",
                out.order_id,
                other.map(|o| o.state.as_str()).unwrap_or("nothing")
            )),
            (Err(_), Some(o)) if o.state == "failed" => {}
            (Err((code, msg)), Some(o)) => c.problems.push(format!(
                "{}: the shopper was told {}: {msg}; order has it {}",
                out.order_id,
                common::code_name(*code),
                o.state
            )),
            // Failed before it reached an order replica: the shopper's
            // status is the cause.
            (Err((code, msg)), None) => {
                let text = format!("{}: {msg}", common::code_name(*code));
                if msg.is_empty() || matches!(code, Code::Unknown | Code::Internal) {
                    c.unexplained.push(format!("{}: {text}", out.order_id));
                }
                *c.causes
                    .entry(format!("{} (before reaching order)", cause_key(&text)))
                    .or_default() += 1;
            }
        }
    }
    if let Ok(wrong) = stats.got_wrong.lock() {
        c.problems.extend(wrong.iter().cloned());
    }
    Ok(())
}

/// `missing 10, signature 10` from the samples of `name` by `label`, those
/// above 0, skipping `except`.
fn by_label(
    m: &Metrics,
    proxies: &[&str],
    name: &str,
    want: &[(&str, &str)],
    label: &str,
    except: &str,
) -> String {
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    for s in m.samples(proxies, name, want) {
        if let Some(v) = s.labels.get(label).filter(|v| *v != except) {
            if s.value > 0.0 {
                *counts.entry(v.clone()).or_default() += s.value;
            }
        }
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k} {n:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Who was turned away, and whether every hop inside was mTLS: what the
/// rogue clients of --chaos were told, next to what the Skiffs counted.
fn security(m: &Metrics, rogues: &Rogues, chaos: bool) -> String {
    let mut out = String::new();
    let gw = ["gateway"];
    let unauthenticated = m.sum(&gw, "skiff_authn_denied_total", &[]);
    let reasons = by_label(m, &gw, "skiff_authn_denied_total", &[], "reason", "");
    let limited = m.sum(&gw, "skiff_ratelimited_total", &[]);
    let sidecars = ["order-", "catalog-", "inventory-", "payment-"];
    let denied = m.sum(&sidecars, "skiff_authz_denied_total", &[]);
    let _ = writeln!(
        out,
        "   gateway: {unauthenticated:.0} × 401 unauthenticated{} · {limited:.0} × 429 rate_limited · sidecars: {denied:.0} × 403 forbidden",
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({reasons})")
        },
    );
    if chaos {
        let _ = writeln!(
            out,
            "   the flooder (one user, GetOrder 8 at a time) was told: {}",
            rogues.flooder.text()
        );
        let _ = writeln!(
            out,
            "   the anonymous client (PlaceOrder with no, forged or expired token) was told: {}",
            rogues.anonymous.text()
        );
        let _ = writeln!(
            out,
            "   the intruder (catalog's SVID, Charge at payment-1's Skiff) was told: {}",
            rogues.intruder.text()
        );
    }
    let inbound_ok = m.sum(
        &sidecars,
        "skiff_tls_handshakes_total",
        &[("side", "inbound"), ("result", "success")],
    );
    let inbound_all = m.sum(
        &sidecars,
        "skiff_tls_handshakes_total",
        &[("side", "inbound")],
    );
    let callers = ["order-", "gateway"];
    let outbound_ok = m.sum(
        &callers,
        "skiff_tls_handshakes_total",
        &[("side", "outbound"), ("result", "success")],
    );
    let outbound_all = m.sum(
        &callers,
        "skiff_tls_handshakes_total",
        &[("side", "outbound")],
    );
    let refused = by_label(
        m,
        &sidecars,
        "skiff_tls_handshakes_total",
        &[("side", "inbound")],
        "result",
        "success",
    );
    let failed = by_label(
        m,
        &callers,
        "skiff_tls_handshakes_total",
        &[("side", "outbound")],
        "result",
        "success",
    );
    let _ = writeln!(
        out,
        "   mTLS: the sidecars accepted {inbound_ok:.0} handshakes and refused {:.0}{}; the order sidecars and the gateway made {outbound_ok:.0}, {:.0} failed{}",
        inbound_all - inbound_ok,
        if refused.is_empty() { String::new() } else { format!(" ({refused})") },
        outbound_all - outbound_ok,
        if failed.is_empty() { String::new() } else { format!(" ({failed})") },
    );
    let edge_ok = m.sum(
        &gw,
        "skiff_tls_handshakes_total",
        &[("side", "inbound"), ("result", "success")],
    );
    let edge_all = m.sum(&gw, "skiff_tls_handshakes_total", &[("side", "inbound")]);
    let _ = writeln!(
        out,
        "   edge TLS: the gateway accepted {edge_ok:.0} HTTPS handshakes, {:.0} refused",
        edge_all - edge_ok,
    );
    out
}

/// Whether no rogue client ran (a run without --chaos).
fn rogues_idle(r: &Rogues) -> bool {
    [&r.flooder, &r.anonymous, &r.intruder]
        .iter()
        .all(|t| t.text() == "-")
}

/// The summary: the orders, the consistency check, and the Skiffs' table.
pub fn summary(
    stats: &Stats,
    rogues: &Rogues,
    m: &Metrics,
    c: &Consistency,
    layout: &Layout,
) -> String {
    let mut out = String::new();
    let outcomes = stats.outcomes.lock().map(|o| o.clone()).unwrap_or_default();
    let elapsed = stats
        .elapsed
        .lock()
        .ok()
        .and_then(|e| *e)
        .unwrap_or_else(|| stats.since_start());
    let mut lat: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    lat.sort();
    let at = |q: f64| -> Option<Duration> {
        if lat.is_empty() {
            return None;
        }
        let i = ((lat.len() as f64 - 1.0) * q).round() as usize;
        lat.get(i).copied()
    };
    let ok = stats.ok.load(Ordering::Relaxed);
    let failed = stats.failed.load(Ordering::Relaxed);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "== orders: {} placed in {:.1}s ({:.1}/s): {ok} paid, {failed} failed · latency p50 {} p99 {} max {}",
        ok + failed,
        elapsed.as_secs_f64(),
        (ok + failed) as f64 / elapsed.as_secs_f64().max(0.001),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(lat.last().copied()),
    );
    for (cause, n) in &c.causes {
        let _ = writeln!(out, "   {n:>5} × {cause}");
    }
    if let Ok(chaos) = stats.chaos.lock() {
        for (t, note) in chaos.iter() {
            let _ = writeln!(out, "   chaos at {:>5.1}s: {note}", t.as_secs_f64());
        }
    }
    if let Ok(w) = stats.watched.lock() {
        if !w.is_empty() {
            let _ = writeln!(out, "   WatchOrder of the first order: {}", w.join(" → "));
        }
    }
    let _ = writeln!(
        out,
        "   GetOrder checked on {} orders, from either replica",
        stats.got.load(Ordering::Relaxed)
    );

    let _ = writeln!(
        out,
        "\n== what the Skiffs saw (calls, as their callers' Skiffs counted them)"
    );
    out.push_str(&metrics_table(m, layout));
    if !m.missing.is_empty() {
        let _ = writeln!(out, "   (no /metrics from {})", m.missing.join(", "));
    }
    let _ = writeln!(
        out,
        "   ok = of the calls the gateway let in; tries = tries sent to replicas; retry = tries \
         after the first; ejected = replicas taken out by outlier detection;\n   401, 429 = \
         refused by the gateway (no valid token, rate limited); 403 = denied by the service's \
         own Skiffs (authorization); mTLS = handshakes they accepted;\n   served = calls each \
         replica's own Skiff took in (health checks included); order's p50/p99 include the \
         WatchOrder stream and the calls the gateway refused"
    );

    let _ = writeln!(
        out,
        "\n== who was turned away, and mTLS (gateway: tls terminate + jwt + rate_limit; sidecars: tls strict + authorization)"
    );
    out.push_str(&security(m, rogues, !rogues_idle(rogues)));

    let _ = writeln!(out, "\n== consistency (order.db, inventory.db, payment.db)");
    let stock: Vec<String> = c
        .stock
        .iter()
        .map(|(sku, (s, l, r))| format!("{sku} {l}+{r}={s}"))
        .collect();
    let _ = writeln!(
        out,
        "   {} orders: {} paid, {} failed · stock left+reserved=start: {} · ledger {} = paid orders {}",
        c.orders,
        c.paid,
        c.failed,
        stock.join(", "),
        common::dollars(c.ledger_cents),
        common::dollars(c.paid_cents),
    );
    if c.ok() {
        let _ = writeln!(
            out,
            "   CONSISTENT: every paid order holds its stock and was charged once; every failed \
             order holds nothing and paid nothing; every failure has a cause"
        );
    } else {
        for p in c.problems.iter().take(20) {
            let _ = writeln!(out, "   PROBLEM: {p}");
        }
        for u in c.unexplained.iter().take(20) {
            let _ = writeln!(out, "   UNEXPLAINED: {u}");
        }
        let more = (c.problems.len() + c.unexplained.len()).saturating_sub(40);
        if more > 0 {
            let _ = writeln!(out, "   ... and {more} more");
        }
        let _ = writeln!(out, "   NOT CONSISTENT");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn prometheus_lines_parse() {
        let s = parse(
            "# HELP x y\nskiff_requests_total{listener=\"inbound\",cluster=\"local_app\",status=\"200\",grpc_status=\"0\"} 12\nup 1\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels["cluster"], "local_app");
        assert_eq!(s[0].value, 12.0);
        assert_eq!(s[1].name, "up");
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        // 10 at <= 1ms, 10 more at <= 2ms.
        let b: BTreeMap<u64, f64> = [(1_000_000, 10.0), (2_000_000, 20.0)].into();
        assert_eq!(
            histogram_quantile(&b, 20.0, 0.5),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            histogram_quantile(&b, 20.0, 0.75),
            Some(Duration::from_micros(1500))
        );
        assert_eq!(histogram_quantile(&b, 0.0, 0.5), None);
    }

    #[test]
    fn causes_group_alike_failures() {
        assert_eq!(
            cause_key("FAILED_PRECONDITION: inventory: out of stock: only 1 lamp left, 2 wanted"),
            "FAILED_PRECONDITION: inventory: out of stock: only # lamp left, # wanted"
        );
    }
}
