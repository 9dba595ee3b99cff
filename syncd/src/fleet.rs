//! Who is on every server, across all edges.
//!
//! Each edge reports its live sessions on its watch stream (a full report,
//! then changes; `automc.v1.SessionReport`). [`FleetState`] keeps one entry
//! per stream and adds them up per server. When a stream drops, its entry is
//! kept, marked *unknown*, for the edge grace period: the edge may still be
//! proxying players while it cannot reach syncd, so its last counts stand
//! and nothing sleeps meanwhile. A new stream from the same edge id replaces
//! it at its first full report.
//!
//! Everything an edge sends is bounded here: names are checked against the
//! Login Start limits, and each stream holds at most [`MAX_SERVERS_PER_EDGE`]
//! servers and [`MAX_PLAYERS_PER_EDGE`] players (counts stay exact past the
//! player cap; only the names are not kept).
//!
//! [`FleetState`] is plain data and unit-tested; [`Fleet`] puts it behind a
//! mutex that is never held across an `.await`.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use automc_proto::v1::{EdgeCount, EventKind, PlayerInfo, PlayerSession, SessionReport};

use crate::events::Events;
use crate::metrics::Metrics;

/// Servers one stream may report sessions for.
pub const MAX_SERVERS_PER_EDGE: usize = 100_000;
/// Players one stream may list (counts stay exact beyond).
pub const MAX_PLAYERS_PER_EDGE: usize = 200_000;
/// Longest server name accepted in a report (like a hostname).
pub const MAX_SERVER_NAME_BYTES: usize = 255;
/// Login Start bounds: names are at most 16 characters.
pub const MAX_PLAYER_NAME_CHARS: usize = 16;
/// A hyphenated UUID.
pub const MAX_UUID_CHARS: usize = 36;

pub use automc_proto::sessions::Counts;

/// A player who joined or left, as one report (or an expiry) showed it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlayerChange {
    pub joined: bool,
    pub edge_id: String,
    pub player: PlayerSession,
}

impl PlayerChange {
    fn joined(edge_id: &str, player: PlayerSession) -> Self {
        Self {
            joined: true,
            edge_id: edge_id.to_owned(),
            player,
        }
    }

    fn left(edge_id: &str, player: PlayerSession) -> Self {
        Self {
            joined: false,
            edge_id: edge_id.to_owned(),
            player,
        }
    }
}

/// What one watch stream reported.
#[derive(Debug, Default)]
struct EdgeSessions {
    edge_id: String,
    servers: HashMap<String, Counts>,
    players: HashMap<u64, PlayerSession>,
    /// A full report being received in pieces.
    pending: Option<(HashMap<String, Counts>, HashMap<u64, PlayerSession>)>,
    /// When the stream dropped; `None` while it is live.
    lost: Option<Instant>,
    /// Entries refused (caps, bad names) since the stream started.
    refused: u64,
    /// Listed players per server and backend address (from `players`).
    backends: HashMap<String, HashMap<String, u32>>,
}

/// Count `p` on its backend (`add`) or stop counting it.
fn index_player(index: &mut HashMap<String, HashMap<String, u32>>, p: &PlayerSession, add: bool) {
    if p.backend.is_empty() {
        return;
    }
    if add {
        *index
            .entry(p.server.clone())
            .or_default()
            .entry(p.backend.clone())
            .or_insert(0) += 1;
    } else if let Some(by) = index.get_mut(&p.server) {
        if let Some(n) = by.get_mut(&p.backend) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by.remove(&p.backend);
            }
        }
        if by.is_empty() {
            index.remove(&p.server);
        }
    }
}

fn build_index(players: &HashMap<u64, PlayerSession>) -> HashMap<String, HashMap<String, u32>> {
    let mut index = HashMap::new();
    for p in players.values() {
        index_player(&mut index, p, true);
    }
    index
}

/// One stream's sessions of one server, as the counts sent back to edges
/// add them up.
#[derive(Debug, Clone, Copy)]
pub struct Contribution<'a> {
    pub watcher: u64,
    pub edge_id: &'a str,
    /// The stream dropped: these are its last counts (grace period).
    pub lost: bool,
    /// Players plus held logins.
    pub seats: u32,
    /// Listed players per backend address.
    pub backends: Option<&'a HashMap<String, u32>>,
}

