//! Conntrack entries and events out of ctnetlink messages (`linux/netfilter/nfnetlink_conntrack.h`).
//!
//! floodgate reads the table and never writes it: the only request it builds is a dump
//! ([`dump_request`]) — no flush, no delete, no update (conntrack_exporter flushes the IPv4
//! table at start-up; that is exactly what must not happen).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::netlink::{self, Attr, Malformed, Message};

/// `NFNL_SUBSYS_CTNETLINK`.
pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

/// Multicast group of NEW events (`NFNLGRP_CONNTRACK_NEW`).
pub const GROUP_NEW: u32 = 1;
/// Multicast group of UPDATE events.
pub const GROUP_UPDATE: u32 = 2;
/// Multicast group of DESTROY events.
pub const GROUP_DESTROY: u32 = 3;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_TIMEOUT: u16 = 7;
const CTA_MARK: u16 = 8;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;

const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;

/// `IPS_SEEN_REPLY`: packets went both ways.
pub const IPS_SEEN_REPLY: u32 = 1 << 1;
/// `IPS_ASSURED`: the entry will not be dropped early under table pressure.
pub const IPS_ASSURED: u32 = 1 << 2;

/// IP protocol numbers floodgate names.
pub const IPPROTO_ICMP: u8 = 1;
/// TCP.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// The netlink message type of a ctnetlink message.
pub const fn msg_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | msg
}

/// A dump of the whole table for `family` (`AF_UNSPEC`: IPv4 and IPv6).
pub fn dump_request(seq: u32, family: u8) -> Vec<u8> {
    netlink::request(msg_type(IPCTNL_MSG_CT_GET), netlink::NLM_F_REQUEST | netlink::NLM_F_DUMP, seq, family)
}

/// What a message says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A new entry (an event with `NLM_F_CREATE`).
    New,
    /// A changed entry — and every entry of a dump.
    Update,
    /// An entry the kernel dropped.
    Destroy,
}

impl EventType {
    /// `new`, `update`, `destroy` (the JSON event log's `event_type`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::New => "new",
            EventType::Update => "update",
            EventType::Destroy => "destroy",
        }
    }
}

/// A TCP connection's state as conntrack tracks it (`enum tcp_conntrack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
    /// `NONE` (0): no state (an entry being dropped).
    None,
    /// `SYN_SENT`.
    SynSent,
    /// `SYN_RECV`.
    SynRecv,
    /// `ESTABLISHED`.
    Established,
    /// `FIN_WAIT`.
    FinWait,
    /// `CLOSE_WAIT`.
    CloseWait,
    /// `LAST_ACK`.
    LastAck,
    /// `TIME_WAIT`.
    TimeWait,
    /// `CLOSE`.
    Close,
    /// `SYN_SENT2` (simultaneous open; was `LISTEN`).
    SynSent2,
}

impl TcpState {
    /// From the kernel's number; `None` for values it does not report.
    pub fn from_u8(v: u8) -> Option<TcpState> {
        Some(match v {
            0 => TcpState::None,
            1 => TcpState::SynSent,
            2 => TcpState::SynRecv,
            3 => TcpState::Established,
            4 => TcpState::FinWait,
            5 => TcpState::CloseWait,
            6 => TcpState::LastAck,
            7 => TcpState::TimeWait,
            8 => TcpState::Close,
            9 => TcpState::SynSent2,
            _ => return None,
        })
    }

    /// The name the conntrack tool prints.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::None => "NONE",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::SynSent2 => "SYN_SENT2",
        }
    }

    /// The exporter's four states (SPEC): SYN_SENT/SYN_RECV → opening, ESTABLISHED → open,
    /// FIN_WAIT/CLOSE_WAIT/LAST_ACK/TIME_WAIT → closing, CLOSE → closed.
    pub fn phase(self) -> Option<Phase> {
        Some(match self {
            TcpState::SynSent | TcpState::SynRecv | TcpState::SynSent2 => Phase::Opening,
            TcpState::Established => Phase::Open,
            TcpState::FinWait | TcpState::CloseWait | TcpState::LastAck | TcpState::TimeWait => Phase::Closing,
            TcpState::Close => Phase::Closed,
            TcpState::None => return None,
        })
    }
}

