//! The one Postgres LISTEN connection.
//!
//! On every (re)connect: LISTEN first, then read every route, then diff, so
//! no change can slip between the read and the first notification. Then wait
//! for notifications; a burst is drained and coalesced into one re-read
//! (only the named servers when the payload names them, everything when it
//! is empty, as the original automc trigger sends). A lost connection is
//! retried with backoff (1 s doubling to 30 s, reset once a session is
//! healthy); the route table keeps serving meanwhile. A timed `SELECT 1`
//! notices a dead TCP path that keepalives would take hours to report.
//!
//! The connection is driven by our own task calling `poll_message` (a plain
//! `spawn(connection)` drops notifications), and it forwards payloads into
//! an unbounded channel so it can never block on the consumer, which awaits
//! queries on the same connection.
use std::collections::BTreeSet;
use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, Client, Connection, Statement};
use tokio_util::sync::CancellationToken;

use crate::diff::{self, Change, Routes};
use crate::metrics::Metrics;
use crate::publisher::Publisher;
use crate::schema::{self, Payload, Shape};

/// A batch larger than this is re-read in full: one scan beats a huge `ANY`.
const MAX_NAMED_REREAD: usize = 10_000;
/// Read rounds merged into one change set before publishing, so a large
/// transaction whose notifications arrive in several socket reads still
/// becomes one delta, while a steady stream still gets published.
const MAX_ROUNDS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("table `servers` does not exist: run `syncd migrate`")]
    MissingTable,
    #[error("connection closed{}", .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Closed(Option<tokio_postgres::Error>),
    #[error("keepalive probe got no answer within {0:?}")]
    ProbeTimeout(Duration),
}

/// Called with every applied change set (the wake coordinator watches for
/// `state = running`; the sleeper keeps each route's `sleep_after`).
pub type ChangeHook = Arc<dyn Fn(&Change) + Send + Sync>;

pub struct Listener {
    pub pg: tokio_postgres::Config,
    /// TLS per the DSN's `sslmode` (see `pg_tls`).
    pub tls: tokio_postgres_rustls::MakeRustlsConnect,
    pub target: String,
    pub publisher: Arc<Publisher>,
    pub metrics: Metrics,
    pub ready: watch::Sender<bool>,
    pub on_change: ChangeHook,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    /// How long a relayed wake or stop is believed without its end: about
    /// the longest the active syncd's wake can take.
    pub relayed_phase_ttl: Duration,
    /// Wake phases this instance announces (payloads for `automc_wakes`).
    pub wake_relay: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    pub shutdown: CancellationToken,
}

/// A notification, by channel.
#[derive(Debug)]
enum Note {
    Routes(String),
    Wake(String),
}

/// Servers to re-read, or everything.
#[derive(Debug, Default)]
struct Pending {
    everything: bool,
    names: BTreeSet<String>,
}

impl Pending {
    fn add(&mut self, payload: &str) {
        match schema::parse_payload(payload) {
            Payload::Everything => self.everything = true,
            Payload::Server(name) => {
                self.names.insert(name);
            }
        }
    }

    fn is_empty(&self) -> bool {
        !self.everything && self.names.is_empty()
    }

    fn wants_everything(&self) -> bool {
        self.everything || self.names.len() > MAX_NAMED_REREAD
    }
}

/// Fresh rows gathered over one or more read rounds.
enum Fresh {
    All(Routes),
    Some(BTreeSet<String>, Routes),
}

