//! What players see without joining: status pings (proxied, cached, stale,
//! asleep, unknown host), legacy pings, and login Disconnect messages.
use std::time::Duration;

use automc_tests::mc::{
    self, legacy_ping_1_4, legacy_ping_1_6, legacy_ping_bare, login, ping_only, status_ping,
    BackendOptions, McBackend, DEFAULT_PROTOCOL,
};
use automc_tests::pg::TestPg;
use automc_tests::stack::{
    dead_address, eventually, migrated_pg, start_edge, start_syncd, EdgeHandle, SyncdHandle,
    DEADLINE,
};

const WAIT: Duration = Duration::from_secs(20);

async fn stack(
    rows: &str,
    tweak: impl FnOnce(&mut edge::Config),
) -> (TestPg, SyncdHandle, EdgeHandle) {
    let pg = migrated_pg().await;
    if !rows.is_empty() {
        pg.execute(rows).await;
    }
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let edge = start_edge(&[syncd.grpc_url()], tweak).await;
    edge.ready().await;
    (pg, syncd, edge)
}

fn motds(c: &mut edge::Config) {
    c.asleep_motd = "Zzz asleep".into();
    c.starting_motd = "Starting up".into();
    c.unknown_host = edge::UnknownHost::Motd("Nobody here".into());
}

#[tokio::test]
async fn status_of_a_running_backend_is_its_own() {
    let b = McBackend::start(BackendOptions::with_motd("live backend"))
        .await
        .expect("backend");
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('live', 'live.example.com', '{}', 'running')",
        b.addr()
    );
    let (_pg, _syncd, edge) = stack(&rows, motds).await;
    let reply = status_ping(edge.listen_addr, "Live.Example.com.", DEFAULT_PROTOCOL)
        .await
        .expect("status");
    assert_eq!(reply.motd(), "live backend");
    assert!(b.status_answers() >= 1);
}

#[tokio::test]
async fn status_of_a_stopped_server_is_the_asleep_motd_echoing_the_clients_protocol() {
    let b = McBackend::start(BackendOptions::with_motd("should not be asked"))
        .await
        .expect("backend");
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('s', 's.example.com', '{}', 'stopped')",
        b.addr()
    );
    let (_pg, _syncd, edge) = stack(&rows, motds).await;
    for protocol in [47, 340, 769] {
        let reply = status_ping(edge.listen_addr, "s.example.com", protocol)
            .await
            .expect("status");
        assert_eq!(reply.motd(), "Zzz asleep");
        assert_eq!(reply.protocol(), Some(i64::from(protocol)));
    }
    assert_eq!(b.status_answers(), 0, "a stopped server is not contacted");
}

#[tokio::test]
async fn status_of_an_unreachable_running_backend_is_the_asleep_motd() {
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('gone', 'gone.example.com', '{}', 'running')",
        dead_address()
    );
    let (_pg, _syncd, edge) = stack(&rows, motds).await;
    let reply = status_ping(edge.listen_addr, "gone.example.com", 765)
        .await
        .expect("status");
    assert_eq!(reply.motd(), "Zzz asleep");
    assert_eq!(reply.protocol(), Some(765));
}

#[tokio::test]
async fn last_good_status_is_served_marked_stale_while_the_backend_is_briefly_down() {
    let b = McBackend::start(BackendOptions::with_motd("live backend"))
        .await
        .expect("backend");
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('live', 'live.example.com', '{}', 'running')",
        b.addr()
    );
    let (_pg, _syncd, edge) = stack(&rows, motds).await;
    let addr = edge.listen_addr;
    let fresh = status_ping(addr, "live.example.com", DEFAULT_PROTOCOL)
        .await
        .expect("status");
    assert_eq!(fresh.motd(), "live backend");
    b.stop();
    eventually(
        "the cached answer is served, marked stale",
        DEADLINE,
        || async move {
            status_ping(addr, "live.example.com", DEFAULT_PROTOCOL)
                .await
                .is_ok_and(|r| r.motd().contains("live backend") && r.motd().contains("(cached)"))
        },
    )
    .await;
}

#[tokio::test]
async fn concurrent_status_pings_share_one_backend_fetch() {
    let b = McBackend::start(BackendOptions::with_motd("popular"))
        .await
        .expect("backend");
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('p', 'p.example.com', '{}', 'running')",
        b.addr()
    );
    let (_pg, _syncd, edge) = stack(&rows, |c| c.status_cache_ttl = Duration::from_secs(60)).await;
    let pings = (0..20).map(|_| status_ping(edge.listen_addr, "p.example.com", DEFAULT_PROTOCOL));
    for r in futures::future::join_all(pings).await {
        assert_eq!(r.expect("status").motd(), "popular");
    }
    assert_eq!(b.status_answers(), 1, "one fetch per backend and protocol");
}