/// The four states the metrics report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// `conntrack_opening_connections`.
    Opening,
    /// `conntrack_open_connections`.
    Open,
    /// `conntrack_closing_connections`.
    Closing,
    /// `conntrack_closed_connections`.
    Closed,
}

impl Phase {
    /// All four, in metric order.
    pub const ALL: [Phase; 4] = [Phase::Opening, Phase::Open, Phase::Closing, Phase::Closed];

    /// `Opening`, `Open`, `Closing`, `Closed` (the JSON event log's `state`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Opening => "Opening",
            Phase::Open => "Open",
            Phase::Closing => "Closing",
            Phase::Closed => "Closed",
        }
    }
}

/// One direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Source port (TCP, UDP, SCTP, ...); for ICMP the id.
    pub sport: u16,
    /// Destination port; for ICMP `type << 8 | code`.
    pub dport: u16,
}

/// A conntrack entry as one message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Kernel id (`CTA_ID`).
    pub id: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// The original direction.
    pub orig: Tuple,
    /// The reply direction (absent on some DESTROY events).
    pub reply: Option<Tuple>,
    /// TCP state, for TCP.
    pub tcp_state: Option<TcpState>,
    /// `IPS_*` bits.
    pub status: u32,
    /// Seconds left, when the kernel said.
    pub timeout: Option<u32>,
    /// Mark.
    pub mark: Option<u32>,
    /// Zone.
    pub zone: Option<u16>,
    /// Packets and bytes each way, when the kernel counts them (`nf_conntrack_acct=1`): in
    /// dumps and DESTROY events.
    pub counters: Option<Counters>,
}

/// An entry's accounting (`CTA_COUNTERS_ORIG`, `CTA_COUNTERS_REPLY`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets in the original direction.
    pub orig_packets: u64,
    /// Bytes in the original direction.
    pub orig_bytes: u64,
    /// Packets in the reply direction.
    pub reply_packets: u64,
    /// Bytes in the reply direction.
    pub reply_bytes: u64,
}

impl Entry {
    /// The exporter's state of a TCP entry (`None` for other protocols).
    pub fn phase(&self) -> Option<Phase> {
        self.tcp_state.and_then(TcpState::phase)
    }
}

