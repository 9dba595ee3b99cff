//! syncd: one per Postgres database. It owns the single LISTEN connection on
//! the `servers` table, keeps the route table in memory, streams versioned
//! snapshots and deltas to every edge over gRPC, and is the only caller of
//! the HTTP waker.
//!
//! In-process entry point (what `main.rs` and the tests use):
//! [`start`] binds the listeners and spawns everything, returning a
//! [`Running`] with the bound addresses; [`Running::wait`] resolves once the
//! shutdown token is cancelled and everything has stopped.
#![forbid(unsafe_code)]

pub mod accept;
pub mod check;
pub mod config;
pub mod counts;
pub mod diff;
pub mod dsn;
pub mod events;
pub mod fleet;
pub mod grpc;
pub mod http;
pub mod inspect;
pub mod leader;
pub mod metrics;
pub mod options;
pub mod pg;
pub mod pg_tls;
pub mod pieces;
pub mod publisher;
pub mod schema;
pub mod servers;
pub mod sleep;
pub mod tls;
pub mod wake;
pub mod waker_client;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, ConfigError, WakerConfig};
pub use metrics::Metrics;

/// Why syncd could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("reflection descriptors: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("HTTP admin server: {0}")]
    Http(std::io::Error),
    #[error("task panicked: {0}")]
    Panic(#[source] tokio::task::JoinError),
}

/// A started syncd.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Epoch id of this start (edges see it in every snapshot).
    pub epoch: String,
    pub metrics: Metrics,
    /// True once the first full read of the routes is done.
    pub ready: watch::Receiver<bool>,
    /// True while this instance serves wakes (always, without `leader_lock`).
    pub active: watch::Receiver<bool>,
    shutdown: CancellationToken,
    servers: Vec<JoinHandle<Result<(), Error>>>,
    tasks: TaskTracker,
}

