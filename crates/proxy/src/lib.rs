//! The PROXY protocol with no IO: the header a load balancer (HAProxy's `send-proxy` and
//! `send-proxy-v2`, AWS NLB, nginx stream, Envoy) writes before a connection's first byte,
//! read into the address of the client it stands for.
//!
//! The bytes are parsed by the `ppp` crate, which implements both versions of HAProxy's
//! specification and tells a header cut short (wait for more) from one that is wrong (close).
//! This crate adds what a listener needs on top:
//! - a bound: a header longer than [`MAX_HEADER`] is refused, whatever its length field says,
//!   so a sender cannot make a listener hold 64 KiB per connection before it is admitted;
//! - the address to use: the client's for a proxied connection, the connection's own for a
//!   balancer's health check (v2 `LOCAL`, v1 `UNKNOWN`, or addresses that are not IP);
//! - [`looks_like_header`], to refuse a header from an address that may not send one.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::net::SocketAddr;

use ppp::PartialResult;

/// The longest header taken. A v1 header is at most 107 bytes. A v2 header is 16 bytes, then
/// the addresses (36 for IPv6), then the TLVs: HAProxy's own (ALPN, authority, TLS facts, a
/// unique id) and a cloud balancer's endpoint id come to a few hundred bytes.
pub const MAX_HEADER: usize = 1024;

/// The v2 signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// The v1 prefix.
const V1_PREFIX: &[u8] = b"PROXY ";

/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;

/// What the bytes read so far hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A header may still be completed by more bytes (fewer than [`MAX_HEADER`] so far).
    Incomplete,
    /// A whole header of `len` bytes; the stream's own data starts after it.
    Header {
        /// Its length in bytes.
        len: usize,
        /// The client the balancer stands for; `None` when the connection is the balancer's own
        /// (a health check) or names no IP address: use the connection's address.
        client: Option<SocketAddr>,
    },
    /// Not a header that can be taken: the connection is closed.
    Invalid(Invalid),
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// The bytes do not start a PROXY header at all.
    NotAHeader,
    /// They start one, but it is malformed.
    Malformed,
    /// Longer than [`MAX_HEADER`].
    TooLong,
}

impl Invalid {
    /// A short name, for logs and a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::NotAHeader => "not_a_header",
            Invalid::Malformed => "malformed",
            Invalid::TooLong => "too_long",
        }
    }
}

/// Reads the header at the start of `bytes` (what a connection has sent so far).
pub fn parse(bytes: &[u8]) -> Parsed {
    let bytes = &bytes[..bytes.len().min(MAX_HEADER)];
    if bytes.is_empty() {
        return Parsed::Incomplete;
    }
    // A v1 header is one line: until its CRLF (or its 107 bytes) it may be cut short. `ppp`
    // decides some prefixes (one ending in a space) for good, so the line is awaited here.
    if bytes.starts_with(V1_PREFIX) && !bytes.windows(2).any(|w| w == b"\r\n") && bytes.len() < V1_MAX {
        return Parsed::Incomplete;
    }
    let result = ppp::HeaderResult::parse(bytes);
    if result.is_incomplete() {
        return if bytes.len() >= MAX_HEADER { Parsed::Invalid(Invalid::TooLong) } else { Parsed::Incomplete };
    }
    let (len, client) = match result {
        // `ppp` ends a v1 line at its first CR; a CR not followed by LF is not a header.
        ppp::HeaderResult::V1(Ok(h)) if !h.header.ends_with("\r\n") => return Parsed::Invalid(Invalid::Malformed),
        ppp::HeaderResult::V1(Ok(h)) => {
            let client = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                ppp::v1::Addresses::Unknown => None,
            };
            (h.header.len(), client)
        }
        ppp::HeaderResult::V2(Ok(h)) => {
            let client = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
                (_, ppp::v2::Addresses::IPv6(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
                (_, ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_)) => None,
            };
            (h.len(), client)
        }
        ppp::HeaderResult::V1(Err(_)) | ppp::HeaderResult::V2(Err(_)) => {
            return Parsed::Invalid(if looks_like_header(bytes) == Some(true) {
                Invalid::Malformed
            } else {
                Invalid::NotAHeader
            });
        }
    };
    Parsed::Header { len, client }
}

/// Whether `bytes` start a PROXY header (either version); `None` while too few have arrived to
/// tell. A listener uses it to refuse a header from an address not allowed to send one.
pub fn looks_like_header(bytes: &[u8]) -> Option<bool> {
    let starts = |sig: &[u8]| {
        let n = bytes.len().min(sig.len());
        bytes[..n] == sig[..n]
    };
    let (v1, v2) = (starts(V1_PREFIX), starts(V2_SIGNATURE));
    if (v1 && bytes.len() >= V1_PREFIX.len()) || (v2 && bytes.len() >= V2_SIGNATURE.len()) {
        Some(true)
    } else if v1 || v2 {
        None
    } else {
        Some(false)
    }
}

