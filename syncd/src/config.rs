//! Runtime configuration of syncd: a plain struct that `main.rs` fills from
//! the command line and tests fill by hand (listen on `127.0.0.1:0`).
//!
//! `Debug` is written by hand so the DSN password and the tokens never reach
//! a log line.
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use automc_telemetry::LogFormat;
use clap::{Args, Parser, Subcommand};

/// Reachable for edges on other hosts; on a non-loopback address syncd
/// refuses to start without a token or mutual TLS (see [`Config::grpc_auth`]).
pub const DEFAULT_GRPC_LISTEN: &str = "0.0.0.0:50051";
/// `/metrics` and probes: this host only unless told otherwise.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9090";
/// The accept layer of the gRPC port (`accept`): one deadline from accept to
/// the end of the HTTP/2 preface (TLS included) ...
pub const DEFAULT_GRPC_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// ... connections open at once ...
pub const DEFAULT_GRPC_MAX_CONNECTIONS: usize = 4096;
/// ... from one peer IP (like `--max-watchers-per-peer`: edges behind one NAT) ...
pub const DEFAULT_GRPC_MAX_CONNECTIONS_PER_PEER: usize = 128;
/// ... still in their handshake from one peer IP (a real client needs one
/// for well under a second) ...
pub const DEFAULT_GRPC_MAX_HANDSHAKES_PER_PEER: usize = 8;
/// ... and concurrent RPCs on one connection (an edge multiplexes its watch
/// and every wake it waits for on one connection; past this they queue).
pub const DEFAULT_GRPC_MAX_STREAMS_PER_CONNECTION: u32 = 256;
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_WATCHER_QUEUE: usize = 1024;
/// At most one player counts set per edge per this long.
pub const DEFAULT_COUNTS_INTERVAL: Duration = Duration::from_millis(250);
pub const DEFAULT_HISTORY_LEN: usize = 4096;
pub const DEFAULT_WATCH_SEND_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_WATCHERS_PER_PEER: usize = 128;
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_secs(1);
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
pub const DEFAULT_PG_PROBE_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_PG_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_WAKER_POLL_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_WAKER_TIMEOUT: Duration = Duration::from_secs(90);
pub const DEFAULT_WAKER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_WAKE_REUSE: Duration = Duration::from_secs(10);
pub const DEFAULT_WAKE_HISTORY: usize = 256;
pub const DEFAULT_READY_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything `syncd::start` needs.
#[derive(Clone)]
pub struct Config {
    /// Postgres DSN (URL or key=value form). Holds the password: never logged.
    pub database_url: String,
    /// gRPC listen address (`RouteSync`, health, reflection).
    pub grpc_listen: SocketAddr,
    /// HTTP admin listen address (`/metrics`, `/healthz`, `/readyz`).
    pub http_listen: SocketAddr,
    /// Bearer token required on every RPC except health. `None` = open.
    pub grpc_token: Option<String>,
    /// Serve RouteSync on a non-loopback address without a token or mutual
    /// TLS anyway (warned about at start, `automc_syncd_grpc_unauthenticated`).
    pub allow_unauthenticated: bool,
    /// Bounds on what a peer can make syncd do before its handshake is done.
    pub accept: crate::accept::Limits,
    /// A watch stream that carried nothing for this long gets a heartbeat.
    pub heartbeat_interval: Duration,
    /// Messages queued per watcher before it counts as stuck and is cut off.
    pub watcher_queue: usize,
    /// Change sets kept so a reconnecting edge can resume without a
    /// snapshot (also bounded to about one table's worth of routes).
    pub history_len: usize,
    /// A watcher handed a message (at most 64 KiB) that it does not take
    /// within this long is cut off (it stopped reading).
    pub watch_send_timeout: Duration,
    /// A new watch stream must send its `WatchHello` within this long.
    pub hello_timeout: Duration,
    /// Watch streams open at once from one peer IP address.
    pub max_watchers_per_peer: usize,
    /// Reconnect backoff to Postgres: first delay, doubling up to the max.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// A `SELECT 1` probe on the LISTEN connection this often, so a dead TCP
    /// path is noticed; it must answer within the timeout.
    pub pg_probe_interval: Duration,
    pub pg_probe_timeout: Duration,
    /// The HTTP waker; `url: None` makes every wake fail with
    /// "waker not configured".
    pub waker: WakerConfig,
    /// TLS on the gRPC port (`None` = plaintext); mutual TLS when the files
    /// name a client CA.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Hot standby: instances sharing this advisory lock id elect one
    /// active syncd (the only one serving `Wake`). `None` = always active.
    pub leader_lock: Option<i64>,
    /// An edge whose stream dropped counts as unknown this long (its last
    /// session counts stand, and nothing sleeps).
    pub edge_grace: std::time::Duration,
    /// Player counts go to edges at most once per this long (changes in
    /// between are merged).
    pub counts_interval: Duration,
    /// Opt-in sleeping of idle servers, and the player gauges.
    pub sleep: crate::sleep::SleepConfig,
    /// Every fleet event is posted to each of these as JSON.
    pub webhook_urls: Vec<String>,
    /// HMAC-SHA256 key of the webhook signature header. Never logged.
    pub webhook_secret: Option<String>,
}

