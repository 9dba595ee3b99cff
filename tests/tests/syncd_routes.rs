//! Route changes in Postgres reach watchers: snapshot, then deltas.
use automc_tests::pg::TestPg;
use automc_tests::stack::{migrated_pg, start_syncd, DEADLINE};

async fn seeded() -> TestPg {
    let pg = migrated_pg().await;
    pg.execute(
        "INSERT INTO servers (name, domain, address, state) VALUES
           ('lobby', 'lobby.example.com', '10.0.0.1:25565', 'running'),
           ('survival', 'Survival.Example.com.', '10.0.0.2:25565', 'stopped')",
    )
    .await;
    pg
}

#[tokio::test]
async fn new_watcher_receives_a_snapshot_of_every_route() {
    let pg = seeded().await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let w = syncd.watch("edge-1").await;
    let st = w.state();
    assert_eq!(st.snapshots, 1);
    assert_eq!(st.epoch, syncd.epoch);
    assert_eq!(st.table.len(), 2);
    let survival = st.table.get("survival").expect("survival route");
    assert_eq!(survival.hostnames, vec!["survival.example.com".to_owned()]);
    assert_eq!(survival.state, "stopped");
}

#[tokio::test]
async fn insert_update_delete_reach_the_watcher() {
    let pg = seeded().await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let mut w = syncd.watch("edge-1").await;

    pg.execute("INSERT INTO servers (name, domain, address) VALUES ('mini', 'mini.example.com', '10.0.0.3:25565')")
        .await;
    w.wait_until("insert arrives", DEADLINE, |s| {
        s.table.get("mini").is_some()
    })
    .await;

    pg.execute("UPDATE servers SET address = '10.0.0.9:25565' WHERE name = 'mini'")
        .await;
    w.wait_until("update arrives", DEADLINE, |s| {
        s.address_of("mini").as_deref() == Some("10.0.0.9:25565")
    })
    .await;

    pg.execute("UPDATE servers SET state = 'running' WHERE name = 'survival'")
        .await;
    w.wait_until("state change arrives", DEADLINE, |s| {
        s.table.get("survival").map(|r| r.state.as_str()) == Some("running")
    })
    .await;

    pg.execute("DELETE FROM servers WHERE name = 'mini'").await;
    let st = w
        .wait_until("delete arrives", DEADLINE, |s| {
            s.table.get("mini").is_none()
        })
        .await;
    assert!(!st.gap, "deltas must chain from version to version");
    assert_eq!(st.table.len(), 2);
}

#[tokio::test]
async fn disabled_null_domain_and_empty_address_rows_are_not_routes() {
    let pg = seeded().await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let mut w = syncd.watch("edge-1").await;

    pg.execute("UPDATE servers SET enabled = false WHERE name = 'lobby'")
        .await;
    w.wait_until("disabled route removed", DEADLINE, |s| {
        s.table.get("lobby").is_none()
    })
    .await;
    pg.execute("UPDATE servers SET enabled = true WHERE name = 'lobby'")
        .await;
    w.wait_until("re-enabled route back", DEADLINE, |s| {
        s.table.get("lobby").is_some()
    })
    .await;

    pg.execute("UPDATE servers SET domain = NULL WHERE name = 'lobby'")
        .await;
    w.wait_until("NULL domain removes the route", DEADLINE, |s| {
        s.table.get("lobby").is_none()
    })
    .await;

    pg.execute("UPDATE servers SET address = '' WHERE name = 'survival'")
        .await;
    w.wait_until("empty address removes the route", DEADLINE, |s| {
        s.table.get("survival").is_none()
    })
    .await;

    pg.execute("UPDATE servers SET domain = '' , address = '10.0.0.1:1' WHERE name = 'lobby'")
        .await;
    pg.execute("INSERT INTO servers (name, domain, address) VALUES ('probe', 'probe.example.com', '10.0.0.7:1')")
        .await;
    let st = w
        .wait_until("later insert arrives", DEADLINE, |s| {
            s.table.get("probe").is_some()
        })
        .await;
    assert!(
        st.table.get("lobby").is_none(),
        "empty domain is not a route"
    );
    assert_eq!(st.table.len(), 1);
}
