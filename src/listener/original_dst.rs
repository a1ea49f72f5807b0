//! The destination a connection had before an iptables REDIRECT sent it to
//! us (SO_ORIGINAL_DST, and IP6T_SO_ORIGINAL_DST for IPv6).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use tokio::net::TcpStream;

/// `SO_ORIGINAL_DST` and `IP6T_SO_ORIGINAL_DST` from linux/netfilter_ipv4.h and ipv6.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// The connection's original destination; `None` when it was not redirected
/// (or on a system without netfilter).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let fd = stream.as_raw_fd();
    match stream.local_addr().ok()? {
        SocketAddr::V4(_) => v4(fd),
        SocketAddr::V6(_) => v6(fd).or_else(|| v4(fd)),
    }
}

fn v4(fd: libc::c_int) -> Option<SocketAddr> {
    // SAFETY: getsockopt writes at most `len` bytes into `addr`, a plain C
    // struct for which all-zero bytes are a valid value.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        );
        if rc != 0 || addr.sin_family != libc::AF_INET as libc::sa_family_t {
            return None;
        }
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Some(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(addr.sin_port),
        )))
    }
}

fn v6(fd: libc::c_int) -> Option<SocketAddr> {
    // SAFETY: as above, with the IPv6 sockaddr.
    unsafe {
        let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_IPV6,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in6).cast(),
            &mut len,
        );
        if rc != 0 || addr.sin6_family != libc::AF_INET6 as libc::sa_family_t {
            return None;
        }
        let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
        Some(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(addr.sin6_port),
            addr.sin6_flowinfo,
            addr.sin6_scope_id,
        )))
    }
}