impl Running {
    /// The token that stops this syncd (a child of the one given to `start`).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Wait until shut down (or a server failed, which shuts down the rest).
    pub async fn wait(self) -> Result<(), Error> {
        let mut first_err = None;
        for h in self.servers {
            let r = match h.await {
                Ok(r) => r,
                Err(e) => Err(Error::Panic(e)),
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        self.tasks.close();
        self.tasks.wait().await;
        first_err.map_or(Ok(()), Err)
    }
}

/// Validate the config, bind both listeners and start every task.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    if config.database_url.trim().is_empty() {
        return Err(ConfigError::NoDatabaseUrl.into());
    }
    let (mut pg, pg_tls) =
        pg_tls::parse(&config.database_url).map_err(|source| ConfigError::DatabaseUrl {
            dsn: dsn::redact(&config.database_url),
            source,
        })?;
    if let Some(w) = pg_tls::split(&config.database_url)
        .ok()
        .and_then(|s| dsn::tls_warning(s.mode))
    {
        tracing::warn!(db = %dsn::redact(&config.database_url), "{w}");
    }
    pg.application_name("automc-syncd")
        .keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(30));
    let shutdown = shutdown.child_token();
    let metrics = Metrics::new();
    let waker = match &config.waker.url {
        Some(url) if !url.trim().is_empty() => Some(
            waker_client::WakerClient::new(
                url.trim(),
                config.waker.token.clone(),
                config.waker.request_timeout,
                metrics.clone(),
            )
            .map_err(ConfigError::Waker)?,
        ),
        _ => None,
    };
    let tls = match &config.tls {
        Some(files) => Some(tls::ServerTls::new(files.clone()).map_err(ConfigError::Tls)?),
        None => None,
    };
    let grpc_auth = config.grpc_auth().map_err(ConfigError::from)?;
    if config.accept.handshake_timeout.is_zero() {
        return Err(ConfigError::ZeroHandshakeTimeout.into());
    }
    let grpc_listener = bind("gRPC", config.grpc_listen).await?;
    let http_listener = bind("HTTP", config.http_listen).await?;
    let grpc_addr = local_addr("gRPC", config.grpc_listen, &grpc_listener)?;
    let http_addr = local_addr("HTTP", config.http_listen, &http_listener)?;

    let tasks = TaskTracker::new();
    let publisher = publisher::Publisher::new(
        publisher::WatchLimits {
            queue_cap: config.watcher_queue,
            history_len: config.history_len,
            heartbeat: config.heartbeat_interval,
            send_timeout: config.watch_send_timeout,
            per_peer: config.max_watchers_per_peer,
        },
        metrics.clone(),
        shutdown.clone(),
    );
    tasks.spawn(publisher.clone().enforce_deadlines());
    let epoch = publisher.epoch().to_owned();
    let (ready_tx, ready_rx) = watch::channel(false);
    let (relay_tx, relay_rx) = tokio::sync::mpsc::unbounded_channel();
    let events = events::Events::new(metrics.clone());
    let wakes = wake::Wakes::new(
        config.waker.clone(),
        waker,
        publisher.clone(),
        metrics.clone(),
        events.clone(),
        shutdown.clone(),
        tasks.clone(),
        relay_tx,
    );
    for url in &config.webhook_urls {
        tasks.spawn(events::webhook(
            events.clone(),
            url.clone(),
            config.webhook_secret.clone(),
            shutdown.clone(),
        ));
    }
    let fleet = Arc::new(fleet::Fleet::new(
        config.edge_grace,
        metrics.clone(),
        events.clone(),
    ));
    tasks.spawn(counts::run(
        publisher.clone(),
        fleet.clone(),
        metrics.clone(),
        config.counts_interval,
        shutdown.clone(),
    ));
    let target = dsn::redact(&config.database_url);
    tracing::info!(
        %grpc_addr,
        %http_addr,
        epoch = %epoch,
        db = %target,
        waker = config.waker.url.as_deref().unwrap_or("(none)"),
        auth = ?grpc_auth,
        tls = config.tls.is_some(),
        sleep_after = ?config.sleep.sleep_after,
        "syncd starting"
    );
    if grpc_auth == config::GrpcAuth::Unauthenticated {
        metrics.grpc_unauthenticated.set(1);
        tracing::warn!(
            %grpc_addr,
            "gRPC is served WITHOUT authentication on a reachable address \
             (--allow-unauthenticated): anyone who reaches it can read every backend address \
             and wake every server; set --grpc-token or --tls-client-ca"
        );
    }
    if let Some(t) = &tls {
        tasks.spawn(t.clone().watch(shutdown.clone()));
    }
    let (active_tx, active_rx) = watch::channel(config.leader_lock.is_none());
    if let Some(lock_id) = config.leader_lock {
        tasks.spawn(
            leader::Election {
                pg: pg.clone(),
                tls: pg_tls.clone(),
                target: target.clone(),
                lock_id,
                retry: leader::DEFAULT_RETRY,
                active: active_tx,
                shutdown: shutdown.clone(),
            }
            .run(),
        );
    }
    let sleeper = sleep::Sleeper::new(
        config.sleep,
        publisher.clone(),
        fleet.clone(),
        wakes.clone(),
        metrics.clone(),
        active_rx.clone(),
    );
    tasks.spawn(sleeper.clone().run(shutdown.clone()));
    let hook_wakes = wakes.clone();
    let hook_sleeper = sleeper.clone();
    let listener = pg::Listener {
        pg,
        tls: pg_tls,
        target,
        publisher: publisher.clone(),
        metrics: metrics.clone(),
        ready: ready_tx,
        on_change: Arc::new(move |c| {
            hook_wakes.routes_changed(c);
            hook_sleeper.routes_changed(c);
        }),
        reconnect_min: config.reconnect_min,
        reconnect_max: config.reconnect_max.max(config.reconnect_min),
        probe_interval: config.pg_probe_interval,
        probe_timeout: config.pg_probe_timeout,
        relayed_phase_ttl: config.waker.relayed_phase_ttl(),
        wake_relay: tokio::sync::Mutex::new(relay_rx),
        shutdown: shutdown.clone(),
    };
    tasks.spawn(tracing::Instrument::instrument(
        listener.run(),
        tracing::info_span!("pg_listener"),
    ));

    let grpc = {
        let shutdown = shutdown.clone();
        let ready = ready_rx.clone();
        let token = config.grpc_token.clone();
        let active_rx_grpc = active_rx.clone();
        let hello_timeout = config.hello_timeout;
        let gate = accept::Gate::new(config.accept, &metrics);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let incoming =
                accept::incoming(grpc_listener, gate.clone(), tls, metrics, shutdown.clone());
            let r = grpc::serve(
                incoming,
                gate.limits(),
                publisher,
                wakes,
                token.as_deref(),
                ready,
                active_rx_grpc,
                hello_timeout,
                fleet,
                sleeper,
                events,
                shutdown.clone(),
            )
            .await;
            if let Err(e) = &r {
                tracing::error!(error = %e, "gRPC server failed; shutting down");
                shutdown.cancel();
            }
            r
        })
    };
    let http = {
        let shutdown = shutdown.clone();
        let router = http::router(metrics.clone(), ready_rx.clone(), shutdown.clone());
        tokio::spawn(async move {
            let r = http::serve(http_listener, router, shutdown.clone())
                .await
                .map_err(Error::Http);
            if let Err(e) = &r {
                tracing::error!(error = %e, "HTTP admin server failed; shutting down");
                shutdown.cancel();
            }
            r
        })
    };
    Ok(Running {
        grpc_addr,
        http_addr,
        epoch,
        metrics,
        ready: ready_rx,
        active: active_rx,
        shutdown,
        servers: vec![grpc, http],
        tasks,
    })
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { what, addr, source })
}

fn local_addr(what: &'static str, addr: SocketAddr, l: &TcpListener) -> Result<SocketAddr, Error> {
    l.local_addr()
        .map_err(|source| Error::Bind { what, addr, source })
}

/// Run `syncd migrate` against a database: what was there before, what is
/// there now, and the server's NOTICEs (shown with `-v`).
pub async fn migrate(database_url: &str) -> Result<schema::MigrateReport, pg_tls::ConnectError> {
    let (mut client, driver) = pg_tls::connect(database_url).await?;
    let r = async {
        let before = schema::detect(&client).await?;
        schema::migrate(&mut client).await?;
        let after = schema::detect(&client).await?;
        Ok::<_, tokio_postgres::Error>((before, after))
    }
    .await;
    drop(client);
    let notices = driver.await.unwrap_or_default();
    let (before, after) = r?;
    Ok(schema::MigrateReport {
        before,
        after,
        notices,
    })
}

/// Run `syncd check` against a database.
pub async fn check(database_url: &str) -> Result<Vec<check::Finding>, pg_tls::ConnectError> {
    let (client, driver) = pg_tls::connect(database_url).await?;
    let r = check::check(&client).await;
    drop(client);
    let _ = driver.await;
    Ok(r?)
}
