//! Edge configuration: the plain [`Config`] that [`crate::start`] takes
//! (tests build it directly) and the clap [`Args`] that `main` parses, with
//! an environment variable behind every flag (SPEC §7).
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;

use crate::limits::LimitsConfig;
use automc_proto::sync::MAX_EDGE_ID_BYTES;

/// The player port: open to the world, that is the product.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:25565";
/// `/metrics` and probes: this host only unless told otherwise.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
/// `EdgeAdmin` (routes with backend addresses, players' IPs): this host only
/// unless told otherwise.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:50052";
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The vanilla client gives up after ~30 s without a packet while logging in.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(25);
/// Clients from 1.13 are kept alive while held, so their hold may last a whole wake
/// (syncd's default wake timeout).
pub const DEFAULT_LONG_HOLD_TIMEOUT: Duration = Duration::from_secs(90);
/// Well inside the vanilla client's 30 s read timeout, even with a lost packet or two.
pub const DEFAULT_HOLD_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_STATUS_CACHE_TTL: Duration = Duration::from_secs(1);
pub const DEFAULT_STATUS_STALE_FOR: Duration = Duration::from_secs(60);
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);
/// A full session report (and not only what changed) this often.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_SYNC_BACKOFF_MIN: Duration = Duration::from_millis(200);
pub const DEFAULT_SYNC_BACKOFF_MAX: Duration = Duration::from_secs(10);
pub const DEFAULT_ASLEEP_MOTD: &str = "§7Server is asleep. §fJoin to wake it up!";
/// `{elapsed}` and `{waiting}` are filled in per ping (see `status::render_starting_motd`).
pub const DEFAULT_STARTING_MOTD: &str = "§eServer is starting ({elapsed}s), §fplease wait...";
pub const DEFAULT_STOPPING_MOTD: &str = "§6Server is going to sleep. §fJoin to wake it up again!";
/// `{reason}` is the failure's category (see `status::failure_words`).
pub const DEFAULT_FAILED_MOTD: &str =
    "§cServer could not be started ({reason}). §fTry again later.";
/// How long after a failed wake status pings show the failed MOTD.
pub const DEFAULT_FAILED_MOTD_FOR: Duration = Duration::from_secs(60);
pub const DEFAULT_UNKNOWN_HOST: &str = "§cUnknown server address";

/// What an unknown hostname gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownHost {
    /// Status pings get this MOTD, logins a Disconnect with it.
    Motd(String),
    /// The connection is closed without an answer.
    Close,
}

impl UnknownHost {
    pub fn parse(s: &str) -> Self {
        if s.trim().eq_ignore_ascii_case("close") {
            Self::Close
        } else {
            Self::Motd(s.to_owned())
        }
    }
}

