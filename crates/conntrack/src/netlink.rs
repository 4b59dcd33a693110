//! Netlink framing (RFC 3549, `linux/netlink.h`) and the nfnetlink header.
//!
//! Everything is bounds-checked: a short or lying length is an error for that message, never
//! a panic or a read past the buffer.

/// `NLMSG_NOOP`.
pub const NLMSG_NOOP: u16 = 1;
/// `NLMSG_ERROR`: an error (or an acknowledgement) for a request.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub const NLMSG_DONE: u16 = 3;
/// `NLMSG_OVERRUN`.
pub const NLMSG_OVERRUN: u16 = 4;

/// `NLM_F_REQUEST`.
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`: answer with an acknowledgement (an error message with code 0) at the end.
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_MULTI`: part of a multipart reply.
pub const NLM_F_MULTI: u16 = 0x2;
/// `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`).
pub const NLM_F_DUMP: u16 = 0x300;
/// `NLM_F_EXCL`, on a NEW event: the entry did not exist before.
pub const NLM_F_EXCL: u16 = 0x200;
/// `NLM_F_CREATE`, on a NEW event: the entry was created.
pub const NLM_F_CREATE: u16 = 0x400;

/// `NLA_F_NESTED`.
const NLA_F_NESTED: u16 = 0x8000;
/// `NLA_F_NET_BYTEORDER`.
const NLA_F_NET_BYTEORDER: u16 = 0x4000;

const HEADER: usize = 16;

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed netlink message: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

/// One netlink message.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// `nlmsg_type`.
    pub kind: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// `nlmsg_pid`.
    pub pid: u32,
    /// What follows the header.
    pub payload: &'a [u8],
}

impl Message<'_> {
    /// For `NLMSG_ERROR`: the (negative) errno, 0 for an acknowledgement.
    pub fn error_code(&self) -> Option<i32> {
        (self.kind == NLMSG_ERROR)
            .then(|| self.payload.get(..4).map_or(-1, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]])))
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_ne(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

fn u32_ne(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// The messages of one `recv` buffer, in order. A message whose length does not fit ends the
/// iteration with an error (nothing after it can be trusted to be a message boundary).
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Result<Message<'_>, Malformed>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < HEADER {
            rest = &[];
            return Some(Err(Malformed("truncated header")));
        }
        let len = u32_ne(rest) as usize;
        if len < HEADER || len > rest.len() {
            rest = &[];
            return Some(Err(Malformed("length out of bounds")));
        }
        let m = Message {
            kind: u16_ne(&rest[4..]),
            flags: u16_ne(&rest[6..]),
            seq: u32_ne(&rest[8..]),
            pid: u32_ne(&rest[12..]),
            payload: &rest[HEADER..len],
        };
        rest = &rest[align4(len).min(rest.len())..];
        Some(Ok(m))
    })
}

/// One attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    /// Its type, without the nested/byte-order flags.
    pub kind: u16,
    /// Its value.
    pub value: &'a [u8],
}

impl<'a> Attr<'a> {
    /// The attributes nested in this one.
    pub fn nested(&self) -> impl Iterator<Item = Result<Attr<'a>, Malformed>> {
        attrs(self.value)
    }

    /// A one-byte value.
    pub fn u8(&self) -> Result<u8, Malformed> {
        self.value.first().copied().ok_or(Malformed("short u8 attribute"))
    }

    /// A big-endian (network order) 16-bit value, as ctnetlink sends ports.
    pub fn be16(&self) -> Result<u16, Malformed> {
        match self.value {
            [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(Malformed("short u16 attribute")),
        }
    }

    /// A big-endian 64-bit value, as ctnetlink sends packet and byte counters.
    pub fn be64(&self) -> Result<u64, Malformed> {
        match self.value.first_chunk::<8>() {
            Some(b) => Ok(u64::from_be_bytes(*b)),
            None => Err(Malformed("short u64 attribute")),
        }
    }

    /// A big-endian 32-bit value, as ctnetlink sends ids, status and timeouts.
    pub fn be32(&self) -> Result<u32, Malformed> {
        match self.value {
            [a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => Err(Malformed("short u32 attribute")),
        }
    }
}

/// The attributes in `buf` (a message's payload after its fixed header, or a nested value).
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<Attr<'_>, Malformed>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            // Trailing padding (fewer than 4 bytes) is not an attribute.
            rest = &[];
            return None;
        }
        let len = usize::from(u16_ne(rest));
        if len < 4 || len > rest.len() {
            rest = &[];
            return Some(Err(Malformed("attribute length out of bounds")));
        }
        let kind = u16_ne(&rest[2..]) & !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);
        let a = Attr { kind, value: &rest[4..len] };
        rest = &rest[align4(len).min(rest.len())..];
        Some(Ok(a))
    })
}

