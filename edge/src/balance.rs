//! Which backend a connection dials, per edge: dial backoffs, round-robin
//! turns and player counts, around the pure choice of
//! [`automc_proto::backend::order`]. Every map is bounded; no lock is held
//! across an await.
//!
//! Player counts (least-players, max_players) are this edge's own sessions,
//! counted here the moment a seat is taken, plus, while syncd's counts are
//! live, the other edges' sessions from [`FleetCounts`]: syncd never counts
//! this edge's sessions in what it sends it, so nothing is counted twice
//! and nothing this edge admits waits for a report to be seen.
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use automc_proto::backend::{order, BackendState};
use automc_proto::v1::{Backend, CountSource, Route};
use ipnet::IpNet;
use lru::LruCache;

use crate::counts::{FleetCounts, Others};

/// How long a backend whose dial failed is tried only after the others.
pub const DEFAULT_BACKEND_BACKOFF: Duration = Duration::from_secs(10);
/// Most entries in each map (backoffs, turns, counts); past it, the least
/// recently failed backoff goes (a backoff is a hint: O(1), never a scan of
/// the map, however many addresses wildcard captures make fail).
const MAX_ENTRIES: usize = 65_536;

#[derive(Debug)]
struct State {
    /// Expanded address → backed off until.
    backoff: LruCache<String, Instant>,
    /// Server → logins picked so far (round-robin turn).
    turns: HashMap<String, u64>,
    /// Expanded address → players spliced to it from this edge.
    on_backend: HashMap<String, u32>,
    /// Server → players (and seats being taken) on this edge.
    on_server: HashMap<String, u32>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            backoff: LruCache::new(NonZeroUsize::new(MAX_ENTRIES).unwrap_or(NonZeroUsize::MIN)),
            turns: HashMap::new(),
            on_backend: HashMap::new(),
            on_server: HashMap::new(),
        }
    }
}

/// Per-edge backend state, shared by every connection.
#[derive(Debug, Clone)]
pub struct Balancer {
    state: Arc<Mutex<State>>,
    backoff_for: Duration,
    counts: Arc<FleetCounts>,
}

/// The player counts of one server (and the backends of one dial set) as
/// this edge uses them now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCounts {
    pub source: CountSource,
    /// Players and seats being taken (held logins) on the server.
    pub players: u32,
    /// Players per backend of the set asked about, in its order.
    pub backends: Vec<u32>,
    /// Part of the fleet counts is an unknown (dropped) edge's last counts.
    pub unknown: bool,
}

/// The backends of one connection, in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub addresses: Vec<String>,
}

impl Balancer {
    pub fn new(backoff_for: Duration, counts: Arc<FleetCounts>) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            backoff_for,
            counts,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn states(
        st: &State,
        set: &[Backend],
        now: Instant,
        others: Option<&Others>,
    ) -> Vec<BackendState> {
        set.iter()
            .map(|b| BackendState {
                backed_off: st.backoff.peek(&b.address).is_some_and(|t| *t > now),
                players: st
                    .on_backend
                    .get(&b.address)
                    .copied()
                    .unwrap_or(0)
                    .saturating_add(others.map_or(0, |o| o.on_backend(&b.address))),
            })
            .collect()
    }

    /// The counts of `route`'s server and of the backends in `set`, as the
    /// pick and the limit see them now.
    pub fn counts_for(&self, route: &Route, set: &[Backend]) -> RouteCounts {
        let view = self.counts.view();
        let others = view.others(&route.server);
        let st = self.lock();
        let states = Self::states(&st, set, Instant::now(), others.as_deref());
        let own = st.on_server.get(&route.server).copied().unwrap_or(0);
        drop(st);
        RouteCounts {
            source: view.source(),
            players: own.saturating_add(others.as_ref().map_or(0, |o| o.players)),
            backends: states.iter().map(|s| s.players).collect(),
            unknown: others.is_some_and(|o| o.unknown),
        }
    }

