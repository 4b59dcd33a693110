//! One UDP receive loop for every datagram listener (StatsD, syslog): blocking `recvmmsg`
//! batches on the thread's own `SO_REUSEPORT` socket, each datagram put to the guard before
//! anything looks inside it, the admitted ones handed to the listener's [`DatagramHandler`]
//! a batch at a time. The loop owns what is common — shutdown drain, coalescing at low rates,
//! the guard's verdicts and the packet/byte/drop counters — so a handler only decodes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use floodgate_guard::Reason;

use crate::guard::{Guard, ListenerGuard};
use crate::listener::Counters;
use crate::sys::{RecvBatch, UdpReceiver};

/// Datagrams taken per `recvmmsg` call (also the width of the admitted-set bit mask).
const BATCH: usize = 64;

/// After a call that found the queue nearly empty, let datagrams gather this long before the
/// next: at low rates a wake-up per datagram costs more than the decoding (10k datagrams/s
/// would be 10k wake-ups); at high rates batches are full and this never happens. The socket
/// buffer holds far more than arrives meanwhile, and flushes are seconds apart.
const COALESCE: Duration = Duration::from_millis(5);

/// At shutdown, the longest spent reading what is already queued.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// One received datagram the guard admitted.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// Its bytes (cut at the slot size when `truncated`).
    pub data: &'a [u8],
    /// It was longer than the slot.
    pub truncated: bool,
    /// The sender.
    pub source: Option<SocketAddr>,
    /// The sending process, on a Unix socket.
    pub peer: Option<crate::sys::Credentials>,
}

/// The admitted datagrams of one batch.
pub struct Admitted<'a> {
    batch: &'a RecvBatch,
    n: usize,
    /// Bit i set: datagram i was refused.
    refused: u64,
}

impl<'a> Admitted<'a> {
    /// The datagrams, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = Datagram<'a>> + '_ {
        let batch = self.batch;
        (0..self.n).filter(|i| self.refused & (1 << i) == 0).map(move |i| {
            let (data, truncated) = batch.datagram(i);
            Datagram { data, truncated, source: batch.source(i), peer: batch.credentials(i) }
        })
    }

    /// Datagrams received in the batch, admitted or not.
    pub fn received(&self) -> usize {
        self.n
    }

    /// The read took as many datagrams as a batch holds: more are probably queued. A handler
    /// that gathers its output over batches hands it on when this is false (the queue was
    /// drained) or at [`DatagramHandler::idle`].
    pub fn full(&self) -> bool {
        self.n == BATCH
    }
}

/// What a listener does with the datagrams the guard lets in.
pub trait DatagramHandler: Send + 'static {
    /// Messages in a datagram, as the guard charges them (a StatsD line; a syslog datagram
    /// is one message).
    fn messages(data: &[u8]) -> u64;

    /// Decodes one batch. `now` is the guard's clock (ns since its epoch), read once a batch.
    /// `publish` adds the batch's packet, byte and drop counts to the listener's counters; call
    /// it exactly once, before the decoded values become visible to readers that also read
    /// those counters.
    fn handle(&mut self, datagrams: Admitted<'_>, now: u64, publish: &mut dyn FnMut());

    /// Nothing arrived for the socket's read timeout: hand on anything held.
    fn idle(&mut self) {}

    /// The thread is stopping (after the shutdown drain): hand on anything held.
    fn finish(&mut self) {}
}

/// One receive thread.
pub struct UdpWorker<H> {
    /// The bound socket.
    pub socket: UdpReceiver,
    /// The decoder.
    pub handler: H,
    /// Self-metrics.
    pub counters: Arc<Counters>,
    /// Admission: asked for each datagram before it is decoded.
    pub guard: Arc<Guard>,
    /// This address's place in the guard.
    pub listener: Arc<ListenerGuard>,
    /// Slot size: longer datagrams are truncated and counted as oversize.
    pub max_datagram: usize,
    /// Set to stop.
    pub shutdown: Arc<AtomicBool>,
    /// Let datagrams gather at low rates ([`COALESCE`]). Off for Unix sockets: the kernel
    /// queues only `net.unix.max_dgram_qlen` datagrams (10 by default) for one, and a sender
    /// past that gets EAGAIN and drops.
    pub coalesce: bool,
    /// Unix datagram sockets: how many datagrams the kernel queues for this one (0: not one).
    /// A read that takes that many at once found the queue full ([`Counters::queue_full`]);
    /// past [`BATCH`] a read cannot tell.
    pub datagram_queue: u32,
}

