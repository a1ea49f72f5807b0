//! `shop` with no subcommand: start the whole shop as separate processes on
//! loopback ports, wait until every piece is ready, drive orders until
//! Ctrl-C (or `--requests N`), print the summary, and stop everything.
//!
//! The processes, each with its log in `<dir>/logs/`:
//!
//! - `shop catalog|inventory|payment|order`, two replicas each;
//! - one `skiff run` per replica, its sidecar (`config/<service>.yaml`);
//! - one `skiff run` as the gateway (`config/gateway.yaml`), which the
//!   driver calls.
//!
//! The configs are the files in `config/`, unchanged: each names its
//! addresses as `${VAR:-default}`, and the launcher sets the variables,
//! `TLS_DIR` included: where it minted the CA, the SVIDs, the edge
//! certificate and the JWK Set (mint.rs) before starting anything.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use tokio::sync::watch;

use crate::driver::{self, Stats};
use crate::pb::health::health_check_response::ServingStatus;
use crate::pb::health::health_client::HealthClient;
use crate::pb::health::HealthCheckRequest;
use crate::rogues::{self, Rogues};
use crate::{common, mint, report};

/// The launcher's flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Place this many orders, print the summary and stop; exit 0 only when
    /// every order ended consistent. Without it: until Ctrl-C.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Orders in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Orders started per second, at most (0: as fast as the shoppers go).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// While orders flow: SIGKILL one inventory replica and bring it back,
    /// make one payment replica slow and flaky, and run the clients the
    /// shop must turn away: one that floods the gateway (429), one without
    /// a valid token (401), a mesh workload calling a service it may not
    /// (403).
    #[arg(long)]
    pub chaos: bool,
    /// The skiff binary. Default: `skiff` beside this binary (built there
    /// first when the launcher runs under `cargo run`).
    #[arg(long, env = "SKIFF_BIN")]
    pub skiff: Option<PathBuf>,
    /// Where the logs and databases go. Default: a new directory in $TMPDIR.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Use the fixed ports of config/order.yaml's comment instead of free
    /// ones (handy for curl; only one shop at a time then).
    #[arg(long)]
    pub fixed_ports: bool,
    /// The sidecar and gateway configs.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/config"))]
    pub config_dir: PathBuf,
    /// How long packing, shipping and delivery of an order each take.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub step: Duration,
    /// How long to wait for every process to be ready.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub ready_timeout: Duration,
}

/// The four services, in the order of their number in the fixed layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Svc {
    Order,
    Catalog,
    Inventory,
    Payment,
}

impl Svc {
    pub const ALL: [Svc; 4] = [Svc::Order, Svc::Catalog, Svc::Inventory, Svc::Payment];

    pub fn name(self) -> &'static str {
        match self {
            Svc::Order => "order",
            Svc::Catalog => "catalog",
            Svc::Inventory => "inventory",
            Svc::Payment => "payment",
        }
    }

    /// `n` of the fixed layout (config/order.yaml).
    fn n(self) -> u16 {
        self as u16 + 1
    }
}

/// How many replicas each service has.
pub const REPLICAS: u8 = 2;

/// One replica's addresses.
#[derive(Clone, Debug)]
pub struct Replica {
    pub svc: Svc,
    /// 1 or 2.
    pub r: u8,
    pub app: SocketAddr,
    pub admin: SocketAddr,
    pub inbound: SocketAddr,
    /// The order replicas' sidecars only.
    pub outbound: Option<SocketAddr>,
}

impl Replica {
    pub fn name(&self) -> String {
        format!("{}-{}", self.svc.name(), self.r)
    }
}

/// Every address of the shop.
#[derive(Clone, Debug)]
pub struct Layout {
    pub replicas: Vec<Replica>,
    pub gateway_admin: SocketAddr,
    pub gateway_edge: SocketAddr,
}

/// Hands out loopback ports: the fixed layout's, or free ones (each held
/// open until all are chosen, so none is handed out twice).
struct Ports {
    fixed: bool,
    held: Vec<TcpListener>,
}