/// The nfnetlink header that starts every netfilter message's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NfGenMsg {
    /// Address family (`AF_INET`, `AF_INET6`, `AF_UNSPEC` for both).
    pub family: u8,
    /// `NFNETLINK_V0`.
    pub version: u8,
    /// Resource id (big-endian on the wire).
    pub res_id: u16,
}

/// Splits a netfilter message's payload into its nfnetlink header and its attributes.
pub fn nfgen(payload: &[u8]) -> Result<(NfGenMsg, &[u8]), Malformed> {
    match payload {
        [family, version, a, b, rest @ ..] => {
            Ok((NfGenMsg { family: *family, version: *version, res_id: u16::from_be_bytes([*a, *b]) }, rest))
        }
        _ => Err(Malformed("short nfgenmsg")),
    }
}

/// `AF_INET`.
pub const AF_INET: u8 = 2;
/// `AF_INET6`.
pub const AF_INET6: u8 = 10;
/// `AF_UNSPEC`.
pub const AF_UNSPEC: u8 = 0;

/// The bytes of a netlink request: header, nfgenmsg, no attributes.
pub fn request(kind: u16, flags: u16, seq: u32, family: u8) -> Vec<u8> {
    let len = (HEADER + 4) as u32;
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0, 0, 0]);
    out
}

/// Test and fuzz support: a netlink message built from parts.
#[doc(hidden)]
pub fn encode_message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = (HEADER + payload.len()) as u32;
    let mut out = Vec::new();
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align4(out.len()), 0);
    out
}

/// Test and fuzz support: one attribute (`nested` sets the flag).
#[doc(hidden)]
pub fn encode_attr(kind: u16, nested: bool, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&(kind | if nested { NLA_F_NESTED } else { 0 }).to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align4(out.len()), 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_attributes_round_trip() {
        let inner = encode_attr(1, false, &[7]);
        let mut payload = vec![AF_INET, 0, 0, 0];
        payload.extend(encode_attr(5, true, &inner));
        payload.extend(encode_attr(9, false, &0x0102_0304u32.to_be_bytes()));
        let mut buf = encode_message(0x100, NLM_F_MULTI, 42, &payload);
        buf.extend(encode_message(NLMSG_DONE, NLM_F_MULTI, 42, &[0, 0, 0, 0]));
        let msgs: Vec<_> = messages(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].kind, msgs[0].seq), (0x100, 42));
        assert_eq!(msgs[1].kind, NLMSG_DONE);
        let (nf, rest) = nfgen(msgs[0].payload).unwrap();
        assert_eq!(nf.family, AF_INET);
        let attrs: Vec<_> = attrs(rest).collect::<Result<_, _>>().unwrap();
        assert_eq!(attrs[0].kind, 5);
        assert_eq!(attrs[0].nested().next().unwrap().unwrap().u8().unwrap(), 7);
        assert_eq!(attrs[1].be32().unwrap(), 0x0102_0304);
    }

    #[test]
    fn lying_lengths_are_errors_not_panics() {
        let mut buf = encode_message(0x100, 0, 1, &[2, 0, 0, 0]);
        buf[0] = 200; // longer than the buffer
        assert!(matches!(messages(&buf).next(), Some(Err(_))));
        assert!(matches!(attrs(&[8, 0, 1, 0, 0]).next(), Some(Err(_))));
        assert!(attrs(&[0, 0]).next().is_none());
    }

    #[test]
    fn the_only_request_is_a_dump() {
        let r = request(0x101, NLM_F_REQUEST | NLM_F_DUMP, 7, AF_UNSPEC);
        let m = messages(&r).next().unwrap().unwrap();
        assert_eq!((m.kind, m.flags, m.seq), (0x101, NLM_F_REQUEST | NLM_F_DUMP, 7));
        assert_eq!(m.payload, &[AF_UNSPEC, 0, 0, 0]);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            for m in messages(&bytes).flatten() {
                if let Ok((_, rest)) = nfgen(m.payload) {
                    for a in attrs(rest).flatten() {
                        let _ = (a.u8(), a.be16(), a.be32());
                        for n in a.nested().flatten() {
                            let _ = n.be32();
                        }
                    }
                }
            }
        }
    }
}
