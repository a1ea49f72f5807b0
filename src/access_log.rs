//! The access log: one JSON line per request, written off the request path.
//!
//! Requests hand a finished line to a bounded channel; one thread writes
//! them out. When the writer falls behind, lines are dropped and counted
//! rather than slowing requests down.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};

use serde::Serialize;

use crate::config;

/// One request, as the access log records it.
#[derive(Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub listener: &'a str,
    pub client: String,
    /// The TLS the client's connection came over: `mesh` or `edge`; absent
    /// in plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<&'static str>,
    /// The client's verified identity (a SPIFFE ID), when its connection
    /// was mesh TLS; absent for a plaintext peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<&'a str>,
    pub protocol: &'a str,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub grpc_status: Option<u8>,
    pub duration_ms: f64,
    pub cluster: &'a str,
    pub upstream: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Envoy-style response flag of a proxy-made error or an abnormal end (`-` when none).
    pub flag: &'a str,
    /// Tries sent upstream (more than 1 when retried; 0 when none was sent).
    pub attempts: u32,
    pub request_id: &'a str,
}

pub struct AccessLog {
    tx: SyncSender<Vec<u8>>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Open the log's destination and start its writer thread.
    pub fn open(cfg: &config::AccessLog) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match cfg.path.as_str() {
            "stdout" => Box::new(std::io::stdout()),
            "stderr" => Box::new(std::io::stderr()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(16 * 1024);
        std::thread::Builder::new()
            .name("skiff-access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(&line);
                    // Write what is queued, then flush once the queue is empty.
                    while let Ok(line) = rx.try_recv() {
                        let _ = out.write_all(&line);
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    pub fn write(&self, entry: &Entry<'_>) {
        let mut line = Vec::with_capacity(384);
        if serde_json::to_writer(&mut line, entry).is_err() {
            return;
        }
        line.push(b'\n');
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self
                    .dropped
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(10_000)
                {
                    tracing::warn!("access log writer is behind; dropping lines");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}
