//! `syncd routes | edges | wakes | servers | players`: what an operator asks a running syncd
//! first, printed as aligned tables or as JSON (`--json`). Everything here
//! goes through the public gRPC API (the same calls grpcurl makes), so it
//! works against any syncd the caller can reach and authenticate to.
//!
//! The formatting is pure (`*_rows`, [`table`]) and unit-tested; only
//! [`fetch`] does I/O.
use std::time::Duration;

use automc_proto::auth::BearerToken;
use automc_proto::v1::route_sync_client::RouteSyncClient;
use automc_proto::v1::{
    EdgeInfo, ListEdgesRequest, ListEdgesResponse, ListPlayersRequest, ListRoutesRequest,
    ListRoutesResponse, ListServersRequest, ListWakesRequest, PlayerInfo, ServerInfo, SleepState,
    WakeInfo,
};
use serde_json::{json, Value};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Bound on connecting and on each call: an operator command never hangs.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Routes asked for per `ListRoutes` page (the most syncd serves per page).
pub const ROUTES_PAGE_SIZE: u32 = 10_000;

/// What to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    Routes,
    Edges,
    Wakes,
    Servers,
    Players,
}

/// How to reach syncd.
pub struct Target {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    pub token: Option<String>,
    /// PEM CA bundle for `https://` (else the system's web roots).
    pub tls_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("bad syncd URL {url:?}: {source}")]
    Url {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the gRPC token is not a valid header value")]
    Token,
    #[error("cannot connect to syncd at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("syncd answered {:?}: {}{}", .0.code(), .0.message(), call_hint(.0))]
    Call(#[from] tonic::Status),
}

fn call_hint(status: &tonic::Status) -> &'static str {
    match status.code() {
        tonic::Code::Unauthenticated => " (pass --grpc-token or set SYNCD_GRPC_TOKEN)",
        _ => "",
    }
}

