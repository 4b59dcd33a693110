//! The forward output's spill file: what the server could not take yet, past the memory
//! queue, kept across a restart.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::Chunk;
use crate::config::Fsync;
use crate::sinks::delivery::disk_log::{DiskLog, Head};
use crate::sinks::delivery::queue::Bounded;

/// Chunks on disk: `u32 length, u64 messages, bytes` records (big-endian) in a [`DiskLog`],
/// read from its start. Where the unsent records start is saved in `<spill>.pos` (8 bytes,
/// little-endian) each time a chunk from the file has been written to the server, so the next
/// run sends what this one did not: after a restart nothing is lost, and after a crash at most
/// the chunk in flight is sent twice. The file is emptied when everything in it has been sent.
pub(super) struct Spill {
    log: DiskLog<ChunkHead>,
    held_messages: u64,
}

/// A spill record's head.
struct ChunkHead {
    messages: u64,
}

impl Head for ChunkHead {
    const LEN: usize = 12;

    fn encode(&self, body_len: u32, out: &mut [u8]) {
        out[..4].copy_from_slice(&body_len.to_be_bytes());
        out[4..12].copy_from_slice(&self.messages.to_be_bytes());
    }

    fn decode(bytes: &[u8]) -> (Self, u64) {
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap_or_default());
        let messages = u64::from_be_bytes(bytes[4..12].try_into().unwrap_or_default());
        (ChunkHead { messages }, u64::from(len))
    }

    /// A chunk holds at least one message, and never more messages than bytes.
    fn plausible(&self, body_len: u64, _: Option<&Self>) -> bool {
        self.messages >= 1 && self.messages <= body_len.max(1)
    }
}

impl Spill {
    /// Opens the spill file, keeping what an earlier run left unsent (what cannot be read as
    /// records is set aside).
    pub(super) fn open(path: &std::path::Path, max: u64, fsync: Fsync) -> Result<Spill> {
        let pos_path = PathBuf::from(format!("{}.pos", path.display()));
        let mut log: DiskLog<ChunkHead> = DiskLog::open(path, &pos_path, max, fsync, "syslog-fsync")
            .with_context(|| format!("cannot open syslog spill file {}", path.display()))?;
        let mut saved = [0u8; 8];
        let read_at = if log.mark(&mut saved) { u64::from_le_bytes(saved) } else { 0 };
        let found = log.recover(read_at).with_context(|| format!("syslog spill file {}", path.display()))?;
        let held_messages = found.iter().map(|f| f.head.messages).sum();
        if held_messages > 0 {
            tracing::info!(path = %path.display(), messages = held_messages, bytes = log.held(), "syslog spill file: sending what the last run left unsent");
        }
        Ok(Spill { log, held_messages })
    }

    /// Appends a chunk; false when the file is full.
    pub(super) fn push(&mut self, chunk: &Chunk) -> std::io::Result<bool> {
        let taken = self.log.append(&ChunkHead { messages: chunk.messages }, &chunk.bytes)?;
        if taken {
            self.held_messages += chunk.messages;
        }
        Ok(taken)
    }

    pub(super) fn pop(&mut self) -> std::io::Result<Option<Chunk>> {
        let Some((head, bytes)) = self.log.first()? else { return Ok(None) };
        self.log.advance()?;
        self.held_messages -= head.messages.min(self.held_messages);
        Ok(Some(Chunk { bytes, messages: head.messages }))
    }

    /// What was taken out has been written to the server: save the position (and empty the file
    /// once all of it has been).
    pub(super) fn commit(&mut self) -> std::io::Result<()> {
        if self.log.is_empty() {
            self.log.clear()?;
        }
        self.log.set_mark(&self.log.start().to_le_bytes())?;
        self.log.settle()
    }

    /// Rewrites the file as `first` followed by what it still holds unsent (at shutdown: the
    /// memory queue is older than the file's records), so the next run sends it all in order.
    pub(super) fn keep(&mut self, first: &mut Bounded<Chunk>) -> std::io::Result<u64> {
        let older: u64 = first.iter().map(|c| c.messages).sum();
        self.log.rewrite(first.iter().map(|c| (ChunkHead { messages: c.messages }, &c.bytes[..])), true)?;
        first.drain().for_each(drop);
        self.log.set_mark_synced(&0u64.to_le_bytes())?;
        self.held_messages += older;
        Ok(self.held_messages)
    }

    /// Bytes held.
    pub(super) fn held(&self) -> u64 {
        self.log.held()
    }

    /// Messages held.
    pub(super) fn held_messages(&self) -> u64 {
        self.held_messages
    }

    /// The file, for logs.
    pub(super) fn path(&self) -> &std::path::Path {
        self.log.path()
    }

    /// The file could not be read back: it is emptied; returns the messages it held (lost).
    pub(super) fn lost(&mut self) -> u64 {
        let lost = std::mem::take(&mut self.held_messages);
        let _ = self.log.clear();
        let _ = self.commit();
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 27 item 12: damage in the middle of the spill file (a length field overwritten)
    /// used to cut off every record after it, blamed on a crash. Now the records before it
    /// are kept for sending, the rest is set aside in a `.damaged-` file; a record really cut
    /// short at the end is set aside too, as a crash's.
    #[test]
    fn a_damaged_spill_file_keeps_what_it_can_and_sets_the_rest_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("syslog.spill");
        let mut spill = Spill::open(&path, 1 << 20, Fsync::Never).unwrap();
        for i in 0..5u8 {
            assert!(spill.push(&Chunk { bytes: vec![b'a' + i; 50], messages: 2 }).unwrap());
        }
        drop(spill);
        let third = 2 * (12 + 50);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[0x7f, 0xff, 0xff, 0xff], third).unwrap();
        let spill = Spill::open(&path, 1 << 20, Fsync::Never).unwrap();
        assert_eq!((spill.held_messages, spill.log.len()), (4, third));
        let damaged = |dir: &std::path::Path| {
            std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains(".damaged-"))
                .count()
        };
        assert_eq!(damaged(dir.path()), 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), third);
    }

    /// Spill files written by releases before the shared disk log open the same: records
    /// `u32 length, u64 messages` (big-endian) and the position (`u64`, little-endian) are
    /// written here by hand; the first record was already sent.
    #[test]
    fn a_spill_file_in_the_earlier_format_is_sent_from_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("syslog.spill");
        let mut file = Vec::new();
        for (messages, bytes) in [(1u64, &b"sent"[..]), (2, b"ab"), (1, b"c")] {
            file.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            file.extend_from_slice(&messages.to_be_bytes());
            file.extend_from_slice(bytes);
        }
        std::fs::write(&path, file).unwrap();
        std::fs::write(dir.path().join("syslog.spill.pos"), 16u64.to_le_bytes()).unwrap();
        let mut spill = Spill::open(&path, 1 << 20, Fsync::Never).unwrap();
        assert_eq!(spill.held_messages, 3);
        let chunk = spill.pop().unwrap().unwrap();
        assert_eq!((chunk.bytes, chunk.messages), (b"ab".to_vec(), 2));
        spill.commit().unwrap();
        assert_eq!(std::fs::read(dir.path().join("syslog.spill.pos")).unwrap(), 30u64.to_le_bytes());
        let chunk = spill.pop().unwrap().unwrap();
        assert_eq!((chunk.bytes, chunk.messages), (b"c".to_vec(), 1));
        spill.commit().unwrap();
        assert!(spill.pop().unwrap().is_none());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "emptied once all sent");
    }
}