/// One server's sessions across the fleet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerSessions {
    pub total: Counts,
    /// Per edge, in edge-id order; only edges with a session.
    pub edges: Vec<EdgeCount>,
    /// Some of the counts come from an edge whose stream dropped.
    pub unknown: bool,
}

/// Sessions of every edge.
#[derive(Debug, Default)]
pub struct FleetState {
    edges: HashMap<u64, EdgeSessions>,
    /// Unix ms a player (or held login) was last on each server.
    last_seen: HashMap<String, i64>,
    /// Unix ms at which the set of unknown edges last changed.
    unknown_changed_ms: Option<i64>,
    /// Servers whose players or held logins changed on some stream (or
    /// whose stream dropped or was forgotten) since [`FleetState::take_dirty`].
    dirty: HashSet<String>,
}

fn valid_server(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_SERVER_NAME_BYTES
}

fn valid_player(p: &PlayerSession) -> bool {
    valid_server(&p.server)
        && p.name.encode_utf16().count() <= MAX_PLAYER_NAME_CHARS
        && p.uuid.len() <= MAX_UUID_CHARS
}

impl FleetState {
    /// Apply one report of stream `watcher` (edge `edge_id`) received at `now`.
    /// Returns the players who joined and left with it.
    pub fn apply(
        &mut self,
        watcher: u64,
        edge_id: &str,
        report: SessionReport,
        now_ms: i64,
    ) -> Vec<PlayerChange> {
        let mut changes = Vec::new();
        let e = self.edges.entry(watcher).or_default();
        edge_id.clone_into(&mut e.edge_id);
        e.lost = None;
        let mut touched: Vec<String> = Vec::new();
        let mut refused = 0u64;
        let index = &mut e.backends;
        let completed_full = {
            let (servers, players) = if report.full {
                let (s, p) = e.pending.get_or_insert_with(Default::default);
                (s, p)
            } else {
                (&mut e.servers, &mut e.players)
            };
            for c in &report.servers {
                if !valid_server(&c.server) {
                    refused += 1;
                    continue;
                }
                let n = Counts::from(c);
                if n.is_zero() {
                    if let Some(old) = servers.remove(&c.server) {
                        if old.active() {
                            touched.push(c.server.clone());
                        }
                    }
                } else if servers.len() < MAX_SERVERS_PER_EDGE || servers.contains_key(&c.server) {
                    let old = servers.insert(c.server.clone(), n);
                    if n.active() || old.is_some_and(|o| o.active()) {
                        touched.push(c.server.clone());
                    }
                } else {
                    refused += 1;
                }
            }
            for id in &report.left {
                if let Some(p) = players.remove(id) {
                    if !report.full {
                        index_player(index, &p, false);
                        touched.push(p.server.clone());
                        changes.push(PlayerChange::left(edge_id, p));
                    }
                }
            }
            for p in report.joined {
                if !valid_player(&p) || players.len() >= MAX_PLAYERS_PER_EDGE {
                    refused += 1;
                    continue;
                }
                let old = players.insert(p.session, p.clone());
                if !report.full {
                    if let Some(old) = &old {
                        index_player(index, old, false);
                    }
                    index_player(index, &p, true);
                    touched.push(p.server.clone());
                    if old.is_none() {
                        changes.push(PlayerChange::joined(edge_id, p));
                    }
                }
            }
            report.full && !report.more
        };
        e.refused += refused;
        if completed_full {
            // This edge is back: an earlier stream of it is no longer unknown.
            // Its connection ids are the same (same process), so players it
            // still has neither left nor joined.
            let stale: Vec<u64> = self
                .edges
                .iter()
                .filter(|(id, o)| **id != watcher && o.lost.is_some() && o.edge_id == edge_id)
                .map(|(id, _)| *id)
                .collect();
            let mut before: HashMap<u64, PlayerSession> = HashMap::new();
            for id in stale {
                if let Some(old) = self.forget(id, now_ms) {
                    before.extend(old.players);
                }
            }
            let Some(e) = self.edges.get_mut(&watcher) else {
                return changes;
            };
            before.extend(e.players.drain());
            if let Some((servers, players)) = e.pending.take() {
                for (id, p) in &before {
                    if !players.contains_key(id) {
                        changes.push(PlayerChange::left(edge_id, p.clone()));
                    }
                }
                for (id, p) in &players {
                    if !before.contains_key(id) {
                        changes.push(PlayerChange::joined(edge_id, p.clone()));
                    }
                }
                let before: Vec<String> = e
                    .servers
                    .iter()
                    .filter(|(_, c)| c.active())
                    .map(|(s, _)| s.clone())
                    .collect();
                touched.extend(before);
                touched.extend(
                    servers
                        .iter()
                        .filter(|(_, c)| c.active())
                        .map(|(s, _)| s.clone()),
                );
                e.backends = build_index(&players);
                e.servers = servers;
                e.players = players;
            }
        }
        for s in touched {
            self.last_seen.insert(s.clone(), now_ms);
            self.dirty.insert(s);
        }
        changes
    }