/// How syncd calls the waker (SPEC §4).
#[derive(Clone)]
pub struct WakerConfig {
    /// Base URL, e.g. `http://server-manager:8080`.
    pub url: Option<String>,
    /// Sent as `X-API-Key`. Never logged.
    pub token: Option<String>,
    pub poll_interval: Duration,
    /// Give up on a wake after this long.
    pub timeout: Duration,
    /// Bound on every single HTTP request to the waker.
    pub request_timeout: Duration,
    /// A successful wake is reused by later callers for this long.
    pub reuse_for: Duration,
    /// Opt-in: the woken address must answer a Minecraft status ping before
    /// the wake counts as done (modded servers accept TCP while loading).
    pub ready_check: bool,
    /// Bound on one readiness status ping.
    pub ready_check_timeout: Duration,
    /// Finished wakes kept for `ListWakes`.
    pub history: usize,
}

/// Slack on top of the longest wake before a relayed one is given up.
const RELAYED_PHASE_GRACE: Duration = Duration::from_secs(10);

impl WakerConfig {
    /// How long a standby believes a wake or stop relayed from the active
    /// syncd whose end it has not heard (NOTIFY is not durable): the longest
    /// a wake can take there, with its last request and readiness check,
    /// and some slack (the instances run with the same waker flags).
    pub fn relayed_phase_ttl(&self) -> Duration {
        self.timeout + self.request_timeout + self.ready_check_timeout + RELAYED_PHASE_GRACE
    }
}

impl Default for WakerConfig {
    fn default() -> Self {
        Self {
            url: None,
            token: None,
            poll_interval: DEFAULT_WAKER_POLL_INTERVAL,
            timeout: DEFAULT_WAKER_TIMEOUT,
            request_timeout: DEFAULT_WAKER_REQUEST_TIMEOUT,
            reuse_for: DEFAULT_WAKE_REUSE,
            ready_check: false,
            ready_check_timeout: DEFAULT_READY_CHECK_TIMEOUT,
            history: DEFAULT_WAKE_HISTORY,
        }
    }
}

impl Default for Config {
    /// Test-friendly defaults: loopback on port 0. `database_url` must be set.
    fn default() -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            database_url: String::new(),
            grpc_listen: any,
            http_listen: any,
            grpc_token: None,
            allow_unauthenticated: false,
            accept: crate::accept::Limits::default(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            watcher_queue: DEFAULT_WATCHER_QUEUE,
            history_len: DEFAULT_HISTORY_LEN,
            watch_send_timeout: DEFAULT_WATCH_SEND_TIMEOUT,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            max_watchers_per_peer: DEFAULT_MAX_WATCHERS_PER_PEER,
            reconnect_min: DEFAULT_RECONNECT_MIN,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            pg_probe_interval: DEFAULT_PG_PROBE_INTERVAL,
            pg_probe_timeout: DEFAULT_PG_PROBE_TIMEOUT,
            waker: WakerConfig::default(),
            tls: None,
            leader_lock: None,
            edge_grace: crate::sleep::DEFAULT_EDGE_GRACE,
            counts_interval: DEFAULT_COUNTS_INTERVAL,
            sleep: crate::sleep::SleepConfig::default(),
            webhook_urls: Vec::new(),
            webhook_secret: None,
        }
    }
}

/// Who may call RouteSync, as decided at start from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcAuth {
    /// Every RPC but health and reflection needs the bearer token.
    Token,
    /// Only clients with a certificate from `--tls-client-ca` get in.
    MutualTls,
    /// No authentication, but only this host can connect.
    LoopbackOnly,
    /// No authentication on a reachable address: `--allow-unauthenticated`.
    Unauthenticated,
}

