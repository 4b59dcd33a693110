//! Sketches to and from their wire form.

use floodgate_sketch::ddsketch::{Store, MAX_BINS};
use floodgate_sketch::{DDSketch, Distinct};

use crate::proto;

/// A sketch or set that breaks the protocol's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadState(pub &'static str);

impl std::fmt::Display for BadState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BadState {}

/// The wire form of a sketch.
pub fn sketch_to_wire(s: &DDSketch) -> proto::Sketch {
    proto::Sketch {
        positive_offset: s.positive.offset,
        positive_counts: s.positive.counts.clone(),
        negative_offset: s.negative.offset,
        negative_counts: s.negative.counts.clone(),
        zeros: s.zeros,
    }
}

/// A sketch from the wire; bounded like one built locally.
pub fn sketch_from_wire(w: &proto::Sketch) -> Result<DDSketch, BadState> {
    if w.positive_counts.len() > MAX_BINS || w.negative_counts.len() > MAX_BINS {
        return Err(BadState("sketch with more bins than allowed"));
    }
    let fits = |offset: i32, n: usize| offset.checked_add(n as i32).is_some();
    if !fits(w.positive_offset, w.positive_counts.len()) || !fits(w.negative_offset, w.negative_counts.len()) {
        return Err(BadState("sketch bins out of range"));
    }
    Ok(DDSketch {
        positive: Store { offset: w.positive_offset, counts: w.positive_counts.clone() },
        negative: Store { offset: w.negative_offset, counts: w.negative_counts.clone() },
        zeros: w.zeros,
    })
}

/// The wire form of a set.
pub fn set_to_wire(d: &Distinct) -> proto::Set {
    match d {
        Distinct::Exact(hashes) => proto::Set { hashes: hashes.iter().copied().collect(), registers: Vec::new() },
        Distinct::Registers(regs) => proto::Set { hashes: Vec::new(), registers: regs.to_vec() },
    }
}

/// A set from the wire.
pub fn set_from_wire(w: &proto::Set) -> Result<Distinct, BadState> {
    match (w.hashes.is_empty(), w.registers.is_empty()) {
        (_, true) => {
            if w.hashes.len() > Distinct::EXACT_MAX {
                return Err(BadState("more set hashes than the exact form allows"));
            }
            let mut d = Distinct::default();
            for h in &w.hashes {
                d.insert_hash(*h);
            }
            Ok(d)
        }
        (true, false) => {
            Distinct::from_registers(&w.registers).ok_or(BadState("set registers of the wrong size or value"))
        }
        (false, false) => Err(BadState("set with both hashes and registers")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut s = DDSketch::new();
        for v in [-3.5, 0.0, 1.0, 250.0, 1e6] {
            s.add(v);
        }
        assert_eq!(sketch_from_wire(&sketch_to_wire(&s)).unwrap(), s);
        let mut d = Distinct::default();
        d.insert(b"a");
        d.insert(b"b");
        assert_eq!(set_from_wire(&set_to_wire(&d)).unwrap(), d);
        for i in 0..3000u32 {
            d.insert(&i.to_le_bytes());
        }
        assert_eq!(set_from_wire(&set_to_wire(&d)).unwrap(), d);
    }

    #[test]
    fn malformed_state_is_refused() {
        let too_many = proto::Sketch { positive_counts: vec![1; MAX_BINS + 1], ..Default::default() };
        assert!(sketch_from_wire(&too_many).is_err());
        let overflow = proto::Sketch { positive_offset: i32::MAX, positive_counts: vec![1, 1], ..Default::default() };
        assert!(sketch_from_wire(&overflow).is_err());
        let both = proto::Set { hashes: vec![1], registers: vec![0; 65536] };
        assert!(set_from_wire(&both).is_err());
        let short = proto::Set { hashes: vec![], registers: vec![0; 10] };
        assert!(set_from_wire(&short).is_err());
    }
}
