//! Fault suite, process side: syncd and an edge killed with SIGKILL (real
//! child processes; no drain, no goodbye).
//!
//! - syncd killed while players are connected: spliced sessions keep
//!   flowing, new logins to known routes still work from the edge's last
//!   table, and when a new syncd comes back (new epoch) the edge resyncs,
//!   including changes committed while syncd was dead.
//! - one edge killed: the other edges and their players are unaffected and
//!   keep receiving route changes; syncd drops the dead watcher.
use std::time::Duration;

use automc_proto::v1::ListRoutesRequest;
use automc_tests::mc::{login_answering, McBackend, McConn, DEFAULT_PROTOCOL};
use automc_tests::procs::{edge_args, syncd_args, Proc};
use automc_tests::stack::{eventually, migrated_pg, start_edge, start_syncd, DEADLINE};

const WAIT: Duration = Duration::from_secs(20);

/// Log in through `edge_addr` and check the echo backend answers through it.
async fn join(edge_addr: std::net::SocketAddr, host: &str, at: &McBackend) -> McConn {
    let before = at.logins().len();
    let held = login_answering(edge_addr, DEFAULT_PROTOCOL, host, "steve")
        .await
        .expect("login connects");
    at.wait_for_logins(before + 1, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{host} login did not reach its backend: {e}"));
    let (mut conn, _) = held.into_conn().await.expect("login");
    echo(&mut conn, b"hello").await;
    conn
}

async fn echo(conn: &mut McConn, bytes: &[u8]) {
    conn.send(bytes).await.expect("send through the edge");
    assert_eq!(
        conn.read_exact(bytes.len()).await.expect("echo back"),
        bytes,
        "spliced session answers"
    );
}

async fn epoch_of(url: &str) -> String {
    let mut c = automc_proto::v1::route_sync_client::RouteSyncClient::connect(url.to_owned())
        .await
        .expect("connect syncd");
    c.list_routes(ListRoutesRequest::default())
        .await
        .expect("ListRoutes")
        .into_inner()
        .epoch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncd_killed_keeps_sessions_and_known_routes_and_the_edge_resyncs_on_its_return() {
    let pg = migrated_pg().await;
    let lobby = McBackend::start(Default::default()).await.expect("backend");
    let mini = McBackend::start(Default::default()).await.expect("backend");
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('lobby', 'lobby.example.com', '{}', 'running')",
        lobby.addr()
    ))
    .await;
    let mut syncd = Proc::spawn("syncd", &syncd_args(&pg.dsn(), &[]), &[]).await;
    syncd.wait_ready().await;
    let url = format!("http://{}", syncd.main_addr);
    let first_epoch = epoch_of(&url).await;
    let edge = start_edge(std::slice::from_ref(&url), |_| {}).await;
    edge.ready().await;
    edge.wait_route("lobby.example.com", Some("lobby")).await;
    let mut players: Vec<McConn> = Vec::new();
    for _ in 0..3 {
        players.push(join(edge.listen_addr, "lobby.example.com", &lobby).await);
    }

    syncd.kill().await;
    let r = edge.running();
    eventually("edge notices syncd is gone", DEADLINE, || async move {
        r.sync_status().state != "connected"
    })
    .await;

    // Established sessions keep flowing, new logins to known routes work.
    for p in &mut players {
        echo(p, b"still here").await;
    }
    players.push(join(edge.listen_addr, "lobby.example.com", &lobby).await);
    assert!(edge.running().is_ready(), "the last table keeps serving");

    // Changes while syncd is dead reach the edge once a new syncd is up.
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('mini', 'mini.example.com', '{}', 'running');
         UPDATE servers SET state = 'running', address = '{}' WHERE name = 'lobby'",
        mini.addr(),
        lobby.addr()
    ))
    .await;
    let syncd2 = Proc::spawn_on("syncd", &syncd_args(&pg.dsn(), &[]), &[], syncd.main_addr).await;
    syncd2.wait_ready().await;
    let second_epoch = epoch_of(&url).await;
    assert_ne!(
        first_epoch, second_epoch,
        "a restarted syncd has a new epoch"
    );
    edge.wait_route("mini.example.com", Some("mini")).await;
    let r = edge.running();
    let want = second_epoch.clone();
    eventually("edge holds the new epoch", DEADLINE, || {
        let want = want.clone();
        async move { r.table().epoch == want && r.sync_status().state == "connected" }
    })
    .await;
    join(edge.listen_addr, "mini.example.com", &mini).await;
    for p in &mut players {
        echo(p, b"after resync").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_killed_leaves_the_other_edges_and_their_players_unaffected() {
    let pg = migrated_pg().await;
    let lobby = McBackend::start(Default::default()).await.expect("backend");
    let other = McBackend::start(Default::default()).await.expect("backend");
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('lobby', 'lobby.example.com', '{}', 'running')",
        lobby.addr()
    ))
    .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let mut doomed = Proc::spawn("edge", &edge_args(&syncd.grpc_url(), &[]), &[]).await;
    doomed.wait_ready().await;
    let b = start_edge(&[syncd.grpc_url()], |c| c.edge_id = "edge-b".into()).await;
    let c = start_edge(&[syncd.grpc_url()], |c| c.edge_id = "edge-c".into()).await;
    b.ready().await;
    c.ready().await;
    let http = syncd.http_addr;
    let watchers = move || async move {
        let text = automc_tests::stack::http_get(http, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        automc_tests::stack::metric_value(&text, "automc_syncd_watchers").unwrap_or(-1.0)
    };
    eventually("three edges watching", DEADLINE, || async move {
        watchers().await == 3.0
    })
    .await;

    let mut on_doomed = join(doomed.main_addr, "lobby.example.com", &lobby).await;
    let mut on_b = join(b.listen_addr, "lobby.example.com", &lobby).await;
    let mut on_c = join(c.listen_addr, "lobby.example.com", &lobby).await;
    echo(&mut on_doomed, b"before").await;

    doomed.kill().await;
    assert!(
        on_doomed.closed_within(WAIT).await,
        "a player on the killed edge sees the connection close"
    );
    echo(&mut on_b, b"unaffected").await;
    echo(&mut on_c, b"unaffected").await;
    eventually("syncd drops the dead edge", DEADLINE, || async move {
        watchers().await == 2.0
    })
    .await;

    // The survivors keep taking players and route changes.
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('other', 'other.example.com', '{}', 'running')",
        other.addr()
    ))
    .await;
    for e in [&b, &c] {
        e.wait_route("other.example.com", Some("other")).await;
        join(e.listen_addr, "other.example.com", &other).await;
        join(e.listen_addr, "lobby.example.com", &lobby).await;
    }
    echo(&mut on_b, b"still").await;
    echo(&mut on_c, b"still").await;
}
