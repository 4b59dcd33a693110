//! The policy in force: `[limits]` made ready for the hot path, swapped whole on SIGHUP (and
//! when this host's addresses change), and the key each source is counted under.

use std::net::IpAddr;
use std::sync::Arc;

use floodgate_guard::{AllowList, Limit, SourceKey, SourceTable};

use super::config;
use crate::config::LimitsConfig;

/// An IPv6 /56 (one customer's allocation) gets this many sources' budgets in all, however
/// many of its 256 /64s it sends from.
pub const V6_AGGREGATE_SOURCES: u64 = 4;

/// The policy in force: `[limits]` made ready for the hot path.
#[derive(Debug)]
pub struct Policy {
    pub(super) allow: AllowList,
    pub(super) udp_source: Limit,
    /// An IPv6 /56's budget, all its /64s together.
    pub(super) udp_aggregate: Limit,
    pub(super) udp_port: Limit,
    /// `udp_port` is the fleet's, taken in leases from Redis (`[limits] shared`).
    pub(super) shared: bool,
    /// A local user's budget on one Unix listener.
    pub(super) unix_uid: Limit,
    pub(super) tcp_rate: Limit,
    pub(super) tcp_aggregate: Limit,
    pub(super) tcp_open_per_source: usize,
    /// Messages/s per source over its stream connections (paced, not dropped).
    pub(super) tcp_source: Limit,
    pub(super) handshake_rate: Limit,
    pub(super) handshakes_in_flight: usize,
    /// The bounded table of sources.
    pub table: Arc<SourceTable>,
    /// No check at all is configured (no allow-list, every rate 0).
    pub(super) udp_off: bool,
    /// `local_senders = "one_source"`: this host's interfaces' addresses (loopback is always
    /// this host's), whose senders are one source.
    pub(super) local: Option<Box<[IpAddr]>>,
}

/// This host's interfaces' addresses (loopback aside), as the sweeper last read them. A
/// datagram or connection from one of them, or from loopback, came from a process of this
/// host: the kernel drops a packet that claims a local source and arrives from outside
/// ("martian source").
pub(super) fn host_addresses() -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> =
        crate::sys::interface_addresses().into_iter().map(|a| a.to_canonical()).filter(|a| !a.is_loopback()).collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}

impl Policy {
    pub(super) fn new(limits: &LimitsConfig, table: Arc<SourceTable>, host: &[IpAddr]) -> Policy {
        let burst = limits.burst.as_nanos() as u64;
        // Validated when the config was read.
        let allow = AllowList::parse(&limits.allow).unwrap_or_default();
        let udp_source = Limit::new(limits.udp_per_source, burst);
        let udp_port = Limit::new(limits.udp_per_port, burst);
        Policy {
            udp_off: allow.is_empty() && udp_source.is_unlimited() && udp_port.is_unlimited(),
            allow,
            udp_source,
            udp_aggregate: Limit::new(limits.udp_per_source.saturating_mul(V6_AGGREGATE_SOURCES), burst),
            udp_port,
            shared: limits.shared.is_some(),
            unix_uid: Limit::new(limits.unix_per_uid, burst),
            tcp_rate: Limit::new(limits.tcp_connections_per_source, burst),
            tcp_aggregate: Limit::new(limits.tcp_connections_per_source.saturating_mul(V6_AGGREGATE_SOURCES), burst),
            tcp_open_per_source: limits.tcp_open_per_source,
            tcp_source: Limit::new(limits.tcp_per_source, burst),
            handshake_rate: Limit::new(limits.tls_handshakes_per_second, burst),
            handshakes_in_flight: limits.tls_handshakes_in_flight,
            table,
            local: (limits.local_senders == config::LocalSenders::OneSource).then(|| host.into()),
        }
    }

    /// The key `ip` is counted under on `listener`: this host's processes as one
    /// ([`SourceKey::local`], with `local_senders = "one_source"`), others by address.
    #[inline]
    pub(super) fn source_key(&self, listener: u16, ip: IpAddr) -> SourceKey {
        match &self.local {
            Some(host) if ip.to_canonical().is_loopback() || host.contains(&ip.to_canonical()) => {
                SourceKey::local(listener)
            }
            _ => SourceKey::new(listener, ip),
        }
    }
}
