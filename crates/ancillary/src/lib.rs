//! Socket control messages ("ancillary data") as Linux writes them into a `recvmsg` control
//! buffer: a run of `struct cmsghdr` headers, each followed by its data, each aligned to the
//! word size.
//!
//! Written by hand, with no IO and no `unsafe`, rather than with libc's `CMSG_FIRSTHDR` /
//! `CMSG_NXTHDR` / `CMSG_DATA`: those walk raw pointers by the lengths found in the buffer. Here
//! every header and every datum is a checked slice of the buffer, so a length that does not
//! fit ends the walk instead of reading past it, and the walk can be fuzzed on any bytes
//! (`fuzz/fuzz_targets/ancillary.rs`).
//!
//! The layout is the running kernel's, on this target: `cmsg_len` is a `usize` (the kernel's
//! `size_t`), then the `int` level and type; data starts at the header's aligned size, and
//! the next header at the aligned end of this one's `cmsg_len`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// `SOL_SOCKET`: the level of the messages below.
pub const SOL_SOCKET: i32 = 1;
/// `SCM_RIGHTS`: descriptors passed with the message.
pub const SCM_RIGHTS: i32 = 1;
/// `SCM_CREDENTIALS`: the sender's pid, uid and gid (`struct ucred`).
pub const SCM_CREDENTIALS: i32 = 2;

/// Alignment of headers and data (`CMSG_ALIGN`): the size of `long`.
const ALIGN: usize = std::mem::size_of::<usize>();
/// `sizeof(struct cmsghdr)`: the length word, then the level and type.
const HEADER: usize = std::mem::size_of::<usize>() + 2 * std::mem::size_of::<i32>();
/// Where a message's data starts (`CMSG_LEN(0)`).
const DATA: usize = align(HEADER);
/// `sizeof(struct ucred)`.
const UCRED: usize = 12;

const fn align(n: usize) -> usize {
    (n + ALIGN - 1) & !(ALIGN - 1)
}

/// Who sent a message on a Unix socket, as the kernel saw it (`SCM_CREDENTIALS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// One control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// `SCM_CREDENTIALS`.
    Credentials(Credentials),
    /// `SCM_RIGHTS`: the descriptors the kernel installed in the receiving process.
    Rights(Descriptors<'a>),
    /// Any other message: its level, type and data.
    Other {
        /// `cmsg_level`.
        level: i32,
        /// `cmsg_type`.
        kind: i32,
        /// Its data, as long as `cmsg_len` says and the buffer holds.
        data: &'a [u8],
    },
}

/// The descriptors of an `SCM_RIGHTS` message (native-endian `int`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptors<'a>(&'a [u8]);

impl<'a> Descriptors<'a> {
    /// How many.
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each descriptor.
    pub fn iter(&self) -> impl Iterator<Item = i32> + 'a {
        self.0.chunks_exact(4).map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// The messages in `buf`, the control buffer as long as the kernel filled it
/// (`msg_controllen`). The walk stops at a header whose length is shorter than a header or
/// runs past the buffer, as the kernel's own `__cmsg_nxthdr` does.
pub fn messages(buf: &[u8]) -> Messages<'_> {
    Messages { buf, at: 0 }
}

/// Iterator of [`messages`].
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    buf: &'a [u8],
    at: usize,
}

fn word(bytes: &[u8]) -> Option<usize> {
    Some(usize::from_ne_bytes(bytes.get(..std::mem::size_of::<usize>())?.try_into().ok()?))
}

fn int(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Iterator for Messages<'a> {
    type Item = Message<'a>;

    fn next(&mut self) -> Option<Message<'a>> {
        let rest = self.buf.get(self.at..)?;
        let len = word(rest)?;
        if len < HEADER || len > rest.len() {
            self.at = self.buf.len();
            return None;
        }
        let (level, kind) = (int(rest, ALIGN)?, int(rest, ALIGN + 4)?);
        let data = rest.get(DATA.min(len)..len)?;
        // The next header: this one's length, aligned (past the end: the walk is over).
        self.at = self.at.saturating_add(align(len));
        Some(match (level, kind) {
            (SOL_SOCKET, SCM_CREDENTIALS) if data.len() >= UCRED => Message::Credentials(Credentials {
                pid: int(data, 0)?,
                uid: int(data, 4)? as u32,
                gid: int(data, 8)? as u32,
            }),
            (SOL_SOCKET, SCM_RIGHTS) => Message::Rights(Descriptors(data)),
            _ => Message::Other { level, kind, data },
        })
    }
}