#[tokio::test]
async fn a_ping_without_a_status_request_still_gets_its_pong() {
    let rows = "INSERT INTO servers (name, domain, address, state) VALUES ('s', 's.example.com', '127.0.0.1:1', 'stopped')";
    let (_pg, _syncd, edge) = stack(rows, motds).await;
    let pong = ping_only(edge.listen_addr, "s.example.com", DEFAULT_PROTOCOL, 0x5eed)
        .await
        .expect("pong");
    assert_eq!(pong, 0x5eed);
}

#[tokio::test]
async fn unknown_hostnames_get_the_configured_motd_or_a_close() {
    let (_pg, syncd, edge) = stack("", motds).await;
    let reply = status_ping(edge.listen_addr, "nowhere.example.com", 760)
        .await
        .expect("status");
    assert_eq!(reply.motd(), "Nobody here");
    assert_eq!(reply.protocol(), Some(760));
    let mut conn = login(edge.listen_addr, "nowhere.example.com", "steve")
        .await
        .expect("connect");
    assert_eq!(
        conn.read_disconnect().await.expect("disconnect"),
        "Nobody here"
    );

    let closing = start_edge(&[syncd.grpc_url()], |c| {
        c.unknown_host = edge::UnknownHost::Close
    })
    .await;
    closing.ready().await;
    assert!(status_ping(closing.listen_addr, "nowhere.example.com", 760)
        .await
        .is_err());
    let mut conn = mc::send_bytes(
        closing.listen_addr,
        &mc::handshake_packet(760, "nowhere.example.com", 25565, 1),
    )
    .await
    .expect("connect");
    assert!(conn.closed_within(WAIT).await);
    // A login still gets told why.
    let mut conn = login(closing.listen_addr, "nowhere.example.com", "steve")
        .await
        .expect("connect");
    let text = conn.read_disconnect().await.expect("disconnect");
    assert!(text.contains("no server at this address"), "{text}");
    assert!(closing.metric("automc_edge_route_lookups_total{result=\"miss\"}") >= 2.0);
}

#[tokio::test]
async fn login_to_an_unreachable_backend_gets_a_readable_disconnect() {
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('gone', 'gone.example.com', '{}', 'running')",
        dead_address()
    );
    let (_pg, _syncd, edge) = stack(&rows, motds).await;
    let mut conn = login(edge.listen_addr, "gone.example.com", "steve")
        .await
        .expect("connect");
    let text = conn.read_disconnect().await.expect("disconnect");
    assert!(text.contains("offline"), "{text}");
    assert!(conn.closed_within(WAIT).await);
}

#[tokio::test]
async fn login_to_a_stopped_route_without_a_waker_still_tries_its_backend() {
    let b = McBackend::start(BackendOptions::default())
        .await
        .expect("backend");
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('s', 's.example.com', '{}', 'stopped')",
        b.addr()
    );
    let (_pg, _syncd, edge) = stack(&rows, motds).await;
    let conn = login(edge.listen_addr, "s.example.com", "steve")
        .await
        .expect("connect");
    let recs = b
        .wait_for_logins(1, WAIT)
        .await
        .expect("login reaches the backend");
    assert!(recs[0].received.starts_with(&conn.sent_first));
}

#[tokio::test]
async fn legacy_pings_are_answered_and_the_1_6_form_is_routed_by_its_hostname() {
    let b = McBackend::start(BackendOptions::with_motd("legacy live"))
        .await
        .expect("backend");
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES
           ('live', 'live.example.com', '{}', 'running'),
           ('sleepy', 'sleepy.example.com', '127.0.0.1:1', 'stopped')",
        b.addr()
    );
    let (_pg, _syncd, edge) = stack(&rows, motds).await;
    let addr = edge.listen_addr;
    // No hostname in the older forms and no `*` route: the unknown-host text.
    assert_eq!(
        legacy_ping_bare(addr).await.expect("bare").motd(),
        "Nobody here"
    );
    assert_eq!(
        legacy_ping_1_4(addr).await.expect("1.4").motd(),
        "Nobody here"
    );
    let sleepy = legacy_ping_1_6(addr, "sleepy.example.com", 25565, 78)
        .await
        .expect("1.6");
    assert_eq!(sleepy.motd(), "Zzz asleep");
    let live = legacy_ping_1_6(addr, "live.example.com", 25565, 78)
        .await
        .expect("1.6");
    assert_eq!(live.motd(), "legacy live");
}
