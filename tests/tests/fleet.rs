//! Fleet-wide players and safe sleep (issue 15): edges report their
//! sessions to syncd, which adds them up across edges (ListServers,
//! ListPlayers) and, opt-in, asks the waker to stop a server nobody plays
//! on — never one that still has a player on any edge, nor while an edge
//! is unknown.
//!
//! Real Postgres, real edges, a real HTTP waker and Minecraft backend;
//! durations shortened through the same config the flags fill. A "clock"
//! server that becomes idle later stands in for "long enough": when it has
//! been stopped, any stop the rule wrongly allowed would have happened too.
use std::net::SocketAddr;
use std::time::Duration;

use automc_proto::v1::edge_admin_client::EdgeAdminClient;
use automc_proto::v1::{
    ListConnectionsRequest, ListPlayersRequest, ListServersRequest, ServerInfo, SleepState,
};
use automc_tests::mc::{
    login, player_uuid, status_ping, BackendOptions, McBackend, McConn, DEFAULT_PROTOCOL,
};
use automc_tests::pg::TestPg;
use automc_tests::stack::{
    eventually, migrated_pg, start_edge, start_syncd, EdgeHandle, SyncdHandle, DEADLINE,
};
use automc_tests::waker::{FakeWaker, StopBehaviour};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The sleep period of these tests.
const SLEEP_AFTER: Duration = Duration::from_millis(600);

async fn backend() -> McBackend {
    McBackend::start(BackendOptions::with_motd("fleet"))
        .await
        .expect("backend starts")
}

/// Insert a route `name` → `name.example.com` at `addr` in `state`.
async fn add_server(pg: &TestPg, name: &str, addr: SocketAddr, state: &str) {
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('{name}', '{name}.example.com', '{addr}', '{state}')"
    ))
    .await;
}

/// syncd with sleeping on (or off with `sleep_after: None`), talking to `waker`.
async fn syncd(
    pg: &TestPg,
    waker: &FakeWaker,
    sleep_after: Option<Duration>,
    grace: Duration,
) -> SyncdHandle {
    let url = waker.url();
    start_syncd(&pg.dsn(), |c| {
        c.waker.url = Some(url);
        c.sleep.sleep_after = sleep_after;
        c.sleep.min_uptime = Duration::ZERO;
        c.edge_grace = grace;
    })
    .await
}

async fn edge(syncd_url: &str, id: &str) -> EdgeHandle {
    let e = start_edge(&[syncd_url.to_owned()], |c| c.edge_id = id.into()).await;
    e.ready().await;
    e
}

async fn servers(syncd: &SyncdHandle) -> (Vec<ServerInfo>, u32) {
    let r = syncd
        .client()
        .await
        .list_servers(ListServersRequest::default())
        .await
        .expect("ListServers")
        .into_inner();
    (r.servers, r.unknown_edges)
}

async fn server(syncd: &SyncdHandle, name: &str) -> ServerInfo {
    servers(syncd)
        .await
        .0
        .into_iter()
        .find(|s| s.server == name)
        .unwrap_or_else(|| panic!("{name} not in ListServers"))
}

/// Log `name` in through `edge` and wait until the backend has the login.
async fn join(edge: &EdgeHandle, b: &McBackend, host: &str, name: &str) -> McConn {
    let conn = login(edge.listen_addr, host, name)
        .await
        .expect("connect to the edge");
    b.wait_for(DEADLINE, |r| {
        r.iter().any(|c| c.username.as_deref() == Some(name))
    })
    .await
    .expect("the login reaches the backend");
    conn
}

async fn wait_players(syncd: &SyncdHandle, name: &str, players: u32) {
    eventually(
        &format!("ListServers shows {players} players on {name}"),
        DEADLINE,
        || async move { server(syncd, name).await.players == players },
    )
    .await;
}

