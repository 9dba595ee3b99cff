//! Sync at fleet scale with the shipped client settings: a 100,000-route
//! table reaches a real edge in bounded pieces; a client that stops reading
//! holds nothing another edge needs; an oversized hostname is refused
//! without holding anything up; a table folded after half of it changed
//! goes on taking changes.
use automc_proto::v1::route_sync_client::RouteSyncClient;
use automc_proto::v1::{
    watch_request, GetRouteRequest, ListRoutesRequest, WatchHello, WatchRequest,
};
use automc_tests::mc::{login, McBackend};
use automc_tests::pg::TestPg;
use automc_tests::stack::{migrated_pg, start_edge, start_syncd, DEADLINE};

/// `count` routes `s1..=s{count}` at `sN.example.com`, the last one at
/// `last_address`, the rest at unreachable addresses.
async fn seed(pg: &TestPg, count: usize, last_address: &str) {
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state)
         SELECT 's' || i, 's' || i || '.example.com',
                CASE WHEN i = {count} THEN '{last_address}' ELSE '10.0.' || (i / 250) || '.' || (i % 250) || ':25565' END,
                'running'
         FROM generate_series(1, {count}) i"
    ))
    .await;
}

#[tokio::test]
async fn a_real_edge_with_default_client_settings_loads_100k_routes_and_routes_a_player_to_the_last(
) {
    let pg = migrated_pg().await;
    let backend = McBackend::with_motd("last").await;
    seed(&pg, 100_000, &backend.addr().to_string()).await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let edge = start_edge(&[syncd.grpc_url()], |_| {}).await;
    edge.ready().await;
    assert_eq!(edge.running().table().table.len(), 100_000);
    let _conn = login(edge.listen_addr, "s100000.example.com", "steve")
        .await
        .expect("login");
    backend
        .wait_for_logins(1, DEADLINE)
        .await
        .expect("the player reaches the last route");
}

/// A watch whose response stream is never read: HTTP/2 flow control stops
/// syncd from sending more than a window's worth.
async fn unread_watch(
    url: &str,
    edge_id: &str,
) -> tonic::Response<tonic::Streaming<automc_proto::v1::WatchResponse>> {
    let mut client = RouteSyncClient::connect(url.to_owned())
        .await
        .expect("connect");
    let hello = WatchRequest {
        msg: Some(watch_request::Msg::Hello(WatchHello {
            edge_id: edge_id.into(),
            ..Default::default()
        })),
    };
    let req = futures::StreamExt::chain(futures::stream::iter([hello]), futures::stream::pending());
    client.watch_routes(req).await.expect("watch starts")
}

#[tokio::test]
async fn watchers_that_never_read_do_not_delay_another_edges_snapshot() {
    let pg = migrated_pg().await;
    seed(&pg, 50_000, "127.0.0.1:1").await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    // More stuck streams than syncd ever had snapshot slots, on separate
    // connections and several on one.
    let mut stuck = Vec::new();
    for i in 0..4 {
        stuck.push(unread_watch(&syncd.grpc_url(), &format!("stuck-{i}")).await);
    }
    let mut shared = syncd.client().await;
    let mut on_one_connection = Vec::new();
    for _ in 0..3 {
        let hello = WatchRequest {
            msg: Some(watch_request::Msg::Hello(WatchHello::default())),
        };
        let req =
            futures::StreamExt::chain(futures::stream::iter([hello]), futures::stream::pending());
        on_one_connection.push(shared.watch_routes(req).await.expect("watch starts"));
    }
    let edge = start_edge(&[syncd.grpc_url()], |_| {}).await;
    edge.ready().await;
    assert_eq!(edge.running().table().table.len(), 50_000);
    let url = syncd.grpc_url();
    let mut w = automc_tests::stack::RouteWatcher::connect(&url, WatchHello::default(), None)
        .await
        .expect("watch");
    w.wait_until("a second watcher's snapshot", DEADLINE, |s| {
        s.table.len() == 50_000
    })
    .await;
    drop((stuck, on_one_connection));
}

