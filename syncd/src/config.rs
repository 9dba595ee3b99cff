//! Runtime configuration of syncd: a plain struct that `main.rs` fills from
//! the command line and tests fill by hand (listen on `127.0.0.1:0`).
//!
//! `Debug` is written by hand so the DSN password and the tokens never reach
//! a log line.
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub const DEFAULT_GRPC_LISTEN: &str = "0.0.0.0:50051";
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:9090";
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_WATCHER_QUEUE: usize = 1024;
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
    /// A watch stream that carried nothing for this long gets a heartbeat.
    pub heartbeat_interval: Duration,
    /// Messages queued per watcher before it counts as stuck and is cut off.
    pub watcher_queue: usize,
    /// Change sets kept so a reconnecting edge can resume without a
    /// snapshot (also bounded to about one table's worth of routes).
    pub history_len: usize,
    /// A watcher handed a message (at most 256 KiB) that it does not take
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
    /// Opt-in sleeping of idle servers, and the player gauges.
    pub sleep: crate::sleep::SleepConfig,
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
            sleep: crate::sleep::SleepConfig::default(),
        }
    }
}

impl Config {
    /// Config for a database, everything else default.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            ..Self::default()
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
            .field(
                "database_url",
                &crate::schema::redact_dsn(&self.database_url),
            )
            .field("grpc_listen", &self.grpc_listen)
            .field("http_listen", &self.http_listen)
            .field("grpc_token", &redact(&self.grpc_token))
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
            .field("sleep", &self.sleep)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_secrets() {
        let mut c = Config::new("postgres://u:hunter2@db:5432/automc");
        c.grpc_token = Some("grpc-secret".into());
        c.waker.token = Some("waker-secret".into());
        let s = format!("{c:?}");
        for secret in ["hunter2", "grpc-secret", "waker-secret"] {
            assert!(!s.contains(secret), "{secret} leaked: {s}");
        }
        assert!(s.contains("db:5432"));
    }
}
