//! Bounded pre-authentication work on syncd's gRPC port: silent and
//! trickling handshakes are cut at one deadline, one address cannot hold
//! more than its share of handshakes or connections, and meanwhile a real
//! edge (from another address: 127.0.0.2 is a different peer on Linux
//! loopback) still connects and syncs; each connection is told its stream
//! cap. Everything runs with the shipped defaults except the per-peer
//! connection cap and the stream cap, lowered to keep the tests small.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use automc_proto::v1::route_sync_client::RouteSyncClient;
use automc_proto::v1::ListRoutesRequest;
use automc_tests::stack::{
    eventually, metric_sample, migrated_pg, start_edge, start_syncd, SyncdHandle, DEADLINE,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::Endpoint;

/// The address the "attacker" connects from.
const OTHER_PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn refused(reason: &str) -> String {
    format!("automc_syncd_grpc_connections_refused_total{{reason=\"{reason}\"}}")
}

async fn metric(syncd: &SyncdHandle, sample: &str) -> f64 {
    metric_sample(&syncd.metrics_text().await, sample)
}

async fn connect_from(ip: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(ip, 0)).expect("bind");
    socket.connect(to).await.expect("connect")
}

/// Wait until the server closes the connection (end of stream or reset).
async fn closed_by_server(what: &str, s: &mut (impl AsyncRead + Unpin)) {
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: still open after {DEADLINE:?}");
}

