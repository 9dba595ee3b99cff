//! Fleet player counts sent back to edges (`automc.v1.PlayerCounts` on the
//! watch stream), for the routes that use them: `least-players` picks and
//! `max_players` limits.
//!
//! Each edge gets the counts of every *other* edge: it adds its own
//! sessions itself, exactly and at once, so a burst of logins at one edge
//! is never invisible to that edge between two counts (see
//! docs/routing.md). "Other" means another stream, and not a dropped stream
//! of the same edge id (the edge's own earlier connection, whose sessions
//! it still has).
//!
//! Bounds: one pass per `--counts-interval`; only servers whose counts or
//! route changed are looked at, and only what differs from what a watcher
//! was last sent goes out. A watcher holds at most one counts item (new
//! counts merge into a queued one, see the publisher), and a set is cut
//! into pieces of at most `CHUNK_BYTES`. A new stream gets everything once.
//! [`others`] and [`Counter::step`] are plain functions over the state and
//! unit-tested.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use automc_proto::v1::{BackendCount, Route, ServerCount};
use tokio_util::sync::CancellationToken;

use crate::fleet::{Contribution, Fleet, FleetState};
use crate::metrics::Metrics;
use crate::publisher::{ChangedRoutes, CountsUpdate, Publisher};

/// Backends listed per server in one count (a route has at most 65; the
/// rest are addresses a wake returned, which no pick uses).
pub const MAX_BACKENDS_PER_COUNT: usize = 128;

