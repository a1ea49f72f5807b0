//! Hot reload: the config file is re-read when it changes and on SIGHUP.
//!
//! The file is polled by content ([`crate::file_watch`]), not watched by
//! inode: a Kubernetes ConfigMap volume replaces the file by swapping a
//! `..data` symlink, which inode watches miss.
//!
//! A new config is validated and built next to the running one; new
//! listener sockets are bound first, so a config that cannot be applied
//! changes nothing. Then each listener's state is swapped: requests in flight
//! finish on the state they started with, the next request sees the new one.

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::snapshot::Snapshot;
use super::{bind_listener, start_listener, Running};
use crate::access_log::AccessLog;
use crate::admin::AdminState;
use crate::config;
use crate::file_watch::FileWatch;
use crate::metrics::Metrics;

/// Says when to reload: the file's content changed, or SIGHUP came.
pub struct Trigger {
    path: Option<PathBuf>,
    watch: FileWatch,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Trigger {
    pub fn new(path: Option<&Path>) -> Self {
        Trigger {
            watch: FileWatch::new(path.map(Path::to_path_buf)),
            path: path.map(Path::to_path_buf),
            #[cfg(unix)]
            hangup: path.and_then(|_| {
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
            }),
        }
    }

    /// The path to reload from, when it is time; pending forever without a path.
    pub async fn next(&mut self) -> Option<PathBuf> {
        let path = self.path.clone()?;
        #[cfg(unix)]
        {
            let (signal, watch) = (&mut self.hangup, &mut self.watch);
            let hangup = async {
                match signal {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = hangup => {
                    tracing::info!(config = %path.display(), "SIGHUP: reloading");
                    watch.mark_seen();
                }
                _ = watch.changed() => {
                    tracing::info!(config = %path.display(), "config file changed: reloading");
                }
            }
        }
        #[cfg(not(unix))]
        {
            self.watch.changed().await;
            tracing::info!(config = %path.display(), "config file changed: reloading");
        }
        Some(path)
    }
}

/// Load, validate and apply the config at `path`; on any error keep the
/// running config and say why.
pub async fn apply(
    path: &Path,
    snapshot: &mut Snapshot,
    running: &mut Vec<Running>,
    admin: &AdminState,
    metrics: &Metrics,
    access_log: &Option<Arc<AccessLog>>,
) {
    let refuse = |why: &str| {
        metrics.reloads_failure.inc();
        tracing::warn!(config = %path.display(), reason = why, "config reload refused; the running config stays");
    };
    let config = match config::load_file(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                tracing::warn!(error = %e, "invalid config");
            }
            return refuse(&format!("{} error(s) in the file", errors.0.len()));
        }
    };
    // Which running listener each new one continues: same name and address,
    // else (a rename) the same fixed address. A `:0` address is never a
    // match by itself: every `:0` listener has a socket of its own.
    let mut claimed = vec![false; running.len()];
    let mut continues: Vec<Option<usize>> = Vec::new();
    for l in &config.listeners {
        let same = |r: &Running| r.address == l.address;
        let found = running
            .iter()
            .enumerate()
            .position(|(i, r)| !claimed[i] && r.name == l.name && same(r))
            .or_else(|| {
                let fixed = !l.address.ends_with(":0");
                running
                    .iter()
                    .enumerate()
                    .position(|(i, r)| fixed && !claimed[i] && same(r))
            });
        if let Some(i) = found {
            claimed[i] = true;
        }
        continues.push(found);
    }
    // New sockets first: a listener that cannot be bound changes nothing.
    let mut fresh = Vec::new();
    for (l, found) in config.listeners.iter().zip(&continues) {
        if found.is_none() {
            match bind_listener(l) {
                Ok(b) => fresh.push(Some(b)),
                Err(e) => {
                    let why = format!(
                        "{e}: {}",
                        e.source().map(|s| s.to_string()).unwrap_or_default()
                    );
                    return refuse(&why);
                }
            }
        } else {
            fresh.push(None);
        }
    }
    let next = match Snapshot::build(config, metrics, access_log, Some(snapshot)) {
        Ok(n) => n,
        Err(e) => return refuse(&e.to_string()),
    };

    let mut old: Vec<Option<Running>> = running.drain(..).map(Some).collect();
    let mut kept = Vec::new();
    for (((c, state), found), bound) in next.listeners.iter().zip(&continues).zip(fresh) {
        match (found, bound) {
            (Some(i), _) => {
                if let Some(mut r) = old.get_mut(*i).and_then(Option::take) {
                    r.state.store(state.clone());
                    r.direction = c.direction;
                    r.name = c.name.clone();
                    kept.push(r);
                }
            }
            (None, Some(b)) => kept.push(start_listener(b, c.direction, state.clone())),
            (None, None) => {}
        }
    }
    for r in old.into_iter().flatten() {
        tracing::info!(listener = %r.name, address = %r.addr, "listener removed; finishing its requests");
        let _ = r.stop.send(true);
    }
    *running = kept;
    admin.config.store(next.config.clone());
    admin.clusters.store(Arc::new(next.cluster_list()));
    admin.jwks.store(Arc::new(next.jwks_list()));
    admin.certs.store(next.credentials());
    admin
        .needs_identity
        .store(next.needs_identity(), std::sync::atomic::Ordering::Release);
    // Dropping the old snapshot stops the tasks of clusters not carried over.
    *snapshot = next;
    metrics.reloads_success.inc();
    tracing::info!(config = %path.display(), "config reloaded");
}
