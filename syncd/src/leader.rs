//! Hot standby (opt-in, `--leader-lock <id>`): several syncd instances on
//! one database elect the one that calls the waker with a Postgres
//! session-level advisory lock.
//!
//! Every instance LISTENs and keeps a warm route table and serves watches
//! (edges can sync from any of them). Only the holder of the lock is
//! *active*: it serves `Wake`. A standby answers `Wake` with
//! `ABORTED`, and the edge then asks its next `--syncd`
//! endpoint. The lock lives on its own connection: when the active instance
//! dies or loses Postgres, Postgres frees the lock and a standby takes it at
//! its next try (every `retry`). An active instance that loses its lock
//! connection steps down at once; one whose connection is silently dead
//! notices at the next probe (within `retry` plus the probe timeout), so for
//! that short window two instances may both wake, which the waker's 409
//! ("already starting") makes harmless.
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_RETRY: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The election task for one instance.
pub struct Election {
    pub pg: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub target: String,
    /// Advisory lock id; every instance of one deployment uses the same.
    pub lock_id: i64,
    pub retry: Duration,
    pub active: watch::Sender<bool>,
    pub shutdown: CancellationToken,
}

impl Election {
    pub async fn run(self) {
        loop {
            self.step_down();
            if self.shutdown.is_cancelled() {
                return;
            }
            if let Err(e) = self.session().await {
                tracing::warn!(db = %self.target, error = %e, "leader lock connection lost; standing by");
            }
            self.step_down();
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.retry) => {}
            }
        }
    }

    fn step_down(&self) {
        if *self.active.borrow() {
            tracing::warn!(
                lock = self.lock_id,
                "no longer the active syncd: wakes go to another instance"
            );
        }
        self.active.send_replace(false);
    }

    async fn session(&self) -> Result<(), LockLost> {
        let (client, conn) = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(()),
            r = tokio::time::timeout(CONNECT_TIMEOUT, self.pg.connect(self.tls.clone())) => {
                r.map_err(|_| LockLost::ConnectTimeout(CONNECT_TIMEOUT))??
            }
        };
        let mut driver = tokio::spawn(conn);
        loop {
            let step = async {
                if *self.active.borrow() {
                    client.simple_query("SELECT 1").await.map(|_| ())
                } else {
                    let row = client
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&self.lock_id])
                        .await?;
                    if row.get::<_, bool>(0) {
                        tracing::info!(
                            lock = self.lock_id,
                            "holding the leader lock: this syncd is active and serves wakes"
                        );
                        self.active.send_replace(true);
                    }
                    Ok(())
                }
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    driver.abort();
                    return Ok(());
                }
                r = &mut driver => return Err(LockLost::ended(r)),
                r = tokio::time::timeout(PROBE_TIMEOUT, step) => {
                    r.map_err(|_| LockLost::ProbeTimeout(PROBE_TIMEOUT))??;
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    driver.abort();
                    return Ok(());
                }
                r = &mut driver => return Err(LockLost::ended(r)),
                _ = tokio::time::sleep(self.retry) => {}
            }
        }
    }
}

/// Why the lock connection ended (the lock is gone with it).
#[derive(Debug, thiserror::Error)]
enum LockLost {
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("no answer within {0:?}")]
    ProbeTimeout(Duration),
    #[error("connection closed")]
    Closed,
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("connection task failed: {0}")]
    Driver(#[source] tokio::task::JoinError),
}

impl LockLost {
    /// The connection's driver task ended.
    fn ended(r: Result<Result<(), tokio_postgres::Error>, tokio::task::JoinError>) -> Self {
        match r {
            Ok(Ok(())) => Self::Closed,
            Ok(Err(e)) => Self::Postgres(e),
            Err(e) => Self::Driver(e),
        }
    }
}