/// What the edge on stream `watcher` (edge id `edge_id`) needs to know of
/// `server`: the players, held logins and per-backend players of every
/// other stream. `None` when there are none.
pub fn others(
    server: &str,
    contributions: &[Contribution<'_>],
    watcher: u64,
    edge_id: &str,
) -> Option<ServerCount> {
    let theirs = contributions
        .iter()
        .filter(|c| c.watcher != watcher && !(c.lost && c.edge_id == edge_id));
    sum(server, theirs)
}

/// Every stream's sessions of `server` (what syncd's own `GetRoute` shows).
pub fn total(server: &str, contributions: &[Contribution<'_>]) -> Option<ServerCount> {
    sum(server, contributions.iter())
}

fn sum<'a>(
    server: &str,
    contributions: impl Iterator<Item = &'a Contribution<'a>>,
) -> Option<ServerCount> {
    let mut players = 0u32;
    let mut unknown = false;
    let mut backends: BTreeMap<&str, u32> = BTreeMap::new();
    for c in contributions {
        players = players.saturating_add(c.seats);
        unknown |= c.lost;
        for (address, n) in c.backends.into_iter().flatten() {
            let e = backends.entry(address.as_str()).or_insert(0);
            *e = e.saturating_add(*n);
        }
    }
    (players > 0).then(|| ServerCount {
        server: server.to_owned(),
        players,
        backends: backends
            .into_iter()
            .take(MAX_BACKENDS_PER_COUNT)
            .map(|(address, players)| BackendCount {
                address: address.to_owned(),
                players,
            })
            .collect(),
        unknown,
    })
}

/// An empty count: "nothing left on other edges".
fn cleared(server: &str) -> ServerCount {
    ServerCount {
        server: server.to_owned(),
        ..ServerCount::default()
    }
}

/// What every watcher was last sent.
#[derive(Debug, Default)]
pub struct Counter {
    sent: HashMap<u64, HashMap<String, ServerCount>>,
}

impl Counter {
    /// One pass: the updates to queue, per watcher. `watchers` are the live
    /// streams, `dirty` the servers whose sessions changed, `changed` the
    /// routes that changed, `uses` whether a server's route uses counts.
    pub fn step(
        &mut self,
        fleet: &FleetState,
        watchers: &[(u64, String)],
        dirty: HashSet<String>,
        changed: ChangedRoutes,
        uses: impl Fn(&str) -> bool,
    ) -> Vec<(u64, CountsUpdate)> {
        let live: HashSet<u64> = watchers.iter().map(|(id, _)| *id).collect();
        self.sent.retain(|id, _| live.contains(id));
        let recheck_all = changed == ChangedRoutes::All;
        let mut recheck = dirty;
        if let ChangedRoutes::Some(names) = changed {
            recheck.extend(names);
        }
        let needs_full = |id: &u64, sent: &HashMap<u64, _>| recheck_all || !sent.contains_key(id);
        let any_full = watchers.iter().any(|(id, _)| needs_full(id, &self.sent));
        let active: Vec<String> = if any_full {
            let mut v: Vec<String> = fleet
                .active_servers()
                .into_iter()
                .filter(|s| uses(s))
                .map(str::to_owned)
                .collect();
            v.sort();
            v
        } else {
            Vec::new()
        };
        // Each server's contributions are read once, for every watcher.
        let mut by_server: HashMap<&str, Vec<Contribution<'_>>> = HashMap::new();
        for s in active.iter().chain(recheck.iter()) {
            by_server
                .entry(s.as_str())
                .or_insert_with(|| fleet.contributions(s));
        }
        let mut out = Vec::new();
        for (id, edge_id) in watchers {
            if needs_full(id, &self.sent) {
                let servers: BTreeMap<String, ServerCount> = active
                    .iter()
                    .filter_map(|s| {
                        let c = by_server.get(s.as_str())?;
                        others(s, c, *id, edge_id).map(|n| (s.clone(), n))
                    })
                    .collect();
                self.sent.insert(*id, servers.clone().into_iter().collect());
                out.push((
                    *id,
                    CountsUpdate {
                        full: true,
                        servers,
                    },
                ));
                continue;
            }
            let Some(sent) = self.sent.get_mut(id) else {
                continue;
            };
            let mut update = CountsUpdate::default();
            for s in &recheck {
                let want = if uses(s) {
                    by_server
                        .get(s.as_str())
                        .and_then(|c| others(s, c, *id, edge_id))
                } else {
                    None
                };
                match want {
                    Some(w) if sent.get(s) == Some(&w) => {}
                    Some(w) => {
                        sent.insert(s.clone(), w.clone());
                        update.servers.insert(s.clone(), w);
                    }
                    None => {
                        if sent.remove(s).is_some() {
                            update.servers.insert(s.clone(), cleared(s));
                        }
                    }
                }
            }
            if !update.servers.is_empty() {
                out.push((*id, update));
            }
        }
        out
    }
}

/// Send counts every `interval` until `shutdown`.
pub async fn run(
    publisher: Arc<Publisher>,
    fleet: Arc<Fleet>,
    metrics: Metrics,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut counter = Counter::default();
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let watchers = publisher.watcher_ids();
        let changed = publisher.take_changed();
        let table = publisher.current();
        let uses = |s: &str| table.table.get(s).is_some_and(Route::uses_counts);
        let updates = {
            let mut st = fleet.lock();
            let dirty = st.take_dirty();
            counter.step(&st, &watchers, dirty, changed, uses)
        };
        for (id, update) in updates {
            metrics.counts_sent.inc();
            publisher.send_counts(id, update);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automc_proto::v1::{PlayerSession, ServerSessions, SessionReport};

    fn report(server: &str, backends: &[&str], holding: u32) -> SessionReport {
        SessionReport {
            full: true,
            more: false,
            servers: vec![ServerSessions {
                server: server.into(),
                players: backends.len() as u32,
                holding,
                status: 0,
            }],
            joined: backends
                .iter()
                .enumerate()
                .map(|(i, b)| PlayerSession {
                    session: i as u64 + 1,
                    server: server.into(),
                    name: format!("p{i}"),
                    uuid: String::new(),
                    since_ms: 1,
                    backend: (*b).into(),
                })
                .collect(),
            left: vec![],
        }
    }

    fn watchers() -> Vec<(u64, String)> {
        vec![(1, "e1".into()), (2, "e2".into())]
    }

    fn count(updates: &[(u64, CountsUpdate)], id: u64, server: &str) -> Option<ServerCount> {
        updates
            .iter()
            .find(|(w, _)| *w == id)
            .and_then(|(_, u)| u.servers.get(server).cloned())
    }

    #[test]
    fn each_edge_gets_the_other_edges_counts_per_backend() {
        let mut st = FleetState::default();
        st.apply(1, "e1", report("lobby", &["a:1", "a:1", "b:1"], 1), 1);
        st.apply(2, "e2", report("lobby", &["b:1"], 0), 1);
        let mut c = Counter::default();
        let dirty = st.take_dirty();
        let first = c.step(
            &st,
            &watchers(),
            dirty,
            ChangedRoutes::Some(HashSet::new()),
            |_| true,
        );
        assert!(
            first.iter().all(|(_, u)| u.full),
            "new streams get everything"
        );
        let to_e2 = count(&first, 2, "lobby").expect("e2 hears of e1's players");
        assert_eq!(to_e2.players, 4, "three players and a held login");
        let per: Vec<(&str, u32)> = to_e2
            .backends
            .iter()
            .map(|b| (b.address.as_str(), b.players))
            .collect();
        assert_eq!(per, [("a:1", 2), ("b:1", 1)]);
        let to_e1 = count(&first, 1, "lobby").expect("e1 hears of e2's");
        assert_eq!(to_e1.players, 1);

        // Nothing changed: nothing sent.
        let again = c.step(
            &st,
            &watchers(),
            HashSet::new(),
            ChangedRoutes::Some(HashSet::new()),
            |_| true,
        );
        assert!(again.is_empty());

        // e2's player leaves: e1 hears that nothing is left; e2 hears nothing.
        st.apply(
            2,
            "e2",
            SessionReport {
                servers: vec![ServerSessions {
                    server: "lobby".into(),
                    ..ServerSessions::default()
                }],
                left: vec![1],
                ..SessionReport::default()
            },
            2,
        );
        let dirty = st.take_dirty();
        let next = c.step(
            &st,
            &watchers(),
            dirty,
            ChangedRoutes::Some(HashSet::new()),
            |_| true,
        );
        assert_eq!(next.len(), 1);
        let cleared = count(&next, 1, "lobby").expect("cleared");
        assert_eq!(
            (cleared.players, cleared.backends.len(), next[0].1.full),
            (0, 0, false)
        );
    }

    #[test]
    fn routes_that_use_no_counts_get_none_and_a_dropped_stream_of_the_same_edge_is_its_own() {
        let mut st = FleetState::default();
        st.apply(1, "e1", report("lobby", &["a:1"], 0), 1);
        st.lose(1, std::time::Instant::now(), 2);
        let mut c = Counter::default();
        // e1 is back as stream 3: its dropped stream is its own, not another edge.
        let w = vec![(2, "e2".to_owned()), (3, "e1".to_owned())];
        let dirty = st.take_dirty();
        let u = c.step(&st, &w, dirty, ChangedRoutes::Some(HashSet::new()), |_| {
            true
        });
        assert!(count(&u, 3, "lobby").is_none());
        let to_e2 = count(&u, 2, "lobby").expect("e2 sees e1's last counts");
        assert!(to_e2.unknown, "from a dropped stream");
        // The route stops using counts: e2 is told to forget them.
        let names: HashSet<String> = ["lobby".to_owned()].into();
        let u = c.step(&st, &w, HashSet::new(), ChangedRoutes::Some(names), |_| {
            false
        });
        assert_eq!(count(&u, 2, "lobby").map(|n| n.players), Some(0));
        // Every route changed: everyone gets a full set again.
        let u = c.step(&st, &w, HashSet::new(), ChangedRoutes::All, |_| true);
        assert!(u.len() == 2 && u.iter().all(|(_, u)| u.full));
    }
}