/// The event and entry of one ctnetlink message; `Ok(None)` for a message that is not a
/// conntrack entry (`NLMSG_DONE`, an error, another subsystem).
pub fn decode(msg: &Message) -> Result<Option<(EventType, Entry)>, Malformed> {
    let event = if msg.kind == msg_type(IPCTNL_MSG_CT_NEW) {
        if msg.flags & (netlink::NLM_F_CREATE | netlink::NLM_F_EXCL) != 0 {
            EventType::New
        } else {
            EventType::Update
        }
    } else if msg.kind == msg_type(IPCTNL_MSG_CT_DELETE) {
        EventType::Destroy
    } else {
        return Ok(None);
    };
    let (nf, rest) = netlink::nfgen(msg.payload)?;
    let mut orig = None;
    let mut reply = None;
    let mut entry = Entry {
        id: 0,
        family: nf.family,
        orig: Tuple {
            src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            proto: 0,
            sport: 0,
            dport: 0,
        },
        reply: None,
        tcp_state: None,
        status: 0,
        timeout: None,
        mark: None,
        zone: None,
        counters: None,
    };
    for attr in netlink::attrs(rest) {
        let attr = attr?;
        match attr.kind {
            CTA_TUPLE_ORIG => orig = Some(tuple(&attr)?),
            CTA_TUPLE_REPLY => reply = Some(tuple(&attr)?),
            CTA_STATUS => entry.status = attr.be32()?,
            CTA_TIMEOUT => entry.timeout = Some(attr.be32()?),
            CTA_MARK => entry.mark = Some(attr.be32()?),
            CTA_ID => entry.id = attr.be32()?,
            CTA_ZONE => entry.zone = Some(attr.be16()?),
            CTA_COUNTERS_ORIG | CTA_COUNTERS_REPLY => {
                let (mut packets, mut bytes) = (0, 0);
                for c in attr.nested() {
                    let c = c?;
                    match c.kind {
                        CTA_COUNTERS_PACKETS => packets = c.be64()?,
                        CTA_COUNTERS_BYTES => bytes = c.be64()?,
                        _ => {}
                    }
                }
                let counters = entry.counters.get_or_insert_with(Counters::default);
                if attr.kind == CTA_COUNTERS_ORIG {
                    (counters.orig_packets, counters.orig_bytes) = (packets, bytes);
                } else {
                    (counters.reply_packets, counters.reply_bytes) = (packets, bytes);
                }
            }
            CTA_PROTOINFO => {
                for p in attr.nested() {
                    let p = p?;
                    if p.kind == CTA_PROTOINFO_TCP {
                        for t in p.nested() {
                            let t = t?;
                            if t.kind == CTA_PROTOINFO_TCP_STATE {
                                entry.tcp_state = TcpState::from_u8(t.u8()?);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    entry.orig = orig.ok_or(Malformed("conntrack entry without its original tuple"))?;
    entry.reply = reply;
    Ok(Some((event, entry)))
}

fn ip(attr: &Attr, len: usize) -> Result<IpAddr, Malformed> {
    match (len, attr.value) {
        (4, [a, b, c, d, ..]) => Ok(IpAddr::V4(Ipv4Addr::new(*a, *b, *c, *d))),
        (16, v) if v.len() >= 16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&v[..16]);
            Ok(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => Err(Malformed("short address")),
    }
}

fn tuple(attr: &Attr) -> Result<Tuple, Malformed> {
    let mut t = Tuple {
        src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        proto: 0,
        sport: 0,
        dport: 0,
    };
    let (mut icmp_type, mut icmp_code) = (None, 0u8);
    for part in attr.nested() {
        let part = part?;
        match part.kind {
            CTA_TUPLE_IP => {
                for a in part.nested() {
                    let a = a?;
                    match a.kind {
                        CTA_IP_V4_SRC => t.src = ip(&a, 4)?,
                        CTA_IP_V4_DST => t.dst = ip(&a, 4)?,
                        CTA_IP_V6_SRC => t.src = ip(&a, 16)?,
                        CTA_IP_V6_DST => t.dst = ip(&a, 16)?,
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in part.nested() {
                    let a = a?;
                    match a.kind {
                        CTA_PROTO_NUM => t.proto = a.u8()?,
                        CTA_PROTO_SRC_PORT => t.sport = a.be16()?,
                        CTA_PROTO_DST_PORT => t.dport = a.be16()?,
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => t.sport = a.be16()?,
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => icmp_type = Some(a.u8()?),
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => icmp_code = a.u8()?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(ty) = icmp_type {
        t.dport = u16::from(ty) << 8 | u16::from(icmp_code);
    }
    Ok(t)
}

/// Test and fuzz support: the ctnetlink message the kernel would send for `entry`.
#[doc(hidden)]
pub fn encode(event: EventType, entry: &Entry, seq: u32) -> Vec<u8> {
    use netlink::encode_attr as a;
    fn addr(ip: &IpAddr) -> Vec<u8> {
        match ip {
            IpAddr::V4(v) => v.octets().to_vec(),
            IpAddr::V6(v) => v.octets().to_vec(),
        }
    }
    let tuple = |t: &Tuple| {
        let (s, d) = if t.src.is_ipv4() { (CTA_IP_V4_SRC, CTA_IP_V4_DST) } else { (CTA_IP_V6_SRC, CTA_IP_V6_DST) };
        let mut ipn = a(s, false, &addr(&t.src));
        ipn.extend(a(d, false, &addr(&t.dst)));
        let mut proto = a(CTA_PROTO_NUM, false, &[t.proto]);
        if matches!(t.proto, IPPROTO_ICMP | IPPROTO_ICMPV6) {
            proto.extend(a(CTA_PROTO_ICMP_ID, false, &t.sport.to_be_bytes()));
            proto.extend(a(CTA_PROTO_ICMP_TYPE, false, &[(t.dport >> 8) as u8]));
            proto.extend(a(CTA_PROTO_ICMP_CODE, false, &[t.dport as u8]));
        } else {
            proto.extend(a(CTA_PROTO_SRC_PORT, false, &t.sport.to_be_bytes()));
            proto.extend(a(CTA_PROTO_DST_PORT, false, &t.dport.to_be_bytes()));
        }
        let mut v = a(CTA_TUPLE_IP, true, &ipn);
        v.extend(a(CTA_TUPLE_PROTO, true, &proto));
        v
    };
    let mut payload = vec![entry.family, 0, 0, 0];
    payload.extend(a(CTA_TUPLE_ORIG, true, &tuple(&entry.orig)));
    if let Some(r) = &entry.reply {
        payload.extend(a(CTA_TUPLE_REPLY, true, &tuple(r)));
    }
    payload.extend(a(CTA_STATUS, false, &entry.status.to_be_bytes()));
    if let Some(t) = entry.timeout {
        payload.extend(a(CTA_TIMEOUT, false, &t.to_be_bytes()));
    }
    if let Some(m) = entry.mark {
        payload.extend(a(CTA_MARK, false, &m.to_be_bytes()));
    }
    if let Some(s) = entry.tcp_state {
        let state = s as u8;
        let tcp = a(CTA_PROTOINFO_TCP_STATE, false, &[state]);
        payload.extend(a(CTA_PROTOINFO, true, &a(CTA_PROTOINFO_TCP, true, &tcp)));
    }
    payload.extend(a(CTA_ID, false, &entry.id.to_be_bytes()));
    if let Some(z) = entry.zone {
        payload.extend(a(CTA_ZONE, false, &z.to_be_bytes()));
    }
    if let Some(c) = entry.counters {
        for (kind, packets, bytes) in
            [(CTA_COUNTERS_ORIG, c.orig_packets, c.orig_bytes), (CTA_COUNTERS_REPLY, c.reply_packets, c.reply_bytes)]
        {
            let mut nested = a(CTA_COUNTERS_PACKETS, false, &packets.to_be_bytes());
            nested.extend(a(CTA_COUNTERS_BYTES, false, &bytes.to_be_bytes()));
            payload.extend(a(kind, true, &nested));
        }
    }
    let (kind, flags) = match event {
        EventType::New => (msg_type(IPCTNL_MSG_CT_NEW), netlink::NLM_F_CREATE | netlink::NLM_F_EXCL),
        EventType::Update => (msg_type(IPCTNL_MSG_CT_NEW), 0),
        EventType::Destroy => (msg_type(IPCTNL_MSG_CT_DELETE), 0),
    };
    netlink::encode_message(kind, flags, seq, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn tcp(id: u32, src: &str, sport: u16, dst: &str, dport: u16, state: TcpState) -> Entry {
        let (s, d): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        Entry {
            id,
            family: if s.is_ipv4() { netlink::AF_INET } else { netlink::AF_INET6 },
            orig: Tuple { src: s, dst: d, proto: IPPROTO_TCP, sport, dport },
            reply: Some(Tuple { src: d, dst: s, proto: IPPROTO_TCP, sport: dport, dport: sport }),
            tcp_state: Some(state),
            status: IPS_SEEN_REPLY | IPS_ASSURED,
            timeout: Some(431_999),
            mark: Some(0),
            zone: None,
            counters: None,
        }
    }

    #[test]
    fn entries_round_trip_through_the_wire_format() {
        let entries = [
            tcp(7, "10.0.0.1", 40000, "10.0.0.2", 80, TcpState::Established),
            tcp(8, "2001:db8::1", 40001, "2001:db8::2", 443, TcpState::SynSent),
            Entry {
                orig: Tuple {
                    proto: IPPROTO_ICMP,
                    sport: 77,
                    dport: 8 << 8,
                    ..tcp(9, "10.0.0.1", 0, "10.0.0.3", 0, TcpState::None).orig
                },
                reply: None,
                tcp_state: None,
                ..tcp(9, "10.0.0.1", 0, "10.0.0.3", 0, TcpState::None)
            },
            Entry {
                counters: Some(Counters { orig_packets: 5, orig_bytes: 300, reply_packets: 4, reply_bytes: 1 << 40 }),
                ..tcp(10, "10.0.0.1", 40002, "10.0.0.2", 80, TcpState::Established)
            },
        ];
        for (i, e) in entries.iter().enumerate() {
            for event in [EventType::New, EventType::Update, EventType::Destroy] {
                let bytes = encode(event, e, i as u32);
                let m = netlink::messages(&bytes).next().unwrap().unwrap();
                let (got_event, got) = decode(&m).unwrap().unwrap();
                assert_eq!((got_event, &got), (event, e));
            }
        }
        assert_eq!(entries[0].phase(), Some(Phase::Open));
        assert_eq!(entries[1].phase(), Some(Phase::Opening));
        assert_eq!(entries[2].phase(), None);
    }

    #[test]
    fn the_spec_state_mapping() {
        use TcpState::*;
        let want = [
            (SynSent, Some(Phase::Opening)),
            (SynRecv, Some(Phase::Opening)),
            (Established, Some(Phase::Open)),
            (FinWait, Some(Phase::Closing)),
            (CloseWait, Some(Phase::Closing)),
            (LastAck, Some(Phase::Closing)),
            (TimeWait, Some(Phase::Closing)),
            (Close, Some(Phase::Closed)),
            (None, Option::None),
        ];
        for (s, p) in want {
            assert_eq!(s.phase(), p, "{}", s.name());
            assert_eq!(TcpState::from_u8(s as u8), Some(s));
        }
        assert_eq!(TcpState::from_u8(42), Option::None);
    }

    #[test]
    fn other_messages_are_not_entries() {
        let done = netlink::encode_message(netlink::NLMSG_DONE, 0, 1, &[0, 0, 0, 0]);
        assert_eq!(decode(&netlink::messages(&done).next().unwrap().unwrap()), Ok(Option::None));
        let no_tuple = netlink::encode_message(msg_type(IPCTNL_MSG_CT_NEW), 0, 1, &[2, 0, 0, 0]);
        assert!(decode(&netlink::messages(&no_tuple).next().unwrap().unwrap()).is_err());
    }

    #[test]
    fn the_dump_request_is_a_get() {
        let r = dump_request(3, netlink::AF_UNSPEC);
        let m = netlink::messages(&r).next().unwrap().unwrap();
        assert_eq!(m.kind, msg_type(IPCTNL_MSG_CT_GET));
        assert_eq!(m.flags, netlink::NLM_F_REQUEST | netlink::NLM_F_DUMP);
    }
}

/// Messages a real kernel (6.18) sent, captured once with `floodgate-load capture-ctnetlink`
/// in a network namespace where, over IPv4 and IPv6, four TCP connections to port 7001 were
/// made (three held open, one closed by the client) and a UDP datagram sent to port 7002:
/// the events as they came, then a dump of the table. The decoder is checked against them,
/// not only against bytes its own encoder wrote.
#[cfg(test)]
mod kernel_fixtures {
    use super::*;
    use crate::netlink::{AF_INET, AF_INET6};
    use std::net::IpAddr;

    /// Every message of every fixture file whose name starts with `prefix`, decoded.
    fn decoded(prefix: &str) -> Vec<(EventType, Entry)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kernel");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("fixtures/kernel")
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .collect();
        files.sort();
        let mut out = Vec::new();
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            for m in netlink::messages(&bytes) {
                let m = m.unwrap_or_else(|e| panic!("{}: {e:?}", f.display()));
                if let Some(d) = decode(&m).unwrap_or_else(|e| panic!("{}: {e:?}", f.display())) {
                    out.push(d);
                }
            }
        }
        out
    }

    fn tcp_states(events: &[(EventType, Entry)], sport: u16) -> Vec<(EventType, Option<TcpState>)> {
        events.iter().filter(|(_, e)| e.orig.sport == sport).map(|(t, e)| (*t, e.tcp_state)).collect()
    }

    #[test]
    fn kernel_events_decode_as_the_connections_went() {
        let events = decoded("events");
        for family in [AF_INET, AF_INET6] {
            let local: IpAddr = if family == AF_INET { "127.0.0.1".parse().unwrap() } else { "::1".parse().unwrap() };
            let tcp: Vec<&Entry> = events
                .iter()
                .filter(|(t, e)| *t == EventType::New && e.family == family && e.orig.proto == IPPROTO_TCP)
                .map(|(_, e)| e)
                .collect();
            assert_eq!(tcp.len(), 4, "four connections, family {family}");
            for e in &tcp {
                assert_eq!((e.orig.src, e.orig.dst, e.orig.dport), (local, local, 7001));
                let reply = e.reply.as_ref().unwrap();
                assert_eq!((reply.sport, reply.dport), (7001, e.orig.sport), "the reply tuple mirrors");
                let states = tcp_states(&events, e.orig.sport);
                let handshake = [
                    (EventType::New, Some(TcpState::SynSent)),
                    (EventType::Update, Some(TcpState::SynRecv)),
                    (EventType::Update, Some(TcpState::Established)),
                ];
                assert_eq!(&states[..3], &handshake, "{states:?}");
            }
            // The one the client closed went on to FIN_WAIT, then CLOSE_WAIT.
            let closed: Vec<_> = tcp
                .iter()
                .filter(|e| tcp_states(&events, e.orig.sport).iter().any(|(_, s)| *s == Some(TcpState::FinWait)))
                .collect();
            assert_eq!(closed.len(), 1, "family {family}");
            assert!(tcp_states(&events, closed[0].orig.sport).contains(&(EventType::Update, Some(TcpState::CloseWait))));
            let udp: Vec<&Entry> = events
                .iter()
                .filter(|(t, e)| *t == EventType::New && e.family == family && e.orig.proto == IPPROTO_UDP)
                .map(|(_, e)| e)
                .collect();
            assert_eq!(udp.len(), 1);
            assert_eq!((udp[0].orig.dport, udp[0].tcp_state), (7002, None));
            assert!(udp[0].timeout.is_some());
        }
    }

    #[test]
    fn a_kernel_dump_decodes_every_entry() {
        let dump = decoded("dump");
        assert!(dump.iter().all(|(t, _)| *t == EventType::Update), "a dump's entries read as updates");
        let established = dump.iter().filter(|(_, e)| e.tcp_state == Some(TcpState::Established)).count();
        let close_wait = dump.iter().filter(|(_, e)| e.tcp_state == Some(TcpState::CloseWait)).count();
        let udp = dump.iter().filter(|(_, e)| e.orig.proto == IPPROTO_UDP).count();
        assert_eq!((established, close_wait, udp), (6, 2, 2), "{dump:?}");
        assert_eq!(dump.len(), 10);
        for family in [AF_INET, AF_INET6] {
            assert_eq!(dump.iter().filter(|(_, e)| e.family == family).count(), 5);
        }
        assert!(dump.iter().all(|(_, e)| e.id != 0 && e.timeout.is_some() && e.mark == Some(0)));
    }
}
