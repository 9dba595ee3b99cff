//! The edge's side of `automc.v1.RouteSync`: a `WatchRoutes` stream kept open
//! against the configured syncd endpoints (rotating on failure, backoff with
//! jitter), feeding [`Routes`], and the `Wake` call used by held logins.
//!
//! Resume rules (see the .proto): the hello carries the epoch and version
//! held, so syncd can answer with only the missed deltas. A delta that does
//! not start at the held version, or a heartbeat naming another version,
//! means this edge missed something: the stream is dropped and the next
//! hello asks for a full snapshot. The last table keeps serving meanwhile.
//!
//! Snapshots and big deltas arrive in pieces of at most `CHUNK_BYTES` (64 KiB)
//! ([`automc_proto::sync`] reassembles them); a new table is built aside and
//! swapped in whole when its last piece arrives. The client's decode limit
//! is set explicitly to [`MAX_MESSAGE_BYTES`].
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automc_proto::auth::BearerToken;
use automc_proto::sync::{
    whole_table, Assembler, Event, FramingError, TableHashMismatch, MAX_MESSAGE_BYTES,
};
use automc_proto::v1::route_sync_client::RouteSyncClient;
use automc_proto::v1::{
    watch_request, Heartbeat, WakePhase, WakeRequest, WakeResponse, WakeUpdate, WatchAck,
    WatchHello, WatchRequest,
};
use automc_proto::RouteTable;
use automc_proto::WakeFailure;
use futures::StreamExt;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, WatchStream};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::metrics::Metrics;
use crate::registry::Connections;
use crate::routes::Routes;
use crate::Config;

type Client = RouteSyncClient<InterceptedService<Channel, BearerToken>>;

/// Why a watch stream ended.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("syncd call failed: {0}")]
    Status(#[from] Status),
    #[error("no message from syncd within {0:?} (heartbeat timeout)")]
    HeartbeatTimeout(Duration),
    #[error("syncd closed the stream")]
    Ended,
    #[error("missed a change (held {held}, got a delta from {from}): resubscribing")]
    Gap { held: u64, from: u64 },
    #[error("heartbeat names version {theirs}, held {held}: resubscribing")]
    Behind { held: u64, theirs: u64 },
    #[error("delta for epoch {0:?} does not match the held epoch: resubscribing")]
    OtherEpoch(String),
    #[error("{0}: resubscribing")]
    Framing(#[from] FramingError),
    #[error("{0}: asking for a full snapshot")]
    HashMismatch(#[from] TableHashMismatch),
}

impl SyncError {
    /// A resync is an orderly step, not a failing endpoint.
    fn is_resync(&self) -> bool {
        matches!(
            self,
            Self::Gap { .. }
                | Self::Behind { .. }
                | Self::OtherEpoch(_)
                | Self::Framing(_)
                | Self::HashMismatch(_)
        )
    }
}

/// Why a wake did not give an address. Each maps to a message a player can
/// act on; the texts here are for logs only.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WakeError {
    #[error("the server did not start within the hold timeout")]
    Timeout,
    /// syncd answered with a typed reason; `detail` is its message, for logs.
    #[error("the server could not be started ({}): {detail}", failure.label())]
    Failed {
        failure: WakeFailure,
        detail: String,
    },
    #[error("syncd unreachable: {0}")]
    Unreachable(String),
}

impl WakeError {
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Failed { .. } => "failed",
            Self::Unreachable(_) => "unreachable",
        }
    }
}

/// What one endpoint's answer to `Wake` means for the caller.
#[derive(Debug)]
enum WakeAnswer {
    /// Final: give this to the player.
    Final(WakeError),
    /// This endpoint cannot serve the wake (down, standby, shutting down,
    /// token refused): try the next one.
    TryNext(String),
}

/// Classify a failed `Wake` by syncd's typed reason; a status without one
/// was made by the transport (or a proxy, or the auth check) on the way.
fn classify_wake_status(status: &tonic::Status) -> WakeAnswer {
    let detail = status.message().to_owned();
    match WakeFailure::from_status(status) {
        Some(WakeFailure::Standby | WakeFailure::ShuttingDown) => WakeAnswer::TryNext(detail),
        Some(WakeFailure::Timeout) => WakeAnswer::Final(WakeError::Timeout),
        Some(failure) => WakeAnswer::Final(WakeError::Failed { failure, detail }),
        None => match status.code() {
            Code::DeadlineExceeded | Code::Cancelled => WakeAnswer::Final(WakeError::Timeout),
            _ => WakeAnswer::TryNext(detail),
        },
    }
}