    /// The try order for a login to `route` (advances its round-robin turn).
    pub fn plan_login(&self, route: &Route, capture: Option<&str>) -> Plan {
        self.plan(route, capture, true)
    }

    /// The try order a status ping uses: the same choice, without taking a
    /// login's turn.
    pub fn plan_status(&self, route: &Route, capture: Option<&str>) -> Plan {
        self.plan(route, capture, false)
    }

    fn plan(&self, route: &Route, capture: Option<&str>, advance: bool) -> Plan {
        let set = route.dial_set(capture);
        let random = rand::random::<u64>();
        let others = self.counts.view().others(&route.server);
        let mut st = self.lock();
        let now = Instant::now();
        let states = Self::states(&st, &set, now, others.as_deref());
        let turn = st.turns.get(&route.server).copied().unwrap_or(0);
        if advance && set.len() > 1 {
            if st.turns.len() >= MAX_ENTRIES && !st.turns.contains_key(&route.server) {
                st.turns.clear();
            }
            st.turns.insert(route.server.clone(), turn.wrapping_add(1));
        }
        drop(st);
        let idx = order(route.strategy(), &set, &states, turn, random);
        Plan {
            addresses: idx.into_iter().map(|i| set[i].address.clone()).collect(),
        }
    }

    /// A dial to `address` failed: try it last for a while.
    pub fn dial_failed(&self, address: &str) {
        let until = Instant::now() + self.backoff_for;
        self.lock().backoff.put(address.to_owned(), until);
    }

    /// A dial to `address` worked: it is a first choice again.
    pub fn dial_worked(&self, address: &str) {
        let mut st = self.lock();
        if !st.backoff.is_empty() {
            st.backoff.pop(address);
        }
    }

    /// Whether `address` is backed off now (admin answers).
    pub fn is_backed_off(&self, address: &str) -> bool {
        self.lock()
            .backoff
            .peek(address)
            .is_some_and(|t| *t > Instant::now())
    }

    /// Players of `server` (held seats included): this edge's, plus the
    /// other edges' while syncd's counts are live.
    pub fn players_of(&self, server: &str) -> u32 {
        let others = self.counts.view().others(server).map_or(0, |o| o.players);
        let own = self.lock().on_server.get(server).copied().unwrap_or(0);
        own.saturating_add(others)
    }

    /// Take a seat on `server` when it has fewer than `max` players (`None`
    /// = no limit), counting this edge's seats and, while syncd's counts are
    /// live, the other edges' players and held logins; `None` back when it
    /// is full. The seat is held until the guard drops.
    pub fn take_seat(&self, server: &str, max: Option<u32>) -> Option<Seat> {
        let others = match max {
            Some(_) => self.counts.view().others(server).map_or(0, |o| o.players),
            None => 0,
        };
        let mut st = self.lock();
        let n = st.on_server.get(server).copied().unwrap_or(0);
        if max.is_some_and(|m| n.saturating_add(others) >= m) {
            return None;
        }
        if n == 0 && st.on_server.len() >= MAX_ENTRIES {
            // Counting stops at the bound; the limit is then not enforced.
            return Some(Seat {
                balancer: self.clone(),
                server: None,
                backend: None,
            });
        }
        st.on_server.insert(server.to_owned(), n + 1);
        Some(Seat {
            balancer: self.clone(),
            server: Some(server.to_owned()),
            backend: None,
        })
    }
}

/// A player's place on a server (and, once spliced, on a backend) on this
/// edge; released on drop.
#[derive(Debug)]
pub struct Seat {
    balancer: Balancer,
    server: Option<String>,
    backend: Option<String>,
}

