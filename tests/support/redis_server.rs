//! A real `redis-server` on an ephemeral loopback port, for shared rate
//! limits: no persistence, killed on drop; it can be stopped and started
//! again on the same port (an outage and a recovery), or paused with
//! SIGSTOP (a Redis that accepts connections but does not answer).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};

use super::eventually::eventually_blocking;
use super::process::ChildGuard;
use super::scratch::ScratchDir;

pub struct RedisServer {
    addr: SocketAddr,
    child: Option<ChildGuard>,
    dir: ScratchDir,
}

impl RedisServer {
    /// Start one on a free port of 127.0.0.1 (tried a few times, in case
    /// another process takes the port between the probe and the bind).
    pub fn start() -> anyhow::Result<RedisServer> {
        let mut last = None;
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut server = RedisServer {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                child: None,
                dir: ScratchDir::new("redis")?,
            };
            match server.run() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// Start the server process on `addr` and wait until it answers PING.
    fn run(&mut self) -> anyhow::Result<()> {
        let port = self.addr.port().to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(self.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let mut child = ChildGuard(cmd.spawn().context("spawn redis-server")?);
        eventually_blocking(Duration::from_secs(10), || {
            if let Some(status) = child.0.try_wait()? {
                bail!("redis-server on port {port} exited with {status}");
            }
            self.ping()
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Kill the server (an outage): connections break, the data is gone.
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Start it again on the same port, empty.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.run()
    }

    /// SIGSTOP: connections stay open and are accepted, nothing is answered.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("redis-server is not running")?;
        let st = Command::new("kill")
            .args([sig, &child.pid().to_string()])
            .status()?;
        anyhow::ensure!(st.success(), "kill {sig} {} failed", child.pid());
        Ok(())
    }

    /// A connection of the test's own, for looking at keys.
    pub fn connection(&self) -> anyhow::Result<redis::Connection> {
        let client = redis::Client::open(self.url())?;
        Ok(client.get_connection_with_timeout(Duration::from_secs(2))?)
    }

    fn ping(&self) -> anyhow::Result<()> {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.write_all(b"PING\r\n")?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf)?;
        anyhow::ensure!(&buf == b"+PONG\r\n", "unexpected answer {buf:?}");
        Ok(())
    }
}
