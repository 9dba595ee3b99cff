//! The versioned route table and its watchers.
//!
//! One `Publisher` owns the table, the epoch, the version, a bounded history
//! of recent change sets and every watcher's outbox. The state sits behind a
//! plain mutex that is never held across an `.await`: every operation is a
//! short, synchronous critical section, which gives the same guarantee as an
//! owner task (a watcher is registered and handed its first message
//! atomically with respect to publishes, so nothing slips between its
//! snapshot and its first delta) with less machinery. Readers that need no
//! such ordering (`GetRoute`, `ListRoutes`, the waker) read an `Arc` of the
//! current table without taking the lock.
//!
//! Memory per watcher is bounded and shared: its outbox holds at most
//! `queue_cap` items, each an `Arc` of a change set or a handle on the
//! (persistent, structurally shared) table it must send, and the stream
//! builds one piece of at most `automc_proto::sync::CHUNK_BYTES` at a time. Nothing is shared
//! between watchers that one of them could hold: a watcher whose queue fills
//! up, or that does not take a piece within the send timeout (a client that
//! stopped reading: HTTP/2 flow control then stops tonic from asking for
//! more), is cut off and its outbox emptied, never waited on. The cut
//! watcher's stream ends with an error when it is next polled and the edge
//! resubscribes, resuming from its epoch and version when the history still
//! covers it.
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use automc_proto::sync::{counts_pieces, delta_piece, snapshot_chunk};
use automc_proto::v1::{
    watch_response, EdgeInfo, GetRouteResponse, Heartbeat, PlayerCounts, Route, ServerCount,
    WakeFailure, WakePhase, WakeSet, WakeUpdate, WatchHello,
};
use automc_proto::{BucketSet, HostnameTooLong, RouteTable, BUCKETS};
use futures::Stream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::diff::{self, Change, Routes};
use crate::metrics::Metrics;
use crate::pieces::{SharedSnapshot, WatchOut};

/// Bounds on each watch stream (see `Config`).
#[derive(Debug, Clone, Copy)]
pub struct WatchLimits {
    /// Items queued per watcher before it is cut off as stuck.
    pub queue_cap: usize,
    /// Change sets kept for resume (also bounded by their total size).
    pub history_len: usize,
    /// A stream idle this long gets a heartbeat.
    pub heartbeat: Duration,
    /// A watcher that does not take a handed-out message within this long
    /// is cut off.
    pub send_timeout: Duration,
    /// Watchers from one peer IP address at once.
    pub per_peer: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        use crate::config;
        Self {
            queue_cap: config::DEFAULT_WATCHER_QUEUE,
            history_len: config::DEFAULT_HISTORY_LEN,
            heartbeat: config::DEFAULT_HEARTBEAT_INTERVAL,
            send_timeout: config::DEFAULT_WATCH_SEND_TIMEOUT,
            per_peer: config::DEFAULT_MAX_WATCHERS_PER_PEER,
        }
    }
}

/// The table as of one version, for lock-free readers.
#[derive(Debug, Default)]
pub struct Current {
    pub version: u64,
    pub table: RouteTable,
}

/// Shared handle to the table and its watchers.
pub struct Publisher {
    epoch: String,
    limits: WatchLimits,
    next_watcher: AtomicU64,
    metrics: Metrics,
    shutdown: CancellationToken,
    current: ArcSwap<Current>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    version: u64,
    /// Persistent: cloning it for a watcher or for `current` is O(1).
    table: RouteTable,
    /// `(version, change)`: the change that produced `version` from `version - 1`.
    history: VecDeque<(u64, Arc<Change>)>,
    /// Routes and names held by `history`, bounded by about one table.
    history_size: usize,
    watchers: HashMap<u64, Watcher>,
    /// Watch streams open per peer address: registered watchers and cut
    /// ones whose stream the client has not closed yet (a client that never
    /// reads keeps tonic from polling, so a cut stream lives until the
    /// connection goes). `--max-watchers-per-peer` counts these.
    streams: HashMap<IpAddr, usize>,
    /// Servers with a wake or a stop in flight, or stopped by syncd: the
    /// phases a new watcher must know (the others end with the event).
    waking: BTreeMap<String, WakePhase>,
    /// Phases in `waking` that another syncd announced (relayed through
    /// Postgres, so this is a standby) and until when they are believed:
    /// NOTIFY is not durable, so the phase that ends a relayed wake can be
    /// lost (the active syncd died mid-wake, or this one's LISTEN session
    /// was reconnecting), and the server must not show "starting" forever.
    relayed_until: HashMap<String, Instant>,
    /// Servers whose route changed since [`Publisher::take_changed`] (what
    /// the player counts recheck: a route may start or stop using them);
    /// `overflowed` when more than [`MAX_CHANGED`] did (recheck all).
    changed: std::collections::HashSet<String>,
    overflowed: bool,
    /// The full snapshot of the current version being sent to watchers,
    /// while any watcher holds it (see `pieces`).
    shared: std::sync::Weak<SharedSnapshot>,
}

/// Changed server names kept for the player counts before they give up
/// and recheck every server.
const MAX_CHANGED: usize = 65_536;

/// Which routes changed, for the player counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangedRoutes {
    /// These servers' routes.
    Some(std::collections::HashSet<String>),
    /// Too many to list: every server.
    All,
}

struct Watcher {
    outbox: Arc<Outbox>,
    edge_id: String,
    peer: Option<SocketAddr>,
    connected_since_ms: i64,
    acked_epoch: String,
    acked_version: u64,
}

/// One watcher's queue, shared by the publisher (which fills and cuts it)
/// and its stream (which drains it).
struct Outbox {
    queue: Mutex<Queue>,
    ready: Notify,
    /// Unix ms at which the stream handed tonic a message and has not been
    /// asked for the next one since; 0 while it is waiting for work.
    handed_ms: AtomicI64,
}

/// Why a watcher was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Its queue filled up.
    Behind,
    /// It did not take a message within the send timeout.
    Stalled,
}

impl Cut {
    fn status(self) -> Status {
        match self {
            Self::Behind => Status::resource_exhausted(
                "watcher cut off: too far behind; resubscribe with your epoch and version",
            ),
            Self::Stalled => Status::deadline_exceeded(
                "watcher cut off: it did not read within the send timeout; resubscribe",
            ),
        }
    }
}

/// What a watcher still has to be sent.
enum Item {
    Snapshot(Snap),
    Change {
        from: u64,
        version: u64,
        change: Arc<Change>,
    },
    Wake(WakeUpdate),
    WakeSet(Vec<WakeUpdate>),
    Heartbeat,
    /// Player counts not yet sent: later ones merge into it, so a watcher
    /// holds at most one, whatever the rate of changes.
    Counts(CountsUpdate),
}

