//! Fault suite, hostile load: a flood of garbage connections from one
//! address while a well-behaved player (from another address) still joins.
//! The edge runs with its production admission limits.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use automc_tests::mc::{handshake_packet, login_start_packet, McBackend, DEFAULT_PROTOCOL};
use automc_tests::pg::TestPg;
use automc_tests::stack::{
    ensure_fd_limit, eventually, migrated_pg, start_edge, start_syncd, EdgeHandle, SyncdHandle,
    DEADLINE,
};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connect from a chosen loopback address (Linux routes all of 127/8 to lo).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((from, 0)))?;
    s.connect(to).await
}

/// Postgres, syncd, a `lobby.example.com` backend showing `motd`, and an
/// edge started with `tweak`.
async fn lobby_stack(
    motd: &str,
    tweak: impl FnOnce(&mut edge::Config),
) -> (TestPg, McBackend, SyncdHandle, EdgeHandle) {
    let pg = migrated_pg().await;
    let lobby = McBackend::with_motd(motd).await;
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('lobby', 'lobby.example.com', '{}', 'running')",
        lobby.addr()
    ))
    .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let edge = start_edge(&[syncd.grpc_url()], tweak).await;
    edge.ready().await;
    (pg, lobby, syncd, edge)
}

/// One flood connection: garbage, a stalled handshake, or silence.
async fn flood_once(edge: SocketAddr, kind: usize) {
    let Ok(mut s) = TcpStream::connect(edge).await else {
        return;
    };
    let garbage: Vec<u8> = {
        let mut rng = rand::rng();
        let len = rng.random_range(1..512);
        (0..len).map(|_| rng.random()).collect()
    };
    let _ = match kind % 3 {
        0 => s.write_all(&garbage).await,
        // A handshake that announces more bytes than ever come.
        1 => s.write_all(&[0x7f, 0x00, 0xfb, 0x05]).await,
        _ => Ok(()),
    };
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_flood_from_one_address_does_not_keep_a_player_out() {
    // Production admission limits (the harness turns them off by default).
    let (_pg, lobby, _syncd, edge) = lobby_stack("automc test backend", |c| {
        c.limits = edge::limits::LimitsConfig::default();
    })
    .await;
    let addr = edge.listen_addr;

    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut flooders = Vec::new();
    for worker in 0..96 {
        let stop = stop.clone();
        let attempts = attempts.clone();
        flooders.push(tokio::spawn(async move {
            // Bounded in count and time whatever happens.
            let end = tokio::time::Instant::now() + Duration::from_secs(40);
            let mut k = worker;
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < end {
                if attempts.fetch_add(1, Ordering::Relaxed) > 20_000 {
                    break;
                }
                flood_once(addr, k).await;
                k += 1;
            }
        }));
    }
    let a = &attempts;
    eventually("the flood is under way", DEADLINE, || async move {
        a.load(Ordering::Relaxed) >= 300
    })
    .await;

    // The player comes from 127.0.0.2 and joins despite the flood.
    for name in ["alex", "steve"] {
        let mut s = connect_from([127, 0, 0, 2], addr)
            .await
            .expect("player connects");
        let mut first = handshake_packet(DEFAULT_PROTOCOL, "lobby.example.com", 25565, 2);
        first.extend_from_slice(&login_start_packet(DEFAULT_PROTOCOL, name));
        s.write_all(&first).await.expect("send login");
        let recs = lobby
            .wait_for(Duration::from_secs(20), |r| {
                r.iter().any(|c| c.username.as_deref() == Some(name))
            })
            .await
            .expect("the player's login reaches the backend during the flood");
        let rec = recs
            .iter()
            .find(|c| c.username.as_deref() == Some(name))
            .expect("record");
        assert!(rec.received.starts_with(&first), "bytes arrive intact");
        s.write_all(b"gg").await.expect("send");
        let mut two = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut two))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(&two, b"gg");
    }
    let flood_size = attempts.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = f.await;
    }
    let refused = edge.metric("automc_edge_refused_total{reason=\"rate_limited\"}")
        + edge.metric("automc_edge_refused_total{reason=\"max_connections_per_ip\"}");
    assert!(
        refused > 0.0,
        "the flood was refused by the per-address limits:\n{}",
        edge.metrics()
    );
    eprintln!("flood: {flood_size} garbage connections, {refused} refused by the limits");
    // After the flood the flooding address is served again too (its token
    // bucket refills).
    let e = &edge;
    eventually(
        "127.0.0.1 is served once it behaves",
        DEADLINE,
        || async move {
            automc_tests::mc::status_ping(e.listen_addr, "lobby.example.com", DEFAULT_PROTOCOL)
                .await
                .is_ok()
        },
    )
    .await;
}

