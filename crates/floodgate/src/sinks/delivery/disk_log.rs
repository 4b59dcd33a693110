//! One on-disk queue for every sink that keeps what it holds across a restart: the agent's
//! forward journal and the syslog spill file.
//!
//! A log is two files:
//! - the records, appended at the end: each a fixed-size head, whose format is the owner's
//!   ([`Head`]; the two owners' formats predate this module and are kept, so files written by
//!   an earlier release still open), then its body;
//! - a mark, a few bytes the owner rewrites in place to say how far the records have been
//!   handed on (the spill's read position; the journal's session and last acknowledged batch).
//!
//! Reopening scans the records from where the owner says they start and keeps every whole,
//! plausible one; what follows the first damaged one (a crash cut or worse) is set aside in a
//! `.damaged-` file for inspection ([`crate::files::set_aside_damaged_tail`]), never silently
//! cut. Both files are on disk as the sink's `fsync` policy says ([`FileSync`]). What is held
//! (from the start to the end) is bounded; a record past the bound is refused, so the owner
//! drops and counts it.

use std::fs::File;
use std::io::Write;
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::file_sync::FileSync;
use crate::config::Fsync;

/// The longest record body a log holds (an agent batch or a syslog chunk is far less): a
/// longer length read back is damage.
pub const MAX_BODY: u64 = 64 << 20;

/// The longest head.
const MAX_HEAD: usize = 16;

/// A record's head: its format on disk, and what makes one plausible.
pub trait Head: Sized {
    /// Bytes on disk (at most 16).
    const LEN: usize;
    /// Writes the head of a record whose body is `body_len` bytes into `out` (`LEN` bytes).
    fn encode(&self, body_len: u32, out: &mut [u8]);
    /// Reads a head (`LEN` bytes): the head and its body's length.
    fn decode(bytes: &[u8]) -> (Self, u64);
    /// Whether a head read back can be real, given the record before it; body lengths over
    /// [`MAX_BODY`] are refused before this is asked.
    fn plausible(&self, body_len: u64, previous: Option<&Self>) -> bool;
}

/// A record found by [`DiskLog::recover`].
#[derive(Debug)]
pub struct Found<H> {
    /// Where it starts in the file.
    pub at: u64,
    /// Its head.
    pub head: H,
    /// Its body's length.
    pub body_len: u64,
}

/// Records on disk and their mark.
pub struct DiskLog<H: Head> {
    path: PathBuf,
    file: File,
    mark: File,
    /// The end of the last whole record.
    len: u64,
    /// Where the records still held begin (those before were handed on).
    start: u64,
    /// Bytes from `start` to `len` held at most.
    max: u64,
    sync: FileSync,
    _head: PhantomData<H>,
}

impl<H: Head> DiskLog<H> {
    /// Opens (or creates) the records at `path` and the mark at `mark_path`, holding at most
    /// `max` bytes; `thread` names the thread that keeps an interval `fsync`. Nothing is read
    /// yet: see [`DiskLog::mark`] and [`DiskLog::recover`].
    pub fn open(path: &Path, mark_path: &Path, max: u64, fsync: Fsync, thread: &str) -> std::io::Result<DiskLog<H>> {
        let file = crate::files::read_write(path)?;
        let mark = crate::files::read_write(mark_path)?;
        let sync = FileSync::new(fsync, &[&file, &mark], thread)?;
        let path = path.to_path_buf();
        Ok(DiskLog { path, file, mark, len: 0, start: 0, max, sync, _head: PhantomData })
    }

    /// The mark's first `out.len()` bytes; false when it holds fewer (a new log).
    pub fn mark(&self, out: &mut [u8]) -> bool {
        self.mark.read_exact_at(out, 0).is_ok()
    }

    /// Rewrites the mark (on disk once [`DiskLog::settle`] is called, or the next append).
    pub fn set_mark(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.mark.write_all_at(bytes, 0)
    }

    /// Scans the records from `from` (clamped to the file), keeping the whole, plausible ones
    /// and setting aside the rest; returns them, oldest first. The log then holds them.
    pub fn recover(&mut self, from: u64) -> std::io::Result<Vec<Found<H>>> {
        let file_len = self.file.metadata()?.len();
        let mut at = from.min(file_len);
        let start = at;
        let mut found: Vec<Found<H>> = Vec::new();
        let (mut record_end, mut plausible) = (None, true);
        let mut head = [0u8; MAX_HEAD];
        while at + H::LEN as u64 <= file_len {
            self.file.read_exact_at(&mut head[..H::LEN], at)?;
            let (h, body_len) = H::decode(&head[..H::LEN]);
            plausible = body_len <= MAX_BODY && h.plausible(body_len, found.last().map(|f| &f.head));
            let end = at + H::LEN as u64 + body_len;
            record_end = Some(end);
            if end > file_len || !plausible {
                break;
            }
            found.push(Found { at, head: h, body_len });
            at = end;
            record_end = None;
        }
        crate::files::set_aside_damaged_tail(&self.file, &self.path, at, record_end, plausible)?;
        (self.start, self.len) = (start, at);
        Ok(found)
    }