impl<H: DatagramHandler> UdpWorker<H> {
    /// Starts the thread.
    pub fn spawn(self, name: String) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new().name(name).spawn(move || self.run())
    }

    fn run(mut self) {
        let mut batch = if self.socket.is_unix() {
            RecvBatch::with_credentials(BATCH, self.max_datagram)
        } else {
            RecvBatch::new(BATCH, self.max_datagram)
        };
        let fd = self.socket.fd();
        let mut drain_until = None;
        let mut descriptors_reported = 0;
        loop {
            let n = if let Some(deadline) = drain_until {
                // Shutting down: take what the kernel already queued for us (bounded in time,
                // in case senders keep sending), then stop.
                match batch.recv_queued(fd) {
                    Ok(n) if n > 0 && Instant::now() < deadline => n,
                    _ => break,
                }
            } else if self.shutdown.load(Ordering::Relaxed) {
                drain_until = Some(Instant::now() + DRAIN_LIMIT);
                continue;
            } else {
                match batch.recv(fd) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        self.handler.idle();
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "udp receive failed");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                }
            };
            let mut bytes = 0;
            let mut oversize = 0;
            let mut refused = 0u64;
            let mut dropped = [0u64; Reason::ALL.len()];
            // One clock read a batch, for the guard's limits and the handler.
            let now = self.guard.now_ns();
            {
                let policy = self.guard.policy();
                for i in 0..n {
                    let (data, truncated) = batch.datagram(i);
                    bytes += data.len() as u64;
                    let verdict = match (batch.source(i), batch.credentials(i)) {
                        (Some(source), _) => {
                            self.listener.admit_datagram(&policy, source.ip(), data.len(), || H::messages(data), now)
                        }
                        (None, Some(peer)) => self.listener.admit_local(
                            &policy,
                            peer.uid,
                            peer.pid,
                            data.len(),
                            || H::messages(data),
                            now,
                        ),
                        (None, None) => Ok(()),
                    };
                    if let Err((reason, messages)) = verdict {
                        dropped[reason as usize] += messages;
                        refused |= 1 << i;
                        if crate::tap::TAP.watching() {
                            let source = crate::tap::TapSource::new(batch.source(i), batch.credentials(i));
                            crate::tap::TAP.refused(self.listener.kind(), source, data, reason);
                        }
                        continue;
                    }
                    oversize += truncated as u64;
                }
            }
            let passed = batch.descriptors_closed - descriptors_reported;
            descriptors_reported = batch.descriptors_closed;
            let counters = &self.counters;
            let listener = &self.listener;
            let mut publish = || {
                for reason in Reason::ALL {
                    counters.add_dropped(reason, dropped[reason as usize]);
                }
                listener.add_port_dropped(dropped[Reason::PortLimit as usize]);
                Counters::add(&counters.packets, n as u64);
                Counters::add(&counters.bytes, bytes);
                Counters::add(&counters.oversize, oversize);
                Counters::add(&counters.passed_descriptors, passed);
            };
            if self.datagram_queue > 0 && n >= self.datagram_queue as usize {
                Counters::add(&self.counters.queue_full, 1);
            }
            self.handler.handle(Admitted { batch: &batch, n, refused }, now, &mut publish);
            if self.coalesce && n < BATCH / 4 && drain_until.is_none() {
                std::thread::sleep(COALESCE);
            }
        }
        self.handler.finish();
    }
}
