//! What players see without joining: status pings (proxied, cached, stale,
//! asleep, unknown host), legacy pings, and login Disconnect messages. The
//! edge alone, fed its routes by a FakeSyncd.
use std::time::Duration;

use automc_tests::mc::{
    self, legacy_ping_1_4, legacy_ping_1_6, legacy_ping_bare, login, ping_only, status_ping,
    BackendOptions, McBackend, DEFAULT_PROTOCOL,
};
use automc_tests::stack::{dead_address, eventually, fake_stack, route, stopped_route, DEADLINE};

const WAIT: Duration = Duration::from_secs(20);

fn motds(c: &mut edge::Config) {
    c.asleep_motd = "Zzz asleep".into();
    c.starting_motd = "Starting up".into();
    c.unknown_host = edge::UnknownHost::Motd("Nobody here".into());
}

#[tokio::test]
async fn status_of_a_running_backend_is_its_own() {
    let b = McBackend::with_motd("live backend").await;
    let (_syncd, edge) = fake_stack(
        vec![route("live", "live.example.com", &b.addr().to_string())],
        motds,
    )
    .await;
    let reply = status_ping(edge.listen_addr, "Live.Example.com.", DEFAULT_PROTOCOL)
        .await
        .expect("status");
    assert_eq!(reply.motd(), "live backend");
    assert!(b.status_answers() >= 1);
}

#[tokio::test]
async fn status_of_a_stopped_server_is_the_asleep_motd_echoing_the_clients_protocol() {
    let b = McBackend::with_motd("should not be asked").await;
    let (_syncd, edge) = fake_stack(
        vec![stopped_route("s", "s.example.com", &b.addr().to_string())],
        motds,
    )
    .await;
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
    let (_syncd, edge) = fake_stack(
        vec![route("gone", "gone.example.com", &dead_address())],
        motds,
    )
    .await;
    let reply = status_ping(edge.listen_addr, "gone.example.com", 765)
        .await
        .expect("status");
    assert_eq!(reply.motd(), "Zzz asleep");
    assert_eq!(reply.protocol(), Some(765));
}

#[tokio::test]
async fn last_good_status_is_served_marked_stale_while_the_backend_is_briefly_down() {
    let b = McBackend::with_motd("live backend").await;
    let (_syncd, edge) = fake_stack(
        vec![route("live", "live.example.com", &b.addr().to_string())],
        motds,
    )
    .await;
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
    let b = McBackend::with_motd("popular").await;
    let (_syncd, edge) = fake_stack(
        vec![route("p", "p.example.com", &b.addr().to_string())],
        |c| c.status_cache_ttl = Duration::from_secs(60),
    )
    .await;
    let pings = (0..20).map(|_| status_ping(edge.listen_addr, "p.example.com", DEFAULT_PROTOCOL));
    for r in futures::future::join_all(pings).await {
        assert_eq!(r.expect("status").motd(), "popular");
    }
    assert_eq!(b.status_answers(), 1, "one fetch per backend and protocol");
}

#[tokio::test]
async fn a_ping_without_a_status_request_still_gets_its_pong() {
    let (_syncd, edge) = fake_stack(
        vec![stopped_route("s", "s.example.com", "127.0.0.1:1")],
        motds,
    )
    .await;
    let pong = ping_only(edge.listen_addr, "s.example.com", DEFAULT_PROTOCOL, 0x5eed)
        .await
        .expect("pong");
    assert_eq!(pong, 0x5eed);
}

