//! A tiny DNS server on UDP 127.0.0.1:0 for `dns:` clusters: A records for
//! the names it is given, an empty NOERROR answer for their other types,
//! NXDOMAIN for every other name.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::UdpSocket;

use super::AbortOnDrop;

pub struct DnsServer {
    addr: SocketAddr,
    _task: AbortOnDrop,
}

impl DnsServer {
    /// Serve `records` (lower-case names without the trailing dot).
    pub async fn start(records: &[(&str, Ipv4Addr)]) -> anyhow::Result<DnsServer> {
        let mut map: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
        for (name, ip) in records {
            map.entry(name.trim_end_matches('.').to_ascii_lowercase())
                .or_default()
                .push(*ip);
        }
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = socket.local_addr()?;
        let task = AbortOnDrop::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                if let Some(reply) = answer(&buf[..n], &map) {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        Ok(DnsServer { addr, _task: task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

const TYPE_A: u16 = 1;

fn answer(query: &[u8], records: &HashMap<String, Vec<Ipv4Addr>>) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels up to the zero byte, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let question = query.get(12..i + 4)?;
    let name = labels.join(".");

    let (rcode, ips): (u8, &[Ipv4Addr]) = match records.get(&name) {
        Some(ips) if qtype == TYPE_A => (0, ips),
        Some(_) => (0, &[]),
        None => (3, &[]),
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[0..2]); // id
    out.push(0x81 | (query[2] & 0x01)); // QR, opcode 0, AA, RD copied
    out.push(0x80 | rcode); // RA, rcode
    out.extend_from_slice(&1u16.to_be_bytes()); // qdcount
    out.extend_from_slice(&(ips.len() as u16).to_be_bytes()); // ancount
    out.extend_from_slice(&[0, 0, 0, 0]); // nscount, arcount
    out.extend_from_slice(question);
    for ip in ips {
        out.extend_from_slice(&[0xc0, 0x0c]); // the name, by pointer to the question
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes()); // class IN
        out.extend_from_slice(&5u32.to_be_bytes()); // ttl
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}
