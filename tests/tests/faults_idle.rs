//! Fault suite, load: 5,000 idle players held on one edge across a route
//! change. Players who joined before the change stay on the old backend,
//! those after it go to the new one, and every session is still spliced end
//! to end at the end.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use automc_tests::mc::{login, McBackend};
use automc_tests::procs::{edge_args, Proc};
use automc_tests::stack::{ensure_fd_limit, eventually, migrated_pg, start_syncd, DEADLINE};
use futures::StreamExt;

const IDLE_PLAYERS: usize = 5_000;
/// File descriptors this process needs: a client and a backend socket per
/// player, plus Postgres, syncd and slack.
const FDS_NEEDED: u64 = 2 * IDLE_PLAYERS as u64 + 1_000;

async fn open_players(edge: SocketAddr, from: usize, n: usize) -> Vec<automc_tests::mc::McConn> {
    futures::stream::iter(from..from + n)
        .map(|i| async move {
            login(edge, "lobby.example.com", &format!("p{i}"))
                .await
                .unwrap_or_else(|e| panic!("player {i} cannot connect: {e}"))
        })
        .buffer_unordered(64)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_players_stay_connected_across_a_route_change() {
    ensure_fd_limit(FDS_NEEDED);
    let pg = migrated_pg().await;
    let old = McBackend::start(Default::default()).await.expect("backend");
    let new = McBackend::start(Default::default()).await.expect("backend");
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('lobby', 'lobby.example.com', '{}', 'running')",
        old.addr()
    ))
    .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    // The edge runs as its own process so each side stays well under the
    // per-process descriptor limit (the edge holds two per player).
    let edge = Proc::spawn("edge", &edge_args(&syncd.grpc_url(), &[]), &[]).await;
    edge.wait_ready().await;
    let half = IDLE_PLAYERS / 2;

    let mut players = open_players(edge.main_addr, 0, half).await;
    eventually(
        "first half logged in at the old backend",
        DEADLINE,
        || async { old.logins().len() >= half },
    )
    .await;

    let version = edge.metric("automc_edge_table_version").await;
    pg.execute(&format!(
        "UPDATE servers SET address = '{}' WHERE name = 'lobby'",
        new.addr()
    ))
    .await;
    let e = &edge;
    eventually("edge applies the route change", DEADLINE, || async move {
        e.metric("automc_edge_table_version").await > version
    })
    .await;

    players.extend(open_players(edge.main_addr, half, IDLE_PLAYERS - half).await);
    eventually(
        "second half logged in at the new backend",
        DEADLINE,
        || async { new.logins().len() >= IDLE_PLAYERS - half },
    )
    .await;
    assert_eq!(old.logins().len(), half, "nobody moved to the old backend");
    assert!(
        edge.metric("automc_edge_connections_active").await >= IDLE_PLAYERS as f64,
        "the edge holds every player"
    );

    // Every one of the 5,000 sessions is still spliced end to end.
    let alive = AtomicUsize::new(0);
    futures::stream::iter(players.iter_mut())
        .for_each_concurrent(128, |p| {
            let alive = &alive;
            async move {
                p.send(b"ok?").await.expect("send");
                assert_eq!(p.read_exact(3).await.expect("echo"), b"ok?");
                alive.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await;
    assert_eq!(alive.load(Ordering::Relaxed), IDLE_PLAYERS);
    drop(players);
    let e = &edge;
    eventually("the edge releases them", DEADLINE, || async move {
        e.metric("automc_edge_connections_active").await == 0.0
    })
    .await;
}
