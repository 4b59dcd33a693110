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

/// One instruction, as the kernel reads it (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// Destination register (low 4 bits) and source register (high 4 bits).
    pub regs: u8,
    /// Offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

impl Insn {
    /// Its 8 bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = self.regs;
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

// Opcode parts (include/uapi/linux/bpf.h, bpf_common.h).
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const JMP: u8 = 0x05;
const ALU: u8 = 0x04;
const ALU64: u8 = 0x07;
/// Byte swap (`BPF_END`), to big-endian with `BPF_TO_BE`.
const END: u8 = 0xd0;
const TO_BE: u8 = 0x08;
const W: u8 = 0x00;
const DW: u8 = 0x18;
const IMM: u8 = 0x00;
const ABS: u8 = 0x20;
const MEM: u8 = 0x60;
const ATOMIC: u8 = 0xc0;
const K: u8 = 0x00;
const X: u8 = 0x08;
const ADD: u8 = 0x00;
const SUB: u8 = 0x10;
const OR: u8 = 0x40;
const LSH: u8 = 0x60;
const RSH: u8 = 0x70;
const MOV: u8 = 0xb0;
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JNE: u8 = 0x50;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;

/// `SKF_NET_OFF`: absolute loads from here on read the network header.
const NET_OFF: i32 = -0x100000;
/// `BPF_PSEUDO_MAP_FD`: a 64-bit immediate load of a map.
const PSEUDO_MAP_FD: u8 = 1;
// Helpers.
const MAP_LOOKUP_ELEM: i32 = 1;
const MAP_UPDATE_ELEM: i32 = 2;
const KTIME_GET_NS: i32 = 5;
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

/// Registers.
#[derive(Clone, Copy)]
#[allow(missing_docs)]
pub enum R {
    R0 = 0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    R10,
}

/// A jump target not yet placed.
#[derive(Clone, Copy)]
struct Label(usize);

/// Instructions with labels for jumps, resolved at the end.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    /// (instruction index, label) for jumps to patch.
    fixups: Vec<(usize, usize)>,
    /// Label → instruction index.
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn raw(&mut self, code: u8, dst: R, src: R, off: i16, imm: i32) {
        self.insns.push(Insn { code, regs: (dst as u8) | ((src as u8) << 4), off, imm });
    }
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }
    fn place(&mut self, l: Label) {
        self.labels[l.0] = Some(self.insns.len());
    }
    fn mov(&mut self, dst: R, src: R) {
        self.raw(ALU64 | MOV | X, dst, src, 0, 0);
    }
    fn mov_imm(&mut self, dst: R, imm: i32) {
        self.raw(ALU64 | MOV | K, dst, R::R0, 0, imm);
    }
    fn add(&mut self, dst: R, src: R) {
        self.raw(ALU64 | ADD | X, dst, src, 0, 0);
    }
    fn add_imm(&mut self, dst: R, imm: i32) {
        self.raw(ALU64 | ADD | K, dst, R::R0, 0, imm);
    }
    fn sub(&mut self, dst: R, src: R) {
        self.raw(ALU64 | SUB | X, dst, src, 0, 0);
    }
    fn or(&mut self, dst: R, src: R) {
        self.raw(ALU64 | OR | X, dst, src, 0, 0);
    }
    fn lsh_imm(&mut self, dst: R, imm: i32) {
        self.raw(ALU64 | LSH | K, dst, R::R0, 0, imm);
    }
    fn rsh_imm(&mut self, dst: R, imm: i32) {
        self.raw(ALU64 | RSH | K, dst, R::R0, 0, imm);
    }
    /// `dst = *(u64 *)(src + off)`.
    fn load64(&mut self, dst: R, src: R, off: i16) {
        self.raw(LDX | MEM | DW, dst, src, off, 0);
    }
    /// `*(u32 *)(dst + off) = src`.
    fn store32(&mut self, dst: R, off: i16, src: R) {
        self.raw(STX | MEM | W, dst, src, off, 0);
    }
    /// `*(u32 *)(dst + off) = imm`.
    fn store32_imm(&mut self, dst: R, off: i16, imm: i32) {
        self.raw(ST | MEM | W, dst, R::R0, off, imm);
    }
    /// `dst = htobe32(dst)`.
    fn swap_to_be32(&mut self, dst: R) {
        self.raw(ALU | END | TO_BE, dst, R::R0, 0, 32);
    }
    /// `dst = *(u32 *)(src + off)`.
    fn load32(&mut self, dst: R, src: R, off: i16) {
        self.raw(LDX | MEM | W, dst, src, off, 0);
    }
    /// `*(u64 *)(dst + off) = src`.
    fn store64(&mut self, dst: R, off: i16, src: R) {
        self.raw(STX | MEM | DW, dst, src, off, 0);
    }
    /// `*(u64 *)(dst + off) = imm`.
    fn store64_imm(&mut self, dst: R, off: i16, imm: i32) {
        self.raw(ST | MEM | DW, dst, R::R0, off, imm);
    }
    /// `lock *(u64 *)(dst + off) += src`.
    fn atomic_add64(&mut self, dst: R, off: i16, src: R) {
        self.raw(STX | ATOMIC | DW, dst, src, off, ADD as i32);
    }
    /// `r0 = ntohl(*(u32 *)(packet + off))`, from the network header with [`NET_OFF`]; a load
    /// past the packet ends the program (the datagram is dropped: it is not a whole IP packet).
    fn load_abs32(&mut self, off: i32) {
        self.raw(LD | ABS | W, R::R0, R::R0, 0, off);
    }
    fn load_map(&mut self, dst: R, fd: i32) {
        self.raw(LD | DW | IMM, dst, R::R0, 0, fd);
        self.insns.push(Insn { code: 0, regs: 0, off: 0, imm: 0 });
        let last = self.insns.len() - 2;
        self.insns[last].regs |= PSEUDO_MAP_FD << 4;
    }
    fn call(&mut self, helper: i32) {
        self.raw(JMP | CALL, R::R0, R::R0, 0, helper);
    }
    fn exit(&mut self) {
        self.raw(JMP | EXIT, R::R0, R::R0, 0, 0);
    }
    fn jump(&mut self, op: u8, dst: R, src: Option<R>, imm: i32, to: Label) {
        let (mode, src) = match src {
            Some(s) => (X, s),
            None => (K, R::R0),
        };
        self.fixups.push((self.insns.len(), to.0));
        self.raw(JMP | op | mode, dst, src, 0, imm);
    }
    fn goto(&mut self, to: Label) {
        self.jump(JA, R::R0, None, 0, to);
    }
    fn finish(mut self) -> Vec<Insn> {
        for (at, label) in self.fixups {
            let target = self.labels[label].expect("every label placed");
            self.insns[at].off = (target as i64 - at as i64 - 1) as i16;
        }
        self.insns
    }
}

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
    a.load_map(R1, maps.config);
    a.mov(R2, R10);
    a.add_imm(R2, INDEX as i32);
    a.call(MAP_LOOKUP_ELEM);
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
    a.load_map(R1, maps.allow);
    a.mov(R2, R10);
    a.add_imm(R2, ALLOW as i32);
    a.call(MAP_LOOKUP_ELEM);
    a.jump(JEQ, R0, None, 0, drop_allow);
    a.place(allowed);
    // This host's processes as one source: came over loopback from one of the host's
    // addresses (127.0.0.0/8, ::1, its interfaces': the host map). A local process may send
    // from any of them; a source forged onto loopback (a raw socket) stays itself.
    a.load64(R1, R8, 40);
    a.jump(JEQ, R1, None, 0, local_done);
    a.load32(R1, R6, SKB_INGRESS_IFINDEX);
    a.jump(JNE, R1, None, LOOPBACK_IFINDEX, local_done);
    a.load_map(R1, maps.host);
    a.mov(R2, R10);
    a.add_imm(R2, ALLOW as i32);
    a.call(MAP_LOOKUP_ELEM);
    a.jump(JEQ, R0, None, 0, local_done);
    a.store64_imm(R10, KEY, 0);
    a.store64_imm(R10, KEY + 8, i32::from(LOCAL_FAMILY));
    a.place(local_done);
    // r9: 1 when the source is new (for the port's newcomer burst).
    a.mov_imm(R9, 0);
    // Per source: no limit, no lookup.
    a.load64(R1, R8, 0);
    a.jump(JEQ, R1, None, 0, port);
    a.load_map(R1, maps.sources);
    a.mov(R2, R10);
    a.add_imm(R2, KEY as i32);
    a.call(MAP_LOOKUP_ELEM);
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
    a.load_map(R1, maps.port);
    a.mov(R2, R10);
    a.add_imm(R2, INDEX as i32);
    a.call(MAP_LOOKUP_ELEM);
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
    count(&mut a, maps.stats);
    a.load32(R0, R6, SKB_LEN);
    a.exit();
    // Dropped by the source limit: counted in the source's entry (r5) too.
    a.place(drop_source);
    a.mov_imm(R1, 1);
    a.atomic_add64(R5, 8, R1);
    a.mov_imm(R1, Stat::SourceLimit as i32);
    count(&mut a, maps.stats);
    a.mov_imm(R0, 0);
    a.exit();
    a.place(drop_port);
    a.mov_imm(R1, Stat::PortLimit as i32);
    count(&mut a, maps.stats);
    a.mov_imm(R0, 0);
    a.exit();
    a.place(drop_allow);
    a.mov_imm(R1, Stat::NotAllowed as i32);
    count(&mut a, maps.stats);
    a.mov_imm(R0, 0);
    a.exit();
    a.finish()
}

