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
    login_answering, player_uuid, status_ping, BackendOptions, McBackend, McConn, DEFAULT_PROTOCOL,
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
    // Answers the edge's keep-alive requests should the login be held.
    let held = login_answering(edge.listen_addr, DEFAULT_PROTOCOL, host, name)
        .await
        .expect("connect to the edge");
    b.wait_for(DEADLINE, |r| {
        r.iter().any(|c| c.username.as_deref() == Some(name))
    })
    .await
    .expect("the login reaches the backend");
    held.into_conn().await.expect("the login").0
}

/// Wait until the waker got `n` stop requests for `server`.
async fn wait_stops(waker: &FakeWaker, server: &str, n: u64) {
    eventually(
        &format!("{n} stop requests for {server}"),
        DEADLINE,
        || async move { waker.stops(server) == n },
    )
    .await;
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
    wait_stops(&waker, "clock", 1).await;
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
    wait_stops(&waker, "lobby", 1).await;
    let sy = &syncd;
    eventually("ListServers shows lobby asleep", DEADLINE, || async move {
        server(sy, "lobby").await.sleep() == SleepState::Asleep
    })
    .await;
    assert_eq!(server(&syncd, "lobby").await.wake, "asleep");
    // Another full idle period later (the clock's), still one stop.
    pg.execute("UPDATE servers SET state = 'running' WHERE name = 'clock'")
        .await;
    wait_stops(&waker, "clock", 1).await;
    // The waker counts a stop when the request arrives; syncd counts it
    // once the answer is back, so wait for syncd's side too.
    eventually("syncd counts both stops as done", DEADLINE, || async move {
        sy.metrics_text()
            .await
            .contains("automc_syncd_sleeps_total{outcome=\"stopped\"} 2")
    })
    .await;
    assert_eq!(waker.stops("lobby"), 1, "exactly one stop request");
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
    wait_stops(&waker, "clock", 1).await;
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
    wait_stops(&waker, "lobby", 1).await;
    let sy = &syncd;
    eventually(
        "ListServers shows the stop in flight",
        DEADLINE,
        || async move { server(sy, "lobby").await.sleep() == SleepState::Stopping },
    )
    .await;
    let edge_addr = e1.listen_addr;
    eventually("the edge shows lobby stopping", DEADLINE, || async move {
        status_ping(edge_addr, "lobby.example.com", DEFAULT_PROTOCOL)
            .await
            .is_ok_and(|r| r.motd().contains("going to sleep"))
    })
    .await;
    assert_eq!(waker.posts("lobby"), 0);
    let _player = join(&e1, &b, "lobby.example.com", "Late").await;
    assert_eq!(waker.posts("lobby"), 1, "woken again after the stop");
    assert_eq!(waker.stops("lobby"), 1);
}

#[tokio::test]
async fn server_options_sleep_after_turns_sleeping_on_for_one_server_only() {
    let pg = migrated_pg().await;
    let b = backend().await;
    add_server(&pg, "nightly", b.addr(), "running").await;
    add_server(&pg, "always", b.addr(), "running").await;
    pg.execute(
        "INSERT INTO server_options (server, sleep_after) VALUES ('nightly', '600 milliseconds')",
    )
    .await;
    let waker = FakeWaker::start().await;
    // No --sleep-after: only the row turns it on.
    let syncd = syncd(&pg, &waker, None, Duration::from_secs(30)).await;
    wait_stops(&waker, "nightly", 1).await;
    assert_eq!(waker.stops("always"), 0, "no sleep_after for it");
    assert_eq!(server(&syncd, "always").await.sleep(), SleepState::Off);
    let sy = &syncd;
    eventually(
        "ListServers shows nightly asleep",
        DEADLINE,
        || async move { server(sy, "nightly").await.sleep() == SleepState::Asleep },
    )
    .await;
}

