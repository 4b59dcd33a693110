//! What every component is given when it is built ([`Shared`]: configuration, aggregation,
//! the guard, self-metrics, the operator's switches; [`Wiring`]: where its output goes) and
//! what its shutdown step returns ([`Stopping`]). Sources, sinks and the topology all use
//! these; none of them is defined by another.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use floodgate_statsd::graphite::GraphiteStats;
use parking_lot::{Mutex, RwLock};

use crate::aggregation::Aggregation;
use crate::clock::unix_now;
use crate::config::{Config, Health};
use crate::flush::FlushCounters;
use crate::flush::SinksFull;
use crate::guard::Guard;
use crate::listener::Listeners;
use crate::metrics::Registry;
use crate::record::RecordPipe;

/// A reload asked for over HTTP: the topology answers with the outcome.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<(), String>>;

/// State shared by every part of the running agent.
pub struct Shared {
    /// The configuration in force.
    pub config: Arc<RwLock<Config>>,
    /// Where it came from (reloaded on SIGHUP).
    pub config_path: Option<PathBuf>,
    /// The StatsD store and its receive shards.
    pub aggregation: Arc<Aggregation>,
    /// Every component's figures (`/metrics`, `/api/status`).
    pub metrics: Arc<Registry>,
    /// Every listener, for the per-listener figures.
    pub listeners: Arc<Listeners>,
    /// The flusher's figures.
    pub flush: Arc<FlushCounters>,
    /// Whether a flush sink's buffer is full (an aggregator takes no batches then).
    pub sinks_full: Arc<SinksFull>,
    /// Admission in front of every listener.
    pub guard: Arc<Guard>,
    /// The Graphite backend's statistics (written into each payload, shown by the console).
    pub graphite_stats: Arc<Mutex<GraphiteStats>>,
    /// Operator health (`health up|down` on the console).
    pub health_up: AtomicBool,
    /// Every listener is bound.
    pub ready: AtomicBool,
    /// Start time, Unix seconds.
    pub started_unix: i64,
    /// Start instant (gauge ordering epoch).
    pub epoch: Instant,
    /// The epoch as Unix nanoseconds: turns gauge stamps into wall-clock times.
    pub epoch_wall_ns: i64,
    /// The async runtime (for the flusher thread's follow-up work).
    pub runtime: tokio::runtime::Handle,
    /// Asks the topology to reload (`POST /-/reload`); the answer comes back on the sender
    /// given.
    pub reload_requests: tokio::sync::mpsc::UnboundedSender<ReloadRequest>,
    /// The other end, taken by the topology when it starts.
    pub reload_queue: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ReloadRequest>>>,
    /// The Prometheus names of the StatsD series (`[prometheus] mapping_config`).
    pub naming: Arc<crate::naming::Naming>,
    /// Large responses (HTTP pages, console dumps), shared and capped.
    pub responses: Arc<crate::net::shared_response::SharedResponses>,
    /// The shutdown has begun (SIGTERM): what waits on something failing gives up in time.
    pub stopping: Arc<AtomicBool>,
}

impl Shared {
    /// The state at start, before any component is built.
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Shared {
        let started_unix = unix_now();
        let epoch = Instant::now();
        let epoch_wall_ns = crate::clock::unix_ns();
        let guard = Guard::new(&config.limits, epoch);
        let (metrics, listeners) = (Arc::new(Registry::default()), Arc::new(Listeners::default()));
        let flush = Arc::new(FlushCounters::default());
        let (reload_requests, reload_queue) = tokio::sync::mpsc::unbounded_channel();
        metrics.add(listeners.clone());
        metrics.add(guard.clone());
        metrics.add(flush.clone());
        let naming = Arc::new(crate::naming::Naming::new(&config.prometheus));
        metrics.add(naming.clone());
        let responses = Arc::new(crate::net::shared_response::SharedResponses::default());
        metrics.add(responses.clone());
        metrics.add(Arc::new(crate::tap::TapMetrics));
        let aggregation = Arc::new(Aggregation::new(config.aggregation(), config.limits.series_budgets()));
        metrics.add(aggregation.clone());
        Shared {
            naming,
            responses,
            stopping: Arc::default(),
            aggregation,
            metrics,
            listeners,
            flush,
            sinks_full: Arc::default(),
            guard,
            graphite_stats: Arc::new(Mutex::new(GraphiteStats { last_flush: started_unix, ..Default::default() })),
            health_up: AtomicBool::new(config.admin.health == Health::Up),
            ready: AtomicBool::new(false),
            started_unix,
            epoch,
            config: Arc::new(RwLock::new(config)),
            config_path,
            epoch_wall_ns,
            runtime: tokio::runtime::Handle::current(),
            reload_requests,
            reload_queue: Mutex::new(Some(reload_queue)),
        }
    }

    /// The flusher's handles.
    pub fn flusher(&self) -> crate::flush::Flusher {
        crate::flush::Flusher {
            aggregation: self.aggregation.clone(),
            config: self.config.clone(),
            counters: self.flush.clone(),
            epoch_wall_ns: self.epoch_wall_ns,
            naming: self.naming.clone(),
            runtime: self.runtime.clone(),
        }
    }
}

/// What components leave for each other while they are built: the flusher's outputs (flush
/// sinks, forward links, the aggregator to acknowledge) and the record output's pipe for the
/// syslog listeners.
#[derive(Default)]
pub struct Wiring {
    /// Where flushes go.
    pub flush: crate::flush::Outputs,
    /// Where syslog records go (set by the syslog output, taken by the syslog source).
    pub records: Option<RecordPipe>,
}

/// A future a component's shutdown step returns.
pub type Stopping = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
