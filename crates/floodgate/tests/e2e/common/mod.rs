//! Helpers shared by the integration tests: start the real `floodgate` binary on free
//! loopback ports, wait for `/healthz`, capture what it writes to Graphite, and talk to it.
#![allow(dead_code)]

pub mod cgroup;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A paced UDP sender on a thread of its own: `payload` as one datagram to `to`, `rate` a
/// second (0: as fast as the socket takes them), from `sockets` sockets bound to `source`
/// used in turn (one address on several sockets, as a busy host sends, lands on several
/// `SO_REUSEPORT` receive sockets). `sent` counts what the kernel took: a datagram refused
/// with EWOULDBLOCK or ENOBUFS is not counted, so accounting stays exact.
pub struct Sender {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sender {
    pub fn start(source: &str, to: SocketAddr, payload: impl Into<Vec<u8>>, rate: u64, sockets: usize) -> Sender {
        use std::sync::atomic::Ordering::Relaxed;
        let socks: Vec<UdpSocket> = (0..sockets.max(1)).map(|_| UdpSocket::bind((source, 0)).unwrap()).collect();
        let payload = payload.into();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stopping, count) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut n = 0u64;
            while !stopping.load(Relaxed) {
                let due = if rate == 0 { n + 256 } else { (start.elapsed().as_secs_f64() * rate as f64) as u64 };
                while n < due {
                    match socks[n as usize % socks.len()].send_to(&payload, to) {
                        Ok(_) => {
                            n += 1;
                            count.store(n, Relaxed);
                        }
                        // The local queue is full: not sent, not counted; try again later.
                        Err(e)
                            if matches!(e.kind(), std::io::ErrorKind::WouldBlock) || e.raw_os_error() == Some(105) =>
                        {
                            break
                        }
                        Err(e) => panic!("send to {to}: {e}"),
                    }
                }
                if rate != 0 {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
        });
        Sender { stop, sent, thread: Some(thread) }
    }

    /// Datagrams sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `more` datagrams more than now have been sent (the traffic went on).
    pub fn wait_more(&self, more: u64) {
        let target = self.sent() + more;
        wait_for(&format!("{more} more datagrams sent"), Duration::from_secs(60), || {
            (self.sent() >= target).then_some(())
        });
    }

    /// Stops; returns how many were sent.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.sent()
    }

    fn halt(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() && !std::thread::panicking() {
                panic!("the sender thread panicked");
            }
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A port free for both TCP and UDP on 127.0.0.1, chosen below the kernel's ephemeral range
/// (32768 and up): the client sockets and outgoing connections of tests running in parallel
/// take ephemeral ports, and one of them could otherwise grab a listener's port between this
/// check and floodgate's bind.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // Nothing is bound on a port between this check and the floodgate binding it, so a port is
    // handed out once: never twice in this process (a config's statsd, admin and http ports
    // must differ), and not to two test processes within ten minutes (a reservation file).
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let reservations = std::env::temp_dir().join("floodgate-test-ports");
    let _ = std::fs::create_dir_all(&reservations);
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&port) || !reserve(&reservations.join(port.to_string())) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// Takes the reservation file `path` unless another process took it in the last ten minutes.
fn reserve(path: &Path) -> bool {
    let fresh = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < Duration::from_secs(600)))
    };
    match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(_) => true,
        Err(_) if fresh(path) => false,
        // A stale reservation from an earlier run: renew it (its modification time is now).
        Err(_) => std::fs::write(path, b"").is_ok(),
    }
}

/// The ports one test's floodgate listens on: every listener gets a port of its own, since
/// many floodgates run at once on one machine and the defaults (8125, 8126, 9318, 5514) would
/// clash. Nothing else about the product's defaults is changed by the harness.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub statsd: u16,
    pub admin: u16,
    pub http: u16,
    pub syslog: u16,
}

impl Ports {
    pub fn free() -> Ports {
        Ports { statsd: free_port(), admin: free_port(), http: free_port(), syslog: free_port() }
    }
}

/// The guard's UDP rates off, for a test that sends more than the default 3,000 lines/s from
/// one address (a busy host's own applications into its agent do) and is not about the guard;
/// each test that uses it says so. The other limits stay the defaults.
pub const BULK_UDP: &str = "[limits]\nudp_per_source = 0\nudp_per_port = 0\n";

