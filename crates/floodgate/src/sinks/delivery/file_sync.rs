//! `fsync` for an append-only queue on disk (the agent's journal, the syslog spill file), as
//! the configuration promises it:
//! - `always`: every write is on disk before the call returns (before anything is
//!   acknowledged on its strength);
//! - an interval (`"1s"`): every write is on disk within the interval, even when nothing is
//!   written after it. Checking the clock only on the next write would leave the tail of a
//!   burst unsynced for as long as nothing else arrives, so a thread of its own syncs what is
//!   pending when the interval is up;
//! - `never`: the kernel writes back when it likes.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::config::Fsync;

/// One queue's files under one `fsync` policy.
pub struct FileSync {
    policy: Fsync,
    /// Syncs done (inline and in the background).
    syncs: Arc<AtomicU64>,
    /// With an interval: the thread that keeps it.
    background: Option<Background>,
}

struct Background {
    state: Arc<(Mutex<State>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct State {
    /// Copies of the queue's descriptors (the same open files): syncing one syncs the file.
    files: Arc<Vec<File>>,
    /// Written since the last sync.
    pending: bool,
    stop: bool,
}

impl FileSync {
    /// `files` under `policy`; `name` names the background thread (an interval only).
    pub fn new(policy: Fsync, files: &[&File], name: &str) -> std::io::Result<FileSync> {
        let syncs = Arc::new(AtomicU64::new(0));
        let background = match policy {
            Fsync::Interval(every) => Some(Background::start(copies(files)?, every, syncs.clone(), name)?),
            Fsync::Always | Fsync::Never => None,
        };
        Ok(FileSync { policy, syncs, background })
    }

    /// Something was written to `files` (the queue's current ones): with `always` they are
    /// synced now; with an interval, within it.
    pub fn written(&self, files: &[&File]) -> std::io::Result<()> {
        match (&self.background, self.policy) {
            (_, Fsync::Always) => {
                for f in files {
                    f.sync_data()?;
                }
                self.syncs.fetch_add(1, Relaxed);
            }
            (Some(b), _) => {
                let (lock, wake) = &*b.state;
                lock.lock().pending = true;
                wake.notify_one();
            }
            (None, _) => {}
        }
        Ok(())
    }

    /// The queue replaced its files (a rewrite): the background thread syncs these from now on.
    pub fn replaced(&self, files: &[&File]) -> std::io::Result<()> {
        if let Some(b) = &self.background {
            b.state.0.lock().files = Arc::new(copies(files)?);
        }
        Ok(())
    }

    /// Syncs done so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Relaxed)
    }
}

fn copies(files: &[&File]) -> std::io::Result<Vec<File>> {
    files.iter().map(|f| f.try_clone()).collect()
}

impl Background {
    fn start(files: Vec<File>, every: Duration, syncs: Arc<AtomicU64>, name: &str) -> std::io::Result<Background> {
        let files = Arc::new(files);
        let state = Arc::new((Mutex::new(State { files, pending: false, stop: false }), Condvar::new()));
        let shared = state.clone();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            let (lock, wake) = &*shared;
            let mut last_sync = Instant::now();
            let mut state = lock.lock();
            loop {
                while !state.pending && !state.stop {
                    wake.wait(&mut state);
                }
                if !state.pending {
                    return;
                }
                // Written since the last sync: on disk at most `every` after the last one, so
                // within `every` of the write (which came after it). A stop syncs at once.
                let due = last_sync + every;
                while !state.stop && Instant::now() < due {
                    wake.wait_until(&mut state, due);
                }
                state.pending = false;
                // Unlocked while syncing: a writer marking a write pending never waits on a disk.
                let files = state.files.clone();
                let failed = parking_lot::MutexGuard::unlocked(&mut state, || {
                    files.iter().filter_map(|f| f.sync_data().err()).next()
                });
                if let Some(e) = &failed {
                    tracing::error!(error = %e, "fsync failed; trying again at the next interval");
                    state.pending = true;
                }
                last_sync = Instant::now();
                syncs.fetch_add(1, Relaxed);
            }
        })?;
        Ok(Background { state, thread: Some(thread) })
    }
}

impl Drop for Background {
    /// Syncs what is pending, then ends the thread.
    fn drop(&mut self) {
        self.state.0.lock().stop = true;
        self.state.1.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for_syncs(sync: &FileSync, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while sync.syncs() < n {
            assert!(Instant::now() < deadline, "{} syncs, waited for {n}", sync.syncs());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Issue 28: `fsync = "1s"` used to sync only on a later write, so the last write of a
    /// burst stayed unsynced while nothing else came. Now a write is synced within the
    /// interval with nothing after it, and again after a later write.
    #[test]
    fn an_interval_syncs_the_last_write_with_nothing_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("queue")).unwrap();
        let sync = FileSync::new(Fsync::Interval(Duration::from_millis(200)), &[&file], "test-sync").unwrap();
        assert_eq!(sync.syncs(), 0);
        for _ in 0..50 {
            sync.written(&[&file]).unwrap();
        }
        wait_for_syncs(&sync, 1);
        let after_burst = sync.syncs();
        sync.written(&[&file]).unwrap();
        wait_for_syncs(&sync, after_burst + 1);
    }

    /// A rewritten queue's new file is the one synced; dropping syncs what is pending at once.
    #[test]
    fn a_replaced_file_is_synced_and_a_drop_syncs_what_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let old = File::create(dir.path().join("old")).unwrap();
        let new = File::create(dir.path().join("new")).unwrap();
        let sync = FileSync::new(Fsync::Interval(Duration::from_secs(3600)), &[&old], "test-sync").unwrap();
        sync.replaced(&[&new]).unwrap();
        use std::os::unix::fs::MetadataExt;
        let held = |s: &FileSync| s.background.as_ref().unwrap().state.0.lock().files[0].metadata().unwrap().ino();
        assert_eq!(held(&sync), new.metadata().unwrap().ino(), "the thread syncs the new file");
        sync.written(&[&new]).unwrap();
        let syncs = sync.syncs.clone();
        // An hour-long interval: only the drop can have synced it.
        drop(sync);
        assert_eq!(syncs.load(Relaxed), 1, "the pending write synced at the drop");
    }

    #[test]
    fn always_syncs_before_returning_and_never_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("queue")).unwrap();
        let always = FileSync::new(Fsync::Always, &[&file], "test-sync").unwrap();
        always.written(&[&file]).unwrap();
        always.written(&[&file]).unwrap();
        assert_eq!(always.syncs(), 2);
        let never = FileSync::new(Fsync::Never, &[&file], "test-sync").unwrap();
        never.written(&[&file]).unwrap();
        assert_eq!(never.syncs(), 0);
    }
}