/// Runs `query` against `target` and returns the text to print.
pub async fn fetch(target: &Target, query: Query, as_json: bool) -> Result<String, InspectError> {
    let bearer = BearerToken::new(target.token.as_deref()).map_err(|_| InspectError::Token)?;
    let url_error = |source| InspectError::Url {
        url: target.url.clone(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(target.url.clone())
        .map_err(url_error)?
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    if target.url.starts_with("https://") {
        let tls = match &target.tls_ca_pem {
            Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None => ClientTlsConfig::new().with_webpki_roots(),
        };
        endpoint = endpoint.tls_config(tls).map_err(url_error)?;
    }
    let channel: Channel = endpoint
        .connect()
        .await
        .map_err(|source| InspectError::Connect {
            url: target.url.clone(),
            source,
        })?;
    let mut client = RouteSyncClient::with_interceptor(channel, bearer);
    let now_ms = crate::publisher::now_ms();
    Ok(match query {
        Query::Routes => {
            // Every page, merged: epoch and version are those of the last
            // page (pages may come from different versions while routes change).
            let mut all = ListRoutesResponse::default();
            loop {
                let page = client
                    .list_routes(ListRoutesRequest {
                        page_size: ROUTES_PAGE_SIZE,
                        page_token: std::mem::take(&mut all.next_page_token),
                    })
                    .await?
                    .into_inner();
                all.epoch = page.epoch;
                all.version = page.version;
                all.routes.extend(page.routes);
                all.next_page_token = page.next_page_token;
                if all.next_page_token.is_empty() {
                    break;
                }
            }
            render(as_json, routes_json(&all), || routes_text(&all))
        }
        Query::Edges => {
            let r = client.list_edges(ListEdgesRequest {}).await?.into_inner();
            render(as_json, edges_json(&r), || edges_text(&r, now_ms))
        }
        Query::Wakes => {
            let r = client.list_wakes(ListWakesRequest {}).await?.into_inner();
            render(as_json, wakes_json(&r.wakes), || {
                wakes_text(&r.wakes, now_ms)
            })
        }
        Query::Servers => {
            let mut servers = Vec::new();
            let mut token = String::new();
            let mut unknown;
            loop {
                let page = client
                    .list_servers(ListServersRequest {
                        page_size: ROUTES_PAGE_SIZE,
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                servers.extend(page.servers);
                unknown = page.unknown_edges;
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            render(as_json, servers_json(&servers, unknown), || {
                servers_text(&servers, unknown, now_ms)
            })
        }
        Query::Players => {
            let mut players = Vec::new();
            let mut token = String::new();
            loop {
                let page = client
                    .list_players(ListPlayersRequest {
                        page_size: ROUTES_PAGE_SIZE,
                        page_token: token,
                        server: String::new(),
                    })
                    .await?
                    .into_inner();
                players.extend(page.players);
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            render(as_json, players_json(&players), || {
                players_text(&players, now_ms)
            })
        }
    })
}

fn render(as_json: bool, value: Value, text: impl FnOnce() -> String) -> String {
    if as_json {
        let mut s = serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string());
        s.push('\n');
        s
    } else {
        text()
    }
}

/// Columns padded to their widest cell, two spaces apart, no trailing blanks.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(cell);
            l.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// "3s", "5m", "2h", "4d": how long ago / how long, coarse on purpose.
pub fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

pub fn routes_text(r: &ListRoutesResponse) -> String {
    let rows: Vec<Vec<String>> = r
        .routes
        .iter()
        .map(|route| {
            vec![
                route.server.clone(),
                route.hostnames.join(","),
                route.address.clone(),
                or_dash(&route.state),
            ]
        })
        .collect();
    format!(
        "{}{} routes, version {} of epoch {}\n",
        table(&["SERVER", "HOSTNAMES", "ADDRESS", "STATE"], &rows),
        r.routes.len(),
        r.version,
        r.epoch
    )
}

pub fn routes_json(r: &ListRoutesResponse) -> Value {
    json!({
        "epoch": r.epoch,
        "version": r.version,
        "routes": r.routes.iter().map(|route| json!({
            "server": route.server,
            "hostnames": route.hostnames,
            "address": route.address,
            "state": route.state,
        })).collect::<Vec<_>>(),
    })
}

fn edge_status(e: &EdgeInfo, epoch: &str) -> &'static str {
    if e.acked_epoch.is_empty() {
        "syncing"
    } else if e.acked_epoch != epoch {
        "stale-epoch"
    } else if e.lag == 0 {
        "synced"
    } else {
        "behind"
    }
}

pub fn edges_text(r: &ListEdgesResponse, now_ms: i64) -> String {
    let rows: Vec<Vec<String>> = r
        .edges
        .iter()
        .map(|e| {
            vec![
                or_dash(&e.edge_id),
                e.peer.clone(),
                edge_status(e, &r.epoch).to_owned(),
                e.acked_version.to_string(),
                e.lag.to_string(),
                age(now_ms - e.connected_since_ms),
            ]
        })
        .collect();
    format!(
        "{}{} edges; syncd is at version {} of epoch {}\n",
        table(
            &["EDGE", "PEER", "STATUS", "APPLIED", "LAG", "CONNECTED"],
            &rows
        ),
        r.edges.len(),
        r.version,
        r.epoch
    )
}

pub fn edges_json(r: &ListEdgesResponse) -> Value {
    json!({
        "epoch": r.epoch,
        "version": r.version,
        "edges": r.edges.iter().map(|e| json!({
            "edge_id": e.edge_id,
            "peer": e.peer,
            "status": edge_status(e, &r.epoch),
            "acked_epoch": e.acked_epoch,
            "applied_version": e.acked_version,
            "lag": e.lag,
            "connected_since_ms": e.connected_since_ms,
        })).collect::<Vec<_>>(),
    })
}

pub fn wakes_text(wakes: &[WakeInfo], now_ms: i64) -> String {
    let rows: Vec<Vec<String>> = wakes
        .iter()
        .map(|w| {
            vec![
                w.server.clone(),
                w.outcome.clone(),
                age(now_ms - w.started_ms),
                format!("{}ms", w.duration_ms),
                w.callers.to_string(),
                or_dash(&w.address),
                or_dash(&w.reason),
            ]
        })
        .collect();
    format!(
        "{}{} wakes (in flight and recent)\n",
        table(
            &["SERVER", "OUTCOME", "STARTED", "DURATION", "CALLERS", "ADDRESS", "REASON"],
            &rows
        ),
        wakes.len()
    )
}

pub fn wakes_json(wakes: &[WakeInfo]) -> Value {
    json!({
        "wakes": wakes.iter().map(|w| json!({
            "server": w.server,
            "outcome": w.outcome,
            "reason": w.reason,
            "address": w.address,
            "started_ms": w.started_ms,
            "duration_ms": w.duration_ms,
            "callers": w.callers,
        })).collect::<Vec<_>>(),
    })
}

/// `SLEEP_STATE_IDLE` → "idle".
fn sleep_word(s: SleepState) -> &'static str {
    match s {
        SleepState::Unspecified | SleepState::Off => "off",
        SleepState::Busy => "busy",
        SleepState::Idle => "idle",
        SleepState::Stopping => "stopping",
        SleepState::Asleep => "asleep",
        SleepState::Disabled => "disabled",
    }
}

fn edge_counts(s: &ServerInfo) -> String {
    let list: Vec<String> = s
        .edges
        .iter()
        .map(|e| {
            format!(
                "{}={}{}",
                e.edge_id,
                e.players,
                if e.unknown { "?" } else { "" }
            )
        })
        .collect();
    or_dash(&list.join(","))
}

pub fn servers_text(servers: &[ServerInfo], unknown_edges: u32, now_ms: i64) -> String {
    let rows: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            let sleep = match s.sleep() {
                SleepState::Idle if s.sleep_at_ms > 0 => {
                    format!("idle (stop in {})", age(s.sleep_at_ms - now_ms))
                }
                other => sleep_word(other).to_owned(),
            };
            vec![
                s.server.clone(),
                or_dash(&s.state),
                s.players.to_string(),
                s.holding.to_string(),
                edge_counts(s),
                if s.last_seen_ms > 0 {
                    format!("{} ago", age(now_ms - s.last_seen_ms))
                } else {
                    "-".into()
                },
                or_dash(&s.wake),
                sleep,
                or_dash(&s.sleep_reason),
            ]
        })
        .collect();
    format!(
        "{}{} servers, {} players; {} unknown edges\n",
        table(
            &[
                "SERVER",
                "STATE",
                "PLAYERS",
                "HELD",
                "EDGES",
                "LAST SEEN",
                "WAKE",
                "SLEEP",
                "REASON"
            ],
            &rows
        ),
        servers.len(),
        servers.iter().map(|s| u64::from(s.players)).sum::<u64>(),
        unknown_edges
    )
}

pub fn servers_json(servers: &[ServerInfo], unknown_edges: u32) -> Value {
    json!({
        "unknown_edges": unknown_edges,
        "servers": servers.iter().map(|s| json!({
            "server": s.server,
            "state": s.state,
            "players": s.players,
            "holding": s.holding,
            "status": s.status,
            "edges": s.edges.iter().map(|e| json!({
                "edge_id": e.edge_id,
                "players": e.players,
                "holding": e.holding,
                "status": e.status,
                "unknown": e.unknown,
            })).collect::<Vec<_>>(),
            "last_seen_ms": s.last_seen_ms,
            "wake": s.wake,
            "sleep": sleep_word(s.sleep()),
            "sleep_at_ms": s.sleep_at_ms,
            "sleep_reason": s.sleep_reason,
        })).collect::<Vec<_>>(),
    })
}

pub fn players_text(players: &[PlayerInfo], now_ms: i64) -> String {
    let rows: Vec<Vec<String>> = players
        .iter()
        .map(|p| {
            vec![
                or_dash(&p.name),
                or_dash(&p.uuid),
                p.server.clone(),
                or_dash(&p.edge_id),
                age(now_ms - p.since_ms),
            ]
        })
        .collect();
    format!(
        "{}{} players\n",
        table(&["NAME", "UUID", "SERVER", "EDGE", "FOR"], &rows),
        players.len()
    )
}

pub fn players_json(players: &[PlayerInfo]) -> Value {
    json!({
        "players": players.iter().map(|p| json!({
            "name": p.name,
            "uuid": p.uuid,
            "server": p.server,
            "edge_id": p.edge_id,
            "since_ms": p.since_ms,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use automc_proto::v1::{EdgeCount, Route};

    #[test]
    fn servers_table_shows_players_per_edge_and_why_it_does_not_sleep() {
        let s = ServerInfo {
            server: "lobby".into(),
            state: "running".into(),
            players: 3,
            edges: vec![
                EdgeCount {
                    edge_id: "e1".into(),
                    players: 2,
                    ..EdgeCount::default()
                },
                EdgeCount {
                    edge_id: "e2".into(),
                    players: 1,
                    unknown: true,
                    ..EdgeCount::default()
                },
            ],
            last_seen_ms: 1_000,
            sleep: SleepState::Busy as i32,
            sleep_reason: "3 players".into(),
            ..ServerInfo::default()
        };
        let text = servers_text(std::slice::from_ref(&s), 1, 61_000);
        assert!(text.contains("e1=2,e2=1?"), "{text}");
        assert!(text.contains("60s ago"), "{text}");
        assert!(text.contains("busy   3 players"), "{text}");
        assert!(
            text.ends_with("1 servers, 3 players; 1 unknown edges\n"),
            "{text}"
        );
        assert_eq!(
            servers_json(&[s], 1)["servers"][0]["edges"][1]["unknown"],
            true
        );
        let p = PlayerInfo {
            name: "Alex".into(),
            uuid: "069a79f4-44e9-4726-a5be-fca90e38aaf5".into(),
            server: "lobby".into(),
            edge_id: "e1".into(),
            since_ms: 0,
        };
        let text = players_text(std::slice::from_ref(&p), 5_000);
        assert!(
            text.contains("Alex  069a79f4-44e9-4726-a5be-fca90e38aaf5  lobby   e1    5s"),
            "{text}"
        );
        assert_eq!(players_json(&[p])["players"][0]["name"], "Alex");
    }

    #[test]
    fn table_pads_columns_to_the_widest_cell_without_trailing_blanks() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["wide cell".into(), "x".into()],
                vec!["b".into(), "".into()],
            ],
        );
        assert_eq!(t, "A          LONGER\nwide cell  x\nb\n");
    }

    #[test]
    fn ages_are_coarse_and_never_negative() {
        assert_eq!(age(-5), "0s");
        assert_eq!(age(59_000), "59s");
        assert_eq!(age(600_000), "10m");
        assert_eq!(age(3 * 3_600_000), "3h");
        assert_eq!(age(3 * 86_400_000), "3d");
    }

    #[test]
    fn routes_table_lists_every_route_with_its_hostnames() {
        let r = ListRoutesResponse {
            epoch: "e1".into(),
            version: 7,
            routes: vec![Route {
                server: "lobby".into(),
                hostnames: vec!["play.example.com".into(), "*.example.com".into()],
                address: "10.0.0.1:25565".into(),
                state: "running".into(),
                ..Route::default()
            }],
            next_page_token: String::new(),
        };
        let text = routes_text(&r);
        assert!(text.starts_with("SERVER  HOSTNAMES"), "{text}");
        assert!(
            text.contains("lobby   play.example.com,*.example.com  10.0.0.1:25565  running"),
            "{text}"
        );
        assert!(
            text.ends_with("1 routes, version 7 of epoch e1\n"),
            "{text}"
        );
        assert_eq!(
            routes_json(&r)["routes"][0]["hostnames"][1],
            "*.example.com"
        );
    }

    #[test]
    fn edge_status_says_synced_behind_or_stale() {
        let edge = |epoch: &str, lag| EdgeInfo {
            edge_id: "edge-1".into(),
            acked_epoch: epoch.into(),
            lag,
            ..Default::default()
        };
        assert_eq!(edge_status(&edge("e1", 0), "e1"), "synced");
        assert_eq!(edge_status(&edge("e1", 3), "e1"), "behind");
        assert_eq!(edge_status(&edge("e0", 0), "e1"), "stale-epoch");
        assert_eq!(edge_status(&edge("", 0), "e1"), "syncing");
        let r = ListEdgesResponse {
            epoch: "e1".into(),
            version: 9,
            edges: vec![edge("e1", 3)],
        };
        assert_eq!(edges_json(&r)["edges"][0]["status"], "behind");
        assert!(edges_text(&r, 0).contains("edge-1"));
    }
}
