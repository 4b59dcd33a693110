//! What every sink that holds data shares, so a new sink copies none of it. So far: how an
//! on-disk queue keeps its `fsync` policy ([`file_sync`]), used by the agent's journal and the
//! syslog spill file.

pub mod file_sync;
