//! One server loop for every connection-oriented listener (StatsD and syslog over TCP, TLS
//! and Unix stream sockets, the aggregator port, the console, HTTP): accept, ask the guard (a
//! refused connection is reset before a byte is read or a handshake starts), TLS if
//! configured (with a deadline), then the listener's own handler in a task of its own, with
//! the connection counted while it lives.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::guard::{ConnectionPermit, ListenerGuard};
use crate::listener::Counters;
use crate::net::tls::SharedServerConfig;
use floodgate_guard::Reason;

/// A TLS client must finish its handshake within this (slow or silent clients hold a slot).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// At shutdown, the longest a connection goes on reading what its sender already sent.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// At shutdown, a pause this long from the sender ends its connection's drain.
pub const DRAIN_PAUSE: Duration = Duration::from_millis(100);

/// A byte stream: TCP, or TLS over it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An admitted connection, ready to read.
pub type Connection = Box<dyn Stream>;

/// Who is at the other end of an admitted connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its address (TCP, TLS).
    pub addr: Option<SocketAddr>,
    /// With a client certificate (mutual TLS): the name on it (its subject's common name, else
    /// its first DNS name), checked against the listener's `client_ca` by the handshake.
    pub identity: Option<String>,
    /// On a Unix stream socket: the process that connected, as the kernel tells it.
    pub credentials: Option<crate::sys::Credentials>,
    /// Its source's pacing (`[limits] tcp_per_source`), set once the guard admitted it.
    pub pacer: Option<crate::guard::Pacer>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.addr, self.credentials) {
            (Some(a), _) => write!(f, "{a}"),
            (None, Some(c)) => write!(f, "pid {} uid {}", c.pid, c.uid),
            (None, None) => f.write_str("?"),
        }
    }
}

/// A stream whose reads and writes may each wait at most `limit`: a peer that stops sending
/// (a half-sent request, a silent console session) or stops reading (a response nobody
/// collects) gets `TimedOut` instead of holding its descriptor and buffers for ever.
pub struct Stalled<S> {
    inner: S,
    limit: Duration,
    read_deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    write_deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Stalled<S> {
    /// `inner`, with each read and write bounded by `limit`.
    pub fn new(inner: S, limit: Duration) -> Stalled<S> {
        Stalled { inner, limit, read_deadline: None, write_deadline: None }
    }
}

/// Polls `deadline` (armed on the first wait) after `io` returned pending; clears it on progress.
fn stall_check<T>(
    io: std::task::Poll<std::io::Result<T>>,
    deadline: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    limit: Duration,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<std::io::Result<T>> {
    use std::task::Poll;
    match io {
        Poll::Pending => {
            let sleep = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    *deadline = None;
                    Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "peer stalled")))
                }
                Poll::Pending => Poll::Pending,
            }
        }
        done => {
            *deadline = None;
            done
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stalled<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        let io = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        stall_check(io, &mut this.read_deadline, this.limit, cx)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stalled<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let io = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        stall_check(io, &mut this.write_deadline, this.limit, cx)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        let io = std::pin::Pin::new(&mut this.inner).poll_flush(cx);
        stall_check(io, &mut this.write_deadline, this.limit, cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        let io = std::pin::Pin::new(&mut this.inner).poll_shutdown(cx);
        stall_check(io, &mut this.write_deadline, this.limit, cx)
    }
}

/// TCP keepalive on every accepted and dialled connection: a peer that vanished without a
/// FIN (power loss, a dropped route) is found within about two minutes instead of holding its
/// descriptor and buffers for hours.
pub fn keepalive(stream: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&ka);
}

/// What one read that does not wait found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadNow {
    /// Bytes read into the buffer.
    Data(usize),
    /// The peer closed the stream.
    Eof,
    /// The read failed (the next waiting read reports it again).
    Error,
    /// Nothing is there now.
    Pending,
}

