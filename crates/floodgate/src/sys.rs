//! The syscall layer: UDP sockets with `SO_REUSEPORT` and a large receive buffer, batched
//! receive with `recvmmsg(2)`, netlink sockets (conntrack) and the host's interface
//! addresses, and `bpf(2)` for the kernel guard ([`bpf`]). All of floodgate's `unsafe` lives
//! here.
//!
//! `recvmmsg` is written against libc directly: nix's wrapper allocates per call and hides the
//! per-message truncation flag we count, and the loop is small.

pub mod bpf;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// A bound UDP socket for one receive thread, with the receive buffer the kernel granted.
pub struct UdpReceiver {
    socket: Socket,
    /// `SO_RCVBUF` as read back (the kernel reports twice what it accounts for).
    pub granted_buffer: usize,
    /// Whether `SO_RCVBUFFORCE` was allowed (CAP_NET_ADMIN); otherwise the buffer was capped
    /// at `net.core.rmem_max`.
    pub forced: bool,
}

/// `SO_PASSRIGHTS` (Linux 6.16): 0 makes the kernel refuse `SCM_RIGHTS` to this socket, so a
/// sender's descriptors never reach floodgate (its `sendmsg` fails with EPERM).
const SO_PASSRIGHTS: libc::c_int = 83;

/// Asks the kernel to refuse descriptors passed to the Unix socket `fd` (a listener's accepted
/// connections too: call it on each). Older kernels lack the option; there, and always,
/// [`RecvBatch`] closes whatever descriptors a datagram brings, and stream connections are
/// read with `read(2)`, which makes the kernel close them.
pub fn refuse_passed_descriptors(fd: RawFd) {
    let _ = set_int_opt(fd, libc::SOL_SOCKET, SO_PASSRIGHTS, 0);
}

/// Asks for a `buffer`-byte receive queue: `SO_RCVBUFFORCE` past `net.core.rmem_max` when the
/// process has CAP_NET_ADMIN (true), else `SO_RCVBUF`, which the kernel caps at rmem_max.
fn set_receive_buffer(socket: &Socket, buffer: usize) -> bool {
    if set_int_opt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, buffer).is_ok() {
        return true;
    }
    let _ = socket.set_recv_buffer_size(buffer);
    false
}

impl UdpReceiver {
    /// Binds `addr` with `SO_REUSEPORT` (so several threads can each own a socket), asks for a
    /// `buffer`-byte receive queue (forcing past `rmem_max` when privileged) and a read timeout
    /// so the thread can notice shutdown.
    pub fn bind(addr: SocketAddr, buffer: usize, timeout: Duration) -> io::Result<UdpReceiver> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        let forced = set_receive_buffer(&socket, buffer);
        socket.set_read_timeout(Some(timeout))?;
        socket.bind(&addr.into())?;
        let granted_buffer = socket.recv_buffer_size()?;
        Ok(UdpReceiver { socket, granted_buffer, forced })
    }

    /// Binds a Unix datagram socket at `path` (a stale socket file left by an earlier run is
    /// replaced; any other file there is an error), with a `buffer`-byte receive queue and the
    /// read timeout.
    pub fn bind_unix(path: &std::path::Path, buffer: usize, timeout: Duration) -> io::Result<UdpReceiver> {
        clear_stale_socket(path)?;
        let socket = Socket::new(Domain::UNIX, Type::DGRAM, None)?;
        // Every datagram then carries its sender's pid, uid and gid (SCM_CREDENTIALS).
        set_int_opt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, 1)?;
        refuse_passed_descriptors(socket.as_raw_fd());
        let forced = set_receive_buffer(&socket, buffer);
        socket.set_read_timeout(Some(timeout))?;
        socket.bind(&socket2::SockAddr::unix(path)?)?;
        let granted_buffer = socket.recv_buffer_size()?;
        Ok(UdpReceiver { socket, granted_buffer, forced })
    }

    /// Whether it is a Unix socket (its datagrams carry the sender's credentials).
    pub fn is_unix(&self) -> bool {
        self.socket.domain().is_ok_and(|d| d == Domain::UNIX)
    }

    /// Binds `count` sockets to one address as a `SO_REUSEPORT` group (one per receive
    /// thread). The address is first bound once without `SO_REUSEPORT`, so a port another
    /// process already holds is an error ("address in use") rather than silently shared.
    pub fn bind_group(
        addr: SocketAddr,
        count: usize,
        buffer: usize,
        timeout: Duration,
    ) -> io::Result<Vec<UdpReceiver>> {
        let mut bound = addr;
        if addr.port() != 0 {
            drop(std::net::UdpSocket::bind(addr)?);
        }
        let mut group = Vec::with_capacity(count);
        for _ in 0..count.max(1) {
            let socket = UdpReceiver::bind(bound, buffer, timeout)?;
            bound = socket.local_addr()?;
            group.push(socket);
        }
        Ok(group)
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()?.as_socket().ok_or_else(|| io::Error::other("not an inet socket"))
    }

    /// The raw descriptor.
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is an open socket owned by the caller; the option value is a c_int that
    // lives for the duration of the call and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Preallocated buffers for one `recvmmsg` call of up to `slots` datagrams.
