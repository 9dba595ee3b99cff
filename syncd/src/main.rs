//! `syncd` command line: parse flags (every flag also reads an environment
//! variable, including the original automc ones), set up logging, convert to
//! [`syncd::Config`], run until SIGINT/SIGTERM. Bad configuration exits 64.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use automc_telemetry::{LogFormat, Telemetry, TelemetryConfig};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "syncd",
    version,
    about = "automc syncd: Postgres route table streamed to edges over gRPC; the one waker caller",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `serve` flags, accepted without the subcommand too.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run syncd (the default).
    Serve(Box<ServeArgs>),
    /// Create or upgrade the schema and triggers (idempotent, keeps rows).
    Migrate(MigrateArgs),
    /// Diagnose a database: table, columns, triggers, routes, waker.
    Check(CheckArgs),
    /// Print the routes a running syncd serves (server, hostnames, address, state).
    Routes(InspectArgs),
    /// Print the edges watching a running syncd, with their applied version and lag.
    Edges(InspectArgs),
    /// Print the wakes in flight and recent ones, with outcome and reason.
    Wakes(InspectArgs),
    /// Print every server with its players across all edges, per-edge counts, wake and sleep state.
    Servers(InspectArgs),
    /// Print every player on every edge (name, UUID, server, edge, since).
    Players(InspectArgs),
}

#[derive(Args, Clone)]
struct InspectArgs {
    /// gRPC URL of the syncd to ask (http:// or https://).
    #[arg(long = "syncd", env = "SYNCD_URL", default_value = DEFAULT_SYNCD_URL)]
    url: String,
    /// Bearer token, when syncd requires one.
    #[arg(long, env = "SYNCD_GRPC_TOKEN", hide_env_values = true)]
    grpc_token: Option<String>,
    /// PEM CA bundle to verify an https:// syncd (default: the web roots).
    #[arg(long, env = "SYNCD_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Where the operator commands look by default: a syncd on this host.
const DEFAULT_SYNCD_URL: &str = "http://127.0.0.1:50051";

#[derive(Args, Clone)]
struct DbArgs {
    /// Postgres DSN (URL or key=value). Falls back to AUTOMC_DSN.
    #[arg(long, env = "SYNCD_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Log format: text or json (RUST_LOG filters).
    #[arg(long, env = "SYNCD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Args, Clone)]
struct MigrateArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Also print the NOTICE lines Postgres sends (e.g. "already exists, skipping").
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Args, Clone)]
struct CheckArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Waker base URL to probe. Falls back to AUTOMC_WAKER_URL.
    #[arg(long, env = "SYNCD_WAKER_URL")]
    waker_url: Option<String>,
}

