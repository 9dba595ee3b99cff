//! Safe sleep (opt-in): ask the waker to stop a server nobody plays on.
//!
//! A server is stopped only when, for the whole sleep period, every edge
//! reported zero players and zero held logins for it, no edge was *unknown*
//! (a dropped stream within its grace period: it may still be proxying
//! players), no wake was in flight, the server has been up at least
//! `--min-uptime`, and this syncd is the active one (a hot standby never
//! sleeps servers). The period also restarts when syncd starts or becomes
//! active, since it knows nothing about the fleet before its edges report.
//!
//! [`decide`] is the whole rule as a pure function; [`Sleeper`] gathers its
//! inputs every tick, starts the stops (through [`Wakes::stop`]) and keeps
//! the player gauges current.
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use automc_proto::v1::{SleepState, WakePhase};
use automc_proto::RouteState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::diff::Change;
use crate::fleet::{Counts, Fleet};
use crate::metrics::Metrics;
use crate::publisher::{now_ms, Publisher};
use crate::servers::SleepView;
use crate::wake::{StopState, Wakes};

pub const DEFAULT_MIN_UPTIME: Duration = Duration::from_secs(300);
pub const DEFAULT_EDGE_GRACE: Duration = Duration::from_secs(120);

/// How syncd sleeps servers.
#[derive(Debug, Clone, Copy)]
pub struct SleepConfig {
    /// Idle time before a stop; `None` = sleeping off (unless a server has
    /// `server_options.sleep_after`).
    pub sleep_after: Option<Duration>,
    /// A server is never stopped sooner than this after it came up.
    pub min_uptime: Duration,
    /// Per-server player gauges (off for very large fleets).
    pub per_server_metrics: bool,
}

impl Default for SleepConfig {
    fn default() -> Self {
        Self {
            sleep_after: None,
            min_uptime: DEFAULT_MIN_UPTIME,
            per_server_metrics: true,
        }
    }
}

/// Everything the rule looks at for one server (times in Unix ms).
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub now_ms: i64,
    pub sleep_after: Option<Duration>,
    pub min_uptime: Duration,
    /// This syncd serves wakes and sleeps; since when.
    pub active_since_ms: Option<i64>,
    /// The route's state column (`None`: no route).
    pub state: Option<RouteState>,
    /// Since when syncd has seen the server up (`None`: not up).
    pub up_since_ms: Option<i64>,
    pub sessions: Counts,
    /// Edges whose stream dropped within their grace period.
    pub unknown_edges: Vec<String>,
    /// When the set of unknown edges last changed.
    pub unknown_changed_ms: Option<i64>,
    /// When a player (or held login) was last on it.
    pub last_seen_ms: Option<i64>,
    pub waking: bool,
    pub stop: Option<StopState>,
}

/// What to do about one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub view: SleepView,
    /// Ask the waker to stop it now.
    pub stop: bool,
}

fn view(state: SleepState, at_ms: i64, reason: impl Into<String>) -> SleepView {
    SleepView {
        state,
        at_ms,
        reason: reason.into(),
    }
}

