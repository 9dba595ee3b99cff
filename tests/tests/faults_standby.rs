//! Hot standby: two syncd instances on one database with the same
//! `--leader-lock`; one is active (serves wakes), the other answers wakes
//! with ABORTED and the edge asks its next endpoint. When the
//! active one stops, the standby takes the lock and serves the wakes.
use std::time::Duration;

use automc_proto::v1::route_sync_client::RouteSyncClient;
use automc_proto::v1::WakeRequest;
use automc_tests::mc::{login_answering, McBackend, DEFAULT_PROTOCOL};
use automc_tests::stack::{
    eventually, migrated_pg, start_edge, start_syncd, SyncdHandle, DEADLINE,
};
use automc_tests::waker::{Behaviour, FakeWaker};

const LOCK: i64 = 0x6175_746f_6d63;

/// Whether `url` serves wakes (a standby answers ABORTED).
async fn serves_wakes(url: String) -> bool {
    let Ok(mut c) = RouteSyncClient::connect(url).await else {
        return false;
    };
    let r = c
        .wake(WakeRequest {
            server: "probe".into(),
            caller: "test".into(),
        })
        .await;
    !matches!(r, Err(s) if s.code() == tonic::Code::Aborted)
}

/// Two syncd instances on `dsn` sharing a leader lock (set by `tweak`),
/// once exactly one of them serves wakes: (active, standby).
async fn active_and_standby(
    dsn: &str,
    tweak: impl Fn(&mut syncd::Config),
) -> (SyncdHandle, SyncdHandle) {
    let a = start_syncd(dsn, &tweak).await;
    let b = start_syncd(dsn, &tweak).await;
    let (ua, ub) = (a.grpc_url(), b.grpc_url());
    eventually("exactly one active syncd", DEADLINE, || {
        let (ua, ub) = (ua.clone(), ub.clone());
        async move { serves_wakes(ua).await != serves_wakes(ub).await }
    })
    .await;
    if serves_wakes(ua).await {
        (a, b)
    } else {
        (b, a)
    }
}

async fn join(edge: std::net::SocketAddr, backend: &McBackend) {
    let before = backend.logins().len();
    let held = login_answering(edge, DEFAULT_PROTOCOL, "sleepy.example.com", "steve")
        .await
        .expect("login");
    backend
        .wait_for_logins(before + 1, Duration::from_secs(20))
        .await
        .expect("the held login joins after the wake");
    let (mut conn, _) = held.into_conn().await.expect("login");
    conn.send(b"hi").await.expect("send");
    assert_eq!(conn.read_exact(2).await.expect("echo"), b"hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_syncd_takes_over_wakes_when_the_active_one_stops() {
    let pg = migrated_pg().await;
    let backend = McBackend::start(Default::default()).await.expect("backend");
    let waker = FakeWaker::start().await;
    waker.set(
        "sleepy",
        Behaviour::starts_at(Duration::ZERO, &backend.addr().to_string()),
    );
    waker.set("probe", Behaviour::StartFails(503));
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES
           ('sleepy', 'sleepy.example.com', '{}', 'stopped'),
           ('probe', 'probe.example.com', '127.0.0.1:1', 'stopped')",
        backend.addr()
    ))
    .await;
    let url = waker.url();
    let tweak = |c: &mut syncd::Config| {
        c.leader_lock = Some(LOCK);
        c.waker.url = Some(url.clone());
        c.waker.reuse_for = Duration::ZERO;
    };
    let (active, standby) = active_and_standby(&pg.dsn(), tweak).await;

    // The edge syncs from the standby (first URL) and finds the active one
    // for the wake.
    let edge = start_edge(&[standby.grpc_url(), active.grpc_url()], |c| {
        c.edge_id = "edge-standby-test".into();
    })
    .await;
    edge.ready().await;
    join(edge.listen_addr, &backend).await;
    assert_eq!(waker.posts("sleepy"), 1, "one wake, by the active syncd");

    active.stop().await;
    let us = standby.grpc_url();
    eventually("the standby becomes active", DEADLINE, || {
        let us = us.clone();
        async move { serves_wakes(us).await }
    })
    .await;
    join(edge.listen_addr, &backend).await;
    assert_eq!(waker.posts("sleepy"), 2, "the new active syncd woke it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_on_the_standby_see_the_wake_phases_of_the_active_syncd() {
    let pg = migrated_pg().await;
    let backend = McBackend::start(Default::default()).await.expect("backend");
    let waker = FakeWaker::start().await;
    waker.set(
        "sleepy",
        Behaviour::starts_after(Duration::from_millis(300)),
    );
    waker.set("probe", Behaviour::StartFails(503));
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES
           ('sleepy', 'sleepy.example.com', '{}', 'stopped'),
           ('probe', 'probe.example.com', '127.0.0.1:1', 'stopped')",
        backend.addr()
    ))
    .await;
    let url = waker.url();
    let tweak = |c: &mut syncd::Config| {
        c.leader_lock = Some(LOCK + 1);
        c.waker.url = Some(url.clone());
        c.waker.reuse_for = Duration::ZERO;
    };
    let (active, standby) = active_and_standby(&pg.dsn(), tweak).await;
    let mut on_standby = standby.watch("edge-on-standby").await;
    let mut c = active.client().await;
    c.wake(WakeRequest {
        server: "sleepy".into(),
        caller: "test".into(),
    })
    .await
    .expect("wake succeeds");
    use automc_proto::v1::WakePhase;
    let st = on_standby
        .wait_until("the standby relays the wake's end", DEADLINE, |s| {
            s.wakes.get("sleepy") == Some(&WakePhase::Running)
        })
        .await;
    assert!(st.ended.is_none());
}
