//! What the hostile-client suites share: the real `skiff` process in front
//! of a backend (its memory read from /proc), and an honest client that
//! keeps making requests on its own connection while an attack runs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::ensure;

use super::http_backend::HttpBackend;
use super::http_client::{http_get, HttpClient, Proto};
use super::process::SkiffProcess;
use super::scratch::ScratchDir;
use super::{metric_value, AbortOnDrop, ProxyConfig};

/// The ceiling on skiff's resident memory while one attack runs: the
/// attacks here are each bounded to a few MB on the wire, and a proxy that
/// buffered what they send (or what they make it answer) would pass this.
pub const RSS_CEILING_KIB: u64 = 100 * 1024;

/// `skiff run` as a child process in front of an [`HttpBackend`], with the
/// listener `main` built by [`ProxyConfig`] and `limits` lines added.
pub struct Skiff {
    pub process: SkiffProcess,
    pub backend: HttpBackend,
    pub addr: SocketAddr,
    peak_kib: AtomicU64,
    _dir: ScratchDir,
}

impl Skiff {
    pub async fn start(upstream: Proto, limits: &[&str]) -> anyhow::Result<Skiff> {
        let backend = HttpBackend::start().await?;
        let mut config = ProxyConfig::upstream(upstream, backend.addr()).timeout(None);
        for l in limits {
            config = config.limit(l);
        }
        Skiff::with_yaml(backend, &config.render()).await
    }

    /// The same, with a config of the test's own (listener `main`).
    pub async fn with_yaml(backend: HttpBackend, yaml: &str) -> anyhow::Result<Skiff> {
        let dir = ScratchDir::new("hostile")?;
        let path = dir.write("skiff.yaml", yaml)?;
        let process =
            tokio::task::spawn_blocking(move || SkiffProcess::start(&path, &["main"])).await??;
        let addr = process.listener("main")?;
        let rss = process.rss_kib()?;
        Ok(Skiff {
            process,
            backend,
            addr,
            peak_kib: AtomicU64::new(rss),
            _dir: dir,
        })
    }

    /// VmRSS now, in KiB; the peak is kept for [`Skiff::assert_rss_bounded`].
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let now = self.process.rss_kib()?;
        self.peak_kib.fetch_max(now, Ordering::Relaxed);
        Ok(now)
    }

    /// Samples VmRSS every 50 ms while `fut` runs.
    pub async fn sampling<T>(&self, fut: impl std::future::Future<Output = T>) -> T {
        let mut fut = std::pin::pin!(fut);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                out = &mut fut => {
                    let _ = self.rss_kib();
                    return out;
                }
                _ = tick.tick() => {
                    let _ = self.rss_kib();
                }
            }
        }
    }

    /// Bound: skiff's VmRSS never went past [`RSS_CEILING_KIB`].
    pub fn assert_rss_bounded(&self, what: &str) -> anyhow::Result<()> {
        let _ = self.rss_kib();
        let peak = self.peak_kib.load(Ordering::Relaxed);
        eprintln!("{what}: skiff VmRSS peak {peak} KiB");
        ensure!(
            peak < RSS_CEILING_KIB,
            "{what}: skiff's VmRSS reached {peak} KiB, over the {RSS_CEILING_KIB} KiB ceiling"
        );
        Ok(())
    }

    /// `name{labels}` from the admin port's `/metrics`, 0 when absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let (status, _, text) = http_get(self.process.admin, "/metrics").await?;
        ensure!(status == 200, "/metrics answered {status}");
        Ok(metric_value(&text, name, labels).unwrap_or(0.0))
    }

    /// GET an admin path: status and body.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let (status, _, body) = http_get(self.process.admin, path).await?;
        Ok((status.as_u16(), body))
    }

    /// The process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.child.0.try_wait(), Ok(None))
    }
}

/// A client making one GET after another on one connection of its own
/// (a new one if that one fails), counting answers and failures.
pub struct Honest {
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    _task: AbortOnDrop,
}

/// What an honest client saw.
#[derive(Debug)]
pub struct Seen {
    pub ok: u64,
    pub failures: Vec<String>,
}

impl Honest {
    /// Starts GETting `path` from `addr` over `proto`.
    pub fn start(addr: SocketAddr, proto: Proto, path: &str) -> Honest {
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let path = path.to_string();
        let task = {
            let (ok, failures, stop) = (ok.clone(), failures.clone(), stop.clone());
            AbortOnDrop::spawn(async move {
                let fail = |what: String| {
                    if let Ok(mut f) = failures.lock() {
                        f.push(what);
                    }
                };
                let mut client: Option<HttpClient> = None;
                while !stop.load(Ordering::Relaxed) {
                    if client.is_none() {
                        match HttpClient::connect(addr, proto).await {
                            Ok(c) => client = Some(c),
                            Err(e) => {
                                fail(format!("connect: {e:#}"));
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        }
                    }
                    let Some(c) = client.as_mut() else {
                        continue;
                    };
                    match c.get(&path).await {
                        Ok((parts, body)) if parts.status == 200 && body.text() == "ok" => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((parts, body)) => {
                            fail(format!("{} {}", parts.status, body.text()));
                        }
                        Err(e) => {
                            fail(format!("{e:#}"));
                            client = None;
                        }
                    }
                }
            })
        };
        Honest {
            ok,
            failures,
            stop,
            _task: task,
        }
    }

    /// Answers so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops it; what it saw.
    pub async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        // Let a request in flight end.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Seen {
            ok: self.ok(),
            failures: self.failures.lock().map(|f| f.clone()).unwrap_or_default(),
        }
    }
}

impl Seen {
    /// Bound: the honest client got answers throughout and no error.
    pub fn assert_unharmed(&self, what: &str) -> anyhow::Result<()> {
        eprintln!("{what}: the honest client got {} answers", self.ok);
        ensure!(
            self.failures.is_empty(),
            "{what}: the honest client saw {} failures, first: {:?}",
            self.failures.len(),
            self.failures.first()
        );
        ensure!(
            self.ok > 0,
            "{what}: the honest client got no answer at all"
        );
        Ok(())
    }
}

/// Answers the honest client gets in `window` while nothing else happens.
pub async fn answers_in(addr: SocketAddr, proto: Proto, path: &str, window: Duration) -> u64 {
    let honest = Honest::start(addr, proto, path);
    tokio::time::sleep(window).await;
    honest.finish().await.ok
}
