//! Fault suite, Postgres side: while a writer commits a burst of single-row
//! changes, syncd's backend is terminated (`pg_terminate_backend`) and then
//! Postgres itself is restarted. At the end every edge holds exactly the
//! routes the database holds: nothing committed is lost.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use automc_tests::pg::TestPg;
use automc_tests::stack::{
    eventually, metric_value, migrated_pg, start_edge, start_syncd, syncd_role_dsn,
    terminate_syncd_backends, EdgeHandle, DEADLINE,
};

/// Servers seeded before the burst.
const SEEDED: usize = 40;
/// Statements the writer commits.
const BURST: usize = 2_000;

/// (address, state) of every route, by server name.
type Snapshot = BTreeMap<String, (String, String)>;

/// The routes as the database defines them (SPEC §2), read as `postgres`.
async fn db_routes(pg: &TestPg) -> Snapshot {
    let c = pg.client().await;
    let rows = c
        .query(
            "SELECT name, address, state FROM servers
             WHERE enabled IS NOT FALSE AND coalesce(domain, '') <> '' AND address <> ''",
            &[],
        )
        .await
        .expect("read routes");
    rows.iter()
        .map(|r| (r.get::<_, String>(0), (r.get(1), r.get(2))))
        .collect()
}

fn edge_routes(edge: &EdgeHandle) -> Snapshot {
    edge.running()
        .table()
        .table
        .routes()
        .map(|r| (r.server.clone(), (r.address.clone(), r.state.clone())))
        .collect()
}

/// Statement `i` of the burst: updates, inserts, disables and deletes,
/// each safe to retry (an ambiguous commit may run twice).
fn statement(i: usize) -> String {
    let target = i % SEEDED;
    match i % 10 {
        0..=5 => format!(
            "UPDATE servers SET address = '10.1.{}.{}:25565' WHERE name = 's{target}'",
            i / 250,
            i % 250
        ),
        6 => format!(
            "INSERT INTO servers (name, domain, address, state) \
             VALUES ('n{i}', 'n{i}.example.com', '10.2.0.1:{}', 'running') ON CONFLICT DO NOTHING",
            10000 + i
        ),
        7 => format!("DELETE FROM servers WHERE name = 'n{}'", i.saturating_sub(21)),
        8 => format!(
            "UPDATE servers SET state = CASE WHEN state = 'running' THEN 'stopped' ELSE 'running' END \
             WHERE name = 's{target}'"
        ),
        _ => format!("UPDATE servers SET enabled = NOT enabled WHERE name = 's{target}'"),
    }
}

/// Commit the burst, reconnecting through outages; `done` counts statements
/// finished (committed, or retried until they were).
async fn write_burst(dsn: String, done: Arc<AtomicUsize>) {
    let mut client: Option<tokio_postgres::Client> = None;
    let end = tokio::time::Instant::now() + Duration::from_secs(120);
    for i in 0..BURST {
        loop {
            assert!(
                tokio::time::Instant::now() < end,
                "writer stuck at statement {i}"
            );
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
                    Ok((c, conn)) => {
                        tokio::spawn(conn);
                        Some(c)
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
            }
            let Some(c) = client.as_ref() else { continue };
            match c.batch_execute(&statement(i)).await {
                Ok(()) => break,
                Err(_) => {
                    client = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        done.store(i + 1, Ordering::Release);
    }
}

async fn wait_progress(done: &AtomicUsize, at_least: usize) {
    eventually(
        &format!("writer to commit {at_least} statements"),
        Duration::from_secs(60),
        || async move { done.load(Ordering::Acquire) >= at_least },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_committed_across_backend_termination_and_postgres_restart_reaches_every_edge()
{
    let mut pg = migrated_pg().await;
    let seed: Vec<String> = (0..SEEDED)
        .map(|i| format!("('s{i}', 's{i}.example.com', '10.0.0.{i}:25565', 'running')"))
        .collect();
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES {}",
        seed.join(",")
    ))
    .await;
    let dsn = syncd_role_dsn(&pg).await;
    let syncd = start_syncd(&dsn, |_| {}).await;
    let mut edges = Vec::new();
    for n in 0..3 {
        let e = start_edge(&[syncd.grpc_url()], |c| c.edge_id = format!("edge-{n}")).await;
        e.ready().await;
        edges.push(e);
    }

    let done = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write_burst(pg.dsn(), done.clone()));

    wait_progress(&done, BURST / 4).await;
    assert_eq!(
        terminate_syncd_backends(&pg).await,
        1,
        "syncd holds one connection"
    );
    wait_progress(&done, BURST / 2).await;
    pg.restart().await;
    wait_progress(&done, 3 * BURST / 4).await;
    let http = syncd.http_addr;
    eventually(
        "syncd reconnected after the restart",
        DEADLINE,
        || async move {
            let text = automc_tests::stack::http_get(http, "/metrics")
                .await
                .map(|(_, b)| b)
                .unwrap_or_default();
            metric_value(&text, "automc_syncd_pg_connected") == Some(1.0)
        },
    )
    .await;
    assert_eq!(terminate_syncd_backends(&pg).await, 1);

    tokio::time::timeout(Duration::from_secs(120), writer)
        .await
        .expect("writer finishes")
        .expect("writer task");

    let want = db_routes(&pg).await;
    assert!(want.len() > SEEDED / 2, "the burst left routes to compare");
    for (n, edge) in edges.iter().enumerate() {
        let want = &want;
        eventually(
            &format!("edge-{n} holds exactly the database's routes"),
            DEADLINE,
            || async move { &edge_routes(edge) == want },
        )
        .await;
    }
    let s = &syncd;
    eventually("syncd connected again", DEADLINE, || async move {
        metric_value(&s.metrics_text().await, "automc_syncd_pg_connected") == Some(1.0)
    })
    .await;
    let text = syncd.metrics_text().await;
    assert!(
        metric_value(&text, "automc_syncd_pg_reconnects_total").unwrap_or(0.0) >= 3.0,
        "syncd reconnected after each fault:\n{text}"
    );
    // One more change after all the faults still flows.
    pg.execute("UPDATE servers SET address = '10.9.9.9:1' WHERE name = 's1'")
        .await;
    for edge in &edges {
        eventually("a change after the faults", DEADLINE, || async move {
            edge.running()
                .table()
                .table
                .get("s1")
                .is_some_and(|r| r.address == "10.9.9.9:1")
        })
        .await;
    }
}