#[derive(Args, Clone)]
struct ServeArgs {
    #[command(flatten)]
    db: DbArgs,
    /// gRPC address for edges and grpcurl.
    #[arg(long, env = "SYNCD_GRPC_LISTEN", default_value = syncd::config::DEFAULT_GRPC_LISTEN)]
    grpc_listen: SocketAddr,
    /// HTTP address for /metrics, /healthz, /readyz.
    #[arg(long, env = "SYNCD_HTTP_LISTEN", default_value = syncd::config::DEFAULT_HTTP_LISTEN)]
    http_listen: SocketAddr,
    /// Bearer token required on every RPC except health. Without it (or
    /// mutual TLS), syncd refuses a non-loopback --grpc-listen.
    #[arg(
        long,
        env = "SYNCD_GRPC_TOKEN",
        hide_env_values = true,
        conflicts_with = "grpc_token_file"
    )]
    grpc_token: Option<String>,
    /// File holding the gRPC token (surrounding whitespace is ignored).
    #[arg(long, env = "SYNCD_GRPC_TOKEN_FILE")]
    grpc_token_file: Option<PathBuf>,
    /// Serve gRPC on a non-loopback address without a token or mutual TLS
    /// anyway (warned at start; automc_syncd_grpc_unauthenticated is 1).
    #[arg(long, env = "SYNCD_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,
    /// A gRPC connection must finish its handshake (TLS and the HTTP/2
    /// preface) within this long of being accepted, or it is closed.
    #[arg(long, env = "SYNCD_GRPC_HANDSHAKE_TIMEOUT", default_value_t = syncd::config::DEFAULT_GRPC_HANDSHAKE_TIMEOUT.into())]
    grpc_handshake_timeout: humantime::Duration,
    /// gRPC connections open at once; more are refused at accept.
    #[arg(long, env = "SYNCD_GRPC_MAX_CONNECTIONS", default_value_t = syncd::config::DEFAULT_GRPC_MAX_CONNECTIONS, value_parser = at_least_one())]
    grpc_max_connections: usize,
    /// gRPC connections open at once from one peer IP address.
    #[arg(long, env = "SYNCD_GRPC_MAX_CONNECTIONS_PER_PEER", default_value_t = syncd::config::DEFAULT_GRPC_MAX_CONNECTIONS_PER_PEER, value_parser = at_least_one())]
    grpc_max_connections_per_peer: usize,
    /// gRPC connections from one peer IP address still in their handshake.
    #[arg(long, env = "SYNCD_GRPC_MAX_HANDSHAKES_PER_PEER", default_value_t = syncd::config::DEFAULT_GRPC_MAX_HANDSHAKES_PER_PEER, value_parser = at_least_one())]
    grpc_max_handshakes_per_peer: usize,
    /// Concurrent RPCs on one gRPC connection (HTTP/2 max concurrent streams).
    #[arg(long, env = "SYNCD_GRPC_MAX_STREAMS_PER_CONNECTION", default_value_t = syncd::config::DEFAULT_GRPC_MAX_STREAMS_PER_CONNECTION, value_parser = clap::value_parser!(u32).range(1..))]
    grpc_max_streams_per_connection: u32,
    /// Waker base URL; unset = wakes fail with "waker not configured".
    /// Falls back to AUTOMC_WAKER_URL.
    #[arg(long, env = "SYNCD_WAKER_URL")]
    waker_url: Option<String>,
    /// Sent as X-API-Key. Falls back to AUTOMC_WAKER_TOKEN.
    #[arg(
        long,
        env = "SYNCD_WAKER_TOKEN",
        hide_env_values = true,
        conflicts_with = "waker_token_file"
    )]
    waker_token: Option<String>,
    /// File holding the waker token (surrounding whitespace is ignored).
    #[arg(long, env = "SYNCD_WAKER_TOKEN_FILE")]
    waker_token_file: Option<PathBuf>,
    /// How often to poll the waker for the server's state.
    #[arg(long, env = "SYNCD_WAKER_POLL_INTERVAL", value_parser = humantime::parse_duration, default_value = "2s")]
    waker_poll_interval: Duration,
    /// Give up on a wake after this long.
    #[arg(long, env = "SYNCD_WAKER_TIMEOUT", value_parser = humantime::parse_duration, default_value = "90s")]
    waker_timeout: Duration,
    /// Bound on each HTTP request to the waker.
    #[arg(long, env = "SYNCD_WAKER_REQUEST_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    waker_request_timeout: Duration,
    /// A wake also needs the server to answer a Minecraft status ping.
    #[arg(long, env = "SYNCD_WAKER_READY_CHECK")]
    waker_ready_check: bool,
    /// Reuse a successful wake for this long.
    #[arg(long, env = "SYNCD_WAKE_REUSE", value_parser = humantime::parse_duration, default_value = "10s")]
    wake_reuse: Duration,
    /// Heartbeat on a watch stream idle for this long.
    #[arg(long, env = "SYNCD_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration, default_value = "5s")]
    heartbeat_interval: Duration,
    /// Messages queued per watcher before it is cut off as stuck.
    #[arg(long, env = "SYNCD_WATCHER_QUEUE", default_value_t = syncd::config::DEFAULT_WATCHER_QUEUE)]
    watcher_queue: usize,
    /// Change sets kept so reconnecting edges resume without a snapshot
    /// (together at most about one table's worth of routes).
    #[arg(long, env = "SYNCD_HISTORY", default_value_t = syncd::config::DEFAULT_HISTORY_LEN)]
    history: usize,
    /// Cut off a watcher that does not take a handed-out message (at most
    /// 256 KiB) within this long: it stopped reading.
    #[arg(long, env = "SYNCD_WATCH_SEND_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s")]
    watch_send_timeout: Duration,
    /// A new WatchRoutes stream must send its WatchHello within this long.
    #[arg(long, env = "SYNCD_HELLO_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    hello_timeout: Duration,
    /// WatchRoutes streams open at once from one peer IP address.
    #[arg(long, env = "SYNCD_MAX_WATCHERS_PER_PEER", default_value_t = syncd::config::DEFAULT_MAX_WATCHERS_PER_PEER)]
    max_watchers_per_peer: usize,
    /// Probe the LISTEN connection with SELECT 1 this often.
    #[arg(long, env = "SYNCD_PG_PROBE_INTERVAL", value_parser = humantime::parse_duration, default_value = "10s")]
    pg_probe_interval: Duration,
    /// PEM certificate chain: serve gRPC over TLS (needs --tls-key).
    #[arg(long, env = "SYNCD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "SYNCD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates chaining to it (mutual TLS).
    #[arg(long, env = "SYNCD_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Check the TLS files this often; changed files are loaded without a restart.
    #[arg(long, env = "SYNCD_TLS_RELOAD_INTERVAL", value_parser = humantime::parse_duration, default_value = "10s")]
    tls_reload_interval: Duration,
    /// Hot standby: syncd instances on one database sharing this Postgres
    /// advisory lock id elect one active instance that serves wakes.
    #[arg(long, env = "SYNCD_LEADER_LOCK")]
    leader_lock: Option<i64>,
    /// Export tracing spans over OTLP/gRPC to this collector, e.g.
    /// http://127.0.0.1:4317 (off when unset).
    #[arg(long, env = "SYNCD_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Ask the waker to stop a server nobody played on for this long
    /// (off when unset; server_options.sleep_after overrides per server).
    #[arg(long, env = "SYNCD_SLEEP_AFTER", value_parser = humantime::parse_duration)]
    sleep_after: Option<Duration>,
    /// Never stop a server sooner than this after it came up.
    #[arg(long, env = "SYNCD_MIN_UPTIME", value_parser = humantime::parse_duration, default_value = "5m")]
    min_uptime: Duration,
    /// An edge whose stream dropped counts as unknown this long: its last
    /// player counts stand and no server sleeps meanwhile.
    #[arg(long, env = "SYNCD_EDGE_GRACE", value_parser = humantime::parse_duration, default_value = "2m")]
    edge_grace: Duration,
    /// POST every fleet event (player joined/left, wake, sleep) as JSON to this
    /// URL (repeatable; comma list in the env var). Slow webhooks lose events, never slow syncd.
    #[arg(long, env = "SYNCD_WEBHOOK_URL", value_delimiter = ',')]
    webhook_url: Vec<String>,
    /// Sign webhook bodies: X-Automc-Signature: sha256=<hex HMAC-SHA256 of the body>.
    #[arg(long, env = "SYNCD_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Export automc_syncd_server_players{server} (turn off for very large fleets).
    #[arg(long, env = "SYNCD_PLAYER_METRICS_PER_SERVER", action = clap::ArgAction::Set, default_value_t = true)]
    player_metrics_per_server: bool,
}

fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

fn env_fallback(value: Option<String>, legacy: &str) -> Option<String> {
    value
        .or_else(|| std::env::var(legacy).ok())
        .filter(|v| !v.trim().is_empty())
}

impl DbArgs {
    fn database_url(&self) -> anyhow::Result<String> {
        env_fallback(self.database_url.clone(), "AUTOMC_DSN")
            .context("no database URL: set --database-url, SYNCD_DATABASE_URL or AUTOMC_DSN")
    }
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<syncd::Config> {
        let mut c = syncd::Config::new(self.db.database_url()?);
        c.grpc_listen = self.grpc_listen;
        c.http_listen = self.http_listen;
        c.grpc_token = match &self.grpc_token_file {
            Some(path) => Some(automc_proto::auth::read_token_file(path)?),
            None => self.grpc_token.filter(|t| !t.is_empty()),
        };
        c.allow_unauthenticated = self.allow_unauthenticated;
        c.accept = syncd::accept::Limits {
            handshake_timeout: self.grpc_handshake_timeout.into(),
            max_connections: self.grpc_max_connections,
            max_connections_per_peer: self.grpc_max_connections_per_peer,
            max_handshakes_per_peer: self.grpc_max_handshakes_per_peer,
            max_streams_per_connection: self.grpc_max_streams_per_connection,
        };
        c.heartbeat_interval = self.heartbeat_interval;
        c.watcher_queue = self.watcher_queue;
        c.history_len = self.history;
        c.watch_send_timeout = self.watch_send_timeout;
        c.hello_timeout = self.hello_timeout;
        c.max_watchers_per_peer = self.max_watchers_per_peer;
        c.pg_probe_interval = self.pg_probe_interval;
        c.waker.url = env_fallback(self.waker_url, "AUTOMC_WAKER_URL");
        c.waker.token = match &self.waker_token_file {
            Some(path) => Some(automc_proto::auth::read_token_file(path)?),
            None => env_fallback(self.waker_token, "AUTOMC_WAKER_TOKEN"),
        };
        c.waker.poll_interval = self.waker_poll_interval;
        c.waker.timeout = self.waker_timeout;
        c.waker.request_timeout = self.waker_request_timeout;
        c.waker.ready_check = self.waker_ready_check;
        c.waker.reuse_for = self.wake_reuse;
        c.leader_lock = self.leader_lock;
        c.edge_grace = self.edge_grace;
        c.webhook_urls = self
            .webhook_url
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        c.webhook_secret = self.webhook_secret.filter(|s| !s.is_empty());
        c.sleep = syncd::sleep::SleepConfig {
            sleep_after: self.sleep_after.filter(|d| !d.is_zero()),
            min_uptime: self.min_uptime,
            per_server_metrics: self.player_metrics_per_server,
        };
        c.tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(syncd::tls::TlsFiles {
                cert,
                key,
                client_ca: self.tls_client_ca,
                reload_interval: self.tls_reload_interval,
            }),
            _ => None,
        };
        Ok(c)
    }
}

