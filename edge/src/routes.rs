//! The route table as this edge holds it: an `Arc<RouteTable>` plus its
//! epoch and version behind an [`ArcSwap`], so the connection path reads it
//! without locks and a sync step replaces it whole (clone, apply, swap:
//! readers never see half an update). The table is persistent, so the clone
//! is O(1) and applying a one-row delta O(log n) whatever the table size.
//! Wake phases per server live beside it, and so do the fleet player
//! counts from syncd (`counts`).
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use automc_proto::v1::{Route, WakeFailure, WakePhase};
use automc_proto::RouteTable;
use tokio::sync::watch;

/// One applied version of the table.
#[derive(Debug, Clone)]
pub struct TableView {
    pub table: Arc<RouteTable>,
    /// Empty until the first snapshot.
    pub epoch: String,
    pub version: u64,
    pub applied_at: SystemTime,
}

impl Default for TableView {
    fn default() -> Self {
        Self {
            table: Arc::new(RouteTable::new()),
            epoch: String::new(),
            version: 0,
            applied_at: SystemTime::now(),
        }
    }
}

/// Shared route state of the edge.
#[derive(Debug)]
pub struct Routes {
    current: ArcSwap<TableView>,
    wakes: ArcSwap<HashMap<String, WakePhase>>,
    /// When this edge learned that each waking server began waking.
    waking_since: Mutex<HashMap<String, Instant>>,
    /// The last failed wake of each server whose latest phase is `Failed`:
    /// why, and when this edge learned it (one entry per routed server at
    /// most; any other phase removes it).
    failed: Mutex<HashMap<String, (WakeFailure, Instant)>>,
    /// Last time syncd changed or confirmed the table (heartbeat).
    confirmed: Mutex<Instant>,
    has_snapshot: AtomicBool,
    version_tx: watch::Sender<u64>,
    /// The other edges' players, from syncd.
    pub counts: Arc<crate::counts::FleetCounts>,
}

impl Default for Routes {
    fn default() -> Self {
        Self::new()
    }
}

impl Routes {
    pub fn new() -> Self {
        Self {
            current: ArcSwap::from_pointee(TableView::default()),
            wakes: ArcSwap::from_pointee(HashMap::new()),
            waking_since: Mutex::default(),
            failed: Mutex::default(),
            confirmed: Mutex::new(Instant::now()),
            has_snapshot: AtomicBool::new(false),
            version_tx: watch::channel(0).0,
            counts: Arc::default(),
        }
    }

    /// The table as of now; cheap, lock-free.
    pub fn view(&self) -> Arc<TableView> {
        self.current.load_full()
    }

    /// True once a first snapshot was applied (the edge is ready).
    pub fn has_snapshot(&self) -> bool {
        self.has_snapshot.load(Ordering::Acquire)
    }

    /// Replace everything with a snapshot.
    pub fn apply_snapshot(
        &self,
        epoch: String,
        version: u64,
        table: RouteTable,
        wakes: HashMap<String, WakePhase>,
    ) {
        let view = TableView {
            table: Arc::new(table),
            epoch,
            version,
            applied_at: SystemTime::now(),
        };
        self.current.store(Arc::new(view));
        self.note_waking(&wakes);
        self.wakes.store(Arc::new(wakes));
        self.has_snapshot.store(true, Ordering::Release);
        self.confirm();
        self.version_tx.send_replace(version);
    }

    /// Apply a delta on a copy (O(1), structurally shared) of the current
    /// table and swap it in: O(log n) a change (the occasional fold is
    /// [`Routes::compact_if_due`]).
    pub fn apply_delta(&self, version: u64, upserts: Vec<Route>, removed: &[String]) {
        let old = self.view();
        let mut table = RouteTable::clone(&old.table);
        table.apply_changes(upserts, removed);
        let view = TableView {
            table: Arc::new(table),
            epoch: old.epoch.clone(),
            version,
            applied_at: SystemTime::now(),
        };
        self.current.store(Arc::new(view));
        self.confirm();
        self.version_tx.send_replace(version);
    }

