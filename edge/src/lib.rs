//! automc edge: the player-facing Minecraft hostname proxy.
//!
//! [`start`] binds the player port and both admin ports, starts the route
//! stream from syncd and returns a [`Running`] handle; cancelling the
//! shutdown token drains (stop accepting, turn not-ready, let connections
//! finish up to `drain_timeout`, then cut them). `main` only parses flags and
//! calls `start`, so tests run the very same server in-process on port 0.
#![forbid(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod config;
pub mod conn;
pub mod counts;
pub mod hold;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod registry;
pub mod report;
pub mod routes;
pub mod splice;
pub mod status;
pub mod sync_client;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::{Args, Config, ConfigError, LogFormat, UnknownHost};
pub use routes::{Routes, TableView};

/// Why the edge could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sync(#[from] sync_client::SetupError),
    #[error("admin HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("admin gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("edge supervisor task panicked: {0}")]
    Panic(#[source] tokio::task::JoinError),
}

/// State every connection and admin handler shares.
pub struct Shared {
    pub config: Config,
    pub routes: Arc<Routes>,
    pub metrics: Arc<metrics::Metrics>,
    pub sync: Arc<sync_client::SyncClient>,
    pub conns: Arc<registry::Connections>,
    pub status_cache: status::StatusCache,
    /// Pipes lent to spliced sessions while their bytes flow.
    pub pipes: splice::PipePool,
    pub admission: limits::Admission,
    /// Logins held while their server wakes, per server and per source address.
    pub held: Arc<hold::HeldLogins>,
    /// Backend choice: dial backoffs, round-robin turns, player seats.
    pub balancer: balance::Balancer,
    /// Refusals are logged at most once a second (a flood must not flood the logs).
    pub refusal_log: limits::LogThrottle,
    draining: AtomicBool,
}

impl Shared {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Ready: a first snapshot is applied and the edge is not draining.
    pub fn is_ready(&self) -> bool {
        self.routes.has_snapshot() && !self.is_draining()
    }
}

/// A started edge.
pub struct Running {
    pub listen_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Resolves once the edge has drained and stopped.
    pub async fn wait(self) -> Result<(), Error> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(Error::Panic(e)),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }

    /// The route table this edge serves now.
    pub fn table(&self) -> Arc<TableView> {
        self.shared.routes.view()
    }

    /// Live player connections.
    pub fn active_connections(&self) -> usize {
        self.shared.conns.len()
    }

    pub fn sync_status(&self) -> automc_proto::v1::SyncStatus {
        self.shared.sync.sync_status()
    }

    /// Prometheus text, as `/metrics` serves it.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render()
    }
}

/// Accept queue length asked of the kernel (capped by `net.core.somaxconn`):
/// bursts of pings must not overflow it, or players wait a SYN retransmit.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    let bind = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bind().map_err(|source| Error::Bind { addr, source })
}

fn local(l: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    l.local_addr().unwrap_or(fallback)
}

/// Bind every port, start syncing, serve until `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    config.validate()?;
    let players = bind(config.listen).await?;
    let http = bind(config.http_listen).await?;
    let grpc = bind(config.grpc_listen).await?;
    let listen_addr = local(&players, config.listen);
    let http_addr = local(&http, config.http_listen);
    let grpc_addr = local(&grpc, config.grpc_listen);

    let routes = Arc::new(Routes::new());
    let metrics = Arc::new(metrics::Metrics::new());
    let conns = Arc::new(registry::Connections::default());
    let sync = Arc::new(sync_client::SyncClient::new(
        &config,
        routes.clone(),
        conns.clone(),
        metrics.clone(),
    )?);
    let shared = Arc::new(Shared {
        status_cache: status::StatusCache::new(config.status_cache_size),
        pipes: splice::PipePool::new(config.splice_pipes),
        admission: limits::Admission::new(config.limits),
        held: Arc::default(),
        balancer: balance::Balancer::new(config.backend_backoff, routes.counts.clone()),
        refusal_log: limits::LogThrottle::new(Duration::from_secs(1)),
        config,
        routes,
        metrics,
        sync: sync.clone(),
        conns,
        draining: AtomicBool::new(false),
    });

    let sync_stop = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let accept_stop = CancellationToken::new();
    let cut = CancellationToken::new();
    let tracker = TaskTracker::new();

    let sync_task = tokio::spawn(sync.run(sync_stop.clone()));
    let http_task = tokio::spawn(admin::serve_http(http, shared.clone(), admin_stop.clone()));
    let grpc_task = tokio::spawn(admin::serve_grpc(grpc, shared.clone(), admin_stop.clone()));
    let accept_task = tokio::spawn(listener::accept_loop(
        players,
        shared.clone(),
        accept_stop.clone(),
        cut.clone(),
        tracker.clone(),
    ));
    info!(%listen_addr, %http_addr, %grpc_addr, "edge listening");
    if shared.config.admin_token.is_none() && !grpc_addr.ip().to_canonical().is_loopback() {
        warn!(
            %grpc_addr,
            "EdgeAdmin is served without --admin-token on a reachable address: anyone who \
             reaches it can list backend addresses and players' IPs"
        );
    }

    let sup_shared = shared.clone();
    let task = tokio::spawn(async move {
        shutdown.cancelled().await;
        let drain = sup_shared.config.drain_timeout;
        sup_shared.draining.store(true, Ordering::Release);
        accept_stop.cancel();
        let _ = accept_task.await;
        tracker.close();
        info!(active = sup_shared.conns.len(), drain_timeout = ?drain, "draining");
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            warn!(
                active = sup_shared.conns.len(),
                "drain timeout reached; cutting the remaining connections"
            );
            cut.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        }
        sync_stop.cancel();
        admin_stop.cancel();
        let _ = sync_task.await;
        let http = http_task.await;
        let grpc = grpc_task.await;
        info!("edge stopped");
        if let Ok(Err(e)) = http {
            return Err(Error::Http(e));
        }
        if let Ok(Err(e)) = grpc {
            return Err(Error::Grpc(e));
        }
        Ok(())
    });

    Ok(Running {
        listen_addr,
        http_addr,
        grpc_addr,
        shared,
        task,
    })
}
