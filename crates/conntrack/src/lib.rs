//! Connection tracking for floodgate, with no IO.
//!
//! - [`netlink`]: netlink and nfnetlink framing — messages out of a receive buffer, attributes
//!   out of a message, the one request floodgate ever sends (a dump).
//! - [`ctnetlink`]: a conntrack entry ([`Entry`]) out of a `IPCTNL_MSG_CT_*` message: tuples,
//!   protocol, TCP state, status, id, timeout — and the event it reports.
//! - [`label`]: which end is remote, and the `host="ip:port"` label (inbound connections by
//!   client IP and local service port).
//! - [`table`]: per-label counts by state kept current event by event, bounded labels,
//!   closed connections shown for one scrape, resync after lost events.
//! - [`log`]: the event log lines, JSON and the conntrack tool's format.
//! - [`sockdiag`]: the fallback — the host's own TCP sockets (sock_diag) as entries.
//!
//! Written on the netlink wire format directly: no crate decodes dumps, events and every
//! attribute floodgate needs (netlink-packet-netfilter covers part of ctnetlink), and the
//! format is small, stable kernel ABI.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ctnetlink;
pub mod label;
pub mod log;
pub mod netlink;
pub mod sockdiag;
pub mod stats;
pub mod table;

pub use ctnetlink::{Entry, EventType, Phase, TcpState, Tuple};
pub use label::{Locality, Remote};
pub use table::{Counts, Label, Table};

/// Runs any bytes through every decoder — as a netlink receive buffer (ctnetlink entries,
/// sock_diag sockets), and each entry through a table and both log formats. Used by the fuzz
/// target and its regression corpus; panics only on a bug.
#[doc(hidden)]
pub fn exercise(data: &[u8]) {
    let local = Locality::new([], [(ctnetlink::IPPROTO_TCP, 22)]);
    let mut table = Table::new(4);
    for m in netlink::messages(data).flatten() {
        if let Ok(Some((event, entry))) = ctnetlink::decode(&m) {
            table.apply(event, &entry, &local, false);
            let _ = log::json(event, &entry, &Remote::of(&entry, &local));
            let _ = log::netfilter(event, &entry);
        }
        if let Ok(Some(socket)) = sockdiag::decode(&m) {
            if let Some(entry) = sockdiag::to_entry(&socket, socket.local.1 == 22) {
                table.apply(EventType::Update, &entry, &local, true);
            }
        }
    }
    let _ = table.scrape();
}

#[cfg(test)]
mod regressions {
    /// Every input the fuzzer ever crashed on (and the seeds) still runs cleanly.
    #[test]
    fn fuzz_regressions_replay() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/conntrack");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/regressions/conntrack") {
            crate::exercise(&std::fs::read(entry.expect("entry").path()).expect("read"));
            n += 1;
        }
        assert!(n > 0, "the regression corpus is empty");
    }

    /// Writes the seed corpus (real-shaped messages); run by hand: `cargo test -p
    /// floodgate-conntrack write_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_seeds() {
        use crate::ctnetlink::{encode, Entry, EventType, TcpState, Tuple, IPPROTO_TCP};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/conntrack");
        std::fs::create_dir_all(&dir).unwrap();
        let e = Entry {
            id: 7,
            family: 2,
            orig: Tuple {
                src: "10.0.0.1".parse().unwrap(),
                dst: "10.0.0.2".parse().unwrap(),
                proto: IPPROTO_TCP,
                sport: 40000,
                dport: 22,
            },
            reply: Some(Tuple {
                src: "10.0.0.2".parse().unwrap(),
                dst: "10.0.0.1".parse().unwrap(),
                proto: IPPROTO_TCP,
                sport: 22,
                dport: 40000,
            }),
            tcp_state: Some(TcpState::Established),
            status: 6,
            timeout: Some(120),
            mark: Some(0),
            zone: Some(1),
            counters: None,
        };
        let mut all = Vec::new();
        for (i, ev) in [EventType::New, EventType::Update, EventType::Destroy].into_iter().enumerate() {
            let bytes = encode(ev, &e, i as u32);
            std::fs::write(dir.join(format!("seed-ct-{i}")), &bytes).unwrap();
            all.extend(bytes);
        }
        all.extend(crate::sockdiag::dump_request(1, 2));
        std::fs::write(dir.join("seed-ct-all"), &all).unwrap();
    }
}