impl Ports {
    fn take(&mut self, fixed: u16) -> anyhow::Result<SocketAddr> {
        if self.fixed {
            return Ok(SocketAddr::from(([127, 0, 0, 1], fixed)));
        }
        let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
        let addr = l.local_addr()?;
        self.held.push(l);
        Ok(addr)
    }
}

impl Layout {
    fn new(fixed: bool) -> anyhow::Result<Layout> {
        let mut ports = Ports {
            fixed,
            held: Vec::new(),
        };
        let mut replicas = Vec::new();
        for svc in Svc::ALL {
            let n = svc.n();
            for r in 1..=REPLICAS {
                let r16 = u16::from(r);
                replicas.push(Replica {
                    svc,
                    r,
                    app: ports.take(50000 + n * 100 + 50 + r16)?,
                    admin: ports.take(15000 + n * 100 + r16)?,
                    inbound: ports.take(15000 + n * 100 + 60 + r16)?,
                    outbound: match svc {
                        Svc::Order => Some(ports.take(15000 + n * 100 + 10 + r16)?),
                        _ => None,
                    },
                });
            }
        }
        Ok(Layout {
            replicas,
            gateway_admin: ports.take(15501)?,
            gateway_edge: ports.take(15561)?,
        })
    }

    /// The replicas of `svc`.
    pub fn of(&self, svc: Svc) -> impl Iterator<Item = &Replica> {
        self.replicas.iter().filter(move |r| r.svc == svc)
    }

    /// `CATALOG_1=...`, `CATALOG_2=...`, ...: every replica's inbound
    /// sidecar, for the clusters of the sidecars and the gateway.
    fn endpoint_env(&self) -> Vec<(String, String)> {
        self.replicas
            .iter()
            .map(|r| {
                (
                    format!("{}_{}", r.svc.name().to_uppercase(), r.r),
                    r.inbound.to_string(),
                )
            })
            .collect()
    }
}

/// The workloads that get an SVID: the four services and the gateway.
const WORKLOADS: [&str; 5] = ["order", "catalog", "inventory", "payment", "gateway"];

/// The shop's credentials (see [`mint`](crate::mint)): `<dir>/tls`, which
/// every Skiff gets as `TLS_DIR` (see [`Shop::sidecar`]) for the configs'
/// `tls:` and `jwt.jwks` files, and the keys that sign the shoppers' tokens
/// (see driver::Shopper).
pub struct Identities {
    pub minted: mint::Minted,
}

/// Mint the CA, the SVIDs, the edge certificate and the JWT signing key
/// into `<dir>/tls`.
fn mint(dir: &Path) -> anyhow::Result<Identities> {
    let minted = mint::mint(dir, &WORKLOADS).context("minting the shop's certificates")?;
    Ok(Identities { minted })
}

/// A child process of the launcher and how to start it again.
pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Its stderr (and stdout, for an app).
    log: PathBuf,
    /// A sidecar's stdout: its access log.
    access_log: Option<PathBuf>,
    child: Option<Child>,
}

fn append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

impl Proc {
    fn start(&mut self) -> anyhow::Result<()> {
        let log = append(&self.log)?;
        let stdout = match &self.access_log {
            Some(path) => append(path)?,
            None => log.try_clone()?,
        };
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            // Its own process group, so that a Ctrl-C in the terminal
            // reaches the launcher only: it stops the shop in order and
            // still reads the metrics for the summary.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; the closure touches nothing
        // else between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Should the launcher die without cleaning up (SIGKILL),
                // the children go with it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        // Noted, so a test can check that nothing is left running.
        if let Some(dir) = self.log.parent().and_then(Path::parent) {
            let mut pids = append(&dir.join("pids"))?;
            writeln!(pids, "{} {}", self.name, child.id())?;
        }
        self.child = Some(child);
        Ok(())
    }

