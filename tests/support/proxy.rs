//! The proxy, in process: built from YAML with `skiff::app::build`, served on
//! the test's runtime, stopped when the test ends; or run from a config file
//! it reloads, as `skiff run` does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context as _};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::http_client::{http_get, Proto};
use super::scratch::ScratchDir;
use super::{eventually, metric_value};

/// A running proxy. Dropping it asks it to shut down.
pub struct Proxy {
    admin: SocketAddr,
    listeners: Vec<(String, SocketAddr)>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), skiff::app::BuildError>>>,
    yaml: String,
    /// Where the config file of [`Proxy::start_reloading`] lives.
    dir: Option<ScratchDir>,
}

/// The config file's name in the directory of a reloading proxy.
const CONFIG_FILE: &str = "skiff.yaml";

impl Proxy {
    /// Load `yaml`, bind everything, start serving.
    pub async fn start(yaml: &str) -> anyhow::Result<Proxy> {
        let config = skiff::config::load_str(yaml, "<test>")
            .map_err(|e| anyhow!("config rejected:\n{e}\n--- config ---\n{yaml}"))?;
        Proxy::serve(config, yaml, None).await
    }

    /// The same, run from a config file it reloads when the file changes
    /// (as `skiff run` does); [`Proxy::reload`] writes a new one.
    pub async fn start_reloading(yaml: &str) -> anyhow::Result<Proxy> {
        let dir = ScratchDir::new("reloading")?;
        let path = dir.write(CONFIG_FILE, yaml)?;
        let config = skiff::config::load_file(&path)
            .map_err(|e| anyhow!("config rejected: {e:?}\n{yaml}"))?;
        Proxy::serve(config, yaml, Some(dir)).await
    }

    async fn serve(
        config: skiff::config::Config,
        yaml: &str,
        dir: Option<ScratchDir>,
    ) -> anyhow::Result<Proxy> {
        let names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
        let mut bound = skiff::app::build(config)
            .await
            .map_err(|e| anyhow!("build failed: {e}"))?;
        if let Some(dir) = &dir {
            bound = bound.reload_from(dir.path().join(CONFIG_FILE));
        }
        let admin = bound.admin_addr();
        let listeners = names
            .into_iter()
            .map(|n| {
                let a = bound
                    .listener_addr(&n)
                    .ok_or_else(|| anyhow!("no address for listener {n}"))?;
                Ok((n, a))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(bound.run(async move {
            let _ = rx.await;
        }));
        Ok(Proxy {
            admin,
            listeners,
            shutdown: Some(tx),
            task: Some(task),
            yaml: yaml.to_string(),
            dir,
        })
    }

    /// Write `yaml` over the config file of [`Proxy::start_reloading`] and
    /// wait until the proxy says it reloaded.
    pub async fn reload(&self, yaml: &str) -> anyhow::Result<()> {
        let dir = self
            .dir
            .as_ref()
            .ok_or_else(|| anyhow!("no config file to reload: not started by start_reloading"))?;
        let count = || async {
            let (_, text) = self.admin_get("/metrics").await?;
            anyhow::Ok(
                metric_value(
                    &text,
                    "skiff_config_reloads_total",
                    &[("result", "success")],
                )
                .unwrap_or(0.0),
            )
        };
        let before = count().await?;
        dir.write(CONFIG_FILE, yaml)?;
        eventually(Duration::from_secs(10), || async {
            let now = count().await?;
            ensure!(now > before, "no successful reload yet");
            Ok(())
        })
        .await
    }

    /// The address of the first listener.
    pub fn addr(&self) -> SocketAddr {
        self.listeners[0].1
    }

    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    pub fn yaml(&self) -> &str {
        &self.yaml
    }

    /// GET an admin path: status, body.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let (status, _, body) = http_get(self.admin, path)
            .await
            .with_context(|| format!("admin GET {path}"))?;
        Ok((status.as_u16(), body))
    }

    /// The Prometheus text from `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = self.admin_get("/metrics").await?;
        anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
        Ok(body)
    }

