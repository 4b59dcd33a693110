//! Which end of a connection is the remote one, and how it is labelled.
//!
//! Outbound (and forwarded) connections are labelled by where they go: the original
//! destination `ip:port`, as conntrack_exporter does. Inbound connections — the original
//! destination is one of this host's addresses and a port something listens on — are labelled
//! by the client's IP and the *local service port*: a client's ephemeral source port would
//! make every connection a series of its own.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use crate::ctnetlink::Entry;

/// This host's addresses and listening ports (from the runtime: interfaces and sock_diag).
#[derive(Debug, Clone, Default)]
pub struct Locality {
    addrs: HashSet<IpAddr>,
    listening: HashSet<(u8, u16)>,
}

impl Locality {
    /// Addresses of this host (loopback ones count without being listed) and `(protocol,
    /// port)` pairs something listens on.
    pub fn new(addrs: impl IntoIterator<Item = IpAddr>, listening: impl IntoIterator<Item = (u8, u16)>) -> Locality {
        Locality { addrs: addrs.into_iter().collect(), listening: listening.into_iter().collect() }
    }

    /// Whether `ip` is this host's.
    pub fn is_local(&self, ip: &IpAddr) -> bool {
        ip.is_loopback() || self.addrs.contains(ip) || ip.is_unspecified()
    }

    /// Whether something listens on `port` for `proto`.
    pub fn is_listening(&self, proto: u8, port: u16) -> bool {
        self.listening.contains(&(proto, port))
    }
}

/// The remote end of a connection as its label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Remote {
    /// The remote IP.
    pub ip: IpAddr,
    /// The remote service port (outbound) or the local service port (inbound).
    pub port: u16,
    /// Whether the connection came in.
    pub inbound: bool,
    /// The conntrack zone (0: the default, unlabelled).
    pub zone: u16,
}

impl Remote {
    /// The remote end of `entry` as seen from a host with `local`.
    pub fn of(entry: &Entry, local: &Locality) -> Remote {
        let o = &entry.orig;
        if local.is_local(&o.dst) && local.is_listening(o.proto, o.dport) {
            Remote { ip: o.src, port: o.dport, inbound: true, zone: entry.zone.unwrap_or(0) }
        } else {
            Remote { ip: o.dst, port: o.dport, inbound: false, zone: entry.zone.unwrap_or(0) }
        }
    }
}

/// `ip:port`, IPv6 in brackets (`[2001:db8::1]:443`).
pub struct HostPort<'a>(pub &'a IpAddr, pub u16);

impl fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v) => write!(f, "{v}:{}", self.1),
            IpAddr::V6(v) => write!(f, "[{v}]:{}", self.1),
        }
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        HostPort(&self.ip, self.port).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctnetlink::{Entry, TcpState, Tuple, IPPROTO_TCP};

    fn entry(src: &str, sport: u16, dst: &str, dport: u16) -> Entry {
        let (s, d): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        Entry {
            id: 1,
            family: 2,
            orig: Tuple { src: s, dst: d, proto: IPPROTO_TCP, sport, dport },
            reply: None,
            tcp_state: Some(TcpState::Established),
            status: 0,
            timeout: None,
            mark: None,
            zone: None,
            counters: None,
        }
    }

    #[test]
    fn outbound_by_destination_inbound_by_client_ip_and_service_port() {
        let local = Locality::new(["10.0.0.1".parse().unwrap(), "2001:db8::1".parse().unwrap()], [(IPPROTO_TCP, 22)]);
        let out = Remote::of(&entry("10.0.0.1", 40000, "10.0.0.9", 5432), &local);
        assert_eq!((out.to_string(), out.inbound), ("10.0.0.9:5432".into(), false));
        let inbound = Remote::of(&entry("10.0.0.7", 51515, "10.0.0.1", 22), &local);
        assert_eq!((inbound.to_string(), inbound.inbound), ("10.0.0.7:22".into(), true));
        // Two connections from one client's ephemeral ports: one label.
        assert_eq!(inbound, Remote::of(&entry("10.0.0.7", 51516, "10.0.0.1", 22), &local));
        // Not listening there: outbound-style label.
        assert_eq!(Remote::of(&entry("10.0.0.7", 1, "10.0.0.1", 23), &local).to_string(), "10.0.0.1:23");
        let v6 = Remote::of(&entry("2001:db8::7", 40000, "2001:db8::1", 22), &local);
        assert_eq!(v6.to_string(), "[2001:db8::7]:22");
        // Loopback is local without being listed.
        let lo = Locality::new([], [(IPPROTO_TCP, 8080)]);
        assert_eq!(Remote::of(&entry("127.0.0.1", 45000, "127.0.0.1", 8080), &lo).to_string(), "127.0.0.1:8080");
    }
}
