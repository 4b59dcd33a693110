//! The `floodgate` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use floodgate::config::Config;

/// floodgate: a telemetry ingestion agent.
///
/// Receives StatsD over UDP, TCP and TLS, aggregates exactly as Etsy statsd 0.9 does, and
/// flushes to Graphite/Carbon, Prometheus remote-write or upstream aggregators; receives syslog
/// (RFC 5424/3164) over UDP, TCP and TLS into JSON lines or another syslog server; exports the
/// host's connections per remote endpoint and state (conntrack). Every listener is behind the
/// guard ([limits]: allow-list, per-source and per-port rates; offenders on /offenders). With no
/// config file it runs on safe, loopback-only defaults: StatsD on 127.0.0.1:8125 (UDP and TCP),
/// syslog on 127.0.0.1:5514 (UDP and TCP) into floodgate-syslog.jsonl, the console on
/// 127.0.0.1:8126, HTTP on 127.0.0.1:9318 (/ui, /metrics, /healthz), connection tracking where
/// the kernel allows it, no Graphite output. SIGHUP reloads the config.
#[derive(Parser, Debug)]
#[command(name = "floodgate", version, about, long_about)]
struct Cli {
    /// TOML configuration file (every key optional; see the README).
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run (the default): bind every listener, aggregate, flush, until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Validate the config, print the effective config, exit 1 on any error.
    Check(CheckArgs),
    /// Validate the config, then tell the running floodgate (`--pid`) to reload it (SIGHUP):
    /// what `systemctl reload` runs, so a file that does not validate is refused with its
    /// error on the terminal and the running process is never disturbed. Needs no other
    /// program (`kill` is not on a minimal system).
    Reload(ReloadArgs),
    /// Watch the lines and records arriving at a running floodgate, live and sampled, each with
    /// what became of it (admitted, or dropped and why). Reads its `/api/tap` (allowed from
    /// `[http] tap_from`: loopback by default). Stops on Ctrl-C or after `--count` lines.
    Tap(TapArgs),
}

#[derive(clap::Args, Debug)]
struct TapArgs {
    /// The running floodgate's HTTP address (default: `[http] listen` of --config, else
    /// 127.0.0.1:9318).
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    /// Only these listeners: `statsd`, `syslog`, or one kind (`statsd_udp`, `syslog_tcp`...).
    #[arg(long, value_name = "KIND")]
    listener: Option<String>,
    /// Only this sender: an address, a CIDR block, or `uid:N` (Unix sockets).
    #[arg(long, value_name = "SOURCE")]
    source: Option<String>,
    /// Only metric names (StatsD) or programs (syslog) matching this glob (`*`, `?`).
    #[arg(long, value_name = "GLOB")]
    name: Option<String>,
    /// Lines a second at most (the rest are counted, not shown; up to 1000).
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Print each event as JSON.
    #[arg(long)]
    json: bool,
    /// Stop after this many lines.
    #[arg(long, default_value_t = 0)]
    count: u64,
}

#[derive(clap::Args, Debug, Default)]
struct CheckArgs {
    /// Print nothing when the config is valid (errors still go to stderr): for the systemd
    /// unit, whose journal should not hold the whole config at every start.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(clap::Args, Debug)]
struct ReloadArgs {
    /// The running floodgate's process id (the unit passes `$MAINPID`).
    #[arg(long, value_name = "PID")]
    pid: i32,
}

/// conntrack_exporter's flags, for those who run floodgate in its place; each overrides the
/// config file's key.
#[derive(clap::Args, Debug, Default)]
struct RunArgs {
    /// Port of the HTTP listener (`/metrics`): `[http] listen`'s port.
    #[arg(long, value_name = "PORT")]
    listen_port: Option<u16>,
    /// Log every connection event (`[conntrack] log_events = true`).
    #[arg(long)]
    log_events: bool,
    /// Event log format (`[conntrack] log_events_format`).
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_events_format: Option<floodgate::config::EventFormat>,
}

impl RunArgs {
    fn apply(&self, config: &mut Config) {
        if let Some(port) = self.listen_port {
            let ip = config.http.listen.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |a| a.ip());
            config.http.listen = Some(std::net::SocketAddr::new(ip, port));
        }
        if self.log_events {
            config.conntrack.log_events = true;
        }
        if let Some(format) = self.log_events_format {
            config.conntrack.log_events_format = format;
        }
    }
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let mut config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                print_error(&format!("floodgate: config error: {e}"));
                return ExitCode::from(1);
            }
        },
        None => Config::default(),
    };
    match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
        Command::Check(args) => {
            if args.quiet {
                return ExitCode::SUCCESS;
            }
            if cli.config.is_none() {
                eprintln!("floodgate check: no --config given; these are the built-in defaults");
            }
            // Config::load has loaded every certificate too: a start that would fail is a
            // failed check.
            print!("{}", config.to_toml_redacted());
            ExitCode::SUCCESS
        }
        Command::Reload(args) => {
            // The config loaded above (certificates included): a file the process would refuse
            // is refused here, before it is signalled.
            if cli.config.is_none() {
                print_error("floodgate reload: --config FILE is required (the file the running floodgate reads)");
                return ExitCode::from(2);
            }
            match floodgate::sys::send_hangup(args.pid) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    print_error(&format!("floodgate reload: cannot signal process {}: {e}", args.pid));
                    ExitCode::from(1)
                }
            }
        }
        Command::Tap(args) => {
            let http = args.http.unwrap_or_else(|| {
                let listen = config.http.listen.unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 9318)));
                // A wildcard listener is reached on loopback.
                match listen.ip() {
                    ip if ip.is_unspecified() && ip.is_ipv4() => {
                        std::net::SocketAddr::from(([127, 0, 0, 1], listen.port()))
                    }
                    ip if ip.is_unspecified() => {
                        std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port()))
                    }
                    _ => listen,
                }
            });
            let request = floodgate::tap::client::TapRequest {
                listener: args.listener,
                source: args.source,
                name: args.name,
                rate: Some(args.rate),
                json: args.json,
                count: args.count,
            };
            match floodgate::tap::client::run(http, &request, &mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    print_error(&format!("floodgate tap: {e:#}"));
                    ExitCode::from(1)
                }
            }
        }
        Command::Run(args) => {
            args.apply(&mut config);
            let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    print_error(&format!("floodgate: cannot start the runtime: {e}"));
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(floodgate::topology::run(config, cli.config.clone())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    print_error(&format!("floodgate: {e:#}"));
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOODGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or journald gets plain `key=value` text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text if stderr_is_journal() => {
            builder.event_format(JournalPriority(tracing_subscriber::fmt::format().without_time())).init()
        }
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// An error for the operator on stderr; with the journal's error priority under systemd, so a
/// refused config shows in `journalctl -p err`. A config error's text spans lines: each gets it.
fn print_error(text: &str) {
    let prefix = if stderr_is_journal() { "<3>" } else { "" };
    for line in text.lines() {
        eprintln!("{prefix}{line}");
    }
}

/// Whether stderr is systemd's journal stream (`JOURNAL_STREAM` names its device and inode).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else { return false };
    stream.to_string_lossy() == format!("{}:{}", stderr.dev(), stderr.ino())
}

/// Text lines for the journal: each starts with its syslog priority (`<3>` error, `<4>`
/// warning, ...), which journald reads, so `journalctl -p warning -u floodgate` finds what
/// floodgate warned of; no time stamp (the journal has its own).
struct JournalPriority<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalPriority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            tracing::Level::DEBUG | tracing::Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}
