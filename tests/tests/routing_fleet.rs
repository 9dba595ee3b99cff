//! Issue 16, the fleet-wide part: `least-players` and `max_players` use the
//! player counts syncd adds up across edges and sends back to each edge
//! (the other edges' sessions; each edge adds its own), and fall back to
//! the edge's own counts when it has none from syncd.
//!
//! Real Postgres, one syncd, two real edges, real Minecraft backends. Every
//! wait is on something observable (an edge's `GetRoute` showing the fleet
//! counts it would use), never on time.
use automc_proto::v1::edge_admin_client::EdgeAdminClient;
use automc_proto::v1::{CountSource, GetRouteRequest, GetRouteResponse};
use automc_tests::mc::{login, status_ping, McBackend, DEFAULT_PROTOCOL};
use automc_tests::stack::{
    eventually, migrated_pg, start_edge, start_syncd, EdgeHandle, SyncdHandle, DEADLINE,
};
use std::sync::{Arc, Mutex};

use tonic::transport::Channel;

const HOST: &str = "s.example.com";

async fn edge(syncd: &SyncdHandle, id: &str) -> EdgeHandle {
    let e = start_edge(&[syncd.grpc_url()], |c| c.edge_id = id.into()).await;
    e.ready().await;
    e
}

async fn admin(edge: &EdgeHandle) -> EdgeAdminClient<Channel> {
    EdgeAdminClient::connect(format!("http://{}", edge.grpc_addr))
        .await
        .expect("edge admin")
}

async fn get_route(admin: &EdgeAdminClient<Channel>) -> GetRouteResponse {
    admin
        .clone()
        .get_route(GetRouteRequest {
            hostname: HOST.into(),
        })
        .await
        .expect("GetRoute")
        .into_inner()
}

/// Wait until `admin`'s edge answers `GetRoute` with fleet counts that
/// satisfy `ok`, and return that answer.
async fn fleet_route(
    admin: &EdgeAdminClient<Channel>,
    what: &str,
    ok: impl Fn(&GetRouteResponse) -> bool,
) -> GetRouteResponse {
    let last = Arc::new(Mutex::new(GetRouteResponse::default()));
    eventually(what, DEADLINE, || {
        let admin = admin.clone();
        let last = last.clone();
        let ok = &ok;
        async move {
            let r = get_route(&admin).await;
            let done = r.count_source() == CountSource::Fleet && ok(&r);
            *lock(&last) = r;
            done
        }
    })
    .await;
    let r = lock(&last).clone();
    r
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn backend_players(r: &GetRouteResponse) -> Vec<(String, u32)> {
    r.backend_players
        .iter()
        .map(|b| (b.address.clone(), b.players))
        .collect()
}

#[tokio::test]
async fn least_players_counts_the_players_of_every_edge_and_falls_back_to_its_own_without_syncd() {
    let a = McBackend::with_motd("a").await;
    let b = McBackend::with_motd("b").await;
    let pg = migrated_pg().await;
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('s', '{HOST}', '{}', 'running');
         INSERT INTO server_backends (server, address) VALUES ('s', '{}');
         INSERT INTO server_options (server, strategy) VALUES ('s', 'least-players');",
        a.addr(),
        b.addr()
    ))
    .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let edge_a = edge(&syncd, "edge-a").await;
    let edge_b = edge(&syncd, "edge-b").await;
    let admin_b = admin(&edge_b).await;

    // Two players on edge A: a tie goes to backend a, then b is emptier.
    let (first, _p1) = edge_a.login_lands(HOST, "one", &[&a, &b]).await;
    let (second, _p2) = edge_a.login_lands(HOST, "two", &[&a, &b]).await;
    assert_eq!((first, second), (0, 1));
    // A third on edge A goes to a again (a tie): a has 2, b has 1.
    let (third, _p3) = edge_a.login_lands(HOST, "three", &[&a, &b]).await;
    assert_eq!(third, 0);

    // Edge B has no player of its own; syncd tells it about edge A's.
    let r = fleet_route(&admin_b, "edge B shows edge A's three players", |r| {
        r.players == 3
    })
    .await;
    assert_eq!(
        backend_players(&r),
        [(a.addr().to_string(), 2), (b.addr().to_string(), 1)]
    );
    assert!(!r.counts_unknown);
    assert_eq!(
        r.would_dial,
        b.addr().to_string(),
        "b is emptier fleet-wide"
    );
    // So edge B's first login goes to b, not to a (edge B alone sees a tie).
    let (at, _p4) = edge_b.login_lands(HOST, "four", &[&a, &b]).await;
    assert_eq!(at, 1, "the fleet count, not edge B's own");
    // Edge B counts its own player at once, on top of the fleet's.
    let r = get_route(&admin_b).await;
    assert_eq!(r.players, 4);
    assert_eq!(
        backend_players(&r),
        [(a.addr().to_string(), 2), (b.addr().to_string(), 2)]
    );

    // Edge A hears of edge B's player the same way.
    let admin_a = admin(&edge_a).await;
    fleet_route(&admin_a, "edge A shows four players", |r| r.players == 4).await;

    // syncd goes away: edge B counts its own players only, and says so.
    syncd.stop().await;
    let last = Arc::new(Mutex::new(GetRouteResponse::default()));
    eventually("edge B falls back to its own counts", DEADLINE, || {
        let admin = admin_b.clone();
        let last = last.clone();
        async move {
            let r = get_route(&admin).await;
            let done = r.count_source() == CountSource::Edge;
            *lock(&last) = r;
            done
        }
    })
    .await;
    let last = lock(&last).clone();
    assert_eq!(last.players, 1, "edge B's own player");
    assert_eq!(backend_players(&last), [(b.addr().to_string(), 1)]);
    assert_eq!(last.would_dial, a.addr().to_string());
}

