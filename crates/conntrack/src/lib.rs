//! Connection tracking for floodgate, with no IO.
//!
//! - [`netlink`]: netlink and nfnetlink framing — messages out of a receive buffer, attributes
//!   out of a message, the one request floodgate ever sends (a dump).
//! - [`ctnetlink`]: a conntrack entry ([`Entry`]) out of a `IPCTNL_MSG_CT_*` message: tuples,
//!   protocol, TCP state, status, id, timeout — and the event it reports.
//! - [`label`]: which end is remote, and the `host="ip:port"` label (inbound connections by
//!   client IP and local service port).
//! - [`table`]: per-label counts by state kept current event by event, bounded labels,
//!   closed connections shown for one scrape, resync after lost events.
//! - [`log`]: the event log lines, JSON and the conntrack tool's format.
//! - [`sockdiag`]: the fallback — the host's own TCP sockets (sock_diag) as entries.
//!
//! Written on the netlink wire format directly: no crate decodes dumps, events and every
//! attribute floodgate needs (netlink-packet-netfilter covers part of ctnetlink), and the
//! format is small, stable kernel ABI.

#![warn(missing_docs)]

pub mod ctnetlink;
pub mod label;
pub mod log;
pub mod netlink;
pub mod sockdiag;
pub mod table;

pub use ctnetlink::{Entry, EventType, Phase, TcpState, Tuple};
pub use label::{Locality, Remote};
pub use table::{Counts, Label, Table};