    /// `name{labels}` from `/metrics` (summed as [`metric_value`] does), 0 when absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let text = self.metrics().await?;
        Ok(metric_value(&text, name, labels).unwrap_or(0.0))
    }

    /// The `/clusters` entry of cluster `name`.
    pub async fn cluster(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self.admin_get("/clusters").await?;
        ensure!(status == 200, "/clusters answered {status}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body)?;
        v["clusters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .cloned()
            .ok_or_else(|| anyhow!("no cluster {name} in /clusters: {body}"))
    }

    /// The endpoints of cluster `name` in `/clusters` by address, each
    /// read by `read` (its weight, its health, …).
    pub async fn endpoints<T>(
        &self,
        name: &str,
        read: impl Fn(&serde_json::Value) -> T,
    ) -> anyhow::Result<BTreeMap<String, T>> {
        let c = self.cluster(name).await?;
        let eps = c["endpoints"]
            .as_array()
            .ok_or_else(|| anyhow!("no endpoints list: {c}"))?;
        Ok(eps
            .iter()
            .map(|e| {
                (
                    e["address"].as_str().unwrap_or_default().to_string(),
                    read(e),
                )
            })
            .collect())
    }

    /// Wait until `/ready` answers 200 (15s at most: a `dns:` cluster may
    /// hold it back until its first answer).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        eventually(Duration::from_secs(15), || async {
            let (status, body) = self.admin_get("/ready").await?;
            ensure!(status == 200, "/ready answered {status}: {body}");
            Ok(())
        })
        .await
    }

    /// Ask the proxy to drain and wait (bounded) until `run` returns.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .context("proxy did not stop within 30s")??
                .map_err(|e| anyhow!("run failed: {e}"))?;
        }
        Ok(())
    }

    /// `true` while the serving task is alive (it has not returned or panicked).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A one-listener, one-cluster config: every path of every host goes to the
/// cluster `backend`. The setters cover what the suites vary.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    protocol: String,
    endpoints: Vec<String>,
    timeout: Option<String>,
    prefix: String,
    access_log: Option<String>,
    limits: Vec<String>,
    domains: Vec<String>,
}

impl ProxyConfig {
    /// Upstream protocol `protocol` (`http1`, `http2`, `auto`) at `endpoint`.
    pub fn new(protocol: &str, endpoint: SocketAddr) -> ProxyConfig {
        ProxyConfig {
            protocol: protocol.to_string(),
            endpoints: vec![endpoint.to_string()],
            timeout: Some("10s".into()),
            prefix: "/".into(),
            access_log: None,
            limits: Vec::new(),
            domains: vec!["*".into()],
        }
    }

    pub fn upstream(proto: Proto, endpoint: SocketAddr) -> ProxyConfig {
        ProxyConfig::new(proto.cluster_name(), endpoint)
    }

    /// Route timeout such as `300ms`; `None` for no route timeout.
    pub fn timeout(mut self, t: Option<&str>) -> Self {
        self.timeout = t.map(str::to_string);
        self
    }

    /// Only paths under `prefix` are routed; the rest get "no route".
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// Only these `:authority`/Host values are routed.
    pub fn domains(mut self, domains: &[&str]) -> Self {
        self.domains = domains.iter().map(|d| d.to_string()).collect();
        self
    }

    pub fn access_log(mut self, path: &Path) -> Self {
        self.access_log = Some(path.display().to_string());
        self
    }

    /// A `limits:` entry of the listener, e.g. `max_header_bytes: 8192`.
    pub fn limit(mut self, line: &str) -> Self {
        self.limits.push(line.to_string());
        self
    }

    pub fn render(&self) -> String {
        let mut y = String::from("admin:\n  address: 127.0.0.1:0\n");
        if let Some(p) = &self.access_log {
            y += &format!(
                "access_log:\n  enabled: true\n  path: {}\n",
                serde_json::json!(p)
            );
        }
        y += "listeners:\n  - name: main\n    address: 127.0.0.1:0\n";
        if !self.limits.is_empty() {
            y += "    limits:\n";
            for l in &self.limits {
                y += &format!("      {l}\n");
            }
        }
        y += &format!(
            "    virtual_hosts:\n      - name: all\n        domains: [{}]\n        routes:\n          - match: {{ prefix: {} }}\n            cluster: backend\n",
            quoted(&self.domains),
            serde_json::json!(self.prefix)
        );
        if let Some(t) = &self.timeout {
            y += &format!("            timeout: {t}\n");
        }
        y += &format!(
            "clusters:\n  - name: backend\n    protocol: {}\n    endpoints: [{}]\n",
            self.protocol,
            quoted(&self.endpoints)
        );
        y
    }

    pub async fn start(&self) -> anyhow::Result<Proxy> {
        Proxy::start(&self.render()).await
    }
}

/// `items` quoted and joined, the inside of a YAML flow list.
fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|i| serde_json::json!(i).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