/// Adds `line` to the TOML `section` of `text` (creating the section) unless the section
/// already sets `key`.
fn set_default_key(text: &mut String, section: &str, key: &str, line: &str) {
    let header = format!("[{section}]\n");
    match text.find(&header) {
        Some(at) => {
            let body_start = at + header.len();
            let body_end = text[body_start..].find("\n[").map_or(text.len(), |i| body_start + i + 1);
            let sets_key = text[body_start..body_end].lines().any(|l| {
                l.split('=').next().is_some_and(|k| k.trim() == key)
                    && l.contains('=')
                    && !l.trim_start().starts_with('#')
            });
            if !sets_key {
                text.insert_str(body_start, &format!("{line}\n"));
            }
        }
        None => text.push_str(&format!("\n{header}{line}\n")),
    }
}

/// A test's config: the product's defaults, every listener on a port of its own (see
/// [`Ports`]), plus what the test adds: `statsd_extra` inside `[statsd]`, `sections` after.
/// A test's own `udp =`/`tcp =` (StatsD or syslog) and `listen =` replace the harness's.
pub fn config_text(ports: Ports, statsd_extra: &str, sections: &str) -> String {
    let mut text = format!("[statsd]\n{statsd_extra}\n\n{sections}\n");
    let local = |port: u16| format!("[\"127.0.0.1:{port}\"]");
    set_default_key(&mut text, "statsd", "udp", &format!("udp = {}", local(ports.statsd)));
    set_default_key(&mut text, "statsd", "tcp", &format!("tcp = {}", local(ports.statsd)));
    set_default_key(&mut text, "syslog", "udp", &format!("udp = {}", local(ports.syslog)));
    set_default_key(&mut text, "syslog", "tcp", &format!("tcp = {}", local(ports.syslog)));
    set_default_key(&mut text, "admin", "listen", &format!("listen = \"127.0.0.1:{}\"", ports.admin));
    set_default_key(&mut text, "http", "listen", &format!("listen = \"127.0.0.1:{}\"", ports.http));
    text
}

/// A running floodgate.
pub struct Floodgate {
    pub child: Child,
    pub statsd: u16,
    pub admin: u16,
    pub http: u16,
    pub syslog: u16,
    pub dir: tempfile::TempDir,
    pub stderr_path: PathBuf,
    /// One sending socket: a fixed source keeps every datagram on the same receive thread,
    /// in order (the kernel spreads sources over the `SO_REUSEPORT` sockets).
    sender: UdpSocket,
}

impl Floodgate {
    /// Starts floodgate with `extra` appended to a config that sets its ports (StatsD on UDP
    /// and TCP, console, HTTP); `extra` may add keys to `[statsd]` (it is placed inside it)
    /// and further sections.
    pub fn start(statsd_extra: &str, sections: &str) -> Floodgate {
        Floodgate::start_as(&[], statsd_extra, sections)
    }