/// syncd would serve RouteSync open to the network without being told to.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "refusing to serve gRPC on {0} without authentication: anyone who reaches it could read \
     every backend address and wake every server. Set --grpc-token or --grpc-token-file \
     (SYNCD_GRPC_TOKEN, SYNCD_GRPC_TOKEN_FILE) and give the edges the same token, or require \
     client certificates with --tls-client-ca, or listen on a loopback address \
     (--grpc-listen 127.0.0.1:50051); --allow-unauthenticated serves it open anyway"
)]
pub struct Unprotected(pub SocketAddr);

/// A configuration syncd cannot run with (exit code 64 from `main`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no database URL: set --database-url, SYNCD_DATABASE_URL or AUTOMC_DSN")]
    NoDatabaseUrl,
    /// `dsn` is the redacted form ([`crate::dsn::redact`]).
    #[error("database URL {dsn}: {source}")]
    DatabaseUrl {
        dsn: String,
        source: crate::pg_tls::DbUrlError,
    },
    #[error(transparent)]
    Waker(crate::waker_client::WakerError),
    #[error("gRPC TLS: {0}")]
    Tls(#[source] crate::tls::TlsError),
    #[error(transparent)]
    Unprotected(#[from] Unprotected),
    #[error("--grpc-handshake-timeout must be greater than zero")]
    ZeroHandshakeTimeout,
    #[error(transparent)]
    TokenFile(#[from] automc_proto::auth::TokenFileError),
}

impl Config {
    /// Config for a database, everything else default.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            ..Self::default()
        }
    }

    /// How RouteSync is protected; an error when it would be open on a
    /// non-loopback address without `allow_unauthenticated`.
    pub fn grpc_auth(&self) -> Result<GrpcAuth, Unprotected> {
        if self.grpc_token.as_deref().is_some_and(|t| !t.is_empty()) {
            Ok(GrpcAuth::Token)
        } else if self.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
            Ok(GrpcAuth::MutualTls)
        } else if self.grpc_listen.ip().to_canonical().is_loopback() {
            Ok(GrpcAuth::LoopbackOnly)
        } else if self.allow_unauthenticated {
            Ok(GrpcAuth::Unauthenticated)
        } else {
            Err(Unprotected(self.grpc_listen))
        }
    }
}

fn redact(s: &Option<String>) -> &'static str {
    if s.is_some() {
        "Some(<redacted>)"
    } else {
        "None"
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &crate::dsn::redact(&self.database_url))
            .field("grpc_listen", &self.grpc_listen)
            .field("http_listen", &self.http_listen)
            .field("grpc_token", &redact(&self.grpc_token))
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .field("accept", &self.accept)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("watcher_queue", &self.watcher_queue)
            .field("history_len", &self.history_len)
            .field("watch_send_timeout", &self.watch_send_timeout)
            .field("hello_timeout", &self.hello_timeout)
            .field("max_watchers_per_peer", &self.max_watchers_per_peer)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("pg_probe_interval", &self.pg_probe_interval)
            .field("pg_probe_timeout", &self.pg_probe_timeout)
            .field("waker", &self.waker)
            .field("tls", &self.tls)
            .field("leader_lock", &self.leader_lock)
            .field("edge_grace", &self.edge_grace)
            .field("counts_interval", &self.counts_interval)
            .field("sleep", &self.sleep)
            .field("webhook_urls", &self.webhook_urls)
            .field("webhook_secret", &redact(&self.webhook_secret))
            .finish()
    }
}

impl fmt::Debug for WakerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WakerConfig")
            .field("url", &self.url)
            .field("token", &redact(&self.token))
            .field("poll_interval", &self.poll_interval)
            .field("timeout", &self.timeout)
            .field("request_timeout", &self.request_timeout)
            .field("reuse_for", &self.reuse_for)
            .field("ready_check", &self.ready_check)
            .field("ready_check_timeout", &self.ready_check_timeout)
            .field("history", &self.history)
            .finish()
    }
}

// --- Command line ------------------------------------------------------------------
// The clap structs `main` parses. Every default comes from a constant above
// (or the module that owns it), so `--help`, docs/configuration.md (generated
// from `--help`) and `Config::default()` cannot disagree.