fn plural(n: u32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The sleep rule for one server.
pub fn decide(i: &Inputs) -> Plan {
    let hold = |v: SleepView| Plan {
        view: v,
        stop: false,
    };
    let Some(after) = i.sleep_after else {
        return hold(SleepView::off());
    };
    match &i.stop {
        Some(StopState::Unsupported { reason }) => {
            return hold(view(SleepState::Disabled, 0, reason.clone()))
        }
        Some(StopState::Stopping { .. }) => {
            return hold(view(
                SleepState::Stopping,
                0,
                "stop request in flight; logins are held and wake it again",
            ))
        }
        Some(StopState::Asleep { .. }) => {
            return hold(view(
                SleepState::Asleep,
                0,
                "stopped by syncd; the next login wakes it",
            ))
        }
        Some(StopState::Failed { .. }) | None => {}
    }
    let Some(state) = i.state else {
        return hold(view(SleepState::Off, 0, "no route for this server"));
    };
    let Some(active_since) = i.active_since_ms else {
        return hold(view(
            SleepState::Busy,
            0,
            "this syncd is a standby: the active one sleeps servers",
        ));
    };
    if i.waking {
        return hold(view(SleepState::Busy, 0, "a wake is in flight"));
    }
    let Some(up_since) = i.up_since_ms else {
        return hold(if state == RouteState::Stopped {
            view(SleepState::Asleep, 0, "servers.state is stopped")
        } else {
            view(SleepState::Busy, 0, "not running yet")
        });
    };
    if i.sessions.active() {
        let mut parts = Vec::new();
        if i.sessions.players > 0 {
            parts.push(plural(i.sessions.players, "player", "players"));
        }
        if i.sessions.holding > 0 {
            parts.push(plural(i.sessions.holding, "held login", "held logins"));
        }
        return hold(view(SleepState::Busy, 0, parts.join(", ")));
    }
    if !i.unknown_edges.is_empty() {
        return hold(view(
            SleepState::Busy,
            0,
            format!(
                "edge {} unknown (stream dropped; waiting for its grace period)",
                i.unknown_edges.join(", ")
            ),
        ));
    }
    let failed_ms = match &i.stop {
        Some(StopState::Failed { at_ms, .. }) => Some(*at_ms),
        _ => None,
    };
    let idle_since = [
        Some(active_since),
        i.last_seen_ms,
        i.unknown_changed_ms,
        failed_ms,
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(active_since);
    let at = (idle_since.saturating_add(ms(after))).max(up_since.saturating_add(ms(i.min_uptime)));
    let reason = match &i.stop {
        Some(StopState::Failed { reason, .. }) => format!("last stop failed: {reason}"),
        _ => "nobody on it".to_owned(),
    };
    Plan {
        stop: i.now_ms >= at,
        view: view(SleepState::Idle, at, reason),
    }
}

/// One look at the fleet, taken under its lock once per sweep or page.
struct FleetView {
    servers: std::collections::BTreeMap<String, crate::fleet::ServerSessions>,
    unknown: Vec<String>,
    unknown_changed_ms: Option<i64>,
    last_seen: HashMap<String, i64>,
}

impl FleetView {
    fn of<'a>(fleet: &Fleet, names: impl Iterator<Item = &'a str>) -> Self {
        let st = fleet.lock();
        let last_seen = names
            .filter_map(|n| st.last_seen(n).map(|t| (n.to_owned(), t)))
            .collect();
        Self {
            servers: st.servers(),
            unknown: st.unknown_edges().into_iter().map(|(e, _)| e).collect(),
            unknown_changed_ms: st.unknown_changed_ms(),
            last_seen,
        }
    }
}

#[derive(Default)]
struct Book {
    /// Since when each server has been seen up.
    up_since: HashMap<String, i64>,
    active_since: Option<i64>,
    /// Each route's `server_options.sleep_after`, kept by [`note_sleep_after`].
    overrides: HashMap<String, Duration>,
    /// Servers with a per-server player gauge.
    gauged: BTreeSet<String>,
}

/// Plans and starts the stops of idle servers.
pub struct Sleeper {
    cfg: SleepConfig,
    publisher: Arc<Publisher>,
    fleet: Arc<Fleet>,
    wakes: Arc<Wakes>,
    metrics: Metrics,
    active: watch::Receiver<bool>,
    book: Mutex<Book>,
}

impl Sleeper {
    pub fn new(
        cfg: SleepConfig,
        publisher: Arc<Publisher>,
        fleet: Arc<Fleet>,
        wakes: Arc<Wakes>,
        metrics: Metrics,
        active: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            publisher,
            fleet,
            wakes,
            metrics,
            active,
            book: Mutex::new(Book::default()),
        })
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hook for applied change sets: the per-server `sleep_after` comes with
    /// each route's options, so no read of its own is needed.
    pub fn routes_changed(&self, change: &Change) {
        note_sleep_after(&mut self.book().overrides, change);
    }

    fn sleep_after(&self, book: &Book, server: &str) -> Option<Duration> {
        book.overrides.get(server).copied().or(self.cfg.sleep_after)
    }

    fn enabled(&self, book: &Book) -> bool {
        self.cfg.sleep_after.is_some() || !book.overrides.is_empty()
    }

    /// How often the planner looks: a tenth of the shortest sleep period,
    /// between 50 ms and 1 s.
    fn tick(&self) -> Duration {
        let shortest = self
            .book()
            .overrides
            .values()
            .copied()
            .chain(self.cfg.sleep_after)
            .min()
            .unwrap_or(Duration::from_secs(10));
        (shortest / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// The inputs of [`decide`] for `server` now, from one look at the fleet.
    fn inputs(&self, book: &Book, fleet: &FleetView, server: &str, now: i64) -> Inputs {
        let route = self.publisher.route(server);
        Inputs {
            now_ms: now,
            sleep_after: self.sleep_after(book, server),
            min_uptime: self.cfg.min_uptime,
            active_since_ms: book.active_since,
            state: route.as_ref().map(|r| RouteState::parse(&r.state)),
            up_since_ms: book.up_since.get(server).copied(),
            sessions: fleet
                .servers
                .get(server)
                .map(|s| s.total)
                .unwrap_or_default(),
            unknown_edges: fleet.unknown.clone(),
            unknown_changed_ms: fleet.unknown_changed_ms,
            last_seen_ms: fleet.last_seen.get(server).copied(),
            waking: self.wakes.is_waking(server)
                || self.publisher.wake_phase(server) == Some(WakePhase::Waking),
            stop: self.wakes.stop_state(server),
        }
    }

    /// `ListServers`' sleep columns for each of `servers` (one look at the
    /// fleet for the whole page).
    pub fn views(&self, servers: &[String]) -> Vec<SleepView> {
        let fleet = FleetView::of(&self.fleet, servers.iter().map(String::as_str));
        let book = self.book();
        let now = now_ms();
        servers
            .iter()
            .map(|s| decide(&self.inputs(&book, &fleet, s, now)).view)
            .collect()
    }

    /// Is `server` up, as far as syncd can tell?
    fn is_up(&self, server: &str, state: RouteState) -> bool {
        match self.wakes.stop_state(server) {
            Some(StopState::Stopping { .. } | StopState::Asleep { .. }) => false,
            _ => state == RouteState::Running || self.wakes.woke_ms(server).is_some(),
        }
    }

    /// One look at every server.
    fn sweep(self: &Arc<Self>) {
        let now = now_ms();
        let active = *self.active.borrow();
        self.update_gauges();
        let mut book = self.book();
        book.active_since = match (active, book.active_since) {
            (true, Some(t)) => Some(t),
            (true, None) => Some(now),
            (false, _) => None,
        };
        if !self.enabled(&book) {
            book.up_since.clear();
            return;
        }
        let cur = self.publisher.current();
        let mut up = HashMap::with_capacity(book.up_since.len());
        let mut stops = Vec::new();
        for r in cur.table.routes() {
            if self.sleep_after(&book, &r.server).is_none() {
                continue;
            }
            if self.is_up(&r.server, RouteState::parse(&r.state)) {
                let since = book.up_since.get(&r.server).copied().unwrap_or(now);
                up.insert(r.server.clone(), since);
            }
        }
        book.up_since = up;
        let fleet = FleetView::of(&self.fleet, book.up_since.keys().map(String::as_str));
        for server in book.up_since.keys() {
            if decide(&self.inputs(&book, &fleet, server, now)).stop {
                stops.push(server.clone());
            }
        }
        drop(book);
        for server in stops {
            self.wakes.stop(&server);
        }
    }

    fn update_gauges(&self) {
        let servers = {
            let st = self.fleet.lock();
            self.metrics
                .unknown_edges
                .set(i64::try_from(st.unknown_edges().len()).unwrap_or(i64::MAX));
            st.servers()
        };
        let total: u64 = servers.values().map(|s| u64::from(s.total.players)).sum();
        self.metrics
            .fleet_players
            .set(i64::try_from(total).unwrap_or(i64::MAX));
        if !self.cfg.per_server_metrics {
            return;
        }
        let mut book = self.book();
        for gone in book.gauged.iter().filter(|s| !servers.contains_key(*s)) {
            self.metrics.remove_server_players(gone);
        }
        for (server, s) in &servers {
            self.metrics
                .set_server_players(server, i64::from(s.total.players));
        }
        book.gauged = servers.into_keys().collect();
    }

    /// Look every tick until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            self.sweep();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.tick()) => {}
            }
        }
    }
}

