//! `[limits] shared`: the ports' budgets kept in Redis for a whole fleet.
//!
//! One thread ("guard-shared") takes a lease for every datagram port each `period`: one call
//! of [`LEASE_SCRIPT`] per port, which keeps the port's GCRA cell and the hosts that called
//! lately. The receive threads never wait for Redis: they admit from the leased messages
//! ([`floodgate_guard::SharedPort`]). When Redis fails or is slower than `timeout`, every
//! port falls back to its share (its rate over the hosts Redis last counted), logged and
//! counted, and the thread keeps trying; the first answer ends the fallback.
//!
//! The thread is synchronous (redis' blocking connection with timeouts): it is one call at a
//! time by design, and needs no runtime.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use super::{config::SharedLimits, Guard, ListenerGuard};

/// The port's cell and its hosts, in one atomic step. Times are Redis' own clock (`TIME`), in
/// microseconds (exact in Lua's doubles), so hosts' clocks do not matter. The fair part of
/// what is there is [`floodgate_guard::fair_grant`]'s arithmetic.
///
/// A cell Redis does not hold (a new port, a quiet one whose cell expired, a Redis restarted
/// empty) starts as a busy port's, half its burst taken: a Redis that comes back empty must not
/// hand out a whole burst on top of what the hosts let through on their shares.
///
/// KEYS: the cell (its theoretical arrival time), the hosts (a sorted set by last call).
/// ARGV: this host, µs per message, burst µs, messages wanted, hosts' window µs, most divisor.
/// Returns `{granted, hosts}`.
pub const LEASE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[5])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('PEXPIRE', KEYS[2], math.ceil(window / 1000) * 2)
local hosts = redis.call('ZCARD', KEYS[2])
local per = tonumber(ARGV[2])
local tau = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or tostring(now + tau / 2))
if tat < now then tat = now end
local available = math.floor((now + tau - tat) / per)
if available < 0 then available = 0 end
local divisor = math.max(1, math.min(hosts, tonumber(ARGV[6])))
local grant = math.min(want, math.ceil(available / divisor))
if grant > 0 then
  tat = tat + grant * per
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now + tau) / 1000) + 1000)
end
return {grant, hosts}
";

/// A host that has not called for this long is no longer counted among a port's hosts.
const HOSTS_WINDOW: Duration = Duration::from_secs(3);

/// The shared budget's figures, for `/metrics`, `/offenders` and `/api/status`.
#[derive(Debug, Default)]
pub(super) struct SharedStats {
    pub(super) calls: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) fallbacks: AtomicU64,
    pub(super) granted: AtomicU64,
    pub(super) last_error: Mutex<String>,
}

/// `/offenders` and `/api/status`: the shared budget.
#[derive(Debug, Serialize)]
pub struct SharedReport {
    /// Where the budgets are (password redacted).
    pub redis: String,
    /// `shared` (leases from Redis) or `fallback` (each port held to its share).
    pub state: &'static str,
    /// Calls to Redis.
    pub calls: u64,
    /// Calls that failed or timed out.
    pub errors: u64,
    /// Times this host fell back to its share.
    pub fallbacks: u64,
    /// Messages leased from the fleet's budgets.
    pub granted: u64,
    /// The last error, if any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_error: String,
}

impl Guard {
    /// The shared budget's report (`None` unless `[limits] shared` is set).
    pub(super) fn shared_report(&self) -> Option<SharedReport> {
        let redis = self.limits.lock().shared.as_ref()?.redis.clone();
        let fallen_back = self.listeners.lock().iter().any(|lg| lg.shared.is_fallen_back());
        let s = &self.shared_stats;
        Some(SharedReport {
            redis: crate::config::redact_url(&redis),
            state: if fallen_back { "fallback" } else { "shared" },
            calls: s.calls.load(Relaxed),
            errors: s.errors.load(Relaxed),
            fallbacks: s.fallbacks.load(Relaxed),
            granted: s.granted.load(Relaxed),
            last_error: s.last_error.lock().clone(),
        })
    }

    /// Starts the thread that keeps the leases (it idles while `[limits] shared` is unset,
    /// and follows a reload).
    pub fn spawn_shared(self: &Arc<Self>, stop: Arc<AtomicBool>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let guard = self.clone();
        std::thread::Builder::new().name("guard-shared".into()).spawn(move || run(&guard, &stop))
    }
}

/// The Redis keys of a listener's port: the same on every host serving that port (kind and
/// port number, or the socket's path), in one hash slot (`{…}`) for Redis Cluster.
fn keys(prefix: &str, lg: &ListenerGuard) -> (String, String) {
    let port = match lg.address.parse::<std::net::SocketAddr>() {
        Ok(a) => a.port().to_string(),
        Err(_) => lg.address.clone(),
    };
    let slot = format!("{prefix}:{{{}:{port}}}", lg.kind.as_str());
    (format!("{slot}:cell"), format!("{slot}:hosts"))
}

struct Link {
    url: String,
    connection: redis::Connection,
}

fn connect(config: &SharedLimits) -> redis::RedisResult<Link> {
    let client = redis::Client::open(config.redis.as_str())?;
    let connection = client.get_connection_with_timeout(config.timeout)?;
    connection.set_read_timeout(Some(config.timeout))?;
    connection.set_write_timeout(Some(config.timeout))?;
    Ok(Link { url: config.redis.clone(), connection })
}

