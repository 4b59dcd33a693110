//! What every sink that holds data shares, so a new sink copies none of it. So far: the
//! back-off every retrying sink uses ([`backoff`]), and how an on-disk queue keeps its
//! `fsync` policy ([`file_sync`]), used by the agent's journal and the syslog spill file.

pub mod backoff;
pub mod disk_log;
pub mod file_sync;
pub mod flushes;
pub mod http;
pub mod inbox;
pub mod queue;