impl Listener {
    pub async fn run(self) {
        let mut backoff = self.reconnect_min;
        let mut attempt = 0u64;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            if attempt > 0 {
                self.metrics.pg_reconnects.inc();
            }
            attempt += 1;
            let result = self.session(&mut backoff).await;
            self.metrics.pg_connected.set(0);
            match result {
                Ok(()) => return,
                Err(e) => tracing::warn!(
                    db = %self.target,
                    error = %e,
                    retry_in = ?backoff,
                    "postgres LISTEN connection lost; routes keep serving from memory"
                ),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.reconnect_max);
        }
    }

    /// One connection's life. `Ok` only on shutdown.
    async fn session(&self, backoff: &mut Duration) -> Result<(), ListenError> {
        let connect_timeout = Duration::from_secs(10);
        let (client, conn) = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(()),
            r = tokio::time::timeout(connect_timeout, self.pg.connect(self.tls.clone())) => {
                r.map_err(|_| ListenError::ConnectTimeout(connect_timeout))??
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let driver = AbortOnDrop(tokio::spawn(drive(conn, tx)));

        let mut shape = schema::detect(&client).await?;
        if !shape.has_servers {
            return Err(ListenError::MissingTable);
        }
        client
            .batch_execute(&format!(
                "LISTEN {}; LISTEN {}",
                schema::CHANNEL,
                schema::WAKE_CHANNEL
            ))
            .await?;
        // Only this session sends on the relay; the lock is ours alone.
        let mut relay = self.wake_relay.lock().await;
        let mut queries = Queries::prepare(&client, shape).await?;
        // Every route change notified so far is covered by the full read below.
        while let Ok(n) = rx.try_recv() {
            if let Note::Wake(p) = n {
                self.relayed_wake(&p);
            }
        }
        let mut pending = Pending {
            everything: true,
            names: BTreeSet::new(),
        };
        let mut probe = tokio::time::interval(self.probe_interval);
        probe.reset();
        let mut first = true;
        loop {
            if pending.is_empty() {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return Ok(()),
                    n = rx.recv() => match n {
                        Some(n) => {
                            self.note(n, &mut pending);
                            continue;
                        }
                        None => return Err(ListenError::Closed(driver.finish().await)),
                    },
                    Some(payload) = relay.recv() => {
                        announce_wake(&client, &payload).await?;
                        continue;
                    }
                    _ = probe.tick() => {
                        self.probe(&client).await?;
                        continue;
                    }
                }
            }
            self.drain(&mut rx, &mut pending);
            if !shape.is_current() {
                // `syncd migrate` (or an operator adding a table) may have
                // run while we were connected: look again so new columns and
                // tables are read. One catalog query per read, and only on a
                // database that is not current.
                let now = schema::detect(&client).await?;
                if now != shape {
                    shape = now;
                    queries = Queries::prepare(&client, shape).await?;
                    pending.everything = true;
                    tracing::info!(
                        ?shape,
                        "schema changed while connected; reading everything again"
                    );
                }
            }
            pending = self.reread(&client, &queries, pending, &mut rx).await?;
            // Under a steady stream of changes the loop is seldom idle: wake
            // phases waiting to be announced go out between re-reads too.
            while let Ok(payload) = relay.try_recv() {
                announce_wake(&client, &payload).await?;
            }
            if first {
                first = false;
                tracing::info!(
                    db = %self.target,
                    routes = self.publisher.with_table(|t, _| t.len()),
                    version = self.publisher.version(),
                    enabled_column = shape.has_enabled,
                    alias_table = shape.has_aliases,
                    "postgres LISTEN connection up; routes read"
                );
                self.metrics.pg_connected.set(1);
                self.ready.send_replace(true);
                *backoff = self.reconnect_min;
            }
        }
    }

    fn drain(&self, rx: &mut mpsc::UnboundedReceiver<Note>, pending: &mut Pending) {
        while let Ok(n) = rx.try_recv() {
            self.note(n, pending);
        }
    }

    fn note(&self, n: Note, pending: &mut Pending) {
        match n {
            Note::Routes(payload) => {
                self.metrics.notifications.inc();
                pending.add(&payload);
            }
            Note::Wake(payload) => self.relayed_wake(&payload),
        }
    }

    /// A wake phase announced by a syncd (the active one, when this is a
    /// standby): tell this instance's watchers. Our own announcements were
    /// told already.
    fn relayed_wake(&self, payload: &str) {
        match crate::wake::parse_relay(payload) {
            Some(r) if r.epoch != self.publisher.epoch() => {
                tracing::debug!(server = %r.server, phase = ?r.phase, from.epoch = %r.epoch, "relaying a wake phase");
                let until = std::time::Instant::now() + self.relayed_phase_ttl;
                self.publisher
                    .set_relayed_wake(&r.server, r.phase, r.failure, until);
            }
            Some(_) => {}
            None => tracing::debug!(
                payload,
                "ignoring an automc_wakes payload of another format"
            ),
        }
    }

    async fn probe(&self, client: &Client) -> Result<(), ListenError> {
        match tokio::time::timeout(self.probe_timeout, client.simple_query("SELECT 1")).await {
            Ok(r) => r.map(|_| ()).map_err(ListenError::from),
            Err(_) => Err(ListenError::ProbeTimeout(self.probe_timeout)),
        }
    }

    /// Read what `pending` asks for, keep reading what arrives meanwhile (up
    /// to [`MAX_ROUNDS`]), publish it as one change set. Returns what is left.
    async fn reread(
        &self,
        client: &Client,
        q: &Queries,
        mut pending: Pending,
        rx: &mut mpsc::UnboundedReceiver<Note>,
    ) -> Result<Pending, ListenError> {
        let mut fresh: Option<Fresh> = None;
        for _ in 0..MAX_ROUNDS {
            if pending.is_empty() {
                break;
            }
            let batch = std::mem::take(&mut pending);
            self.metrics.reloads.inc();
            if batch.wants_everything() {
                let rows = read_rows(client, &q.all, &[]).await?;
                fresh = Some(Fresh::All(self.to_routes(rows)));
            } else {
                let names: Vec<&String> = batch.names.iter().collect();
                let rows = read_rows(client, &q.some, &[&names]).await?;
                let got = self.to_routes(rows);
                fresh = Some(match fresh.take() {
                    None => Fresh::Some(batch.names, got),
                    Some(Fresh::All(mut all)) => {
                        for n in &batch.names {
                            all.remove(n);
                        }
                        all.extend(got);
                        Fresh::All(all)
                    }
                    Some(Fresh::Some(mut set, mut all)) => {
                        for n in &batch.names {
                            all.remove(n);
                        }
                        all.extend(got);
                        set.extend(batch.names);
                        Fresh::Some(set, all)
                    }
                });
            }
            self.drain(rx, &mut pending);
        }
        let applied = match &fresh {
            None => None,
            Some(Fresh::All(routes)) => self.publisher.apply_full(routes),
            Some(Fresh::Some(names, routes)) => self.publisher.apply_some(names, routes),
        };
        if let Some((a, change)) = applied {
            tracing::debug!(version = a.version, changes = a.changes, "routes changed");
            (self.on_change)(&change);
            self.publisher.compact_if_due().await;
        }
        Ok(pending)
    }
}