#[tokio::test]
async fn a_one_mib_hostname_in_get_route_is_refused_and_does_not_hold_up_another_call() {
    let pg = migrated_pg().await;
    seed(&pg, 1_000, "127.0.0.1:1").await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let mut a = syncd.client().await;
    let mut b = syncd.client().await;
    let huge = format!("{}example.com", "a.".repeat(512 * 1024));
    let (refused, listed) = tokio::join!(
        a.get_route(GetRouteRequest { hostname: huge }),
        b.list_routes(ListRoutesRequest::default()),
    );
    let status = refused.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("longer than 255"),
        "{}",
        status.message()
    );
    assert_eq!(listed.expect("listed").into_inner().routes.len(), 1_000);
    // And the edge's admin API answers the same way.
    let edge = start_edge(&[syncd.grpc_url()], |_| {}).await;
    edge.ready().await;
    let mut admin = automc_proto::v1::edge_admin_client::EdgeAdminClient::connect(format!(
        "http://{}",
        edge.grpc_addr
    ))
    .await
    .expect("admin");
    let status = admin
        .get_route(GetRouteRequest {
            hostname: "x".repeat(300),
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn list_routes_pages_through_a_big_table_in_name_order() {
    let pg = migrated_pg().await;
    seed(&pg, 2_500, "127.0.0.1:1").await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let mut c = syncd.client().await;
    let mut names = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_routes(ListRoutesRequest {
                page_size: 1000,
                page_token: token.clone(),
            })
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        assert!(page.routes.len() <= 1000);
        names.extend(page.routes.into_iter().map(|r| r.server));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted, "in name order, no repeats");
    assert_eq!(names.len(), 2_500);
}

#[tokio::test]
async fn after_a_syncd_restart_a_resuming_edge_gets_only_the_buckets_that_differ() {
    use automc_tests::stack::RouteWatcher;
    let pg = migrated_pg().await;
    seed(&pg, 100_000, "127.0.0.1:1").await;
    let first = start_syncd(&pg.dsn(), |_| {}).await;
    let mut w = first.watch("edge").await;
    let held = w
        .wait_until("the whole table", DEADLINE, |s| s.table.len() == 100_000)
        .await;
    let full_bytes = held.bytes;
    drop(w);
    first.stop().await;

    // Changed while no syncd ran: one address, one removal, one new route.
    pg.execute(
        "UPDATE servers SET address = '10.99.0.1:25565' WHERE name = 's500';
         DELETE FROM servers WHERE name = 's600';
         INSERT INTO servers (name, domain, address, state) VALUES ('fresh', 'fresh.example.com', '10.99.0.2:25565', 'running')",
    )
    .await;
    let second = start_syncd(&pg.dsn(), |_| {}).await;
    let mut resumed = RouteWatcher::resume(&second.grpc_url(), "edge", &held)
        .await
        .expect("resume");
    let got = resumed
        .wait_until("the differing buckets applied", DEADLINE, |s| {
            s.snapshots == 1
        })
        .await;
    assert_eq!(got.partial_snapshots, 1);
    assert_eq!(got.framing, None, "the rebuilt table matches syncd's hash");
    let mut reference = second.watch("reference").await;
    let want = reference
        .wait_until("a full snapshot", DEADLINE, |s| s.snapshots == 1)
        .await;
    assert!(
        got.table.routes().eq(want.table.routes()),
        "same table as a full snapshot"
    );
    assert_eq!(got.address_of("s500").as_deref(), Some("10.99.0.1:25565"));
    assert_eq!(got.address_of("s600"), None);
    assert!(got.address_of("fresh").is_some());
    assert!(
        got.bytes * 20 < full_bytes,
        "{} bytes to resync vs {full_bytes} for a full snapshot",
        got.bytes
    );
    drop((resumed, reference));
    second.stop().await;

    // Nothing changed across the next restart: almost nothing is sent.
    let third = start_syncd(&pg.dsn(), |_| {}).await;
    let mut again = RouteWatcher::resume(&third.grpc_url(), "edge", &got)
        .await
        .expect("resume");
    let same = again
        .wait_until("the empty partial snapshot", DEADLINE, |s| s.snapshots == 1)
        .await;
    assert_eq!(same.partial_snapshots, 1);
    assert!(same.table.routes().eq(got.table.routes()));
    assert!(
        same.bytes < 1024,
        "{} bytes when nothing changed",
        same.bytes
    );
}

#[tokio::test]
async fn after_half_the_table_changes_and_is_folded_every_later_change_still_reaches_the_edge() {
    use automc_tests::stack::eventually;
    let pg = migrated_pg().await;
    let first = McBackend::with_motd("first").await;
    let second = McBackend::with_motd("second").await;
    // Twice the smallest overlay that is folded: one transaction changing
    // every route makes syncd and the edge fold their tables.
    let n = 2 * automc_proto::COMPACT_MIN;
    seed(&pg, n, "127.0.0.1:1").await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let edge = start_edge(&[syncd.grpc_url()], |_| {}).await;
    edge.ready().await;
    let last = format!("s{n}");
    pg.execute(&format!(
        "UPDATE servers SET address = CASE WHEN name = '{last}' THEN '{}'
                                          ELSE '10.1.' || (substr(name, 2)::int / 250) || '.' || (substr(name, 2)::int % 250) || ':25565' END",
        first.addr()
    ))
    .await;
    let e = &edge;
    eventually(
        "the edge applied the change of every route and folded its table",
        DEADLINE,
        || async move {
            let view = e.running().table();
            view.table.get("s1").map(|r| r.address.as_str()) == Some("10.1.0.1:25565")
                && !view.table.wants_compaction()
        },
    )
    .await;
    let _conn = login(edge.listen_addr, &format!("{last}.example.com"), "steve")
        .await
        .expect("login");
    first
        .wait_for_logins(1, DEADLINE)
        .await
        .expect("routed by the folded table");

    // Changes after the fold are diffed against syncd's folded table and
    // applied to the edge's: the edge ends holding what the database does.
    pg.execute(&format!(
        "UPDATE servers SET address = '{}' WHERE name = '{last}';
         DELETE FROM servers WHERE name = 's2';
         INSERT INTO servers (name, domain, address, state) VALUES ('late', 'late.example.com', '10.2.0.1:25565', 'running')",
        second.addr()
    ))
    .await;
    let mut reference = syncd.watch("reference").await;
    let want = reference
        .wait_until("syncd holds the later changes", DEADLINE, |s| {
            s.table.get("late").is_some()
        })
        .await;
    assert_eq!(want.table.len(), n);
    assert_eq!(want.address_of(&last), Some(second.addr().to_string()));
    assert_eq!(want.address_of("s2"), None);
    let want = &want.table;
    eventually("the edge holds syncd's table", DEADLINE, || async move {
        e.running().table().table.routes().eq(want.routes())
    })
    .await;
    let _conn = login(edge.listen_addr, &format!("{last}.example.com"), "alex")
        .await
        .expect("login");
    second
        .wait_for_logins(1, DEADLINE)
        .await
        .expect("the change after the fold routes the player");
}