    /// [`Floodgate::start`] through a wrapper command (`setpriv ...` to run it unprivileged);
    /// its folder and config are then open to every user.
    pub fn start_as(wrapper: &[&str], statsd_extra: &str, sections: &str) -> Floodgate {
        let ports = Ports::free();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("floodgate.toml");
        std::fs::write(&path, config_text(ports, statsd_extra, sections)).unwrap();
        let stderr_path = dir.path().join("stderr.log");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_floodgate"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_floodgate")),
        };
        // Run in its own folder: relative defaults (the agent's forward journal, the syslog
        // file) stay apart from other tests' floodgates.
        let child = command
            .current_dir(dir.path())
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("start floodgate");
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let Ports { statsd, admin, http, syslog } = ports;
        let mut fg = Floodgate { child, statsd, admin, http, syslog, dir, stderr_path, sender };
        fg.wait_ready();
        fg
    }

    /// Rewrites the config file (same ports) and sends SIGHUP.
    pub fn reload(&self, statsd_extra: &str, sections: &str) {
        self.rewrite_config(statsd_extra, sections);
        self.signal("HUP");
    }

    /// Rewrites the config file (same ports) without telling floodgate (for `POST /-/reload`).
    pub fn rewrite_config(&self, statsd_extra: &str, sections: &str) {
        let ports = Ports { statsd: self.statsd, admin: self.admin, http: self.http, syslog: self.syslog };
        let text = config_text(ports, statsd_extra, sections);
        std::fs::write(self.dir.path().join("floodgate.toml"), text).unwrap();
    }

    /// Polls `/healthz` until it answers 200 (the readiness signal), or panics with the log.
    pub fn wait_ready(&mut self) {
        wait_ready(&mut self.child, ("127.0.0.1", self.http), &self.stderr_path);
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn udp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.statsd))
    }

    /// Sends one datagram (always from the same socket, so datagrams stay in order).
    pub fn send_udp(&self, data: &[u8]) {
        self.sender.send_to(data, self.udp_addr()).unwrap();
    }

    /// Runs console commands, returns everything the console wrote back.
    pub fn admin(&self, commands: &str) -> String {
        console(("127.0.0.1", self.admin), commands)
    }

    /// Waits until the StatsD counter `name` (no tags) has counted `value` since start: the
    /// input has been received and parsed. Reads the cumulative `NAME_total` on `/metrics`
    /// after the console's `counters` has merged what the receive threads hold, so a flush
    /// in between (which resets the console's per-interval value) cannot hide it.
    pub fn wait_counter(&self, name: &str, value: &str) {
        let mut prom: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }).collect();
        if prom.starts_with(|c: char| c.is_ascii_digit()) {
            prom.insert(0, '_');
        }
        prom.push_str("_total");
        let want: f64 = value.parse().expect("a number");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let _ = self.admin("counters\n");
            let body = http_get(self.http, "/metrics").map(|(_, b)| b).unwrap_or_default();
            let got = metric(&body, &prom, &[]);
            if got == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "counter {name} never reached {value} ({prom} = {got:?})");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Sends a signal (`"TERM"`, `"HUP"`, ...) without waiting for anything.
    pub fn signal(&self, name: &str) {
        signal(&self.child, name);
    }

    /// Waits (up to 30 s) for the process to exit; returns the exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        wait_exit(&mut self.child, &self.stderr_path)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL: no flush, no goodbye (a crash).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts again with the same config file and ports (after [`kill`](Self::kill)).
    pub fn respawn(&mut self) {
        self.child = Command::new(env!("CARGO_BIN_EXE_floodgate"))
            .current_dir(self.dir.path())
            .arg("--config")
            .arg(self.dir.path().join("floodgate.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().append(true).open(&self.stderr_path).unwrap())
            .spawn()
            .expect("restart floodgate");
        self.wait_ready();
    }
}

impl Drop for Floodgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// floodgate run by hand on `config`, expected to refuse to start: its exit code and stderr
/// (`None` and the log so far if it is still running after 30 s: it started).
pub fn run_to_exit(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = (dir.path().join("floodgate.toml"), dir.path().join("stderr.log"));
    std::fs::write(&path, config).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .args(["run", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, std::fs::read_to_string(&log).unwrap_or_default())
}

/// Waits (30 s) until GET `http`/healthz answers 200; panics with the log at `stderr` when
/// `child` exits first or it never does.
pub fn wait_ready(child: &mut Child, http: impl ToSocketAddrs + Copy, stderr: &Path) {
    let log = || std::fs::read_to_string(stderr).unwrap_or_default();
    wait_until("floodgate ready (/healthz 200)", Duration::from_secs(30), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("floodgate exited with {status}: {}", log());
        }
        match http_get_at(http, "/healthz") {
            Ok((200, _)) => Ok(()),
            _ => Err(log()),
        }
    });
}

/// A process (floodgate started by hand: in a namespace, with flags) killed when dropped, its
/// stderr in a file.
pub struct Running {
    pub child: Child,
    pub stderr: PathBuf,
}

impl Running {
    /// Starts `command` with stderr to the file `stderr` and waits until GET
    /// `http`/healthz answers 200.
    pub fn ready(mut command: Command, http: impl ToSocketAddrs + Copy, stderr: &Path) -> Running {
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(stderr).unwrap())
            .spawn()
            .expect("start floodgate");
        let mut running = Running { child, stderr: stderr.to_path_buf() };
        wait_ready(&mut running.child, http, stderr);
        running
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, then waits for exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        signal(&self.child, "TERM");
        wait_exit(&mut self.child, &self.stderr)
    }
}

/// A peer server a test started (redis-server, nats-server, HAProxy), killed when the test
/// ends, passed or not.
pub struct Peer(pub Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether every thread of `pid` is stopped (a SIGSTOP taken: the state after the command
/// name's closing parenthesis in each `/proc/PID/task/*/stat` is `T`).
pub fn all_threads_stopped(pid: u32) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks.flatten().all(|t| {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
    })
}

/// Sends a signal (`"TERM"`, `"STOP"`, ...) to `child` without waiting for anything.
pub fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().unwrap();
    assert!(ok.success(), "kill -{name}");
}