/// Player counts for one watcher: everything (`full`) or the servers that
/// changed, by server name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CountsUpdate {
    pub full: bool,
    pub servers: BTreeMap<String, ServerCount>,
}

impl CountsUpdate {
    /// `later` on top of this one.
    fn merge(&mut self, later: CountsUpdate) {
        if later.full {
            *self = later;
        } else {
            self.servers.extend(later.servers);
        }
    }
}

/// A snapshot to send: the full table of the latest version, shared with
/// the other watchers sent it, or one cut for this watcher alone.
enum Snap {
    Shared(Arc<SharedSnapshot>),
    Own {
        table: RouteTable,
        version: u64,
        wakes: Vec<WakeUpdate>,
        /// Partial: only these buckets (the rest matched the hello).
        only: Option<BucketSet>,
    },
}

/// The item being sent in pieces.
enum Sending {
    Snapshot {
        snap: Snap,
        /// Pieces sent so far.
        index: usize,
        /// Where the next piece starts.
        after: String,
    },
    Change {
        from: u64,
        version: u64,
        change: Arc<Change>,
        pos: usize,
    },
    Counts(VecDeque<PlayerCounts>),
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    sending: Option<Sending>,
    cut: Option<Cut>,
    /// Version of the last whole snapshot or delta handed out: what the
    /// edge holds once it applied everything, and what heartbeats say.
    sent_version: u64,
}

impl Queue {
    /// The next message to send, building at most one piece.
    fn next_msg(&mut self, epoch: &str) -> Option<WatchOut> {
        loop {
            match self.sending.take() {
                Some(Sending::Snapshot {
                    mut snap,
                    index,
                    after,
                }) => {
                    let (out, next, version) = match &snap {
                        Snap::Shared(s) => match s.piece(index, &after, epoch) {
                            Some((bytes, next)) => (WatchOut::Encoded(bytes), next, s.version),
                            None => {
                                // Retired: the table moved on. Cut the rest
                                // of this version alone.
                                snap = Snap::Own {
                                    table: s.table.clone(),
                                    version: s.version,
                                    wakes: s.wakes.clone(),
                                    only: None,
                                };
                                self.sending = Some(Sending::Snapshot { snap, index, after });
                                continue;
                            }
                        },
                        Snap::Own {
                            table,
                            version,
                            wakes,
                            only,
                        } => {
                            let (msg, next) = snapshot_chunk(
                                table,
                                &after,
                                (epoch, *version),
                                wakes,
                                only.as_ref(),
                            );
                            (WatchOut::msg(msg), next, *version)
                        }
                    };
                    match next {
                        Some(after) => {
                            self.sending = Some(Sending::Snapshot {
                                snap,
                                index: index + 1,
                                after,
                            })
                        }
                        None => self.sent_version = version,
                    }
                    return Some(out);
                }
                Some(Sending::Change {
                    from,
                    version,
                    change,
                    mut pos,
                }) => {
                    let msg = delta_piece(
                        &change.upserts,
                        &change.removed,
                        &mut pos,
                        (epoch, from, version),
                    );
                    if pos < change.len() {
                        self.sending = Some(Sending::Change {
                            from,
                            version,
                            change,
                            pos,
                        });
                    } else {
                        self.sent_version = version;
                    }
                    return Some(WatchOut::msg(msg));
                }
                Some(Sending::Counts(mut pieces)) => {
                    if let Some(piece) = pieces.pop_front() {
                        if !pieces.is_empty() {
                            self.sending = Some(Sending::Counts(pieces));
                        }
                        return Some(WatchOut::msg(watch_response::Msg::Counts(piece)));
                    }
                }
                None => {}
            }
            match self.items.pop_front()? {
                Item::Snapshot(snap) => {
                    self.sending = Some(Sending::Snapshot {
                        snap,
                        index: 0,
                        after: String::new(),
                    })
                }
                Item::Change {
                    from,
                    version,
                    change,
                } => {
                    self.sending = Some(Sending::Change {
                        from,
                        version,
                        change,
                        pos: 0,
                    })
                }
                Item::Wake(w) => return Some(WatchOut::msg(watch_response::Msg::Wake(w))),
                Item::WakeSet(wakes) => {
                    return Some(WatchOut::msg(watch_response::Msg::WakeSet(WakeSet {
                        wakes,
                    })))
                }
                Item::Heartbeat => return Some(WatchOut::msg(self.heartbeat(epoch))),
                Item::Counts(u) => {
                    let pieces = counts_pieces(u.full, u.servers.into_values().collect());
                    self.sending = Some(Sending::Counts(pieces.into()));
                }
            }
        }
    }

    fn heartbeat(&self, epoch: &str) -> watch_response::Msg {
        watch_response::Msg::Heartbeat(Heartbeat {
            epoch: epoch.to_owned(),
            version: self.sent_version,
        })
    }
}

