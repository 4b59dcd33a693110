//! Allow-lists: CIDR blocks, IPv4 and IPv6. An empty list allows everyone.

use std::fmt;
use std::net::IpAddr;

/// A parsed allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

/// A CIDR that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCidr(pub String);

impl fmt::Display for BadCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not an address or CIDR block such as \"10.0.0.0/8\" or \"2001:db8::/32\"", self.0)
    }
}

impl std::error::Error for BadCidr {}

impl AllowList {
    /// Parses `["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]`.
    pub fn parse<S: AsRef<str>>(cidrs: &[S]) -> Result<AllowList, BadCidr> {
        let mut list = AllowList::default();
        for text in cidrs {
            let text = text.as_ref().trim();
            let bad = || BadCidr(text.to_string());
            let (addr, len) = match text.split_once('/') {
                Some((a, l)) => (a, Some(l.parse::<u32>().map_err(|_| bad())?)),
                None => (text, None),
            };
            match addr.parse::<IpAddr>().map_err(|_| bad())? {
                IpAddr::V4(v4) => {
                    let len = len.unwrap_or(32);
                    if len > 32 {
                        return Err(bad());
                    }
                    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                    list.v4.push((u32::from(v4) & mask, mask));
                }
                IpAddr::V6(v6) => {
                    let len = len.unwrap_or(128);
                    if len > 128 {
                        return Err(bad());
                    }
                    let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
                    list.v6.push((u128::from(v6) & mask, mask));
                }
            }
        }
        Ok(list)
    }

    /// Every block as an IPv6 prefix (IPv4 ones IPv4-mapped, `::ffff:0:0/96` inside): the
    /// prefix length and the address's 16 bytes, as the kernel layer's longest-prefix map
    /// holds them.
    pub fn as_v6_prefixes(&self) -> Vec<(u32, [u8; 16])> {
        let v4 = self.v4.iter().map(|(net, mask)| {
            let mapped = std::net::Ipv4Addr::from(*net).to_ipv6_mapped();
            (96 + mask.count_ones(), mapped.octets())
        });
        let v6 = self.v6.iter().map(|(net, mask)| (mask.count_ones(), net.to_be_bytes()));
        v4.chain(v6).collect()
    }

    /// True when no block is listed (everyone is allowed).
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// True when `ip` may send.
    #[inline]
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.is_empty() {
            return true;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                let a = u32::from(v4);
                self.v4.iter().any(|(net, mask)| a & mask == *net)
            }
            IpAddr::V6(v6) => {
                let a = u128::from(v6);
                self.v6.iter().any(|(net, mask)| a & mask == *net)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_and_single_addresses() {
        let l = AllowList::parse(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]).unwrap();
        assert!(l.allows(ip("10.200.3.4")));
        assert!(!l.allows(ip("11.0.0.1")));
        assert!(l.allows(ip("192.0.2.7")));
        assert!(!l.allows(ip("192.0.2.8")));
        assert!(l.allows(ip("2001:db8:ffff::1")));
        assert!(!l.allows(ip("2001:db9::1")));
        assert!(l.allows(ip("::ffff:10.1.1.1")), "IPv4-mapped IPv6 is matched as IPv4");
    }

    #[test]
    fn empty_allows_all_and_zero_length_blocks() {
        assert!(AllowList::default().allows(ip("203.0.113.9")));
        let all4 = AllowList::parse(&["0.0.0.0/0"]).unwrap();
        assert!(all4.allows(ip("203.0.113.9")));
        assert!(!all4.allows(ip("2001:db8::1")));
    }

    #[test]
    fn bad_blocks_are_errors() {
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/x", "::/129"] {
            assert!(AllowList::parse(&[bad]).is_err(), "{bad}");
        }
    }
}