/// Logs (and, for `serve`, span export); `None` after printing why it failed.
fn init_telemetry(log_format: LogFormat, otlp_endpoint: Option<String>) -> Option<Telemetry> {
    let config = TelemetryConfig {
        service: "syncd",
        log_format,
        otlp_endpoint,
        default_filter: "info",
    };
    match automc_telemetry::init(&config) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("syncd: {e}");
            None
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::SUCCESS,
                _ => ExitCode::from(EXIT_CONFIG),
            };
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("syncd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Some(Command::Serve(args)) => serve(*args).await,
            None => serve(cli.serve).await,
            Some(Command::Migrate(db)) => migrate(db).await,
            Some(Command::Check(args)) => check(args).await,
            Some(Command::Routes(args)) => inspect(args, syncd::inspect::Query::Routes).await,
            Some(Command::Edges(args)) => inspect(args, syncd::inspect::Query::Edges).await,
            Some(Command::Wakes(args)) => inspect(args, syncd::inspect::Query::Wakes).await,
            Some(Command::Servers(args)) => inspect(args, syncd::inspect::Query::Servers).await,
            Some(Command::Players(args)) => inspect(args, syncd::inspect::Query::Players).await,
        }
    })
}

fn config_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("syncd: {e}");
    ExitCode::from(EXIT_CONFIG)
}

async fn serve(args: ServeArgs) -> ExitCode {
    let Some(telemetry) = init_telemetry(args.db.log_format, args.otlp_endpoint.clone()) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => return config_error(format!("{e:#}")),
    };
    let shutdown = CancellationToken::new();
    let running = match syncd::start(config, shutdown.clone()).await {
        Ok(r) => r,
        Err(e @ syncd::Error::Config(_)) => return config_error(e),
        Err(e) => {
            tracing::error!(error = %e, "syncd failed to start");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    let code = match running.wait().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "syncd stopped with an error");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn migrate(args: MigrateArgs) -> ExitCode {
    let Some(_telemetry) = init_telemetry(args.db.log_format, None) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let url = match args.db.database_url() {
        Ok(u) => u,
        Err(e) => return config_error(e),
    };
    match syncd::migrate(&url).await {
        Ok(report) => {
            if args.verbose {
                for notice in &report.notices {
                    println!("postgres {notice}");
                }
            }
            println!(
                "migrated {}: {}",
                syncd::dsn::redact(&url),
                report.summary()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("syncd migrate failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn check(args: CheckArgs) -> ExitCode {
    let Some(_telemetry) = init_telemetry(args.db.log_format, None) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let url = match args.db.database_url() {
        Ok(u) => u,
        Err(e) => return config_error(e),
    };
    println!("checking {}", syncd::dsn::redact(&url));
    let mut failed = false;
    match syncd::check(&url).await {
        Ok(findings) => {
            for f in findings {
                failed |= f.level == syncd::check::Level::Error;
                println!("{f}");
            }
        }
        Err(e) => {
            println!("ERROR cannot connect or query: {e}");
            failed = true;
        }
    }
    match env_fallback(args.waker_url, "AUTOMC_WAKER_URL") {
        None => println!("warn  no waker URL: wakes will fail with \"waker not configured\""),
        Some(url) => match probe_waker(&url).await {
            Ok(status) => println!("ok    waker {url} reachable (HTTP {status})"),
            Err(e) => {
                println!("ERROR waker {url} unreachable: {e}");
                failed = true;
            }
        },
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn inspect(args: InspectArgs, query: syncd::inspect::Query) -> ExitCode {
    let tls_ca_pem = match &args.tls_ca {
        Some(path) => match std::fs::read(path) {
            Ok(pem) => Some(pem),
            Err(e) => return config_error(format!("cannot read --tls-ca {}: {e}", path.display())),
        },
        None => None,
    };
    let target = syncd::inspect::Target {
        url: args.url,
        token: args.grpc_token.filter(|t| !t.is_empty()),
        tls_ca_pem,
    };
    match syncd::inspect::fetch(&target, query, args.json).await {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("syncd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn probe_waker(url: &str) -> anyhow::Result<u16> {
    // Like the wake client: a redirect is reported, not followed.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()?;
    let resp = client.get(url).send().await?;
    Ok(resp.status().as_u16())
}