    /// Fold the current table's changes since its base into a new base
    /// once they are that many (half a table of changed servers): O(n),
    /// ~0.1 s at a million routes and ~0.2 s more to free the old table, so
    /// on a blocking thread, not on a runtime thread that players'
    /// connections share. Readers keep the
    /// current view meanwhile; the folded one (the same routes, version and
    /// epoch) replaces it unless another view was stored in between.
    pub async fn compact_if_due(&self) {
        let view = self.view();
        if !view.table.wants_compaction() {
            return;
        }
        let table = RouteTable::clone(&view.table);
        let Ok(table) = tokio::task::spawn_blocking(move || table.folded()).await else {
            return;
        };
        self.install_folded(&view, table);
        // Freeing the unfolded table's changes costs about what the fold
        // did: on the blocking thread too, when this was its last holder.
        let _ = tokio::task::spawn_blocking(move || drop(view)).await;
    }

    /// Store `table`, the fold of `view`'s, in its place; false (and
    /// nothing stored) when `view` is no longer the current one.
    fn install_folded(&self, view: &Arc<TableView>, table: RouteTable) -> bool {
        let folded = Arc::new(TableView {
            table: Arc::new(table),
            epoch: view.epoch.clone(),
            version: view.version,
            applied_at: view.applied_at,
        });
        let prev = self.current.compare_and_swap(view, folded);
        Arc::ptr_eq(&prev, view)
    }

    /// Record `server`'s new phase; `failure` says why a `Failed` one failed.
    pub fn set_wake(&self, server: String, phase: WakePhase, failure: WakeFailure) {
        if let Ok(mut failed) = self.failed.lock() {
            if phase == WakePhase::Failed {
                failed.insert(server.clone(), (failure, Instant::now()));
            } else {
                failed.remove(&server);
            }
        }
        if let Ok(mut since) = self.waking_since.lock() {
            if phase == WakePhase::Waking {
                since.entry(server.clone()).or_insert_with(Instant::now);
            } else {
                since.remove(&server);
            }
        }
        self.wakes.rcu(|w| {
            let mut w = HashMap::clone(w);
            w.insert(server.clone(), phase);
            w
        });
    }

    /// Replace every wake phase (a resume's wake set).
    pub fn set_wakes(&self, wakes: HashMap<String, WakePhase>) {
        self.note_waking(&wakes);
        self.wakes.store(Arc::new(wakes));
    }

    /// Keep the start time of wakes still in flight, note new ones, forget ended ones.
    fn note_waking(&self, wakes: &HashMap<String, WakePhase>) {
        if let Ok(mut since) = self.waking_since.lock() {
            since.retain(|s, _| wakes.get(s) == Some(&WakePhase::Waking));
            for (s, p) in wakes {
                if *p == WakePhase::Waking {
                    since.entry(s.clone()).or_insert_with(Instant::now);
                }
            }
        }
    }

    /// How long `server` has been waking, as far as this edge knows.
    pub fn waking_for(&self, server: &str) -> Option<std::time::Duration> {
        let since = self.waking_since.lock().ok()?;
        since.get(server).map(Instant::elapsed)
    }

    /// Why the last wake of `server` failed, when it failed less than
    /// `within` ago and nothing happened to it since.
    pub fn failed_within(&self, server: &str, within: std::time::Duration) -> Option<WakeFailure> {
        let failed = self.failed.lock().ok()?;
        failed
            .get(server)
            .filter(|(_, at)| at.elapsed() < within)
            .map(|(f, _)| *f)
    }

    pub fn wake_phase(&self, server: &str) -> Option<WakePhase> {
        self.wakes.load().get(server).copied()
    }

    /// syncd confirmed the table is current.
    pub fn confirm(&self) {
        if let Ok(mut c) = self.confirmed.lock() {
            *c = Instant::now();
        }
    }

    /// Time since syncd last changed or confirmed the table.
    pub fn age(&self) -> std::time::Duration {
        self.confirmed
            .lock()
            .map(|c| c.elapsed())
            .unwrap_or_default()
    }