/// Waits (up to 30 s) for `child` to exit; returns the exit code, or panics with its log.
pub fn wait_exit(child: &mut Child, stderr: &Path) -> Option<i32> {
    wait_until("exit", Duration::from_secs(30), || match child.try_wait() {
        Ok(Some(status)) => Ok(status.code()),
        _ => Err(std::fs::read_to_string(stderr).unwrap_or_default()),
    })
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `commands` to the management console at `addr`, then `quit`; returns the answer.
pub fn console(addr: impl ToSocketAddrs, commands: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    // A floodgate that cannot accept (out of descriptors) leaves the connection in its
    // backlog: fail, do not hang.
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(commands.as_bytes()).unwrap();
    s.write_all(b"quit\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap_or_else(|e| panic!("the console did not answer: {e}"));
    out
}

/// One counter from the console's `counters` at `addr` (merged live), if it is there.
pub fn console_counter(addr: impl ToSocketAddrs, name: &str) -> Option<f64> {
    let out = console(addr, "counters\n");
    let prefix = format!("'{name}': ");
    out.lines().find_map(|l| l.trim().strip_prefix(&prefix)).map(|v| v.trim_end_matches(',').parse().unwrap())
}

/// A minimal HTTP/1.0 GET to 127.0.0.1:`port`: status and body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_get_at(("127.0.0.1", port), path)
}

/// A minimal HTTP/1.0 GET to any address (a namespace's): status and body.
pub fn http_get_at(addr: impl ToSocketAddrs, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let host = s.peer_addr()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// A minimal HTTP/1.0 POST with extra header lines and a body: status and body.
pub fn http_post(port: u16, path: &str, headers: &[&str], body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n", body.len());
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// Polls `probe` until it returns `Some`, for at most `timeout`; panics with `what` when it
/// never does. The one waiting loop of the tests: each waits on a signal (a metric, a file, a
/// counter), never on a fixed sleep.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    wait_until(what, timeout, || probe().ok_or_else(String::new))
}

/// [`wait_for`] with a probe that says what it saw when not yet satisfied (`Err`); the last
/// of those is in the panic message.
pub fn wait_until<T>(what: &str, timeout: Duration, probe: impl FnMut() -> Result<T, String>) -> T {
    wait_until_every(what, timeout, Duration::from_millis(20), probe)
}

/// [`wait_until`], probing every `every`: for a probe that opens a connection to floodgate and
/// may need many tries, so it stays under the listener's per-source connection limit.
pub fn wait_until_every<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(seen) => assert!(Instant::now() < deadline, "{what}: not within {timeout:?}\n{seen}"),
        }
        std::thread::sleep(every);
    }
}

/// The value of a sample that must exist: like [`metric`], but a series that is not exported
/// fails the test (naming the samples of that family that are there) instead of reading as 0,
/// so a check such as "failures == 0" cannot pass because the counter is missing.
pub fn sample(body: &str, name: &str, labels: &[&str]) -> f64 {
    metric(body, name, labels).unwrap_or_else(|| {
        let family: Vec<&str> = body.lines().filter(|l| l.starts_with(name)).take(20).collect();
        panic!("{name}{labels:?} is not exported; the family has:\n{}", family.join("\n"))
    })
}

impl Floodgate {
    /// floodgate's own metrics (`/metrics?only=floodgate`).
    pub fn self_metrics(&self) -> String {
        http_get(self.http, "/metrics?only=floodgate").expect("GET /metrics").1
    }

    /// A self-metric that must exist (see [`sample`]).
    pub fn sample(&self, name: &str, labels: &[&str]) -> f64 {
        sample(&self.self_metrics(), name, labels)
    }

    /// Waits until the self-metric exists and satisfies `check`; returns its value.
    pub fn wait_sample(&self, name: &str, labels: &[&str], check: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let last = metric(&self.self_metrics(), name, labels);
            if let Some(v) = last.filter(|v| check(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} never satisfied the check (last: {last:?})\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The value of the first sample in a `/metrics` body named `name` whose labels include every
/// `labels` entry (`key="value"` text), or `None`.
pub fn metric(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (sample, label_set) = series.split_once('{').unwrap_or((series, ""));
        (sample == name && labels.iter().all(|want| label_set.contains(want))).then(|| value.parse().ok())?
    })
}

/// Graphite (name, value) pairs, owned, for [`Capture::wait_seen`].
pub fn owned(want: &[(&str, &str)]) -> Vec<(String, String)> {
    want.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

/// A TCP server that records each connection's bytes as one payload (how Etsy statsd and
/// floodgate deliver a flush to Carbon). A test double for Carbon's line receiver, used to
/// compare outputs byte for byte; the real Carbon is exercised in `carbon.rs`.
pub struct Capture {
    pub port: u16,
    rx: mpsc::Receiver<(Instant, Vec<u8>)>,
    last_arrival: std::cell::Cell<Option<Instant>>,
}

impl Capture {
    pub fn start() -> Capture {
        Capture::start_on("127.0.0.1")
    }

    /// A capture listening on `ip` (a veth address a namespace's floodgate can reach).
    pub fn start_on(ip: &str) -> Capture {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let opened = Instant::now();
                    if stream.read_to_end(&mut buf).is_ok() {
                        let _ = tx.send((opened, buf));
                    }
                });
            }
        });
        Capture { port, rx, last_arrival: std::cell::Cell::new(None) }
    }

    /// The next payload, waiting up to `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Vec<u8>> {
        let (at, p) = self.rx.recv_timeout(timeout).ok()?;
        self.last_arrival.set(Some(at));
        Some(p)
    }

    /// When the connection of the payload last returned was opened.
    pub fn last_arrival(&self) -> Option<Instant> {
        self.last_arrival.get()
    }

    /// Waits for a payload satisfying `pred` (earlier ones are discarded).
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((at, p)) if pred(&p) => {
                    self.last_arrival.set(Some(at));
                    return p;
                }
                Ok(_) => continue,
                Err(_) => panic!("no matching payload within {timeout:?}"),
            }
        }
    }
}