    /// Stream `watcher` dropped at `now`: its counts stand, unknown.
    pub fn lose(&mut self, watcher: u64, now: Instant, now_ms: i64) {
        if let Some(e) = self.edges.get_mut(&watcher) {
            e.lost = Some(now);
            e.pending = None;
            self.unknown_changed_ms = Some(now_ms);
            // Its counts are now "unknown" ones.
            self.dirty.extend(
                e.servers
                    .iter()
                    .filter(|(_, c)| c.active())
                    .map(|(s, _)| s.clone()),
            );
        }
    }

    fn forget(&mut self, watcher: u64, now_ms: i64) -> Option<EdgeSessions> {
        let e = self.edges.remove(&watcher)?;
        // Its players are gone from this moment on (as far as syncd knows).
        for (s, c) in &e.servers {
            if c.active() {
                self.last_seen.insert(s.clone(), now_ms);
                self.dirty.insert(s.clone());
            }
        }
        if e.lost.is_some() {
            self.unknown_changed_ms = Some(now_ms);
        }
        Some(e)
    }

    /// Forget streams that have been unknown longer than `grace`; their
    /// players count as having left.
    pub fn expire(&mut self, now: Instant, now_ms: i64, grace: Duration) -> Vec<PlayerChange> {
        let old: Vec<u64> = self
            .edges
            .iter()
            .filter(|(_, e)| e.lost.is_some_and(|t| now.duration_since(t) >= grace))
            .map(|(id, _)| *id)
            .collect();
        let mut changes = Vec::new();
        for id in old {
            if let Some(e) = self.forget(id, now_ms) {
                let edge = e.edge_id;
                changes.extend(
                    e.players
                        .into_values()
                        .map(|p| PlayerChange::left(&edge, p)),
                );
            }
        }
        changes
    }

    /// Edges whose stream dropped and whose grace has not passed, with the
    /// moment each dropped.
    pub fn unknown_edges(&self) -> Vec<(String, Instant)> {
        let mut v: Vec<_> = self
            .edges
            .values()
            .filter_map(|e| e.lost.map(|t| (e.edge_id.clone(), t)))
            .collect();
        v.sort();
        v
    }

    /// Unix ms at which the set of unknown edges last changed (`None`: never).
    pub fn unknown_changed_ms(&self) -> Option<i64> {
        self.unknown_changed_ms
    }

    /// Unix ms a player was last on `server`, if since syncd started.
    pub fn last_seen(&self, server: &str) -> Option<i64> {
        self.last_seen.get(server).copied()
    }

    /// Per server, every edge's counts added up.
    pub fn servers(&self) -> BTreeMap<String, ServerSessions> {
        let mut out: BTreeMap<String, ServerSessions> = BTreeMap::new();
        let mut edges: Vec<&EdgeSessions> = self.edges.values().collect();
        edges.sort_by(|a, b| a.edge_id.cmp(&b.edge_id));
        for e in edges {
            for (server, c) in &e.servers {
                let s = out.entry(server.clone()).or_default();
                s.total.add(*c);
                s.unknown |= e.lost.is_some();
                s.edges.push(EdgeCount {
                    edge_id: e.edge_id.clone(),
                    players: c.players,
                    holding: c.holding,
                    status: c.status,
                    unknown: e.lost.is_some(),
                });
            }
        }
        out
    }