/// Everything [`crate::start`] needs. `Debug` is written by hand so the
/// gRPC token never reaches a log.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// syncd gRPC URLs, tried in rotation.
    pub syncd: Vec<String>,
    pub grpc_token: Option<String>,
    pub http_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    /// Bearer token `EdgeAdmin` calls must carry (health and reflection stay
    /// open). `None` = open to whoever reaches `grpc_listen`.
    pub admin_token: Option<String>,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    /// Longest silent hold (clients before 1.13, or with the keep-alive off).
    pub hold_timeout: Duration,
    /// Longest kept-alive hold (clients from 1.13).
    pub long_hold_timeout: Duration,
    /// Login Plugin Request interval while a 1.13+ login is held (zero = off: every
    /// client gets the silent `hold_timeout`).
    pub hold_keepalive_interval: Duration,
    pub drain_timeout: Duration,
    pub asleep_motd: String,
    pub starting_motd: String,
    /// Shown while syncd's stop of the server is in flight.
    pub stopping_motd: String,
    /// Shown for `failed_motd_for` after a failed wake (zero = never).
    pub failed_motd: String,
    pub failed_motd_for: Duration,
    pub unknown_host: UnknownHost,
    /// Player names (from Login Start, unverified) that may wake a sleeping
    /// server; empty = anyone.
    pub wake_allow_players: Vec<String>,
    pub proxy_protocol_trusted: Vec<IpNet>,
    pub send_proxy_protocol: bool,
    /// Client addresses admitted (empty: all) and refused, for every server,
    /// checked on the real address (after a trusted PROXY header).
    pub allow_cidrs: Vec<IpNet>,
    pub deny_cidrs: Vec<IpNet>,
    /// How long a backend whose dial failed is tried after the others.
    pub backend_backoff: Duration,
    pub edge_id: String,
    /// How long a backend's status answer is reused as fresh.
    pub status_cache_ttl: Duration,
    /// How long the last good status may be served, marked stale, while the
    /// backend is unreachable.
    pub status_stale_for: Duration,
    /// Most status answers cached (LRU beyond).
    pub status_cache_size: usize,
    /// Answer status pings from the cache, or relay them to the backend.
    pub status_mode: crate::status::StatusMode,
    /// Most pipes kept for zero-copy splicing (0 = copy through user space).
    pub splice_pipes: usize,
    /// A spliced session whose peer takes no bytes this long is cut.
    pub stall_timeout: Duration,
    /// A watch stream silent this long (no heartbeat) is reconnected.
    pub heartbeat_timeout: Duration,
    pub sync_backoff_min: Duration,
    pub sync_backoff_max: Duration,
    /// A full report of the live sessions to syncd this often (changes go
    /// at once, at most one report per 250 ms).
    pub report_interval: Duration,
    /// Admission limits on the player port (zero = no limit).
    pub limits: LimitsConfig,
    /// CA and client certificate for `https://` syncd URLs.
    pub syncd_tls: crate::tls::SyncdTls,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_addr(DEFAULT_LISTEN),
            syncd: Vec::new(),
            grpc_token: None,
            http_listen: default_addr(DEFAULT_HTTP_LISTEN),
            grpc_listen: default_addr(DEFAULT_GRPC_LISTEN),
            admin_token: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            hold_timeout: DEFAULT_HOLD_TIMEOUT,
            long_hold_timeout: DEFAULT_LONG_HOLD_TIMEOUT,
            hold_keepalive_interval: DEFAULT_HOLD_KEEPALIVE_INTERVAL,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            asleep_motd: DEFAULT_ASLEEP_MOTD.to_owned(),
            starting_motd: DEFAULT_STARTING_MOTD.to_owned(),
            stopping_motd: DEFAULT_STOPPING_MOTD.to_owned(),
            failed_motd: DEFAULT_FAILED_MOTD.to_owned(),
            failed_motd_for: DEFAULT_FAILED_MOTD_FOR,
            unknown_host: UnknownHost::Motd(DEFAULT_UNKNOWN_HOST.to_owned()),
            wake_allow_players: Vec::new(),
            proxy_protocol_trusted: Vec::new(),
            send_proxy_protocol: false,
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            backend_backoff: crate::balance::DEFAULT_BACKEND_BACKOFF,
            edge_id: default_edge_id(),
            status_cache_ttl: DEFAULT_STATUS_CACHE_TTL,
            status_stale_for: DEFAULT_STATUS_STALE_FOR,
            status_cache_size: crate::status::DEFAULT_CACHE_ENTRIES,
            status_mode: crate::status::StatusMode::Cache,
            splice_pipes: crate::splice::DEFAULT_PIPES,
            stall_timeout: crate::splice::DEFAULT_STALL_TIMEOUT,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            sync_backoff_min: DEFAULT_SYNC_BACKOFF_MIN,
            sync_backoff_max: DEFAULT_SYNC_BACKOFF_MAX,
            report_interval: DEFAULT_REPORT_INTERVAL,
            limits: LimitsConfig::default(),
            syncd_tls: crate::tls::SyncdTls::default(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("syncd", &self.syncd)
            .field(
                "grpc_token",
                &self.grpc_token.as_ref().map(|_| "<redacted>"),
            )
            .field("http_listen", &self.http_listen)
            .field("grpc_listen", &self.grpc_listen)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("handshake_timeout", &self.handshake_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("hold_timeout", &self.hold_timeout)
            .field("long_hold_timeout", &self.long_hold_timeout)
            .field("hold_keepalive_interval", &self.hold_keepalive_interval)
            .field("drain_timeout", &self.drain_timeout)
            .field("asleep_motd", &self.asleep_motd)
            .field("starting_motd", &self.starting_motd)
            .field("stopping_motd", &self.stopping_motd)
            .field("failed_motd", &self.failed_motd)
            .field("failed_motd_for", &self.failed_motd_for)
            .field("unknown_host", &self.unknown_host)
            .field("wake_allow_players", &self.wake_allow_players)
            .field("proxy_protocol_trusted", &self.proxy_protocol_trusted)
            .field("send_proxy_protocol", &self.send_proxy_protocol)
            .field("allow_cidrs", &self.allow_cidrs)
            .field("deny_cidrs", &self.deny_cidrs)
            .field("backend_backoff", &self.backend_backoff)
            .field("edge_id", &self.edge_id)
            .field("status_cache_ttl", &self.status_cache_ttl)
            .field("status_stale_for", &self.status_stale_for)
            .field("status_cache_size", &self.status_cache_size)
            .field("status_mode", &self.status_mode)
            .field("splice_pipes", &self.splice_pipes)
            .field("stall_timeout", &self.stall_timeout)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("report_interval", &self.report_interval)
            .field("limits", &self.limits)
            .field("syncd_tls", &self.syncd_tls)
            .finish_non_exhaustive()
    }
}