    /// Still running?
    fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            if let Ok(pid) = libc::pid_t::try_from(c.id()) {
                // SAFETY: kill(2) on our own child's pid, which we have not
                // yet reaped, so it cannot be another process.
                unsafe {
                    libc::kill(pid, sig);
                }
            }
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// The last lines of its log.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// SIGTERM every process in `procs`, wait up to `grace` for all, SIGKILL
/// the rest; every child is reaped.
fn stop_all(procs: &mut [&mut Proc], grace: Duration) {
    for p in procs.iter() {
        p.signal(libc::SIGTERM);
    }
    let until = Instant::now() + grace;
    while Instant::now() < until && procs.iter_mut().any(|p| p.alive()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in procs.iter_mut() {
        if p.alive() {
            common::log(format_args!(
                "{} did not stop in {grace:?}: SIGKILL",
                p.name
            ));
        }
        p.kill();
    }
}

/// The running shop. Dropping it stops every process, also on a panic.
pub struct Shop {
    pub layout: Layout,
    pub dir: PathBuf,
    pub skiff: PathBuf,
    pub apps: BTreeMap<String, Proc>,
    pub sidecars: BTreeMap<String, Proc>,
    pub identities: Identities,
    config_dir: PathBuf,
    args_step: Duration,
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shop {
    /// Stop everything: the gateway and the apps first, so that no call
    /// is left without its sidecar, then the sidecars.
    pub fn stop(&mut self) {
        let gateway = self.sidecars.remove("gateway");
        let mut first: Vec<&mut Proc> = self.apps.values_mut().collect();
        let mut gateway = gateway;
        if let Some(g) = gateway.as_mut() {
            first.push(g);
        }
        stop_all(&mut first, Duration::from_secs(5));
        let mut rest: Vec<&mut Proc> = self.sidecars.values_mut().collect();
        stop_all(&mut rest, Duration::from_secs(5));
    }

    fn data(&self, file: &str) -> String {
        self.dir.join("data").join(file).display().to_string()
    }

    /// The app process of `replica`, with `extra` flags.
    fn app(&self, replica: &Replica, extra: &[&str]) -> anyhow::Result<Proc> {
        let exe = std::env::current_exe().context("finding this binary")?;
        let mut args = vec![
            replica.svc.name().to_string(),
            "--addr".into(),
            replica.app.to_string(),
        ];
        match replica.svc {
            Svc::Catalog => {}
            Svc::Inventory => args.extend(["--db".into(), self.data("inventory.db")]),
            Svc::Payment => args.extend(["--db".into(), self.data("payment.db")]),
            Svc::Order => {
                let outbound = replica.outbound.context("order without outbound")?;
                args.extend([
                    "--db".into(),
                    self.data("order.db"),
                    "--outbound".into(),
                    outbound.to_string(),
                    "--step".into(),
                    humantime::format_duration(self.args_step).to_string(),
                ]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let name = replica.name();
        Ok(Proc {
            log: self.dir.join("logs").join(format!("{name}.log")),
            access_log: None,
            name,
            program: exe,
            args,
            env: Vec::new(),
            child: None,
        })
    }

    /// A `skiff run` of `config` with `env`.
    fn sidecar(&self, name: String, config: &str, mut env: Vec<(String, String)>) -> Proc {
        env.extend(self.layout.endpoint_env());
        env.push((
            "TLS_DIR".into(),
            self.identities.minted.dir.display().to_string(),
        ));
        let config = self.config_dir.join(config);
        Proc {
            log: self.dir.join("logs").join(format!("{name}-skiff.log")),
            access_log: Some(self.dir.join("logs").join(format!("{name}-access.log"))),
            name,
            program: self.skiff.clone(),
            args: vec![
                "run".into(),
                "--config".into(),
                config.display().to_string(),
            ],
            env,
            child: None,
        }
    }

    /// Start `name` again (an app), with `extra` flags.
    pub fn restart_app(&mut self, name: &str, extra: &[&str]) -> anyhow::Result<()> {
        let replica = self
            .layout
            .replicas
            .iter()
            .find(|r| r.name() == name)
            .cloned()
            .with_context(|| format!("no replica {name}"))?;
        if let Some(p) = self.apps.get_mut(name) {
            stop_all(&mut [p], Duration::from_secs(5));
        }
        let mut p = self.app(&replica, extra)?;
        p.start()?;
        self.apps.insert(name.to_string(), p);
        Ok(())
    }

    /// SIGKILL the app `name`.
    pub fn kill_app(&mut self, name: &str) {
        if let Some(p) = self.apps.get_mut(name) {
            p.kill();
        }
    }

    /// Start `name`'s app again after a kill, as it was.
    pub fn revive_app(&mut self, name: &str) -> anyhow::Result<()> {
        match self.apps.get_mut(name) {
            Some(p) => p.start(),
            None => bail!("no app {name}"),
        }
    }
}

/// The skiff binary: `--skiff`, or `skiff` beside this binary. Under
/// `cargo run` (Cargo sets `CARGO`), `cargo build --bin skiff` first, with
/// this binary's profile: a no-op when it is up to date, the build of the
/// proxy on a fresh clone. (Cargo cannot make another package's binary a
/// build input on stable, so the launcher asks for it, like an xtask.)
fn find_skiff(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("finding this binary")?;
    let dir = exe.parent().context("this binary's directory")?;
    let beside = dir.join("skiff");
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--package",
            "skiff",
            "--bin",
            "skiff",
            "--manifest-path",
        ])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"));
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("release") => {
                cmd.arg("--release");
            }
            Some("debug") => {}
            Some(profile) => {
                cmd.args(["--profile", profile]);
            }
            None => {}
        }
        common::log(format_args!(
            "shop: building skiff, the proxy (a few minutes the first time): {cmd:?}"
        ));
        let status = cmd.status().context("running cargo build")?;
        if !status.success() {
            bail!("cargo build of skiff failed ({status})");
        }
    }
    if beside.exists() {
        return Ok(beside);
    }
    bail!(
        "no skiff binary at {}: build it with `cargo build --release --bin skiff`, \
         or name one with --skiff or SKIFF_BIN",
        beside.display()
    )
}

/// A fresh directory for this run's logs and databases.
fn run_dir(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = match arg {
        Some(d) => d,
        None => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            std::env::temp_dir().join(format!("skiff-shop-{}-{nanos:08x}", std::process::id()))
        }
    };
    for sub in ["logs", "data"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("making {}", dir.join(sub).display()))?;
    }
    Ok(dir)
}