/// Keep `overrides` (server → its own `sleep_after`) in step with a change
/// set. A route whose `server_options` row was refused has no options, so
/// the global `--sleep-after` applies to it, as for every other option.
fn note_sleep_after(overrides: &mut HashMap<String, Duration>, change: &Change) {
    for r in &change.upserts {
        match r.options.as_ref().and_then(|o| o.sleep_after_ms) {
            Some(ms) => {
                overrides.insert(r.server.clone(), Duration::from_millis(ms));
            }
            None if !overrides.is_empty() => {
                overrides.remove(&r.server);
            }
            None => {}
        }
    }
    for s in &change.removed {
        overrides.remove(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    /// An idle running server, up for an hour, sleep period 10 min, now = 1h.
    fn idle() -> Inputs {
        Inputs {
            now_ms: 3_600_000,
            sleep_after: Some(Duration::from_secs(600)),
            min_uptime: MIN,
            active_since_ms: Some(0),
            state: Some(RouteState::Running),
            up_since_ms: Some(0),
            last_seen_ms: Some(1_000_000),
            ..Inputs::default()
        }
    }

    #[test]
    fn an_idle_server_is_stopped_once_its_period_passed() {
        let p = decide(&idle());
        assert!(p.stop);
        assert_eq!(p.view.state, SleepState::Idle);
        assert_eq!(p.view.at_ms, 1_600_000);
    }

    #[test]
    fn every_blocking_condition_keeps_it_running_with_a_reason() {
        let cases: Vec<(&str, Inputs, SleepState, &str)> = vec![
            (
                "sleeping off",
                Inputs {
                    sleep_after: None,
                    ..idle()
                },
                SleepState::Off,
                "",
            ),
            (
                "one player on one edge",
                Inputs {
                    sessions: Counts {
                        players: 1,
                        ..Counts::default()
                    },
                    ..idle()
                },
                SleepState::Busy,
                "1 player",
            ),
            (
                "a held login",
                Inputs {
                    sessions: Counts {
                        holding: 2,
                        ..Counts::default()
                    },
                    ..idle()
                },
                SleepState::Busy,
                "2 held logins",
            ),
            (
                "an unknown edge",
                Inputs {
                    unknown_edges: vec!["e2".into()],
                    ..idle()
                },
                SleepState::Busy,
                "edge e2 unknown",
            ),
            (
                "a wake in flight",
                Inputs {
                    waking: true,
                    ..idle()
                },
                SleepState::Busy,
                "wake is in flight",
            ),
            (
                "standby",
                Inputs {
                    active_since_ms: None,
                    ..idle()
                },
                SleepState::Busy,
                "standby",
            ),
            (
                "waker cannot stop",
                Inputs {
                    stop: Some(StopState::Unsupported {
                        reason: "waker cannot stop servers: HTTP 404".into(),
                    }),
                    ..idle()
                },
                SleepState::Disabled,
                "HTTP 404",
            ),
            (
                "already asleep",
                Inputs {
                    stop: Some(StopState::Asleep { since_ms: 1 }),
                    ..idle()
                },
                SleepState::Asleep,
                "next login wakes it",
            ),
            (
                "stop in flight",
                Inputs {
                    stop: Some(StopState::Stopping { since_ms: 1 }),
                    ..idle()
                },
                SleepState::Stopping,
                "in flight",
            ),
            (
                "stopped in the table",
                Inputs {
                    up_since_ms: None,
                    state: Some(RouteState::Stopped),
                    ..idle()
                },
                SleepState::Asleep,
                "stopped",
            ),
        ];
        for (what, i, state, reason) in cases {
            let p = decide(&i);
            assert!(!p.stop, "{what}");
            assert_eq!(p.view.state, state, "{what}");
            assert!(p.view.reason.contains(reason), "{what}: {}", p.view.reason);
        }
    }

    #[test]
    fn the_period_restarts_at_every_activity_and_waits_for_min_uptime() {
        let cases: Vec<(&str, Inputs, i64)> = vec![
            (
                "last player left recently",
                Inputs {
                    last_seen_ms: Some(3_500_000),
                    ..idle()
                },
                4_100_000,
            ),
            (
                "an unknown edge just expired",
                Inputs {
                    unknown_changed_ms: Some(3_300_000),
                    ..idle()
                },
                3_900_000,
            ),
            (
                "syncd just became active",
                Inputs {
                    active_since_ms: Some(3_400_000),
                    last_seen_ms: None,
                    ..idle()
                },
                4_000_000,
            ),
            (
                "up only briefly (min uptime)",
                Inputs {
                    up_since_ms: Some(3_590_000),
                    min_uptime: Duration::from_secs(3600),
                    ..idle()
                },
                7_190_000,
            ),
            (
                "the last stop failed",
                Inputs {
                    stop: Some(StopState::Failed {
                        reason: "HTTP 500".into(),
                        at_ms: 3_200_000,
                    }),
                    ..idle()
                },
                3_800_000,
            ),
        ];
        for (what, i, at) in cases {
            let p = decide(&i);
            assert!(!p.stop, "{what}");
            assert_eq!(p.view.at_ms, at, "{what}");
            assert!(decide(&Inputs { now_ms: at, ..i }).stop, "{what} at {at}");
        }
    }

    fn route(server: &str, sleep_after_ms: Option<u64>) -> automc_proto::v1::Route {
        automc_proto::v1::Route {
            server: server.into(),
            hostnames: vec![format!("{server}.example.com")],
            address: "10.0.0.1:25565".into(),
            options: sleep_after_ms.map(|ms| {
                Box::new(automc_proto::v1::RouteOptions {
                    sleep_after_ms: Some(ms),
                    ..Default::default()
                })
            }),
            ..Default::default()
        }
    }

    #[test]
    fn each_routes_sleep_after_follows_its_changes() {
        let mut o = HashMap::new();
        let first = Change {
            upserts: vec![
                route("a", Some(600_000)),
                route("b", None),
                route("c", Some(1)),
            ],
            removed: vec![],
        };
        note_sleep_after(&mut o, &first);
        let want = |pairs: &[(&str, u64)]| -> HashMap<String, Duration> {
            pairs
                .iter()
                .map(|(s, ms)| (s.to_string(), Duration::from_millis(*ms)))
                .collect()
        };
        assert_eq!(o, want(&[("a", 600_000), ("c", 1)]));
        // Set on b, cleared on a (its options row gone or refused), c's route gone.
        let next = Change {
            upserts: vec![route("a", None), route("b", Some(30_000))],
            removed: vec!["c".into()],
        };
        note_sleep_after(&mut o, &next);
        assert_eq!(o, want(&[("b", 30_000)]));
    }
}