/// Parses `bytes` and checks what the fuzzer and the property tests hold true of any input:
/// a header found lies within the bytes and the bound, and is found again in its own bytes
/// alone; a header is awaited only below the bound. Panics otherwise.
pub fn exercise(bytes: &[u8]) {
    match parse(bytes) {
        Parsed::Header { len, client } => {
            assert!(len <= bytes.len() && len <= MAX_HEADER, "a header of {len} bytes in {}", bytes.len());
            assert_eq!(parse(&bytes[..len]), Parsed::Header { len, client });
        }
        Parsed::Incomplete => assert!(bytes.len() < MAX_HEADER, "awaited past the bound"),
        Parsed::Invalid(_) => {}
    }
    let _ = looks_like_header(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&((addresses.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h.extend_from_slice(tlvs);
        h
    }

    fn v2_tcp4(client: [u8; 4], port: u16) -> Vec<u8> {
        let mut a = client.to_vec();
        a.extend_from_slice(&[127, 0, 0, 1]);
        a.extend_from_slice(&port.to_be_bytes());
        a.extend_from_slice(&514u16.to_be_bytes());
        v2(1, 0x11, &a, &[])
    }

    #[test]
    fn v1_gives_the_client_and_where_the_stream_starts() {
        let h = b"PROXY TCP4 198.18.0.7 127.0.0.1 40000 514\r\n<13>hello";
        assert_eq!(parse(h), Parsed::Header { len: 43, client: Some("198.18.0.7:40000".parse().unwrap()) });
        let h = b"PROXY TCP6 2001:db8::7 ::1 40000 514\r\nx";
        assert_eq!(parse(h), Parsed::Header { len: 38, client: Some("[2001:db8::7]:40000".parse().unwrap()) });
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Parsed::Header { len: 15, client: None });
    }

    #[test]
    fn v2_gives_the_client_and_a_health_check_is_the_balancers_own() {
        let mut h = v2_tcp4([198, 18, 0, 9], 40001);
        let len = h.len();
        h.extend_from_slice(b"stats.x:1|c\n");
        assert_eq!(parse(&h), Parsed::Header { len, client: Some("198.18.0.9:40001".parse().unwrap()) });
        // LOCAL: the balancer's own connection, addresses ignored.
        let local = v2(0, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2], &[]);
        assert_eq!(parse(&local), Parsed::Header { len: local.len(), client: None });
        // TLVs (here a unique id) are skipped with the header.
        let mut a = vec![198, 18, 0, 9, 127, 0, 0, 1, 0, 1, 0, 2];
        a.extend_from_slice(&[]);
        let with_tlv = v2(1, 0x11, &a, &[0x05, 0x00, 0x03, b'a', b'b', b'c']);
        assert!(matches!(parse(&with_tlv), Parsed::Header { len, client: Some(_) } if len == with_tlv.len()));
    }

    #[test]
    fn a_cut_header_waits_and_a_wrong_one_is_refused() {
        let whole = b"PROXY TCP4 198.18.0.7 127.0.0.1 40000 514\r\n";
        for k in 1..whole.len() {
            assert_eq!(parse(&whole[..k]), Parsed::Incomplete, "{k} bytes");
        }
        let v2 = v2_tcp4([198, 18, 0, 9], 1);
        for k in 1..v2.len() {
            assert_eq!(parse(&v2[..k]), Parsed::Incomplete, "{k} bytes of v2");
        }
        assert_eq!(parse(b"<13>hello\n"), Parsed::Invalid(Invalid::NotAHeader));
        assert_eq!(parse(b"\x16\x03\x01\x02\x00"), Parsed::Invalid(Invalid::NotAHeader), "a TLS hello");
        assert_eq!(parse(b"PROXY TCP4 999.1.1.1 127.0.0.1 1 2\r\n"), Parsed::Invalid(Invalid::Malformed));
    }

    /// A v2 length field may say 64 KiB: past MAX_HEADER the header is refused, not awaited.
    #[test]
    fn a_header_longer_than_the_bound_is_refused() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&h), Parsed::Incomplete);
        h.resize(MAX_HEADER, 0);
        assert_eq!(parse(&h), Parsed::Invalid(Invalid::TooLong));
        let mut v1 = b"PROXY TCP4 ".to_vec();
        v1.resize(MAX_HEADER + 10, b' ');
        assert!(matches!(parse(&v1), Parsed::Invalid(_)));
    }

    #[test]
    fn a_header_is_recognised_from_its_first_bytes() {
        assert_eq!(looks_like_header(b""), None);
        assert_eq!(looks_like_header(b"PRO"), None);
        assert_eq!(looks_like_header(b"PROXY TCP4"), Some(true));
        assert_eq!(looks_like_header(b"\r\n\r\n"), None);
        assert_eq!(looks_like_header(V2_SIGNATURE), Some(true));
        assert_eq!(looks_like_header(b"<13>"), Some(false));
        assert_eq!(looks_like_header(b"PROXYX"), Some(false));
        assert_eq!(looks_like_header(b"12 <13>"), Some(false));
    }

    proptest::proptest! {
        /// A real header, cut anywhere, waits for more; whole, it gives its client, and the
        /// stream's bytes after it are left alone.
        #[test]
        fn any_header_cut_anywhere_waits_and_whole_gives_its_client(
            ip in proptest::array::uniform4(proptest::num::u8::ANY),
            ip6 in proptest::array::uniform8(proptest::num::u16::ANY),
            port in 1u16..,
            version in 0u8..3,
            tlv in proptest::collection::vec(proptest::num::u8::ANY, 0..100),
            after in proptest::collection::vec(proptest::num::u8::ANY, 0..20),
        ) {
            let (header, client): (Vec<u8>, SocketAddr) = match version {
                0 => {
                    let c = SocketAddr::from((ip, port));
                    (format!("PROXY TCP4 {} 127.0.0.1 {port} 514\r\n", c.ip()).into_bytes(), c)
                }
                1 => {
                    let c = SocketAddr::from((std::net::Ipv6Addr::from(ip6), port));
                    (format!("PROXY TCP6 {} ::1 {port} 514\r\n", c.ip()).into_bytes(), c)
                }
                _ => {
                    let mut a = ip.to_vec();
                    a.extend_from_slice(&[127, 0, 0, 1]);
                    a.extend_from_slice(&port.to_be_bytes());
                    a.extend_from_slice(&514u16.to_be_bytes());
                    // One NOOP TLV of random bytes (type 0x04).
                    let mut t = vec![0x04];
                    t.extend_from_slice(&(tlv.len() as u16).to_be_bytes());
                    t.extend_from_slice(&tlv);
                    (v2(1, 0x11, &a, &t), SocketAddr::from((ip, port)))
                }
            };
            for k in 0..header.len() {
                proptest::prop_assert_eq!(parse(&header[..k]), Parsed::Incomplete, "{} of {} bytes", k, header.len());
            }
            let mut stream = header.clone();
            stream.extend_from_slice(&after);
            proptest::prop_assert_eq!(parse(&stream), Parsed::Header { len: header.len(), client: Some(client) });
        }

        /// Whatever the bytes: no panic; a header found is within them and the bound, and the
        /// same header is found in its own bytes alone.
        #[test]
        fn any_bytes_parse_to_a_bounded_answer(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1200)) {
            exercise(&bytes);
        }
    }
}