#[tokio::test]
async fn unknown_hostnames_get_the_configured_motd_or_a_close() {
    let (syncd, edge) = fake_stack(Vec::new(), motds).await;
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

    drop((syncd, edge));
    let (_syncd, closing) =
        fake_stack(Vec::new(), |c| c.unknown_host = edge::UnknownHost::Close).await;
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
    let (_syncd, edge) = fake_stack(
        vec![route("gone", "gone.example.com", &dead_address())],
        motds,
    )
    .await;
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
    let (_syncd, edge) = fake_stack(
        vec![stopped_route("s", "s.example.com", &b.addr().to_string())],
        motds,
    )
    .await;
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
    let b = McBackend::with_motd("legacy live").await;
    let routes = vec![
        route("live", "live.example.com", &b.addr().to_string()),
        stopped_route("sleepy", "sleepy.example.com", "127.0.0.1:1"),
    ];
    let (_syncd, edge) = fake_stack(routes, motds).await;
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

#[tokio::test]
async fn a_trickled_status_conversation_is_closed_at_its_deadline_not_kept_alive_by_each_byte() {
    let b = McBackend::with_motd("trickle").await;
    let (_syncd, edge) = fake_stack(
        vec![route("t", "t.example.com", &b.addr().to_string())],
        |c| c.handshake_timeout = Duration::from_secs(1),
    )
    .await;
    let mut conn = mc::McConn::connect(edge.listen_addr)
        .await
        .expect("connect");
    let mut first = mc::handshake_packet(DEFAULT_PROTOCOL, "t.example.com", 25565, 1);
    first.extend_from_slice(&mc::framed(&[0x00]));
    conn.send(&first).await.expect("send");
    let (id, _) = conn.read_packet().await.expect("status response");
    assert_eq!(id, 0x00);
    // The ping, one byte every 400 ms: each byte comes well within the
    // deadline, the whole ping (4 s) well past it.
    let ping = mc::ping_packet(0x7e57);
    let sent = conn.send_slowly(&ping, Duration::from_millis(400)).await;
    let pong = conn.read_pong().await;
    assert!(
        pong.is_err(),
        "the edge answered a ping trickled past its deadline (send: {sent:?})"
    );
    let e = &edge;
    eventually("the trickle counts as a timeout", DEADLINE, || async move {
        e.metric("automc_edge_handshake_errors_total{reason=\"timeout\"}") >= 1.0
    })
    .await;
}

#[tokio::test]
async fn with_no_cache_ttl_concurrent_pings_share_one_fetch_at_a_time_and_all_get_answered() {
    let (open, gate) = tokio::sync::watch::channel(false);
    let b = McBackend::start(BackendOptions {
        status_gate: Some(gate),
        ..BackendOptions::with_motd("busy hub")
    })
    .await
    .expect("backend");
    let (_syncd, edge) = fake_stack(
        vec![route("hub", "hub.example.com", &b.addr().to_string())],
        |c| {
            c.status_cache_ttl = Duration::ZERO;
            // The backend answers only when the test opens its gate.
            c.connect_timeout = Duration::from_secs(30);
        },
    )
    .await;
    const PINGS: usize = 16;
    let addr = edge.listen_addr;
    let pings: Vec<_> = (0..PINGS)
        .map(|_| tokio::spawn(status_ping(addr, "hub.example.com", DEFAULT_PROTOCOL)))
        .collect();
    let admin = automc_proto::v1::edge_admin_client::EdgeAdminClient::connect(format!(
        "http://{}",
        edge.grpc_addr
    ))
    .await
    .expect("admin");
    let admin = &admin;
    let backend = &b;
    eventually(
        "every ping waits on the one fetch held at the backend",
        DEADLINE,
        || async move {
            let list = admin
                .clone()
                .list_connections(automc_proto::v1::ListConnectionsRequest {})
                .await
                .map(|r| r.into_inner().connections)
                .unwrap_or_default();
            let waiting = list.iter().filter(|c| c.phase == "status").count();
            waiting == PINGS && backend.status_requests() == 1
        },
    )
    .await;
    open.send_replace(true);
    for p in pings {
        let reply = p.await.expect("task").expect("status");
        assert_eq!(reply.motd(), "busy hub");
    }
    assert_eq!(b.status_requests(), 1, "one fetch answered every waiter");
    // Pings after the fetch make fetches of their own, never two at once.
    let more = (0..PINGS).map(|_| status_ping(addr, "hub.example.com", DEFAULT_PROTOCOL));
    for r in futures::future::join_all(more).await {
        assert_eq!(r.expect("status").motd(), "busy hub");
    }
    assert!(b.status_requests() >= 2);
    assert_eq!(b.most_concurrent_status_requests(), 1);
}

#[tokio::test]
async fn two_hostnames_on_one_backend_each_get_their_own_motd_from_the_cache() {
    let b = McBackend::start(BackendOptions {
        motd_per_hostname: true,
        ..BackendOptions::with_motd("hub")
    })
    .await
    .expect("backend");
    let hub = b.addr().to_string();
    let routes = vec![
        route("survival", "survival.example.com", &hub),
        route("creative", "creative.example.com", &hub),
    ];
    let (_syncd, edge) = fake_stack(routes, |c| c.status_cache_ttl = Duration::from_secs(60)).await;
    for _ in 0..2 {
        for host in ["survival.example.com", "creative.example.com"] {
            let reply = status_ping(edge.listen_addr, host, DEFAULT_PROTOCOL)
                .await
                .expect("status");
            assert_eq!(reply.motd(), format!("hub @ {host}"));
        }
    }
    assert_eq!(
        b.status_requests(),
        2,
        "one fetch per hostname, then cached"
    );
}

#[tokio::test]
async fn pings_through_tcpshield_or_in_other_case_share_one_cached_answer_and_forge_gets_its_own() {
    let b = McBackend::start(BackendOptions::with_motd("lobby"))
        .await
        .expect("backend");
    let (_syncd, edge) = fake_stack(
        vec![route("lobby", "lobby.example.com", &b.addr().to_string())],
        |c| c.status_cache_ttl = Duration::from_secs(600),
    )
    .await;
    // What TCPShield appends is signed per connection: each ping differs.
    for host in [
        "lobby.example.com",
        "Lobby.Example.COM.",
        "lobby.example.com///203.0.113.7:51000///1700000000///c2lnLW9uZQ==",
        "lobby.example.com///203.0.113.8:51001///1700000001///c2lnLXR3bw==",
    ] {
        let reply = status_ping(edge.listen_addr, host, DEFAULT_PROTOCOL)
            .await
            .expect("status");
        assert_eq!(reply.motd(), "lobby", "{host:?}");
    }
    assert_eq!(b.status_requests(), 1, "one fetch answered them all");
    for _ in 0..2 {
        let reply = status_ping(
            edge.listen_addr,
            "lobby.example.com\0FML2\0",
            DEFAULT_PROTOCOL,
        )
        .await
        .expect("status");
        assert_eq!(reply.motd(), "lobby");
    }
    assert_eq!(
        b.status_requests(),
        2,
        "a Forge client gets its own entry, once"
    );
}

#[tokio::test]
async fn relay_mode_forwards_the_status_conversation_byte_for_byte() {
    let json = r#"{"version":{"name":"Velocity 3","protocol":769},"players":{"online":7,"max":500},"description":"relayed as is","enforcesSecureChat":true}"#;
    let b = McBackend::start(BackendOptions {
        status_json: Some(json.into()),
        ..BackendOptions::default()
    })
    .await
    .expect("backend");
    let (_syncd, edge) = fake_stack(
        vec![route("v", "v.example.com", &b.addr().to_string())],
        |c| {
            c.status_mode = edge::status::StatusMode::Relay;
        },
    )
    .await;
    // A hostname with a Forge marker and odd case: relayed untouched.
    let mut sent = mc::handshake_packet(DEFAULT_PROTOCOL, "V.Example.com\0FML3\0", 25565, 1);
    sent.extend_from_slice(&mc::framed(&[0x00]));
    let mut conn = mc::McConn::connect(edge.listen_addr)
        .await
        .expect("connect");
    conn.send(&sent).await.expect("send");
    let (id, body) = conn.read_packet().await.expect("status response");
    assert_eq!(id, 0x00);
    let ping = mc::ping_packet(0x1234_5678);
    conn.send(&ping).await.expect("ping");
    sent.extend_from_slice(&ping);
    assert_eq!(conn.read_pong().await.expect("pong"), 0x1234_5678);

    let mut want_body = Vec::new();
    mc::put_string(&mut want_body, json);
    assert_eq!(body, want_body, "the backend's JSON, not re-encoded");
    let recs = b
        .wait_for(WAIT, |r| {
            r.iter().any(|c| c.closed && c.received.len() == sent.len())
        })
        .await
        .expect("the backend saw the whole conversation");
    let rec = recs
        .iter()
        .find(|c| c.received.len() == sent.len())
        .expect("record");
    assert_eq!(
        rec.received, sent,
        "the backend got the client's bytes exactly"
    );
}