    /// Resolves whenever a new version is applied.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version_tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automc_proto::fake::route;

    #[test]
    fn delta_applies_on_a_copy() {
        let routes = Routes::new();
        assert!(!routes.has_snapshot());
        routes.apply_snapshot(
            "e1".into(),
            3,
            RouteTable::from_routes([route("a", "a.example.com", "a:25565")]),
            HashMap::new(),
        );
        let before = routes.view();
        routes.apply_delta(
            4,
            vec![route("b", "b.example.com", "b:25565")],
            &["a".into()],
        );
        let after = routes.view();
        let found = |v: &TableView, h: &str| v.table.lookup(h).ok().flatten().is_some();
        assert!(found(&before, "a.example.com"));
        assert!(!found(&after, "a.example.com"));
        assert!(found(&after, "b.example.com"));
        assert_eq!((after.epoch.as_str(), after.version), ("e1", 4));
        assert!(routes.has_snapshot());
    }

    #[tokio::test]
    async fn a_due_fold_keeps_the_view_and_a_newer_view_is_not_replaced() {
        let n = automc_proto::COMPACT_MIN;
        let make = |i: usize, a: &str| route(&format!("s{i}"), &format!("s{i}.example.com"), a);
        let routes = Routes::new();
        routes.apply_snapshot(
            "e1".into(),
            1,
            RouteTable::from_routes((0..n).map(|i| make(i, "a:1"))),
            HashMap::new(),
        );
        routes.compact_if_due().await;
        assert_eq!(routes.view().version, 1, "nothing due: the same view");
        routes.apply_delta(2, (0..n).map(|i| make(i, "b:2")).collect(), &[]);
        let before = routes.view();
        assert!(before.table.wants_compaction(), "the delta left the fold");
        routes.compact_if_due().await;
        let after = routes.view();
        assert!(!after.table.wants_compaction(), "folded");
        assert_eq!((after.epoch.as_str(), after.version), ("e1", 2));
        assert_eq!(after.table.table_hash(), before.table.table_hash());
        let address = |v: &TableView| {
            v.table
                .lookup("s7.example.com")
                .ok()
                .flatten()
                .map(|m| m.route.address.clone())
        };
        assert_eq!(address(&after).as_deref(), Some("b:2"));

        // A fold of a view that a newer delta replaced is dropped.
        routes.apply_delta(3, (0..n).map(|i| make(i, "c:3")).collect(), &[]);
        let stale = routes.view();
        routes.apply_delta(4, vec![make(7, "d:4")], &[]);
        let mut folded = RouteTable::clone(&stale.table);
        folded.compact();
        assert!(!routes.install_folded(&stale, folded));
        assert_eq!(routes.view().version, 4);
        assert_eq!(address(&routes.view()).as_deref(), Some("d:4"));
    }

    #[test]
    fn wake_phases_are_per_server() {
        let routes = Routes::new();
        routes.set_wake("a".into(), WakePhase::Waking, WakeFailure::Unspecified);
        assert_eq!(routes.wake_phase("a"), Some(WakePhase::Waking));
        assert_eq!(routes.wake_phase("b"), None);
        assert!(routes.waking_for("a").is_some());
        assert_eq!(routes.waking_for("b"), None);
        routes.set_wake("a".into(), WakePhase::Running, WakeFailure::Unspecified);
        assert_eq!(routes.waking_for("a"), None, "an ended wake has no age");
        let long = std::time::Duration::from_secs(60);
        routes.set_wake("a".into(), WakePhase::Failed, WakeFailure::Timeout);
        assert_eq!(routes.failed_within("a", long), Some(WakeFailure::Timeout));
        assert_eq!(routes.failed_within("a", std::time::Duration::ZERO), None);
        routes.set_wake("a".into(), WakePhase::Waking, WakeFailure::Unspecified);
        assert_eq!(
            routes.failed_within("a", long),
            None,
            "a new wake clears it"
        );
    }
}
