//! The versioned route table and its watchers.
//!
//! One `Publisher` owns the table, the epoch, the version, a bounded history
//! of recent change sets and every watcher's bounded queue. The state sits
//! behind a plain mutex that is never held across an `.await`: every
//! operation is a short, synchronous critical section, which gives the same
//! guarantee as an owner task (a watcher is registered and handed its first
//! message atomically with respect to publishes, so nothing slips between
//! its snapshot and its first delta) with less machinery.
//!
//! A watcher that cannot keep up (its queue is full) is cut off, never
//! waited on: the others keep receiving and memory stays bounded. The cut
//! watcher's stream ends with an error and the edge resubscribes, resuming
//! from its epoch and version when the history still covers it.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use automc_proto::v1::{
    watch_response, Delta, EdgeInfo, GetRouteResponse, Heartbeat, Route, Snapshot, WakePhase,
    WakeUpdate, WatchHello, WatchResponse,
};
use automc_proto::RouteTable;
use futures::Stream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::diff::{self, Change, Routes};
use crate::metrics::Metrics;

/// Shared handle to the table and its watchers.
pub struct Publisher {
    epoch: String,
    queue_cap: usize,
    history_len: usize,
    heartbeat: Duration,
    next_watcher: AtomicU64,
    metrics: Metrics,
    shutdown: CancellationToken,
    /// Snapshot copies being encoded at once: a burst of new edges at 100k
    /// routes would otherwise hold one full copy each.
    snapshot_slots: Arc<Semaphore>,
    state: Mutex<State>,
}

/// See `Publisher::snapshot_slots`.
const SNAPSHOT_SLOTS: usize = 2;

#[derive(Default)]
struct State {
    version: u64,
    table: RouteTable,
    /// `(version, change)`: the change that produced `version` from `version - 1`.
    history: VecDeque<(u64, Arc<Change>)>,
    snapshot: Option<Arc<WatchResponse>>,
    watchers: HashMap<u64, Watcher>,
    /// Servers with a wake in flight.
    waking: BTreeMap<String, WakePhase>,
}

struct Watcher {
    tx: mpsc::Sender<Arc<WatchResponse>>,
    cut: CancellationToken,
    edge_id: String,
    peer: String,
    connected_since_ms: i64,
    acked_epoch: String,
    acked_version: u64,
}

/// What `apply` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub version: u64,
    pub changes: usize,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A fresh epoch id: start time and randomness, so two starts never collide.
pub fn new_epoch() -> String {
    format!("{:x}-{:08x}", now_ms(), rand::random::<u32>())
}