/// The `DEFAULT_*_LISTEN` constants are literals that parse.
fn default_addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

fn default_edge_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("edge-{}", std::process::id()))
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no syncd endpoint: pass --syncd (or EDGE_SYNCD) at least once")]
    NoSyncd,
    #[error("syncd endpoint {0:?} is not an http:// or https:// URL")]
    BadSyncdUrl(String),
    #[error("TLS to syncd: {0}")]
    Tls(#[source] crate::tls::TlsError),
    #[error("--hold-timeout must be greater than zero")]
    ZeroHoldTimeout,
    #[error("--long-hold-timeout must be greater than zero")]
    ZeroLongHoldTimeout,
    #[error(
        "--wake-allow-players entry {0:?} is not a player name (1 to 16 characters, no spaces)"
    )]
    BadPlayerName(String),
    #[error("--edge-id is {0} bytes long; the most syncd takes is {MAX_EDGE_ID_BYTES}")]
    LongEdgeId(usize),
    #[error(transparent)]
    TokenFile(#[from] automc_proto::auth::TokenFileError),
}

impl Config {
    /// Check what clap cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.syncd.is_empty() {
            return Err(ConfigError::NoSyncd);
        }
        for url in &self.syncd {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(ConfigError::BadSyncdUrl(url.clone()));
            }
        }
        self.syncd_tls
            .validate(&self.syncd)
            .map_err(ConfigError::Tls)?;
        if self.hold_timeout.is_zero() {
            return Err(ConfigError::ZeroHoldTimeout);
        }
        if self.long_hold_timeout.is_zero() {
            return Err(ConfigError::ZeroLongHoldTimeout);
        }
        if let Some(bad) = self
            .wake_allow_players
            .iter()
            .find(|n| !mcproto::is_listable_username(n))
        {
            return Err(ConfigError::BadPlayerName(bad.clone()));
        }
        if self.edge_id.len() > MAX_EDGE_ID_BYTES {
            return Err(ConfigError::LongEdgeId(self.edge_id.len()));
        }
        Ok(())
    }
}

pub use automc_telemetry::LogFormat;