struct Queries {
    all: Statement,
    some: Statement,
}

impl Queries {
    async fn prepare(client: &Client, shape: Shape) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            all: client.prepare(&shape.read_query(false)).await?,
            some: client.prepare(&shape.read_query(true)).await?,
        })
    }
}

impl Listener {
    /// Decode rows into routes; refused backend and options rows are logged
    /// and counted here (the rest of the read goes on).
    fn to_routes(&self, rows: Vec<diff::ServerRow>) -> Routes {
        let (routes, problems) = diff::routes_from_rows(rows);
        for p in problems {
            self.metrics.row_skipped(p.table);
            tracing::warn!(
                table = p.table,
                server = %p.server,
                key = p.key.as_deref().unwrap_or(""),
                reason = %p.reason,
                "{p}; the rest keeps syncing (syncd check lists it)"
            );
        }
        routes
    }
}

/// Announce a wake phase of this instance on `automc_wakes` (for standbys).
/// A refused payload (too long) must not cost the LISTEN connection; a
/// closed connection is this session's end.
async fn announce_wake(client: &Client, payload: &str) -> Result<(), ListenError> {
    match client
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&schema::WAKE_CHANNEL, &payload],
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if client.is_closed() => Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "could not announce a wake phase to standbys");
            Ok(())
        }
    }
}

/// Run a read query, decoding each row as it arrives: the raw rows of a
/// whole-table read (about 600 bytes each) are never all held at once.
async fn read_rows(
    client: &Client,
    query: &Statement,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<diff::ServerRow>, tokio_postgres::Error> {
    use futures::TryStreamExt;
    let stream = client.query_raw(query, params.iter().copied()).await?;
    futures::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(row) = stream.try_next().await? {
        out.push(schema::server_row(&row)?);
    }
    Ok(out)
}

/// Drive the connection, forwarding notification payloads.
async fn drive<S, T>(
    mut conn: Connection<S, T>,
    tx: mpsc::UnboundedSender<Note>,
) -> Result<(), tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                // The receiver only goes away when the session ends.
                let payload = n.payload().to_owned();
                let note = if n.channel() == schema::WAKE_CHANNEL {
                    Note::Wake(payload)
                } else {
                    Note::Routes(payload)
                };
                let _ = tx.send(note);
            }
            Some(Ok(AsyncMessage::Notice(n))) => {
                tracing::debug!(notice = %n.message(), "postgres notice");
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
    }
}

/// The connection driver task, aborted when the session ends.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>);

impl AbortOnDrop {
    async fn finish(mut self) -> Option<tokio_postgres::Error> {
        match (&mut self.0).await {
            Ok(Err(e)) => Some(e),
            _ => None,
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_coalesces_payloads() {
        let mut p = Pending::default();
        assert!(p.is_empty());
        for _ in 0..1000 {
            p.add("server:a");
        }
        p.add("server:b");
        assert_eq!(p.names.len(), 2);
        assert!(!p.wants_everything());
        p.add("");
        assert!(p.wants_everything());
    }
}