/// Walks `buf` and checks what the fuzzer checks: every message lies inside the buffer, and
/// the walk ends. Used by `fuzz/fuzz_targets/ancillary.rs` and the regression replay.
pub fn exercise(buf: &[u8]) {
    let mut count = 0;
    for m in messages(buf) {
        count += 1;
        match m {
            Message::Rights(d) => assert!(d.len() * 4 + DATA <= buf.len() && d.iter().count() == d.len()),
            Message::Other { data, .. } => assert!(data.len() + DATA <= buf.len()),
            Message::Credentials(_) => {}
        }
    }
    assert!(count <= buf.len() / HEADER);
}

/// Builds a control buffer (tests, the fuzzer's seeds): each message's level, type and data.
pub fn encode(messages: &[(i32, i32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (level, kind, data) in messages {
        let start = out.len();
        out.extend_from_slice(&(DATA + data.len()).to_ne_bytes());
        out.extend_from_slice(&level.to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.resize(start + DATA, 0);
        out.extend_from_slice(data);
        out.resize(start + align(DATA + data.len()), 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ucred(pid: i32, uid: u32, gid: u32) -> Vec<u8> {
        [pid.to_ne_bytes(), uid.to_ne_bytes(), gid.to_ne_bytes()].concat()
    }

    #[test]
    fn credentials_then_descriptors() {
        let fds: Vec<u8> = [7i32, 8, 9].iter().flat_map(|f| f.to_ne_bytes()).collect();
        let buf = encode(&[(SOL_SOCKET, SCM_CREDENTIALS, &ucred(42, 1000, 100)), (SOL_SOCKET, SCM_RIGHTS, &fds)]);
        let got: Vec<Message> = messages(&buf).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], Message::Credentials(Credentials { pid: 42, uid: 1000, gid: 100 }));
        let Message::Rights(d) = got[1] else { panic!("{got:?}") };
        assert_eq!(d.iter().collect::<Vec<_>>(), [7, 8, 9]);
    }

    /// The kernel cuts a message that does not fit (`MSG_CTRUNC`): a length past the buffer
    /// ends the walk, as does one shorter than a header.
    #[test]
    fn a_length_that_does_not_fit_ends_the_walk() {
        let fds: Vec<u8> = [7i32, 8].iter().flat_map(|f| f.to_ne_bytes()).collect();
        let buf = encode(&[(SOL_SOCKET, SCM_CREDENTIALS, &ucred(1, 2, 3)), (SOL_SOCKET, SCM_RIGHTS, &fds)]);
        let cut = &buf[..buf.len() - 4];
        assert_eq!(messages(cut).count(), 1);
        let mut short = buf.clone();
        short[..ALIGN].copy_from_slice(&3usize.to_ne_bytes());
        assert_eq!(messages(&short).count(), 0);
        let mut huge = buf;
        huge[..ALIGN].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(messages(&huge).count(), 0);
        assert_eq!(messages(&[]).count(), 0);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_walk_inside_the_buffer(buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            exercise(&buf);
        }
    }
}

#[cfg(test)]
mod regressions {
    /// Every input the fuzzer ever crashed on (and the seeds) still runs cleanly.
    #[test]
    fn fuzz_regressions_replay() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/ancillary");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/regressions/ancillary") {
            crate::exercise(&std::fs::read(entry.expect("entry").path()).expect("read"));
            n += 1;
        }
        assert!(n > 0, "the regression corpus is empty");
    }

    /// Writes the seed corpus; run by hand: `cargo test -p floodgate-ancillary write_seeds --
    /// --ignored`.
    #[test]
    #[ignore]
    fn write_seeds() {
        use crate::*;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/ancillary");
        std::fs::create_dir_all(&dir).unwrap();
        let ucred: Vec<u8> = [1i32.to_ne_bytes(), 0i32.to_ne_bytes(), 0i32.to_ne_bytes()].concat();
        let fds: Vec<u8> = [3i32, 4, 5, 6].iter().flat_map(|f| f.to_ne_bytes()).collect();
        std::fs::write(dir.join("seed-credentials"), encode(&[(SOL_SOCKET, SCM_CREDENTIALS, &ucred)])).unwrap();
        std::fs::write(
            dir.join("seed-credentials-rights"),
            encode(&[(SOL_SOCKET, SCM_CREDENTIALS, &ucred), (SOL_SOCKET, SCM_RIGHTS, &fds)]),
        )
        .unwrap();
    }
}
