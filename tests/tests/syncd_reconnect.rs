//! Postgres goes away (restart, terminated backend) and changes are made
//! while syncd is disconnected: all of them reach the watchers afterwards,
//! and the table keeps serving meanwhile. Before its first read, syncd
//! hands no one an empty table.
use automc_proto::v1::{ListRoutesRequest, WatchHello};
use automc_tests::stack::{
    eventually, metric_value, migrated_pg, start_edge, start_syncd, syncd_role_dsn,
    terminate_syncd_backends, RouteWatcher, DEADLINE,
};

const SEED: &str = "INSERT INTO servers (name, domain, address) VALUES
    ('a', 'a.example.com', '10.0.0.1:25565'),
    ('b', 'b.example.com', '10.0.0.2:25565'),
    ('c', 'c.example.com', '10.0.0.3:25565')";

const WHILE_AWAY: &str =
    "INSERT INTO servers (name, domain, address) VALUES ('d', 'd.example.com', '10.0.0.4:25565');
    UPDATE servers SET address = '10.0.0.22:25565' WHERE name = 'b';
    DELETE FROM servers WHERE name = 'c';";

fn caught_up(s: &automc_tests::stack::WatchState) -> bool {
    s.table.get("d").is_some()
        && s.table.get("c").is_none()
        && s.address_of("b").as_deref() == Some("10.0.0.22:25565")
}

#[tokio::test]
async fn changes_made_while_postgres_restarted_reach_the_watchers() {
    let mut pg = migrated_pg().await;
    pg.execute(SEED).await;
    let dsn = syncd_role_dsn(&pg).await;
    let syncd = start_syncd(&dsn, |_| {}).await;
    let mut w = syncd.watch("edge").await;
    assert_eq!(w.state().table.len(), 3);

    // Keep syncd out after the restart until the changes are in.
    pg.execute("ALTER ROLE syncd NOLOGIN").await;
    pg.restart().await;
    pg.execute(WHILE_AWAY).await;
    let metrics_at = syncd.http_addr;
    eventually(
        "syncd notices the lost connection",
        DEADLINE,
        || async move {
            let text = automc_tests::stack::http_get(metrics_at, "/metrics")
                .await
                .map(|(_, b)| b)
                .unwrap_or_default();
            metric_value(&text, "automc_syncd_pg_connected") == Some(0.0)
                && metric_value(&text, "automc_syncd_pg_reconnects_total").unwrap_or(0.0) >= 1.0
        },
    )
    .await;
    // The table kept serving meanwhile.
    let mut client = syncd.client().await;
    let listed = client
        .list_routes(automc_proto::v1::ListRoutesRequest::default())
        .await
        .expect("ListRoutes while Postgres is away")
        .into_inner();
    assert_eq!(listed.routes.len(), 3);

    pg.execute("ALTER ROLE syncd LOGIN").await;
    let st = w
        .wait_until("changes made while away arrive", DEADLINE, caught_up)
        .await;
    assert!(!st.gap);
    assert_eq!(st.snapshots, 1, "the edge keeps its stream: deltas only");
}

#[tokio::test]
async fn changes_made_after_the_backend_is_terminated_reach_the_watchers() {
    let pg = migrated_pg().await;
    pg.execute(SEED).await;
    let dsn = syncd_role_dsn(&pg).await;
    let syncd = start_syncd(&dsn, |_| {}).await;
    let mut w = syncd.watch("edge").await;

    pg.execute("ALTER ROLE syncd NOLOGIN").await;
    assert_eq!(
        terminate_syncd_backends(&pg).await,
        1,
        "one LISTEN connection"
    );
    pg.execute(WHILE_AWAY).await;
    pg.execute("ALTER ROLE syncd LOGIN").await;
    w.wait_until("changes made while away arrive", DEADLINE, caught_up)
        .await;

    // And the new connection listens again.
    pg.execute("UPDATE servers SET address = '10.0.0.99:1' WHERE name = 'a'")
        .await;
    w.wait_until("later change arrives", DEADLINE, |s| {
        s.address_of("a").as_deref() == Some("10.0.0.99:1")
    })
    .await;
    let c = pg.client().await;
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'syncd'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1, "exactly one Postgres connection for LISTEN and reads");
}