///
/// The message headers point into the boxed buffers, which never move, so the batch can be
/// reused for every call without allocation. It is neither `Send` nor `Sync` (raw pointers):
/// create it on the thread that uses it.
pub struct RecvBatch {
    slot_size: usize,
    buf: Box<[u8]>,
    _iov: Box<[libc::iovec]>,
    addrs: Box<[libc::sockaddr_storage]>,
    /// Ancillary data per slot: room for one `SCM_CREDENTIALS` (Unix sockets with
    /// `SO_PASSCRED`), read with `floodgate_ancillary`.
    control: Box<[Control]>,
    /// `control` is in use.
    credentials: bool,
    hdrs: Box<[libc::mmsghdr]>,
    received: usize,
    /// Descriptors senders passed (`SCM_RIGHTS`) and this batch closed, since it was made.
    pub descriptors_closed: u64,
}

/// 64 bytes a slot: `CMSG_SPACE(sizeof(struct ucred))` is 32 on Linux, which leaves room for
/// a few passed descriptors too; every one that arrives is closed at once (see
/// [`RecvBatch::recv`]), and those that did not fit the kernel closes itself (`MSG_CTRUNC`).
const CONTROL_BYTES: usize = 64;

/// One slot's control buffer, aligned as `struct cmsghdr` wants.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; CONTROL_BYTES]);

/// Who sent a datagram on a Unix socket, as the kernel saw it (`SCM_CREDENTIALS`): a sender
/// cannot claim another process's (only root may pass other ids, and the kernel checks them).
pub use floodgate_ancillary::Credentials;

impl RecvBatch {
    /// Room for `slots` datagrams of up to `slot_size` bytes.
    pub fn new(slots: usize, slot_size: usize) -> RecvBatch {
        RecvBatch::build(slots, slot_size, false)
    }

    /// The same, with room for each datagram's sender credentials (a Unix socket with
    /// `SO_PASSCRED`). UDP batches go without: nothing to fill, nothing to reset per call.
    pub fn with_credentials(slots: usize, slot_size: usize) -> RecvBatch {
        RecvBatch::build(slots, slot_size, true)
    }

    fn build(slots: usize, slot_size: usize, credentials: bool) -> RecvBatch {
        let mut buf = vec![0u8; slots * slot_size].into_boxed_slice();
        // SAFETY: sockaddr_storage and mmsghdr are plain C structs for which all-zero bytes
        // are a valid value.
        let mut addrs: Box<[libc::sockaddr_storage]> = (0..slots).map(|_| unsafe { std::mem::zeroed() }).collect();
        let mut iov: Box<[libc::iovec]> = (0..slots)
            .map(|i| libc::iovec {
                // In bounds: i < slots and the buffer holds slots * slot_size bytes.
                iov_base: buf[i * slot_size..].as_mut_ptr().cast(),
                iov_len: slot_size,
            })
            .collect();
        let mut control: Box<[Control]> =
            vec![Control([0; CONTROL_BYTES]); if credentials { slots } else { 0 }].into_boxed_slice();
        let hdrs: Box<[libc::mmsghdr]> = (0..slots)
            .map(|i| {
                // SAFETY: as above, zeroed mmsghdr is valid; the fields set below point into
                // boxed slices owned by the returned RecvBatch.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_hdr.msg_iov = &mut iov[i];
                h.msg_hdr.msg_iovlen = 1;
                if let Some(c) = control.get_mut(i) {
                    h.msg_hdr.msg_control = c.0.as_mut_ptr().cast();
                    h.msg_hdr.msg_controllen = CONTROL_BYTES as _;
                }
                h
            })
            .collect();
        RecvBatch { slot_size, buf, _iov: iov, addrs, credentials, control, hdrs, received: 0, descriptors_closed: 0 }
    }

