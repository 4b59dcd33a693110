//! The receive spread: an `SK_REUSEPORT` eBPF program that chooses which of a UDP listener's
//! sockets (one per receive thread) takes each datagram.
//!
//! The kernel picks a socket of a `SO_REUSEPORT` group by a hash of the datagram's 4-tuple, so
//! everything one client socket sends lands on one socket and one thread: a busy application
//! with one StatsD client, or a relay forwarding from one socket, gets one core however many
//! the host has. This program leaves the kernel's choice alone for ordinary flows and spreads a
//! hot one (more than [`HOT_DATAGRAMS`] datagrams in a [`WINDOW_NS`] window, 25,600 a second)
//! over every socket, in turn, 128 datagrams at a time.
//!
//! Nothing that counts depends on which socket takes a datagram: the guard's limits are shared
//! by the listener's sockets (its user-space table, and the kernel layer's maps), and each
//! thread's aggregation is merged at flush (a gauge's last value by receive time). What a
//! spread flow loses is its order between threads.
//!
//! Per datagram: the flow's slot in an array map, by the kernel's 4-tuple hash ([`FLOWS`]
//! slots; flows sharing a slot count together), its window start and count; past the
//! threshold, or when the window before was hot (so a hot flow's first datagrams of each
//! window are spread too), the next socket in turn from the socket array (`bpf_sk_select_reuseport`). When the
//! selection fails (a socket closing) or a map is missing, the program selects nothing and
//! the kernel falls back to its hash. The datagrams spread are counted in a per-CPU array.

use crate::asm::{Asm, Insn, JEQ, JGT, JNE, KTIME_GET_NS, SK_SELECT_REUSEPORT};

/// The maps the program uses, by file descriptor.
#[derive(Debug, Clone, Copy)]
pub struct SpreadMaps {
    /// `BPF_MAP_TYPE_ARRAY`, [`FLOWS`] entries of [`FLOW_VALUE_SIZE`] bytes: a window's start
    /// (ns), the datagrams counted in it, whether the window before was hot, and the hot
    /// datagrams so far (their turn over the sockets).
    pub flows: i32,
    /// `BPF_MAP_TYPE_REUSEPORT_SOCKARRAY`: index → the listener's socket.
    pub sockets: i32,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`, one `u64` entry ([`SPREAD_COUNTED`]).
    pub stats: i32,
}

/// Slots of the flows map (a power of two: the hash is masked).
pub const FLOWS: u32 = 1024;
/// Bytes of a flows map value.
pub const FLOW_VALUE_SIZE: u32 = 32;
/// A hot flow goes to each socket in turn, 2^RUN_SHIFT datagrams at a time: a run keeps a
/// thread's datagrams together in the kernel's memory (per datagram at random, two threads
/// each took a third more CPU a datagram than one thread alone, freeing and copying memory
/// the other had touched; in runs of 128, a fifth).
const RUN_SHIFT: i32 = 7;
/// The window a flow's datagrams are counted over.
pub const WINDOW_NS: u64 = 10_000_000;
/// A flow with more datagrams than this in a window is spread.
pub const HOT_DATAGRAMS: u64 = 256;

// Immediates are 32-bit, signed; the hash is masked.
const _: () = assert!(2 * WINDOW_NS < i32::MAX as u64 && FLOWS.is_power_of_two());
const _: () = assert!(HOT_DATAGRAMS < i32::MAX as u64);

/// The stats map's one entry (index 0): datagrams sent to the next socket in turn (their
/// flow was hot). What the kernel's hash places is not counted: that would be a map lookup
/// for every datagram of every flow.
pub const SPREAD_COUNTED: u32 = 0;

/// `struct sk_reuseport_md`'s `hash`: the kernel's hash of the 4-tuple.
const MD_HASH: i16 = 32;
/// `SK_PASS`: deliver (to the selected socket, or by hash when none was).
const SK_PASS: i32 = 1;
/// Stack slot for map keys (8 bytes).
const INDEX: i16 = -8;

/// The program, for the maps `maps` and a group of `sockets` sockets.
pub fn program(maps: SpreadMaps, sockets: u32) -> Vec<Insn> {
    use crate::asm::R::*;
    let mut a = Asm::default();
    let (keep, new_window, spread, hot_before) = (a.label(), a.label(), a.label(), a.label());
    a.mov(R6, R1);
    // r8: the flow's slot.
    a.load32(R7, R6, MD_HASH);
    a.and_imm(R7, (FLOWS - 1) as i32);
    a.store64(R10, INDEX, R7);
    a.lookup(maps.flows, INDEX);
    a.jump(JEQ, R0, None, 0, keep);
    a.mov(R8, R0);
    // r9: now. A window over: this datagram starts the next.
    a.call(KTIME_GET_NS);
    a.mov(R9, R0);
    a.load64(R1, R8, 0);
    a.mov(R2, R9);
    a.sub(R2, R1);
    a.jump(JGT, R2, None, WINDOW_NS as i32, new_window);
    a.mov_imm(R1, 1);
    a.atomic_add64(R8, 8, R1);
    a.load64(R1, R8, 8);
    a.jump(JGT, R1, None, HOT_DATAGRAMS as i32, spread);
    a.load64(R1, R8, 16);
    a.jump(JNE, R1, None, 0, spread);
    a.goto(keep);
    // A new window: remember whether the last was hot (a window skipped is a cold one).
    a.place(new_window);
    let (cold, remembered) = (a.label(), a.label());
    a.load64(R1, R8, 8);
    a.jump(JGT, R2, None, (2 * WINDOW_NS) as i32, cold);
    a.jump(JGT, R1, None, HOT_DATAGRAMS as i32, hot_before);
    a.place(cold);
    a.store64_imm(R8, 16, 0);
    a.goto(remembered);
    a.place(hot_before);
    a.store64_imm(R8, 16, 1);
    a.place(remembered);
    a.store64(R8, 0, R9);
    a.store64_imm(R8, 8, 1);
    a.load64(R1, R8, 16);
    a.jump(JNE, R1, None, 0, spread);
    a.goto(keep);
    // Hot: the sockets in turn, a run at a time.
    a.place(spread);
    a.mov_imm(R1, 1);
    a.atomic_add64(R8, 24, R1);
    a.load64(R0, R8, 24);
    a.rsh_imm(R0, RUN_SHIFT);
    a.mod32_imm(R0, sockets.max(1) as i32);
    a.store64(R10, INDEX, R0);
    a.mov(R1, R6);
    a.load_map(R2, maps.sockets);
    a.mov(R3, R10);
    a.add_imm(R3, INDEX as i32);
    a.mov_imm(R4, 0);
    a.call(SK_SELECT_REUSEPORT);
    a.jump(JNE, R0, None, 0, keep);
    a.mov_imm(R1, SPREAD_COUNTED as i32);
    a.count(maps.stats, INDEX);
    a.place(keep);
    a.mov_imm(R0, SK_PASS);
    a.exit();
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_inside_the_program() {
        crate::asm::check(&program(SpreadMaps { flows: 3, sockets: 4, stats: 5 }, 2), 3..=5);
    }
}
