//! A protobuf field scanner: a message's fields as `(number, value)`, read in place.
//!
//! prost decodes a whole message into owned structs: for a `Batch` that means one `Series`
//! (about 150 bytes) per series on the wire, however few bytes each took there (an empty one
//! takes 2), so a 16 MiB frame could ask for more than a gigabyte. An aggregator instead checks
//! a batch's shape with this scanner, without allocating, then decodes its series one at a
//! time (each bounded in size). Written by hand because no crate offers an allocation-free
//! field iterator over a borrowed buffer; the wire format is four cases.

/// One field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 2: bytes, a string or an embedded message.
    Bytes(&'a [u8]),
    /// Wire type 5.
    Fixed32(u32),
}

/// Bytes that are not a protobuf message (a cut varint or field, a group, field number 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// The fields of a message, in wire order.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    rest: &'a [u8],
}

/// Iterates the fields of `message`.
pub fn fields(message: &[u8]) -> Fields<'_> {
    Fields { rest: message }
}

fn varint(buf: &mut &[u8]) -> Result<u64, Malformed> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first().ok_or(Malformed)?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(value);
        }
    }
    Err(Malformed)
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], Malformed> {
    if buf.len() < n {
        return Err(Malformed);
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = (|| {
            let key = varint(&mut self.rest)?;
            let number = u32::try_from(key >> 3).map_err(|_| Malformed)?;
            if number == 0 {
                return Err(Malformed);
            }
            let value = match key & 7 {
                0 => Value::Varint(varint(&mut self.rest)?),
                1 => Value::Fixed64(u64::from_le_bytes(take(&mut self.rest, 8)?.try_into().map_err(|_| Malformed)?)),
                2 => {
                    let len = usize::try_from(varint(&mut self.rest)?).map_err(|_| Malformed)?;
                    Value::Bytes(take(&mut self.rest, len)?)
                }
                5 => Value::Fixed32(u32::from_le_bytes(take(&mut self.rest, 4)?.try_into().map_err(|_| Malformed)?)),
                _ => return Err(Malformed),
            };
            Ok((number, value))
        })();
        if field.is_err() {
            // One error, then the end.
            self.rest = &[];
        }
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn reads_what_prost_writes() {
        let batch = crate::proto::Batch {
            seq: 300,
            interval_start_ms: -5,
            interval_ms: 10_000,
            series: vec![crate::proto::Series {
                key: b"a".to_vec(),
                value: Some(crate::proto::series::Value::Counter(1.5)),
            }],
        };
        let bytes = batch.encode_to_vec();
        let got: Vec<_> = fields(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(got[0], (1, Value::Varint(300)));
        assert_eq!(got[1], (2, Value::Varint(-5i64 as u64)));
        assert_eq!(got[2], (3, Value::Varint(10_000)));
        let Value::Bytes(series) = got[3].1 else { panic!("series is a message") };
        let inner: Vec<_> = fields(series).collect::<Result<_, _>>().unwrap();
        assert_eq!(inner, vec![(1, Value::Bytes(b"a")), (2, Value::Fixed64(1.5f64.to_bits()))]);
    }

    #[test]
    fn malformed_input_ends_with_one_error() {
        for bad in [&[0x08][..], &[0x0a, 0x05, 1], &[0x00, 0x01], &[0x0b], &[0xff; 11], &[0x09, 1, 2]] {
            let got: Vec<_> = fields(bad).collect();
            assert_eq!(got.last(), Some(&Err(Malformed)), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            for f in fields(&bytes) {
                if let Ok((_, Value::Bytes(b))) = f {
                    let _ = fields(b).count();
                }
            }
        }
    }
}