impl Seat {
    /// The player now plays on `address` (counted for least-players).
    pub fn on_backend(&mut self, address: &str) {
        let mut st = self.balancer.lock();
        if st.on_backend.len() < MAX_ENTRIES || st.on_backend.contains_key(address) {
            *st.on_backend.entry(address.to_owned()).or_insert(0) += 1;
            self.backend = Some(address.to_owned());
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        fn release(map: &mut HashMap<String, u32>, key: Option<String>) {
            if let Some(k) = key {
                if let Some(n) = map.get_mut(&k) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        map.remove(&k);
                    }
                }
            }
        }
        let mut guard = self.balancer.lock();
        let st = &mut *guard;
        release(&mut st.on_server, self.server.take());
        release(&mut st.on_backend, self.backend.take());
    }
}

/// Whether `client` may connect given an allow list (empty: everyone) and a
/// deny list (deny wins). IPv4-mapped IPv6 addresses match IPv4 networks.
pub fn admitted(client: IpAddr, allow: &[IpNet], deny: &[IpNet]) -> bool {
    let canonical = client.to_canonical();
    let hit = |nets: &[IpNet]| {
        nets.iter()
            .any(|n| n.contains(&client) || n.contains(&canonical))
    };
    !hit(deny) && (allow.is_empty() || hit(allow))
}