#[cfg(test)]
mod regressions {
    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/regressions/proxy");

    /// Every input the fuzzer ever crashed on (and the seeds) still runs cleanly.
    #[test]
    fn fuzz_regressions_replay() {
        let mut n = 0;
        for entry in std::fs::read_dir(DIR).expect("fuzz/regressions/proxy") {
            crate::exercise(&std::fs::read(entry.expect("entry").path()).expect("read"));
            n += 1;
        }
        assert!(n > 0, "the regression corpus is empty");
    }

    /// Writes the seed corpus; run by hand: `cargo test -p floodgate-proxy write_seeds --
    /// --ignored`.
    #[test]
    #[ignore]
    fn write_seeds() {
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        v2.extend_from_slice(&[198, 18, 0, 9, 127, 0, 0, 1, 0x9c, 0x41, 0x02, 0x02]);
        let seeds: [(&str, &[u8]); 4] = [
            ("seed-v1-tcp4", b"PROXY TCP4 198.18.0.7 127.0.0.1 40000 514\r\n<13>hello\n"),
            ("seed-v1-tcp6", b"PROXY TCP6 2001:db8::7 ::1 40000 514\r\n"),
            ("seed-v1-unknown", b"PROXY UNKNOWN\r\n"),
            ("seed-v2-tcp4", &v2),
        ];
        std::fs::create_dir_all(DIR).expect("dir");
        for (name, bytes) in seeds {
            std::fs::write(std::path::Path::new(DIR).join(name), bytes).expect("write");
        }
    }
}