#[tokio::test]
async fn syncd_starting_before_postgres_becomes_ready_once_it_can_read() {
    let mut pg = migrated_pg().await;
    pg.execute(SEED).await;
    pg.stop().await;
    // A short wait for the first read, so the refusal below comes soon.
    let syncd = automc_tests::stack::spawn_syncd(&pg.dsn(), |c| {
        c.hello_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let (status, _) = automc_tests::stack::http_get(syncd.http_addr, "/readyz")
        .await
        .expect("readyz");
    assert_eq!(status, 503, "not ready before the first read");
    let (status, _) = automc_tests::stack::http_get(syncd.http_addr, "/healthz")
        .await
        .expect("healthz");
    assert_eq!(status, 200);
    // Until the first read the table in memory is empty, not the routes: a
    // watch is refused as unavailable rather than handed an empty snapshot,
    // and so are the calls that answer from the table.
    let refused = RouteWatcher::connect(&syncd.grpc_url(), WatchHello::default(), None)
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(refused, Some(tonic::Code::Unavailable));
    let mut client = syncd.client().await;
    let listed = client.list_routes(ListRoutesRequest::default()).await;
    assert_eq!(
        listed.err().map(|s| s.code()),
        Some(tonic::Code::Unavailable)
    );
    // So an edge started now is not ready, and the first table it takes
    // is the one Postgres holds.
    let edge = start_edge(&[syncd.grpc_url()], |_| {}).await;
    assert!(
        !edge.running().is_ready(),
        "an edge must not turn ready before syncd has read the routes"
    );
    pg.start_again().await;
    syncd.wait_ready().await;
    edge.ready().await;
    assert_eq!(edge.running().table().table.len(), 3);
    let w = syncd.watch("edge").await;
    assert_eq!(w.state().table.len(), 3);
    edge.stop().await;
}

#[tokio::test]
async fn edges_keep_their_routes_while_a_restarted_syncd_has_not_read_yet() {
    let pg = migrated_pg().await;
    pg.execute(SEED).await;
    let dsn = syncd_role_dsn(&pg).await;
    let short_wait = |c: &mut syncd::Config| c.hello_timeout = std::time::Duration::from_secs(1);
    let syncd = start_syncd(&dsn, short_wait).await;
    let grpc_addr = syncd.grpc_addr;
    let url = syncd.grpc_url();
    let edge = start_edge(&[url], |_| {}).await;
    edge.ready().await;
    let held = edge.running().table();
    assert_eq!(held.table.len(), 3);

    // syncd restarts on the same address and cannot log in to Postgres.
    pg.execute("ALTER ROLE syncd NOLOGIN").await;
    syncd.stop().await;
    let syncd = automc_tests::stack::spawn_syncd(&dsn, |c| {
        short_wait(c);
        c.grpc_listen = grpc_addr;
    })
    .await;
    // The edge reaches the new syncd and is told it has not read the routes
    // (rather than handed its empty table): it keeps what it holds.
    let running = edge.running();
    eventually(
        "the edge hears that the new syncd has not read the routes",
        DEADLINE,
        || async move {
            running
                .sync_status()
                .last_error
                .contains("has not read the routes")
        },
    )
    .await;
    let now = edge.running().table();
    assert_eq!(now.table.len(), 3, "the edge kept every route");
    assert_eq!(now.epoch, held.epoch);
    edge.wait_route("a.example.com", Some("a")).await;

    // Once syncd has read them, the edge moves to its epoch, all routes there.
    pg.execute("ALTER ROLE syncd LOGIN").await;
    syncd.wait_ready().await;
    let epoch = syncd.epoch.clone();
    let epoch = &epoch;
    eventually(
        "the edge takes the new syncd's table",
        DEADLINE,
        || async move {
            let t = running.table();
            t.epoch == *epoch && t.table.len() == 3
        },
    )
    .await;
    edge.stop().await;
}
