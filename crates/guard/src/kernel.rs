//! The guard's kernel half: an eBPF socket filter that applies the per-source and per-port
//! limits to a UDP socket's datagrams before the kernel queues them, so a flood larger than
//! floodgate can read is refused by source instead of overflowing the receive buffer (where
//! the kernel drops without looking at who sent what).
//!
//! The program is written here as instructions, with a small assembler, rather than compiled
//! from C: building floodgate then needs no clang, and the program below is its own source.
//! It is loaded as `BPF_PROG_TYPE_SOCKET_FILTER` and attached with `SO_ATTACH_BPF` to each of a
//! listener's sockets (the runtime does the syscalls).
//!
//! What it does with each datagram, in order:
//! 1. The source: an IPv4 address, or an IPv6 address's /64 (as the user-space guard keys
//!    them), read from the network header (`SKF_NET_OFF`). Anything else passes. With
//!    `local_one_source`, a datagram that came over loopback from one of the host's addresses
//!    (the host map) is one source: this host's processes, whichever address they chose.
//! 2. The allow-list, when one is set: the source's whole address looked up in a
//!    longest-prefix-match map of the listed blocks (IPv4 ones IPv4-mapped); a source outside
//!    it is dropped.
//! 3. The per-source limit: a GCRA cell per source in an LRU hash map of bounded size (the
//!    least recently seen sources are forgotten first, as in the user-space table). A source
//!    over its limit is dropped and counted in its entry.
//! 4. The per-port limit: one GCRA cell for the listener; newcomers (a source just added to
//!    the map) get half the burst, as in user space.
//! 5. Counters per outcome in a per-CPU array ([`Stat`]).
//!
//! The kernel charges datagrams, not messages: it cannot count StatsD lines without parsing.
//! It uses the same rates per datagram, so it never refuses what the user-space guard would
//! admit (a datagram holds at least one message) and holds a flood of datagrams to the rate
//! the user-space guard allows in messages; user space still charges each line.
//!
//! Cells are read and written without locks: two CPUs updating one source at the same moment
//! may both pass a datagram the limit would have split. The port cell is updated with an
//! atomic add of the interval, so the port limit never lets through more than its rate plus
//! what such races add on one source.

