//! Outputs: each sink takes finished flush payloads and delivers them, buffering while its
//! destination is down.

pub mod forward;
pub mod graphite;