/// Command line of `edge`.
#[derive(Parser, Clone)]
#[command(
    name = "edge",
    version,
    about = "automc edge: Minecraft hostname proxy fed by syncd"
)]
pub struct Args {
    /// Player listen address.
    #[arg(long, env = "EDGE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// syncd gRPC URL; repeat (or comma-separate in EDGE_SYNCD) for several.
    #[arg(
        long = "syncd",
        env = "EDGE_SYNCD",
        value_delimiter = ',',
        required = true
    )]
    pub syncd: Vec<String>,
    /// Bearer token presented to syncd.
    #[arg(
        long,
        env = "EDGE_GRPC_TOKEN",
        hide_env_values = true,
        conflicts_with = "grpc_token_file"
    )]
    pub grpc_token: Option<String>,
    /// File holding the token presented to syncd (surrounding whitespace is ignored).
    #[arg(long, env = "EDGE_GRPC_TOKEN_FILE")]
    pub grpc_token_file: Option<PathBuf>,
    /// HTTP admin address (/metrics, /healthz, /readyz).
    #[arg(long, env = "EDGE_HTTP_LISTEN", default_value = DEFAULT_HTTP_LISTEN)]
    pub http_listen: SocketAddr,
    /// gRPC admin address (EdgeAdmin, health, reflection).
    #[arg(long, env = "EDGE_GRPC_LISTEN", default_value = DEFAULT_GRPC_LISTEN)]
    pub grpc_listen: SocketAddr,
    /// Bearer token EdgeAdmin calls must carry (health and reflection stay open).
    #[arg(
        long,
        env = "EDGE_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    pub admin_token: Option<String>,
    /// File holding the EdgeAdmin token (surrounding whitespace is ignored).
    #[arg(long, env = "EDGE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Longest wait for a complete handshake.
    #[arg(long, env = "EDGE_HANDSHAKE_TIMEOUT", default_value_t = DEFAULT_HANDSHAKE_TIMEOUT.into())]
    pub handshake_timeout: humantime::Duration,
    /// Longest wait for a backend to accept a TCP connection.
    #[arg(long, env = "EDGE_CONNECT_TIMEOUT", default_value_t = DEFAULT_CONNECT_TIMEOUT.into())]
    pub connect_timeout: humantime::Duration,
    /// Longest a login of a client before 1.13 is held (silently) while its server wakes; keep under ~30s.
    #[arg(long, env = "EDGE_HOLD_TIMEOUT", default_value_t = DEFAULT_HOLD_TIMEOUT.into())]
    pub hold_timeout: humantime::Duration,
    /// Longest a login of a 1.13+ client is held, kept alive with Login Plugin Requests, while its server wakes.
    #[arg(long, env = "EDGE_LONG_HOLD_TIMEOUT", default_value_t = DEFAULT_LONG_HOLD_TIMEOUT.into())]
    pub long_hold_timeout: humantime::Duration,
    /// Interval of the Login Plugin Requests that keep a held 1.13+ login alive (0s = off: every client gets --hold-timeout).
    #[arg(long, env = "EDGE_HOLD_KEEPALIVE_INTERVAL", default_value_t = DEFAULT_HOLD_KEEPALIVE_INTERVAL.into())]
    pub hold_keepalive_interval: humantime::Duration,
    /// Longest wait for connections to finish after SIGTERM.
    #[arg(long, env = "EDGE_DRAIN_TIMEOUT", default_value_t = DEFAULT_DRAIN_TIMEOUT.into())]
    pub drain_timeout: humantime::Duration,
    /// MOTD shown for a server that is stopped or unreachable.
    #[arg(long, env = "EDGE_ASLEEP_MOTD", default_value = DEFAULT_ASLEEP_MOTD)]
    pub asleep_motd: String,
    /// MOTD shown while a server is waking; `{elapsed}` = seconds since the wake began, `{waiting}` = logins held on this edge.
    #[arg(long, env = "EDGE_STARTING_MOTD", default_value = DEFAULT_STARTING_MOTD)]
    pub starting_motd: String,
    /// MOTD shown while syncd asks the waker to stop an idle server (a login meanwhile is held and wakes it again).
    #[arg(long, env = "EDGE_STOPPING_MOTD", default_value = DEFAULT_STOPPING_MOTD)]
    pub stopping_motd: String,
    /// MOTD shown for --failed-motd-for after a wake failed; `{reason}` = why (waker refused, waker unreachable, timed out, not ready, ...).
    #[arg(long, env = "EDGE_FAILED_MOTD", default_value = DEFAULT_FAILED_MOTD)]
    pub failed_motd: String,
    /// How long after a failed wake status pings show --failed-motd (0s = never: the asleep MOTD at once).
    #[arg(long, env = "EDGE_FAILED_MOTD_FOR", default_value_t = DEFAULT_FAILED_MOTD_FOR.into())]
    pub failed_motd_for: humantime::Duration,
    /// What an unknown hostname gets: a MOTD text, or the word `close`.
    #[arg(long, env = "EDGE_UNKNOWN_HOST", default_value = DEFAULT_UNKNOWN_HOST)]
    pub unknown_host: String,
    /// Only these player names (comma list, case-insensitive) may wake a sleeping server; others get "this server is asleep". A server's server_options.wake_allow_players replaces it. Names are not verified by a pass-through router: a convenience, not security.
    #[arg(long, env = "EDGE_WAKE_ALLOW_PLAYERS", value_delimiter = ',')]
    pub wake_allow_players: Vec<String>,
    /// CIDRs allowed to send a PROXY protocol header (comma list).
    #[arg(long, env = "EDGE_PROXY_PROTOCOL_TRUSTED", value_delimiter = ',')]
    pub proxy_protocol_trusted: Vec<IpNet>,
    /// Send a PROXY protocol v2 header to backends.
    #[arg(long, env = "EDGE_SEND_PROXY_PROTOCOL")]
    pub send_proxy_protocol: bool,
    /// Only these client CIDRs may connect to any server (comma list; empty: everyone).
    #[arg(long, env = "EDGE_ALLOW_CIDRS", value_delimiter = ',')]
    pub allow_cidrs: Vec<IpNet>,
    /// Client CIDRs refused for every server (comma list; wins over allow lists).
    #[arg(long, env = "EDGE_DENY_CIDRS", value_delimiter = ',')]
    pub deny_cidrs: Vec<IpNet>,
    /// How long a backend whose dial failed is tried only after a server's other backends.
    #[arg(long, env = "EDGE_BACKEND_BACKOFF", default_value_t = crate::balance::DEFAULT_BACKEND_BACKOFF.into())]
    pub backend_backoff: humantime::Duration,
    /// Id shown by syncd's ListEdges, at most 255 bytes (default: $HOSTNAME).
    #[arg(long, env = "EDGE_ID")]
    pub edge_id: Option<String>,
    /// How long a backend's status answer is reused as fresh.
    #[arg(long, env = "EDGE_STATUS_CACHE_TTL", default_value_t = DEFAULT_STATUS_CACHE_TTL.into())]
    pub status_cache_ttl: humantime::Duration,
    /// How long a backend's last good status is served, marked stale.
    #[arg(long, env = "EDGE_STATUS_STALE_FOR", default_value_t = DEFAULT_STATUS_STALE_FOR.into())]
    pub status_stale_for: humantime::Duration,
    /// Most backend status answers cached (least recently used go first).
    #[arg(long, env = "EDGE_STATUS_CACHE_SIZE", default_value_t = crate::status::DEFAULT_CACHE_ENTRIES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub status_cache_size: usize,
    /// Status pings of a running backend: `cache` (answered by the edge) or `relay` (forwarded byte for byte).
    #[arg(long, env = "EDGE_STATUS_MODE", value_enum, default_value_t = crate::status::StatusMode::default())]
    pub status_mode: crate::status::StatusMode,
    /// Most pipes kept for zero-copy splice on Linux (0 = always copy through user space).
    #[arg(long, env = "EDGE_SPLICE_PIPES", default_value_t = crate::splice::DEFAULT_PIPES)]
    pub splice_pipes: usize,
    /// How long a spliced session may wait on a player or backend that takes no bytes (its TCP window stays shut) before it is cut.
    #[arg(long, env = "EDGE_STALL_TIMEOUT", default_value_t = crate::splice::DEFAULT_STALL_TIMEOUT.into())]
    pub stall_timeout: humantime::Duration,
    /// Send syncd a full report of the live sessions this often (what changed
    /// goes at once, at most one report per 250 ms).
    #[arg(long, env = "EDGE_REPORT_INTERVAL", default_value_t = DEFAULT_REPORT_INTERVAL.into())]
    pub report_interval: humantime::Duration,
    /// Most concurrent player connections (0 = no limit).
    #[arg(long, env = "EDGE_MAX_CONNECTIONS", default_value_t = LimitsConfig::default().max_connections)]
    pub max_connections: usize,
    /// Most concurrent connections from one IP (0 = no limit).
    #[arg(long, env = "EDGE_MAX_CONNECTIONS_PER_IP", default_value_t = LimitsConfig::default().max_connections_per_ip)]
    pub max_connections_per_ip: usize,
    /// Most logins from one IP held at once while their server wakes (0 = no limit).
    #[arg(long, env = "EDGE_MAX_HELD_LOGINS_PER_IP", default_value_t = LimitsConfig::default().max_held_logins_per_ip)]
    pub max_held_logins_per_ip: usize,
    /// New connections per second from one IP (0 = no limit).
    #[arg(long, env = "EDGE_RATE_PER_IP", default_value_t = LimitsConfig::default().rate_per_ip)]
    pub rate_per_ip: f64,
    /// Burst of new connections one IP may open at once.
    #[arg(long, env = "EDGE_RATE_BURST", default_value_t = LimitsConfig::default().rate_burst)]
    pub rate_burst: f64,
    /// IPv4 prefix length counted as one source by the per-IP limits.
    #[arg(long, env = "EDGE_IP_PREFIX_V4", default_value_t = crate::limits::DEFAULT_IPV4_PREFIX, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub ip_prefix_v4: u8,
    /// IPv6 prefix length counted as one source by the per-IP limits.
    #[arg(long, env = "EDGE_IP_PREFIX_V6", default_value_t = crate::limits::DEFAULT_IPV6_PREFIX, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub ip_prefix_v6: u8,
    /// Log format.
    #[arg(long, env = "EDGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::default())]
    pub log_format: LogFormat,
    /// Export tracing spans over OTLP/gRPC to this collector, e.g.
    /// http://127.0.0.1:4317 (off when unset).
    #[arg(long, env = "EDGE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

