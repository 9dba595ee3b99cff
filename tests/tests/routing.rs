//! Issue 16: several backends per server, per-server options, allow/deny.
//! Rows in `server_backends` and `server_options` reach every watcher
//! through the same snapshots and deltas as the routes; invalid rows are
//! skipped and reported while the rest syncs; an original automc database
//! without the new tables keeps working.
use automc_proto::v1::BackendStrategy;
use automc_tests::mc::{login, BackendOptions, McBackend};
use automc_tests::pg::TestPg;
use automc_tests::stack::{metric_sample, migrated_pg, start_edge, start_syncd, DEADLINE};
use syncd::check::Level;

/// A 64x64 PNG (signature and IHDR; the pixels do not matter to anyone
/// but the client, which is not here).
fn png_64() -> Vec<u8> {
    let mut p = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    p.extend(64u32.to_be_bytes());
    p.extend(64u32.to_be_bytes());
    p.extend([8, 6, 0, 0, 0, 0x5c, 0x72, 0xa8, 0x66]);
    p.extend(b"\0\0\0\0IEND\xaeB`\x82");
    p
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn backends_and_options_reach_watchers_and_every_change_is_a_delta() {
    let pg = migrated_pg().await;
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state)
           VALUES ('lobby', 'lobby.example.com', '10.0.0.1:25565', 'running');
         INSERT INTO server_backends (server, address, weight, priority) VALUES
           ('lobby', '10.0.0.3:25565', 1, 5),
           ('lobby', '10.0.0.2:25565', 3, 0);
         INSERT INTO server_options (server, strategy, asleep_motd, favicon, max_players,
                                     allow_cidrs, deny_cidrs, rewrite_host, hold_timeout)
           VALUES ('lobby', 'round-robin', 'zzz', '\\x{}', 20, '{{10.0.0.0/8}}',
                   '{{10.9.0.0/16}}', 'lobby.internal', '90 seconds');",
        hex(&png_64())
    ))
    .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let mut w = syncd.watch("edge").await;
    let lobby = w.state().table.get("lobby").cloned().expect("lobby");
    let set: Vec<(String, u32, i32)> = lobby
        .backend_set()
        .into_iter()
        .map(|b| (b.address, b.weight, b.priority))
        .collect();
    assert_eq!(
        set,
        [
            ("10.0.0.1:25565".to_owned(), 1, 0),
            ("10.0.0.2:25565".to_owned(), 3, 0),
            ("10.0.0.3:25565".to_owned(), 1, 5)
        ]
    );
    let o = lobby.options.clone().expect("options");
    assert_eq!(o.strategy(), BackendStrategy::RoundRobin);
    assert_eq!(o.asleep_motd.as_deref(), Some("zzz"));
    assert_eq!(o.favicon, png_64());
    assert_eq!(o.max_players, Some(20));
    assert_eq!(o.allow_cidrs, ["10.0.0.0/8"]);
    assert_eq!(o.deny_cidrs, ["10.9.0.0/16"]);
    assert_eq!(o.rewrite_host.as_deref(), Some("lobby.internal"));
    assert_eq!(o.hold_timeout_ms, Some(90_000));
    assert_eq!(o.starting_motd, None);

    pg.execute("UPDATE server_options SET starting_motd = 'soon' WHERE server = 'lobby'")
        .await;
    w.wait_until("an option change arrives", DEADLINE, |s| {
        s.table
            .get("lobby")
            .and_then(|r| r.options.as_ref())
            .and_then(|o| o.starting_motd.as_deref())
            == Some("soon")
    })
    .await;
    pg.execute("DELETE FROM server_backends WHERE address = '10.0.0.3:25565'")
        .await;
    w.wait_until("a removed backend arrives", DEADLINE, |s| {
        s.table.get("lobby").map(|r| r.backends.len()) == Some(1)
    })
    .await;
    pg.execute("UPDATE server_backends SET weight = 7").await;
    w.wait_until("a weight change arrives", DEADLINE, |s| {
        s.table
            .get("lobby")
            .is_some_and(|r| r.backends.first().map(|b| b.weight) == Some(7))
    })
    .await;
    pg.execute("DELETE FROM server_options").await;
    let st = w
        .wait_until("removed options arrive", DEADLINE, |s| {
            s.table.get("lobby").is_some_and(|r| r.options.is_none())
        })
        .await;
    assert!(!st.gap, "deltas chain");
    assert!(
        st.deltas.len() >= 4,
        "one delta per change: {}",
        st.deltas.len()
    );
}