impl Publisher {
    pub fn new(
        queue_cap: usize,
        history_len: usize,
        heartbeat: Duration,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            epoch: new_epoch(),
            queue_cap: queue_cap.max(1),
            history_len,
            heartbeat,
            next_watcher: AtomicU64::new(1),
            metrics,
            shutdown,
            snapshot_slots: Arc::new(Semaphore::new(SNAPSHOT_SLOTS)),
            state: Mutex::new(State::default()),
        })
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data behind
        // (every mutation completes before unlocking), so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// Run `f` with the current table (lookups, diffs).
    pub fn with_table<R>(&self, f: impl FnOnce(&RouteTable, u64) -> R) -> R {
        let st = self.lock();
        f(&st.table, st.version)
    }

    /// Replace the whole table by `routes` (a full re-read): publishes the
    /// difference, if any.
    pub fn apply_full(&self, routes: &Routes) -> Option<(Applied, Arc<Change>)> {
        let mut st = self.lock();
        let change = diff::diff_all(&st.table, routes);
        self.publish_locked(&mut st, change)
    }

    /// Update the servers in `names` from their fresh `routes`.
    pub fn apply_some(
        &self,
        names: &std::collections::BTreeSet<String>,
        routes: &Routes,
    ) -> Option<(Applied, Arc<Change>)> {
        let mut st = self.lock();
        let change = diff::diff_some(&st.table, names, routes);
        self.publish_locked(&mut st, change)
    }

    fn publish_locked(&self, st: &mut State, change: Change) -> Option<(Applied, Arc<Change>)> {
        if change.is_empty() {
            return None;
        }
        let from = st.version;
        st.version += 1;
        let version = st.version;
        st.table
            .apply(change.upserts.iter().cloned(), &change.removed);
        let change = Arc::new(change);
        if change.len() > history_entry_limit(st.table.len()) {
            // Resuming across a change this big costs about a snapshot
            // anyway; keeping it would pin a second copy of the table.
            st.history.clear();
        } else {
            st.history.push_back((version, change.clone()));
            while st.history.len() > self.history_len {
                st.history.pop_front();
            }
        }
        st.snapshot = None;
        if !st.watchers.is_empty() {
            let msg = Arc::new(WatchResponse {
                msg: Some(watch_response::Msg::Delta(Delta {
                    epoch: self.epoch.clone(),
                    from_version: from,
                    version,
                    upserts: change.upserts.clone(),
                    removed: change.removed.clone(),
                })),
            });
            self.broadcast_locked(st, msg);
        }
        self.metrics.routes.set(st.table.len() as i64);
        self.metrics.table_version.set(version as i64);
        self.update_lag_locked(st);
        Some((
            Applied {
                version,
                changes: change.len(),
            },
            change,
        ))
    }

    fn broadcast_locked(&self, st: &mut State, msg: Arc<WatchResponse>) {
        let mut cut = Vec::new();
        for (id, w) in &st.watchers {
            match w.tx.try_send(msg.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => cut.push((*id, true)),
                Err(mpsc::error::TrySendError::Closed(_)) => cut.push((*id, false)),
            }
        }
        for (id, slow) in cut {
            if let Some(w) = st.watchers.remove(&id) {
                w.cut.cancel();
                if slow {
                    self.metrics.watchers_cut.inc();
                    tracing::warn!(
                        watcher.id = id,
                        edge.id = %w.edge_id,
                        peer.addr = %w.peer,
                        queue = self.queue_cap,
                        "watcher cut off: its queue is full (too slow or stuck); it must resubscribe"
                    );
                }
            }
        }
        self.metrics.watchers.set(st.watchers.len() as i64);
    }

    fn update_lag_locked(&self, st: &State) {
        let lag = st
            .watchers
            .values()
            .map(|w| self.lag(st.version, w))
            .max()
            .unwrap_or(0);
        self.metrics.watcher_lag_max.set(lag as i64);
    }

    fn lag(&self, version: u64, w: &Watcher) -> u64 {
        if w.acked_epoch == self.epoch {
            version.saturating_sub(w.acked_version)
        } else {
            version
        }
    }

    /// Record that a server started or stopped waking, and tell every watcher.
    pub fn set_wake(&self, server: &str, phase: WakePhase) {
        let mut st = self.lock();
        if phase == WakePhase::Waking {
            st.waking.insert(server.to_owned(), phase);
        } else {
            st.waking.remove(server);
        }
        st.snapshot = None;
        let msg = Arc::new(WatchResponse {
            msg: Some(watch_response::Msg::Wake(WakeUpdate {
                server: server.to_owned(),
                phase: phase as i32,
            })),
        });
        self.broadcast_locked(&mut st, msg);
    }

    fn snapshot_locked(&self, st: &mut State) -> Arc<WatchResponse> {
        if let Some(s) = &st.snapshot {
            return s.clone();
        }
        let snap = Arc::new(WatchResponse {
            msg: Some(watch_response::Msg::Snapshot(Snapshot {
                epoch: self.epoch.clone(),
                version: st.version,
                routes: st.table.routes().cloned().collect(),
                wakes: waking_updates(&st.waking),
            })),
        });
        st.snapshot = Some(snap.clone());
        snap
    }

    /// Register a watcher and build its stream: a snapshot (or, resuming
    /// within this epoch, one delta of what it missed), then deltas, wake
    /// updates and heartbeats.
    pub fn subscribe(self: &Arc<Self>, hello: &WatchHello, peer: String) -> WatchStream {
        let id = self.next_watcher.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue_cap);
        let cut = CancellationToken::new();
        let mut st = self.lock();
        let mut initial = VecDeque::new();
        let resumed = hello.epoch == self.epoch && hello.version <= st.version;
        let covered = st
            .history
            .front()
            .is_some_and(|(v, _)| v.saturating_sub(1) <= hello.version);
        let (acked_epoch, acked_version, how) = if resumed && hello.version == st.version {
            initial.push_back(Arc::new(WatchResponse {
                msg: Some(watch_response::Msg::Heartbeat(Heartbeat {
                    epoch: self.epoch.clone(),
                    version: st.version,
                })),
            }));
            (self.epoch.clone(), hello.version, "up to date")
        } else if resumed && covered {
            let missed = diff::compose(
                st.history
                    .iter()
                    .filter(|(v, _)| *v > hello.version)
                    .map(|(_, c)| c.as_ref()),
            );
            initial.push_back(Arc::new(WatchResponse {
                msg: Some(watch_response::Msg::Delta(Delta {
                    epoch: self.epoch.clone(),
                    from_version: hello.version,
                    version: st.version,
                    upserts: missed.upserts,
                    removed: missed.removed,
                })),
            }));
            (self.epoch.clone(), hello.version, "resumed")
        } else {
            let snap = self.snapshot_locked(&mut st);
            // Shared, not copied: the copy tonic needs is made when it is
            // sent, a few at a time (see `snapshot_slots`).
            initial.push_back(snap);
            (String::new(), 0, "snapshot")
        };
        if resumed {
            // A resumed edge did not see wake updates while away.
            for w in waking_updates(&st.waking) {
                initial.push_back(Arc::new(WatchResponse {
                    msg: Some(watch_response::Msg::Wake(w)),
                }));
            }
        }
        st.watchers.insert(
            id,
            Watcher {
                tx,
                cut: cut.clone(),
                edge_id: hello.edge_id.clone(),
                peer: peer.clone(),
                connected_since_ms: now_ms(),
                acked_epoch,
                acked_version,
            },
        );
        self.metrics.watchers.set(st.watchers.len() as i64);
        self.update_lag_locked(&st);
        let version = st.version;
        drop(st);
        tracing::info!(
            watcher.id = id,
            edge.id = %hello.edge_id,
            peer.addr = %peer,
            from.epoch = %hello.epoch,
            from.version = hello.version,
            version,
            how,
            "watcher subscribed"
        );
        WatchStream {
            id,
            publisher: self.clone(),
            initial,
            rx,
            cut,
            snapshot_slot: None,
        }
    }

    /// The edge applied `version` of `epoch`.
    pub fn ack(&self, id: u64, epoch: &str, version: u64) {
        let mut st = self.lock();
        if let Some(w) = st.watchers.get_mut(&id) {
            w.acked_epoch = epoch.to_owned();
            w.acked_version = version;
        }
        self.update_lag_locked(&st);
    }

    fn remove(&self, id: u64) {
        let mut st = self.lock();
        if st.watchers.remove(&id).is_some() {
            tracing::info!(watcher.id = id, "watcher left");
        }
        self.metrics.watchers.set(st.watchers.len() as i64);
        self.update_lag_locked(&st);
    }

    pub fn edges(&self) -> (u64, Vec<EdgeInfo>) {
        let st = self.lock();
        let mut edges: Vec<EdgeInfo> = st
            .watchers
            .iter()
            .map(|(id, w)| EdgeInfo {
                watcher_id: *id,
                edge_id: w.edge_id.clone(),
                peer: w.peer.clone(),
                connected_since_ms: w.connected_since_ms,
                acked_epoch: w.acked_epoch.clone(),
                acked_version: w.acked_version,
                lag: self.lag(st.version, w),
            })
            .collect();
        edges.sort_by_key(|e| e.watcher_id);
        (st.version, edges)
    }

    pub fn routes(&self) -> (u64, Vec<Route>) {
        let st = self.lock();
        (st.version, st.table.routes().cloned().collect())
    }

    pub fn route(&self, server: &str) -> Option<Route> {
        self.lock().table.get(server).cloned()
    }

    /// Resolve what a player typed with the edges' matching rules.
    pub fn resolve(&self, hostname: &str) -> GetRouteResponse {
        self.lock().table.resolve(hostname)
    }

    fn heartbeat_msg(&self) -> WatchResponse {
        WatchResponse {
            msg: Some(watch_response::Msg::Heartbeat(Heartbeat {
                epoch: self.epoch.clone(),
                version: self.version(),
            })),
        }
    }
}