    /// Every listed player, in (server, name, edge) order.
    pub fn players(&self) -> Vec<PlayerInfo> {
        let mut v: Vec<PlayerInfo> = self
            .edges
            .values()
            .flat_map(|e| {
                e.players.values().map(|p| PlayerInfo {
                    name: p.name.clone(),
                    uuid: p.uuid.clone(),
                    server: p.server.clone(),
                    edge_id: e.edge_id.clone(),
                    since_ms: p.since_ms,
                })
            })
            .collect();
        v.sort_by(|a, b| {
            (&a.server, &a.name, &a.edge_id, a.since_ms)
                .cmp(&(&b.server, &b.name, &b.edge_id, b.since_ms))
        });
        v
    }

    /// The servers whose counts may have changed since the last call.
    pub fn take_dirty(&mut self) -> HashSet<String> {
        std::mem::take(&mut self.dirty)
    }

    /// Servers with players or held logins on any stream.
    pub fn active_servers(&self) -> HashSet<&str> {
        self.edges
            .values()
            .flat_map(|e| {
                e.servers
                    .iter()
                    .filter(|(_, c)| c.active())
                    .map(|(s, _)| s.as_str())
            })
            .collect()
    }

    /// Every stream's players and held logins of `server`.
    pub fn contributions(&self, server: &str) -> Vec<Contribution<'_>> {
        self.edges
            .iter()
            .filter_map(|(id, e)| {
                let c = e.servers.get(server)?;
                let seats = c.players.saturating_add(c.holding);
                (seats > 0).then(|| Contribution {
                    watcher: *id,
                    edge_id: &e.edge_id,
                    lost: e.lost.is_some(),
                    seats,
                    backends: e.backends.get(server),
                })
            })
            .collect()
    }

    /// Entries refused across every live stream.
    pub fn refused(&self) -> u64 {
        self.edges.values().map(|e| e.refused).sum()
    }
}

/// The shared fleet view of one syncd.
pub struct Fleet {
    state: Mutex<FleetState>,
    grace: Duration,
    metrics: Metrics,
    events: Events,
}

impl Fleet {
    pub fn new(grace: Duration, metrics: Metrics, events: Events) -> Self {
        Self {
            state: Mutex::new(FleetState::default()),
            grace,
            metrics,
            events,
        }
    }

    fn announce(&self, changes: Vec<PlayerChange>) {
        for c in changes {
            let kind = if c.joined {
                EventKind::PlayerJoined
            } else {
                EventKind::PlayerLeft
            };
            let p = &c.player;
            self.events
                .player(kind, &p.server, &c.edge_id, &p.name, &p.uuid);
        }
    }

