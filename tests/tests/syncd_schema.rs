//! Databases as they exist in the field: the original automc schema works
//! unchanged, `syncd migrate` upgrades it in place (idempotently, keeping
//! rows), and `syncd check` says what it finds.
use automc_tests::pg::TestPg;
use automc_tests::stack::{start_syncd, DEADLINE};
use syncd::check::Level;

/// The original automc schema as deployed: no `enabled` column (so the
/// trigger could only be created on domain, address, state), empty payload.
const ORIGINAL_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS servers (
    name    TEXT PRIMARY KEY,
    domain  TEXT NOT NULL,
    address TEXT NOT NULL,
    state   TEXT NOT NULL DEFAULT 'stopped',
    UNIQUE(domain)
);
CREATE OR REPLACE FUNCTION automc_notify_routes_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('automc_routes_changed', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS automc_servers_route_notify ON servers;
CREATE TRIGGER automc_servers_route_notify
    AFTER INSERT OR UPDATE OF domain, address, state OR DELETE ON servers
    FOR EACH ROW EXECUTE FUNCTION automc_notify_routes_changed();
INSERT INTO servers (name, domain, address, state) VALUES
    ('test1', 'test1.example.com', '127.0.0.1:25001', 'running'),
    ('test2', 'test2.example.com', '127.0.0.1:25002', 'stopped');
"#;

async fn original_db() -> TestPg {
    let pg = TestPg::start().await;
    pg.execute(ORIGINAL_SCHEMA).await;
    pg
}

#[tokio::test]
async fn original_automc_database_works_without_migrate() {
    let pg = original_db().await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let mut w = syncd.watch("edge").await;
    assert_eq!(w.state().table.len(), 2);

    pg.execute("INSERT INTO servers (name, domain, address) VALUES ('test3', 'test3.example.com', '127.0.0.1:25003')")
        .await;
    w.wait_until("insert with empty payload", DEADLINE, |s| {
        s.table.get("test3").is_some()
    })
    .await;
    pg.execute("UPDATE servers SET state = 'running' WHERE name = 'test2'")
        .await;
    w.wait_until("state change", DEADLINE, |s| {
        s.table.get("test2").map(|r| r.state.as_str()) == Some("running")
    })
    .await;
    pg.execute("UPDATE servers SET address = '' WHERE name = 'test1'")
        .await;
    w.wait_until("empty address drops the route", DEADLINE, |s| {
        s.table.get("test1").is_none()
    })
    .await;
    pg.execute("DELETE FROM servers WHERE name = 'test3'").await;
    let st = w
        .wait_until("delete", DEADLINE, |s| s.table.get("test3").is_none())
        .await;
    assert_eq!(st.table.len(), 1);
    assert!(!st.gap);
}

#[tokio::test]
async fn migrate_upgrades_an_original_database_in_place_and_is_idempotent() {
    let pg = original_db().await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let mut w = syncd.watch("edge").await;

    for _ in 0..2 {
        syncd::migrate(&pg.dsn()).await.expect("migrate");
    }
    let c = pg.client().await;
    let rows = c
        .query("SELECT name, enabled FROM servers ORDER BY name", &[])
        .await
        .expect("select");
    let got: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![("test1".into(), true), ("test2".into(), true)],
        "rows kept, enabled added as true"
    );

    // The running syncd notices the richer trigger and reads the new columns.
    pg.execute("UPDATE servers SET enabled = false WHERE name = 'test1'")
        .await;
    w.wait_until("disable after live migrate", DEADLINE, |s| {
        s.table.get("test1").is_none()
    })
    .await;
    pg.execute("INSERT INTO server_aliases (domain, server) VALUES ('alias.example.com', 'test2')")
        .await;
    w.wait_until("alias after live migrate", DEADLINE, |s| {
        s.table.get("test2").map(|r| r.hostnames.len()) == Some(2)
    })
    .await;
    // NULL domains are allowed after the upgrade.
    pg.execute("UPDATE servers SET domain = NULL WHERE name = 'test2'")
        .await;
    w.wait_until("NULL domain keeps the alias", DEADLINE, |s| {
        s.table.get("test2").map(|r| r.hostnames.clone())
            == Some(vec!["alias.example.com".to_owned()])
    })
    .await;
}

fn has(findings: &[syncd::check::Finding], level: Level, needle: &str) -> bool {
    findings
        .iter()
        .any(|f| f.level == level && f.text.contains(needle))
}

#[tokio::test]
async fn check_diagnoses_missing_original_and_migrated_schemas() {
    let pg = TestPg::start().await;
    let empty = syncd::check(&pg.dsn()).await.expect("check");
    assert!(
        has(&empty, Level::Error, "table `servers` not found"),
        "{empty:?}"
    );

    pg.execute(ORIGINAL_SCHEMA).await;
    let original = syncd::check(&pg.dsn()).await.expect("check");
    assert!(
        has(&original, Level::Warn, "`servers.enabled` missing"),
        "{original:?}"
    );
    assert!(has(&original, Level::Warn, "empty payload"), "{original:?}");
    assert!(
        has(&original, Level::Ok, "UPDATE OF address, domain, state"),
        "{original:?}"
    );
    assert!(
        has(&original, Level::Ok, "2 server rows, 2 of them routes"),
        "{original:?}"
    );

    syncd::migrate(&pg.dsn()).await.expect("migrate");
    let migrated = syncd::check(&pg.dsn()).await.expect("check");
    assert!(
        migrated.iter().all(|f| f.level == Level::Ok),
        "{migrated:#?}"
    );
    assert!(
        has(&migrated, Level::Ok, "sends the server name"),
        "{migrated:?}"
    );

    pg.execute("DROP TRIGGER automc_servers_route_notify ON servers")
        .await;
    let broken = syncd::check(&pg.dsn()).await.expect("check");
    assert!(
        has(&broken, Level::Error, "no trigger on `servers`"),
        "{broken:?}"
    );
}
