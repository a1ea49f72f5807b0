//! Upstreams that fail on purpose: a port nobody listens on, a server that
//! closes every connection at once, one that resets after reading a request.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::AbortOnDrop;

/// An address on 127.0.0.1 where nothing listens (bound, then released).
pub async fn closed_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    drop(l);
    Ok(addr)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Accept, then close at once with a TCP reset, reading nothing.
    CloseOnAccept,
    /// Read the request (HTTP/1.1 head, or an HTTP/2 HEADERS frame), then
    /// reset: for HTTP/2 a RST_STREAM on that stream, for HTTP/1.1 a TCP reset.
    ResetAfterRequest,
}

pub struct FaultBackend {
    addr: SocketAddr,
    _accept: AbortOnDrop,
}

impl FaultBackend {
    pub async fn start(fault: Fault) -> anyhow::Result<FaultBackend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accept = AbortOnDrop::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                conns.spawn(async move {
                    let _ = misbehave(tcp, fault).await;
                });
            }
        });
        Ok(FaultBackend {
            addr,
            _accept: accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn misbehave(tcp: TcpStream, fault: Fault) -> anyhow::Result<()> {
    if fault == Fault::CloseOnAccept {
        tcp.set_zero_linger()?;
        drop(tcp);
        return Ok(());
    }
    let mut first = [0u8; 24];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.peek(&mut first)).await??;
    if first[..n] == H2_PREFACE[..n] && n > 0 {
        let mut conn = h2::server::handshake(tcp).await?;
        while let Some(stream) = conn.accept().await {
            let (_req, mut respond) = stream?;
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
        }
        return Ok(());
    }
    let mut tcp = tcp;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 1024 * 1024 {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await??;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    tcp.set_zero_linger()?;
    drop(tcp);
    Ok(())
}
