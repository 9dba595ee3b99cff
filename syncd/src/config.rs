//! Runtime configuration of syncd: a plain struct that `main.rs` fills from
//! the command line and tests fill by hand (listen on `127.0.0.1:0`).
//!
//! `Debug` is written by hand so the DSN password and the tokens never reach
//! a log line.
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

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
