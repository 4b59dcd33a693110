//! An agent's batches on disk (`[forward] state_dir`), so those not yet acknowledged survive a
//! restart or a crash and are sent again — under the same session, so an aggregator that had
//! already merged some of them skips those.
//!
//! Per aggregator, two files: `forward-<id>.log`, the batches as written (`u64 seq, u32 length,
//! frame` records, appended), and `forward-<id>.mark`, the session they belong to and the
//! highest sequence number acknowledged or given up (`u64 session, u64 through`). The log is
//! emptied whenever nothing is waiting, and rewritten with only what waits when it has grown
//! to twice that. `forward-session.json` names the agent and its session; a restart reuses the
//! session when every aggregator journal there belongs to it (one for a newly added aggregator
//! may be missing: it starts at 1). A journal of another session would mean numbers could
//! repeat under an old session, and an aggregator would skip new batches as retries: then the
//! agent starts a new session.

use std::path::Path;

use bytes::Bytes;

use crate::config::Fsync;
use crate::sinks::delivery::disk_log::{DiskLog, Head};

/// A log record's head: `u64 seq, u32 length`, little-endian.
struct BatchHead {
    seq: u64,
}

impl Head for BatchHead {
    const LEN: usize = 12;

    fn encode(&self, body_len: u32, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.seq.to_le_bytes());
        out[8..12].copy_from_slice(&body_len.to_le_bytes());
    }

    fn decode(bytes: &[u8]) -> (Self, u64) {
        let seq = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
        (BatchHead { seq }, u64::from(len))
    }

    /// Batches are appended in sequence, numbered from 1.
    fn plausible(&self, _: u64, previous: Option<&Self>) -> bool {
        self.seq != 0 && previous.is_none_or(|p| self.seq > p.seq)
    }
}

/// One aggregator's journal.
pub struct Journal {
    log: DiskLog<BatchHead>,
    session: u64,
}

/// What a journal held when opened.
pub struct Recovered {
    /// The highest sequence number acknowledged or given up.
    pub through: u64,
    /// The batches after it, oldest first.
    pub batches: Vec<(u64, Bytes)>,
}

