//! Syslog for floodgate, with no IO.
//!
//! - [`framing`]: messages out of a TCP/TLS byte stream, octet counting (RFC 6587 §3.4.1) or
//!   newline/NUL framing, chosen from the connection's first byte; a bound on a message, and
//!   errors that never lose the frames before them.
//! - (parsing: next step of issue 5.)

#![warn(missing_docs)]

pub mod framing;

pub use framing::{FrameError, Framer, Framing};