#[derive(Parser)]
#[command(
    name = "syncd",
    version,
    about = "automc syncd: Postgres route table streamed to edges over gRPC; the one waker caller",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `serve` flags, accepted without the subcommand too.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand)]
pub enum Command {
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
pub struct InspectArgs {
    /// gRPC URL of the syncd to ask (http:// or https://).
    #[arg(long = "syncd", env = "SYNCD_URL", default_value = DEFAULT_SYNCD_URL)]
    pub url: String,
    /// Bearer token, when syncd requires one.
    #[arg(long, env = "SYNCD_GRPC_TOKEN", hide_env_values = true)]
    pub grpc_token: Option<String>,
    /// PEM CA bundle to verify an https:// syncd (default: the web roots).
    #[arg(long, env = "SYNCD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Where the operator commands look by default: a syncd on this host.
pub const DEFAULT_SYNCD_URL: &str = "http://127.0.0.1:50051";

#[derive(Args, Clone)]
pub struct DbArgs {
    /// Postgres DSN (URL or key=value). Falls back to AUTOMC_DSN.
    #[arg(long, env = "SYNCD_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Log format: text or json (RUST_LOG filters).
    #[arg(long, env = "SYNCD_LOG_FORMAT", value_enum, default_value_t = LogFormat::default())]
    pub log_format: LogFormat,
}

#[derive(Args, Clone)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Also print the NOTICE lines Postgres sends (e.g. "already exists, skipping").
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Args, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Waker base URL to probe. Falls back to AUTOMC_WAKER_URL.
    #[arg(long, env = "SYNCD_WAKER_URL")]
    pub waker_url: Option<String>,
}

#[derive(Args, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// gRPC address for edges and grpcurl.
    #[arg(long, env = "SYNCD_GRPC_LISTEN", default_value = DEFAULT_GRPC_LISTEN)]
    pub grpc_listen: SocketAddr,
    /// HTTP address for /metrics, /healthz, /readyz.
    #[arg(long, env = "SYNCD_HTTP_LISTEN", default_value = DEFAULT_HTTP_LISTEN)]
    pub http_listen: SocketAddr,
    /// Bearer token required on every RPC except health. Without it (or
    /// mutual TLS), syncd refuses a non-loopback --grpc-listen.
    #[arg(
        long,
        env = "SYNCD_GRPC_TOKEN",
        hide_env_values = true,
        conflicts_with = "grpc_token_file"
    )]
    pub grpc_token: Option<String>,
    /// File holding the gRPC token (surrounding whitespace is ignored).
    #[arg(long, env = "SYNCD_GRPC_TOKEN_FILE")]
    pub grpc_token_file: Option<PathBuf>,
    /// Serve gRPC on a non-loopback address without a token or mutual TLS
    /// anyway (warned at start; automc_syncd_grpc_unauthenticated is 1).
    #[arg(long, env = "SYNCD_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// A gRPC connection must finish its handshake (TLS and the HTTP/2
    /// preface) within this long of being accepted, or it is closed.
    #[arg(long, env = "SYNCD_GRPC_HANDSHAKE_TIMEOUT", default_value_t = DEFAULT_GRPC_HANDSHAKE_TIMEOUT.into())]
    pub grpc_handshake_timeout: humantime::Duration,
    /// gRPC connections open at once; more are refused at accept.
    #[arg(long, env = "SYNCD_GRPC_MAX_CONNECTIONS", default_value_t = DEFAULT_GRPC_MAX_CONNECTIONS, value_parser = at_least_one())]
    pub grpc_max_connections: usize,
    /// gRPC connections open at once from one peer IP address.
    #[arg(long, env = "SYNCD_GRPC_MAX_CONNECTIONS_PER_PEER", default_value_t = DEFAULT_GRPC_MAX_CONNECTIONS_PER_PEER, value_parser = at_least_one())]
    pub grpc_max_connections_per_peer: usize,
    /// gRPC connections from one peer IP address still in their handshake.
    #[arg(long, env = "SYNCD_GRPC_MAX_HANDSHAKES_PER_PEER", default_value_t = DEFAULT_GRPC_MAX_HANDSHAKES_PER_PEER, value_parser = at_least_one())]
    pub grpc_max_handshakes_per_peer: usize,
    /// Concurrent RPCs on one gRPC connection (HTTP/2 max concurrent streams).
    #[arg(long, env = "SYNCD_GRPC_MAX_STREAMS_PER_CONNECTION", default_value_t = DEFAULT_GRPC_MAX_STREAMS_PER_CONNECTION, value_parser = clap::value_parser!(u32).range(1..))]
    pub grpc_max_streams_per_connection: u32,
    /// Waker base URL; unset = wakes fail with "waker not configured".
    /// Falls back to AUTOMC_WAKER_URL.
    #[arg(long, env = "SYNCD_WAKER_URL")]
    pub waker_url: Option<String>,
    /// Sent as X-API-Key. Falls back to AUTOMC_WAKER_TOKEN.
    #[arg(
        long,
        env = "SYNCD_WAKER_TOKEN",
        hide_env_values = true,
        conflicts_with = "waker_token_file"
    )]
    pub waker_token: Option<String>,
    /// File holding the waker token (surrounding whitespace is ignored).
    #[arg(long, env = "SYNCD_WAKER_TOKEN_FILE")]
    pub waker_token_file: Option<PathBuf>,
    /// How often to poll the waker for the server's state.
    #[arg(long, env = "SYNCD_WAKER_POLL_INTERVAL", default_value_t = DEFAULT_WAKER_POLL_INTERVAL.into())]
    pub waker_poll_interval: humantime::Duration,
    /// Give up on a wake after this long.
    #[arg(long, env = "SYNCD_WAKER_TIMEOUT", default_value_t = DEFAULT_WAKER_TIMEOUT.into())]
    pub waker_timeout: humantime::Duration,
    /// Bound on each HTTP request to the waker.
    #[arg(long, env = "SYNCD_WAKER_REQUEST_TIMEOUT", default_value_t = DEFAULT_WAKER_REQUEST_TIMEOUT.into())]
    pub waker_request_timeout: humantime::Duration,
    /// A wake also needs the server to answer a Minecraft status ping.
    #[arg(long, env = "SYNCD_WAKER_READY_CHECK")]
    pub waker_ready_check: bool,
    /// Reuse a successful wake for this long.
    #[arg(long, env = "SYNCD_WAKE_REUSE", default_value_t = DEFAULT_WAKE_REUSE.into())]
    pub wake_reuse: humantime::Duration,
    /// Heartbeat on a watch stream idle for this long.
    #[arg(long, env = "SYNCD_HEARTBEAT_INTERVAL", default_value_t = DEFAULT_HEARTBEAT_INTERVAL.into())]
    pub heartbeat_interval: humantime::Duration,
    /// Messages queued per watcher before it is cut off as stuck.
    #[arg(long, env = "SYNCD_WATCHER_QUEUE", default_value_t = DEFAULT_WATCHER_QUEUE)]
    pub watcher_queue: usize,
    /// Change sets kept so reconnecting edges resume without a snapshot
    /// (together at most about one table's worth of routes).
    #[arg(long, env = "SYNCD_HISTORY", default_value_t = DEFAULT_HISTORY_LEN)]
    pub history: usize,
    /// Cut off a watcher that does not take a handed-out message (at most
    /// 64 KiB) within this long: it stopped reading.
    #[arg(long, env = "SYNCD_WATCH_SEND_TIMEOUT", default_value_t = DEFAULT_WATCH_SEND_TIMEOUT.into())]
    pub watch_send_timeout: humantime::Duration,
    /// A new WatchRoutes stream must send its WatchHello within this long (and waits at most this long for syncd's first read of the routes).
    #[arg(long, env = "SYNCD_HELLO_TIMEOUT", default_value_t = DEFAULT_HELLO_TIMEOUT.into())]
    pub hello_timeout: humantime::Duration,
    /// WatchRoutes streams open at once from one peer IP address.
    #[arg(long, env = "SYNCD_MAX_WATCHERS_PER_PEER", default_value_t = DEFAULT_MAX_WATCHERS_PER_PEER)]
    pub max_watchers_per_peer: usize,
    /// Probe the LISTEN connection with SELECT 1 this often.
    #[arg(long, env = "SYNCD_PG_PROBE_INTERVAL", default_value_t = DEFAULT_PG_PROBE_INTERVAL.into())]
    pub pg_probe_interval: humantime::Duration,
    /// PEM certificate chain: serve gRPC over TLS (needs --tls-key).
    #[arg(long, env = "SYNCD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "SYNCD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates chaining to it (mutual TLS).
    #[arg(long, env = "SYNCD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Check the TLS files this often; changed files are loaded without a restart.
    #[arg(long, env = "SYNCD_TLS_RELOAD_INTERVAL", default_value_t = crate::tls::DEFAULT_RELOAD_INTERVAL.into())]
    pub tls_reload_interval: humantime::Duration,
    /// Hot standby: syncd instances on one database sharing this Postgres
    /// advisory lock id elect one active instance that serves wakes.
    #[arg(long, env = "SYNCD_LEADER_LOCK")]
    pub leader_lock: Option<i64>,
    /// Export tracing spans over OTLP/gRPC to this collector, e.g.
    /// http://127.0.0.1:4317 (off when unset).
    #[arg(long, env = "SYNCD_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Ask the waker to stop a server nobody played on for this long
    /// (off when unset; server_options.sleep_after overrides per server).
    #[arg(long, env = "SYNCD_SLEEP_AFTER", value_parser = humantime::parse_duration)]
    pub sleep_after: Option<Duration>,
    /// Never stop a server sooner than this after it came up.
    #[arg(long, env = "SYNCD_MIN_UPTIME", default_value_t = crate::sleep::DEFAULT_MIN_UPTIME.into())]
    pub min_uptime: humantime::Duration,
    /// An edge whose stream dropped counts as unknown this long: its last
    /// player counts stand and no server sleeps meanwhile.
    #[arg(long, env = "SYNCD_EDGE_GRACE", default_value_t = crate::sleep::DEFAULT_EDGE_GRACE.into())]
    pub edge_grace: humantime::Duration,
    /// Send each edge the other edges' player counts (least-players,
    /// max_players) at most once per this long; changes in between merge.
    #[arg(long, env = "SYNCD_COUNTS_INTERVAL", default_value_t = DEFAULT_COUNTS_INTERVAL.into())]
    pub counts_interval: humantime::Duration,
    /// POST every fleet event (player joined/left, wake, sleep) as JSON to this
    /// URL (repeatable; comma list in the env var). Slow webhooks lose events, never slow syncd.
    #[arg(long, env = "SYNCD_WEBHOOK_URL", value_delimiter = ',')]
    pub webhook_url: Vec<String>,
    /// Sign webhook bodies: X-Automc-Signature: sha256=<hex HMAC-SHA256 of the body>.
    #[arg(long, env = "SYNCD_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Export automc_syncd_server_players{server} (turn off for very large fleets).
    #[arg(long, env = "SYNCD_PLAYER_METRICS_PER_SERVER", action = clap::ArgAction::Set, default_value_t = true)]
    pub player_metrics_per_server: bool,
}

fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

/// A flag's value, else the original automc variable; blank counts as unset.
pub fn env_fallback(value: Option<String>, legacy: &str) -> Option<String> {
    value
        .or_else(|| std::env::var(legacy).ok())
        .filter(|v| !v.trim().is_empty())
}

impl DbArgs {
    /// The DSN from the flag, its variable, or the original `AUTOMC_DSN`.
    pub fn database_url(&self) -> Result<String, ConfigError> {
        env_fallback(self.database_url.clone(), "AUTOMC_DSN").ok_or(ConfigError::NoDatabaseUrl)
    }
}

impl ServeArgs {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut c = Config::new(self.db.database_url()?);
        c.grpc_listen = self.grpc_listen;
        c.http_listen = self.http_listen;
        c.grpc_token = match &self.grpc_token_file {
            Some(path) => Some(automc_proto::auth::read_token_file(path)?),
            None => self.grpc_token.filter(|t| !t.is_empty()),
        };
        c.allow_unauthenticated = self.allow_unauthenticated;
        c.accept = crate::accept::Limits {
            handshake_timeout: self.grpc_handshake_timeout.into(),
            max_connections: self.grpc_max_connections,
            max_connections_per_peer: self.grpc_max_connections_per_peer,
            max_handshakes_per_peer: self.grpc_max_handshakes_per_peer,
            max_streams_per_connection: self.grpc_max_streams_per_connection,
        };
        c.heartbeat_interval = self.heartbeat_interval.into();
        c.watcher_queue = self.watcher_queue;
        c.history_len = self.history;
        c.watch_send_timeout = self.watch_send_timeout.into();
        c.hello_timeout = self.hello_timeout.into();
        c.max_watchers_per_peer = self.max_watchers_per_peer;
        c.pg_probe_interval = self.pg_probe_interval.into();
        c.waker.url = env_fallback(self.waker_url, "AUTOMC_WAKER_URL");
        c.waker.token = match &self.waker_token_file {
            Some(path) => Some(automc_proto::auth::read_token_file(path)?),
            None => env_fallback(self.waker_token, "AUTOMC_WAKER_TOKEN"),
        };
        c.waker.poll_interval = self.waker_poll_interval.into();
        c.waker.timeout = self.waker_timeout.into();
        c.waker.request_timeout = self.waker_request_timeout.into();
        c.waker.ready_check = self.waker_ready_check;
        c.waker.reuse_for = self.wake_reuse.into();
        c.leader_lock = self.leader_lock;
        c.edge_grace = self.edge_grace.into();
        c.counts_interval = self.counts_interval.into();
        c.webhook_urls = self
            .webhook_url
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        c.webhook_secret = self.webhook_secret.filter(|s| !s.is_empty());
        c.sleep = crate::sleep::SleepConfig {
            sleep_after: self.sleep_after.filter(|d| !d.is_zero()),
            min_uptime: self.min_uptime.into(),
            per_server_metrics: self.player_metrics_per_server,
        };
        c.tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert,
                key,
                client_ca: self.tls_client_ca,
                reload_interval: self.tls_reload_interval.into(),
            }),
            _ => None,
        };
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_secrets() {
        let mut c = Config::new("postgres://u:hunter2@db:5432/automc");
        c.grpc_token = Some("grpc-secret".into());
        c.waker.token = Some("waker-secret".into());
        c.webhook_secret = Some("hook-secret".into());
        let s = format!("{c:?}");
        for secret in ["hunter2", "grpc-secret", "waker-secret", "hook-secret"] {
            assert!(!s.contains(secret), "{secret} leaked: {s}");
        }
        assert!(s.contains("db:5432"));
    }

    #[test]
    fn grpc_on_a_reachable_address_needs_a_token_mutual_tls_or_an_explicit_opt_out() {
        let tls = |client_ca: Option<&str>| {
            let mut f = crate::tls::TlsFiles::new("c.pem", "k.pem");
            f.client_ca = client_ca.map(Into::into);
            Some(f)
        };
        // (listen, token, TLS files, --allow-unauthenticated, outcome)
        type Case = (
            &'static str,
            Option<&'static str>,
            Option<crate::tls::TlsFiles>,
            bool,
            Option<GrpcAuth>,
        );
        let cases: [Case; 9] = [
            ("0.0.0.0:50051", None, None, false, None),
            ("0.0.0.0:50051", Some(""), None, false, None),
            ("0.0.0.0:50051", None, tls(None), false, None),
            (
                "10.1.2.3:50051",
                Some("t"),
                None,
                false,
                Some(GrpcAuth::Token),
            ),
            (
                "[::]:50051",
                None,
                tls(Some("ca.pem")),
                false,
                Some(GrpcAuth::MutualTls),
            ),
            (
                "127.0.0.1:50051",
                None,
                None,
                false,
                Some(GrpcAuth::LoopbackOnly),
            ),
            (
                "[::1]:50051",
                None,
                None,
                false,
                Some(GrpcAuth::LoopbackOnly),
            ),
            (
                "[::ffff:127.0.0.1]:50051",
                None,
                None,
                false,
                Some(GrpcAuth::LoopbackOnly),
            ),
            (
                "0.0.0.0:50051",
                None,
                None,
                true,
                Some(GrpcAuth::Unauthenticated),
            ),
        ];
        for (listen, token, tls, allow, want) in cases {
            let mut c = Config::new("postgres://db/automc");
            c.grpc_listen = listen.parse().expect("address");
            c.grpc_token = token.map(Into::into);
            c.tls = tls;
            c.allow_unauthenticated = allow;
            assert_eq!(
                c.grpc_auth().ok(),
                want,
                "{listen} token={token:?} allow={allow}"
            );
        }
        let mut c = Config::new("postgres://db/automc");
        c.grpc_listen = DEFAULT_GRPC_LISTEN.parse().expect("address");
        let e = c
            .grpc_auth()
            .expect_err("the default address without a token");
        assert!(e.to_string().contains("--grpc-token"), "{e}");
    }

    #[test]
    fn the_admin_http_port_defaults_to_loopback() {
        let http: SocketAddr = DEFAULT_HTTP_LISTEN.parse().expect("address");
        assert!(http.ip().is_loopback());
    }
}