const SILENT_FLOOD: usize = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_silent_connections_from_one_address_leave_room_for_a_player_from_another() {
    ensure_fd_limit(SILENT_FLOOD as u64 + 1_000);
    // Production per-address limits, and a global cap well under the flood:
    // before admission ran at accept, silent connections from one address
    // filled the global cap and locked every player out.
    let (_pg, lobby, _syncd, edge) = lobby_stack("still here", |c| {
        c.limits = edge::limits::LimitsConfig {
            max_connections: 1_000,
            ..edge::limits::LimitsConfig::default()
        };
    })
    .await;
    let addr = edge.listen_addr;

    // Open the whole flood from 127.0.0.2 and hold it; nothing is ever sent.
    use futures::StreamExt;
    let flood: Vec<TcpStream> = futures::stream::iter(0..SILENT_FLOOD)
        .map(|_| connect_from([127, 0, 0, 2], addr))
        .buffer_unordered(128)
        .filter_map(|r| async move { r.ok() })
        .collect()
        .await;
    assert!(
        flood.len() > edge::limits::LimitsConfig::default().max_connections_per_ip,
        "only {} flood connections opened",
        flood.len()
    );

    // A player on 127.0.0.1 gets a status answer and joins while the flood is held.
    let reply = automc_tests::mc::status_ping(addr, "lobby.example.com", DEFAULT_PROTOCOL)
        .await
        .expect("status during the silent flood");
    assert_eq!(reply.motd(), "still here");
    let mut player = automc_tests::mc::login(addr, "lobby.example.com", "alex")
        .await
        .expect("player connects");
    lobby
        .wait_for(Duration::from_secs(20), |r| {
            r.iter().any(|c| c.username.as_deref() == Some("alex"))
        })
        .await
        .expect("the player's login reaches the backend during the flood");
    player.send(b"gg").await.expect("send");
    let echoed = player.read_exact(2).await.expect("echo");
    assert_eq!(echoed, b"gg");

    let per_address = edge.metric("automc_edge_refused_total{reason=\"rate_limited\"}")
        + edge.metric("automc_edge_refused_total{reason=\"max_connections_per_ip\"}");
    assert!(
        per_address >= (flood.len() / 2) as f64,
        "the flood was refused per address at accept ({per_address}):\n{}",
        edge.metrics()
    );
    assert_eq!(
        edge.metric("automc_edge_refused_total{reason=\"max_connections\"}"),
        0.0,
        "the flood never reached the global cap"
    );
    drop(flood);
}

#[tokio::test]
async fn silent_connections_past_the_per_address_cap_are_closed_at_once_while_another_address_is_served(
) {
    let (_pg, _lobby, _syncd, edge) = lobby_stack("served", |c| {
        c.limits.max_connections_per_ip = 3;
        // Silent connections stay open for this test's whole length, so what
        // closes the fourth is its admission, not a timeout.
        c.handshake_timeout = Duration::from_secs(600);
    })
    .await;
    let addr = edge.listen_addr;

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from([127, 0, 0, 2], addr).await.expect("connect"));
    }
    let e = &edge;
    eventually(
        "three silent connections are admitted",
        DEADLINE,
        || async move { e.running().active_connections() == 3 },
    )
    .await;
    let mut fourth = connect_from([127, 0, 0, 2], addr).await.expect("connect");
    let mut sink = Vec::new();
    tokio::time::timeout(DEADLINE, fourth.read_to_end(&mut sink))
        .await
        .expect("the fourth silent connection is closed without sending a byte")
        .ok();
    assert!(sink.is_empty());
    assert_eq!(
        edge.metric("automc_edge_refused_total{reason=\"max_connections_per_ip\"}"),
        1.0
    );

    let reply = automc_tests::mc::status_ping(addr, "lobby.example.com", DEFAULT_PROTOCOL)
        .await
        .expect("127.0.0.1 is served");
    assert_eq!(reply.motd(), "served");
    eventually(
        "the three silent ones are still held, the ping is done",
        DEADLINE,
        || async move { e.running().active_connections() == 3 },
    )
    .await;
    drop(held);
}

#[tokio::test]
async fn behind_a_trusted_balancer_one_ipv6_slash_64_shares_one_cap_and_the_next_prefix_is_served()
{
    let (_pg, _lobby, _syncd, edge) = lobby_stack("served", |c| {
        // The test's connections all come from 127.0.0.1: the balancer.
        c.proxy_protocol_trusted = vec!["127.0.0.0/8".parse().expect("cidr")];
        c.limits.max_connections_per_ip = 2;
        c.handshake_timeout = Duration::from_secs(600);
    })
    .await;
    assert_eq!(
        edge::limits::LimitsConfig::default().ipv6_prefix,
        64,
        "players are grouped by /64 unless told otherwise"
    );
    let addr = edge.listen_addr;
    let balancer: SocketAddr = "[2001:db8:ffff::1]:25565".parse().expect("addr");
    let player = |ip: &str| -> Vec<u8> {
        let source = SocketAddr::new(ip.parse().expect("ipv6"), 50_000);
        mcproto::encode_proxy_v2(source, balancer)
    };

    // Two players of one /64 (different addresses in it) send their header and then nothing.
    let mut held = Vec::new();
    for ip in ["2001:db8:aa:1::1", "2001:db8:aa:1:ffff:ffff:ffff:fffe"] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&player(ip)).await.expect("header");
        held.push(s);
    }
    let e = &edge;
    eventually("both are admitted", DEADLINE, || async move {
        e.running().active_connections() == 2
    })
    .await;

    // A third address in the same /64 is one identity too many.
    let mut third = TcpStream::connect(addr).await.expect("connect");
    third
        .write_all(&player("2001:db8:aa:1:1234:5678:9abc:def0"))
        .await
        .expect("header");
    let mut sink = Vec::new();
    tokio::time::timeout(DEADLINE, third.read_to_end(&mut sink))
        .await
        .expect("the third in one /64 is closed")
        .ok();
    assert!(sink.is_empty(), "closed without a byte");
    assert_eq!(
        edge.metric("automc_edge_refused_total{reason=\"max_connections_per_ip\"}"),
        1.0
    );

    // The neighbouring /64 is another player, served while the first two are held.
    let reply = automc_tests::mc::status_ping_after(
        addr,
        &player("2001:db8:aa:2::1"),
        "lobby.example.com",
        DEFAULT_PROTOCOL,
    )
    .await
    .expect("the next /64 is served");
    assert_eq!(reply.motd(), "served");
    assert_eq!(
        edge.metric("automc_edge_refused_total{reason=\"max_connections_per_ip\"}"),
        1.0,
        "nobody else was refused"
    );
    drop(held);
}