impl Capture {
    /// Waits until every `(name, value)` has appeared in some payload (values for one flush
    /// may be split over several when a flush falls between sends). Panics with what is missing.
    pub fn wait_seen(&self, timeout: Duration, want: &[(String, String)]) {
        let deadline = Instant::now() + timeout;
        let mut missing: Vec<&(String, String)> = want.iter().collect();
        let mut last = String::new();
        while !missing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(p) = self.next(left) else {
                panic!("never seen: {missing:?}\nlast payload:\n{last}");
            };
            missing.retain(|(n, v)| !has(&p, n, v));
            last = String::from_utf8_lossy(&p).into_owned();
        }
    }
}

/// Accepts connections on `listener` and reads each to its end as one payload, until `done`
/// says the payloads so far are enough; fails after `timeout` (never hangs).
pub fn accept_payloads(listener: &TcpListener, timeout: Duration, done: impl Fn(&[Vec<u8>]) -> bool) -> Vec<Vec<u8>> {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + timeout;
    let mut payloads = Vec::new();
    while !done(&payloads) {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).unwrap();
                payloads.push(buf);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "only {} payloads within {timeout:?}", payloads.len());
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    payloads
}

/// Plaintext payload lines as (name, value, timestamp).
pub fn parse_plaintext(payload: &[u8]) -> Vec<(String, String, String)> {
    String::from_utf8_lossy(payload)
        .lines()
        .map(|l| {
            let mut p = l.rsplitn(3, ' ');
            let ts = p.next().unwrap_or_default().to_string();
            let value = p.next().unwrap_or_default().to_string();
            let name = p.next().unwrap_or_default().to_string();
            (name, value, ts)
        })
        .collect()
}

/// Pickle payload (Etsy's protocol-0 list of `(name, (ts, value))`) as (name, value, timestamp).
pub fn parse_pickle(payload: &[u8]) -> Vec<(String, String, String)> {
    assert!(payload.len() >= 4, "short pickle payload");
    let len = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
    assert_eq!(len, payload.len() - 4, "pickle length prefix");
    let body = String::from_utf8_lossy(&payload[4..]).into_owned();
    assert!(body.starts_with("(l") && body.ends_with('.'), "pickle framing: {body:.60}");
    body[2..body.len() - 1]
        .split("tta")
        .filter(|s| !s.is_empty())
        .map(|item| {
            // (S'name'\n(L123L\nS'value'\n
            let rest = item.strip_prefix("(S'").expect("item start");
            let (name, rest) = rest.split_once("'\n(L").expect("name");
            let (ts, rest) = rest.split_once("L\nS'").expect("ts");
            let value = rest.strip_suffix("'\n").expect("value");
            (name.to_string(), value.to_string(), ts.to_string())
        })
        .collect()
}

/// The value of `name` in parsed lines.
pub fn value_of<'a>(lines: &'a [(String, String, String)], name: &str) -> Option<&'a str> {
    lines.iter().find(|(n, _, _)| n == name).map(|(_, v, _)| v.as_str())
}

/// True when the plaintext payload has `name value`.
pub fn has(payload: &[u8], name: &str, value: &str) -> bool {
    value_of(&parse_plaintext(payload), name) == Some(value)
}