impl Outbox {
    fn new(items: VecDeque<Item>, sent_version: u64) -> Self {
        Self {
            queue: Mutex::new(Queue {
                items,
                sent_version,
                ..Queue::default()
            }),
            ready: Notify::new(),
            handed_ms: AtomicI64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `item`; false when the queue is full.
    fn push(&self, item: Item, cap: usize) -> bool {
        let mut q = self.lock();
        if q.cut.is_some() {
            return true;
        }
        if q.items.len() >= cap {
            return false;
        }
        q.items.push_back(item);
        drop(q);
        self.ready.notify_one();
        true
    }

    /// Queue player counts, merged into counts already queued and not yet
    /// being sent; false when the queue is full.
    fn push_counts(&self, update: CountsUpdate, cap: usize) -> bool {
        let mut q = self.lock();
        if q.cut.is_some() {
            return true;
        }
        if let Some(Item::Counts(queued)) =
            q.items.iter_mut().find(|i| matches!(i, Item::Counts(_)))
        {
            queued.merge(update);
        } else if q.items.len() >= cap {
            return false;
        } else {
            q.items.push_back(Item::Counts(update));
        }
        drop(q);
        self.ready.notify_one();
        true
    }

    /// Drop everything queued and end the stream when it is next polled.
    fn cut(&self, why: Cut) {
        let mut q = self.lock();
        q.items.clear();
        q.sending = None;
        q.cut = Some(why);
        drop(q);
        self.ready.notify_one();
    }
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

/// Change sets held for resume may add up to this many routes and names:
/// about one table's worth (resuming past that costs as much as a snapshot).
fn history_budget(table_len: usize) -> usize {
    table_len.max(HISTORY_MIN)
}

/// The history may always hold this many routes and names, however small
/// the table.
const HISTORY_MIN: usize = 1024;

/// Most routes (upserted or removed) a resume composes from the history:
/// the composition runs under the state lock and each resumed watcher keeps
/// its own copy, so an edge that missed more gets a snapshot of the buckets
/// that differ (or the shared full snapshot) instead.
const MAX_RESUME_ROUTES: usize = 4096;

/// Whether the changes after `version` in `history` touch at most
/// [`MAX_RESUME_ROUTES`] routes (counted from the newest, stopping early).
fn missed_fits(history: &VecDeque<(u64, Arc<Change>)>, version: u64) -> bool {
    let mut missed = 0usize;
    for (v, c) in history.iter().rev() {
        if *v <= version {
            break;
        }
        missed += c.len();
        if missed > MAX_RESUME_ROUTES {
            return false;
        }
    }
    true
}

fn ip_of(peer: Option<SocketAddr>) -> Option<IpAddr> {
    peer.map(|p| p.ip().to_canonical())
}

impl Publisher {
    pub fn new(limits: WatchLimits, metrics: Metrics, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            epoch: new_epoch(),
            limits: WatchLimits {
                queue_cap: limits.queue_cap.max(1),
                ..limits
            },
            next_watcher: AtomicU64::new(1),
            metrics,
            shutdown,
            current: ArcSwap::from_pointee(Current::default()),
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
        self.current.load().version
    }

    /// The current table and its version, without taking the state lock.
    pub fn current(&self) -> Arc<Current> {
        self.current.load_full()
    }

    /// Run `f` with the current table (lookups, diffs).
    pub fn with_table<R>(&self, f: impl FnOnce(&RouteTable, u64) -> R) -> R {
        let cur = self.current();
        f(&cur.table, cur.version)
    }

    /// Replace the whole table by `routes` (a full re-read): publishes the
    /// difference, if any.
    pub fn apply_full(&self, routes: &Routes) -> Option<(Applied, Arc<Change>)> {
        // A whole-table diff is O(table): it runs on a version of the table
        // (an O(1) clone) without the state lock, which subscribes, acks and
        // wake updates need meanwhile. Should another change have been
        // published in between (the LISTEN loop is the only writer, so it
        // cannot today), the diff is made again under the lock.
        let (table, version) = {
            let st = self.lock();
            (st.table.clone(), st.version)
        };
        let change = diff::diff_all(&table, routes);
        drop(table);
        let mut st = self.lock();
        let change = if st.version == version {
            change
        } else {
            diff::diff_all(&st.table, routes)
        };
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

    /// Fold the table's changes since its last base into a new base when
    /// they have grown that large (once per half a table of changed
    /// servers): O(n), ~0.1 s at a million routes and ~0.2 s more to free
    /// the old table, so it runs on a blocking thread over a clone, without the state lock that
    /// subscribes, acks, wake updates and every publish need. The result is
    /// the same table, swapped in if no change was published meanwhile
    /// (the LISTEN loop, the one writer, awaits this; should it not, the
    /// fold is dropped and tried again after the next change).
    pub async fn compact_if_due(&self) {
        let (table, version) = {
            let st = self.lock();
            if !st.table.wants_compaction() {
                return;
            }
            (st.table.clone(), st.version)
        };
        let started = Instant::now();
        let Ok(table) = tokio::task::spawn_blocking(move || table.folded()).await else {
            return;
        };
        // What is left to free: the unfolded table (freeing its changes
        // costs about what the fold did, ~0.2 s at a million routes, so not
        // under the lock either), or the fold itself if it came too late.
        let (installed, garbage): (Option<usize>, Box<dyn std::any::Any + Send>) = {
            let mut st = self.lock();
            if st.version == version {
                let unfolded = std::mem::replace(&mut st.table, table);
                let current = self.current.swap(Arc::new(Current {
                    version,
                    table: st.table.clone(),
                }));
                (Some(st.table.len()), Box::new((unfolded, current)))
            } else {
                (None, Box::new(table))
            }
        };
        let _ = tokio::task::spawn_blocking(move || drop(garbage)).await;
        if let Some(routes) = installed {
            tracing::debug!(
                version,
                routes,
                took_ms = started.elapsed().as_millis() as u64,
                "route table re-based"
            );
        }
    }

    fn publish_locked(&self, st: &mut State, change: Change) -> Option<(Applied, Arc<Change>)> {
        if change.is_empty() {
            return None;
        }
        let from = st.version;
        st.version += 1;
        let version = st.version;
        // A big change to an empty table (the first read) is the whole
        // table: resuming from before it costs what a snapshot does, so it
        // is not kept (at 100k routes it would pin a second copy of every
        // route). History stays contiguous: what came before it goes too.
        let whole_table = st.table.is_empty() && change.len() > HISTORY_MIN;
        // O(log n) a change; the occasional O(n) fold of the table's
        // overlay is left to `compact_if_due`, off this lock.
        st.table
            .apply_changes(change.upserts.iter().cloned(), &change.removed);
        // syncd's own table keeps its bucket hashes worked out (a table
        // built in one pass, as the first read's is, works them out only
        // when asked): every later change then updates them in place, and
        // no hello or snapshot hashes the whole table again, under this
        // lock or anywhere.
        st.table.bucket_hashes();
        if !st.overflowed {
            if st.changed.len() + change.len() > MAX_CHANGED {
                st.overflowed = true;
                st.changed.clear();
            } else {
                let names = change.upserts.iter().map(|r| &r.server);
                st.changed
                    .extend(names.chain(change.removed.iter()).cloned());
            }
        }
        if let Some(old) = st.shared.upgrade() {
            old.retire();
        }
        let change = Arc::new(change);
        if whole_table {
            st.history.clear();
            st.history_size = 0;
        } else {
            st.history.push_back((version, change.clone()));
            st.history_size += change.len();
        }
        let budget = history_budget(st.table.len());
        while st.history.len() > self.limits.history_len || st.history_size > budget {
            match st.history.pop_front() {
                Some((_, old)) => st.history_size -= old.len(),
                None => break,
            }
        }
        self.current.store(Arc::new(Current {
            version,
            table: st.table.clone(),
        }));
        if !st.watchers.is_empty() {
            self.broadcast_locked(st, || Item::Change {
                from,
                version,
                change: change.clone(),
            });
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

    fn broadcast_locked(&self, st: &mut State, item: impl Fn() -> Item) {
        let full: Vec<u64> = st
            .watchers
            .iter()
            .filter(|(_, w)| !w.outbox.push(item(), self.limits.queue_cap))
            .map(|(id, _)| *id)
            .collect();
        for id in full {
            self.cut_locked(st, id, Cut::Behind);
        }
    }

    fn cut_locked(&self, st: &mut State, id: u64, why: Cut) {
        let Some(w) = st.watchers.remove(&id) else {
            return;
        };
        w.outbox.cut(why);
        let peer = w.peer.map(|p| p.to_string()).unwrap_or_default();
        match why {
            Cut::Behind => {
                self.metrics.watchers_cut.inc();
                tracing::warn!(
                    watcher.id = id,
                    edge.id = %w.edge_id,
                    peer.addr = %peer,
                    queue = self.limits.queue_cap,
                    "watcher cut off: its queue is full (too slow or stuck); it must resubscribe"
                );
            }
            Cut::Stalled => {
                self.metrics.watchers_stalled.inc();
                tracing::warn!(
                    watcher.id = id,
                    edge.id = %w.edge_id,
                    peer.addr = %peer,
                    send_timeout = ?self.limits.send_timeout,
                    "watcher cut off: it did not take a message within the send timeout (not reading); it must resubscribe"
                );
            }
        }
        self.metrics.watchers.set(st.watchers.len() as i64);
    }

    /// Cut every watcher that was handed a message longer than the send
    /// timeout ago and has not asked for the next one. Run by
    /// [`Publisher::enforce_deadlines`]; public for tests.
    pub fn cut_stalled(&self, now_ms: i64) -> usize {
        let limit = i64::try_from(self.limits.send_timeout.as_millis()).unwrap_or(i64::MAX);
        let mut st = self.lock();
        let stalled: Vec<u64> = st
            .watchers
            .iter()
            .filter(|(_, w)| {
                let handed = w.outbox.handed_ms.load(Ordering::Acquire);
                handed != 0 && now_ms.saturating_sub(handed) > limit
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &stalled {
            self.cut_locked(&mut st, *id, Cut::Stalled);
        }
        if !stalled.is_empty() {
            self.update_lag_locked(&st);
        }
        stalled.len()
    }

    /// Check the send timeout (a few times per timeout) and the relayed
    /// phases' lifetimes until shutdown.
    pub async fn enforce_deadlines(self: Arc<Self>) {
        let every =
            (self.limits.send_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {
                    self.cut_stalled(now_ms());
                    for server in self.expire_relayed(Instant::now()) {
                        tracing::warn!(
                            server,
                            "no end heard for a wake or stop relayed from another syncd; edges now show it as failed"
                        );
                    }
                }
            }
        }
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

    /// Record that a server started or stopped waking, and tell every watcher
    /// (`failure`: why, for `WAKE_PHASE_FAILED`; UNSPECIFIED otherwise).
    pub fn set_wake(&self, server: &str, phase: WakePhase, failure: WakeFailure) {
        let mut st = self.lock();
        // This instance's own word on the server supersedes a relayed one.
        st.relayed_until.remove(server);
        self.set_wake_locked(&mut st, server, phase, failure);
    }

    /// A phase another syncd announced: told like this instance's own, and
    /// believed until `until` if it is one that waits for an end (a wake or
    /// a stop in flight); see [`Self::expire_relayed`].
    pub fn set_relayed_wake(
        &self,
        server: &str,
        phase: WakePhase,
        failure: WakeFailure,
        until: Instant,
    ) {
        let mut st = self.lock();
        if matches!(phase, WakePhase::Waking | WakePhase::Stopping) {
            st.relayed_until.insert(server.to_owned(), until);
        } else {
            st.relayed_until.remove(server);
        }
        self.set_wake_locked(&mut st, server, phase, failure);
    }

    /// Relayed wakes and stops whose end was never heard by `now`: each is
    /// told as failed by timeout (its outcome is unknown here), so edges stop
    /// showing it as starting. Returns the servers.
    pub fn expire_relayed(&self, now: Instant) -> Vec<String> {
        let mut st = self.lock();
        let expired: Vec<String> = st
            .relayed_until
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(server, _)| server.clone())
            .collect();
        for server in &expired {
            st.relayed_until.remove(server);
            self.set_wake_locked(&mut st, server, WakePhase::Failed, WakeFailure::Timeout);
        }
        expired
    }

    fn set_wake_locked(
        &self,
        st: &mut State,
        server: &str,
        phase: WakePhase,
        failure: WakeFailure,
    ) {
        if matches!(
            phase,
            WakePhase::Waking | WakePhase::Asleep | WakePhase::Stopping
        ) {
            st.waking.insert(server.to_owned(), phase);
        } else {
            st.waking.remove(server);
        }
        let update = WakeUpdate {
            server: server.to_owned(),
            phase: phase as i32,
            failure: failure as i32,
        };
        self.broadcast_locked(st, || Item::Wake(update.clone()));
    }

    /// Servers whose route changed since the last call.
    pub fn take_changed(&self) -> ChangedRoutes {
        let mut st = self.lock();
        if std::mem::take(&mut st.overflowed) {
            ChangedRoutes::All
        } else {
            ChangedRoutes::Some(std::mem::take(&mut st.changed))
        }
    }

    /// Every watcher's id and edge id.
    pub fn watcher_ids(&self) -> Vec<(u64, String)> {
        let st = self.lock();
        st.watchers
            .iter()
            .map(|(id, w)| (*id, w.edge_id.clone()))
            .collect()
    }

    /// Queue player counts for watcher `id` (merged with counts it has not
    /// been sent yet). A watcher whose queue is full is cut off, as for
    /// route changes.
    pub fn send_counts(&self, id: u64, update: CountsUpdate) {
        let mut st = self.lock();
        let Some(w) = st.watchers.get(&id) else {
            return;
        };
        if !w.outbox.push_counts(update, self.limits.queue_cap) {
            self.cut_locked(&mut st, id, Cut::Behind);
            self.update_lag_locked(&st);
        }
    }

    /// Register a watcher and build its stream: a snapshot (or, resuming
    /// within this epoch, one delta of what it missed and the wake set),
    /// then deltas, wake updates and heartbeats. Refused when `peer`
    /// already has the most watchers allowed.
    pub fn subscribe(
        self: &Arc<Self>,
        hello: &WatchHello,
        peer: Option<SocketAddr>,
    ) -> Result<WatchStream, Status> {
        let id = self.next_watcher.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        let peer_ip = ip_of(peer);
        if let Some(ip) = peer_ip {
            let from_peer = st.streams.get(&ip).copied().unwrap_or(0);
            if from_peer >= self.limits.per_peer {
                drop(st);
                self.metrics.watchers_refused.inc();
                tracing::warn!(
                    peer.addr = %ip,
                    edge.id = %hello.edge_id,
                    limit = self.limits.per_peer,
                    "watch refused: too many watchers from this address"
                );
                return Err(Status::resource_exhausted(format!(
                    "{from_peer} watchers from {ip} already; the limit is {} (syncd --max-watchers-per-peer)",
                    self.limits.per_peer
                )));
            }
        }
        let mut items = VecDeque::new();
        let resumed = hello.epoch == self.epoch && hello.version <= st.version;
        let covered = st
            .history
            .front()
            .is_some_and(|(v, _)| v.saturating_sub(1) <= hello.version)
            && missed_fits(&st.history, hello.version);
        let wakes = waking_updates(&st.waking);
        let (acked_epoch, acked_version, sent_version, how) =
            if resumed && hello.version == st.version {
                items.push_back(Item::Heartbeat);
                (
                    self.epoch.clone(),
                    hello.version,
                    hello.version,
                    "up to date",
                )
            } else if resumed && covered {
                let missed = diff::compose(
                    st.history
                        .iter()
                        .filter(|(v, _)| *v > hello.version)
                        .map(|(_, c)| c.as_ref()),
                );
                items.push_back(Item::Change {
                    from: hello.version,
                    version: st.version,
                    change: Arc::new(missed),
                });
                (self.epoch.clone(), hello.version, hello.version, "resumed")
            } else {
                // An edge that proves what it holds (bucket hashes) gets
                // only the buckets that differ, unless that is most of them.
                let only = st
                    .table
                    .differing_buckets(&hello.bucket_hashes)
                    .filter(|d| d.len() <= BUCKETS / 2)
                    .map(|d| BucketSet::new(&d));
                let how = if only.is_some() {
                    "differing buckets"
                } else {
                    "snapshot"
                };
                let snap = match only {
                    Some(only) => Snap::Own {
                        table: st.table.clone(),
                        version: st.version,
                        wakes: wakes.clone(),
                        only: Some(only),
                    },
                    None => Snap::Shared(shared_snapshot(&mut st, &wakes)),
                };
                items.push_back(Item::Snapshot(snap));
                (String::new(), 0, 0, how)
            };
        if resumed {
            // A resumed edge did not see wake updates while away: the whole
            // set replaces what it holds, so wakes that ended meanwhile clear.
            items.push_back(Item::WakeSet(wakes));
        }
        let outbox = Arc::new(Outbox::new(items, sent_version));
        st.watchers.insert(
            id,
            Watcher {
                outbox: outbox.clone(),
                edge_id: hello.edge_id.clone(),
                peer,
                connected_since_ms: now_ms(),
                acked_epoch,
                acked_version,
            },
        );
        if let Some(ip) = peer_ip {
            *st.streams.entry(ip).or_default() += 1;
        }
        self.metrics.watchers.set(st.watchers.len() as i64);
        self.update_lag_locked(&st);
        let version = st.version;
        drop(st);
        tracing::info!(
            watcher.id = id,
            edge.id = %hello.edge_id,
            peer.addr = %peer.map(|p| p.to_string()).unwrap_or_default(),
            from.epoch = %hello.epoch,
            from.version = hello.version,
            version,
            how,
            "watcher subscribed"
        );
        Ok(WatchStream {
            id,
            peer_ip,
            publisher: self.clone(),
            outbox,
        })
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

    /// Stream `id` (from `peer_ip`) ended: the watcher, if it was not cut
    /// already, and its count against the peer's limit go.
    fn remove(&self, id: u64, peer_ip: Option<IpAddr>) {
        let mut st = self.lock();
        if st.watchers.remove(&id).is_some() {
            tracing::info!(watcher.id = id, "watcher left");
        }
        if let Some(ip) = peer_ip {
            if let Entry::Occupied(mut open) = st.streams.entry(ip) {
                *open.get_mut() -= 1;
                if *open.get() == 0 {
                    open.remove();
                }
            }
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
                peer: w.peer.map(|p| p.to_string()).unwrap_or_default(),
                connected_since_ms: w.connected_since_ms,
                acked_epoch: w.acked_epoch.clone(),
                acked_version: w.acked_version,
                lag: self.lag(st.version, w),
            })
            .collect();
        edges.sort_by_key(|e| e.watcher_id);
        (st.version, edges)
    }

    /// The phase edges hold for `server` (waking, stopping or asleep), if any.
    pub fn wake_phase(&self, server: &str) -> Option<WakePhase> {
        self.lock().waking.get(server).copied()
    }

    pub fn route(&self, server: &str) -> Option<Route> {
        self.current().table.get(server).cloned()
    }

    /// Resolve what a player typed with the edges' matching rules.
    pub fn resolve(&self, hostname: &str) -> Result<GetRouteResponse, HostnameTooLong> {
        self.current().table.resolve(hostname)
    }
}

/// The shared full snapshot of the current version with `wakes`: the one
/// being sent already, or a new one (retiring one with other wakes).
fn shared_snapshot(st: &mut State, wakes: &[WakeUpdate]) -> Arc<SharedSnapshot> {
    let live = st.shared.upgrade();
    if let Some(s) = &live {
        if s.fits(st.version, wakes) {
            return s.clone();
        }
        s.retire();
    }
    let s = Arc::new(SharedSnapshot::new(
        st.table.clone(),
        st.version,
        wakes.to_vec(),
    ));
    st.shared = Arc::downgrade(&s);
    s
}

fn waking_updates(waking: &BTreeMap<String, WakePhase>) -> Vec<WakeUpdate> {
    waking
        .iter()
        .map(|(server, phase)| WakeUpdate {
            server: server.clone(),
            phase: *phase as i32,
            ..WakeUpdate::default()
        })
        .collect()
}

/// The outgoing half of one watch: drains the watcher's outbox one piece at
/// a time, with a heartbeat whenever the stream was idle for the heartbeat
/// interval. Dropping it (the edge went away) unregisters the watcher.
pub struct WatchStream {
    id: u64,
    peer_ip: Option<IpAddr>,
    publisher: Arc<Publisher>,
    outbox: Arc<Outbox>,
}

impl WatchStream {
    pub fn id(&self) -> u64 {
        self.id
    }

    async fn next_message(&mut self) -> Result<WatchOut, Status> {
        // tonic asks for the next message: the last one was taken.
        self.outbox.handed_ms.store(0, Ordering::Release);
        let epoch = self.publisher.epoch.as_str();
        let shutdown = &self.publisher.shutdown;
        loop {
            let msg = {
                let mut q = self.outbox.lock();
                if let Some(why) = q.cut {
                    return Err(why.status());
                }
                q.next_msg(epoch)
            };
            let msg = match msg {
                Some(m) => m,
                None => tokio::select! {
                    biased;
                    () = shutdown.cancelled() => {
                        return Err(Status::unavailable("syncd is shutting down"))
                    }
                    () = self.outbox.ready.notified() => continue,
                    () = tokio::time::sleep(self.publisher.limits.heartbeat) => {
                        WatchOut::msg(self.outbox.lock().heartbeat(epoch))
                    }
                },
            };
            self.outbox
                .handed_ms
                .store(now_ms().max(1), Ordering::Release);
            return Ok(msg);
        }
    }

    /// Turn into a `Stream` for tonic; it ends after the first error.
    pub fn into_stream(self) -> impl Stream<Item = Result<WatchOut, Status>> + Send + 'static {
        futures::stream::unfold((self, false), |(mut s, done)| async move {
            if done {
                return None;
            }
            let item = s.next_message().await;
            let done = item.is_err();
            Some((item, (s, done)))
        })
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.publisher.remove(self.id, self.peer_ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automc_proto::v1::WatchResponse;
    use futures::StreamExt;

    fn route(name: &str, address: &str) -> Route {
        Route {
            server: name.into(),
            hostnames: vec![format!("{name}.example.com")],
            address: address.into(),
            state: "running".into(),
            ..Route::default()
        }
    }

    fn routes(list: &[Route]) -> Routes {
        list.iter().map(|r| (r.server.clone(), r.clone())).collect()
    }

    fn publisher(queue: usize, history: usize) -> Arc<Publisher> {
        Publisher::new(
            WatchLimits {
                queue_cap: queue,
                history_len: history,
                heartbeat: Duration::from_secs(3600),
                send_timeout: Duration::from_secs(5),
                per_peer: 3,
            },
            Metrics::new(),
            CancellationToken::new(),
        )
    }

    fn peer(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([10, 0, 0, 1], port)))
    }

    fn sub(p: &Arc<Publisher>, h: &WatchHello) -> WatchStream {
        p.subscribe(h, peer(1)).expect("subscribed")
    }

    fn hello(epoch: &str, version: u64) -> WatchHello {
        WatchHello {
            edge_id: "t".into(),
            epoch: epoch.into(),
            version,
            bucket_hashes: vec![],
        }
    }

    async fn first(
        s: &mut (impl Stream<Item = Result<WatchOut, Status>> + Unpin),
    ) -> watch_response::Msg {
        s.next()
            .await
            .expect("stream item")
            .expect("ok item")
            .into_response()
            .expect("decodes")
            .msg
            .expect("msg")
    }

    #[tokio::test]
    async fn syncds_table_keeps_its_bucket_hashes_worked_out() {
        // A first read big enough to build the table in one pass, then a
        // change: no hello or snapshot after either has to hash it all.
        let p = publisher(8, 8);
        let first: Vec<Route> = (0..HISTORY_MIN + 10)
            .map(|i| route(&format!("s{i:05}"), "1:1"))
            .collect();
        p.apply_full(&routes(&first));
        assert!(p.current().table.hashes_worked_out());
        let mut next = first.clone();
        next[3].address = "2:2".into();
        p.apply_full(&routes(&next));
        let cur = p.current();
        assert!(cur.table.hashes_worked_out());
        let fresh = RouteTable::from_routes(next);
        assert_eq!(cur.table.bucket_hashes(), fresh.bucket_hashes());
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
        let mut s = Box::pin(sub(&p, &hello("", 0)).into_stream());
        match first(&mut s).await {
            watch_response::Msg::SnapshotChunk(snap) => {
                assert_eq!(snap.version, 1);
                assert_eq!(snap.routes.len(), 1);
                assert!(snap.last);
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
        let mut s = Box::pin(sub(&p, &hello(&epoch, 1)).into_stream());
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
            let mut s = Box::pin(sub(&p, &h).into_stream());
            assert!(
                matches!(first(&mut s).await, watch_response::Msg::SnapshotChunk(_)),
                "{h:?}"
            );
        }
    }

    #[tokio::test]
    async fn full_queue_cuts_the_watcher_and_not_the_others() {
        let p = publisher(2, 8);
        let stuck = sub(&p, &hello("", 0));
        let mut live = Box::pin(sub(&p, &hello("", 0)).into_stream());
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
        // Cutting emptied its outbox (the snapshot is not kept for it).
        let mut stuck = Box::pin(stuck.into_stream());
        let err = stuck.next().await.expect("item").expect_err("cut off");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(stuck.next().await.is_none());
    }

    #[tokio::test]
    async fn a_relayed_wake_whose_end_is_never_heard_is_failed_when_it_expires() {
        let p = publisher(8, 8);
        p.apply_full(&routes(&[route("a", "1:1"), route("b", "1:1")]));
        let now = Instant::now();
        let ttl = Duration::from_secs(100);
        p.set_relayed_wake("a", WakePhase::Waking, WakeFailure::Unspecified, now + ttl);
        p.set_relayed_wake("b", WakePhase::Waking, WakeFailure::Unspecified, now + ttl);
        // This instance's own word on b supersedes the relayed one.
        p.set_wake("b", WakePhase::Waking, WakeFailure::Unspecified);
        let mut s = Box::pin(sub(&p, &hello("", 0)).into_stream());
        assert!(matches!(
            first(&mut s).await,
            watch_response::Msg::SnapshotChunk(_)
        ));
        assert!(p.expire_relayed(now + ttl / 2).is_empty(), "not yet");
        assert_eq!(p.expire_relayed(now + ttl), ["a"]);
        assert_eq!(p.wake_phase("a"), None);
        assert_eq!(p.wake_phase("b"), Some(WakePhase::Waking));
        match first(&mut s).await {
            watch_response::Msg::Wake(w) => {
                assert_eq!(w.server, "a");
                assert_eq!(w.phase(), WakePhase::Failed);
                assert_eq!(w.failure(), WakeFailure::Timeout);
            }
            other => panic!("expected the wake's end, got {other:?}"),
        }
        // A relayed end clears the lease: nothing left to expire.
        p.set_relayed_wake("a", WakePhase::Waking, WakeFailure::Unspecified, now);
        p.set_relayed_wake("a", WakePhase::Running, WakeFailure::Unspecified, now);
        assert!(p.expire_relayed(now + ttl).is_empty());
    }

    #[tokio::test]
    async fn a_resume_gets_the_whole_wake_set_and_heartbeats_name_the_stream_version() {
        let p = publisher(8, 8);
        p.apply_full(&routes(&[route("a", "1:1")]));
        p.set_wake("a", WakePhase::Waking, WakeFailure::Unspecified);
        p.set_wake("a", WakePhase::Running, WakeFailure::Unspecified);
        p.set_wake("b", WakePhase::Waking, WakeFailure::Unspecified);
        let epoch = p.epoch().to_owned();
        let mut s = Box::pin(sub(&p, &hello(&epoch, 1)).into_stream());
        match first(&mut s).await {
            watch_response::Msg::Heartbeat(h) => assert_eq!(h.version, 1),
            other => panic!("expected heartbeat, got {other:?}"),
        }
        match first(&mut s).await {
            watch_response::Msg::WakeSet(set) => {
                let names: Vec<&str> = set.wakes.iter().map(|w| w.server.as_str()).collect();
                assert_eq!(names, ["b"], "a finished: only b is waking");
            }
            other => panic!("expected wake set, got {other:?}"),
        }
        // A change queued but not yet taken does not change what the next
        // heartbeat of this stream says until the delta itself goes out.
        let mut q = VecDeque::new();
        q.push_back(Item::Heartbeat);
        let outbox = Outbox::new(q, 7);
        p.apply_full(&routes(&[route("a", "1:2")]));
        match outbox.lock().next_msg(&epoch).map(WatchOut::into_response) {
            Some(Ok(WatchResponse {
                msg: Some(watch_response::Msg::Heartbeat(h)),
            })) => assert_eq!(h.version, 7),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.version(), 2);
    }

    #[tokio::test]
    async fn a_watcher_that_does_not_take_its_message_is_cut_and_the_others_are_not() {
        let p = publisher(8, 8);
        p.apply_full(&routes(&[route("a", "1:1")]));
        let mut stalled = Box::pin(sub(&p, &hello("", 0)).into_stream());
        first(&mut stalled).await; // handed out, never asked for the next
        let idle = sub(&p, &hello("", 0)); // never polled at all: nothing handed
        let live = sub(&p, &hello("", 0));
        let live_box = live.outbox.clone();
        let mut live = Box::pin(live.into_stream());
        first(&mut live).await;
        let live_poll = tokio::spawn(async move {
            let m = first(&mut live).await;
            (live, m)
        });
        // Wait (bounded) until the live stream asked for more.
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while live_box.handed_ms.load(Ordering::Acquire) != 0 {
            assert!(
                std::time::Instant::now() < end,
                "live stream never polled again"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(p.cut_stalled(now_ms()), 0, "nothing is late yet");
        assert_eq!(p.cut_stalled(now_ms() + 6_000), 1);
        assert_eq!(p.edges().1.len(), 2, "only the stalled one is gone");
        let err = stalled.next().await.expect("item").expect_err("cut off");
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        p.apply_full(&routes(&[route("a", "1:2")]));
        let (_live, m) = live_poll.await.expect("live task");
        assert!(matches!(m, watch_response::Msg::Delta(_)));
        drop(idle);
    }

    #[tokio::test]
    async fn one_peer_address_gets_at_most_the_watcher_limit() {
        let p = publisher(8, 8);
        let held: Vec<WatchStream> = (1..=3)
            .map(|port| {
                p.subscribe(&hello("", 0), peer(port))
                    .expect("under the limit")
            })
            .collect();
        let err = p
            .subscribe(&hello("", 0), peer(9))
            .err()
            .expect("over the limit");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        let other = SocketAddr::from(([10, 0, 0, 2], 1));
        assert!(p.subscribe(&hello("", 0), Some(other)).is_ok());
        drop(held);
        assert!(p.subscribe(&hello("", 0), peer(9)).is_ok());
    }

    #[tokio::test]
    async fn a_cut_stream_counts_against_its_peer_until_the_client_closes_it() {
        let p = publisher(8, 8);
        p.apply_full(&routes(&[route("a", "1:1")]));
        let mut stalled = Box::pin(sub(&p, &hello("", 0)).into_stream());
        first(&mut stalled).await; // handed out, never asked for the next
        assert_eq!(p.cut_stalled(now_ms() + 6_000), 1);
        assert!(p.edges().1.is_empty(), "cut: no longer listed");
        let _two: Vec<WatchStream> = (0..2).map(|_| sub(&p, &hello("", 0))).collect();
        let err = p
            .subscribe(&hello("", 0), peer(9))
            .err()
            .expect("the cut stream is still open, so this is the fourth");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        drop(stalled);
        assert!(p.subscribe(&hello("", 0), peer(9)).is_ok());
    }

    #[tokio::test]
    async fn a_resume_that_missed_too_many_routes_gets_a_snapshot_not_a_delta() {
        let p = publisher(8, 100_000);
        let name = |i: usize| format!("s{i:05}");
        let mut t: Routes = (0..20_000)
            .map(|i| (name(i), route(&name(i), "1:1")))
            .collect();
        p.apply_full(&t);
        let half = MAX_RESUME_ROUTES / 2 + 1;
        for (round, range) in [(2, 0..half), (3, half..2 * half)] {
            for i in range {
                t.insert(name(i), route(&name(i), &format!("1:{round}")));
            }
            p.apply_full(&t);
        }
        let epoch = p.epoch().to_owned();
        let mut s = Box::pin(sub(&p, &hello(&epoch, 2)).into_stream());
        match first(&mut s).await {
            watch_response::Msg::Delta(d) => assert_eq!((d.from_version, d.version), (2, 3)),
            other => panic!("one change missed: expected a delta, got {other:?}"),
        }
        let mut s = Box::pin(sub(&p, &hello(&epoch, 1)).into_stream());
        assert!(
            matches!(first(&mut s).await, watch_response::Msg::SnapshotChunk(_)),
            "{} routes missed: a snapshot",
            2 * half
        );
    }

    #[tokio::test]
    async fn a_big_first_read_is_not_kept_for_resume_and_later_changes_are() {
        let p = publisher(8, 8);
        let mut t = Routes::new();
        for i in 0..=HISTORY_MIN {
            t.insert(format!("s{i:05}"), route(&format!("s{i:05}"), "1:1"));
        }
        p.apply_full(&t);
        assert!(p.lock().history.is_empty(), "the whole first table");
        t.insert("s00000".into(), route("s00000", "1:2"));
        p.apply_full(&t);
        let epoch = p.epoch().to_owned();
        // From the first version: one delta. From before it: a snapshot.
        let mut s = Box::pin(sub(&p, &hello(&epoch, 1)).into_stream());
        match first(&mut s).await {
            watch_response::Msg::Delta(d) => {
                assert_eq!((d.from_version, d.version), (1, 2));
                assert_eq!(d.upserts, vec![route("s00000", "1:2")]);
            }
            other => panic!("expected delta, got {other:?}"),
        }
        let mut s = Box::pin(sub(&p, &hello(&epoch, 0)).into_stream());
        assert!(matches!(
            first(&mut s).await,
            watch_response::Msg::SnapshotChunk(_)
        ));
    }

    #[tokio::test]
    async fn history_holds_about_one_table_of_changes() {
        let p = publisher(8, 100_000);
        let mut t = Routes::new();
        for i in 0..3000 {
            t.insert(format!("s{i:05}"), route(&format!("s{i:05}"), "1:1"));
        }
        p.apply_full(&t);
        for round in 0..5 {
            for r in t.values_mut() {
                r.address = format!("2:{round}");
            }
            p.apply_full(&t);
        }
        let st = p.lock();
        assert!(st.history_size <= history_budget(st.table.len()));
        assert_eq!(st.history.len(), 1, "each change set is a whole table");
    }

    /// Read one whole snapshot from `s`: the table it stands for and the
    /// shared bytes of each piece (null for a piece built for this watcher).
    async fn whole_snapshot(
        s: &mut (impl Stream<Item = Result<WatchOut, Status>> + Unpin),
    ) -> (u64, RouteTable, Vec<*const u8>) {
        use automc_proto::sync::{Assembler, Event};
        let mut asm = Assembler::new();
        let mut shared = Vec::new();
        loop {
            let out = s.next().await.expect("item").expect("ok");
            shared.push(match &out {
                WatchOut::Encoded(b) => b.as_ptr(),
                WatchOut::Msg(_) => std::ptr::null(),
            });
            let msg = out.into_response().expect("decodes").msg.expect("msg");
            match asm.push(msg).expect("framing") {
                Some(Event::Snapshot {
                    version,
                    table,
                    table_hash,
                    ..
                }) => {
                    assert_eq!(table.table_hash(), table_hash);
                    return (version, table, shared);
                }
                Some(other) => panic!("{other:?} inside a snapshot"),
                None => {}
            }
        }
    }

    fn many(n: usize, address: &str) -> Routes {
        (0..n)
            .map(|i| route(&format!("s{i:05}"), address))
            .map(|r| (r.server.clone(), r))
            .collect()
    }

    #[tokio::test]
    async fn a_due_fold_swaps_in_the_same_table_at_the_same_version() {
        let p = publisher(8, 8);
        p.apply_full(&many(5_000, "1:1"));
        p.compact_if_due().await;
        assert!(!p.lock().table.wants_compaction(), "a fresh base");
        p.apply_full(&many(5_000, "2:2"));
        let before = p.current();
        assert!(before.table.wants_compaction(), "publishing left the fold");
        p.compact_if_due().await;
        let after = p.current();
        assert_eq!(after.version, before.version);
        assert!(!after.table.wants_compaction(), "served from the new base");
        assert!(!p.lock().table.wants_compaction());
        assert_eq!(after.table.table_hash(), before.table.table_hash());
        assert!(after.table.routes().eq(before.table.routes()));
        // The table goes on taking changes from its new base.
        p.apply_full(&many(5_001, "2:2"));
        assert_eq!(p.version(), before.version + 1);
        assert_eq!(p.current().table.len(), 5_001);
    }

    #[tokio::test]
    async fn watchers_of_one_version_share_its_pieces_and_a_change_retires_them() {
        let p = publisher(8, 8);
        p.apply_full(&many(5_000, "1:1"));
        let table_v1 = p.current().table.clone();
        let mut a = Box::pin(sub(&p, &hello("", 0)).into_stream());
        let mut b = Box::pin(sub(&p, &hello("", 0)).into_stream());
        let (va, ta, pa) = whole_snapshot(&mut a).await;
        let (vb, tb, pb) = whole_snapshot(&mut b).await;
        assert_eq!((va, vb), (1, 1));
        assert_eq!(ta.table_hash(), table_v1.table_hash());
        assert_eq!(tb.table_hash(), table_v1.table_hash());
        assert!(pa.len() > 2, "several pieces");
        assert!(pa.iter().all(|p| !p.is_null()), "full snapshots are shared");
        assert_eq!(pa, pb, "the second watcher got the first one's bytes");
        drop((a, b));

        // A third watcher is half way through when the table changes: the
        // rest of its snapshot is still version 1, cut for it alone, and
        // the pieces are no longer kept.
        let mut c = Box::pin(sub(&p, &hello("", 0)).into_stream());
        let piece = c.next().await.expect("item").expect("ok");
        assert!(matches!(piece, WatchOut::Encoded(_)));
        p.apply_full(&many(5_000, "2:2"));
        assert!(p.lock().shared.upgrade().is_none_or(|s| !s.fits(1, &[])));
        let mut asm = automc_proto::sync::Assembler::new();
        let msg = piece.into_response().expect("decodes").msg.expect("msg");
        assert!(asm.push(msg).expect("framing").is_none());
        let rest = loop {
            let out = c.next().await.expect("item").expect("ok");
            assert!(matches!(out, WatchOut::Msg(_)), "retired: built alone");
            let msg = out.into_response().expect("decodes").msg.expect("msg");
            if let Some(ev) = asm.push(msg).expect("framing") {
                break ev;
            }
        };
        match rest {
            automc_proto::sync::Event::Snapshot { version, table, .. } => {
                assert_eq!(version, 1);
                assert_eq!(table.table_hash(), table_v1.table_hash());
            }
            other => panic!("{other:?}"),
        }
        // Then the change, as a delta.
        match first(&mut c).await {
            watch_response::Msg::Delta(d) => assert_eq!((d.from_version, d.version), (1, 2)),
            other => panic!("{other:?}"),
        }
        // A watcher of version 2 gets fresh shared pieces of version 2.
        drop(c);
        let mut d = Box::pin(sub(&p, &hello("", 0)).into_stream());
        let (vd, td, pd) = whole_snapshot(&mut d).await;
        assert_eq!(vd, 2);
        assert_eq!(td.table_hash(), p.current().table.table_hash());
        assert!(pd.iter().all(|p| !p.is_null()));
        // Nothing holds the pieces once no watcher is sending them.
        drop(d);
        assert!(p.lock().shared.upgrade().is_none());
    }
}