#[tokio::test]
async fn players_on_two_edges_add_up_in_list_servers_and_list_players() {
    let pg = migrated_pg().await;
    let b = backend().await;
    add_server(&pg, "lobby", b.addr(), "running").await;
    let waker = FakeWaker::start().await;
    let syncd = syncd(&pg, &waker, None, Duration::from_secs(30)).await;
    let e1 = edge(&syncd.grpc_url(), "e1").await;
    let e2 = edge(&syncd.grpc_url(), "e2").await;
    e1.wait_route("lobby.example.com", Some("lobby")).await;
    e2.wait_route("lobby.example.com", Some("lobby")).await;

    let alex = join(&e1, &b, "lobby.example.com", "Alex").await;
    let _steve = join(&e1, &b, "lobby.example.com", "Steve").await;
    let _notch = join(&e2, &b, "lobby.example.com", "Notch").await;
    wait_players(&syncd, "lobby", 3).await;
    let s = server(&syncd, "lobby").await;
    let per_edge: Vec<(String, u32, bool)> = s
        .edges
        .iter()
        .map(|e| (e.edge_id.clone(), e.players, e.unknown))
        .collect();
    assert_eq!(
        per_edge,
        vec![("e1".into(), 2, false), ("e2".into(), 1, false)]
    );
    assert_eq!(s.state, "running");
    assert!(s.last_seen_ms > 0);
    assert_eq!(s.sleep(), SleepState::Off, "sleeping is opt-in");

    let players = syncd
        .client()
        .await
        .list_players(ListPlayersRequest::default())
        .await
        .expect("ListPlayers")
        .into_inner()
        .players;
    let mut seen: Vec<(String, String, String)> = players
        .iter()
        .map(|p| (p.name.clone(), p.edge_id.clone(), p.uuid.clone()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("Alex".into(), "e1".into(), player_uuid("Alex")),
            ("Notch".into(), "e2".into(), player_uuid("Notch")),
            ("Steve".into(), "e1".into(), player_uuid("Steve")),
        ]
    );

    // The edge's own admin API names its players too.
    let mut admin = EdgeAdminClient::connect(format!("http://{}", e1.grpc_addr))
        .await
        .expect("edge admin");
    let conns = admin
        .list_connections(ListConnectionsRequest {})
        .await
        .expect("ListConnections")
        .into_inner()
        .connections;
    let mut names: Vec<(String, String)> = conns
        .iter()
        .map(|c| (c.player.clone(), c.player_uuid.clone()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("Alex".into(), player_uuid("Alex")),
            ("Steve".into(), player_uuid("Steve"))
        ]
    );

    drop(alex);
    wait_players(&syncd, "lobby", 2).await;
    let sy = &syncd;
    eventually(
        "the per-server player gauge says 2",
        DEADLINE,
        || async move {
            sy.metrics_text()
                .await
                .contains("automc_syncd_server_players{server=\"lobby\"} 2")
        },
    )
    .await;
}

#[tokio::test]
async fn a_server_with_one_player_left_on_one_edge_is_never_stopped() {
    let pg = migrated_pg().await;
    let b = backend().await;
    // Neither is up (so neither can sleep) until both come up together,
    // once the players are on: "starting" still routes logins.
    add_server(&pg, "busy", b.addr(), "starting").await;
    add_server(&pg, "clock", b.addr(), "stopped").await;
    let waker = FakeWaker::start().await;
    let syncd = syncd(&pg, &waker, Some(SLEEP_AFTER), Duration::from_secs(30)).await;
    let e1 = edge(&syncd.grpc_url(), "e1").await;
    let e2 = edge(&syncd.grpc_url(), "e2").await;
    e2.wait_route("busy.example.com", Some("busy")).await;

    // Two players on two edges; the one on e1 leaves, the one on e2 stays.
    let gone = join(&e1, &b, "busy.example.com", "Gone").await;
    let _stays = join(&e2, &b, "busy.example.com", "Stays").await;
    wait_players(&syncd, "busy", 2).await;
    drop(gone);
    wait_players(&syncd, "busy", 1).await;

    // Both come up now: same idle rule, same time.
    pg.execute("UPDATE servers SET state = 'running' WHERE name IN ('busy', 'clock')")
        .await;
    let w = &waker;
    eventually(
        "the idle clock server is stopped",
        DEADLINE,
        || async move { w.stops("clock") == 1 },
    )
    .await;
    assert_eq!(waker.stops("busy"), 0, "a player is still on busy (via e2)");
    let s = server(&syncd, "busy").await;
    assert_eq!(s.sleep(), SleepState::Busy);
    assert_eq!(s.sleep_reason, "1 player");
    assert_eq!(s.players, 1);
    drop(e1);
}

