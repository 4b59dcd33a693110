//! The fallback source: the host's own TCP sockets from sock_diag (`NETLINK_SOCK_DIAG`,
//! `linux/inet_diag.h`), for hosts where ctnetlink cannot be read (no `CAP_NET_ADMIN`, no
//! `nf_conntrack`). Each socket becomes an [`Entry`] in the original direction conntrack
//! would have recorded — an accepted connection (its local port is listening) from the
//! remote side — so labels and states follow the same rules as with ctnetlink.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::ctnetlink::{Entry, TcpState, Tuple, IPPROTO_TCP};
use crate::netlink::{self, Malformed, Message};

/// `SOCK_DIAG_BY_FAMILY`.
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NETLINK_SOCK_DIAG`.
pub const NETLINK_SOCK_DIAG: i32 = 4;
/// TCP `LISTEN` (`include/net/tcp_states.h`).
pub const TCP_LISTEN: u8 = 10;

/// A dump of every TCP socket of `family`, in every state.
pub fn dump_request(seq: u32, family: u8) -> Vec<u8> {
    let mut req = vec![family, IPPROTO_TCP, 0, 0];
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // idiag_states: all
    req.extend_from_slice(&[0u8; 48]); // inet_diag_sockid: no filter
    netlink::encode_message(SOCK_DIAG_BY_FAMILY, netlink::NLM_F_REQUEST | netlink::NLM_F_DUMP, seq, &req)
}

/// One socket from a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socket {
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// The kernel's TCP state (`TCP_ESTABLISHED` = 1 … `TCP_NEW_SYN_RECV` = 12).
    pub state: u8,
    /// Local address and port.
    pub local: (IpAddr, u16),
    /// Remote address and port.
    pub remote: (IpAddr, u16),
    /// Inode (0 for a socket no process holds, such as TIME_WAIT).
    pub inode: u32,
}

/// The socket of one `SOCK_DIAG_BY_FAMILY` reply message (`Ok(None)` for other messages).
pub fn decode(msg: &Message) -> Result<Option<Socket>, Malformed> {
    if msg.kind != SOCK_DIAG_BY_FAMILY {
        return Ok(None);
    }
    let p = msg.payload;
    if p.len() < 72 {
        return Err(Malformed("short inet_diag_msg"));
    }
    let family = p[0];
    let addr = |off: usize| -> IpAddr {
        if family == netlink::AF_INET6 {
            let mut o = [0u8; 16];
            o.copy_from_slice(&p[off..off + 16]);
            IpAddr::V6(Ipv6Addr::from(o))
        } else {
            IpAddr::V4(Ipv4Addr::new(p[off], p[off + 1], p[off + 2], p[off + 3]))
        }
    };
    let port = |off: usize| u16::from_be_bytes([p[off], p[off + 1]]);
    Ok(Some(Socket {
        family,
        state: p[1],
        local: (addr(8), port(4)),
        remote: (addr(24), port(6)),
        inode: u32::from_ne_bytes([p[68], p[69], p[70], p[71]]),
    }))
}

/// The conntrack state a socket's TCP state corresponds to (`None` for LISTEN).
pub fn tcp_state(state: u8) -> Option<TcpState> {
    Some(match state {
        1 => TcpState::Established,
        2 => TcpState::SynSent,
        3 | 12 => TcpState::SynRecv,
        4 | 5 | 11 => TcpState::FinWait,
        6 => TcpState::TimeWait,
        7 => TcpState::Close,
        8 => TcpState::CloseWait,
        9 => TcpState::LastAck,
        _ => return None,
    })
}

/// The socket as a conntrack entry: accepted connections (`inbound`: the local port is
/// listening) in the remote → local direction, the others local → remote. `None` for LISTEN.
/// The id is a hash of the 4-tuple, stable from one poll to the next.
pub fn to_entry(s: &Socket, inbound: bool) -> Option<Entry> {
    let state = tcp_state(s.state)?;
    let (from, to) = if inbound { (s.remote, s.local) } else { (s.local, s.remote) };
    let orig = Tuple { src: from.0, dst: to.0, proto: IPPROTO_TCP, sport: from.1, dport: to.1 };
    let reply = Tuple { src: to.0, dst: from.0, proto: IPPROTO_TCP, sport: to.1, dport: from.1 };
    let id = {
        // FNV-1a over the tuple: ids only need to be stable and rarely collide.
        let mut h: u32 = 0x811c_9dc5;
        let mut eat = |b: &[u8]| {
            for x in b {
                h = (h ^ u32::from(*x)).wrapping_mul(0x0100_0193);
            }
        };
        for ip in [orig.src, orig.dst] {
            match ip {
                IpAddr::V4(v) => eat(&v.octets()),
                IpAddr::V6(v) => eat(&v.octets()),
            }
        }
        eat(&orig.sport.to_be_bytes());
        eat(&orig.dport.to_be_bytes());
        h
    };
    Some(Entry {
        id,
        family: s.family,
        orig,
        reply: Some(reply),
        tcp_state: Some(state),
        status: crate::ctnetlink::IPS_SEEN_REPLY,
        timeout: None,
        mark: None,
        zone: None,
        counters: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(family: u8, state: u8, local: ([u8; 4], u16), remote: ([u8; 4], u16)) -> Vec<u8> {
        let mut p = vec![family, state, 0, 0];
        p.extend_from_slice(&local.1.to_be_bytes());
        p.extend_from_slice(&remote.1.to_be_bytes());
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&local.0);
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&remote.0);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[0u8; 12]); // if, cookie
        p.extend_from_slice(&[0u8; 16]); // expires, rqueue, wqueue, uid
        p.extend_from_slice(&7u32.to_ne_bytes()); // inode
        netlink::encode_message(SOCK_DIAG_BY_FAMILY, netlink::NLM_F_MULTI, 1, &p)
    }

    #[test]
    fn sockets_become_entries_in_conntracks_direction() {
        let bytes = reply(netlink::AF_INET, 1, ([10, 0, 0, 1], 22), ([10, 0, 0, 7], 51515));
        let m = netlink::messages(&bytes).next().unwrap().unwrap();
        let s = decode(&m).unwrap().unwrap();
        assert_eq!((s.local.1, s.remote.1, s.inode), (22, 51515, 7));
        let inbound = to_entry(&s, true).unwrap();
        assert_eq!((inbound.orig.src.to_string(), inbound.orig.dport), ("10.0.0.7".into(), 22));
        let outbound = to_entry(&s, false).unwrap();
        assert_eq!((outbound.orig.dst.to_string(), outbound.orig.dport), ("10.0.0.7".into(), 51515));
        assert_ne!(inbound.id, outbound.id);
        assert_eq!(inbound.id, to_entry(&s, true).unwrap().id);
        assert_eq!(to_entry(&Socket { state: TCP_LISTEN, ..s }, false), None);
        assert_eq!(tcp_state(6), Some(TcpState::TimeWait));
    }

    #[test]
    fn the_request_asks_for_every_tcp_socket() {
        let r = dump_request(9, netlink::AF_INET6);
        let m = netlink::messages(&r).next().unwrap().unwrap();
        assert_eq!((m.kind, m.flags), (SOCK_DIAG_BY_FAMILY, netlink::NLM_F_REQUEST | netlink::NLM_F_DUMP));
        assert_eq!(&m.payload[..4], &[netlink::AF_INET6, IPPROTO_TCP, 0, 0]);
        assert_eq!(m.payload.len(), 56);
    }
}
