//! A Carbon stand-in that sums the flushed counts of the load's counters, and the raw
//! `recvmmsg` sink that only counts datagrams (the physical limit of the machine).

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use floodgate::sys::{RecvBatch, UdpReceiver};

/// Sums `PREFIX... value ts` lines of plaintext payloads.
pub struct CarbonStandIn {
    /// Where it listens.
    pub port: u16,
    total: Arc<Total>,
}

#[derive(Default)]
struct Total {
    sum: std::sync::Mutex<f64>,
}

impl CarbonStandIn {
    /// Listens on a free loopback port; sums values of names starting with `prefix`.
    pub fn start(prefix: &'static str) -> CarbonStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind carbon stand-in");
        let port = listener.local_addr().unwrap().port();
        let total = Arc::new(Total::default());
        let t = total.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let t = t.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    if stream.read_to_end(&mut buf).is_err() {
                        return;
                    }
                    let mut sum = 0.0;
                    for line in buf.split(|b| *b == b'\n') {
                        if !line.starts_with(prefix.as_bytes()) {
                            continue;
                        }
                        let mut parts = line.rsplitn(3, |b| *b == b' ');
                        let _ts = parts.next();
                        if let Some(v) = parts.next().and_then(|v| std::str::from_utf8(v).ok()?.parse::<f64>().ok()) {
                            sum += v;
                        }
                    }
                    *t.sum.lock().unwrap() += sum;
                });
            }
        });
        CarbonStandIn { port, total }
    }

    /// Sum so far.
    pub fn sum(&self) -> f64 {
        *self.total.sum.lock().unwrap()
    }
}

/// A receive-and-count sink on its own thread.
pub struct RawSink {
    /// Bound address.
    pub addr: SocketAddr,
    datagrams: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawSink {
    /// Binds a free port with a 32 MiB buffer.
    pub fn start() -> RawSink {
        let socket = UdpReceiver::bind("127.0.0.1:0".parse().unwrap(), 32 << 20, Duration::from_millis(100)).unwrap();
        let addr = socket.local_addr().unwrap();
        let datagrams = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, s) = (datagrams.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut batch = RecvBatch::new(64, 2048);
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = batch.recv(socket.fd()) {
                    d.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        RawSink { addr, datagrams, stop, thread: Some(thread) }
    }

    /// Stops and returns the datagram count.
    pub fn finish(mut self) -> u64 {
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.datagrams.load(Ordering::Relaxed)
    }
}
