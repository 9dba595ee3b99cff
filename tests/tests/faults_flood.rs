//! Fault suite, hostile load: a flood of garbage connections from one
//! address while a well-behaved player (from another address) still joins.
//! The edge runs with its production admission limits.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use automc_tests::mc::{handshake_packet, login_start_packet, McBackend, DEFAULT_PROTOCOL};
use automc_tests::stack::{eventually, migrated_pg, start_edge, start_syncd, DEADLINE};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connect from a chosen loopback address (Linux routes all of 127/8 to lo).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((from, 0)))?;
    s.connect(to).await
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
    let pg = migrated_pg().await;
    let lobby = McBackend::start(Default::default()).await.expect("backend");
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('lobby', 'lobby.example.com', '{}', 'running')",
        lobby.addr()
    ))
    .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    // Production admission limits (the harness turns them off by default).
    let edge = start_edge(&[syncd.grpc_url()], |c| {
        c.limits = edge::limits::LimitsConfig::default();
    })
    .await;
    edge.ready().await;
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