    /// A record's body (one [`DiskLog::recover`] found, or [`DiskLog::first`]).
    pub fn body(&self, at: u64, body_len: u64) -> std::io::Result<Vec<u8>> {
        let mut body = vec![0u8; body_len as usize];
        self.file.read_exact_at(&mut body, at + H::LEN as u64)?;
        Ok(body)
    }

    /// The first record held: its head and body; `None` when empty.
    pub fn first(&self) -> std::io::Result<Option<(H, Vec<u8>)>> {
        if self.start >= self.len {
            return Ok(None);
        }
        let mut head = [0u8; MAX_HEAD];
        self.file.read_exact_at(&mut head[..H::LEN], self.start)?;
        let (h, body_len) = H::decode(&head[..H::LEN]);
        if body_len > MAX_BODY || self.start + H::LEN as u64 + body_len > self.len {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a record runs past the end of the log"));
        }
        Ok(Some((h, self.body(self.start, body_len)?)))
    }

    /// Appends a record, on disk as the policy says before this returns (`always`) or within
    /// its interval; false (nothing written) when it would hold more than its bound.
    pub fn append(&mut self, head: &H, body: &[u8]) -> std::io::Result<bool> {
        let size = (H::LEN + body.len()) as u64;
        if self.held() + size > self.max {
            return Ok(false);
        }
        let body_len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
        let mut record = Vec::with_capacity(size as usize);
        let mut h = [0u8; MAX_HEAD];
        head.encode(body_len, &mut h[..H::LEN]);
        record.extend_from_slice(&h[..H::LEN]);
        record.extend_from_slice(body);
        self.file.write_all_at(&record, self.len)?;
        self.len += size;
        self.settle()?;
        Ok(true)
    }

    /// The first record has been handed on: it is no longer held. The owner records that in
    /// its mark, and empties the log ([`DiskLog::clear`]) once nothing is held; until then a
    /// crash sends the record again rather than losing it.
    pub fn advance(&mut self) -> std::io::Result<()> {
        let mut head = [0u8; MAX_HEAD];
        if self.start < self.len {
            self.file.read_exact_at(&mut head[..H::LEN], self.start)?;
            let (_, body_len) = H::decode(&head[..H::LEN]);
            self.start = (self.start + H::LEN as u64 + body_len).min(self.len);
        }
        Ok(())
    }

