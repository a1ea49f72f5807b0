//! HTTPS peers for the edge TLS tests: a client over rustls that trusts a
//! test CA and reports the certificate it was served, and a small HTTPS
//! server whose answer the test sets (a JWK Set server outside the mesh).
//!
//! Both use ring, as Skiff does, and speak HTTP/1.1 or HTTP/2 by ALPN.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{
    ClientConfig, ProtocolVersion, RootCertStore, ServerConfig, SupportedProtocolVersion,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

use super::body::{self, read_body, TestBody};
use super::ca::Svid;
use super::eventually::within;
use super::http_client::{Proto, EXCHANGE_LIMIT};
use super::AbortOnDrop;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config trusting the roots in `roots_pem`, offering `alpn`, with
/// the TLS `versions` given (both 1.2 and 1.3 when empty).
pub fn client_config(
    roots_pem: &str,
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let versions = if versions.is_empty() {
        &[&rustls::version::TLS13, &rustls::version::TLS12][..]
    } else {
        versions
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A TLS handshake with `addr`, asking for `name` by SNI (an IP address
/// sends none) and checking the certificate for it.
pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let server_name = ServerName::try_from(name.to_string())?;
    within(Duration::from_secs(10), "TLS connect", async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {addr} as {name}"))?;
        Ok(tls)
    })
    .await
}

/// The leaf certificate of `svid` (DER), to compare with what a server sent.
pub fn leaf_der(svid: &Svid) -> anyhow::Result<Vec<u8>> {
    let first = CertificateDer::pem_slice_iter(svid.chain_pem.as_bytes())
        .next()
        .ok_or_else(|| anyhow!("no certificate in the chain"))??;
    Ok(first.as_ref().to_vec())
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<TestBody>),
    H2(hyper::client::conn::http2::SendRequest<TestBody>),
}

/// One HTTPS client connection.
pub struct Https {
    sender: Sender,
    name: String,
    /// The leaf certificate the server sent (DER).
    pub leaf: Vec<u8>,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    pub version: Option<ProtocolVersion>,
    _conn: AbortOnDrop,
}

impl Https {
    /// Connect to `addr` as `name`, trusting `roots_pem`, and speak `proto`
    /// (offered by ALPN alone, so the server must pick it).
    pub async fn connect(
        addr: SocketAddr,
        name: &str,
        roots_pem: &str,
        proto: Proto,
    ) -> anyhow::Result<Https> {
        let alpn: &[u8] = match proto {
            Proto::H1 => b"http/1.1",
            Proto::H2 => b"h2",
        };
        let config = client_config(roots_pem, &[alpn], &[])?;
        Https::over(tls_connect(addr, name, config).await?, name, proto).await
    }

    /// HTTP on a TLS stream already made.
    pub async fn over(
        tls: TlsStream<TcpStream>,
        name: &str,
        proto: Proto,
    ) -> anyhow::Result<Https> {
        let session = tls.get_ref().1;
        let leaf = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let version = session.protocol_version();
        let io = TokioIo::new(tls);
        let (sender, conn) = match proto {
            Proto::H1 => {
                let (s, c) = hyper::client::conn::http1::handshake(io).await?;
                let conn = AbortOnDrop::spawn(async move {
                    let _ = c.await;
                });
                (Sender::H1(s), conn)
            }
            Proto::H2 => {
                let (s, c) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await?;
                let conn = AbortOnDrop::spawn(async move {
                    let _ = c.await;
                });
                (Sender::H2(s), conn)
            }
        };
        Ok(Https {
            sender,
            name: name.to_string(),
            leaf,
            alpn,
            version,
            _conn: conn,
        })
    }

    /// GET `path` with `headers`: the response head and its body as text.
    pub async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(http::response::Parts, String)> {
        let mut req = match self.sender {
            Sender::H1(_) => Request::get(path).header(http::header::HOST, &self.name),
            Sender::H2(_) => {
                Request::get(format!("https://{}{path}", self.name)).version(http::Version::HTTP_2)
            }
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body::empty())?;
        let fut = async {
            let resp = match &mut self.sender {
                Sender::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
                Sender::H2(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
            };
            let (parts, body) = resp.into_parts();
            let body = read_body(body).await?;
            anyhow::Ok((parts, body.text()))
        };
        within(EXCHANGE_LIMIT, "HTTPS exchange", fut).await
    }
}

/// An HTTPS server on 127.0.0.1:0 presenting `svid`, answering every
/// request with the status and body the test sets; stopped on drop.
pub struct HttpsServer {
    pub addr: SocketAddr,
    answer: Arc<Mutex<(u16, String)>>,
    hits: Arc<Mutex<usize>>,
    _accept: AbortOnDrop,
}

impl HttpsServer {
    pub async fn start(svid: &Svid, status: u16, body: String) -> anyhow::Result<HttpsServer> {
        let (chain, key) = svid.rustls()?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let answer = Arc::new(Mutex::new((status, body)));
        let hits = Arc::new(Mutex::new(0));
        let (a, h) = (answer.clone(), hits.clone());
        let accept = AbortOnDrop::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (a, h, acceptor) = (a.clone(), h.clone(), acceptor.clone());
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc =
                        hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                            let (status, body) = a.lock().map(|g| g.clone()).unwrap_or_default();
                            if let Ok(mut n) = h.lock() {
                                *n += 1;
                            }
                            let mut resp = Response::new(Full::new(Bytes::from(body)));
                            *resp.status_mut() =
                                StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                            async move { Ok::<_, Infallible>(resp) }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(HttpsServer {
            addr,
            answer,
            hits,
            _accept: accept,
        })
    }

    pub fn set(&self, status: u16, body: String) {
        if let Ok(mut a) = self.answer.lock() {
            *a = (status, body);
        }
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.lock().map_or(0, |h| *h)
    }
}