/// One read polled once with a no-op waker: whatever the stream has now, without waiting.
/// The no-op waker is enough because the caller's next read awaits with its task's own.
pub fn read_now(conn: &mut Connection, buf: &mut [u8]) -> ReadNow {
    use std::task::{Context, Poll, Waker};
    let mut cx = Context::from_waker(Waker::noop());
    let mut read = tokio::io::ReadBuf::new(buf);
    match std::pin::Pin::new(&mut **conn).poll_read(&mut cx, &mut read) {
        Poll::Ready(Ok(())) if read.filled().is_empty() => ReadNow::Eof,
        Poll::Ready(Ok(())) => ReadNow::Data(read.filled().len()),
        Poll::Ready(Err(_)) => ReadNow::Error,
        Poll::Pending => ReadNow::Pending,
    }
}

/// Where a listener takes PROXY protocol headers from (`proxy_protocol = true`): a connection
/// from these addresses must start with one, and is then judged by the client it names; a
/// connection from anywhere else may not.
#[derive(Clone)]
pub struct ProxyProtocol {
    /// The balancers (`proxy_from`).
    pub from: Arc<floodgate_guard::AllowList>,
}

/// Accepts until the task is aborted; each admitted connection goes to `handle` (TLS-wrapped
/// when `tls` is set). `what` names the listener in logs. With `proxy`, a balancer's
/// connection is admitted by the client its header names, read (bounded, with a deadline)
/// before any TLS work.
pub async fn serve<H, F>(
    listener: TcpListener,
    guard: Arc<ListenerGuard>,
    counters: Arc<Counters>,
    tls: Option<SharedServerConfig>,
    proxy: Option<ProxyProtocol>,
    what: &'static str,
    handle: H,
) where
    H: Fn(Connection, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = std::io::Result<()>> + Send + 'static,
{
    loop {
        let (stream, peer, permit) = accept(&listener, &guard, &counters, proxy.as_ref()).await;
        // The handshake (and a balancer's header, read before the connection is admitted) is
        // the costly step: capped per listener before it starts.
        let handshake_permit = match (tls.is_some(), permit.is_none()) {
            (true, _) => Some(guard.admit_handshake()),
            (false, true) => Some(guard.admit_unnamed()),
            (false, false) => None,
        };
        let handshake_permit = match handshake_permit {
            Some(Err(reason)) => {
                counters.add_dropped(reason, 1);
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                continue;
            }
            Some(Ok(p)) => Some(p),
            None => None,
        };
        counters.connections.fetch_add(1, Relaxed);
        let (tls, handle, guard, proxied) = (tls.clone(), handle.clone(), guard.clone(), proxy.is_some());
        let count = counters.clone();
        let connect = async move {
            let local = stream.local_addr().map_or(peer.ip(), |a| a.ip());
            let (stream, client, permit) = match permit {
                // A balancer's: the header first, then the guard judges the client it names.
                None => {
                    let (stream, client) = read_proxy_header(stream, &count).await?;
                    let client = client.unwrap_or(peer);
                    match guard.admit_connection(client.ip(), local) {
                        Ok(permit) => (stream, client, permit),
                        Err(reason) => {
                            count.add_dropped(reason, 1);
                            return Err(std::io::Error::other(format!("{client} refused: {}", reason.as_str())));
                        }
                    }
                }
                Some(permit) => (Prefixed::new(stream, Vec::new(), proxied.then(|| count.clone())), peer, permit),
            };
            let (conn, identity) = handshake(stream, tls, &count).await?;
            drop(handshake_permit);
            Ok((conn, Peer { addr: Some(client), identity, credentials: None, pacer: None }, permit))
        };
        spawn_connection(counters.clone(), (what, peer.to_string()), connect, handle);
    }
}

/// Reads a balancer's PROXY header: at most [`floodgate_proxy::MAX_HEADER`] bytes, within the
/// handshake deadline. Returns the stream (what came after the header first) and the client;
/// a missing, malformed or slow header is counted and ends the connection.
async fn read_proxy_header(
    mut stream: TcpStream,
    counters: &Counters,
) -> std::io::Result<(Prefixed, Option<SocketAddr>)> {
    use floodgate_proxy::{Parsed, MAX_HEADER};
    use tokio::io::AsyncReadExt;
    let read = async {
        // In the task's own state: no allocation unless bytes follow the header.
        let mut buf = [0u8; MAX_HEADER];
        let mut have = 0;
        loop {
            match floodgate_proxy::parse(&buf[..have]) {
                Parsed::Header { len, client } => {
                    let rest = buf[len..have].to_vec();
                    return Ok((rest, client));
                }
                Parsed::Invalid(why) => return Err(why.as_str()),
                Parsed::Incomplete => {}
            }
            match stream.read(&mut buf[have..]).await {
                Ok(0) | Err(_) => return Err("closed before its header"),
                Ok(n) => have += n,
            }
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, read).await {
        Ok(Ok((rest, client))) => Ok((Prefixed::new(stream, rest, None), client)),
        Ok(Err(why)) => {
            counters.add_dropped(Reason::ProxyHeader, 1);
            Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("PROXY header: {why}")))
        }
        Err(_) => {
            counters.add_dropped(Reason::ProxyHeader, 1);
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "PROXY header not finished in time"))
        }
    }
}

