//! The table's health, as `conntrack -S` and `conntrack -C` read it: ctnetlink's statistics
//! requests (`IPCTNL_MSG_CT_GET_STATS_CPU`, a dump with one message per CPU, and
//! `IPCTNL_MSG_CT_GET_STATS`, the entry count and the table's limit).
//!
//! Neither walks the table: the kernel answers from counters, so reading them costs the same
//! with 100 entries as with a million. Both are read-only requests, like the dump.
//!
//! The count is the namespace's (as `/proc/sys/net/netfilter/nf_conntrack_count` inside it);
//! the limit is `nf_conntrack_max`, one for the whole host. The per-CPU statistics are the
//! namespace's; [`CpuStats`] sums them over CPUs, as node_exporter does.

use crate::ctnetlink::msg_type;
use crate::netlink::{self, Malformed, Message};

const IPCTNL_MSG_CT_GET_STATS_CPU: u16 = 4;
const IPCTNL_MSG_CT_GET_STATS: u16 = 5;

// enum ctattr_stats_cpu
const CTA_STATS_FOUND: u16 = 2;
const CTA_STATS_INVALID: u16 = 4;
const CTA_STATS_INSERT: u16 = 8;
const CTA_STATS_INSERT_FAILED: u16 = 9;
const CTA_STATS_DROP: u16 = 10;
const CTA_STATS_EARLY_DROP: u16 = 11;
const CTA_STATS_ERROR: u16 = 12;
const CTA_STATS_SEARCH_RESTART: u16 = 13;
const CTA_STATS_CLASH_RESOLVE: u16 = 14;
const CTA_STATS_CHAIN_TOOLONG: u16 = 15;

// enum ctattr_stats_global
const CTA_STATS_GLOBAL_ENTRIES: u16 = 1;
const CTA_STATS_GLOBAL_MAX_ENTRIES: u16 = 2;

/// The per-CPU statistics dump request (`conntrack -S`).
pub fn cpu_stats_request(seq: u32) -> Vec<u8> {
    netlink::request(
        msg_type(IPCTNL_MSG_CT_GET_STATS_CPU),
        netlink::NLM_F_REQUEST | netlink::NLM_F_DUMP,
        seq,
        netlink::AF_UNSPEC,
    )
}

/// The entry count and limit request (`conntrack -C`, and the limit), acknowledged so the
/// reader knows when the answer is complete.
pub fn table_size_request(seq: u32) -> Vec<u8> {
    netlink::request(
        msg_type(IPCTNL_MSG_CT_GET_STATS),
        netlink::NLM_F_REQUEST | netlink::NLM_F_ACK,
        seq,
        netlink::AF_UNSPEC,
    )
}

/// The kernel's conntrack statistics, one CPU's or summed over CPUs. Names as `conntrack -S`
/// prints them; node_exporter's `node_nf_conntrack_stat_*` where it has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Lookups that found an entry.
    pub found: u64,
    /// Packets conntrack could not track (malformed, out of window, …).
    pub invalid: u64,
    /// Entries inserted (kernels before 5.10; later ones send 0).
    pub insert: u64,
    /// Inserts that failed: the entry was there already (a race), or the table was full.
    pub insert_failed: u64,
    /// Packets dropped because a new entry could not be made ("table full, dropping packet").
    pub drop: u64,
    /// Entries evicted early to make room when the table was full.
    pub early_drop: u64,
    /// Packets with an ICMP error conntrack could not match.
    pub error: u64,
    /// Lookups restarted because the table was resized under them.
    pub search_restart: u64,
    /// Insert races resolved by reusing the other entry (5.9 and later).
    pub clash_resolve: u64,
    /// Hash chains found too long (5.16 and later).
    pub chain_toolong: u64,
}

impl CpuStats {
    /// Adds another CPU's counts.
    pub fn add(&mut self, other: &CpuStats) {
        self.found += other.found;
        self.invalid += other.invalid;
        self.insert += other.insert;
        self.insert_failed += other.insert_failed;
        self.drop += other.drop;
        self.early_drop += other.early_drop;
        self.error += other.error;
        self.search_restart += other.search_restart;
        self.clash_resolve += other.clash_resolve;
        self.chain_toolong += other.chain_toolong;
    }

