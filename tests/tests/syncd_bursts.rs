//! Bursts and races: big transactions, many concurrent commits, and the
//! window between LISTEN and the first read.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use automc_tests::pg::TestPg;
use automc_tests::stack::{
    migrated_pg, start_syncd, syncd_role_dsn, terminate_syncd_backends, RouteWatcher, WatchState,
    DEADLINE,
};

/// The routes the database holds, as (server → (hostname, address)), with
/// the rules written out in SQL independently of syncd.
async fn db_routes(pg: &TestPg) -> BTreeMap<String, (String, String)> {
    let c = pg.client().await;
    c.query(
        "SELECT name, lower(domain), address FROM servers
         WHERE enabled IS NOT FALSE AND coalesce(domain, '') <> '' AND address <> ''",
        &[],
    )
    .await
    .expect("query routes")
    .into_iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2))))
    .collect()
}

fn held(st: &WatchState) -> BTreeMap<String, (String, String)> {
    st.table
        .routes()
        .map(|r| {
            (
                r.server.clone(),
                (
                    r.hostnames.first().cloned().unwrap_or_default(),
                    r.address.clone(),
                ),
            )
        })
        .collect()
}

async fn converge(w: &mut RouteWatcher, want: &BTreeMap<String, (String, String)>, what: &str) {
    let st = w.wait_until(what, DEADLINE, |s| &held(s) == want).await;
    assert!(!st.gap, "{what}: deltas must chain");
}

#[tokio::test]
async fn a_transaction_of_1000_changes_arrives_as_one_delta() {
    let pg = migrated_pg().await;
    pg.execute(
        "INSERT INTO servers (name, domain, address)
         SELECT 'old' || i, 'old' || i || '.example.com', '10.1.0.1:' || i FROM generate_series(1, 500) i",
    )
    .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let mut w = syncd.watch("edge").await;
    let before = w.state().version;
    // 500 inserts, 250 updates, 250 deletes in one transaction.
    pg.execute(
        "BEGIN;
         INSERT INTO servers (name, domain, address)
           SELECT 'new' || i, 'new' || i || '.example.com', '10.2.0.1:' || i FROM generate_series(1, 500) i;
         UPDATE servers SET address = '10.3.0.1:1' WHERE name IN (SELECT 'old' || i FROM generate_series(1, 250) i);
         DELETE FROM servers WHERE name IN (SELECT 'old' || i FROM generate_series(251, 500) i);
         COMMIT;",
    )
    .await;
    let st = w
        .wait_until("the transaction arrives", DEADLINE, |s| {
            s.table.len() == 750 && s.table.get("new500").is_some()
        })
        .await;
    assert_eq!(
        st.version,
        before + 1,
        "one version for one transaction: {:?}",
        st.deltas
    );
    assert_eq!(st.deltas.len(), 1);
    assert_eq!(st.deltas[0].changes, 1000);
    converge(&mut w, &db_routes(&pg).await, "watcher equals database").await;
}

#[tokio::test]
async fn many_concurrent_commits_end_with_every_watcher_holding_the_database() {
    let pg = migrated_pg().await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let mut watchers = Vec::new();
    for i in 0..3 {
        watchers.push(syncd.watch(&format!("edge-{i}")).await);
    }
    let mut writers = Vec::new();
    for t in 0..16 {
        let c = pg.client().await;
        writers.push(tokio::spawn(async move {
            for i in 0..30 {
                let name = format!("w{t}-{}", i % 10);
                let sql = match i / 10 {
                    0 => format!(
                        "INSERT INTO servers (name, domain, address) VALUES ('{name}', '{name}.example.com', '10.0.{t}.{i}:25565')"
                    ),
                    1 => format!("UPDATE servers SET address = '10.9.{t}.{i}:25565' WHERE name = '{name}'"),
                    _ if i % 2 == 0 => format!("DELETE FROM servers WHERE name = '{name}'"),
                    _ => format!("UPDATE servers SET domain = 'x-{name}.example.com' WHERE name = '{name}'"),
                };
                c.batch_execute(&sql).await.expect("write");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let want = db_routes(&pg).await;
    assert_eq!(want.len(), 16 * 5);
    for (i, w) in watchers.iter_mut().enumerate() {
        converge(w, &want, &format!("watcher {i} equals database")).await;
    }
}

#[tokio::test]
async fn changes_committed_around_listen_and_first_read_are_not_lost() {
    // A writer commits continuously while syncd starts and while its LISTEN
    // connection is killed again and again, so commits land between LISTEN
    // and SELECT of many (re)connects. In the end nothing may be missing.
    let pg = migrated_pg().await;
    let dsn = syncd_role_dsn(&pg).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let c = pg.client().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let sql = format!(
                    "INSERT INTO servers (name, domain, address) VALUES ('r{i}', 'r{i}.example.com', '10.0.0.1:{i}');
                     UPDATE servers SET address = '10.0.0.2:{i}' WHERE name = 'r{}';",
                    i / 2
                );
                c.batch_execute(&sql).await.expect("write");
                i += 1;
            }
            i
        })
    };
    let syncd = start_syncd(&dsn, |_| {}).await;
    let mut w = syncd.watch("edge").await;
    for _ in 0..5 {
        terminate_syncd_backends(&pg).await;
        syncd.wait_ready().await;
        let v = w.state().version;
        w.wait_until("syncd keeps publishing", DEADLINE, |s| s.version > v)
            .await;
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.expect("writer");
    assert!(written > 0);
    converge(&mut w, &db_routes(&pg).await, "watcher equals database").await;
}
