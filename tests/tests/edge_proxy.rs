//! The edge's player path: routing by hostname, byte-exact replay, splicing
//! with half-close, hostile handshakes, PROXY protocol, drain. The routing
//! test runs the whole stack (Postgres rows to syncd to edge); the others
//! test the edge alone, fed by a FakeSyncd.
use std::time::Duration;

use automc_proto::fake::{no_waker, FakeSyncd};
use automc_tests::mc::{
    self, login, login_with, random_sha256, send_bytes, status_ping, BackendOptions, LoginMode,
    McBackend, DEFAULT_PROTOCOL,
};
use automc_tests::procs::{edge_args, Proc};
use automc_tests::stack::{
    eventually, fake_stack, http_get, route, serve_routes, stack, EdgeHandle, DEADLINE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

/// Log in with `hostname` and check the login arrived at `at`, byte for byte.
async fn assert_routed(edge: &EdgeHandle, hostname: &str, at: &McBackend) {
    let before = at.logins().len();
    let mut conn = login(edge.listen_addr, hostname, "steve")
        .await
        .expect("login connects");
    let logins = at
        .wait_for_logins(before + 1, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{hostname:?} did not reach its backend: {e}"));
    let rec = logins.last().expect("a login");
    assert!(
        rec.received.starts_with(&conn.sent_first),
        "{hostname:?}: backend must see the player's bytes exactly"
    );
    // The connection is spliced: the echo backend answers through the edge.
    conn.send(b"ping-through").await.expect("send");
    assert_eq!(conn.read_exact(12).await.expect("echo"), b"ping-through");
}

#[tokio::test]
async fn players_are_routed_by_hostname_case_dot_forge_wildcard_alias_and_default() {
    let lobby = McBackend::with_motd("lobby").await;
    let mini = McBackend::with_motd("mini").await;
    let survival = McBackend::with_motd("survival").await;
    let fallback = McBackend::with_motd("fallback").await;
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES
           ('lobby', 'lobby.example.com', '{}', 'running'),
           ('mini', '*.mini.example.com', '{}', 'running'),
           ('survival', 'survival.example.com', '{}', 'running'),
           ('fallback', '*', '{}', 'running');
         INSERT INTO server_aliases (domain, server) VALUES ('smp.example.com', 'survival');",
        lobby.addr(),
        mini.addr(),
        survival.addr(),
        fallback.addr()
    );
    let (_pg, _syncd, edge) = stack(&rows, |_| {}).await;

    assert_routed(&edge, "lobby.example.com", &lobby).await;
    assert_routed(&edge, "LOBBY.Example.COM.", &lobby).await;
    assert_routed(&edge, "lobby.example.com\0FML\0", &lobby).await;
    assert_routed(&edge, "lobby.example.com\0FML2\0", &lobby).await;
    assert_routed(&edge, "lobby.example.com\0FML3\0", &lobby).await;
    assert_routed(
        &edge,
        "lobby.example.com///203.0.113.9:5555///1700000000///sig",
        &lobby,
    )
    .await;
    assert_routed(&edge, "a.mini.example.com", &mini).await;
    assert_routed(&edge, "deep.b.mini.example.com", &mini).await;
    assert_routed(&edge, "smp.example.com", &survival).await;
    assert_routed(&edge, "mini.example.com", &fallback).await;
    assert_routed(&edge, "nothing.example.net", &fallback).await;

    // Bytes of the next packet that arrive with the handshake are replayed too.
    let before = lobby.logins().len();
    let conn = login_with(
        edge.listen_addr,
        DEFAULT_PROTOCOL,
        "lobby.example.com",
        "alex",
        b"trailing-bytes",
    )
    .await
    .expect("login");
    let recs = lobby
        .wait_for_logins(before + 1, WAIT)
        .await
        .expect("login arrives");
    assert!(recs
        .last()
        .expect("rec")
        .received
        .starts_with(&conn.sent_first));
    assert!(edge.metric("automc_edge_route_lookups_total{result=\"hit\"}") >= 12.0);
}

#[tokio::test]
async fn sixty_four_mib_each_way_arrive_intact_and_half_close_is_honoured() {
    bulk_each_way_arrives_intact(|_| {}).await;
}

/// The same through an edge that never splices (`--splice-pipes 0`): the
/// copy path every burst takes when the pipe pool is exhausted.
#[tokio::test]
async fn through_the_copy_path_the_same_bytes_arrive_intact() {
    bulk_each_way_arrives_intact(|c| c.splice_pipes = 0).await;
}

async fn bulk_each_way_arrives_intact(tweak: impl FnOnce(&mut edge::Config)) {
    const SIZE: u64 = 64 * 1024 * 1024;
    let bulk = McBackend::start(BackendOptions {
        login: LoginMode::Bulk {
            send: SIZE,
            seed: 2,
        },
        ..BackendOptions::default()
    })
    .await
    .expect("backend");
    let (_syncd, edge) = fake_stack(
        vec![route("bulk", "bulk.example.com", &bulk.addr().to_string())],
        tweak,
    )
    .await;
    let conn = login(edge.listen_addr, "bulk.example.com", "steve")
        .await
        .expect("login");
    let client = conn.bulk_exchange(SIZE, 1).await.expect("bulk exchange");
    assert_eq!(client.received, SIZE);
    assert_eq!(client.received_sha256, random_sha256(SIZE, 2));
    let server = bulk.wait_for_bulk(1, WAIT).await.expect("backend report");
    assert_eq!(server[0].received, SIZE);
    assert_eq!(server[0].received_sha256, random_sha256(SIZE, 1));
    eventually("byte counters", DEADLINE, || async {
        edge.metric("automc_edge_bytes_total{direction=\"downstream\"}") >= SIZE as f64
            && edge.metric("automc_edge_bytes_total{direction=\"upstream\"}") >= SIZE as f64
    })
    .await;
}

#[tokio::test]
async fn a_backend_half_close_still_lets_the_player_finish_sending() {
    let echo = McBackend::with_motd("echo").await;
    let (_syncd, edge) = fake_stack(
        vec![route("e", "e.example.com", &echo.addr().to_string())],
        |_| {},
    )
    .await;
    let mut conn = login(edge.listen_addr, "e.example.com", "steve")
        .await
        .expect("login");
    conn.send(b"first").await.expect("send");
    assert_eq!(conn.read_exact(5).await.expect("echo"), b"first");
    // The player closes its sending side; the echo backend then finishes
    // and closes; everything sent before arrives.
    conn.send(b"last").await.expect("send");
    conn.shutdown_write().await.expect("shutdown");
    let rest = conn.read_until_close(WAIT).await.expect("close after echo");
    assert_eq!(rest, b"last");
}

#[tokio::test]
async fn hostile_handshakes_are_closed_within_the_timeout_while_others_are_served() {
    let good = McBackend::with_motd("still serving").await;
    let (_syncd, edge) = fake_stack(
        vec![route("good", "good.example.com", &good.addr().to_string())],
        |c| c.handshake_timeout = Duration::from_secs(1),
    )
    .await;
    let addr = edge.listen_addr;
    let full = mc::handshake_packet(DEFAULT_PROTOCOL, "good.example.com", 25565, 2);

    // Truncated: half a handshake, then silence.
    let mut truncated = send_bytes(addr, &full[..full.len() / 2])
        .await
        .expect("connect");
    // Oversized: a length prefix far beyond the handshake cap.
    let mut oversized = send_bytes(addr, &[0xd0, 0x0f, 0x00])
        .await
        .expect("connect");
    // A VarInt longer than five bytes.
    let mut bad_varint = send_bytes(addr, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])
        .await
        .expect("connect");
    // A handshake as valid as it is slow: a byte every 500 ms, so each
    // byte comes well within the 1 s timeout of the last one and the whole
    // takes several seconds; only a deadline for the phase cuts it.
    let slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut slow_r, mut slow_w) = slow.into_split();
    let slow_bytes = full.clone();
    let dripper = tokio::spawn(async move {
        for (i, b) in slow_bytes.iter().enumerate() {
            if slow_w.write_all(&[*b]).await.is_err() {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        slow_bytes.len()
    });

    // Meanwhile another player is served normally.
    let reply = status_ping(addr, "good.example.com", DEFAULT_PROTOCOL)
        .await
        .expect("status while under attack");
    assert_eq!(reply.motd(), "still serving");

    assert!(
        truncated.closed_within(WAIT).await,
        "truncated handshake closed"
    );
    assert!(
        oversized.closed_within(WAIT).await,
        "oversized handshake closed"
    );
    assert!(bad_varint.closed_within(WAIT).await, "bad VarInt closed");
    let mut sink = Vec::new();
    let slow_closed = tokio::time::timeout(WAIT, slow_r.read_to_end(&mut sink)).await;
    assert!(slow_closed.is_ok(), "slow handshake closed");
    // Closed before the handshake was through: bytes trickled in on time
    // did not extend the deadline. (The close reaches a write as an error
    // within a write or two.)
    let sent = tokio::time::timeout(WAIT, dripper)
        .await
        .expect("the dripper sees the close")
        .expect("dripper task");
    assert!(
        sent < full.len(),
        "the whole trickled handshake ({} bytes) went through",
        full.len()
    );
    assert_eq!(
        good.logins().len(),
        0,
        "no hostile connection reached the backend"
    );
    assert!(edge.metric("automc_edge_handshake_errors_total{reason=\"timeout\"}") >= 2.0);
    let text = edge.metrics();
    assert!(
        text.contains("automc_edge_handshake_errors_total{reason=\"packet_too_large\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn proxy_protocol_from_a_trusted_peer_names_the_player_and_is_sent_upstream() {
    let b = McBackend::start(BackendOptions {
        expect_proxy_header: true,
        ..BackendOptions::default()
    })
    .await
    .expect("backend");
    let (_syncd, edge) = fake_stack(
        vec![route("p", "p.example.com", &b.addr().to_string())],
        |c| {
            c.proxy_protocol_trusted = vec!["127.0.0.0/8".parse().expect("cidr")];
            c.send_proxy_protocol = true;
        },
    )
    .await;
    let player: std::net::SocketAddr = "203.0.113.7:41234".parse().expect("addr");
    let lb: std::net::SocketAddr = "198.51.100.1:25565".parse().expect("addr");
    let mut mc_bytes = mc::handshake_packet(DEFAULT_PROTOCOL, "p.example.com", 25565, 2);
    mc_bytes.extend(mc::login_start_packet(DEFAULT_PROTOCOL, "steve"));
    for header in [
        mcproto::encode_proxy_v2(player, lb),
        mcproto::encode_proxy_v1(player, lb),
    ] {
        let before = b.logins().len();
        let mut first = header;
        first.extend_from_slice(&mc_bytes);
        let _conn = send_bytes(edge.listen_addr, &first).await.expect("connect");
        let recs = b
            .wait_for_logins(before + 1, WAIT)
            .await
            .expect("login arrives");
        let rec = recs.last().expect("rec");
        let proxy = rec.proxy.as_ref().expect("backend got a PROXY header");
        assert_eq!(proxy.version, 2, "the edge always sends v2");
        assert_eq!(
            proxy.source,
            Some(player),
            "the player's address, not the balancer's"
        );
        assert!(
            rec.received.starts_with(&mc_bytes),
            "Minecraft bytes follow unchanged"
        );
    }
}

#[tokio::test]
async fn proxy_protocol_from_an_untrusted_peer_is_refused() {
    let b = McBackend::with_motd("b").await;
    let (_syncd, edge) = fake_stack(
        vec![route("p", "p.example.com", &b.addr().to_string())],
        |_| {},
    )
    .await;
    let mut first = mcproto::encode_proxy_v1(
        "203.0.113.7:41234".parse().expect("addr"),
        "198.51.100.1:25565".parse().expect("addr"),
    );
    first.extend(mc::handshake_packet(
        DEFAULT_PROTOCOL,
        "p.example.com",
        25565,
        2,
    ));
    first.extend(mc::login_start_packet(DEFAULT_PROTOCOL, "steve"));
    let mut conn = send_bytes(edge.listen_addr, &first).await.expect("connect");
    assert!(conn.closed_within(WAIT).await);
    assert_eq!(b.accepted(), 0);
    eventually("refusal counted", DEADLINE, || async {
        edge.metric("automc_edge_refused_total{reason=\"untrusted_proxy_header\"}") >= 1.0
    })
    .await;
}

/// Before its first table from syncd an edge knows no hostname yet: a
/// player hears that the router is starting, not that the address is
/// unknown, and the metric says which it was.
#[tokio::test]
async fn before_its_first_table_the_edge_says_it_is_starting_not_unknown_host() {
    // A syncd that takes the watch and never answers it.
    let mut syncd = FakeSyncd::start(no_waker()).await.expect("fake syncd");
    let edge = automc_tests::stack::start_edge(&[syncd.url()], |_| {}).await;
    let _held = syncd.next_watch(DEADLINE).await.expect("the edge watches");
    assert!(!edge.running().is_ready());

    let reply = status_ping(edge.listen_addr, "e.example.com", DEFAULT_PROTOCOL)
        .await
        .expect("a status answer");
    assert!(
        reply.motd().contains("has not loaded its servers yet"),
        "{}",
        reply.motd()
    );
    let mut player = login(edge.listen_addr, "e.example.com", "steve")
        .await
        .expect("connect");
    let said = player
        .read_disconnect_within(WAIT)
        .await
        .expect("a disconnect");
    assert!(said.contains("has not loaded its servers yet"), "{said}");
    eventually("both counted as no_table", DEADLINE, || async {
        edge.metric("automc_edge_connections_total{outcome=\"no_table\"}") >= 2.0
    })
    .await;
    assert_eq!(
        edge.metric("automc_edge_connections_total{outcome=\"unknown_host\"}"),
        0.0
    );
}

/// At the default log level a spliced session holds no span (an idle
/// player costs less); the line for a session cut when the drain runs out
/// still says whose it was, from the connection registry.
#[tokio::test]
async fn a_session_cut_when_the_drain_runs_out_is_logged_with_whose_it_was() {
    let echo = McBackend::with_motd("echo").await;
    let mut syncd = FakeSyncd::start(no_waker()).await.expect("fake syncd");
    // `edge_args` drains for 1 s.
    let edge = Proc::spawn("edge", &edge_args(&syncd.url(), &[]), &[]).await;
    serve_routes(
        &mut syncd,
        vec![route("e", "e.example.com", &echo.addr().to_string())],
    )
    .await;
    edge.wait_ready().await;
    let mut conn = login(edge.main_addr, "e.example.com", "steve")
        .await
        .expect("login");
    conn.send(b"hello").await.expect("send");
    assert_eq!(conn.read_exact(5).await.expect("echo"), b"hello");

    let pid = edge.pid().expect("edge pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let output = edge.output.clone();
    let backend = echo.addr().to_string();
    let backend = &backend;
    eventually(
        "a `connection ended` line for the cut session naming it",
        DEADLINE,
        || {
            let text = output.text();
            async move {
                text.lines().any(|l| {
                    l.contains("connection ended")
                        && l.contains("cut")
                        && l.contains("steve")
                        && l.contains("e.example.com")
                        && l.contains(backend.as_str())
                })
            }
        },
    )
    .await;
    assert!(
        conn.closed_within(WAIT).await,
        "the cut player is disconnected"
    );
}

#[tokio::test]
async fn sigterm_drain_lets_an_active_connection_finish() {
    let echo = McBackend::with_motd("echo").await;
    let (_syncd, edge) = fake_stack(
        vec![route("e", "e.example.com", &echo.addr().to_string())],
        |c| c.drain_timeout = Duration::from_secs(30),
    )
    .await;
    let mut conn = login(edge.listen_addr, "e.example.com", "steve")
        .await
        .expect("login");
    conn.send(b"before").await.expect("send");
    assert_eq!(conn.read_exact(6).await.expect("echo"), b"before");
    assert_eq!(
        http_get(edge.http_addr, "/readyz").await.expect("readyz").0,
        200
    );

    edge.shutdown.cancel();
    let http = edge.http_addr;
    eventually(
        "/readyz turns 503 while draining",
        DEADLINE,
        || async move { matches!(http_get(http, "/readyz").await, Ok((503, _))) },
    )
    .await;
    let listen = edge.listen_addr;
    eventually(
        "no new connections while draining",
        DEADLINE,
        || async move {
            match tokio::net::TcpStream::connect(listen).await {
                Err(_) => true,
                Ok(mut s) => {
                    let mut b = [0u8; 1];
                    matches!(
                        tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await,
                        Ok(Ok(0) | Err(_))
                    )
                }
            }
        },
    )
    .await;

    // The player who was already in keeps playing until they leave.
    conn.send(b"during").await.expect("send while draining");
    assert_eq!(
        conn.read_exact(6).await.expect("echo while draining"),
        b"during"
    );
    conn.shutdown_write().await.expect("shutdown");
    conn.read_until_close(WAIT).await.expect("closed");
    tokio::time::timeout(WAIT, edge.stop())
        .await
        .expect("edge stops once its last connection ended");
}