/// A route's CIDR lists, parsed (syncd checked them; anything that still
/// does not parse is left out of the list).
pub fn route_cidrs(route: &Route) -> (Vec<IpNet>, Vec<IpNet>) {
    let parse = |list: &[String]| list.iter().filter_map(|c| c.parse().ok()).collect();
    match &route.options {
        Some(o) => (parse(&o.allow_cidrs), parse(&o.deny_cidrs)),
        None => (Vec::new(), Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automc_proto::v1::{BackendStrategy, RouteOptions};

    fn route(strategy: BackendStrategy) -> Route {
        Route {
            server: "s".into(),
            address: "a:1".into(),
            backends: vec![Backend {
                address: "b:1".into(),
                weight: 1,
                priority: 0,
            }],
            options: Some(Box::new(RouteOptions {
                strategy: strategy.into(),
                ..RouteOptions::default()
            })),
            ..Route::default()
        }
    }

    #[test]
    fn round_robin_turns_advance_per_login_not_per_ping() {
        let b = Balancer::new(DEFAULT_BACKEND_BACKOFF, Arc::default());
        let r = route(BackendStrategy::RoundRobin);
        let firsts: Vec<String> = (0..4)
            .map(|_| b.plan_login(&r, None).addresses[0].clone())
            .collect();
        assert_eq!(firsts, ["a:1", "b:1", "a:1", "b:1"]);
        assert_eq!(b.plan_status(&r, None).addresses[0], "a:1");
        assert_eq!(b.plan_status(&r, None).addresses[0], "a:1");
    }

    #[test]
    fn a_failed_dial_sends_its_backend_last_until_one_works() {
        let b = Balancer::new(Duration::from_secs(3600), Arc::default());
        let r = route(BackendStrategy::Failover);
        b.dial_failed("a:1");
        assert_eq!(b.plan_login(&r, None).addresses, ["b:1", "a:1"]);
        assert!(b.is_backed_off("a:1"));
        b.dial_worked("a:1");
        assert_eq!(b.plan_login(&r, None).addresses, ["a:1", "b:1"]);
        let expired = Balancer::new(Duration::ZERO, Arc::default());
        expired.dial_failed("a:1");
        assert_eq!(expired.plan_login(&r, None).addresses, ["a:1", "b:1"]);
    }

    #[test]
    fn backoffs_past_the_cap_push_out_the_least_recent_in_constant_time() {
        let b = Balancer::new(Duration::from_secs(3600), Arc::default());
        b.dial_failed("first:1");
        for i in 0..MAX_ENTRIES {
            b.dial_failed(&format!("h{i}:1"));
        }
        assert!(!b.is_backed_off("first:1"), "the least recent went");
        assert!(b.is_backed_off("h0:1"));
        assert!(b.is_backed_off(&format!("h{}:1", MAX_ENTRIES - 1)));
        assert_eq!(b.lock().backoff.len(), MAX_ENTRIES);
    }

    #[test]
    fn seats_count_players_and_refuse_past_the_limit() {
        let b = Balancer::new(DEFAULT_BACKEND_BACKOFF, Arc::default());
        let mut one = b.take_seat("s", Some(2)).expect("seat 1");
        one.on_backend("b:1");
        let two = b.take_seat("s", Some(2)).expect("seat 2");
        assert!(b.take_seat("s", Some(2)).is_none(), "full");
        assert_eq!(b.players_of("s"), 2);
        let r = route(BackendStrategy::LeastPlayers);
        assert_eq!(b.plan_login(&r, None).addresses[0], "a:1");
        drop(two);
        drop(one);
        assert_eq!(b.players_of("s"), 0);
        assert!(b.take_seat("s", Some(2)).is_some());
        assert!(b.take_seat("s", None).is_some());
    }

    #[test]
    fn fleet_counts_add_to_this_edges_own_for_the_pick_and_the_limit() {
        use automc_proto::v1::{BackendCount, PlayerCounts, ServerCount};
        let counts = Arc::new(FleetCounts::default());
        let b = Balancer::new(DEFAULT_BACKEND_BACKOFF, counts.clone());
        let r = route(BackendStrategy::LeastPlayers);
        // Other edges have two players, both on a:1.
        counts.apply(PlayerCounts {
            full: true,
            more: false,
            servers: vec![ServerCount {
                server: "s".into(),
                players: 2,
                backends: vec![BackendCount {
                    address: "a:1".into(),
                    players: 2,
                }],
                unknown: false,
            }],
        });
        assert_eq!(b.plan_login(&r, None).addresses[0], "b:1");
        // This edge's own seats count at once: two on b:1 make a tie (a:1 first).
        let mut one = b.take_seat("s", Some(5)).expect("seat");
        one.on_backend("b:1");
        let mut two = b.take_seat("s", Some(5)).expect("seat");
        two.on_backend("b:1");
        assert_eq!(b.plan_login(&r, None).addresses[0], "a:1");
        assert_eq!(b.players_of("s"), 4);
        let c = b.counts_for(&r, &r.dial_set(None));
        assert_eq!(
            (c.source, c.players, c.backends),
            (CountSource::Fleet, 4, vec![2, 2])
        );
        // A fifth seat is the limit; a sixth is refused.
        let _five = b.take_seat("s", Some(5)).expect("fifth");
        assert!(b.take_seat("s", Some(5)).is_none(), "full fleet-wide");
        // Without syncd's counts: this edge's own only.
        counts.reset();
        let c = b.counts_for(&r, &r.dial_set(None));
        assert_eq!(
            (c.source, c.players, c.backends),
            (CountSource::Edge, 3, vec![0, 2])
        );
        assert!(b.take_seat("s", Some(5)).is_some());
    }

    #[test]
    fn deny_wins_over_allow_and_an_empty_allow_list_admits_everyone() {
        let nets =
            |l: &[&str]| -> Vec<IpNet> { l.iter().map(|c| c.parse().expect("cidr")).collect() };
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        let allow = nets(&["10.0.0.0/8", "2001:db8::/32"]);
        let deny = nets(&["10.9.0.0/16"]);
        assert!(admitted(ip("10.1.2.3"), &allow, &deny));
        assert!(!admitted(ip("10.9.2.3"), &allow, &deny));
        assert!(!admitted(ip("192.0.2.1"), &allow, &deny));
        assert!(admitted(ip("2001:db8::7"), &allow, &deny));
        assert!(admitted(ip("::ffff:10.1.2.3"), &allow, &deny));
        assert!(!admitted(ip("::ffff:10.9.0.1"), &allow, &deny));
        assert!(admitted(ip("192.0.2.1"), &[], &[]));
        assert!(!admitted(ip("10.9.0.1"), &[], &deny));
    }
}
