//! The event log (`log_events`): one line per event, as JSON or in the conntrack tool's
//! format (`conntrack -E`), the two formats conntrack_exporter users know.

use std::fmt::Write as _;

use crate::ctnetlink::{Entry, EventType, Tuple, IPPROTO_ICMP, IPPROTO_ICMPV6, IPS_ASSURED, IPS_SEEN_REPLY};
use crate::label::{HostPort, Remote};

/// The protocol's name as the conntrack tool prints it.
pub fn protocol_name(proto: u8) -> &'static str {
    match proto {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        33 => "dccp",
        47 => "gre",
        58 => "icmpv6",
        132 => "sctp",
        136 => "udplite",
        _ => "unknown",
    }
}

/// The JSON line (without its newline): `event_type`, `original_source_host`,
/// `original_destination_host`, `reply_source_host`, `reply_destination_host`, `remote_host`,
/// `state` (`Opening` … `Closed`, `null` for a non-TCP entry), and `protocol`.
pub fn json(event: EventType, entry: &Entry, remote: &Remote) -> String {
    let mut out = String::with_capacity(320);
    let o = &entry.orig;
    let _ = write!(
        out,
        "{{\"event_type\":\"{}\",\"original_source_host\":\"{}\",\"original_destination_host\":\"{}\"",
        event.as_str(),
        HostPort(&o.src, o.sport),
        HostPort(&o.dst, o.dport)
    );
    match &entry.reply {
        Some(r) => {
            let _ = write!(
                out,
                ",\"reply_source_host\":\"{}\",\"reply_destination_host\":\"{}\"",
                HostPort(&r.src, r.sport),
                HostPort(&r.dst, r.dport)
            );
        }
        None => out.push_str(",\"reply_source_host\":null,\"reply_destination_host\":null"),
    }
    let _ = write!(out, ",\"remote_host\":\"{remote}\",\"state\":");
    // A destroyed entry has closed, whatever state its last message carried.
    let phase = match event {
        EventType::Destroy if o.proto == crate::ctnetlink::IPPROTO_TCP => Some(crate::ctnetlink::Phase::Closed),
        _ => entry.phase(),
    };
    match phase {
        Some(p) => {
            let _ = write!(out, "\"{}\"", p.as_str());
        }
        None => out.push_str("null"),
    }
    let _ = write!(out, ",\"protocol\":\"{}\"}}", protocol_name(o.proto));
    out
}

fn tuple(out: &mut String, t: &Tuple) {
    let _ = write!(out, "src={} dst={} ", t.src, t.dst);
    if matches!(t.proto, IPPROTO_ICMP | IPPROTO_ICMPV6) {
        let _ = write!(out, "type={} code={} id={} ", t.dport >> 8, t.dport & 0xff, t.sport);
    } else {
        let _ = write!(out, "sport={} dport={} ", t.sport, t.dport);
    }
}

/// The conntrack tool's event line (`conntrack -E`), e.g.
/// `    [NEW] tcp      6 120 SYN_SENT src=10.0.0.1 dst=10.0.0.2 sport=40000 dport=80 [UNREPLIED] src=10.0.0.2 dst=10.0.0.1 sport=80 dport=40000`.
pub fn netfilter(event: EventType, entry: &Entry) -> String {
    let mut out = String::with_capacity(200);
    let tag = match event {
        EventType::New => "[NEW]",
        EventType::Update => "[UPDATE]",
        EventType::Destroy => "[DESTROY]",
    };
    let o = &entry.orig;
    let _ = write!(out, "{tag:>9} {:<8} {} ", protocol_name(o.proto), o.proto);
    if event != EventType::Destroy {
        if let Some(t) = entry.timeout {
            let _ = write!(out, "{t} ");
        }
        if let Some(s) = entry.tcp_state {
            let _ = write!(out, "{} ", s.name());
        }
    }
    tuple(&mut out, o);
    if entry.status & IPS_SEEN_REPLY == 0 {
        out.push_str("[UNREPLIED] ");
    }
    if let Some(r) = &entry.reply {
        tuple(&mut out, r);
    }
    if entry.status & IPS_ASSURED != 0 {
        out.push_str("[ASSURED] ");
    }
    if let Some(m) = entry.mark.filter(|m| *m != 0) {
        let _ = write!(out, "mark={m} ");
    }
    if let Some(z) = entry.zone {
        let _ = write!(out, "zone={z} ");
    }
    out.truncate(out.trim_end().len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctnetlink::{TcpState, IPPROTO_TCP};
    use crate::label::Locality;
    use std::net::IpAddr;

    fn entry(state: TcpState, status: u32) -> Entry {
        let (s, d): (IpAddr, IpAddr) = ("10.0.1.65".parse().unwrap(), "151.101.2.49".parse().unwrap());
        Entry {
            id: 5,
            family: 2,
            orig: Tuple { src: s, dst: d, proto: IPPROTO_TCP, sport: 40806, dport: 443 },
            reply: Some(Tuple { src: d, dst: s, proto: IPPROTO_TCP, sport: 443, dport: 40806 }),
            tcp_state: Some(state),
            status,
            timeout: Some(120),
            mark: Some(0),
            zone: None,
            counters: None,
        }
    }

    #[test]
    fn json_has_the_exporter_keys() {
        let e = entry(TcpState::Established, IPS_SEEN_REPLY);
        let line = json(EventType::New, &e, &Remote::of(&e, &Locality::default()));
        assert_eq!(
            line,
            "{\"event_type\":\"new\",\"original_source_host\":\"10.0.1.65:40806\",\"original_destination_host\":\"151.101.2.49:443\",\
             \"reply_source_host\":\"151.101.2.49:443\",\"reply_destination_host\":\"10.0.1.65:40806\",\
             \"remote_host\":\"151.101.2.49:443\",\"state\":\"Open\",\"protocol\":\"tcp\"}"
        );
        let gone = json(EventType::Destroy, &e, &Remote::of(&e, &Locality::default()));
        assert!(gone.contains("\"event_type\":\"destroy\"") && gone.contains("\"state\":\"Closed\""));
    }

    #[test]
    fn netfilter_lines_are_the_conntrack_tools() {
        assert_eq!(
            netfilter(EventType::New, &entry(TcpState::SynSent, 0)),
            "    [NEW] tcp      6 120 SYN_SENT src=10.0.1.65 dst=151.101.2.49 sport=40806 dport=443 [UNREPLIED] src=151.101.2.49 dst=10.0.1.65 sport=443 dport=40806"
        );
        assert_eq!(
            netfilter(EventType::Update, &entry(TcpState::Established, IPS_SEEN_REPLY | IPS_ASSURED)),
            " [UPDATE] tcp      6 120 ESTABLISHED src=10.0.1.65 dst=151.101.2.49 sport=40806 dport=443 src=151.101.2.49 dst=10.0.1.65 sport=443 dport=40806 [ASSURED]"
        );
        assert_eq!(
            netfilter(EventType::Destroy, &entry(TcpState::Close, IPS_SEEN_REPLY)),
            "[DESTROY] tcp      6 src=10.0.1.65 dst=151.101.2.49 sport=40806 dport=443 src=151.101.2.49 dst=10.0.1.65 sport=443 dport=40806"
        );
    }
}
