//! Real handshakes over loopback TCP, tokio-rustls on both sides, with CAs
//! minted here (`tests/support/ca.rs`): who is accepted, who is refused and
//! why (`mesh`), rotation of certificates and roots (`rotation`), edge and
//! `simple` TLS (`edge`). This file holds the harness.

mod edge;
mod mesh;
mod rotation;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::client::{self, ClientTls};
use super::server::{self, ServerTls};
use super::terminate::{CertKeyPaths, EdgeCerts, SniCert};
use super::verify::{MeshClientVerifier, MeshServerVerifier};
use super::{provider, HandshakeError, HandshakeFailure, ALPN_H2, ALPN_HTTP11};
use crate::identity::{CredentialPaths, CredentialStore, Identity};
use crate::test_ca::{Leaf, Svid, TestCa};

const HOUR: Duration = Duration::from_secs(3600);

/// A scratch folder under the system's temp dir, removed on drop.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new(label: &str) -> Scratch {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("skiff-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// A subfolder (one workload's files).
    pub(crate) fn sub(&self, name: &str) -> PathBuf {
        let d = self.0.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn id(s: &str) -> Identity {
    Identity::parse(s).unwrap()
}

fn paths(dir: &Path) -> CredentialPaths {
    CredentialPaths {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca: dir.join("ca.pem"),
    }
}

/// A workload's store, its files written into `dir`.
fn store(dir: &Path, svid: &Svid, bundle: &[&str]) -> Arc<CredentialStore> {
    svid.write(dir, bundle).unwrap();
    Arc::new(CredentialStore::load(paths(dir)).unwrap())
}

/// A server side: one of Skiff's configs, or one built by hand.
enum Server<'a> {
    Skiff(&'a ServerTls),
    Raw(Arc<ServerConfig>),
}

/// A client side: one of Skiff's configs, or one built by hand.
enum Client<'a> {
    Skiff(&'a ClientTls, &'static str),
    Raw(Arc<ClientConfig>),
}

/// What each side saw of one connection.
#[derive(Debug)]
struct Outcome {
    /// The client's identity as the server verified it.
    server: Result<Option<Identity>, HandshakeFailure>,
    /// The server's identity as the client verified it, and the leaf the
    /// server presented.
    client: Result<(Option<Identity>, CertificateDer<'static>), HandshakeFailure>,
    alpn: Option<Vec<u8>>,
}

/// Whether the connection carries bytes: the server writes "ok" once its
/// handshake is done; the client reads it. (In TLS 1.3 the client finishes
/// before the server has checked its certificate, so a refused client
/// learns it on this read.)
async fn exchange<S>(stream: &mut S) -> Result<(), HandshakeFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = [0u8; 2];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| HandshakeFailure::of_io(&e))?;
    assert_eq!(&buf, b"ok");
    Ok(())
}

async fn handshake(server: Server<'_>, client: Client<'_>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_side = async {
        let (tcp, _) = listener.accept().await.unwrap();
        let accepted = match server {
            Server::Skiff(tls) => server::accept(tls, tcp).await,
            Server::Raw(config) => tokio_rustls::TlsAcceptor::from(config)
                .accept(tcp)
                .await
                .map(|s| (s, None))
                .map_err(HandshakeError::from),
        };
        match accepted {
            Ok((mut stream, peer)) => {
                let _ = stream.write_all(b"ok").await;
                let _ = stream.flush().await;
                // Wait for the client to close, so the "ok" is not cut off.
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
                Ok(peer)
            }
            Err(e) => Err(e.kind),
        }
    };
    let client_side = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let result = match client {
            Client::Skiff(tls, name) => {
                let name = ServerName::try_from(name).unwrap();
                client::connect(tls, name, tcp).await
            }
            Client::Raw(config) => {
                let name = ServerName::try_from("127.0.0.1").unwrap();
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map(|s| (s, None))
                    .map_err(HandshakeError::from)
            }
        };
        match result {
            Ok((mut stream, peer)) => {
                let (_, conn) = stream.get_ref();
                let leaf = conn.peer_certificates().unwrap()[0].clone().into_owned();
                let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
                let seen = exchange(&mut stream).await;
                let _ = stream.shutdown().await;
                (seen.map(|()| (peer, leaf)), alpn)
            }
            Err(e) => (Err(e.kind), None),
        }
    };
    let (server, (client, alpn)) = tokio::join!(server_side, client_side);
    Outcome {
        server,
        client,
        alpn,
    }
}

/// A mesh client built by hand, trusting `trust`'s bundle and expecting
/// `expect`, presenting `svid` (or no certificate).
fn raw_client(svid: Option<&Svid>, trust: &Arc<CredentialStore>, expect: &str) -> Client<'static> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MeshServerVerifier::new(
            trust.clone(),
            vec![id(expect)],
        )));
    let mut config = match svid {
        Some(s) => {
            let (chain, key) = s.rustls().unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Client::Raw(Arc::new(config))
}

/// A mesh server built by hand, presenting `svid` and checking clients
/// against `trust`.
fn raw_server(svid: &Svid, trust: &Arc<CredentialStore>) -> Server<'static> {
    let (chain, key) = svid.rustls().unwrap();
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(Arc::new(MeshClientVerifier::new(trust.clone())))
        .with_single_cert(chain, key)
        .unwrap();
    Server::Raw(Arc::new(config))
}

/// The shop's mesh: one CA, an order client and a payment server.
struct Mesh {
    _dir: Scratch,
    ca: TestCa,
    order: Arc<CredentialStore>,
    payment: Arc<CredentialStore>,
}

const ORDER: &str = "spiffe://cluster.local/ns/shop/sa/order";
const PAYMENT: &str = "spiffe://cluster.local/ns/shop/sa/payment";

fn mesh(label: &str) -> Mesh {
    let dir = Scratch::new(label);
    let ca = TestCa::root("cluster.local").unwrap();
    let order = store(
        &dir.sub("order"),
        &ca.svid("/ns/shop/sa/order").unwrap(),
        &[&ca.root_pem],
    );
    let payment = store(
        &dir.sub("payment"),
        &ca.svid("/ns/shop/sa/payment").unwrap(),
        &[&ca.root_pem],
    );
    Mesh {
        _dir: dir,
        ca,
        order,
        payment,
    }
}

impl Mesh {
    fn server(&self) -> ServerTls {
        ServerTls::mesh(self.payment.clone()).unwrap()
    }

    fn client(&self, expect: &[&str]) -> ClientTls {
        ClientTls::mesh(self.order.clone(), expect.iter().map(|s| id(s)).collect()).unwrap()
    }
}
