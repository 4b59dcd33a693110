//! A small eBPF assembler: the instructions the kernel reads (`struct bpf_insn`), registers,
//! and labels resolved at the end, so a program is written as a list of calls that is its own
//! source (building floodgate needs no clang). Used by the guard's socket filter
//! ([`crate::kernel`]) and the receive spread ([`crate::spread`]).

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
const AND: u8 = 0x50;
const MOD: u8 = 0x90;
const JA: u8 = 0x00;
pub(crate) const JEQ: u8 = 0x10;
pub(crate) const JGT: u8 = 0x20;
pub(crate) const JNE: u8 = 0x50;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;

/// `BPF_PSEUDO_MAP_FD`: a 64-bit immediate load of a map.
const PSEUDO_MAP_FD: u8 = 1;
// Helpers.
const MAP_LOOKUP_ELEM: i32 = 1;
pub(crate) const MAP_UPDATE_ELEM: i32 = 2;
pub(crate) const KTIME_GET_NS: i32 = 5;
pub(crate) const SK_SELECT_REUSEPORT: i32 = 82;

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
pub(crate) struct Label(usize);

/// Instructions with labels for jumps, resolved at the end.
#[derive(Default)]
pub(crate) struct Asm {
    insns: Vec<Insn>,
    /// (instruction index, label) for jumps to patch.
    fixups: Vec<(usize, usize)>,
    /// Label → instruction index.
    labels: Vec<Option<usize>>,
}