#[derive(Debug, Clone, Default)]
struct StatusInner {
    state: &'static str,
    endpoint: String,
    last_error: String,
    reconnects: u64,
}

/// Connection to syncd: the watch loop and wake calls.
pub struct SyncClient {
    endpoints: Vec<(String, Channel)>,
    bearer: BearerToken,
    routes: Arc<Routes>,
    /// Live connections, reported to syncd on the watch stream.
    conns: Arc<Connections>,
    report_interval: Duration,
    metrics: Arc<Metrics>,
    edge_id: String,
    heartbeat_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    /// Index of the endpoint last connected, tried first by `wake`.
    current: AtomicUsize,
    /// Next hello asks for a snapshot whatever is held.
    force_snapshot: AtomicBool,
    status: Mutex<StatusInner>,
}

/// A syncd URL or the token could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("bad syncd URL {0:?}: {1}")]
    Url(String, #[source] tonic::transport::Error),
    #[error("the gRPC token is not a valid header value")]
    Token,
    #[error("TLS to syncd: {0}")]
    Tls(#[source] crate::tls::TlsError),
}

impl SyncClient {
    pub fn new(
        config: &Config,
        routes: Arc<Routes>,
        conns: Arc<Connections>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SetupError> {
        let mut endpoints = Vec::new();
        for url in &config.syncd {
            let ep = Endpoint::from_shared(url.clone())
                .map_err(|e| SetupError::Url(url.clone(), e))?
                .connect_timeout(Duration::from_secs(3))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true);
            let ep = config.syncd_tls.apply(url, ep).map_err(SetupError::Tls)?;
            endpoints.push((url.clone(), ep.connect_lazy()));
        }
        let bearer =
            BearerToken::new(config.grpc_token.as_deref()).map_err(|_| SetupError::Token)?;
        Ok(Self {
            endpoints,
            bearer,
            routes,
            conns,
            report_interval: config.report_interval,
            metrics,
            edge_id: config.edge_id.clone(),
            heartbeat_timeout: config.heartbeat_timeout,
            backoff_min: config.sync_backoff_min,
            backoff_max: config.sync_backoff_max,
            current: AtomicUsize::new(0),
            force_snapshot: AtomicBool::new(false),
            status: Mutex::new(StatusInner {
                state: "connecting",
                ..Default::default()
            }),
        })
    }

    fn client(&self, idx: usize) -> Option<Client> {
        let (_, ch) = self.endpoints.get(idx)?;
        Some(
            RouteSyncClient::with_interceptor(ch.clone(), self.bearer.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
    }

    fn set_status(&self, f: impl FnOnce(&mut StatusInner)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    /// Sync state as `EdgeAdmin.GetSyncStatus` reports it.
    pub fn sync_status(&self) -> automc_proto::v1::SyncStatus {
        let s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        let view = self.routes.view();
        automc_proto::v1::SyncStatus {
            state: s.state.to_owned(),
            endpoint: s.endpoint,
            epoch: view.epoch.clone(),
            version: view.version,
            age_ms: u64::try_from(self.routes.age().as_millis()).unwrap_or(u64::MAX),
            routes: view.table.len() as u64,
            last_error: s.last_error,
            reconnects: s.reconnects,
        }
    }

    /// Keep a watch stream open until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let n = self.endpoints.len().max(1);
        let mut idx = 0usize;
        let mut backoff = self.backoff_min;
        loop {
            let endpoint = self
                .endpoints
                .get(idx)
                .map(|(u, _)| u.clone())
                .unwrap_or_default();
            self.set_status(|s| {
                s.state = "connecting";
                s.endpoint = endpoint.clone();
            });
            let span = info_span!("sync", syncd.endpoint = %endpoint);
            let mut progressed = false;
            let result = tokio::select! {
                () = cancel.cancelled() => break,
                r = self.watch_once(idx, &mut progressed).instrument(span) => r,
            };
            self.metrics.sync_connected.set(0);
            // Without a stream, syncd's counts go stale: count this edge's
            // own sessions until the next stream's first full set.
            self.routes.counts.reset();
            let resync = result.as_ref().err().is_some_and(SyncError::is_resync);
            if let Err(e) = &result {
                if resync {
                    info!(syncd.endpoint = %endpoint, "{e}");
                } else {
                    warn!(syncd.endpoint = %endpoint, error = %e, "route stream to syncd lost; serving the last table");
                }
                let msg = e.to_string();
                self.set_status(|s| {
                    s.state = "disconnected";
                    s.last_error = msg;
                    s.reconnects += 1;
                });
            }
            if progressed {
                backoff = self.backoff_min;
            }
            if !resync {
                idx = (idx + 1) % n;
            }
            let pause = if resync {
                Duration::ZERO
            } else {
                jitter(backoff)
            };
            if !progressed && !resync {
                backoff = (backoff * 2).min(self.backoff_max);
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        self.metrics.sync_connected.set(0);
        self.set_status(|s| s.state = "disconnected");
    }

    async fn watch_once(&self, idx: usize, progressed: &mut bool) -> Result<(), SyncError> {
        let Some(mut client) = self.client(idx) else {
            return Err(SyncError::Ended);
        };
        // Acks carry only the latest applied version: a watch channel, so
        // a burst never drops the last one (ListEdges would show the edge
        // behind forever) and never queues more than one.
        let (ack_tx, ack_rx) = watch::channel::<Option<WatchAck>>(None);
        let held = self.routes.view();
        let resume =
            self.routes.has_snapshot() && !self.force_snapshot.swap(false, Ordering::AcqRel);
        let hello = WatchHello {
            edge_id: self.edge_id.clone(),
            epoch: if resume {
                held.epoch.clone()
            } else {
                String::new()
            },
            version: if resume { held.version } else { 0 },
            // If the epoch cannot be resumed (syncd restarted, another
            // instance), syncd sends only the buckets that differ.
            bucket_hashes: if resume {
                held.table.bucket_hashes().to_vec()
            } else {
                Vec::new()
            },
        };
        debug!(epoch = %hello.epoch, version = hello.version, "subscribing");
        let hello = WatchRequest {
            msg: Some(watch_request::Msg::Hello(hello)),
        };
        let acks = WatchStream::from_changes(ack_rx).filter_map(|a| async move {
            a.map(|ack| WatchRequest {
                msg: Some(watch_request::Msg::Ack(ack)),
            })
        });
        // Session reports share the stream; the reporter ends with it.
        let (report_tx, report_rx) = mpsc::channel(4);
        let reporter = CancellationToken::new();
        let _stop_reporter = reporter.clone().drop_guard();
        tokio::spawn(crate::report::run(
            self.conns.clone(),
            report_tx,
            self.report_interval,
            reporter,
        ));
        let reports = ReceiverStream::new(report_rx).map(|r| WatchRequest {
            msg: Some(watch_request::Msg::Report(r)),
        });
        let call = client.watch_routes(
            futures::stream::iter([hello]).chain(futures::stream::select(acks, reports)),
        );
        let mut stream = tokio::time::timeout(self.heartbeat_timeout, call)
            .await
            .map_err(|_| SyncError::HeartbeatTimeout(self.heartbeat_timeout))??
            .into_inner();
        self.current.store(idx, Ordering::Relaxed);
        self.set_status(|s| s.state = "connected");
        self.metrics.sync_connected.set(1);
        let mut pieces = Assembler::new();
        // What a partial snapshot completes: the table held at hello time,
        // kept only until the first whole event (not pinned for the
        // stream's life).
        let mut at_hello = Some(held);
        loop {
            let msg = tokio::time::timeout(self.heartbeat_timeout, stream.message())
                .await
                .map_err(|_| SyncError::HeartbeatTimeout(self.heartbeat_timeout))??
                .ok_or(SyncError::Ended)?;
            let Some(msg) = msg.msg else { continue };
            let event = pieces.push(msg).inspect_err(|_| {
                self.force_snapshot.store(true, Ordering::Release);
            })?;
            *progressed = true;
            let Some(event) = event else { continue };
            let base = at_hello.take();
            let ack = match event {
                Event::Snapshot {
                    epoch,
                    version,
                    table,
                    wakes,
                    partial,
                    table_hash,
                } => {
                    // A partial snapshot completes the table held when the
                    // hello went out: nothing else changed it since.
                    let empty = RouteTable::new();
                    let held = base.as_ref().map_or(&empty, |v| v.table.as_ref());
                    let table = whole_table(held, table, partial, table_hash)
                        .inspect_err(|_| self.force_snapshot.store(true, Ordering::Release))?;
                    Some(self.apply_snapshot(epoch, version, table, &wakes))
                }
                Event::Delta {
                    epoch,
                    from_version,
                    version,
                    upserts,
                    removed,
                } => Some(self.apply_delta(epoch, from_version, version, upserts, &removed)?),
                Event::Heartbeat(h) => {
                    self.check_heartbeat(&h)?;
                    None
                }
                Event::Wake(w) => {
                    self.apply_wake(w);
                    None
                }
                Event::WakeSet(wakes) => {
                    debug!(waking = wakes.len(), "wake set");
                    self.routes.set_wakes(wake_map(&wakes));
                    None
                }
                Event::Counts(c) => {
                    self.routes.counts.apply(c);
                    None
                }
            };
            if let Some((epoch, version)) = ack {
                self.metrics
                    .table_version
                    .set(i64::try_from(version).unwrap_or(i64::MAX));
                ack_tx.send_replace(Some(WatchAck { epoch, version }));
                self.routes.compact_if_due().await;
            }
        }
    }

    fn apply_snapshot(
        &self,
        epoch: String,
        version: u64,
        table: RouteTable,
        wakes: &[WakeUpdate],
    ) -> (String, u64) {
        info!(%epoch, version, routes = table.len(), "applied route snapshot");
        self.routes
            .apply_snapshot(epoch.clone(), version, table, wake_map(wakes));
        (epoch, version)
    }

    fn apply_delta(
        &self,
        epoch: String,
        from_version: u64,
        version: u64,
        upserts: Vec<automc_proto::v1::Route>,
        removed: &[String],
    ) -> Result<(String, u64), SyncError> {
        let held = self.routes.view();
        if epoch != held.epoch {
            self.force_snapshot.store(true, Ordering::Release);
            return Err(SyncError::OtherEpoch(epoch));
        }
        if from_version != held.version {
            self.force_snapshot.store(true, Ordering::Release);
            return Err(SyncError::Gap {
                held: held.version,
                from: from_version,
            });
        }
        debug!(
            from = from_version,
            version,
            upserts = upserts.len(),
            removed = removed.len(),
            "applied route delta"
        );
        self.routes.apply_delta(version, upserts, removed);
        Ok((epoch, version))
    }

    fn check_heartbeat(&self, h: &Heartbeat) -> Result<(), SyncError> {
        let held = self.routes.view();
        if h.epoch != held.epoch || h.version != held.version {
            self.force_snapshot.store(true, Ordering::Release);
            return Err(SyncError::Behind {
                held: held.version,
                theirs: h.version,
            });
        }
        self.routes.confirm();
        Ok(())
    }

    fn apply_wake(&self, w: WakeUpdate) {
        let phase = w.phase();
        debug!(server = %w.server, ?phase, "wake update");
        let failure = w.failure();
        self.routes.set_wake(w.server, phase, failure);
    }

    /// Ask syncd to wake `server`, waiting at most `budget`. Tries the endpoint
    /// of the live watch stream first, then the others.
    pub async fn wake(&self, server: &str, budget: Duration) -> Result<WakeResponse, WakeError> {
        let deadline = Instant::now() + budget;
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = WakeError::Unreachable("no syncd endpoint configured".into());
        for i in 0..n {
            let idx = (start + i) % n;
            let Some(mut client) = self.client(idx) else {
                continue;
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(WakeError::Timeout);
            }
            let mut req = Request::new(WakeRequest {
                server: server.to_owned(),
                caller: self.edge_id.clone(),
            });
            req.set_timeout(remaining);
            match tokio::time::timeout(remaining, client.wake(req)).await {
                Err(_) => return Err(WakeError::Timeout),
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) => match classify_wake_status(&status) {
                    WakeAnswer::Final(e) => return Err(e),
                    WakeAnswer::TryNext(why) => {
                        debug!(endpoint = idx, reason = %why, "this syncd cannot serve the wake; trying the next");
                        last = WakeError::Unreachable(why);
                    }
                },
            }
        }
        Err(last)
    }
}

fn wake_map(wakes: &[WakeUpdate]) -> HashMap<String, WakePhase> {
    wakes
        .iter()
        .map(|w| (w.server.clone(), w.phase()))
        .collect()
}

/// Up to ±25% around `d`, so edges that lost syncd together do not return together.
fn jitter(d: Duration) -> Duration {
    let f = rand::rng().random_range(0.75..1.25);
    d.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use automc_proto::fake::{route, FakeSyncd, Watch};
    use automc_proto::v1::*;

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_millis(400));
            assert!(j >= Duration::from_millis(300) && j <= Duration::from_millis(500));
        }
    }

    async fn send(w: &Watch, msg: watch_response::Msg) {
        assert!(w.send(msg).await, "stream open");
    }

    async fn next_ack(w: &mut Watch) -> WatchAck {
        w.next_ack(Duration::from_secs(10))
            .await
            .expect("ack in time")
    }

    fn found(routes: &Routes, host: &str) -> bool {
        routes.view().table.lookup(host).ok().flatten().is_some()
    }

    /// Wait (bounded) until `server` has no wake phase.
    async fn eventually_none(routes: &Routes, server: &str) {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while routes.wake_phase(server).is_some() {
            assert!(
                std::time::Instant::now() < end,
                "wake of {server} never cleared"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn next_watch(fake: &mut FakeSyncd) -> Watch {
        fake.next_watch(Duration::from_secs(10))
            .await
            .expect("edge subscribes in time")
    }

    #[tokio::test]
    async fn snapshot_deltas_resume_and_resync_after_a_gap() {
        let mut fake = FakeSyncd::start(Arc::new(|req: WakeRequest| match req.server.as_str() {
            "ok" => Ok(WakeResponse {
                address: "10.0.0.9:25565".into(),
                reused: false,
                duration_ms: 1,
            }),
            "gone" => {
                Err(WakeFailure::WakerRefused.to_status("wake of gone failed: waker returned 500"))
            }
            "untyped" => Err(Status::unavailable("an older syncd or a proxy")),
            _ => Err(WakeFailure::NotConfigured.to_status("waker not configured")),
        }))
        .await
        .expect("fake syncd");
        let config = Config {
            syncd: vec![fake.url()],
            grpc_token: Some("t0ken".into()),
            sync_backoff_min: Duration::from_millis(20),
            sync_backoff_max: Duration::from_millis(100),
            ..Config::default()
        };
        let routes = Arc::new(Routes::new());
        let client = Arc::new(
            SyncClient::new(
                &config,
                routes.clone(),
                Arc::default(),
                Arc::new(Metrics::new()),
            )
            .expect("client"),
        );
        let cancel = CancellationToken::new();
        tokio::spawn(client.clone().run(cancel.clone()));

        // First contact: nothing held, snapshot, then a delta.
        let mut w = next_watch(&mut fake).await;
        assert_eq!(w.hello.epoch, "");
        assert_eq!(w.token.as_deref(), Some("Bearer t0ken"));
        // In two pieces: nothing is visible until the last.
        send(
            &w,
            watch_response::Msg::SnapshotChunk(SnapshotChunk {
                epoch: "e1".into(),
                version: 1,
                routes: vec![route("a", "a.example.com", "a:25565").into()],
                wakes: vec![],
                last: false,
                ..SnapshotChunk::default()
            }),
        )
        .await;
        send(
            &w,
            watch_response::Msg::SnapshotChunk(SnapshotChunk {
                epoch: "e1".into(),
                version: 1,
                routes: vec![route("z", "z.example.com", "z:25565").into()],
                wakes: vec![WakeUpdate {
                    server: "a".into(),
                    phase: WakePhase::Waking as i32,
                    ..WakeUpdate::default()
                }],
                last: true,
                ..SnapshotChunk::default()
            }),
        )
        .await;
        assert_eq!(next_ack(&mut w).await.version, 1);
        assert!(routes.has_snapshot());
        assert_eq!(routes.view().table.len(), 2);
        assert_eq!(routes.wake_phase("a"), Some(WakePhase::Waking));
        send(
            &w,
            watch_response::Msg::Delta(Delta {
                epoch: "e1".into(),
                from_version: 1,
                version: 2,
                upserts: vec![route("b", "b.example.com", "b:25565")],
                removed: vec!["a".into()],
                more: false,
            }),
        )
        .await;
        assert_eq!(next_ack(&mut w).await.version, 2);
        let view = routes.view();
        assert!(view.table.lookup("b.example.com").ok().flatten().is_some());
        assert!(view.table.lookup("a.example.com").ok().flatten().is_none());
        assert_eq!(client.sync_status().state, "connected");

        // syncd goes away: the edge resumes with what it holds, and the
        // resume's wake set clears the wake that ended meanwhile.
        drop(w);
        let w = next_watch(&mut fake).await;
        assert_eq!((w.hello.epoch.as_str(), w.hello.version), ("e1", 2));
        assert!(found(&routes, "b.example.com"), "last table keeps serving");
        send(&w, watch_response::Msg::WakeSet(WakeSet { wakes: vec![] })).await;
        send(
            &w,
            watch_response::Msg::Heartbeat(Heartbeat {
                epoch: "e1".into(),
                version: 2,
            }),
        )
        .await;
        eventually_none(&routes, "a").await;

        // A delta that skips a version: drop and ask for a snapshot.
        send(
            &w,
            watch_response::Msg::Delta(Delta {
                epoch: "e1".into(),
                from_version: 5,
                version: 6,
                upserts: vec![route("c", "c.example.com", "c:25565")],
                removed: vec![],
                more: false,
            }),
        )
        .await;
        let mut w2 = next_watch(&mut fake).await;
        assert_eq!(w2.hello.epoch, "", "resubscribes asking for a snapshot");
        assert!(!found(&routes, "c.example.com"));
        send(
            &w2,
            watch_response::Msg::SnapshotChunk(SnapshotChunk {
                epoch: "e2".into(),
                version: 1,
                routes: vec![route("c", "c.example.com", "c:25565").into()],
                wakes: vec![],
                last: true,
                ..SnapshotChunk::default()
            }),
        )
        .await;
        assert_eq!(next_ack(&mut w2).await.epoch, "e2");
        assert!(!found(&routes, "b.example.com"));
        assert!(found(&routes, "c.example.com"));

        // Wake answers and failures.
        let ok = client
            .wake("ok", Duration::from_secs(5))
            .await
            .expect("wake ok");
        assert_eq!(ok.address, "10.0.0.9:25565");
        match client.wake("gone", Duration::from_secs(5)).await {
            Err(WakeError::Failed { failure, detail }) => {
                assert_eq!(failure, WakeFailure::WakerRefused);
                assert_eq!(detail, "wake of gone failed: waker returned 500");
            }
            other => panic!("unexpected {other:?}"),
        }
        match client.wake("other", Duration::from_secs(5)).await {
            Err(WakeError::Failed { failure, .. }) => {
                assert_eq!(failure, WakeFailure::NotConfigured)
            }
            other => panic!("unexpected {other:?}"),
        }
        // A status without syncd's typed reason is not a wake outcome: this
        // endpoint could not serve the wake.
        match client.wake("untyped", Duration::from_secs(5)).await {
            Err(WakeError::Unreachable(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
        cancel.cancel();
    }

    #[tokio::test]
    async fn wake_with_syncd_unreachable_fails_fast_and_says_so() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let config = Config {
            syncd: vec![format!("http://127.0.0.1:{port}")],
            ..Config::default()
        };
        let client = SyncClient::new(
            &config,
            Arc::new(Routes::new()),
            Arc::default(),
            Arc::new(Metrics::new()),
        )
        .expect("client");
        let started = std::time::Instant::now();
        let r = client.wake("x", Duration::from_secs(20)).await;
        assert!(matches!(r, Err(WakeError::Unreachable(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