async fn setup() -> (automc_tests::pg::TestPg, &'static str) {
    let pg = migrated_pg().await;
    pg.execute(
        "INSERT INTO servers (name, domain, address, state)
         VALUES ('lobby', 'lobby.example.com', '10.0.0.7:25565', 'running')",
    )
    .await;
    (pg, "lobby.example.com")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_trickling_handshakes_are_cut_while_a_real_edge_still_syncs() {
    let (pg, host) = setup().await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let limits = syncd::accept::Limits::default();
    let slots = limits.max_handshakes_per_peer;
    assert!(slots >= 2, "the test needs a silent and a trickling peer");

    // Every handshake slot of one address: silent sockets, and one that
    // trickles the preface a byte a second. Its 24th byte is wrong, so if
    // the trickle kept the handshake alive past the deadline the cut would
    // be counted as not_http2, not handshake_timeout. The pacing is the
    // behaviour under test (a slow client), not a wait for a condition.
    let mut silent = Vec::new();
    for _ in 0..slots - 1 {
        silent.push(connect_from(OTHER_PEER, syncd.grpc_addr).await);
    }
    let (mut trickle_read, mut trickle_write) =
        connect_from(OTHER_PEER, syncd.grpc_addr).await.into_split();
    let trickler = tokio::spawn(async move {
        let mut bytes = PREFACE[..PREFACE.len() - 1].to_vec();
        bytes.extend(std::iter::repeat_n(b'X', 64));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for b in bytes {
            tick.tick().await;
            if trickle_write.write_all(&[b]).await.is_err() {
                return;
            }
        }
    });
    let s = &syncd;
    eventually(
        "every handshake slot of 127.0.0.2 taken",
        DEADLINE,
        || async move { metric(s, "automc_syncd_grpc_handshakes").await >= slots as f64 },
    )
    .await;

    // One more from the same address is turned away at once.
    let mut extra = connect_from(OTHER_PEER, syncd.grpc_addr).await;
    closed_by_server("a connection past the handshake cap", &mut extra).await;
    eventually("the refusal is counted", DEADLINE, || async move {
        metric(s, &refused("max_handshakes_per_peer")).await == 1.0
    })
    .await;

    // A real edge from another address is not locked out.
    let edge = start_edge(&[syncd.grpc_url()], |_| {}).await;
    edge.wait_route(host, Some("lobby")).await;

    // The deadline cuts them all, trickle or not.
    for (i, s) in silent.iter_mut().enumerate() {
        closed_by_server(&format!("silent connection {i}"), s).await;
    }
    closed_by_server("the trickling connection", &mut trickle_read).await;
    let n = slots as f64;
    eventually(
        "every cut counted as a handshake timeout",
        DEADLINE,
        || async move { metric(s, &refused("handshake_timeout")).await == n },
    )
    .await;
    assert_eq!(metric(&syncd, &refused("not_http2")).await, 0.0);
    eventually("no handshake left open", DEADLINE, || async move {
        metric(s, "automc_syncd_grpc_handshakes").await == 0.0
    })
    .await;
    trickler.abort();

    // The edge's own connection was never touched.
    pg.execute("UPDATE servers SET domain = 'hub.example.com' WHERE name = 'lobby'")
        .await;
    edge.wait_route("hub.example.com", Some("lobby")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_open_more_connections_than_its_cap_while_another_still_can() {
    let (pg, _) = setup().await;
    const CAP: usize = 3;
    let syncd = start_syncd(&pg.dsn(), |c| c.accept.max_connections_per_peer = CAP).await;
    let from_other_peer = || {
        Endpoint::from_shared(syncd.grpc_url())
            .expect("url")
            .local_address(Some(OTHER_PEER))
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
    };
    async fn list(ep: Endpoint) -> Result<tonic::transport::Channel, String> {
        let channel = ep.connect().await.map_err(|e| e.to_string())?;
        RouteSyncClient::new(channel.clone())
            .list_routes(ListRoutesRequest::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(channel)
    }

    let mut held = Vec::new();
    for i in 0..CAP {
        match list(from_other_peer()).await {
            Ok(c) => held.push(c),
            Err(e) => panic!("connection {i} of {CAP} from 127.0.0.2 refused: {e}"),
        }
    }
    assert!(
        list(from_other_peer()).await.is_err(),
        "connection {} from one address must be refused",
        CAP + 1
    );
    let s = &syncd;
    eventually("the refusal is counted", DEADLINE, || async move {
        metric(s, &refused("max_connections_per_peer")).await >= 1.0
    })
    .await;

    // Another address is not affected.
    let local = Endpoint::from_shared(syncd.grpc_url()).expect("url");
    list(local).await.expect("127.0.0.1 still connects");

    // A closed connection gives its slot back.
    drop(held.pop());
    eventually(
        "127.0.0.2 connects again once one of its connections closed",
        DEADLINE,
        || async { list(from_other_peer()).await.is_ok() },
    )
    .await;
}

/// What syncd's HTTP/2 SETTINGS frame (its side of the preface) says about
/// `id`, read off a raw connection as any client sees it.
async fn advertised_setting(to: SocketAddr, id: u16) -> Option<u32> {
    let mut s = TcpStream::connect(to).await.expect("connect");
    s.write_all(PREFACE).await.expect("preface");
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("settings");
    let read = async {
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.ok()?;
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).await.ok()?;
            // SETTINGS, not an ack.
            if head[3] == 4 && head[4] & 1 == 0 {
                return body.chunks_exact(6).find_map(|e| {
                    (u16::from_be_bytes([e[0], e[1]]) == id)
                        .then(|| u32::from_be_bytes([e[2], e[3], e[4], e[5]]))
                });
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("SETTINGS within the deadline")
}

#[tokio::test]
async fn each_connection_is_told_the_stream_cap_and_streams_up_to_it_are_served() {
    const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
    let (pg, _) = setup().await;
    // The shipped default, then a lowered one.
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let shipped = syncd::accept::Limits::default().max_streams_per_connection;
    assert_eq!(
        advertised_setting(syncd.grpc_addr, SETTINGS_MAX_CONCURRENT_STREAMS).await,
        Some(shipped)
    );
    syncd.stop().await;
    let syncd = start_syncd(&pg.dsn(), |c| c.accept.max_streams_per_connection = 2).await;
    assert_eq!(
        advertised_setting(syncd.grpc_addr, SETTINGS_MAX_CONCURRENT_STREAMS).await,
        Some(2)
    );
    // Two watches on one connection are both served.
    let channel = Endpoint::from_shared(syncd.grpc_url())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut held = Vec::new();
    for id in ["one", "two"] {
        let hello = automc_proto::v1::WatchRequest {
            msg: Some(automc_proto::v1::watch_request::Msg::Hello(
                automc_proto::v1::WatchHello {
                    edge_id: id.into(),
                    ..Default::default()
                },
            )),
        };
        let stream = RouteSyncClient::new(channel.clone())
            .watch_routes(futures::StreamExt::chain(
                futures::stream::iter(vec![hello]),
                futures::stream::pending(),
            ))
            .await
            .expect("a watch within the cap");
        held.push(stream);
    }
    // A third stream on that connection would wait for one of the two (the
    // client keeps to the advertised cap), so ask on another connection.
    let edges = syncd
        .client()
        .await
        .list_edges(automc_proto::v1::ListEdgesRequest {})
        .await
        .expect("ListEdges")
        .into_inner()
        .edges;
    assert_eq!(edges.len(), 2, "{edges:?}");
}
