//! `ListServers` and `ListPlayers`: the per-server view an operator asks
//! for, putting together the route (state), the fleet's sessions (players
//! across every edge), the wake phase edges hold and the sleep state.
//!
//! Pure: everything here works on values handed in by the gRPC layer, and
//! pages are cut here (server-name order, the page token is the last name
//! of the previous page, like `ListRoutes`).
use std::collections::BTreeMap;

use automc_proto::v1::{
    ListPlayersRequest, ListPlayersResponse, PlayerInfo, Route, ServerInfo, SleepState, WakePhase,
};
use automc_proto::RouteTable;

use crate::fleet::ServerSessions;

/// Page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: usize = 1000;
/// Largest page served.
pub const MAX_PAGE_SIZE: usize = 10_000;

fn page_size(asked: u32) -> usize {
    match asked as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// Where one server stands on sleeping (from the sleep planner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SleepView {
    pub state: SleepState,
    /// Unix ms of the planned stop (0: none).
    pub at_ms: i64,
    pub reason: String,
}

impl SleepView {
    pub fn off() -> Self {
        Self {
            state: SleepState::Off,
            at_ms: 0,
            reason: String::new(),
        }
    }
}

/// What edges are told about a server's wake, as `ListServers` words it.
pub fn wake_word(phase: Option<WakePhase>) -> &'static str {
    match phase {
        Some(WakePhase::Waking) => "waking",
        Some(WakePhase::Running) => "running",
        Some(WakePhase::Failed) => "failed",
        Some(WakePhase::Asleep) => "asleep",
        Some(WakePhase::Stopping) => "stopping",
        Some(WakePhase::Unspecified) | None => "",
    }
}

/// One server's row.
pub fn server_info(
    server: &str,
    route: Option<&Route>,
    sessions: Option<&ServerSessions>,
    last_seen_ms: Option<i64>,
    wake: Option<WakePhase>,
    sleep: SleepView,
) -> ServerInfo {
    let s = sessions.cloned().unwrap_or_default();
    ServerInfo {
        server: server.to_owned(),
        state: route.map(|r| r.state.clone()).unwrap_or_default(),
        players: s.total.players,
        holding: s.total.holding,
        status: s.total.status,
        edges: s.edges,
        last_seen_ms: last_seen_ms.unwrap_or_default(),
        sleep: sleep.state as i32,
        sleep_at_ms: sleep.at_ms,
        sleep_reason: sleep.reason,
        wake: wake_word(wake).to_owned(),
    }
}

/// The names of one `ListServers` page: every route of `table` and every
/// server an edge has sessions for (a removed route may still carry spliced
/// players), after `after`, in name order. Returns the names and the next
/// page token (`None` on the last page).
pub fn page_names(
    table: &RouteTable,
    fleet: &BTreeMap<String, ServerSessions>,
    after: &str,
    page_size: u32,
) -> (Vec<String>, Option<String>) {
    let size = page_size_of(page_size);
    // One more than the page, to know whether another page follows.
    let (routes, _) = table.page(after, size + 1, usize::MAX);
    let mut names: Vec<String> = routes.iter().map(|r| r.server.clone()).collect();
    let lower = std::ops::Bound::Excluded(after.to_owned());
    let range = if after.is_empty() {
        fleet.range::<String, _>(..)
    } else {
        fleet.range::<String, _>((lower, std::ops::Bound::Unbounded))
    };
    names.extend(range.take(size + 1).map(|(k, _)| k.clone()));
    names.sort();
    names.dedup();
    if names.len() > size {
        names.truncate(size);
        let next = names.last().cloned();
        (names, next)
    } else {
        (names, None)
    }
}

fn page_size_of(asked: u32) -> usize {
    page_size(asked)
}

fn player_key(p: &PlayerInfo) -> String {
    format!("{}\n{}\n{}\n{}", p.server, p.name, p.edge_id, p.since_ms)
}

/// One `ListPlayers` page of `players` (sorted by server, name, edge, since).
pub fn players_page(players: Vec<PlayerInfo>, req: &ListPlayersRequest) -> ListPlayersResponse {
    let size = page_size(req.page_size);
    let mut out = Vec::new();
    let mut next = String::new();
    for p in players {
        if !req.server.is_empty() && p.server != req.server {
            continue;
        }
        if !req.page_token.is_empty() && player_key(&p) <= req.page_token {
            continue;
        }
        if out.len() == size {
            next = out.last().map(player_key).unwrap_or_default();
            break;
        }
        out.push(p);
    }
    ListPlayersResponse {
        players: out,
        next_page_token: next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Counts;

    fn route(server: &str) -> Route {
        Route {
            server: server.into(),
            hostnames: vec![format!("{server}.example.com")],
            address: "127.0.0.1:1".into(),
            state: "running".into(),
            ..Route::default()
        }
    }

    #[test]
    fn pages_merge_routes_and_reported_servers_in_name_order() {
        let table = RouteTable::from_routes(["a", "c", "e"].map(route));
        let mut fleet = BTreeMap::new();
        for s in ["b", "c", "z"] {
            fleet.insert(
                s.to_owned(),
                ServerSessions {
                    total: Counts {
                        players: 1,
                        ..Counts::default()
                    },
                    ..ServerSessions::default()
                },
            );
        }
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let (names, next) = page_names(&table, &fleet, &token, 2);
            assert!(names.len() <= 2);
            all.extend(names);
            match next {
                Some(t) => token = t,
                None => break,
            }
        }
        assert_eq!(all, ["a", "b", "c", "e", "z"]);
    }

    #[test]
    fn player_pages_walk_every_player_once_and_filter_by_server() {
        let players: Vec<PlayerInfo> = (0..25)
            .map(|i| PlayerInfo {
                name: format!("p{i:02}"),
                uuid: String::new(),
                server: if i % 2 == 0 { "a" } else { "b" }.into(),
                edge_id: "e".into(),
                since_ms: 1,
            })
            .collect();
        let mut sorted = players.clone();
        sorted.sort_by_key(player_key);
        let mut seen = Vec::new();
        let mut req = ListPlayersRequest {
            page_size: 10,
            ..ListPlayersRequest::default()
        };
        loop {
            let page = players_page(sorted.clone(), &req);
            seen.extend(page.players.into_iter().map(|p| p.name));
            if page.next_page_token.is_empty() {
                break;
            }
            req.page_token = page.next_page_token;
        }
        assert_eq!(seen.len(), 25);
        let only_a = players_page(
            sorted,
            &ListPlayersRequest {
                server: "a".into(),
                ..ListPlayersRequest::default()
            },
        );
        assert_eq!(only_a.players.len(), 13);
        assert!(only_a.players.iter().all(|p| p.server == "a"));
    }

    #[test]
    fn a_server_row_adds_route_sessions_wake_and_sleep() {
        let sessions = ServerSessions {
            total: Counts {
                players: 3,
                holding: 1,
                status: 0,
            },
            ..ServerSessions::default()
        };
        let info = server_info(
            "lobby",
            Some(&route("lobby")),
            Some(&sessions),
            Some(42),
            Some(WakePhase::Waking),
            SleepView::off(),
        );
        assert_eq!(info.state, "running");
        assert_eq!((info.players, info.holding), (3, 1));
        assert_eq!(info.last_seen_ms, 42);
        assert_eq!(info.wake, "waking");
        assert_eq!(info.sleep(), SleepState::Off);
    }
}