    /// Empties the log.
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        (self.start, self.len) = (0, 0);
        Ok(())
    }

    /// Replaces the log by `first` followed, when `then_held` is set, by what it holds now, so
    /// it keeps only what is still wanted (a mark that points into the records is the owner's
    /// to rewrite, with [`DiskLog::set_mark_synced`]). Written beside and renamed over, synced first: a crash
    /// leaves the old log or the new one, never half of one.
    pub fn rewrite<'a>(&mut self, first: impl Iterator<Item = (H, &'a [u8])>, then_held: bool) -> std::io::Result<()> {
        let (tmp, file) = crate::files::temporary(&self.path)?;
        let mut out = std::io::BufWriter::new(file);
        let mut h = [0u8; MAX_HEAD];
        let mut len = 0u64;
        for (head, body) in first {
            head.encode(u32::try_from(body.len()).map_err(std::io::Error::other)?, &mut h[..H::LEN]);
            out.write_all(&h[..H::LEN])?;
            out.write_all(body)?;
            len += (H::LEN + body.len()) as u64;
        }
        if then_held {
            // The held records as they are, a bounded piece at a time.
            let mut at = self.start;
            let mut piece = vec![0u8; 1 << 20];
            while at < self.len {
                let n = (piece.len() as u64).min(self.len - at) as usize;
                self.file.read_exact_at(&mut piece[..n], at)?;
                out.write_all(&piece[..n])?;
                at += n as u64;
            }
            len += self.len - self.start;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        crate::files::replace(&tmp, &self.path)?;
        self.file = file;
        self.sync.replaced(&[&self.file, &self.mark])?;
        (self.start, self.len) = (0, len);
        Ok(())
    }

    /// Rewrites the mark and syncs it now, whatever the policy: a mark that points into the
    /// records (the spill's position) must reach the disk with a rewrite of them.
    pub fn set_mark_synced(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.mark.write_all_at(bytes, 0)?;
        self.mark.sync_data()
    }

    /// What was changed (the mark, an emptying) is on disk as the policy says.
    pub fn settle(&mut self) -> std::io::Result<()> {
        self.sync.written(&[&self.file, &self.mark])
    }

    /// Bytes held (records not yet handed on).
    pub fn held(&self) -> u64 {
        self.len - self.start
    }

    /// Bytes in the file (records handed on included, until it is emptied or rewritten).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.held() == 0
    }

    /// Where the records still held begin (what the spill saves as its position).
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The records' path, for logs.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test head: a sequence number that must grow, and the body's length.
    #[derive(Debug, PartialEq)]
    struct Seq(u32);

    impl Head for Seq {
        const LEN: usize = 8;
        fn encode(&self, body_len: u32, out: &mut [u8]) {
            out[..4].copy_from_slice(&self.0.to_le_bytes());
            out[4..8].copy_from_slice(&body_len.to_le_bytes());
        }
        fn decode(bytes: &[u8]) -> (Self, u64) {
            let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
            (Seq(word(0)), u64::from(word(4)))
        }
        fn plausible(&self, _: u64, previous: Option<&Self>) -> bool {
            previous.is_none_or(|p| self.0 > p.0)
        }
    }

    fn open(dir: &Path, max: u64) -> DiskLog<Seq> {
        DiskLog::open(&dir.join("log"), &dir.join("log.mark"), max, Fsync::Never, "test-sync").unwrap()
    }

    fn damaged(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains(".damaged-"))
            .collect()
    }

    #[test]
    fn records_and_mark_survive_a_reopen_and_are_handed_on_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 1 << 20);
        assert!(!log.mark(&mut [0u8; 8]), "a new log has no mark");
        assert!(log.recover(0).unwrap().is_empty());
        for i in 1..=3u32 {
            assert!(log.append(&Seq(i), &vec![i as u8; 10 * i as usize]).unwrap());
        }
        log.advance().unwrap();
        let start = log.start();
        log.set_mark(&start.to_le_bytes()).unwrap();
        log.settle().unwrap();
        drop(log);

        let mut log = open(dir.path(), 1 << 20);
        let mut mark = [0u8; 8];
        assert!(log.mark(&mut mark));
        let found = log.recover(u64::from_le_bytes(mark)).unwrap();
        assert_eq!(found.iter().map(|f| (f.head.0, f.body_len)).collect::<Vec<_>>(), [(2, 20), (3, 30)]);
        assert_eq!(log.body(found[1].at, 30).unwrap(), vec![3u8; 30]);
        assert_eq!(log.first().unwrap(), Some((Seq(2), vec![2u8; 20])));
        log.advance().unwrap();
        assert_eq!(log.first().unwrap(), Some((Seq(3), vec![3u8; 30])));
        log.advance().unwrap();
        assert!(log.is_empty());
        log.clear().unwrap();
        assert_eq!(std::fs::metadata(dir.path().join("log")).unwrap().len(), 0, "emptied once drained");
    }

    #[test]
    fn the_bound_refuses_a_record_and_a_rewrite_keeps_what_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 3 * (8 + 100));
        for i in 1..=3u32 {
            assert!(log.append(&Seq(i), &[i as u8; 100]).unwrap());
        }
        assert!(!log.append(&Seq(4), &[4; 100]).unwrap(), "past the bound");
        assert_eq!(log.held(), 3 * 108);
        log.advance().unwrap();
        assert!(log.append(&Seq(4), &[4; 100]).unwrap(), "room again once one was handed on");
        // Records 0 and 1 first (older, from memory), then the held 2, 3, 4.
        let older = [(Seq(0), &[0u8; 5][..]), (Seq(1), &[1u8; 5][..])];
        log.rewrite(older.into_iter(), true).unwrap();
        assert_eq!((log.start(), log.len()), (0, 2 * 13 + 3 * 108));
        drop(log);
        let mut log = open(dir.path(), 1 << 20);
        let seqs: Vec<u32> = log.recover(0).unwrap().iter().map(|f| f.head.0).collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4]);
        // Only what is given.
        log.rewrite([(Seq(9), &b"x"[..])].into_iter(), false).unwrap();
        assert_eq!(log.first().unwrap(), Some((Seq(9), b"x".to_vec())));
        assert!(damaged(dir.path()).is_empty());
    }

    /// A crash cut and damage in the middle: the records before are kept, the rest set aside
    /// byte for byte.
    #[test]
    fn what_cannot_be_read_as_records_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 1 << 20);
        for i in 1..=5u32 {
            log.append(&Seq(i), &[i as u8; 100]).unwrap();
        }
        drop(log);
        let path = dir.path().join("log");
        let len = std::fs::metadata(&path).unwrap().len();
        // Record 4 out of order (its sequence number overwritten): damage, not a crash cut.
        let fourth = 3 * 108;
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&1u32.to_le_bytes(), fourth).unwrap();
        let mut log = open(dir.path(), 1 << 20);
        assert_eq!(log.recover(0).unwrap().len(), 3);
        assert_eq!(log.held(), fourth);
        let kept = damaged(dir.path());
        assert_eq!(kept.len(), 1);
        assert_eq!(std::fs::metadata(&kept[0]).unwrap().len(), len - fourth);
        // A record cut short by a crash.
        log.append(&Seq(4), &[4; 100]).unwrap();
        drop(log);
        file.set_len(fourth + 50).unwrap();
        std::fs::remove_file(&kept[0]).unwrap();
        let mut log = open(dir.path(), 1 << 20);
        assert_eq!(log.recover(0).unwrap().len(), 3);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), fourth);
        // A length past MAX_BODY is damage too.
        drop(log);
        file.write_all_at(&(u32::MAX).to_le_bytes(), 108 + 4).unwrap();
        let mut log = open(dir.path(), 1 << 20);
        assert_eq!(log.recover(0).unwrap().len(), 1);
    }
}