    /// Blocks until at least one datagram is queued (or the socket's read timeout passes),
    /// then takes as many as are queued, up to the batch size. Returns how many. Descriptors a
    /// sender passed with a datagram (Unix sockets) are closed before this returns: nothing a
    /// control message brings is kept.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_flags(fd, libc::MSG_WAITFORONE)
    }

    /// Takes what is queued without waiting (`WouldBlock` when nothing is).
    pub fn recv_queued(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_flags(fd, libc::MSG_DONTWAIT)
    }

    fn recv_flags(&mut self, fd: RawFd, flags: libc::c_int) -> io::Result<usize> {
        for h in self.hdrs.iter_mut() {
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            if self.credentials {
                h.msg_hdr.msg_controllen = CONTROL_BYTES as _;
            }
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at a live iovec and sockaddr_storage inside `self`
        // (boxed, never moved or freed while `self` lives), each iovec at `slot_size` bytes of
        // `self.buf`; the count passed equals the number of headers. A null timeout is allowed.
        // MSG_CMSG_CLOEXEC: a passed descriptor is never inherited, even in the moment
        // before it is closed below.
        let flags = if self.credentials { flags | libc::MSG_CMSG_CLOEXEC } else { flags };
        let n = unsafe {
            libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), self.hdrs.len() as libc::c_uint, flags, std::ptr::null_mut())
        };
        if n < 0 {
            self.received = 0;
            return Err(io::Error::last_os_error());
        }
        self.received = n as usize;
        if self.credentials {
            for i in 0..self.received {
                self.descriptors_closed += self.close_passed_descriptors(i);
            }
        }
        Ok(self.received)
    }

    /// The control messages the kernel wrote for datagram `i` of the last call.
    fn control_messages(&self, i: usize) -> floodgate_ancillary::Messages<'_> {
        // usize on glibc, socklen_t on musl.
        #[allow(clippy::unnecessary_cast)]
        let len = (self.hdrs[i].msg_hdr.msg_controllen as usize).min(CONTROL_BYTES);
        let bytes = self.control.get(i).map_or(&[][..], |c| &c.0[..len]);
        floodgate_ancillary::messages(bytes)
    }

    /// Closes every descriptor that arrived with datagram `i` (`SCM_RIGHTS`); returns how many.
    fn close_passed_descriptors(&self, i: usize) -> u64 {
        let mut closed = 0;
        for m in self.control_messages(i) {
            if let floodgate_ancillary::Message::Rights(descriptors) = m {
                for passed in descriptors.iter() {
                    // SAFETY: the kernel just installed `passed` in our table for us; nothing
                    // else knows of it, so closing it cannot close anything of ours.
                    if passed >= 0 && unsafe { libc::close(passed) } == 0 {
                        closed += 1;
                    }
                }
            }
        }
        closed
    }

    /// Datagram `i` of the last call: its bytes (up to the slot size) and whether the kernel
    /// truncated it.
    pub fn datagram(&self, i: usize) -> (&[u8], bool) {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(self.slot_size);
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        (&self.buf[i * self.slot_size..i * self.slot_size + len], truncated)
    }

    /// The sender's credentials for datagram `i` of the last call (Unix sockets with
    /// `SO_PASSCRED`; `None` otherwise).
    pub fn credentials(&self, i: usize) -> Option<Credentials> {
        if !self.credentials {
            return None;
        }
        self.control_messages(i).find_map(|m| match m {
            floodgate_ancillary::Message::Credentials(c) => Some(c),
            _ => None,
        })
    }

    /// Source address of datagram `i` of the last call.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        let storage = &self.addrs[i];
        let len = self.hdrs[i].msg_hdr.msg_namelen as usize;
        match storage.ss_family as libc::c_int {
            libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the kernel wrote a sockaddr_in (family AF_INET, length checked) into
                // this sockaddr_storage, which is large and aligned enough for any address.
                let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
            }
            libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for a sockaddr_in6.
                let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(SocketAddr::from((ip, u16::from_be(a.sin6_port))))
            }
            _ => None,
        }
    }
}