    /// Each statistic with its name (as `conntrack -S` prints it, `chaintoolong` spelt out).
    pub fn named(&self) -> [(&'static str, u64); 10] {
        [
            ("found", self.found),
            ("invalid", self.invalid),
            ("insert", self.insert),
            ("insert_failed", self.insert_failed),
            ("drop", self.drop),
            ("early_drop", self.early_drop),
            ("error", self.error),
            ("search_restart", self.search_restart),
            ("clash_resolve", self.clash_resolve),
            ("chain_toolong", self.chain_toolong),
        ]
    }
}

/// What one statistics message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsMessage {
    /// One CPU's statistics (the CPU is the nfgenmsg's resource id, as the kernel sends it).
    Cpu {
        /// The CPU.
        cpu: u16,
        /// Its counts.
        stats: CpuStats,
    },
    /// The namespace's entry count and the host's limit.
    TableSize {
        /// Entries in the table now (`nf_conntrack_count`).
        entries: u32,
        /// Entries the table may hold (`nf_conntrack_max`).
        limit: u32,
    },
}

/// The statistics in one message; `Ok(None)` for any other message (an acknowledgement,
/// `NLMSG_DONE`, an entry).
pub fn decode_stats(msg: &Message) -> Result<Option<StatsMessage>, Malformed> {
    if msg.kind == msg_type(IPCTNL_MSG_CT_GET_STATS_CPU) {
        let (nf, rest) = netlink::nfgen(msg.payload)?;
        let mut s = CpuStats::default();
        for attr in netlink::attrs(rest) {
            let attr = attr?;
            let field = match attr.kind {
                CTA_STATS_FOUND => &mut s.found,
                CTA_STATS_INVALID => &mut s.invalid,
                CTA_STATS_INSERT => &mut s.insert,
                CTA_STATS_INSERT_FAILED => &mut s.insert_failed,
                CTA_STATS_DROP => &mut s.drop,
                CTA_STATS_EARLY_DROP => &mut s.early_drop,
                CTA_STATS_ERROR => &mut s.error,
                CTA_STATS_SEARCH_RESTART => &mut s.search_restart,
                CTA_STATS_CLASH_RESOLVE => &mut s.clash_resolve,
                CTA_STATS_CHAIN_TOOLONG => &mut s.chain_toolong,
                // Unused since 3.x (searched, new, ignore, delete, delete_list), or newer.
                _ => continue,
            };
            *field = u64::from(attr.be32()?);
        }
        Ok(Some(StatsMessage::Cpu { cpu: nf.res_id, stats: s }))
    } else if msg.kind == msg_type(IPCTNL_MSG_CT_GET_STATS) {
        let (_, rest) = netlink::nfgen(msg.payload)?;
        let (mut entries, mut limit) = (None, None);
        for attr in netlink::attrs(rest) {
            let attr = attr?;
            match attr.kind {
                CTA_STATS_GLOBAL_ENTRIES => entries = Some(attr.be32()?),
                CTA_STATS_GLOBAL_MAX_ENTRIES => limit = Some(attr.be32()?),
                _ => {}
            }
        }
        let entries = entries.ok_or(Malformed("table statistics without the entry count"))?;
        let limit = limit.ok_or(Malformed("table statistics without the limit"))?;
        Ok(Some(StatsMessage::TableSize { entries, limit }))
    } else {
        Ok(None)
    }
}

/// The table's health in one namespace: its size against its limit, and the statistics
/// summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableHealth {
    /// Entries now.
    pub entries: u32,
    /// The limit (0: not known).
    pub limit: u32,
    /// Statistics summed over CPUs.
    pub stats: CpuStats,
    /// CPUs that reported.
    pub cpus: u32,
}

impl TableHealth {
    /// Takes in what a statistics message says (other messages are ignored).
    pub fn take(&mut self, message: StatsMessage) {
        match message {
            StatsMessage::Cpu { stats, .. } => {
                self.stats.add(&stats);
                self.cpus += 1;
            }
            StatsMessage::TableSize { entries, limit } => {
                self.entries = entries;
                self.limit = limit;
            }
        }
    }

