//! Opaque TCP: copy bytes both ways between the client and the original
//! destination, untouched (server-first protocols, TLS the app does itself,
//! anything that is not HTTP).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Proxy `client` to `dst` until either side closes. Logged in the
/// connection's span (listener, client).
pub async fn forward<S>(mut client: S, dst: SocketAddr, connect_timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let upstream = match tokio::time::timeout(connect_timeout, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%dst, error = %e, "opaque TCP: connect failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%dst, "opaque TCP: connect timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut upstream = upstream;
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            tracing::debug!(%dst, bytes_up = up, bytes_down = down, "opaque TCP connection closed")
        }
        Err(e) => {
            tracing::debug!(%dst, error = %e, "opaque TCP connection ended with an error")
        }
    }
}