/// The file-name stem for an aggregator address.
fn stem(address: &str) -> String {
    format!("forward-{:016x}", xxhash_rust::xxh3::xxh3_64(address.as_bytes()))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SessionFile {
    agent_id: String,
    session: u64,
}

/// The session to use: the saved one when the agent's name is the same and every aggregator
/// journal in `dir` belongs to it (a missing one is a new aggregator), else `fresh` (saved for
/// next time).
pub fn session(dir: &Path, agent_id: &str, aggregators: &[String], fresh: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("forward-session.json");
    let saved: Option<SessionFile> = crate::files::read_all(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(saved) = saved.filter(|s| s.agent_id == agent_id) {
        let consistent = aggregators.iter().all(|a| {
            let mut head = [0u8; 8];
            match crate::files::read(&dir.join(format!("{}.mark", stem(a)))) {
                Ok(f) => f.read_exact_at(&mut head, 0).is_ok_and(|()| u64::from_le_bytes(head) == saved.session),
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            }
        });
        if consistent {
            return Ok(saved.session);
        }
        tracing::warn!(dir = %dir.display(), "forward journals missing or from another session: starting a new session");
    }
    crate::files::write_atomically(
        &path,
        &serde_json::to_vec(&SessionFile { agent_id: agent_id.into(), session: fresh })?,
    )?;
    Ok(fresh)
}

impl Journal {
    /// Opens (or creates) the journal of `address` in `dir` for `session`: what it holds of that
    /// session is recovered; a journal of another session is started afresh.
    pub fn open(dir: &Path, address: &str, session: u64, fsync: Fsync) -> std::io::Result<(Journal, Recovered)> {
        std::fs::create_dir_all(dir)?;
        let stem = stem(address);
        let (log_path, mark_path) = (dir.join(format!("{stem}.log")), dir.join(format!("{stem}.mark")));
        // Bounded by the link's memory buffer, which holds the same batches.
        let log = DiskLog::open(&log_path, &mark_path, u64::MAX, fsync, "forward-fsync")?;
        let mut saved = [0u8; 16];
        let (saved_session, through) = match log.mark(&mut saved) {
            true => (
                u64::from_le_bytes(saved[..8].try_into().unwrap_or_default()),
                u64::from_le_bytes(saved[8..].try_into().unwrap_or_default()),
            ),
            false => (0, 0),
        };
        let mut journal = Journal { log, session };
        if saved_session != session {
            journal.log.clear()?;
            journal.write_mark(0)?;
            return Ok((journal, Recovered { through: 0, batches: Vec::new() }));
        }
        let mut batches = Vec::new();
        for found in journal.log.recover(0)? {
            if found.head.seq > through {
                batches.push((found.head.seq, Bytes::from(journal.log.body(found.at, found.body_len)?)));
            }
        }
        Ok((journal, Recovered { through, batches }))
    }

    fn write_mark(&mut self, through: u64) -> std::io::Result<()> {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.session.to_le_bytes());
        bytes[8..].copy_from_slice(&through.to_le_bytes());
        self.log.set_mark(&bytes)
    }

    /// Appends a batch.
    pub fn append(&mut self, seq: u64, frame: &[u8]) -> std::io::Result<()> {
        self.log.append(&BatchHead { seq }, frame).map(|_| ())
    }

    /// Everything up to `through` is acknowledged or given up; `waiting` is what is left (its
    /// bytes), so the log is emptied, or rewritten with just `left`, when worth it.
    pub fn through<'a>(
        &mut self,
        through: u64,
        waiting: u64,
        left: impl Iterator<Item = (u64, &'a Bytes)>,
    ) -> std::io::Result<()> {
        self.write_mark(through)?;
        if waiting == 0 {
            self.log.clear()?;
        } else if self.log.len() > 2 * (waiting + waiting / 8 + 4096) {
            self.log.rewrite(left.map(|(seq, frame)| (BatchHead { seq }, &frame[..])), false)?;
        }
        self.log.settle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_survive_a_reopen_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let s = session(dir.path(), "a", &["x:1".into()], 7).unwrap();
        assert_eq!(s, 7);
        let (mut j, r) = Journal::open(dir.path(), "x:1", s, Fsync::Never).unwrap();
        assert!(r.batches.is_empty());
        for seq in 1..=5u64 {
            j.append(seq, &vec![seq as u8; 100 * seq as usize]).unwrap();
        }
        let frames: Vec<(u64, Bytes)> = (4..=5u64).map(|s| (s, Bytes::from(vec![s as u8; 100 * s as usize]))).collect();
        j.through(3, 900, frames.iter().map(|(s, f)| (*s, f))).unwrap();
        drop(j);
        // Same agent, journals present: the same session, and batches 4 and 5 back.
        let s2 = session(dir.path(), "a", &["x:1".into()], 99).unwrap();
        assert_eq!(s2, 7);
        let (mut j, r) = Journal::open(dir.path(), "x:1", s2, Fsync::Always).unwrap();
        assert_eq!(r.through, 3);
        assert_eq!(r.batches, frames);
        // A record cut by a crash is dropped; everything acknowledged empties the log.
        j.append(6, b"abc").unwrap();
        let len = std::fs::metadata(dir.path().join(format!("{}.log", stem("x:1")))).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(format!("{}.log", stem("x:1"))))
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        drop(j);
        let (mut j, r) = Journal::open(dir.path(), "x:1", 7, Fsync::Never).unwrap();
        assert_eq!(r.batches.len(), 2, "the cut record is gone");
        j.through(5, 0, std::iter::empty()).unwrap();
        assert_eq!(std::fs::metadata(dir.path().join(format!("{}.log", stem("x:1")))).unwrap().len(), 0);
        // An aggregator added: the same session (its journal starts empty).
        assert_eq!(session(dir.path(), "a", &["x:1".into(), "y:1".into()], 13).unwrap(), 7);
        // Another agent name: a new session; journals of the old one then start afresh.
        assert_eq!(session(dir.path(), "b", &["x:1".into()], 11).unwrap(), 11);
        let (_, r) = Journal::open(dir.path(), "x:1", 11, Fsync::Never).unwrap();
        assert!(r.batches.is_empty() && r.through == 0);
        // A journal of another session than the saved one: a new session.
        assert_eq!(session(dir.path(), "b", &["x:1".into(), "z:1".into()], 12).unwrap(), 11);
        Journal::open(dir.path(), "z:1", 99, Fsync::Never).unwrap();
        assert_eq!(session(dir.path(), "b", &["x:1".into(), "z:1".into()], 12).unwrap(), 12);
    }

    /// Issue 27 item 12: damage in the middle of a journal (a length field overwritten) used
    /// to cut off everything after it, and the log blamed a crash. Now the batches before it
    /// are recovered, the rest is kept aside in a `.damaged-` file, and the log says damage.
    #[test]
    fn damage_in_the_middle_is_kept_aside_not_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), "x:1", 7, Fsync::Never).unwrap();
        for seq in 1..=5u64 {
            j.append(seq, &[seq as u8; 100]).unwrap();
        }
        drop(j);
        let log = dir.path().join(format!("{}.log", stem("x:1")));
        let len = std::fs::metadata(&log).unwrap().len();
        // Record 3's length field: 0xffffffff.
        let third = 2 * (12 + 100);
        std::os::unix::fs::FileExt::write_all_at(
            &std::fs::OpenOptions::new().write(true).open(&log).unwrap(),
            &[0xff; 4],
            third + 8,
        )
        .unwrap();
        let (_, r) = Journal::open(dir.path(), "x:1", 7, Fsync::Never).unwrap();
        assert_eq!(r.batches.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2]);
        let kept: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".damaged-"))
            .collect();
        assert_eq!(kept.len(), 1, "the damaged rest kept aside");
        assert_eq!(std::fs::metadata(kept[0].path()).unwrap().len(), len - third);
    }

    /// Journals written by releases before the shared disk log open the same: the record
    /// format (`u64 seq, u32 length`, little-endian) and the mark (`u64 session, u64 through`)
    /// are written here by hand.
    #[test]
    fn a_journal_in_the_earlier_format_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Vec::new();
        for (seq, frame) in [(1u64, &b"one"[..]), (2, b"two!"), (3, b"three")] {
            log.extend_from_slice(&seq.to_le_bytes());
            log.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            log.extend_from_slice(frame);
        }
        std::fs::write(dir.path().join(format!("{}.log", stem("x:1"))), log).unwrap();
        let mark = [7u64.to_le_bytes(), 1u64.to_le_bytes()].concat();
        std::fs::write(dir.path().join(format!("{}.mark", stem("x:1"))), mark).unwrap();
        let (_, r) = Journal::open(dir.path(), "x:1", 7, Fsync::Never).unwrap();
        assert_eq!(r.through, 1);
        assert_eq!(r.batches, [(2, Bytes::from_static(b"two!")), (3, Bytes::from_static(b"three"))]);
    }
}