/// Path of a tool the README test command installs; panics with a hint when missing.
pub fn require_tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` not found: run ./scripts/test.sh, which installs the tools the tests use");
}

/// `floodgate check --config <path>`: its exit status and output.
pub fn floodgate_check(config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_floodgate")).args(["check", "--config"]).arg(config).output().unwrap()
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Debian's carbon-cache on free loopback ports, storing 1-second points in a temporary folder.
pub struct Carbon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The loopback address it listens on (a cluster's caches each have their own, so that
    /// Carbon's ring, keyed by host, tells them apart).
    pub ip: String,
    pub line_port: u16,
    pub pickle_port: u16,
    /// Its cache query port (graphite-web's `CARBONLINK_HOSTS`).
    pub query_port: u16,
}

impl Drop for Carbon {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Carbon {
    pub fn start() -> Carbon {
        Carbon::start_on("127.0.0.1")
    }

    /// A carbon-cache listening on `ip` (any 127.0.0.0/8 address).
    pub fn start_on(ip: &str) -> Carbon {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let (line_port, pickle_port, query_port) = (free_port(), free_port(), free_port());
        std::fs::write(
            dir.path().join("carbon.conf"),
            format!(
                "[cache]\nSTORAGE_DIR = {d}/storage\nLOCAL_DATA_DIR = {d}/storage/whisper\nWHITELISTS_DIR = {d}/lists\n\
                 CONF_DIR = {d}\nLOG_DIR = {d}/log\nPID_DIR = {d}\nUSER =\nMAX_CACHE_SIZE = inf\n\
                 MAX_UPDATES_PER_SECOND = inf\nMAX_CREATES_PER_MINUTE = inf\n\
                 LINE_RECEIVER_INTERFACE = {ip}\nLINE_RECEIVER_PORT = {line_port}\n\
                 PICKLE_RECEIVER_INTERFACE = {ip}\nPICKLE_RECEIVER_PORT = {pickle_port}\n\
                 CACHE_QUERY_INTERFACE = {ip}\nCACHE_QUERY_PORT = {query_port}\nENABLE_UDP_LISTENER = False\n"
            ),
        )
        .unwrap();
        // One-second steps: with Carbon's default 60 s, several flushes a minute overwrite each other.
        std::fs::write(dir.path().join("storage-schemas.conf"), "[all]\npattern = .*\nretentions = 1s:1h\n").unwrap();
        let mut carbon = Carbon { child: None, dir, ip: ip.to_string(), line_port, pickle_port, query_port };
        carbon.restart();
        carbon
    }

    /// Starts it again (same address, ports and storage) after [`Carbon::stop`].
    pub fn restart(&mut self) {
        let d = self.dir.path().display().to_string();
        // carbon-cache refuses to start while its pid file names a process; a killed one leaves it.
        let _ = std::fs::remove_file(self.dir.path().join("carbon-cache-a.pid"));
        let child = Command::new(require_tool("carbon-cache"))
            .arg(format!("--config={d}/carbon.conf"))
            .args(["--nodaemon", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start carbon-cache");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect((self.ip.as_str(), self.pickle_port)).is_err()
            || TcpStream::connect((self.ip.as_str(), self.line_port)).is_err()
        {
            assert!(Instant::now() < deadline, "carbon-cache did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Points its cache holds for `metrics`, not yet written to Whisper (asked on its cache
    /// query port, as graphite-web does: `cache-query-bulk`, length-prefixed pickles).
    pub fn cached_points(&self, metrics: &[String]) -> usize {
        let script = "import pickle, socket, struct, sys\n\
            s = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n\
            req = pickle.dumps({'type': 'cache-query-bulk', 'metrics': sys.argv[3:]}, protocol=2)\n\
            s.sendall(struct.pack('!L', len(req)) + req)\n\
            def read(n):\n\
            \x20   b = b''\n\
            \x20   while len(b) < n:\n\
            \x20       c = s.recv(n - len(b))\n\
            \x20       assert c, 'carbon closed the connection'\n\
            \x20       b += c\n\
            \x20   return b\n\
            size = struct.unpack('!L', read(4))[0]\n\
            res = pickle.loads(read(size))\n\
            print(sum(len(p) for p in res['datapointsByMetric'].values()))\n";
        let out = Command::new(require_tool("python3"))
            .args(["-c", script, &self.ip, &self.query_port.to_string()])
            .args(metrics)
            .output()
            .unwrap();
        assert!(out.status.success(), "cache query: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// TCP connections to its line and pickle ports, in any state but `TIME-WAIT` (closed on
    /// both sides: it read everything sent on them), as `ss` lists them.
    pub fn open_connections(&self) -> Vec<String> {
        let out = Command::new(require_tool("ss")).args(["-Htan"]).output().unwrap();
        let ours = [format!("{}:{}", self.ip, self.line_port), format!("{}:{}", self.ip, self.pickle_port)];
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("LISTEN") && !l.starts_with("TIME-WAIT"))
            .filter(|l| l.split_whitespace().any(|field| ours.iter().any(|o| field == o)))
            .map(str::to_string)
            .collect()
    }

    /// Kills it: what it has not written to Whisper yet is lost, as in a crash.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every metric it has a Whisper file for, by its dotted name.
    pub fn metrics(&self) -> Vec<String> {
        fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, &format!("{prefix}{name}."), out);
                } else if let Some(stem) = name.strip_suffix(".wsp") {
                    out.push(format!("{prefix}{stem}"));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.path().join("storage/whisper"), "", &mut out);
        out.sort();
        out
    }

    pub fn whisper(&self, metric: &str) -> PathBuf {
        let mut p = self.dir.path().join("storage/whisper");
        for part in metric.split('.') {
            p.push(part);
        }
        p.set_extension("wsp");
        p
    }

    /// Non-empty points of a metric over the last 10 minutes.
    pub fn fetch(&self, metric: &str) -> Vec<f64> {
        let path = self.whisper(metric);
        if !Path::new(&path).exists() {
            return Vec::new();
        }
        let out = Command::new(require_tool("whisper-fetch"))
            .arg("--from")
            .arg((unix_now() - 600).to_string())
            .arg(&path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .collect()
    }

    /// Polls until `check` holds for the metric's points (Carbon writes asynchronously).
    pub fn wait(&self, metric: &str, check: impl Fn(&[f64]) -> bool) -> Vec<f64> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let points = self.fetch(metric);
            if check(&points) {
                return points;
            }
            assert!(Instant::now() < deadline, "{metric}: points {points:?} never satisfied the check");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A test certificate authority writing PEM files into a directory.
pub struct Pki {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    dir: std::path::PathBuf,
}

impl Pki {
    pub fn new(dir: &std::path::Path, name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem()).unwrap();
        Pki { issuer: rcgen::Issuer::new(params, key), dir: dir.to_path_buf() }
    }

    /// Writes `<file>.pem` and `<file>.key` for `dns_name`; returns their paths.
    pub fn issue(&self, file: &str, dns_name: &str) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec![dns_name.to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, dns_name);
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }
}

/// A network namespace joined to this one by a veth pair: `host` here, `inside` there.
pub struct Namespace {
    pub name: String,
    pub veth: String,
    pub host: String,
    pub inside: String,
}

pub fn ip(args: &[&str]) {
    let out = Command::new(require_tool("ip")).args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Namespace {
    /// A namespace named after `what` and this process; its /30 differs per process and `what`.
    pub fn create(what: &str) -> Namespace {
        let id = std::process::id();
        let salt = what.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        let subnet = format!("10.{}.{}", 200 + (id.wrapping_add(salt) >> 8) % 50, id.wrapping_add(salt) % 256);
        let ns = Namespace {
            name: format!("fg-{what}-{id}"),
            veth: format!("fg{}{id}", &what[..1]),
            host: format!("{subnet}.1"),
            inside: format!("{subnet}.2"),
        };
        let peer = format!("{}p", ns.veth);
        ip(&["netns", "add", &ns.name]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&["link", "add", &ns.veth, "type", "veth", "peer", "name", &peer, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{}/30", ns.host), "dev", &ns.veth]);
        ip(&["link", "set", &ns.veth, "up"]);
        ip(&["-n", &ns.name, "addr", "add", &format!("{}/30", ns.inside), "dev", &peer]);
        ip(&["-n", &ns.name, "link", "set", &peer, "up"]);
        ns
    }

    /// Runs `f` on a thread inside the namespace: the sockets it opens (and the threads it
    /// starts) are the namespace's, so a test reaches the namespace's own loopback.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let handle = std::fs::File::open(format!("/var/run/netns/{}", self.name)).expect("the namespace's handle");
        std::thread::scope(|s| {
            s.spawn(|| {
                floodgate::sys::enter_network_namespace(&handle).expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new(require_tool("ip"));
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.veth]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Floodgate with a StatsD TLS listener on a fresh self-signed certificate for `localhost`
/// (kept in floodgate's own temporary folder); `sections` as for [`Floodgate::start`].
pub fn start_with_tls(sections: &str) -> (Floodgate, u16, rcgen::CertifiedKey<rcgen::KeyPair>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls_port = free_port();
    let fg = Floodgate::start(
        &format!(
            "flush_interval = \"1h\"\ntls_listen = [\"127.0.0.1:{tls_port}\"]\ntls = {{ cert = \"{}\", key = \"{}\" }}",
            cert_path.display(),
            key_path.display()
        ),
        sections,
    );
    // The files are read at start; the folder may go.
    drop(dir);
    (fg, tls_port, cert)
}

/// A TLS client configuration (ring, TLS 1.2/1.3) trusting one certificate.
pub fn tls_client_trusting(cert: &rustls_pki_types::CertificateDer<'_>) -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone().into_owned()).unwrap();
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS client trusting the CA certificates in the PEM file `ca`, presenting the client
/// certificate chain and key (PEM files) when given.
pub fn tls_client(ca: impl AsRef<Path>, client: Option<(&str, &str)>) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca.as_ref()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    std::sync::Arc::new(match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                rustls_pki_types::CertificateDer::pem_file_iter(cert).unwrap().map(|c| c.unwrap()).collect(),
                rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// Whether a TLS handshake with `client` to 127.0.0.1:`port` for `server_name` completes.
pub fn tls_handshake_ok(port: u16, client: std::sync::Arc<rustls::ClientConfig>, server_name: &str) -> bool {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(client, name).unwrap();
    while conn.is_handshaking() {
        if conn.complete_io(&mut tcp).is_err() {
            return false;
        }
    }
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    true
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Request {
    pub head: String,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// An HTTP endpoint (a recording test double, for remote-write) answering the scripted statuses in turn (then 204), recording every request.
pub struct Endpoint {
    pub port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Request>>>,
}

impl Endpoint {
    pub fn start(script: Vec<u16>) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (log, script) = (requests.clone(), std::sync::Arc::new(std::sync::Mutex::new(script.into_iter())));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let (log, script) = (log.clone(), script.clone());
                std::thread::spawn(move || loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if s.read_exact(&mut byte).is_err() {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let request = Request { head, body: Vec::new() };
                    let len: usize = request.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                    let mut body = vec![0u8; len];
                    if s.read_exact(&mut body).is_err() {
                        return;
                    }
                    log.lock().unwrap().push(Request { body, ..request });
                    let status = script.lock().unwrap().next().unwrap_or(204);
                    let reason = if status == 204 { "No Content" } else { "Scripted" };
                    let answer = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n");
                    if s.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                });
            }
        });
        Endpoint { port, requests }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

/// `promtool check metrics` on an exposition body: fails the test with promtool's words (and
/// the body) when it finds a problem.
pub fn promtool_check(body: &str) {
    let mut child = Command::new(require_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a test's Prometheus does besides receiving remote-write.
#[derive(Default)]
pub struct PrometheusOptions {
    /// `--enable-feature=native-histograms` (it then scrapes the protobuf format).
    pub native_histograms: bool,
    /// Scrape these `/metrics` ports every second, as job `floodgate`.
    pub scrape: Vec<u16>,
    /// Listen here (else a free port).
    pub port: Option<u16>,
}

/// A PromQL expression as a query-string value.
pub fn promql(expr: &str) -> String {
    expr.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_.-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Debian's Prometheus with its remote-write receiver on, in a temporary folder; with `tls`
/// (a certificate for 127.0.0.1, its key) it serves https only.
pub struct Prometheus {
    child: std::process::Child,
    pub port: u16,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    pub fn start(tls: Option<&rcgen::CertifiedKey<rcgen::KeyPair>>, options: &PrometheusOptions) -> Prometheus {
        let bin = require_tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let mut yml = String::from("global:\n  scrape_interval: 1h\n");
        if !options.scrape.is_empty() {
            let targets: Vec<String> = options.scrape.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
            yml += &format!(
                "scrape_configs:\n- job_name: floodgate\n  scrape_interval: 1s\n  static_configs:\n  - targets: [{}]\n",
                targets.join(", ")
            );
        }
        std::fs::write(&config, yml).unwrap();
        let web = dir.path().join("web.yml");
        let client = tls.map(|cert| {
            let (c, k) = (dir.path().join("server.pem"), dir.path().join("server.key"));
            std::fs::write(&c, cert.cert.pem()).unwrap();
            std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
            std::fs::write(
                &web,
                format!("tls_server_config:\n  cert_file: {}\n  key_file: {}\n", c.display(), k.display()),
            )
            .unwrap();
            let mut roots = rustls::RootCertStore::empty();
            roots.add(cert.cert.der().clone()).unwrap();
            std::sync::Arc::new(
                rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
            )
        });
        let port = options.port.unwrap_or_else(free_port);
        let mut cmd = std::process::Command::new(bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-remote-write-receiver")
            .args(options.native_histograms.then_some("--enable-feature=native-histograms"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if client.is_some() {
            cmd.arg(format!("--web.config.file={}", web.display()));
        }
        let child = cmd.spawn().expect("start prometheus");
        let p = Prometheus { child, port, tls: client, _dir: dir };
        wait_for("prometheus ready", Duration::from_secs(60), || p.get("/-/ready").filter(|(c, _)| *c == 200));
        p
    }

    /// GET over http or https.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let Some(tls) = &self.tls else { return http_get(self.port, path).ok() };
        let tcp = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let conn = rustls::ClientConnection::new(tls.clone(), "127.0.0.1".try_into().ok()?).ok()?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        std::io::Write::write_all(&mut s, format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
        let mut resp = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut resp);
        let resp = String::from_utf8_lossy(&resp).into_owned();
        let code = resp.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
    }

    /// The value of an instant query's only result, if any.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let (_, body) = self.get(&format!("/api/v1/query?query={promql}"))?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}