async fn syncd_cli(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(automc_tests::procs::bin_dir().await.join("syncd"))
            .args(args)
            .output(),
    )
    .await
    .expect("syncd CLI answers in time")
    .expect("run syncd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn syncd_servers_and_players_print_the_fleet_as_tables_and_json() {
    let pg = migrated_pg().await;
    let b = backend().await;
    add_server(&pg, "lobby", b.addr(), "running").await;
    let waker = FakeWaker::start().await;
    let syncd = syncd(&pg, &waker, None, Duration::from_secs(30)).await;
    let e1 = edge(&syncd.grpc_url(), "e1").await;
    e1.wait_route("lobby.example.com", Some("lobby")).await;
    let _alex = join(&e1, &b, "lobby.example.com", "Alex").await;
    wait_players(&syncd, "lobby", 1).await;
    let url = syncd.grpc_url();

    let out = syncd_cli(&["servers", "--syncd", &url]).await;
    let row = out
        .lines()
        .find(|l| l.starts_with("lobby "))
        .unwrap_or_else(|| panic!("no lobby row:\n{out}"));
    for cell in ["running", "e1=1", "off"] {
        assert!(row.contains(cell), "{cell} missing: {out}");
    }
    assert!(
        out.contains("1 servers, 1 players; 0 unknown edges"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&syncd_cli(&["servers", "--syncd", &url, "--json"]).await)
            .expect("servers --json is JSON");
    assert_eq!(json["servers"][0]["players"], 1);
    assert_eq!(json["servers"][0]["edges"][0]["edge_id"], "e1");

    let out = syncd_cli(&["players", "--syncd", &url]).await;
    let row = out
        .lines()
        .find(|l| l.starts_with("Alex "))
        .unwrap_or_else(|| panic!("no Alex row:\n{out}"));
    assert!(
        row.contains(&player_uuid("Alex")) && row.contains("lobby"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&syncd_cli(&["players", "--syncd", &url, "--json"]).await)
            .expect("players --json is JSON");
    assert_eq!(json["players"][0]["edge_id"], "e1");
}

/// HMAC-SHA256 written out from RFC 2104, independent of syncd's (ring).
fn hmac_sha256_hex(key: &[u8], msg: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

type Hooked = std::sync::Arc<std::sync::Mutex<Vec<(Option<String>, Vec<u8>)>>>;

/// A webhook receiver on 127.0.0.1:0: records (signature, body), or never
/// answers when `hang`.
async fn webhook_receiver(hang: bool) -> (String, Hooked) {
    use axum::routing::post;
    let got: Hooked = Hooked::default();
    let rec = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let rec = rec.clone();
                async move {
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    let sig = headers
                        .get("x-automc-signature")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    rec.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((sig, body.to_vec()));
                    "ok"
                }
            },
        ),
    );
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind hook");
    let url = format!("http://{}/hook", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, got)
}

#[tokio::test]
async fn watch_events_and_signed_webhooks_see_wakes_joins_and_leaves_and_a_hung_webhook_slows_no_login(
) {
    use futures::StreamExt;
    let pg = migrated_pg().await;
    let b = backend().await;
    add_server(&pg, "lobby", b.addr(), "stopped").await;
    let waker = FakeWaker::start().await;
    let (good, got) = webhook_receiver(false).await;
    let (hung, _) = webhook_receiver(true).await;
    let url = waker.url();
    let syncd = start_syncd(&pg.dsn(), |c| {
        c.waker.url = Some(url);
        c.webhook_urls = vec![hung, good];
        c.webhook_secret = Some("s3cret".into());
    })
    .await;
    let mut events = syncd
        .client()
        .await
        .watch_events(automc_proto::v1::WatchEventsRequest {})
        .await
        .expect("WatchEvents")
        .into_inner();
    let e1 = edge(&syncd.grpc_url(), "e1").await;
    e1.wait_route("lobby.example.com", Some("lobby")).await;

    // The login wakes the server and joins while one webhook hangs.
    let player = join(&e1, &b, "lobby.example.com", "Alex").await;
    wait_players(&syncd, "lobby", 1).await;
    drop(player);
    wait_players(&syncd, "lobby", 0).await;

    use automc_proto::v1::EventKind;
    let mut seen = Vec::new();
    while !seen.contains(&EventKind::PlayerLeft) {
        let e = tokio::time::timeout(DEADLINE, events.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("event");
        assert_eq!(e.server, "lobby");
        if matches!(e.kind(), EventKind::PlayerJoined | EventKind::PlayerLeft) {
            assert_eq!((e.player.as_str(), e.edge_id.as_str()), ("Alex", "e1"));
            assert_eq!(e.uuid, player_uuid("Alex"));
        }
        seen.push(e.kind());
    }
    assert_eq!(
        seen,
        vec![
            EventKind::WakeStarted,
            EventKind::WakeFinished,
            EventKind::PlayerJoined,
            EventKind::PlayerLeft
        ]
    );

    let g = got.clone();
    eventually("the webhook got all four events", DEADLINE, || {
        let g = g.clone();
        async move { g.lock().unwrap_or_else(|p| p.into_inner()).len() >= 4 }
    })
    .await;
    let hooked = got.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut kinds = Vec::new();
    for (sig, body) in &hooked {
        let want = format!("sha256={}", hmac_sha256_hex(b"s3cret", body));
        assert_eq!(sig.as_deref(), Some(want.as_str()), "signature of {body:?}");
        let v: serde_json::Value = serde_json::from_slice(body).expect("JSON body");
        kinds.push(v["kind"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        kinds[..4],
        [
            "wake_started",
            "wake_finished",
            "player_joined",
            "player_left"
        ]
    );
}
