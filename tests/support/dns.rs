//! A small authoritative DNS server for `dns:` clusters, on 127.0.0.1 UDP and
//! TCP (same port), built on hickory-proto.
//!
//! A test changes its records and their TTL while traffic flows, the way pods
//! come and go behind a Kubernetes headless service, and can make it fail:
//! answer SERVFAIL, or stop answering at all. Answers:
//! - a name with records of the asked type: those records (A, AAAA, SRV; an
//!   SRV answer carries the A/AAAA of its targets in the additional section,
//!   as CoreDNS does, unless [`DnsServer::set_srv_glue`] turned that off);
//! - a name it knows without records of that type: NOERROR, no answer;
//! - any other name: NXDOMAIN.
//!
//! Names are matched case-insensitively, with or without the trailing dot.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::AbortOnDrop;

/// The TTL of every record until [`DnsServer::set_ttl`] changes it.
pub const DEFAULT_TTL: u32 = 5;

/// How the server treats queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer from the records.
    Answer,
    /// Answer every query with SERVFAIL.
    ServFail,
    /// Read queries and never answer (a server that is down or unreachable).
    Silent,
}

/// One SRV record: `priority weight port target`.
#[derive(Clone, Debug)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

impl Srv {
    pub fn new(priority: u16, weight: u16, port: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port,
            target: target.to_string(),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Records {
    a: Vec<Ipv4Addr>,
    aaaa: Vec<Ipv6Addr>,
    srv: Vec<Srv>,
}

struct Zone {
    names: HashMap<String, Records>,
    ttl: u32,
    behaviour: Behaviour,
    srv_glue: bool,
    /// How long every answer waits before it is sent.
    delay: Duration,
    /// Queries received per name, whatever the behaviour.
    queries: HashMap<String, u64>,
    /// Queries that came over TCP.
    tcp_queries: u64,
}

/// A running server; it stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    _udp: AbortOnDrop,
    _tcp: AbortOnDrop,
}

impl DnsServer {
    /// A server with no names: every query gets NXDOMAIN until records are set.
    pub async fn empty() -> anyhow::Result<DnsServer> {
        Self::start(&[]).await
    }

    /// A server with these A records (`name`, address; a name may repeat).
    pub async fn start(records: &[(&str, Ipv4Addr)]) -> anyhow::Result<DnsServer> {
        let mut names: HashMap<String, Records> = HashMap::new();
        for (name, ip) in records {
            names.entry(key(name)).or_default().a.push(*ip);
        }
        let zone = Arc::new(Mutex::new(Zone {
            names,
            ttl: DEFAULT_TTL,
            behaviour: Behaviour::Answer,
            srv_glue: true,
            delay: Duration::ZERO,
            queries: HashMap::new(),
            tcp_queries: 0,
        }));
        let (udp, tcp) = bind_pair().await?;
        let addr = udp.local_addr()?;
        let udp = Arc::new(udp);
        let z = zone.clone();
        let udp_task = AbortOnDrop::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                let Some(reply) = respond(&z, &buf[..n], true) else {
                    continue;
                };
                match delay_of(&z) {
                    Duration::ZERO => {
                        let _ = udp.send_to(&reply, peer).await;
                    }
                    d => {
                        let udp = udp.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(d).await;
                            let _ = udp.send_to(&reply, peer).await;
                        });
                    }
                }
            }
        });
        let z = zone.clone();
        let tcp_task = AbortOnDrop::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = tcp.accept().await {
                conns.spawn(serve_tcp(stream, z.clone()));
            }
        });
        Ok(DnsServer {
            addr,
            zone,
            _udp: udp_task,
            _tcp: tcp_task,
        })
    }

    /// The address for `resolver.servers`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn zone(&self) -> MutexGuard<'_, Zone> {
        match self.zone.lock() {
            Ok(z) => z,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Replace the A records of `name` (the name exists from now on, even with none).
    pub fn set_a(&self, name: &str, ips: &[Ipv4Addr]) {
        self.zone().names.entry(key(name)).or_default().a = ips.to_vec();
    }

    /// Replace the AAAA records of `name`.
    pub fn set_aaaa(&self, name: &str, ips: &[Ipv6Addr]) {
        self.zone().names.entry(key(name)).or_default().aaaa = ips.to_vec();
    }

    /// Replace the A and AAAA records of `name` with these addresses.
    pub fn set_ips(&self, name: &str, ips: &[IpAddr]) {
        let mut zone = self.zone();
        let r = zone.names.entry(key(name)).or_default();
        r.a = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        r.aaaa = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(v6) => Some(*v6),
                IpAddr::V4(_) => None,
            })
            .collect();
    }

    /// Replace the SRV records of `name`.
    pub fn set_srv(&self, name: &str, records: &[Srv]) {
        self.zone().names.entry(key(name)).or_default().srv = records.to_vec();
    }

    /// Forget `name`: NXDOMAIN from now on.
    pub fn remove(&self, name: &str) {
        self.zone().names.remove(&key(name));
    }

    /// The TTL of every record in answers from now on.
    pub fn set_ttl(&self, seconds: u32) {
        self.zone().ttl = seconds;
    }

    pub fn set_behaviour(&self, b: Behaviour) {
        self.zone().behaviour = b;
    }

    /// Send every answer this late (a slow or far DNS server); zero by default.
    pub fn set_delay(&self, d: Duration) {
        self.zone().delay = d;
    }

    /// Whether SRV answers carry their targets' addresses (default true).
    pub fn set_srv_glue(&self, glue: bool) {
        self.zone().srv_glue = glue;
    }

    /// How many queries arrived over TCP so far.
    pub fn tcp_queries(&self) -> u64 {
        self.zone().tcp_queries
    }

    /// How many queries for `name` (any type) arrived so far.
    pub fn queries(&self, name: &str) -> u64 {
        self.zone().queries.get(&key(name)).copied().unwrap_or(0)
    }
}

