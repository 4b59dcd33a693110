//! Connection tracking for floodgate, with no IO.
//!
//! - [`netlink`]: netlink and nfnetlink framing — messages out of a receive buffer, attributes
//!   out of a message, the one request floodgate ever sends (a dump).
//! - [`ctnetlink`]: a conntrack entry ([`Entry`]) out of a `IPCTNL_MSG_CT_*` message: tuples,
//!   protocol, TCP state, status, id, timeout — and the event it reports.
//!
//! Written on the netlink wire format directly: no crate decodes dumps, events and every
//! attribute floodgate needs (netlink-packet-netfilter covers part of ctnetlink), and the
//! format is small, stable kernel ABI.

#![warn(missing_docs)]

pub mod ctnetlink;
pub mod netlink;

pub use ctnetlink::{Entry, EventType, TcpState, Tuple};