fn run(guard: &Guard, stop: &AtomicBool) {
    let me = format!("{}/{}", crate::sys::host_name(), std::process::id());
    let script = redis::Script::new(LEASE_SCRIPT);
    let mut link: Option<Link> = None;
    let mut first = true;
    while !stop.load(Relaxed) {
        let Some(config) = guard.limits.lock().shared.clone() else {
            link = None;
            std::thread::sleep(Duration::from_millis(250));
            continue;
        };
        if first {
            // A random phase: hosts started together do not call at the same instant, so
            // each finds about its share in the cell.
            first = false;
            pause(stop, config.period.mul_f64(fastrand::f64()));
        }
        let started = Instant::now();
        let ports: Vec<Arc<ListenerGuard>> =
            guard.listeners.lock().iter().filter(|lg| lg.has_port_limit()).cloned().collect();
        if link.as_ref().is_some_and(|l| l.url != config.redis) {
            link = None;
        }
        if let Err(e) = lease(guard, &config, &me, &script, &mut link, &ports) {
            link = None;
            fall_back(guard, &config, &ports, &e);
        }
        pause(stop, config.period.saturating_sub(started.elapsed()));
    }
}

fn pause(stop: &AtomicBool, mut left: Duration) {
    while !left.is_zero() && !stop.load(Relaxed) {
        let step = left.min(Duration::from_millis(50));
        std::thread::sleep(step);
        left -= step;
    }
}

/// One lease for every port.
fn lease(
    guard: &Guard,
    config: &SharedLimits,
    me: &str,
    script: &redis::Script,
    link: &mut Option<Link>,
    ports: &[Arc<ListenerGuard>],
) -> redis::RedisResult<()> {
    let policy = guard.policy();
    let limit = policy.udp_port;
    let link = match link {
        Some(l) => l,
        None => link.insert(connect(config)?),
    };
    let period_ns = config.period.as_nanos() as u64;
    let max_divisor = (limit.tolerance_ns() / period_ns.max(1)).max(1);
    let stats = &guard.shared_stats;
    for lg in ports {
        let request = lg.shared.lease_request(&limit, period_ns);
        if limit.is_unlimited() {
            continue;
        }
        let (cell, hosts) = keys(&config.key_prefix, lg);
        let started = Instant::now();
        stats.calls.fetch_add(1, Relaxed);
        let (granted, seen): (u64, u64) = script
            .key(cell)
            .key(hosts)
            .arg(me)
            .arg(limit.interval_ns() as f64 / 1e3)
            .arg(limit.tolerance_ns() as f64 / 1e3)
            .arg(request.want)
            .arg(HOSTS_WINDOW.as_micros() as u64)
            .arg(max_divisor)
            .invoke(&mut link.connection)?;
        if started.elapsed() > config.timeout {
            // Answered, but too late to trust the next one: count it, keep the grant.
            stats.errors.fetch_add(1, Relaxed);
        }
        stats.granted.fetch_add(granted, Relaxed);
        lg.shared_hosts.store(seen, Relaxed);
        if lg.shared.granted(granted) {
            tracing::info!(
                listener = lg.kind.as_str(),
                address = %lg.address,
                hosts = seen,
                "shared port limit: Redis answers again, the port takes its budget from the fleet's"
            );
        }
    }
    Ok(())
}

/// Every port held to its share: its rate over the hosts last counted.
fn fall_back(guard: &Guard, config: &SharedLimits, ports: &[Arc<ListenerGuard>], error: &redis::RedisError) {
    let stats = &guard.shared_stats;
    stats.errors.fetch_add(1, Relaxed);
    *stats.last_error.lock() = error.to_string();
    let rate = guard.limits.lock().udp_per_port;
    let limit = guard.policy().udp_port;
    let now = guard.now_ns();
    for lg in ports {
        let hosts = match lg.shared_hosts.load(Relaxed) {
            0 => config.hosts,
            n => n,
        };
        let share = rate.div_ceil(hosts.max(1));
        if lg.shared.fall_back(share, &limit, now) {
            stats.fallbacks.fetch_add(1, Relaxed);
            tracing::warn!(
                listener = lg.kind.as_str(),
                address = %lg.address,
                redis = %crate::config::redact_url(&config.redis),
                error = %error,
                share,
                hosts,
                "shared port limit: Redis cannot be reached; this host holds the port to its share (udp_per_port over the hosts last seen) until it answers"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::{Kind, Protocol, Transport};

    #[test]
    fn hosts_of_one_port_share_its_keys_whatever_their_address() {
        let g = Guard::new(&Default::default(), Instant::now());
        let a = g.listener(Kind::new(Protocol::Syslog, Transport::Udp), "127.0.0.1:5514", 0);
        let b = g.listener(Kind::new(Protocol::Syslog, Transport::Udp), "[::]:5514", 0);
        let c = g.listener(Kind::new(Protocol::Statsd, Transport::Udp), "127.0.0.1:5514", 0);
        assert_eq!(keys("fg", &a), keys("fg", &b));
        assert_ne!(keys("fg", &a), keys("fg", &c));
        assert_eq!(keys("fg", &a).0, "fg:{syslog_udp:5514}:cell");
    }
}
