//! Secure transport between edges and syncd: TLS with a CA the edge is
//! given, mutual TLS (client certificates), and certificate rotation
//! without a restart. Certificates are made at test time (rcgen).
use std::net::SocketAddr;
use std::time::Duration;

use automc_proto::v1::route_sync_client::RouteSyncClient;
use automc_proto::v1::{ListRoutesRequest, ListRoutesResponse};
use automc_tests::certs::{CertDir, Pem, TestCa};
use automc_tests::mc::{login, McBackend};
use automc_tests::stack::{eventually, migrated_pg, start_edge, start_syncd, DEADLINE};
use syncd::tls::TlsFiles;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const WAIT: Duration = Duration::from_secs(20);

/// Files for syncd: its certificate from `ca`, and optionally a client CA.
fn server_files(dir: &CertDir, ca: &TestCa, client_ca: Option<&TestCa>) -> TlsFiles {
    let pem = ca.server();
    TlsFiles {
        cert: dir.write("server.pem", &pem.cert),
        key: dir.write("server.key", &pem.key),
        client_ca: client_ca.map(|c| dir.write("client-ca.pem", &c.pem())),
        reload_interval: Duration::from_millis(50),
    }
}

/// ListRoutes over TLS trusting `ca_pem`, optionally with a client cert.
async fn list_over_tls(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&Pem>,
) -> Result<ListRoutesResponse, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    RouteSyncClient::new(channel)
        .list_routes(ListRoutesRequest::default())
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{s:?}"))
}

async fn list_plaintext(addr: SocketAddr) -> Result<ListRoutesResponse, String> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    RouteSyncClient::new(channel)
        .list_routes(ListRoutesRequest::default())
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_syncd_feeds_an_edge_configured_with_its_ca_and_the_player_gets_through() {
    let dir = CertDir::new();
    let ca = TestCa::new("automc test CA");
    let files = server_files(&dir, &ca, None);
    let ca_path = dir.write("ca.pem", &ca.pem());
    let backend = McBackend::start(Default::default()).await.expect("backend");
    let pg = migrated_pg().await;
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('lobby', 'lobby.example.com', '{}', 'running')",
        backend.addr()
    ))
    .await;
    let syncd = start_syncd(&pg.dsn(), |c| c.tls = Some(files)).await;
    // A client that never starts its TLS handshake is cut at the deadline.
    let mut silent = tokio::net::TcpStream::connect(syncd.grpc_addr)
        .await
        .expect("connect");

    let listed = list_over_tls(syncd.grpc_addr, &ca.pem(), None)
        .await
        .expect("a client trusting the CA lists routes");
    assert_eq!(listed.routes.len(), 1);
    assert!(
        list_plaintext(syncd.grpc_addr).await.is_err(),
        "plaintext gRPC is not served on a TLS port"
    );
    let other = TestCa::new("someone else");
    assert!(
        list_over_tls(syncd.grpc_addr, &other.pem(), None)
            .await
            .is_err(),
        "a client trusting another CA refuses the server"
    );

    let edge = start_edge(&[format!("https://{}", syncd.grpc_addr)], |c| {
        c.syncd_tls = edge::tls::SyncdTls {
            ca: Some(ca_path),
            ..Default::default()
        };
    })
    .await;
    edge.ready().await;
    edge.wait_route("lobby.example.com", Some("lobby")).await;
    let mut conn = login(edge.listen_addr, "lobby.example.com", "steve")
        .await
        .expect("login");
    backend
        .wait_for_logins(1, WAIT)
        .await
        .expect("login arrives");
    conn.send(b"over tls").await.expect("send");
    assert_eq!(conn.read_exact(8).await.expect("echo"), b"over tls");

    // The plaintext client and the one trusting another CA failed the TLS
    // handshake; the silent one is closed by the deadline.
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(
        DEADLINE,
        tokio::io::AsyncReadExt::read(&mut silent, &mut buf),
    )
    .await
    .expect("the silent client is cut");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let s = &syncd;
    eventually("TLS refusals counted by reason", DEADLINE, || async move {
        let m = s.metrics_text().await;
        refused(&m, "tls_handshake_failed") >= 2.0 && refused(&m, "handshake_timeout") == 1.0
    })
    .await;
}

fn refused(metrics: &str, reason: &str) -> f64 {
    automc_tests::stack::metric_sample(
        metrics,
        &format!("automc_syncd_grpc_connections_refused_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_trusted_certificate() {
    let dir = CertDir::new();
    let server_ca = TestCa::new("server CA");
    let client_ca = TestCa::new("edge CA");
    let files = server_files(&dir, &server_ca, Some(&client_ca));
    let pg = migrated_pg().await;
    pg.execute(
        "INSERT INTO servers (name, domain, address) VALUES ('a', 'a.example.com', '10.0.0.1:25565')",
    )
    .await;
    let syncd = start_syncd(&pg.dsn(), |c| c.tls = Some(files)).await;
    let addr = syncd.grpc_addr;

    let none = list_over_tls(addr, &server_ca.pem(), None).await;
    assert!(none.is_err(), "no client certificate: refused ({none:?})");
    let stranger = TestCa::new("stranger").client("mallory");
    let wrong = list_over_tls(addr, &server_ca.pem(), Some(&stranger)).await;
    assert!(wrong.is_err(), "a certificate from another CA: refused");
    let s = &syncd;
    eventually("both refusals counted", DEADLINE, || async move {
        refused(&s.metrics_text().await, "tls_handshake_failed") >= 2.0
    })
    .await;
    let edge_cert = client_ca.client("edge-1");
    let ok = list_over_tls(addr, &server_ca.pem(), Some(&edge_cert))
        .await
        .expect("a client certificate from the client CA is admitted");
    assert_eq!(ok.routes.len(), 1);

    // An edge with its client certificate syncs.
    let edge = start_edge(&[format!("https://{addr}")], |c| {
        c.syncd_tls = edge::tls::SyncdTls {
            ca: Some(dir.write("ca.pem", &server_ca.pem())),
            cert: Some(dir.write("edge.pem", &edge_cert.cert)),
            key: Some(dir.write("edge.key", &edge_cert.key)),
        };
    })
    .await;
    edge.ready().await;
    edge.wait_route("a.example.com", Some("a")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let dir = CertDir::new();
    let old_ca = TestCa::new("old CA");
    let files = server_files(&dir, &old_ca, None);
    let pg = migrated_pg().await;
    let syncd = start_syncd(&pg.dsn(), |c| c.tls = Some(files)).await;
    let addr = syncd.grpc_addr;
    list_over_tls(addr, &old_ca.pem(), None)
        .await
        .expect("old certificate served");

    // Rotate: new key first, then the certificate (each file replaced
    // atomically). In between the pair does not match and is not loaded
    // (unit test `a_mismatched_pair_keeps_the_previous_config`).
    let new_ca = TestCa::new("new CA");
    let new = new_ca.server();
    dir.write("server.key", &new.key);
    dir.write("server.pem", &new.cert);
    let ca = new_ca.pem();
    let ca = &ca;
    eventually("the new certificate is served", DEADLINE, || async move {
        list_over_tls(addr, ca, None).await.is_ok()
    })
    .await;
    assert!(
        list_over_tls(addr, &old_ca.pem(), None).await.is_err(),
        "the old certificate is no longer served"
    );
}