impl Asm {
    pub(crate) fn raw(&mut self, code: u8, dst: R, src: R, off: i16, imm: i32) {
        self.insns.push(Insn { code, regs: (dst as u8) | ((src as u8) << 4), off, imm });
    }
    pub(crate) fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }
    pub(crate) fn place(&mut self, l: Label) {
        self.labels[l.0] = Some(self.insns.len());
    }
    pub(crate) fn mov(&mut self, dst: R, src: R) {
        self.raw(ALU64 | MOV | X, dst, src, 0, 0);
    }
    pub(crate) fn mov_imm(&mut self, dst: R, imm: i32) {
        self.raw(ALU64 | MOV | K, dst, R::R0, 0, imm);
    }
    pub(crate) fn add(&mut self, dst: R, src: R) {
        self.raw(ALU64 | ADD | X, dst, src, 0, 0);
    }
    pub(crate) fn add_imm(&mut self, dst: R, imm: i32) {
        self.raw(ALU64 | ADD | K, dst, R::R0, 0, imm);
    }
    pub(crate) fn sub(&mut self, dst: R, src: R) {
        self.raw(ALU64 | SUB | X, dst, src, 0, 0);
    }
    pub(crate) fn or(&mut self, dst: R, src: R) {
        self.raw(ALU64 | OR | X, dst, src, 0, 0);
    }
    pub(crate) fn lsh_imm(&mut self, dst: R, imm: i32) {
        self.raw(ALU64 | LSH | K, dst, R::R0, 0, imm);
    }
    pub(crate) fn rsh_imm(&mut self, dst: R, imm: i32) {
        self.raw(ALU64 | RSH | K, dst, R::R0, 0, imm);
    }
    pub(crate) fn and_imm(&mut self, dst: R, imm: i32) {
        self.raw(ALU64 | AND | K, dst, R::R0, 0, imm);
    }
    /// `dst = (u32)dst % imm` (32-bit: the verifier takes a constant divisor).
    pub(crate) fn mod32_imm(&mut self, dst: R, imm: i32) {
        self.raw(ALU | MOD | K, dst, R::R0, 0, imm);
    }
    /// `dst = *(u64 *)(src + off)`.
    pub(crate) fn load64(&mut self, dst: R, src: R, off: i16) {
        self.raw(LDX | MEM | DW, dst, src, off, 0);
    }
    /// `*(u32 *)(dst + off) = src`.
    pub(crate) fn store32(&mut self, dst: R, off: i16, src: R) {
        self.raw(STX | MEM | W, dst, src, off, 0);
    }
    /// `*(u32 *)(dst + off) = imm`.
    pub(crate) fn store32_imm(&mut self, dst: R, off: i16, imm: i32) {
        self.raw(ST | MEM | W, dst, R::R0, off, imm);
    }
    /// `dst = htobe32(dst)`.
    pub(crate) fn swap_to_be32(&mut self, dst: R) {
        self.raw(ALU | END | TO_BE, dst, R::R0, 0, 32);
    }
    /// `dst = *(u32 *)(src + off)`.
    pub(crate) fn load32(&mut self, dst: R, src: R, off: i16) {
        self.raw(LDX | MEM | W, dst, src, off, 0);
    }
    /// `*(u64 *)(dst + off) = src`.
    pub(crate) fn store64(&mut self, dst: R, off: i16, src: R) {
        self.raw(STX | MEM | DW, dst, src, off, 0);
    }
    /// `*(u64 *)(dst + off) = imm`.
    pub(crate) fn store64_imm(&mut self, dst: R, off: i16, imm: i32) {
        self.raw(ST | MEM | DW, dst, R::R0, off, imm);
    }
    /// `lock *(u64 *)(dst + off) += src`.
    pub(crate) fn atomic_add64(&mut self, dst: R, off: i16, src: R) {
        self.raw(STX | ATOMIC | DW, dst, src, off, ADD as i32);
    }
    /// `r0 = ntohl(*(u32 *)(packet + off))`, from the network header with `SKF_NET_OFF`; a load
    /// past the packet ends the program (the datagram is dropped: it is not a whole IP packet).
    pub(crate) fn load_abs32(&mut self, off: i32) {
        self.raw(LD | ABS | W, R::R0, R::R0, 0, off);
    }
    pub(crate) fn load_map(&mut self, dst: R, fd: i32) {
        self.raw(LD | DW | IMM, dst, R::R0, 0, fd);
        self.insns.push(Insn { code: 0, regs: 0, off: 0, imm: 0 });
        let last = self.insns.len() - 2;
        self.insns[last].regs |= PSEUDO_MAP_FD << 4;
    }
    pub(crate) fn call(&mut self, helper: i32) {
        self.raw(JMP | CALL, R::R0, R::R0, 0, helper);
    }
    pub(crate) fn exit(&mut self) {
        self.raw(JMP | EXIT, R::R0, R::R0, 0, 0);
    }
    pub(crate) fn jump(&mut self, op: u8, dst: R, src: Option<R>, imm: i32, to: Label) {
        let (mode, src) = match src {
            Some(s) => (X, s),
            None => (K, R::R0),
        };
        self.fixups.push((self.insns.len(), to.0));
        self.raw(JMP | op | mode, dst, src, 0, imm);
    }
    pub(crate) fn goto(&mut self, to: Label) {
        self.jump(JA, R::R0, None, 0, to);
    }
    /// `r0 = bpf_map_lookup_elem(map, r10 + key)`: the entry, or 0 (clobbers r1–r5).
    pub(crate) fn lookup(&mut self, map: i32, key: i16) {
        self.load_map(R::R1, map);
        self.mov(R::R2, R::R10);
        self.add_imm(R::R2, i32::from(key));
        self.call(MAP_LOOKUP_ELEM);
    }
    /// Adds one to the per-CPU array `stats` at the index in r1, through the 8-byte stack
    /// slot `slot` (clobbers r0–r5).
    pub(crate) fn count(&mut self, stats: i32, slot: i16) {
        use R::*;
        let done = self.label();
        self.store64(R10, slot, R1);
        self.lookup(stats, slot);
        self.jump(JEQ, R0, None, 0, done);
        self.load64(R1, R0, 0);
        self.add_imm(R1, 1);
        self.store64(R0, 0, R1);
        self.place(done);
    }
    pub(crate) fn finish(mut self) -> Vec<Insn> {
        for (at, label) in self.fixups {
            let target = self.labels[label].expect("every label placed");
            self.insns[at].off = (target as i64 - at as i64 - 1) as i16;
        }
        self.insns
    }
}

/// Test check of an assembled program: every jump lands inside it, map loads carry the pseudo
/// flag and an fd in `fds`, and it ends with an exit.
#[cfg(test)]
pub(crate) fn check(p: &[Insn], fds: std::ops::RangeInclusive<i32>) {
    for (i, insn) in p.iter().enumerate() {
        let class = insn.code & 0x07;
        let op = insn.code & 0xf0;
        if class == JMP && op != CALL && op != EXIT {
            let target = i as i64 + 1 + i64::from(insn.off);
            assert!((0..p.len() as i64).contains(&target), "insn {i} jumps to {target}");
        }
    }
    let loads: Vec<&Insn> = p.iter().filter(|i| i.code == (LD | DW | IMM)).collect();
    assert!(!loads.is_empty() && loads.iter().all(|i| i.regs >> 4 == PSEUDO_MAP_FD && fds.contains(&i.imm)));
    assert_eq!(p.last().map(|i| i.code), Some(JMP | EXIT));
}