#[tokio::test]
async fn when_the_last_player_leaves_exactly_one_stop_follows_the_idle_period() {
    let pg = migrated_pg().await;
    let b = backend().await;
    add_server(&pg, "lobby", b.addr(), "starting").await;
    add_server(&pg, "clock", b.addr(), "stopped").await;
    let waker = FakeWaker::start().await;
    let syncd = syncd(&pg, &waker, Some(SLEEP_AFTER), Duration::from_secs(30)).await;
    let e1 = edge(&syncd.grpc_url(), "e1").await;
    e1.wait_route("lobby.example.com", Some("lobby")).await;
    let player = join(&e1, &b, "lobby.example.com", "Alex").await;
    wait_players(&syncd, "lobby", 1).await;
    pg.execute("UPDATE servers SET state = 'running' WHERE name = 'lobby'")
        .await;
    e1.wait_route_state("lobby", &b.addr().to_string(), "running")
        .await;
    assert_eq!(waker.stops("lobby"), 0);

    drop(player);
    let w = &waker;
    eventually("lobby is stopped after it idled", DEADLINE, || async move {
        w.stops("lobby") >= 1
    })
    .await;
    let sy = &syncd;
    eventually("ListServers shows lobby asleep", DEADLINE, || async move {
        server(sy, "lobby").await.sleep() == SleepState::Asleep
    })
    .await;
    assert_eq!(server(&syncd, "lobby").await.wake, "asleep");
    // Another full idle period later (the clock's), still one stop.
    pg.execute("UPDATE servers SET state = 'running' WHERE name = 'clock'")
        .await;
    eventually("the clock server is stopped", DEADLINE, || async move {
        w.stops("clock") == 1
    })
    .await;
    assert_eq!(waker.stops("lobby"), 1, "exactly one stop request");
    let metrics = syncd.metrics_text().await;
    assert!(
        metrics.contains("automc_syncd_sleeps_total{outcome=\"stopped\"} 2"),
        "{metrics}"
    );
}

/// A TCP relay between an edge and syncd that a test can cut, like a
/// network partition: the edge keeps its players but loses syncd.
struct Relay {
    addr: SocketAddr,
    cut: CancellationToken,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = l.local_addr().expect("relay addr");
        let cut = CancellationToken::new();
        let stop = cut.clone();
        tokio::spawn(async move {
            loop {
                let (mut down, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    r = l.accept() => match r { Ok(a) => a, Err(_) => return },
                };
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                    }
                });
            }
        });
        Relay { addr, cut }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[tokio::test]