fn delay_of(zone: &Mutex<Zone>) -> Duration {
    zone.lock().map(|z| z.delay).unwrap_or_default()
}

/// `name` as the zone keys it: lower case, no trailing dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// UDP and TCP sockets on the same free port of 127.0.0.1.
async fn bind_pair() -> anyhow::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no port"), anyhow::Error::from))
        .context("binding UDP and TCP on one port of 127.0.0.1")
}

/// DNS over TCP: each message is preceded by its length in two bytes.
async fn serve_tcp(mut stream: TcpStream, zone: Arc<Mutex<Zone>>) {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(reply) = respond(&zone, &query, false) else {
            continue;
        };
        tokio::time::sleep(delay_of(&zone)).await;
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        if stream.write_all(&n.to_be_bytes()).await.is_err()
            || stream.write_all(&reply).await.is_err()
        {
            return;
        }
    }
}

/// The encoded reply to `query`, or `None` to stay silent.
fn respond(zone: &Mutex<Zone>, query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.authoritative = true;
    if let Some(edns) = &request.edns {
        let mut e = Edns::new();
        e.set_max_payload(edns.max_payload().min(1232));
        reply.set_edns(e);
    }
    let Some(q) = request.queries.first().cloned() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply.to_vec().ok();
    };
    reply.add_query(q.clone());
    let name = key(&q.name().to_ascii());
    {
        let mut z = match zone.lock() {
            Ok(z) => z,
            Err(p) => p.into_inner(),
        };
        *z.queries.entry(name.clone()).or_default() += 1;
        if !udp {
            z.tcp_queries += 1;
        }
        match z.behaviour {
            Behaviour::Silent => return None,
            Behaviour::ServFail => reply.metadata.response_code = ResponseCode::ServFail,
            Behaviour::Answer if request.metadata.op_code != OpCode::Query => {
                reply.metadata.response_code = ResponseCode::NotImp;
            }
            Behaviour::Answer => answer(&z, q.name(), &name, q.query_type(), &mut reply),
        }
    }
    let bytes = reply.to_vec().ok()?;
    let limit = request
        .edns
        .as_ref()
        .map_or(512, |e| usize::from(e.max_payload()));
    if udp && bytes.len() > limit {
        // Too big for UDP: the client retries over TCP.
        let mut t = Message::response(request.metadata.id, request.metadata.op_code);
        t.metadata = reply.metadata;
        t.metadata.truncation = true;
        t.queries = reply.queries.clone();
        return t.to_vec().ok();
    }
    Some(bytes)
}

fn answer(z: &Zone, qname: &Name, name: &str, qtype: RecordType, reply: &mut Message) {
    let Some(records) = z.names.get(name) else {
        reply.metadata.response_code = ResponseCode::NXDomain;
        return;
    };
    match qtype {
        RecordType::A | RecordType::AAAA => {
            for rec in address_records(qname, records, qtype, z.ttl) {
                reply.add_answer(rec);
            }
        }
        RecordType::SRV => {
            for s in &records.srv {
                let Ok(target) = Name::from_ascii(format!("{}.", key(&s.target))) else {
                    continue;
                };
                let srv = SRV::new(s.priority, s.weight, s.port, target.clone());
                reply.add_answer(Record::from_rdata(qname.clone(), z.ttl, RData::SRV(srv)));
                let glue = z.names.get(&key(&s.target)).filter(|_| z.srv_glue);
                for t in glue.into_iter() {
                    for rec in address_records(&target, t, RecordType::A, z.ttl)
                        .chain(address_records(&target, t, RecordType::AAAA, z.ttl))
                    {
                        reply.add_additional(rec);
                    }
                }
            }
        }
        _ => {}
    }
}

/// The A or AAAA records of `r`, owned by `owner`.
fn address_records<'a>(
    owner: &'a Name,
    r: &'a Records,
    qtype: RecordType,
    ttl: u32,
) -> impl Iterator<Item = Record> + 'a {
    let v4 = r.a.iter().filter(move |_| qtype == RecordType::A);
    let v6 = r.aaaa.iter().filter(move |_| qtype == RecordType::AAAA);
    v4.map(|ip| RData::A(A(*ip)))
        .chain(v6.map(|ip| RData::AAAA(AAAA(*ip))))
        .map(move |d| Record::from_rdata(owner.clone(), ttl, d))
}