#[tokio::test]
async fn max_players_reached_through_one_edge_refuses_a_login_on_another_before_any_dial() {
    let a = McBackend::with_motd("a").await;
    let pg = migrated_pg().await;
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('s', '{HOST}', '{}', 'running');
         INSERT INTO server_options (server, max_players) VALUES ('s', 1);",
        a.addr()
    ))
    .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let edge_a = edge(&syncd, "edge-a").await;
    let edge_b = edge(&syncd, "edge-b").await;
    let admin_b = admin(&edge_b).await;
    // Before anyone plays, edge B holds (empty) fleet counts too.
    fleet_route(&admin_b, "edge B has fleet counts", |r| r.players == 0).await;

    let (_, first) = edge_a.login_lands(HOST, "first", &[&a]).await;
    fleet_route(&admin_b, "edge B shows edge A's player", |r| r.players == 1).await;

    let mut second = login(edge_b.listen_addr, HOST, "second")
        .await
        .expect("connect");
    let text = second.read_disconnect().await.expect("disconnect");
    assert!(text.contains("full"), "{text}");
    assert_eq!(
        a.logins().len(),
        1,
        "the backend never saw the second login"
    );

    // The server list on edge B shows the limit and the fleet's count, in
    // place of the backend's own numbers.
    let reply = status_ping(edge_b.listen_addr, HOST, DEFAULT_PROTOCOL)
        .await
        .expect("status");
    let v = reply.value();
    assert_eq!(
        (
            v["players"]["online"].as_i64(),
            v["players"]["max"].as_i64()
        ),
        (Some(1), Some(1))
    );

    // The player on edge A leaves: edge B hears of it and admits a login.
    drop(first);
    fleet_route(&admin_b, "edge B shows the seat free", |r| r.players == 0).await;
    let (_, _third) = edge_b.login_lands(HOST, "third", &[&a]).await;
    assert_eq!(a.logins().len(), 2);
}
