//! UDP receive threads: blocking `recvmmsg` batches, parsed straight into the thread's shard.
//!
//! The shard's mutex is taken once per batch and is only ever contended by the flusher's
//! swap (a pointer exchange) once per interval, so receive threads share no lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use floodgate_statsd::{PacketCounts, Parser};

use floodgate_guard::Reason;

use super::{complete_lines, ingest, publish, SharedShard};
use crate::guard::{count_lines, Guard, ListenerGuard};
use crate::sys::{RecvBatch, UdpReceiver};
use crate::telemetry::ListenerCounters;

/// Datagrams taken per `recvmmsg` call.
const BATCH: usize = 64;

/// After a call that found the queue nearly empty, let datagrams gather this long before the
/// next: at low rates a wake-up per datagram costs more than the parsing (10k datagrams/s
/// would be 10k wake-ups); at high rates batches are full and this never happens. The socket
/// buffer holds far more than arrives meanwhile, and flushes are seconds apart.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(5);

/// At shutdown, the longest spent reading what is already queued.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Options of one receive thread.
pub struct UdpWorker {
    /// The bound socket.
    pub socket: UdpReceiver,
    /// Where values go.
    pub shard: SharedShard,
    /// Self-metrics.
    pub counters: Arc<ListenerCounters>,
    /// Admission: asked for each datagram before it is parsed.
    pub guard: Arc<Guard>,
    /// This address's place in the guard.
    pub listener: Arc<ListenerGuard>,
    /// Etsy `keyNameSanitize`.
    pub sanitize: bool,
    /// Slot size: longer datagrams are truncated and counted.
    pub max_datagram: usize,
    /// Set to stop.
    pub shutdown: Arc<AtomicBool>,
}

impl UdpWorker {
    /// Starts the thread.
    pub fn spawn(self, name: String) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new().name(name).spawn(move || self.run())
    }

    fn run(self) {
        let mut batch = RecvBatch::new(BATCH, self.max_datagram);
        let mut parser = Parser::new(self.sanitize);
        let fd = self.socket.fd();
        let mut drain_until = None;
        loop {
            let n = if let Some(deadline) = drain_until {
                // Shutting down: take what the kernel already queued for us (bounded in time,
                // in case senders keep sending), then stop.
                match batch.recv_queued(fd) {
                    Ok(n) if n > 0 && Instant::now() < deadline => n,
                    _ => return,
                }
            } else if self.shutdown.load(Ordering::Relaxed) {
                drain_until = Some(Instant::now() + DRAIN_LIMIT);
                continue;
            } else {
                match batch.recv(fd) {
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {
                        continue
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "statsd udp receive failed");
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        continue;
                    }
                }
            };
            let mut bytes = 0;
            let mut oversize = 0;
            let mut lines = PacketCounts::default();
            let mut dropped = [0u64; Reason::ALL.len()];
            let policy = self.guard.policy();
            // One clock read a batch, for the guard's limits and for ordering gauge sets.
            let now = self.guard.now_ns();
            let mut shard = self.shard.lock();
            shard.clock = now;
            shard.packets += n as u64;
            for i in 0..n {
                let (data, truncated) = batch.datagram(i);
                bytes += data.len() as u64;
                if let Some(source) = batch.source(i) {
                    if let Err((reason, messages)) =
                        self.listener.admit_datagram(&policy, source.ip(), || count_lines(data), now)
                    {
                        dropped[reason as usize] += messages;
                        continue;
                    }
                }
                let data = if truncated {
                    // Keep the complete lines; the cut one is lost and counted.
                    oversize += 1;
                    complete_lines(data)
                } else {
                    data
                };
                ingest(&mut parser, &mut shard, data, &mut lines);
            }
            drop(policy);
            // Published before the shard is released: whoever sees this batch's values (a
            // flush, the console) also sees its counts.
            for reason in Reason::ALL {
                self.counters.add_dropped(reason, dropped[reason as usize]);
            }
            self.listener.add_port_dropped(dropped[Reason::PortLimit as usize]);
            publish(&self.counters, lines);
            ListenerCounters::add(&self.counters.packets, n as u64);
            ListenerCounters::add(&self.counters.bytes, bytes);
            ListenerCounters::add(&self.counters.oversize, oversize);
            drop(shard);
            if n < BATCH / 4 && drain_until.is_none() {
                std::thread::sleep(COALESCE);
            }
        }
    }
}