    /// Entries ÷ limit (0 to 1, above 1 only while the kernel is over a lowered limit);
    /// `None` when the limit is not known.
    pub fn fill_ratio(&self) -> Option<f64> {
        (self.limit > 0).then(|| f64::from(self.entries) / f64::from(self.limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{encode_attr, encode_message, messages};

    fn health(bytes: &[u8]) -> TableHealth {
        let mut h = TableHealth::default();
        for msg in messages(bytes) {
            if let Some(s) = decode_stats(&msg.unwrap()).unwrap() {
                h.take(s);
            }
        }
        h
    }

    /// Captured from this kernel (6.x) in a test namespace with 41 entries, for both
    /// requests: the count and limit, then two CPUs' statistics.
    #[test]
    fn the_kernels_answers_decode() {
        let size = health(include_bytes!("../tests/fixtures/stats-global.bin"));
        assert_eq!((size.entries, size.limit, size.cpus), (41, 262_144, 0));
        assert_eq!(size.fill_ratio(), Some(41.0 / 262_144.0));
        let cpus = health(include_bytes!("../tests/fixtures/stats-cpu.bin"));
        assert_eq!(cpus.cpus, 2);
        assert_eq!(cpus.stats, CpuStats::default());
        assert_eq!(cpus.fill_ratio(), None);
    }

    fn cpu_message(cpu: u16, values: &[(u16, u32)]) -> Vec<u8> {
        let mut payload = vec![0, 0];
        payload.extend_from_slice(&cpu.to_be_bytes());
        for (kind, v) in values {
            payload.extend(encode_attr(*kind, false, &v.to_be_bytes()));
        }
        encode_message(msg_type(IPCTNL_MSG_CT_GET_STATS_CPU), netlink::NLM_F_MULTI, 1, &payload)
    }

    /// A full table: drops and early drops, summed over CPUs; the size at its limit.
    #[test]
    fn a_full_table_reads_as_one() {
        let mut bytes =
            cpu_message(0, &[(CTA_STATS_DROP, 7), (CTA_STATS_EARLY_DROP, 100), (CTA_STATS_INSERT_FAILED, 3)]);
        bytes.extend(cpu_message(1, &[(CTA_STATS_DROP, 5), (CTA_STATS_SEARCH_RESTART, 2), (1, 99), (40, 1)]));
        let mut size = vec![0, 0, 0, 0];
        size.extend(encode_attr(CTA_STATS_GLOBAL_ENTRIES, false, &65_536u32.to_be_bytes()));
        size.extend(encode_attr(CTA_STATS_GLOBAL_MAX_ENTRIES, false, &65_536u32.to_be_bytes()));
        bytes.extend(encode_message(msg_type(IPCTNL_MSG_CT_GET_STATS), 0, 2, &size));
        let h = health(&bytes);
        assert_eq!(h.fill_ratio(), Some(1.0));
        assert_eq!(h.cpus, 2);
        let want = CpuStats { drop: 12, early_drop: 100, insert_failed: 3, search_restart: 2, ..CpuStats::default() };
        assert_eq!(h.stats, want);
        assert_eq!(h.stats.named()[4], ("drop", 12));
    }

    #[test]
    fn short_or_missing_values_are_errors_not_zeros() {
        let short = encode_message(
            msg_type(IPCTNL_MSG_CT_GET_STATS_CPU),
            0,
            1,
            &[[0u8, 0, 0, 0].as_slice(), &encode_attr(CTA_STATS_DROP, false, &[1, 2])].concat(),
        );
        let msg = messages(&short).next().unwrap().unwrap();
        assert!(decode_stats(&msg).is_err());
        let no_limit = encode_message(
            msg_type(IPCTNL_MSG_CT_GET_STATS),
            0,
            1,
            &[[0u8, 0, 0, 0].as_slice(), &encode_attr(CTA_STATS_GLOBAL_ENTRIES, false, &[0, 0, 0, 1])].concat(),
        );
        let msg = messages(&no_limit).next().unwrap().unwrap();
        assert!(decode_stats(&msg).is_err());
    }

    #[test]
    fn requests_are_read_only_dumps_and_gets() {
        let r = cpu_stats_request(9);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), msg_type(IPCTNL_MSG_CT_GET_STATS_CPU));
        assert_eq!(u16::from_ne_bytes([r[6], r[7]]), netlink::NLM_F_REQUEST | netlink::NLM_F_DUMP);
        let r = table_size_request(9);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), msg_type(IPCTNL_MSG_CT_GET_STATS));
    }
}