/// Change sets larger than this are not kept for resume.
fn history_entry_limit(table_len: usize) -> usize {
    (table_len / 4).max(1024)
}

fn waking_updates(waking: &BTreeMap<String, WakePhase>) -> Vec<WakeUpdate> {
    waking
        .iter()
        .map(|(server, phase)| WakeUpdate {
            server: server.clone(),
            phase: *phase as i32,
        })
        .collect()
}

/// The outgoing half of one watch: initial messages, then the queue, with a
/// heartbeat whenever the stream was idle for the heartbeat interval.
/// Dropping it (the edge went away) unregisters the watcher.
pub struct WatchStream {
    id: u64,
    publisher: Arc<Publisher>,
    initial: VecDeque<Arc<WatchResponse>>,
    rx: mpsc::Receiver<Arc<WatchResponse>>,
    cut: CancellationToken,
    /// Held from handing out a snapshot copy until tonic asks for the next
    /// message (by then it has encoded the copy and dropped it).
    snapshot_slot: Option<OwnedSemaphorePermit>,
}

impl WatchStream {
    pub fn id(&self) -> u64 {
        self.id
    }

    async fn next_message(&mut self) -> Option<Result<WatchResponse, Status>> {
        self.snapshot_slot = None;
        let shutdown = self.publisher.shutdown.clone();
        if let Some(m) = self.initial.pop_front() {
            if matches!(m.msg, Some(watch_response::Msg::Snapshot(_))) {
                let slots = self.publisher.snapshot_slots.clone();
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        return Some(Err(Status::unavailable("syncd is shutting down")))
                    }
                    p = slots.acquire_owned() => self.snapshot_slot = p.ok(),
                }
            }
            return Some(Ok(WatchResponse::clone(&m)));
        }
        tokio::select! {
            biased;
            _ = self.cut.cancelled() => Some(Err(Status::resource_exhausted(
                "watcher cut off: too far behind; resubscribe with your epoch and version",
            ))),
            _ = shutdown.cancelled() => Some(Err(Status::unavailable("syncd is shutting down"))),
            m = self.rx.recv() => match m {
                Some(m) => Some(Ok(WatchResponse::clone(&m))),
                None => Some(Err(Status::aborted("watch ended; resubscribe"))),
            },
            _ = tokio::time::sleep(self.publisher.heartbeat) => Some(Ok(self.publisher.heartbeat_msg())),
        }
    }

    /// Turn into a `Stream` for tonic; it ends after the first error.
    pub fn into_stream(self) -> impl Stream<Item = Result<WatchResponse, Status>> + Send + 'static {
        futures::stream::unfold((self, false), |(mut s, done)| async move {
            if done {
                return None;
            }
            let item = s.next_message().await?;
            let done = item.is_err();
            Some((item, (s, done)))
        })
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.publisher.remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn route(name: &str, address: &str) -> Route {
        Route {
            server: name.into(),
            hostnames: vec![format!("{name}.example.com")],
            address: address.into(),
            state: "running".into(),
        }
    }

    fn routes(list: &[Route]) -> Routes {
        list.iter().map(|r| (r.server.clone(), r.clone())).collect()
    }

    fn publisher(queue: usize, history: usize) -> Arc<Publisher> {
        Publisher::new(
            queue,
            history,
            Duration::from_secs(3600),
            Metrics::new(),
            CancellationToken::new(),
        )
    }

    fn hello(epoch: &str, version: u64) -> WatchHello {
        WatchHello {
            edge_id: "t".into(),
            epoch: epoch.into(),
            version,
        }
    }

    async fn first(
        s: &mut (impl Stream<Item = Result<WatchResponse, Status>> + Unpin),
    ) -> watch_response::Msg {
        s.next()
            .await
            .expect("stream item")
            .expect("ok item")
            .msg
            .expect("msg")
    }

    #[tokio::test]
    async fn only_real_changes_bump_the_version() {
        let p = publisher(8, 8);
        let t = routes(&[route("a", "1:1")]);
        assert_eq!(p.apply_full(&t).map(|(a, _)| a.version), Some(1));
        assert!(p.apply_full(&t).is_none());
        assert_eq!(p.version(), 1);
    }

    #[tokio::test]
    async fn new_watcher_gets_snapshot_then_deltas() {
        let p = publisher(8, 8);
        p.apply_full(&routes(&[route("a", "1:1")]));
        let mut s = Box::pin(p.subscribe(&hello("", 0), "peer".into()).into_stream());
        match first(&mut s).await {
            watch_response::Msg::Snapshot(snap) => {
                assert_eq!(snap.version, 1);
                assert_eq!(snap.routes.len(), 1);
            }
            other => panic!("expected snapshot, got {other:?}"),
        }
        p.apply_full(&routes(&[route("a", "1:1"), route("b", "2:2")]));
        match first(&mut s).await {
            watch_response::Msg::Delta(d) => {
                assert_eq!((d.from_version, d.version), (1, 2));
                assert_eq!(d.upserts, vec![route("b", "2:2")]);
            }
            other => panic!("expected delta, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn resume_sends_one_delta_of_what_was_missed() {
        let p = publisher(8, 8);
        p.apply_full(&routes(&[route("a", "1:1")]));
        p.apply_full(&routes(&[route("a", "1:2")]));
        p.apply_full(&routes(&[route("a", "1:2"), route("b", "2:2")]));
        let epoch = p.epoch().to_owned();
        let mut s = Box::pin(p.subscribe(&hello(&epoch, 1), "peer".into()).into_stream());
        match first(&mut s).await {
            watch_response::Msg::Delta(d) => {
                assert_eq!((d.from_version, d.version), (1, 3));
                assert_eq!(d.upserts, vec![route("a", "1:2"), route("b", "2:2")]);
            }
            other => panic!("expected delta, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn resume_beyond_history_or_other_epoch_gets_a_snapshot() {
        let p = publisher(8, 1);
        p.apply_full(&routes(&[route("a", "1:1")]));
        p.apply_full(&routes(&[route("a", "1:2")]));
        p.apply_full(&routes(&[route("a", "1:3")]));
        let epoch = p.epoch().to_owned();
        for h in [hello(&epoch, 1), hello("other-epoch", 3), hello(&epoch, 99)] {
            let mut s = Box::pin(p.subscribe(&h, "peer".into()).into_stream());
            assert!(
                matches!(first(&mut s).await, watch_response::Msg::Snapshot(_)),
                "{h:?}"
            );
        }
    }

    #[tokio::test]
    async fn full_queue_cuts_the_watcher_and_not_the_others() {
        let p = publisher(2, 8);
        let stuck = p.subscribe(&hello("", 0), "stuck".into());
        let mut live = Box::pin(p.subscribe(&hello("", 0), "live".into()).into_stream());
        first(&mut live).await; // snapshot
        let mut t = Routes::new();
        for i in 0..5 {
            t.insert(format!("s{i}"), route(&format!("s{i}"), "1:1"));
            p.apply_full(&t);
            assert!(matches!(
                first(&mut live).await,
                watch_response::Msg::Delta(_)
            ));
        }
        assert_eq!(p.edges().1.len(), 1, "stuck watcher still registered");
        let mut stuck = Box::pin(stuck.into_stream());
        assert!(matches!(
            first(&mut stuck).await,
            watch_response::Msg::Snapshot(_)
        ));
        let err = stuck.next().await.expect("item").expect_err("cut off");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(stuck.next().await.is_none());
    }
}