/// The maps the program uses, by file descriptor.
#[derive(Debug, Clone, Copy)]
pub struct Maps {
    /// `BPF_MAP_TYPE_ARRAY`, one [`Config`] entry.
    pub config: i32,
    /// `BPF_MAP_TYPE_LRU_HASH`: [`SourceKey`] → [`SourceCell`].
    pub sources: i32,
    /// `BPF_MAP_TYPE_ARRAY`, one `u64` entry: the port's cell (theoretical arrival time, ns).
    pub port: i32,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`, [`Stat::COUNT`] `u64` entries.
    pub stats: i32,
    /// `BPF_MAP_TYPE_LPM_TRIE`: [`ALLOW_KEY_SIZE`]-byte keys (prefix length, IPv6 address),
    /// one-byte values: the allow-list.
    pub allow: i32,
    /// `BPF_MAP_TYPE_LPM_TRIE`, keyed as `allow`: this host's addresses (127.0.0.0/8, ::1 and
    /// its interfaces'), whose senders are one source with `local_one_source`.
    pub host: i32,
}

/// The allow map's key: the prefix length (u32, host order) and 16 address bytes.
pub const ALLOW_KEY_SIZE: u32 = 20;

/// An allow map key.
pub fn allow_key(prefix_len: u32, addr: &[u8; 16]) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..4].copy_from_slice(&prefix_len.to_ne_bytes());
    key[4..].copy_from_slice(addr);
    key
}

/// The config map's one entry: the limits as GCRA parameters (ns; an interval of 0 is no
/// limit). Written by the runtime at start and on reload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Config {
    /// Per-source interval (1 s / rate).
    pub source_interval_ns: u64,
    /// Per-source burst tolerance.
    pub source_tolerance_ns: u64,
    /// Per-port interval.
    pub port_interval_ns: u64,
    /// Per-port burst tolerance for established sources (newcomers get half).
    pub port_tolerance_ns: u64,
    /// 1 when the allow-list is in force (the allow map holds it).
    pub allow_on: u64,
    /// 1 when every datagram from this host (it came over loopback from an address in the
    /// host map) counts as one source, whichever address it was sent from.
    pub local_one_source: u64,
}

impl Config {
    /// Bytes of the map value.
    pub const SIZE: u32 = 48;

    /// The map value's bytes.
    pub fn to_bytes(&self) -> [u8; 48] {
        let mut out = [0u8; 48];
        let fields = [
            self.source_interval_ns,
            self.source_tolerance_ns,
            self.port_interval_ns,
            self.port_tolerance_ns,
            self.allow_on,
            self.local_one_source,
        ];
        for (i, v) in fields.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
        }
        out
    }
}

/// The sources map's key: 16 bytes, the address (IPv4 in host order; an IPv6 /64 as its top
/// 64 bits, host order) and the family (4 or 6; [`LOCAL_FAMILY`] with address 0 for this
/// host's processes as one source).
pub const SOURCE_KEY_SIZE: u32 = 16;
/// The family of the sources map's key for this host's processes, all as one source.
pub const LOCAL_FAMILY: u8 = 1;
/// The loopback interface's index: the kernel gives it 1 in every network namespace.
const LOOPBACK_IFINDEX: i32 = 1;
/// The sources map's value: the cell (u64 ns) and datagrams dropped (u64).
pub const SOURCE_VALUE_SIZE: u32 = 16;

/// One source as the map holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceCell {
    /// The address: IPv4 in the low 32 bits, or an IPv6 /64's top 64 bits.
    pub addr: u64,
    /// 4 or 6.
    pub family: u8,
    /// Datagrams the kernel dropped from it.
    pub dropped: u64,
}

impl SourceCell {
    /// From a map key and value.
    pub fn from_bytes(key: &[u8], value: &[u8]) -> Option<SourceCell> {
        let word = |b: &[u8], at: usize| Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?));
        Some(SourceCell { addr: word(key, 0)?, family: word(key, 8)? as u8, dropped: word(value, 8)? })
    }

    /// Whether it stands for this host's processes ([`LOCAL_FAMILY`]).
    pub fn is_local(&self) -> bool {
        self.family == LOCAL_FAMILY
    }

    /// The source as an address (an IPv6 /64 as its first address; this host's processes
    /// as 127.0.0.1).
    pub fn ip(&self) -> std::net::IpAddr {
        if self.is_local() {
            return std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        }
        if self.family == 6 {
            std::net::IpAddr::V6(std::net::Ipv6Addr::from(u128::from(self.addr) << 64))
        } else {
            std::net::IpAddr::V4(std::net::Ipv4Addr::from(self.addr as u32))
        }
    }
}

/// What the program counts, the index in the stats map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    /// Passed on to the socket.
    Passed = 0,
    /// Dropped: the source over its limit.
    SourceLimit = 1,
    /// Dropped: the port over its limit.
    PortLimit = 2,
    /// Dropped: the source is outside the allow-list.
    NotAllowed = 3,
}

impl Stat {
    /// Entries in the stats map.
    pub const COUNT: u32 = 4;
    /// Every stat, in index order.
    pub const ALL: [Stat; 4] = [Stat::Passed, Stat::SourceLimit, Stat::PortLimit, Stat::NotAllowed];
}

use crate::asm::{Asm, JEQ, JGT, JNE, KTIME_GET_NS, MAP_UPDATE_ELEM};
pub use crate::asm::{Insn, R};

/// `SKF_NET_OFF`: absolute loads from here on read the network header.
const NET_OFF: i32 = -0x100000;
/// `BPF_NOEXIST`: insert only if absent.
const NOEXIST: i32 = 1;
// `struct __sk_buff` fields.
const SKB_LEN: i16 = 0;
const SKB_PROTOCOL: i16 = 16;
/// The interface the packet arrived on (`skb_iif`).
const SKB_INGRESS_IFINDEX: i16 = 36;
/// `htons(ETH_P_IP)` and `htons(ETH_P_IPV6)` as the `protocol` field reads on little-endian.
const PROTO_IPV4: i32 = 0x0008;
const PROTO_IPV6: i32 = 0xdd86;

/// Stack slots (offsets from r10).
const KEY: i16 = -16; // 16 bytes: addr, family
const VALUE: i16 = -32; // 16 bytes: cell, dropped
const INDEX: i16 = -40; // u32 array index (8-byte slot)
const ALLOW: i16 = -64; // 20 bytes: prefix length, IPv6 address

/// The program, for the maps `maps`.
pub fn program(maps: Maps) -> Vec<Insn> {
    use R::*;
    let mut a = Asm::default();
    let (pass, drop_source, drop_port, port, have_source, ipv6, keyed, new_source, tat_ok, port_tat_ok) =
        (a.label(), a.label(), a.label(), a.label(), a.label(), a.label(), a.label(), a.label(), a.label(), a.label());
    // r6: the skb (absolute loads need it there).
    a.mov(R6, R1);
    // The source, into the key on the stack.
    a.load32(R0, R6, SKB_PROTOCOL);
    a.jump(JEQ, R0, None, PROTO_IPV6, ipv6);
    a.jump(JNE, R0, None, PROTO_IPV4, pass);
    a.load_abs32(NET_OFF + 12); // IPv4 source address
    a.store64(R10, KEY, R0);
    a.store64_imm(R10, KEY + 8, 4);
    a.goto(keyed);
    a.place(ipv6);
    a.load_abs32(NET_OFF + 8); // IPv6 source, first 32 bits
    a.mov(R7, R0);
    a.lsh_imm(R7, 32);
    a.load_abs32(NET_OFF + 12); // next 32: the /64
    a.lsh_imm(R0, 32); // zero-extend the loaded word
    a.rsh_imm(R0, 32);
    a.or(R7, R0);
    a.store64(R10, KEY, R7);
    a.store64_imm(R10, KEY + 8, 6);
    a.place(keyed);
    // r7: now.
    a.call(KTIME_GET_NS);
    a.mov(R7, R0);
    // r8: the config.
    a.store64_imm(R10, INDEX, 0);
    a.lookup(maps.config, INDEX);
    a.jump(JEQ, R0, None, 0, pass);
    a.mov(R8, R0);
    // The source's whole address (IPv4-mapped), as the allow and host maps' key: built when
    // the allow-list is on, or when the datagram came over loopback and local senders are one
    // source (only then can it be from this host: the kernel drops a local source arriving
    // from outside).
    let (build, allow_v6, built, allowed, local_done, drop_allow) =
        (a.label(), a.label(), a.label(), a.label(), a.label(), a.label());
    a.load64(R1, R8, 32);
    a.jump(JNE, R1, None, 0, build);
    a.load64(R1, R8, 40);
    a.jump(JEQ, R1, None, 0, local_done);
    a.load32(R1, R6, SKB_INGRESS_IFINDEX);
    a.jump(JNE, R1, None, LOOPBACK_IFINDEX, local_done);
    a.place(build);
    a.store32_imm(R10, ALLOW, 128);
    a.load64(R1, R10, KEY + 8);
    a.jump(JEQ, R1, None, 6, allow_v6);
    a.store32_imm(R10, ALLOW + 4, 0);
    a.store32_imm(R10, ALLOW + 8, 0);
    a.store32_imm(R10, ALLOW + 12, 0xffff_0000u32 as i32); // bytes 00 00 ff ff
    a.load_abs32(NET_OFF + 12);
    a.swap_to_be32(R0);
    a.store32(R10, ALLOW + 16, R0);
    a.goto(built);
    a.place(allow_v6);
    for k in 0..4i16 {
        a.load_abs32(NET_OFF + 8 + 4 * i32::from(k));
        a.swap_to_be32(R0);
        a.store32(R10, ALLOW + 4 + 4 * k, R0);
    }
    a.place(built);
    // The allow-list: the address in the longest-prefix map of the listed blocks.
    a.load64(R1, R8, 32);
    a.jump(JEQ, R1, None, 0, allowed);
    a.lookup(maps.allow, ALLOW);
    a.jump(JEQ, R0, None, 0, drop_allow);
    a.place(allowed);
    // This host's processes as one source: came over loopback from one of the host's
    // addresses (127.0.0.0/8, ::1, its interfaces': the host map). A local process may send
    // from any of them; a source forged onto loopback (a raw socket) stays itself.
    a.load64(R1, R8, 40);
    a.jump(JEQ, R1, None, 0, local_done);
    a.load32(R1, R6, SKB_INGRESS_IFINDEX);
    a.jump(JNE, R1, None, LOOPBACK_IFINDEX, local_done);
    a.lookup(maps.host, ALLOW);
    a.jump(JEQ, R0, None, 0, local_done);
    a.store64_imm(R10, KEY, 0);
    a.store64_imm(R10, KEY + 8, i32::from(LOCAL_FAMILY));
    a.place(local_done);
    // r9: 1 when the source is new (for the port's newcomer burst).
    a.mov_imm(R9, 0);
    // Per source: no limit, no lookup.
    a.load64(R1, R8, 0);
    a.jump(JEQ, R1, None, 0, port);
    a.lookup(maps.sources, KEY);
    a.jump(JNE, R0, None, 0, have_source);
    // New source: its cell starts as if it had just sent one datagram.
    a.place(new_source);
    a.mov_imm(R9, 1);
    a.load64(R1, R8, 0);
    a.add(R1, R7);
    a.store64(R10, VALUE, R1);
    a.store64_imm(R10, VALUE + 8, 0);
    a.load_map(R1, maps.sources);
    a.mov(R2, R10);
    a.add_imm(R2, KEY as i32);
    a.mov(R3, R10);
    a.add_imm(R3, VALUE as i32);
    a.mov_imm(R4, NOEXIST);
    a.call(MAP_UPDATE_ELEM);
    a.goto(port);
    // Known source: tat = max(cell, now); over when tat + T - now > τ.
    a.place(have_source);
    a.mov(R5, R0); // the entry
    a.load64(R1, R5, 0);
    a.jump(JGT, R1, Some(R7), 0, tat_ok);
    a.mov(R1, R7);
    a.place(tat_ok);
    a.load64(R2, R8, 0);
    a.add(R1, R2); // new tat
    a.mov(R2, R1);
    a.sub(R2, R7);
    a.load64(R3, R8, 8);
    a.jump(JGT, R2, Some(R3), 0, drop_source);
    a.store64(R5, 0, R1);
    // Per port.
    a.place(port);
    a.load64(R1, R8, 16);
    a.jump(JEQ, R1, None, 0, pass);
    a.store64_imm(R10, INDEX, 0);
    a.lookup(maps.port, INDEX);
    a.jump(JEQ, R0, None, 0, pass);
    a.mov(R5, R0);
    a.load64(R1, R5, 0);
    a.jump(JGT, R1, Some(R7), 0, port_tat_ok);
    // The cell is in the past: bring it to now (a plain store; racing CPUs both write now).
    a.store64(R5, 0, R7);
    a.mov(R1, R7);
    a.place(port_tat_ok);
    a.load64(R2, R8, 16);
    a.add(R1, R2);
    a.sub(R1, R7); // new tat - now
    a.load64(R3, R8, 24); // τ; a newcomer gets half
    let whole = a.label();
    a.jump(JEQ, R9, None, 0, whole);
    a.rsh_imm(R3, 1);
    a.place(whole);
    a.jump(JGT, R1, Some(R3), 0, drop_port);
    a.load64(R2, R8, 16);
    a.atomic_add64(R5, 0, R2);
    // Passed.
    a.place(pass);
    a.mov_imm(R1, Stat::Passed as i32);
    a.count(maps.stats, INDEX);
    a.load32(R0, R6, SKB_LEN);
    a.exit();
    // Dropped by the source limit: counted in the source's entry (r5) too.
    a.place(drop_source);
    a.mov_imm(R1, 1);
    a.atomic_add64(R5, 8, R1);
    a.mov_imm(R1, Stat::SourceLimit as i32);
    a.count(maps.stats, INDEX);
    a.mov_imm(R0, 0);
    a.exit();
    a.place(drop_port);
    a.mov_imm(R1, Stat::PortLimit as i32);
    a.count(maps.stats, INDEX);
    a.mov_imm(R0, 0);
    a.exit();
    a.place(drop_allow);
    a.mov_imm(R1, Stat::NotAllowed as i32);
    a.count(maps.stats, INDEX);
    a.mov_imm(R0, 0);
    a.exit();
    a.finish()
}

/// The limits `rate` (per second, 0: none) and `burst_ns` as the program's interval and
/// tolerance, the same GCRA parameters as the user-space [`crate::Limit`].
pub fn gcra(limit: &crate::Limit) -> (u64, u64) {
    if limit.is_unlimited() {
        (0, 0)
    } else {
        (limit.interval_ns(), limit.tolerance_ns())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_inside_the_program() {
        let p = program(Maps { config: 3, sources: 4, port: 5, stats: 6, allow: 7, host: 8 });
        crate::asm::check(&p, 3..=8);
    }

    #[test]
    fn source_cells_read_back() {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&0xc612_0001u64.to_ne_bytes());
        key[8..].copy_from_slice(&4u64.to_ne_bytes());
        let mut value = [0u8; 16];
        value[8..].copy_from_slice(&7u64.to_ne_bytes());
        let cell = SourceCell::from_bytes(&key, &value).unwrap();
        assert_eq!(cell.ip(), "198.18.0.1".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(cell.dropped, 7);
        let v6 = SourceCell { addr: 0x2001_0db8_0000_0001, family: 6, dropped: 0 };
        assert_eq!(v6.ip(), "2001:db8:0:1::".parse::<std::net::IpAddr>().unwrap());
    }
}