/// A TCP stream with bytes already read from it in front (what followed a PROXY header).
/// With `refuse_header`, the connection is not a balancer's: if its first bytes are a PROXY
/// header it is refused (counted), since only `proxy_from` may name another client.
pub struct Prefixed {
    inner: TcpStream,
    head: Vec<u8>,
    at: usize,
    refuse_header: Option<Arc<Counters>>,
}

impl Prefixed {
    fn new(inner: TcpStream, head: Vec<u8>, refuse_header: Option<Arc<Counters>>) -> Prefixed {
        Prefixed { inner, head, at: 0, refuse_header }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.at);
            buf.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            return std::task::Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (std::task::Poll::Ready(Ok(())), Some(counters)) = (&result, &this.refuse_header) {
            let first = &buf.filled()[before..];
            if !first.is_empty() {
                let header = floodgate_proxy::looks_like_header(first) == Some(true);
                if header {
                    counters.add_dropped(Reason::ProxyHeader, 1);
                }
                this.refuse_header = None;
                if header {
                    return std::task::Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "a PROXY header from an address not in proxy_from",
                    )));
                }
            }
        }
        result
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Accepts on a Unix stream socket until the task is aborted; each connection the guard
/// admits (by the connecting process's uid, from `SO_PEERCRED`) goes to `handle`.
pub async fn serve_unix<H, F>(
    listener: tokio::net::UnixListener,
    guard: Arc<ListenerGuard>,
    counters: Arc<Counters>,
    what: &'static str,
    handle: H,
) where
    H: Fn(Connection, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = std::io::Result<()>> + Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "unix accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Descriptors a sender attaches are refused by the kernel where it can (Linux 6.16+);
        // elsewhere `read(2)` makes it close them unread.
        crate::sys::refuse_passed_descriptors(std::os::fd::AsRawFd::as_raw_fd(&stream));
        // Without credentials there is no one to charge: refused.
        let Ok(cred) = stream.peer_cred() else { continue };
        let credentials = crate::sys::Credentials { pid: cred.pid().unwrap_or(0), uid: cred.uid(), gid: cred.gid() };
        let permit = match guard.admit_local_connection(credentials.uid, credentials.pid) {
            Ok(p) => p,
            Err(reason) => {
                counters.add_dropped(reason, 1);
                continue;
            }
        };
        counters.connections.fetch_add(1, Relaxed);
        let peer = Peer { addr: None, identity: None, credentials: Some(credentials), pacer: None };
        let who = (what, peer.to_string());
        let connect = async move { Ok((Box::new(stream) as Connection, peer, permit)) };
        spawn_connection(counters.clone(), who, connect, handle.clone());
    }
}

/// Holds a stream reader to its source's `tcp_per_source` after it read `messages`: waits
/// what the source's pacing cell says, counted as paced time, before the reader reads again.
/// Ends early at shutdown (true), when the reader drains what is left without pacing.
pub async fn pace(
    peer: &Peer,
    messages: u64,
    counters: &Counters,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let Some(pacer) = &peer.pacer else { return false };
    let wait = pacer.charge(messages);
    if wait.is_zero() {
        return false;
    }
    let started = tokio::time::Instant::now();
    let stopped = tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = shutdown.changed() => true,
    };
    Counters::add(&counters.paced_ns, started.elapsed().as_nanos() as u64);
    stopped
}

