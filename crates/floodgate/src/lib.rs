//! floodgate's runtime: listeners → decoders → per-thread aggregation → flush → sinks.
//!
//! The protocol and aggregation logic is in the IO-free `floodgate-statsd` crate and admission
//! in `floodgate-guard`; this crate binds sockets ([`sys`], [`sources`]), asks the [`guard`]
//! before parsing anything, schedules flushes ([`flush`]), delivers them
//! ([`sinks`]) and serves the console and HTTP (sources too: [`sources::admin`], [`sources::http`]).

#![warn(missing_docs)]
// Every `unsafe` block is in the syscall layer (`sys`), each with a `SAFETY:` comment.
#![deny(unsafe_code)]

pub mod aggregation;
pub mod clock;
pub mod component;
pub mod config;
pub mod files;
pub mod flush;
pub mod guard;
pub mod kind;
pub mod listener;
pub mod metrics;
pub mod naming;
pub mod net;
pub mod record;
pub mod sinks;
pub mod sources;
#[allow(unsafe_code)]
pub mod sys;
pub mod tap;
pub mod topology;
pub mod units;