async fn an_edge_lost_while_it_had_players_blocks_sleeping_until_its_grace_passes() {
    let pg = migrated_pg().await;
    let b = backend().await;
    add_server(&pg, "lobby", b.addr(), "starting").await;
    add_server(&pg, "other", b.addr(), "stopped").await;
    let waker = FakeWaker::start().await;
    let grace = Duration::from_secs(4);
    let syncd = syncd(&pg, &waker, Some(SLEEP_AFTER), grace).await;
    let relay = Relay::start(syncd.grpc_addr).await;
    let e1 = edge(&relay.url(), "e1").await;
    e1.wait_route("lobby.example.com", Some("lobby")).await;
    let _player = join(&e1, &b, "lobby.example.com", "Alex").await;
    wait_players(&syncd, "lobby", 1).await;

    relay.cut.cancel();
    let sy = &syncd;
    eventually("syncd marks e1 unknown", DEADLINE, || async move {
        servers(sy).await.1 == 1
    })
    .await;
    let s = server(&syncd, "lobby").await;
    assert!(s.edges.iter().all(|e| e.unknown), "{s:?}");
    assert_eq!(s.players, 1, "the lost edge's last count stands");
    // Both up and idle as far as the live edges know.
    pg.execute("UPDATE servers SET state = 'running'").await;

    // While e1 is unknown nothing sleeps, not even the idle server.
    let w = &waker;
    eventually("e1's grace period passes", DEADLINE, || async move {
        let stops = w.stops("lobby") + w.stops("other");
        let (_, unknown) = servers(sy).await;
        if unknown > 0 {
            assert_eq!(stops, 0, "a server was stopped while an edge was unknown");
        }
        unknown == 0
    })
    .await;
    eventually(
        "both servers are stopped after the grace",
        DEADLINE,
        || async move { w.stops("lobby") == 1 && w.stops("other") == 1 },
    )
    .await;
}

#[tokio::test]
async fn a_waker_without_a_stop_endpoint_disables_sleeping_with_a_readable_reason() {
    let pg = migrated_pg().await;
    let b = backend().await;
    add_server(&pg, "lobby", b.addr(), "running").await;
    add_server(&pg, "clock", b.addr(), "stopped").await;
    let waker = FakeWaker::start().await;
    waker.set_stop("lobby", StopBehaviour::Answers(404));
    let syncd = syncd(&pg, &waker, Some(SLEEP_AFTER), Duration::from_secs(30)).await;
    let sy = &syncd;
    eventually("lobby's sleeping is disabled", DEADLINE, || async move {
        server(sy, "lobby").await.sleep() == SleepState::Disabled
    })
    .await;
    let s = server(&syncd, "lobby").await;
    assert!(
        s.sleep_reason.contains("cannot stop servers") && s.sleep_reason.contains("404"),
        "{}",
        s.sleep_reason
    );
    assert_eq!(s.wake, "", "edges route to it as before (not asleep)");
    pg.execute("UPDATE servers SET state = 'running' WHERE name = 'clock'")
        .await;
    let w = &waker;
    eventually("the clock server is stopped", DEADLINE, || async move {
        w.stops("clock") == 1
    })
    .await;
    assert_eq!(waker.stops("lobby"), 1, "asked once, never again");
}

#[tokio::test]
async fn a_login_during_a_stop_is_held_and_joins_after_the_wake() {
    let pg = migrated_pg().await;
    let b = backend().await;
    add_server(&pg, "lobby", b.addr(), "running").await;
    let waker = FakeWaker::start().await;
    waker.set_stop(
        "lobby",
        StopBehaviour::Stops {
            delay: Duration::from_secs(5),
        },
    );
    let syncd = syncd(&pg, &waker, Some(SLEEP_AFTER), Duration::from_secs(30)).await;
    let e1 = edge(&syncd.grpc_url(), "e1").await;
    let w = &waker;
    eventually("the stop request is in flight", DEADLINE, || async move {
        w.stops("lobby") == 1
    })
    .await;
    let sy = &syncd;
    eventually(
        "ListServers shows the stop in flight",
        DEADLINE,
        || async move { server(sy, "lobby").await.sleep() == SleepState::Stopping },
    )
    .await;
    let edge_addr = e1.listen_addr;
    eventually("the edge shows lobby asleep", DEADLINE, || async move {
        status_ping(edge_addr, "lobby.example.com", DEFAULT_PROTOCOL)
            .await
            .is_ok_and(|r| r.motd().contains("asleep"))
    })
    .await;
    assert_eq!(waker.posts("lobby"), 0);
    let _player = join(&e1, &b, "lobby.example.com", "Late").await;
    assert_eq!(waker.posts("lobby"), 1, "woken again after the stop");
    assert_eq!(waker.stops("lobby"), 1);
}