    /// How long an edge whose stream dropped counts as unknown.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// The state, with edges past their grace forgotten first.
    pub fn lock(&self) -> MutexGuard<'_, FleetState> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let gone = st.expire(Instant::now(), crate::publisher::now_ms(), self.grace);
        self.announce(gone);
        st
    }

    pub fn report(&self, watcher: u64, edge_id: &str, report: SessionReport) {
        self.metrics.session_reports.inc();
        let mut st = self.lock();
        let before = st.refused();
        let changes = st.apply(watcher, edge_id, report, crate::publisher::now_ms());
        let refused = st.refused().saturating_sub(before);
        drop(st);
        self.announce(changes);
        if refused > 0 {
            self.metrics.session_entries_refused.inc_by(refused);
            tracing::debug!(
                watcher.id = watcher,
                edge.id = edge_id,
                refused,
                "session report entries refused (caps or bad names)"
            );
        }
    }

    pub fn lost(&self, watcher: u64) {
        self.lock()
            .lose(watcher, Instant::now(), crate::publisher::now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automc_proto::v1::ServerSessions as Wire;

    fn player(id: u64, server: &str, name: &str) -> PlayerSession {
        automc_proto::fake::player(id, server, name, 5)
    }

    fn wire(server: &str, players: u32, holding: u32) -> Wire {
        Wire {
            server: server.into(),
            players,
            holding,
            status: 0,
        }
    }

    fn full(servers: Vec<Wire>, joined: Vec<PlayerSession>) -> SessionReport {
        SessionReport {
            full: true,
            more: false,
            servers,
            joined,
            left: vec![],
        }
    }

    fn total(st: &FleetState, server: &str) -> Counts {
        st.servers()
            .get(server)
            .map(|s| s.total)
            .unwrap_or_default()
    }

    #[test]
    fn counts_add_up_across_edges_and_deltas_apply() {
        let mut st = FleetState::default();
        st.apply(
            1,
            "e1",
            full(
                vec![wire("lobby", 2, 0)],
                vec![player(1, "lobby", "a"), player(2, "lobby", "b")],
            ),
            100,
        );
        st.apply(
            2,
            "e2",
            full(vec![wire("lobby", 1, 1)], vec![player(7, "lobby", "c")]),
            100,
        );
        assert_eq!(
            total(&st, "lobby"),
            Counts {
                players: 3,
                holding: 1,
                status: 0
            }
        );
        let per_edge: Vec<_> = st.servers()["lobby"]
            .edges
            .iter()
            .map(|e| (e.edge_id.clone(), e.players))
            .collect();
        assert_eq!(per_edge, vec![("e1".into(), 2), ("e2".into(), 1)]);
        assert_eq!(st.players().len(), 3);
        // e1's last player on lobby leaves.
        st.apply(
            1,
            "e1",
            SessionReport {
                servers: vec![wire("lobby", 0, 0)],
                left: vec![1, 2],
                ..SessionReport::default()
            },
            200,
        );
        assert_eq!(total(&st, "lobby").players, 1);
        assert_eq!(st.last_seen("lobby"), Some(200));
        assert_eq!(st.players().len(), 1);
    }

    #[test]
    fn a_full_report_in_pieces_replaces_only_when_complete() {
        let mut st = FleetState::default();
        st.apply(1, "e1", full(vec![wire("old", 1, 0)], vec![]), 1);
        let mut first = full(vec![wire("new", 1, 0)], vec![]);
        first.more = true;
        st.apply(1, "e1", first, 2);
        assert_eq!(total(&st, "old").players, 1, "not replaced yet");
        st.apply(1, "e1", full(vec![wire("other", 2, 0)], vec![]), 3);
        assert_eq!(total(&st, "old").players, 0);
        assert_eq!(total(&st, "new").players, 1);
        assert_eq!(total(&st, "other").players, 2);
        assert_eq!(st.last_seen("old"), Some(3), "its players left at the swap");
    }

    #[test]
    fn a_dropped_edge_stays_unknown_until_its_grace_passes_or_it_returns() {
        let grace = Duration::from_secs(30);
        let mut st = FleetState::default();
        let t = Instant::now();
        st.apply(1, "e1", full(vec![wire("lobby", 1, 0)], vec![]), 1);
        st.lose(1, t, 1);
        st.expire(t + Duration::from_secs(10), 2, grace);
        assert_eq!(st.unknown_edges().len(), 1);
        assert!(st.servers()["lobby"].unknown);
        assert_eq!(total(&st, "lobby").players, 1, "last counts stand");
        st.expire(t + grace, 3, grace);
        assert!(st.unknown_edges().is_empty());
        assert_eq!(total(&st, "lobby").players, 0);
        assert_eq!(st.last_seen("lobby"), Some(3));

        // Back under a new stream: the unknown entry goes at its full report.
        st.apply(2, "e2", full(vec![wire("lobby", 1, 0)], vec![]), 4);
        st.lose(2, t, 4);
        st.apply(3, "e2", full(vec![], vec![]), 5);
        assert!(st.unknown_edges().is_empty());
        assert_eq!(total(&st, "lobby").players, 0);
    }

    #[test]
    fn bad_names_and_entries_past_the_caps_are_refused() {
        let mut st = FleetState::default();
        let long_server = "s".repeat(MAX_SERVER_NAME_BYTES + 1);
        st.apply(
            1,
            "e1",
            full(
                vec![wire(&long_server, 1, 0), wire("", 1, 0), wire("ok", 2, 0)],
                vec![
                    player(1, "ok", &"n".repeat(17)),
                    player(2, "ok", "fine"),
                    player(3, &long_server, "x"),
                ],
            ),
            1,
        );
        assert_eq!(st.refused(), 4);
        assert_eq!(st.servers().len(), 1);
        assert_eq!(st.players().len(), 1);
    }
}