/// Runs one connection in a task of its own: `connect` readies it (a PROXY header, a TLS
/// handshake) and gives its guard permit, then `handle` reads it; counted open meanwhile, the
/// permit held until it ends.
/// `who` names the listener and the peer in the log.
fn spawn_connection<H, F>(
    counters: Arc<Counters>,
    (what, who): (&'static str, String),
    connect: impl Future<Output = std::io::Result<(Connection, Peer, ConnectionPermit)>> + Send + 'static,
    handle: H,
) where
    H: Fn(Connection, Peer) -> F + Send + 'static,
    F: Future<Output = std::io::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        counters.open_connections.fetch_add(1, Relaxed);
        let result = match connect.await {
            Ok((conn, mut peer, permit)) => {
                peer.pacer = Some(permit.pacer());
                let result = handle(conn, peer).await;
                drop(permit);
                // A handler gives up on a silent or stalled peer with TimedOut.
                if result.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut) {
                    counters.idle_closed.fetch_add(1, Relaxed);
                }
                result
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::debug!(peer = %who, listener = what, error = %e, "connection ended with an error");
        }
        counters.open_connections.fetch_sub(1, Relaxed);
    });
}

async fn handshake<S: Stream + 'static>(
    stream: S,
    tls: Option<SharedServerConfig>,
    counters: &Counters,
) -> std::io::Result<(Connection, Option<String>)> {
    let Some(config) = tls else { return Ok((Box::new(stream), None)) };
    counters.tls_handshakes.fetch_add(1, Relaxed);
    let acceptor = tokio_rustls::TlsAcceptor::from(config.load_full());
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let identity = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| certificate_name(c));
            Ok((Box::new(stream), identity))
        }
        Ok(Err(e)) => {
            counters.tls_handshake_failures.fetch_add(1, Relaxed);
            Err(e)
        }
        Err(_) => {
            counters.tls_handshake_failures.fetch_add(1, Relaxed);
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))
        }
    }
}

/// The name a client certificate carries: its subject's common name, else its first DNS name,
/// else its SHA-256 fingerprint. (The handshake has already checked it chains to `client_ca`.)
pub fn certificate_name(der: &[u8]) -> String {
    use x509_parser::prelude::*;
    let named = X509Certificate::from_der(der).ok().and_then(|(_, cert)| {
        let cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string);
        cn.or_else(|| {
            let san = cert.subject_alternative_name().ok()??;
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
        })
    });
    named.unwrap_or_else(|| {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// The next connection the guard admits. Refused ones are reset (`SO_LINGER` 0: an RST, no
/// FIN handshake, no TIME_WAIT) before a byte is read and counted by reason. With `proxy`, a
/// balancer's connection comes back unjudged (no permit): its header names who to judge.
pub async fn accept(
    listener: &TcpListener,
    guard: &Arc<ListenerGuard>,
    counters: &Counters,
    proxy: Option<&ProxyProtocol>,
) -> (TcpStream, SocketAddr, Option<ConnectionPermit>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, mostly: back off instead of spinning.
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if proxy.is_some_and(|p| p.from.allows(peer.ip())) {
            keepalive(&stream);
            return (stream, peer, None);
        }
        let local = stream.local_addr().map_or(peer.ip(), |a| a.ip());
        match guard.admit_connection(peer.ip(), local) {
            Ok(permit) => {
                keepalive(&stream);
                return (stream, peer, Some(permit));
            }
            Err(reason) => {
                counters.add_dropped(reason, 1);
                if crate::tap::TAP.watching() {
                    let source = crate::tap::TapSource::Address(peer);
                    crate::tap::TAP.refused_connection(guard.kind(), source, reason);
                }
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                drop(stream);
            }
        }
    }
}