/// Sends many datagrams to one destination with one `sendmmsg(2)` call (the load generator's
/// sender; UDP outputs later).
pub struct SendBatch {
    dest: libc::sockaddr_storage,
    dest_len: libc::socklen_t,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl SendBatch {
    /// A batch sending to `dest`.
    pub fn new(dest: SocketAddr) -> SendBatch {
        let addr = socket2::SockAddr::from(dest);
        // SAFETY: all-zero bytes are a valid sockaddr_storage; `addr` holds `addr.len()` valid
        // bytes (at most the storage size), copied over it.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        unsafe {
            std::ptr::copy_nonoverlapping(
                addr.as_ptr().cast::<u8>(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                addr.len() as usize,
            );
        }
        SendBatch { dest: storage, dest_len: addr.len(), iov: Vec::new(), hdrs: Vec::new() }
    }

    /// Sends `datagrams` from `fd`; returns how many the kernel took.
    pub fn send(&mut self, fd: RawFd, datagrams: &[&[u8]]) -> io::Result<usize> {
        self.iov.clear();
        self.iov.extend(
            datagrams.iter().map(|d| libc::iovec { iov_base: d.as_ptr() as *mut libc::c_void, iov_len: d.len() }),
        );
        self.hdrs.clear();
        for i in 0..self.iov.len() {
            // SAFETY: zeroed mmsghdr is valid; the pointers set below stay valid for the call
            // (the iovecs live in `self.iov`, not resized until the call returns; the
            // destination lives in `self`; the kernel only reads them).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.dest as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = self.dest_len;
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        // SAFETY: `hdrs` holds `hdrs.len()` initialised headers whose buffers (the caller's
        // datagrams) outlive the call.
        let n = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), self.hdrs.len() as libc::c_uint, 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// `NETLINK_NETFILTER`.
const NETLINK_NETFILTER: i32 = 12;
/// `SOL_NETLINK`.
const SOL_NETLINK: i32 = 270;
/// `NETLINK_ADD_MEMBERSHIP`.
const NETLINK_ADD_MEMBERSHIP: i32 = 1;

/// A netfilter netlink socket (ctnetlink): requests go to the kernel, replies and (when
/// subscribed) events come back.
pub struct NetlinkSocket {
    socket: Socket,
}

impl NetlinkSocket {
    /// Opens and binds a `NETLINK_NETFILTER` socket subscribed to `groups`, with a receive
    /// buffer of `buffer` bytes (forced past `rmem_max` when privileged) and a read timeout.
    pub fn netfilter(groups: &[u32], buffer: usize, timeout: Duration) -> io::Result<NetlinkSocket> {
        NetlinkSocket::open(NETLINK_NETFILTER, groups, buffer, timeout)
    }

    /// Opens a `NETLINK_SOCK_DIAG` socket (the host's sockets; no privilege needed).
    pub fn sock_diag(timeout: Duration) -> io::Result<NetlinkSocket> {
        NetlinkSocket::open(floodgate_conntrack::sockdiag::NETLINK_SOCK_DIAG, &[], 4 << 20, timeout)
    }

    fn open(protocol: i32, groups: &[u32], buffer: usize, timeout: Duration) -> io::Result<NetlinkSocket> {
        let socket = Socket::new(Domain::from(libc::AF_NETLINK), Type::RAW, Some(Protocol::from(protocol)))?;
        // SAFETY: an all-zero sockaddr_nl is valid (pid 0: the kernel assigns one; no groups).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a live, initialised sockaddr_nl and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        for group in groups {
            set_int_opt(socket.as_raw_fd(), SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, *group as usize)?;
        }
        set_receive_buffer(&socket, buffer);
        socket.set_read_timeout(Some(timeout))?;
        Ok(NetlinkSocket { socket })
    }

    /// Sends one request to the kernel.
    pub fn send(&self, request: &[u8]) -> io::Result<()> {
        self.socket.send(request).map(|_| ())
    }

    /// Receives one buffer of messages (`ENOBUFS`: the kernel dropped events for us).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a valid, writable region of `buf.len()` bytes for the call.
        let n = unsafe { libc::recv(self.socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// The receive buffer the kernel granted.
    pub fn recv_buffer(&self) -> usize {
        self.socket.recv_buffer_size().unwrap_or(0)
    }
}

/// Moves the calling thread into the network namespace `file` refers to (`/run/netns/NAME`,
/// `/proc/PID/ns/net`): the sockets it opens from then on, and the interfaces it lists,
/// are that namespace's. Needs CAP_SYS_ADMIN.
pub fn enter_network_namespace(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setns takes an open descriptor and a namespace type; it changes only the
    // calling thread's network namespace and touches no memory of ours.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// This host's name (the agent id's and aggregator id's default, and part of the ids a fleet's
/// hosts give themselves in Redis and NATS).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The addresses of this host's interfaces (`getifaddrs`; the calling thread's namespace).
pub fn interface_addresses() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: family AF_INET: the sockaddr is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
            } else if family == libc::AF_INET6 {
                // SAFETY: family AF_INET6: the sockaddr is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(std::net::IpAddr::V6(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// Datagrams the kernel dropped for want of receive-buffer room on sockets bound to `port`
/// (the `drops` column of `/proc/net/udp` and `/proc/net/udp6`).
pub fn kernel_udp_drops(port: u16) -> u64 {
    let mut total = 0;
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port =
                cols.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                total += cols.last().and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    total
}

/// Sends SIGHUP to process `pid` (`floodgate reload`). Only a single process: 0 and negative
/// ids (a process group, or every process) are refused.
pub fn send_hangup(pid: i32) -> io::Result<()> {
    if pid <= 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a process id"));
    }
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGHUP) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises the soft limit on open descriptors to the hard limit (as Go's runtime does): every
/// connection floodgate admits holds one, and the guard's caps, not the default soft limit of
/// 1024, should be what bounds them. Returns the limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct, which `limit` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads one rlimit struct, which `raised` is.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(raised.rlim_cur);
    }
    Ok(limit.rlim_cur)
}

/// Makes way for a socket file at `path`: a stale one (left by a killed process: nothing
/// answers on it) is removed; a live one (another daemon's, a second floodgate's) and any
/// other file there are an error, never deleted.
pub fn clear_stale_socket(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if socket_is_live(path) {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on this socket (it is not stale: not removed)",
                ));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(io::Error::new(io::ErrorKind::AlreadyExists, "a file that is not a socket is in the way")),
        Err(_) => Ok(()),
    }
}

/// Whether a process is bound to the socket file at `path`: a stream connection is accepted
/// or pending, or refused as the wrong type (a datagram socket). Only "connection refused"
/// (nothing bound: a stale file) says no; anything else that cannot be told is taken as live.
fn socket_is_live(path: &std::path::Path) -> bool {
    let Ok(probe) = Socket::new(Domain::UNIX, Type::STREAM, None) else { return true };
    if probe.set_nonblocking(true).is_err() {
        return true;
    }
    let Ok(address) = socket2::SockAddr::unix(path) else { return true };
    match probe.connect(&address) {
        Ok(()) => true,
        Err(e) => !matches!(e.raw_os_error(), Some(libc::ECONNREFUSED) | Some(libc::ENOENT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    /// A socket file another process still listens on (datagram or stream) is left alone; one
    /// nobody answers on (its process was killed) is removed.
    #[test]
    fn only_stale_socket_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dgram = dir.path().join("dgram.sock");
        let live = std::os::unix::net::UnixDatagram::bind(&dgram).unwrap();
        assert_eq!(clear_stale_socket(&dgram).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        let stream = dir.path().join("stream.sock");
        let listening = std::os::unix::net::UnixListener::bind(&stream).unwrap();
        assert_eq!(clear_stale_socket(&stream).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        assert!(dgram.exists() && stream.exists());
        drop((live, listening));
        clear_stale_socket(&dgram).unwrap();
        clear_stale_socket(&stream).unwrap();
        assert!(!dgram.exists() && !stream.exists());
    }

    /// Descriptors of this process open on `path` (other tests run beside this one, so the
    /// count is of one file's only).
    fn open_on(path: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target == path)
            .count()
    }

    /// Descriptors a sender attaches to datagrams (`SCM_RIGHTS`, four a datagram: as many as
    /// fit beside the credentials, and more than fit) are closed as they arrive: the process's
    /// descriptor count does not grow. The socket here keeps the kernel's default (descriptors
    /// allowed), as on a kernel without `SO_PASSRIGHTS`.
    #[test]
    fn descriptors_passed_with_datagrams_are_closed() {
        use std::os::unix::net::UnixDatagram;
        let (tx, rx) = UnixDatagram::pair().unwrap();
        set_int_opt(rx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, 1).unwrap();
        let marked = tempfile::NamedTempFile::new().unwrap();
        let spare: Vec<std::fs::File> = (0..8).map(|_| std::fs::File::open(marked.path()).unwrap()).collect();
        let fds: Vec<libc::c_int> = spare.iter().map(|f| f.as_raw_fd()).collect();
        let mut batch = RecvBatch::with_credentials(16, 256);
        // The eight, and the temporary file's own.
        let before = open_on(marked.path());
        assert_eq!(before, 9);
        let mut received = 0;
        for round in 0..50 {
            for attach in [&fds[..1], &fds[..4], &fds[..8]] {
                send_with_descriptors(tx.as_raw_fd(), format!("x:{round}|c").as_bytes(), attach);
            }
            while received < (round + 1) * 3 {
                received += batch.recv(rx.as_raw_fd()).unwrap();
            }
        }
        assert_eq!(open_on(marked.path()), before, "a passed descriptor was kept");
        assert!(batch.descriptors_closed >= 50 * 5, "closed {}", batch.descriptors_closed);
    }

    /// sendmsg(2) of `data` with `fds` attached, on a Unix socket.
    fn send_with_descriptors(fd: RawFd, data: &[u8], fds: &[libc::c_int]) {
        let mut control = [0u64; 16];
        let bytes = std::mem::size_of_val(fds);
        let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
        // SAFETY: a zeroed msghdr is valid; every pointer set below is to a local that outlives
        // the call, and the control buffer (128 bytes) holds CMSG_SPACE of up to 8 ints.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(bytes as u32) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), bytes);
            assert!(libc::sendmsg(fd, &msg, 0) >= 0, "sendmsg: {}", io::Error::last_os_error());
        }
    }

    #[test]
    fn receives_a_batch_with_sources_and_truncation() {
        let rx = UdpReceiver::bind("127.0.0.1:0".parse().unwrap(), 1 << 20, Duration::from_millis(500)).unwrap();
        let addr = rx.local_addr().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"a:1|c", addr).unwrap();
        tx.send_to(&[b'x'; 3000], addr).unwrap();
        let mut batch = RecvBatch::new(8, 2048);
        let mut got = Vec::new();
        while got.len() < 2 {
            let n = batch.recv(rx.fd()).unwrap();
            for i in 0..n {
                let (data, truncated) = batch.datagram(i);
                got.push((data.to_vec(), truncated, batch.source(i)));
            }
        }
        assert_eq!(got[0].0, b"a:1|c");
        assert!(!got[0].1);
        assert_eq!(got[0].2, Some(tx.local_addr().unwrap()));
        assert_eq!(got[1].0.len(), 2048);
        assert!(got[1].1);
        assert!(rx.granted_buffer >= 1 << 20);
    }

    #[test]
    fn a_group_refuses_a_port_already_in_use() {
        let group =
            UdpReceiver::bind_group("127.0.0.1:0".parse().unwrap(), 2, 1 << 16, Duration::from_millis(100)).unwrap();
        let addr = group[0].local_addr().unwrap();
        assert_eq!(group[1].local_addr().unwrap(), addr);
        let err = UdpReceiver::bind_group(addr, 2, 1 << 16, Duration::from_millis(100)).err().expect("port in use");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn sends_a_batch() {
        let rx = UdpReceiver::bind("127.0.0.1:0".parse().unwrap(), 1 << 20, Duration::from_millis(500)).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = SendBatch::new(rx.local_addr().unwrap());
        let data: Vec<&[u8]> = vec![b"one", b"two", b"three"];
        assert_eq!(batch.send(tx.as_raw_fd(), &data).unwrap(), 3);
        let mut recv = RecvBatch::new(8, 64);
        let mut got = Vec::new();
        while got.len() < 3 {
            let n = recv.recv(rx.fd()).unwrap();
            got.extend((0..n).map(|i| recv.datagram(i).0.to_vec()));
        }
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
    }
}