/// GET `path` from `addr` over HTTP/1.1: the status and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(3), fetch)
        .await
        .with_context(|| format!("GET http://{addr}{path}: no answer in 3s"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET http://{addr}{path}: not HTTP"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// A chunked body, unchunked.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Whether the app at `addr` answers grpc.health.v1 with SERVING.
async fn serving(addr: SocketAddr) -> bool {
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        anyhow::Ok(answer.into_inner().status() == ServingStatus::Serving)
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), check).await,
        Ok(Ok(true))
    )
}

/// Wait until every app is SERVING and every Skiff says `/ready`.
async fn wait_ready(shop: &mut Shop, timeout: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + timeout;
    let mut apps: Vec<(String, SocketAddr)> = shop
        .layout
        .replicas
        .iter()
        .map(|r| (r.name(), r.app))
        .collect();
    let mut admins: Vec<(String, SocketAddr)> = shop
        .layout
        .replicas
        .iter()
        .map(|r| (r.name(), r.admin))
        .collect();
    admins.push(("gateway".into(), shop.layout.gateway_admin));
    loop {
        let mut not_yet = Vec::new();
        for (name, addr) in &apps {
            if !serving(*addr).await {
                not_yet.push((name.clone(), *addr));
            }
        }
        apps = not_yet;
        let mut not_yet = Vec::new();
        for (name, addr) in &admins {
            if !matches!(http_get(*addr, "/ready").await, Ok((200, _))) {
                not_yet.push((name.clone(), *addr));
            }
        }
        admins = not_yet;
        if apps.is_empty() && admins.is_empty() {
            return Ok(());
        }
        for p in shop.apps.values_mut().chain(shop.sidecars.values_mut()) {
            if !p.alive() {
                bail!("{} exited at start; its log:\n{}", p.name, p.tail());
            }
        }
        if Instant::now() > until {
            let names: Vec<String> = apps
                .iter()
                .map(|(n, _)| format!("{n} (app)"))
                .chain(admins.iter().map(|(n, _)| format!("{n} (skiff)")))
                .collect();
            bail!(
                "not ready after {timeout:?}: {}; logs in {}",
                names.join(", "),
                shop.dir.join("logs").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Start every process of the shop.
async fn start(args: &Args) -> anyhow::Result<Shop> {
    let skiff = find_skiff(args.skiff.clone())?;
    let dir = run_dir(args.dir.clone())?;
    let identities = mint(&dir)?;
    let layout = Layout::new(args.fixed_ports)?;
    let mut shop = Shop {
        layout,
        dir,
        skiff,
        apps: BTreeMap::new(),
        sidecars: BTreeMap::new(),
        identities,
        config_dir: args.config_dir.clone(),
        args_step: args.step,
    };
    for replica in shop.layout.replicas.clone() {
        let app = shop.app(&replica, &[])?;
        shop.apps.insert(replica.name(), app);
        let mut env = vec![
            ("ADMIN_ADDR".to_string(), replica.admin.to_string()),
            ("INBOUND_ADDR".to_string(), replica.inbound.to_string()),
            ("APP_ADDR".to_string(), replica.app.to_string()),
        ];
        if let Some(out) = replica.outbound {
            env.push(("OUTBOUND_ADDR".to_string(), out.to_string()));
        }
        let config = format!("{}.yaml", replica.svc.name());
        let sidecar = shop.sidecar(replica.name(), &config, env);
        shop.sidecars.insert(replica.name(), sidecar);
    }
    let env = vec![
        (
            "ADMIN_ADDR".to_string(),
            shop.layout.gateway_admin.to_string(),
        ),
        (
            "EDGE_ADDR".to_string(),
            shop.layout.gateway_edge.to_string(),
        ),
    ];
    let gateway = shop.sidecar("gateway".into(), "gateway.yaml", env);
    shop.sidecars.insert("gateway".into(), gateway);

    // The apps first, each database made by the first of its replicas.
    for svc in Svc::ALL {
        for r in 1..=REPLICAS {
            let name = format!("{}-{r}", svc.name());
            if let Some(p) = shop.apps.get_mut(&name) {
                p.start()?;
            }
        }
    }
    for p in shop.sidecars.values_mut() {
        p.start()?;
    }
    wait_ready(&mut shop, args.ready_timeout).await?;
    Ok(shop)
}

/// What `--chaos` does, and when: at a share of `--requests` (or, without
/// it, after so many orders), and no sooner than so long after the step
/// before, so that the shop runs a while with the replica down.
const CHAOS: &[(f64, u64, Duration, Chaos)] = &[
    (0.1, 50, Duration::ZERO, Chaos::Flood),
    (0.15, 75, Duration::ZERO, Chaos::Anonymous),
    (0.2, 100, Duration::ZERO, Chaos::KillInventory),
    (0.3, 150, Duration::ZERO, Chaos::FlakyPayment),
    (0.4, 200, Duration::ZERO, Chaos::Intruder),
    (0.55, 250, Duration::from_secs(1), Chaos::ReviveInventory),
];

#[derive(Clone, Copy, Debug)]
enum Chaos {
    KillInventory,
    FlakyPayment,
    ReviveInventory,
    /// A user who floods the gateway past its `rate_limit` (429s).
    Flood,
    /// A client with no token, a forged one or an expired one (401s).
    Anonymous,
    /// A mesh workload (catalog's SVID) calling payment, which only order
    /// may call (403s).
    Intruder,
}

/// The flags the flaky payment replica restarts with.
const FLAKY_PAYMENT: &[&str] = &["--latency", "150ms", "--failure-rate", "0.3"];

/// Calls of each rogue client.
const FLOOD_CALLS: u64 = 300;
const ANONYMOUS_CALLS: u64 = 30;
const INTRUDER_CALLS: u64 = 10;

/// What the chaos steps need besides the shop: where the shoppers go, who
/// the first paid order is, and the rogue clients' tasks and tallies.
struct ChaosRun {
    edge: driver::Edge,
    stats: Arc<Stats>,
    rogues: Arc<Rogues>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn do_chaos(shop: &mut Shop, what: Chaos, run: &mut ChaosRun) -> anyhow::Result<String> {
    let minted = &shop.identities.minted;
    Ok(match what {
        Chaos::KillInventory => {
            shop.kill_app("inventory-1");
            "SIGKILL inventory-1".to_string()
        }
        Chaos::FlakyPayment => {
            shop.restart_app("payment-2", FLAKY_PAYMENT)?;
            format!("payment-2 restarted with {}", FLAKY_PAYMENT.join(" "))
        }
        Chaos::ReviveInventory => {
            shop.revive_app("inventory-1")?;
            "inventory-1 started again".to_string()
        }
        Chaos::Flood => {
            let user = driver::Shopper {
                token: Some(minted.signer.token("flooder", TOKEN_TTL)?.into()),
            };
            let order = run
                .stats
                .first_paid
                .get()
                .cloned()
                .unwrap_or_else(|| "none-yet".into());
            run.tasks.push(tokio::spawn(rogues::flood(
                run.edge.clone(),
                user,
                order,
                FLOOD_CALLS,
                run.rogues.clone(),
            )));
            format!("a user floods the gateway with {FLOOD_CALLS} GetOrder, 8 at a time")
        }
        Chaos::Anonymous => {
            let forged = minted.forger.token("anonymous", TOKEN_TTL)?.into();
            let expired = minted.signer.expired("anonymous")?.into();
            run.tasks.push(tokio::spawn(rogues::anonymous(
                run.edge.clone(),
                forged,
                expired,
                ANONYMOUS_CALLS,
                run.rogues.clone(),
            )));
            format!(
                "a client places {ANONYMOUS_CALLS} orders with no token, a forged one or an expired one"
            )
        }
        Chaos::Intruder => {
            let payment = shop
                .layout
                .of(Svc::Payment)
                .next()
                .map(|r| r.inbound)
                .context("no payment replica")?;
            run.tasks.push(tokio::spawn(rogues::intrude(
                payment,
                minted.ca_pem.clone(),
                minted.svid_pem("catalog")?,
                INTRUDER_CALLS,
                run.rogues.clone(),
            )));
            format!("catalog's SVID calls payment-1's Skiff directly: {INTRUDER_CALLS} Charge")
        }
    })
}

/// How long the shoppers' tokens are valid: longer than any run needs.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// How many shoppers there are, each with a token of its own.
const SHOPPERS: usize = 25;

pub async fn main(args: Args) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut shop = start(&args).await?;
    let procs = shop.apps.len() + shop.sidecars.len();
    eprintln!(
        "shop: up in {:.1?}: {procs} processes — 4 services × {REPLICAS} replicas, a Skiff beside \
         each, and the gateway at {}\nshop: logs and databases in {}",
        started.elapsed(),
        shop.layout.gateway_edge,
        shop.dir.display()
    );
    for r in &shop.layout.replicas {
        eprintln!(
            "  {:<12} app {}  skiff inbound {}{}  admin http://{}",
            r.name(),
            r.app,
            r.inbound,
            r.outbound
                .map(|o| format!("  outbound {o}"))
                .unwrap_or_default(),
            r.admin
        );
    }
    eprintln!(
        "  {:<12} edge https://{}  admin http://{}",
        "gateway", shop.layout.gateway_edge, shop.layout.gateway_admin
    );
    if args.requests.is_none() {
        eprintln!("shop: placing orders until Ctrl-C");
    }

    let stats = Arc::new(Stats::default());
    let edge = driver::Edge {
        addr: shop.layout.gateway_edge,
        // The gateway terminates TLS (`tls.mode: terminate` in
        // config/gateway.yaml) with a certificate from the shop's CA.
        ca_pem: Some(shop.identities.minted.ca_pem.clone()),
    };
    let mut shoppers = Vec::new();
    for n in 0..SHOPPERS {
        let name = format!("shopper-{n}");
        let token = shop.identities.minted.signer.token(&name, TOKEN_TTL)?;
        shoppers.push(driver::Shopper {
            token: Some(token.into()),
        });
    }
    let rogues = Arc::new(Rogues::default());
    let mut chaos_run = ChaosRun {
        edge: edge.clone(),
        stats: stats.clone(),
        rogues: rogues.clone(),
        tasks: Vec::new(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let drive = tokio::spawn(driver::drive(
        edge,
        shoppers,
        args.requests,
        args.concurrency.max(1),
        args.rate,
        stop_rx.clone(),
        stats.clone(),
    ));
    let progress = tokio::spawn(driver::progress(stats.clone(), args.requests, stop_rx));

    let mut chaos_left: Vec<(u64, Duration, Chaos)> = if args.chaos {
        CHAOS
            .iter()
            .map(|&(share, count, gap, what)| {
                let at = match args.requests {
                    Some(n) => ((n as f64) * share) as u64,
                    None => count,
                };
                (at, gap, what)
            })
            .collect()
    } else {
        Vec::new()
    };
    let ctrl_c = common::stop_signal();
    tokio::pin!(ctrl_c);
    let mut drive = drive;
    let mut driven = None;
    let mut last_chaos = Instant::now();
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            r = &mut drive => {
                driven = Some(r);
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let done = stats.done();
        while let Some(&(at, gap, what)) = chaos_left.first() {
            if done < at || last_chaos.elapsed() < gap {
                break;
            }
            chaos_left.remove(0);
            let note = do_chaos(&mut shop, what, &mut chaos_run)?;
            stats.note_chaos(note);
            last_chaos = Instant::now();
        }
    }
    // Steps not reached while orders flowed (a short run) are done now, so
    // that the shop ends whole.
    for (_, _, what) in chaos_left {
        let note = do_chaos(&mut shop, what, &mut chaos_run)?;
        stats.note_chaos(format!("{note} (after the last order)"));
    }
    stop_tx.send_replace(true);
    if driven.is_none() {
        // Ctrl-C: let the orders in flight finish; place no more.
        eprintln!("\nshop: Ctrl-C: finishing the orders in flight");
        driven = tokio::time::timeout(Duration::from_secs(15), &mut drive)
            .await
            .ok();
    }
    let _ = progress.await;
    match driven {
        Some(Ok(Ok(()))) => {}
        Some(Ok(Err(e))) => eprintln!("shop: the driver stopped: {e:#}"),
        Some(Err(e)) => eprintln!("shop: the driver failed: {e}"),
        None => eprintln!("shop: orders still in flight after 15s; checking anyway"),
    }
    // The rogue clients are bounded in calls and time; wait for them, so
    // that the metrics hold all they did.
    for t in chaos_run.tasks.drain(..) {
        let _ = t.await;
    }
    // A watched order may still be moving; the databases are checked
    // once every saga has ended, which the driver waits for.
    let metrics = report::scrape(&shop.layout).await;
    let consistent = report::check(&shop.dir.join("data"), &stats);
    let summary = report::summary(&stats, &rogues, &metrics, &consistent, &shop.layout);
    println!("{summary}");
    shop.stop();
    eprintln!(
        "shop: stopped; logs and databases are in {}",
        shop.dir.display()
    );
    Ok(consistent.ok())
}
