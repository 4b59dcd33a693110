//! Files floodgate writes, opened without following links. floodgate often runs as root, and
//! a spool, state or socket directory may be writable by someone else: a link put where
//! floodgate writes must not make it append to, truncate, replace or change the mode of the
//! file the link points at. Every file it writes is opened here (`O_NOFOLLOW`); a temporary
//! file is created new (`O_EXCL`) and renamed into place, which replaces a link rather than
//! following it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Options that refuse a link in the last component (`ELOOP`, told as such).
fn no_follow() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW);
    o
}

/// What an open's error says when the path is a link.
fn explain(path: &Path, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        io::Error::new(
            e.kind(),
            format!(
                "{} is a symbolic link: floodgate does not write through links (a link could point anywhere)",
                path.display()
            ),
        )
    } else {
        e
    }
}

/// Opens `path` for appending, creating it (mode 0640) if missing.
pub fn append(path: &Path) -> io::Result<File> {
    no_follow().create(true).append(true).mode(0o640).open(path).map_err(|e| explain(path, e))
}

/// Opens `path` to read and write, creating it (mode 0640) if missing, never truncating.
pub fn read_write(path: &Path) -> io::Result<File> {
    no_follow().create(true).truncate(false).read(true).write(true).mode(0o640).open(path).map_err(|e| explain(path, e))
}

/// Opens `path` to read (not through a link).
pub fn read(path: &Path) -> io::Result<File> {
    no_follow().read(true).open(path).map_err(|e| explain(path, e))
}

/// The whole of the file at `path` (not through a link).
pub fn read_all(path: &Path) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    io::Read::read_to_end(&mut read(path)?, &mut out)?;
    Ok(out)
}

/// An exclusive hold on a state directory for one role (`forward`, `aggregator`): the lock
/// file `dir/ROLE.lock`, locked (`flock`) while the returned file is open, with the holder's
/// pid in it. Two floodgates on one `state_dir` would share a session and lose what each
/// other sends; the second is refused, naming the first.
pub fn lock_dir(dir: &Path, role: &str) -> io::Result<File> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{role}.lock"));
    let mut file = read_write(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "{} is in use by another floodgate ({}): two on one state_dir would share a session",
                    dir.display(),
                    if holder.is_empty() { "pid unknown".to_string() } else { format!("pid {holder}") }
                ),
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e),
    }
    file.set_len(0)?;
    io::Write::write_all(&mut file, format!("{}\n", std::process::id()).as_bytes())?;
    Ok(file)
}

/// What recovery does with the bytes of a file of records that cannot be read as records,
/// from `at` to its end: they are moved to `<path>.damaged-<unix seconds>` (kept for the
/// operator, never deleted) and the file is cut at `at`. `record_end` says where the first
/// unreadable record would end by its header; `plausible` is its length within what a record
/// can be. A record that would end past the file, with a plausible length, is taken as one a
/// crash cut short; anything else is damage, and the log says so (it is not a crash).
pub fn set_aside_damaged_tail(
    file: &File,
    path: &Path,
    at: u64,
    record_end: Option<u64>,
    plausible: bool,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    if at >= len {
        return Ok(());
    }
    let mut tail = vec![0u8; (len - at) as usize];
    file.read_exact_at(&mut tail, at)?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // A name of its own, even for a second damage within the same second (a restart loop).
    let mut n = 0;
    let (kept, mut out) = loop {
        let kept = match n {
            0 => PathBuf::from(format!("{}.damaged-{stamp}", path.display())),
            n => PathBuf::from(format!("{}.damaged-{stamp}-{n}", path.display())),
        };
        match no_follow().create_new(true).write(true).mode(0o640).open(&kept) {
            Ok(out) => break (kept, out),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(explain(&kept, e)),
        }
    };
    io::Write::write_all(&mut out, &tail)?;
    out.sync_all()?;
    file.set_len(at)?;
    let crash_cut = plausible && record_end.is_some_and(|end| end > len);
    if crash_cut {
        tracing::warn!(path = %path.display(), bytes = len - at, kept = %kept.display(), "the last record was cut short (a crash while writing it); its bytes are kept aside");
    } else {
        tracing::error!(path = %path.display(), at, bytes = len - at, kept = %kept.display(), "damaged: the bytes from here cannot be read as records (not a crash cut); the records before are recovered, the rest kept aside for inspection");
    }
    Ok(())
}

/// A new, empty file beside `path` to write a replacement into (then [`replace`]): whatever
/// was at its name (a leftover, or a link someone put there) is removed first, and it is
/// created new, so nothing it points at is touched.
pub fn temporary(path: &Path) -> io::Result<(PathBuf, File)> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let file =
        no_follow().create_new(true).write(true).read(true).mode(0o640).open(&tmp).map_err(|e| explain(&tmp, e))?;
    Ok((tmp, file))
}

/// Puts the temporary file `tmp` in place of `path` (a link at `path` is replaced, not
/// followed).
pub fn replace(tmp: &Path, path: &Path) -> io::Result<()> {
    std::fs::rename(tmp, path)
}

/// Writes `bytes` to `path` whole or not at all: a new temporary file, synced, renamed over.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (tmp, mut file) = temporary(path)?;
    io::Write::write_all(&mut file, bytes)?;
    file.sync_all()?;
    replace(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link where floodgate writes: appending, opening and writing atomically leave the
    /// file it points at as it was; the atomic write replaces the link itself.
    #[test]
    fn a_state_directory_has_one_holder_per_role() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_dir(dir.path(), "forward").unwrap();
        let e = lock_dir(dir.path(), "forward").unwrap_err();
        assert!(e.to_string().contains(&format!("pid {}", std::process::id())), "{e}");
        let _other_role = lock_dir(dir.path(), "aggregator").unwrap();
        drop(held);
        lock_dir(dir.path(), "forward").unwrap();
    }

    #[test]
    fn links_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let link = dir.path().join("spill");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = append(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(read_write(&link).is_err());
        assert!(read(&link).is_err());
        // A link at the temporary name too.
        std::os::unix::fs::symlink(&victim, dir.path().join("state.tmp")).unwrap();
        write_atomically(&dir.path().join("state"), b"new").unwrap();
        write_atomically(&link, b"replaced").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(dir.path().join("state")).unwrap(), b"new");
        assert!(!std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&link).unwrap(), b"replaced");
    }
}