/// Adds one to the per-CPU stat whose index is in r1 (clobbers r0–r5).
fn count(a: &mut Asm, stats: i32) {
    use R::*;
    let done = a.label();
    a.store64(R10, INDEX, R1);
    a.load_map(R1, stats);
    a.mov(R2, R10);
    a.add_imm(R2, INDEX as i32);
    a.call(MAP_LOOKUP_ELEM);
    a.jump(JEQ, R0, None, 0, done);
    a.load64(R1, R0, 0);
    a.add_imm(R1, 1);
    a.store64(R0, 0, R1);
    a.place(done);
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
        for (i, insn) in p.iter().enumerate() {
            let class = insn.code & 0x07;
            let op = insn.code & 0xf0;
            if class == JMP && op != CALL && op != EXIT {
                let target = i as i64 + 1 + i64::from(insn.off);
                assert!((0..p.len() as i64).contains(&target), "insn {i} jumps to {target}");
            }
        }
        // Map loads carry the fd and the pseudo flag.
        let loads: Vec<&Insn> = p.iter().filter(|i| i.code == (LD | DW | IMM)).collect();
        assert!(loads.iter().all(|i| i.regs >> 4 == PSEUDO_MAP_FD && (3..=8).contains(&i.imm)));
        assert_eq!(p.last().map(|i| i.code), Some(JMP | EXIT));
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