#[tokio::test]
async fn invalid_rows_are_skipped_logged_counted_and_checked_while_the_rest_syncs() {
    let pg = migrated_pg().await;
    pg.execute(
        "INSERT INTO servers (name, domain, address, state) VALUES
           ('bad-strategy', 'a.example.com', '10.0.0.1:25565', 'running'),
           ('bad-favicon', 'b.example.com', '10.0.0.2:25565', 'running'),
           ('bad-backend', 'c.example.com', '10.0.0.3:25565', 'running'),
           ('good', 'd.example.com', '10.0.0.4:25565', 'running');
         INSERT INTO server_options (server, strategy) VALUES ('bad-strategy', 'weighted');
         INSERT INTO server_options (server, favicon) VALUES ('bad-favicon', 'GIF89a');
         INSERT INTO server_backends (server, address) VALUES
           ('bad-backend', 'no port here'), ('bad-backend', '10.0.0.33:25565');
         INSERT INTO server_options (server, strategy, max_players) VALUES ('good', 'random', 5);",
    )
    .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let mut w = syncd.watch("edge").await;
    let st = w.state();
    assert_eq!(st.table.len(), 4, "every server still routes");
    assert!(st
        .table
        .get("bad-strategy")
        .is_some_and(|r| r.options.is_none()));
    assert!(st
        .table
        .get("bad-favicon")
        .is_some_and(|r| r.options.is_none()));
    let bad_backend = st.table.get("bad-backend").expect("route");
    let addrs: Vec<&str> = bad_backend
        .backends
        .iter()
        .map(|b| b.address.as_str())
        .collect();
    assert_eq!(addrs, ["10.0.0.33:25565"], "the valid backend row stays");
    let good = st
        .table
        .get("good")
        .and_then(|r| r.options.clone())
        .expect("options");
    assert_eq!(good.strategy(), BackendStrategy::Random);
    assert_eq!(good.max_players, Some(5));

    let metrics = syncd.metrics_text().await;
    assert!(
        metric_sample(
            &metrics,
            "automc_syncd_rows_skipped_total{table=\"server_options\"}"
        ) >= 2.0,
        "{metrics}"
    );
    assert!(
        metric_sample(
            &metrics,
            "automc_syncd_rows_skipped_total{table=\"server_backends\"}"
        ) >= 1.0
    );

    let findings = syncd::check(&pg.dsn()).await.expect("check");
    let errors: Vec<&str> = findings
        .iter()
        .filter(|f| f.level == Level::Error)
        .map(|f| f.text.as_str())
        .collect();
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(errors.iter().any(
        |e| e.contains("server_options row (server \"bad-strategy\")")
            && e.contains("unknown strategy \"weighted\"")
    ));
    assert!(errors
        .iter()
        .any(|e| e.contains("server \"bad-favicon\"") && e.contains("not a PNG")));
    assert!(errors
        .iter()
        .any(|e| e
            .contains("server_backends row (server \"bad-backend\", address \"no port here\")")));

    // Fixing a row brings it in; breaking another leaves the rest alone.
    pg.execute(
        "UPDATE server_options SET strategy = 'least-players' WHERE server = 'bad-strategy';
                UPDATE server_options SET strategy = 'nope' WHERE server = 'good'",
    )
    .await;
    let st = w
        .wait_until("the fixed row arrives", DEADLINE, |s| {
            s.table
                .get("bad-strategy")
                .and_then(|r| r.options.as_ref())
                .is_some_and(|o| o.strategy() == BackendStrategy::LeastPlayers)
        })
        .await;
    let st = if st.table.get("good").is_some_and(|r| r.options.is_none()) {
        st
    } else {
        w.wait_until("the broken row falls back to defaults", DEADLINE, |s| {
            s.table.get("good").is_some_and(|r| r.options.is_none())
        })
        .await
    };
    assert_eq!(st.table.len(), 4);
}

/// The original automc schema, as deployed before `syncd migrate` existed.
const ORIGINAL_SCHEMA: &str = r#"
CREATE TABLE servers (
    name    TEXT PRIMARY KEY,
    domain  TEXT NOT NULL UNIQUE,
    address TEXT NOT NULL,
    state   TEXT NOT NULL DEFAULT 'stopped'
);
CREATE OR REPLACE FUNCTION automc_notify_routes_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('automc_routes_changed', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER automc_servers_route_notify
    AFTER INSERT OR UPDATE OF domain, address, state OR DELETE ON servers
    FOR EACH ROW EXECUTE FUNCTION automc_notify_routes_changed();
"#;

#[tokio::test]
async fn an_original_database_without_the_new_tables_still_syncs_and_routes() {
    let pg = TestPg::start().await;
    pg.execute(ORIGINAL_SCHEMA).await;
    let backend = McBackend::start(BackendOptions::with_motd("old"))
        .await
        .expect("backend");
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state)
           VALUES ('old', 'old.example.com', '{}', 'running')",
        backend.addr()
    ))
    .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let mut w = syncd.watch("w").await;
    let old = w.state().table.get("old").cloned().expect("route");
    assert!(old.backends.is_empty() && old.options.is_none());
    let edge = start_edge(&[syncd.grpc_url()], |_| {}).await;
    edge.ready().await;
    let _conn = login(edge.listen_addr, "old.example.com", "steve")
        .await
        .expect("login");
    backend
        .wait_for_logins(1, DEADLINE)
        .await
        .expect("the login reaches the only backend");
    pg.execute("UPDATE servers SET state = 'stopped' WHERE name = 'old'")
        .await;
    w.wait_until("changes still sync", DEADLINE, |s| {
        s.table.get("old").is_some_and(|r| r.state == "stopped")
    })
    .await;

    // A server_options table as the sleep work's migrate made it (only
    // sleep_after) reads too, and `syncd migrate` while syncd runs adds
    // the rest, which the running syncd then reads.
    pg.execute(
        "CREATE TABLE server_options (server TEXT PRIMARY KEY REFERENCES servers(name),
                                      sleep_after INTERVAL);
         INSERT INTO server_options VALUES ('old', '1 hour');
         UPDATE servers SET state = 'running' WHERE name = 'old';",
    )
    .await;
    w.wait_until("a sleep_after-only options table reads", DEADLINE, |s| {
        s.table
            .get("old")
            .and_then(|r| r.options.as_ref())
            .and_then(|o| o.sleep_after_ms)
            == Some(3_600_000)
    })
    .await;
    syncd::migrate(&pg.dsn()).await.expect("migrate");
    pg.execute(
        "INSERT INTO server_backends (server, address) VALUES ('old', '10.0.0.8:25565');
         UPDATE server_options SET max_players = 3;",
    )
    .await;
    w.wait_until("the new tables read after a live migrate", DEADLINE, |s| {
        s.table.get("old").is_some_and(|r| {
            r.backends.len() == 1 && r.options.as_ref().and_then(|o| o.max_players) == Some(3)
        })
    })
    .await;
}