impl fmt::Debug for Args {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Args")
            .field("listen", &self.listen)
            .field("syncd", &self.syncd)
            .field(
                "grpc_token",
                &self.grpc_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// A token from its flag or, when given, its file.
fn token(value: Option<String>, file: Option<&Path>) -> Result<Option<String>, ConfigError> {
    match file {
        Some(path) => Ok(Some(automc_proto::auth::read_token_file(path)?)),
        None => Ok(value.filter(|t| !t.is_empty())),
    }
}

impl Args {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let syncd = self
            .syncd
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let d = Config::default();
        let cfg = Config {
            listen: self.listen,
            syncd,
            grpc_token: token(self.grpc_token, self.grpc_token_file.as_deref())?,
            http_listen: self.http_listen,
            grpc_listen: self.grpc_listen,
            admin_token: token(self.admin_token, self.admin_token_file.as_deref())?,
            handshake_timeout: self.handshake_timeout.into(),
            connect_timeout: self.connect_timeout.into(),
            hold_timeout: self.hold_timeout.into(),
            long_hold_timeout: self.long_hold_timeout.into(),
            hold_keepalive_interval: self.hold_keepalive_interval.into(),
            drain_timeout: self.drain_timeout.into(),
            asleep_motd: self.asleep_motd,
            starting_motd: self.starting_motd,
            stopping_motd: self.stopping_motd,
            failed_motd: self.failed_motd,
            failed_motd_for: self.failed_motd_for.into(),
            unknown_host: UnknownHost::parse(&self.unknown_host),
            wake_allow_players: self
                .wake_allow_players
                .iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect(),
            proxy_protocol_trusted: self.proxy_protocol_trusted,
            send_proxy_protocol: self.send_proxy_protocol,
            allow_cidrs: self.allow_cidrs,
            deny_cidrs: self.deny_cidrs,
            backend_backoff: self.backend_backoff.into(),
            edge_id: self.edge_id.unwrap_or(d.edge_id),
            status_cache_ttl: self.status_cache_ttl.into(),
            status_stale_for: self.status_stale_for.into(),
            status_cache_size: self.status_cache_size,
            status_mode: self.status_mode,
            splice_pipes: self.splice_pipes,
            stall_timeout: self.stall_timeout.into(),
            report_interval: self.report_interval.into(),
            limits: LimitsConfig {
                max_connections: self.max_connections,
                max_connections_per_ip: self.max_connections_per_ip,
                max_held_logins_per_ip: self.max_held_logins_per_ip,
                rate_per_ip: self.rate_per_ip,
                rate_burst: self.rate_burst,
                ipv4_prefix: self.ip_prefix_v4,
                ipv6_prefix: self.ip_prefix_v6,
            },
            syncd_tls: self.tls.into(),
            ..Config::default()
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_into_config() {
        let args = Args::try_parse_from([
            "edge",
            "--syncd",
            "http://a:1",
            "--syncd",
            "http://b:2",
            "--hold-timeout",
            "20s",
            "--unknown-host",
            "close",
            "--proxy-protocol-trusted",
            "10.0.0.0/8,127.0.0.1/32",
            "--grpc-token",
            "sekrit",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!format!("{args:?}").contains("sekrit"));
        let cfg = args.into_config().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.syncd, ["http://a:1", "http://b:2"]);
        assert_eq!(cfg.hold_timeout, Duration::from_secs(20));
        assert_eq!(cfg.unknown_host, UnknownHost::Close);
        assert_eq!(cfg.proxy_protocol_trusted.len(), 2);
        assert!(!format!("{cfg:?}").contains("sekrit"));
    }

    #[test]
    fn admin_ports_default_to_loopback_and_the_player_port_does_not() {
        let cfg = Args::try_parse_from(["edge", "--syncd", "http://a:1"])
            .unwrap_or_else(|e| panic!("{e}"))
            .into_config()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(cfg.http_listen.ip().is_loopback(), "{}", cfg.http_listen);
        assert!(cfg.grpc_listen.ip().is_loopback(), "{}", cfg.grpc_listen);
        assert!(cfg.listen.ip().is_unspecified(), "{}", cfg.listen);
        let d = Config::default();
        assert_eq!(
            (d.listen, d.http_listen, d.grpc_listen),
            (cfg.listen, cfg.http_listen, cfg.grpc_listen)
        );
        assert_eq!(cfg.admin_token, None);
    }

    #[test]
    fn the_admin_token_comes_from_its_flag_or_its_file() {
        let dir = std::env::temp_dir().join(format!("automc-edge-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("admin-token");
        std::fs::write(&file, "from-file\n").unwrap_or_else(|e| panic!("{e}"));
        let parse = |extra: &[&str]| {
            let mut argv = vec!["edge", "--syncd", "http://a:1"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv).map(Args::into_config)
        };
        let from_flag = parse(&["--admin-token", "from-flag"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            from_flag
                .unwrap_or_else(|e| panic!("{e}"))
                .admin_token
                .as_deref(),
            Some("from-flag")
        );
        let path = file.to_string_lossy().into_owned();
        let from_file = parse(&["--admin-token-file", &path]).unwrap_or_else(|e| panic!("{e}"));
        let cfg = from_file.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.admin_token.as_deref(), Some("from-file"));
        assert!(!format!("{cfg:?}").contains("from-file"));
        assert!(parse(&["--admin-token", "a", "--admin-token-file", &path]).is_err());
        std::fs::write(&file, "").unwrap_or_else(|e| panic!("{e}"));
        let empty = parse(&["--admin-token-file", &path]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(empty, Err(ConfigError::TokenFile(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn wake_allow_players_are_trimmed_and_must_be_player_names() {
        let parse = |list: &str| {
            Args::try_parse_from([
                "edge",
                "--syncd",
                "http://a:1",
                "--wake-allow-players",
                list,
            ])
            .unwrap_or_else(|e| panic!("{e}"))
            .into_config()
        };
        let cfg = parse("Notch, alex ,").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.wake_allow_players, ["Notch", "alex"]);
        assert!(matches!(
            parse("Notch,two words"),
            Err(ConfigError::BadPlayerName(n)) if n == "two words"
        ));
    }

    #[test]
    fn bad_syncd_url_is_rejected() {
        let args = Args::try_parse_from(["edge", "--syncd", "localhost:50051"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            args.into_config(),
            Err(ConfigError::BadSyncdUrl(_))
        ));
    }

    #[test]
    fn an_edge_id_longer_than_syncd_takes_is_rejected() {
        let parse = |id: &str| {
            Args::try_parse_from(["edge", "--syncd", "http://a:1", "--edge-id", id])
                .unwrap_or_else(|e| panic!("{e}"))
                .into_config()
        };
        let longest = "e".repeat(MAX_EDGE_ID_BYTES);
        assert!(parse(&longest).is_ok());
        assert!(matches!(
            parse(&format!("{longest}e")),
            Err(ConfigError::LongEdgeId(n)) if n == MAX_EDGE_ID_BYTES + 1
        ));
    }

    #[test]
    fn unknown_host_word_close_is_case_insensitive() {
        assert_eq!(UnknownHost::parse("Close"), UnknownHost::Close);
        assert_eq!(
            UnknownHost::parse("No such server"),
            UnknownHost::Motd("No such server".into())
        );
    }
}
