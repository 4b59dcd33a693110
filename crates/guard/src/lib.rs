//! The guard: admission control in front of every listener, with no IO.
//!
//! A listener asks before it parses a datagram or touches an accepted connection: the
//! allow-list first, then the source's rate (per listener; IPv6 by /64), then the listening
//! port's rate. Sources live in a fixed-capacity [`SourceTable`], so memory stays flat under a
//! flood of spoofed addresses; the port limit ([`PortLimiter`]) bounds the total whatever the
//! sources; several hosts can share one port's budget ([`SharedPort`]). Limits are GCRA cells
//! ([`Limit`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod allow;
mod asm;
pub mod gcra;
pub mod kernel;
pub mod port;
pub mod shared;
pub mod spread;
pub mod table;

pub use allow::{AllowList, BadCidr};
pub use gcra::Limit;
pub use port::PortLimiter;
pub use shared::{fair_grant, LeaseRequest, Port, SharedPort};
pub use table::{Offender, Reason, SourceKey, SourceTable, Verdict, ESTABLISHED_NS};
