//! Issue 16: several backends per server, per-server options, allow/deny.
//! Rows in `server_backends` and `server_options` reach every watcher
//! through the same snapshots and deltas as the routes; invalid rows are
//! skipped and reported while the rest syncs; an original automc database
//! without the new tables keeps working.
use automc_proto::v1::edge_admin_client::EdgeAdminClient;
use automc_proto::v1::{BackendStrategy, GetRouteRequest};
use automc_tests::mc::{self, login, status_ping, BackendOptions, McBackend, DEFAULT_PROTOCOL};
use automc_tests::pg::TestPg;
use automc_tests::stack::{
    dead_address, eventually, metric_sample, migrated_pg, stack, start_edge, start_syncd, DEADLINE,
};
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
                                     allow_cidrs, deny_cidrs, rewrite_host, hold_timeout,
                                     wake_allow_players)
           VALUES ('lobby', 'round-robin', 'zzz', '\\x{}', 20, '{{10.0.0.0/8}}',
                   '{{10.9.0.0/16}}', 'lobby.internal', '90 seconds', '{{Notch}}');",
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
    assert_eq!(
        o.wake_allow_players.clone().map(|p| p.names),
        Some(vec!["Notch".to_owned()])
    );
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
           ('good', 'd.example.com', '10.0.0.4:25565', 'running'),
           ('bad-allow', 'e.example.com', '10.0.0.5:25565', 'stopped');
         INSERT INTO server_options (server, strategy) VALUES ('bad-strategy', 'weighted');
         INSERT INTO server_options (server, wake_allow_players)
           VALUES ('bad-allow', '{Notch,\"two words\"}');
         INSERT INTO server_options (server, favicon) VALUES ('bad-favicon', 'GIF89a');
         INSERT INTO server_backends (server, address) VALUES
           ('bad-backend', 'no port here'), ('bad-backend', '10.0.0.33:25565');
         INSERT INTO server_options (server, strategy, max_players) VALUES ('good', 'random', 5);",
    )
    .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let mut w = syncd.watch("edge").await;
    let st = w.state();
    assert_eq!(st.table.len(), 5, "every server still routes");
    assert!(st
        .table
        .get("bad-allow")
        .is_some_and(|r| r.options.is_none()));
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
        ) >= 3.0,
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
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(errors.iter().any(|e| e.contains("server \"bad-allow\"")
        && e.contains("wake_allow_players entry \"two words\" is not a player name")));
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
    assert_eq!(st.table.len(), 5);
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
    let backend = McBackend::with_motd("old").await;
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

#[tokio::test]
async fn failover_uses_the_first_backend_then_the_next_when_it_dies_and_recovers_after_the_backoff()
{
    let a = McBackend::with_motd("a").await;
    let b = McBackend::with_motd("b").await;
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('s', 's.example.com', '{}', 'running');
         INSERT INTO server_backends (server, address, priority) VALUES ('s', '{}', 1);",
        a.addr(),
        b.addr()
    );
    let (_pg, _syncd, edge) = stack(&rows, |_| {}).await;
    for i in 0..3 {
        let (at, _c) = edge
            .login_lands("s.example.com", &format!("first{i}"), &[&a, &b])
            .await;
        assert_eq!(at, 0, "failover keeps to the first backend");
    }
    let a_addr = a.addr();
    a.stop();
    drop(a);
    // The same login moves on to the next backend within its connect budget.
    let (at, _c) = edge.login_lands("s.example.com", "moved", &[&b]).await;
    assert_eq!(at, 0);
    // The dead one is skipped (no wake, no wait) while it is backed off.
    let (_, _c) = edge.login_lands("s.example.com", "skipped", &[&b]).await;
    // Back on the same address: logins return to it once the backoff passes.
    let a = McBackend::start_on(a_addr, BackendOptions::with_motd("a again"))
        .await
        .expect("restart a");
    let mut n = 0;
    eventually(
        "logins return to the recovered first backend",
        DEADLINE,
        || {
            n += 1;
            let name = format!("back{n}");
            let edge = &edge;
            let (a, b) = (&a, &b);
            async move {
                let (at, _c) = edge.login_lands("s.example.com", &name, &[a, b]).await;
                at == 0
            }
        },
    )
    .await;
}

#[tokio::test]
async fn round_robin_cycles_the_backends_in_order() {
    let a = McBackend::with_motd("a").await;
    let b = McBackend::with_motd("b").await;
    let c = McBackend::with_motd("c").await;
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('s', 's.example.com', '{}', 'running');
         INSERT INTO server_backends (server, address) VALUES ('s', '{}'), ('s', '{}');
         INSERT INTO server_options (server, strategy) VALUES ('s', 'round-robin');",
        a.addr(),
        b.addr(),
        c.addr()
    );
    let (_pg, _syncd, edge) = stack(&rows, |_| {}).await;
    // servers.address first, then the rows in address order.
    let mut rows_order = [
        (b.addr().to_string(), 1usize),
        (c.addr().to_string(), 2usize),
    ];
    rows_order.sort();
    let want: Vec<usize> = [0, rows_order[0].1, rows_order[1].1].repeat(2);
    let mut got = Vec::new();
    for i in 0..6 {
        let (at, _c) = edge
            .login_lands("s.example.com", &format!("p{i}"), &[&a, &b, &c])
            .await;
        got.push(at);
    }
    assert_eq!(got, want);
}

#[tokio::test]
async fn random_spreads_logins_over_every_backend() {
    let a = McBackend::with_motd("a").await;
    let b = McBackend::with_motd("b").await;
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('s', 's.example.com', '{}', 'running');
         INSERT INTO server_backends (server, address) VALUES ('s', '{}');
         INSERT INTO server_options (server, strategy) VALUES ('s', 'random');",
        a.addr(),
        b.addr()
    );
    let (_pg, _syncd, edge) = stack(&rows, |_| {}).await;
    // Bounded by a count, not a clock: 2^-99 odds of a false failure.
    let mut seen = [false; 2];
    for n in 0..100 {
        let (at, _c) = edge
            .login_lands("s.example.com", &format!("r{n}"), &[&a, &b])
            .await;
        seen[at] = true;
        if seen == [true, true] {
            return;
        }
    }
    panic!("100 random logins all went to one backend: {seen:?}");
}

#[tokio::test]
async fn least_players_sends_each_login_to_the_emptiest_backend() {
    let a = McBackend::with_motd("a").await;
    let b = McBackend::with_motd("b").await;
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('s', 's.example.com', '{}', 'running');
         INSERT INTO server_backends (server, address) VALUES ('s', '{}');
         INSERT INTO server_options (server, strategy) VALUES ('s', 'least-players');",
        a.addr(),
        b.addr()
    );
    let (_pg, _syncd, edge) = stack(&rows, |_| {}).await;
    let (first, c1) = edge.login_lands("s.example.com", "one", &[&a, &b]).await;
    assert_eq!(first, 0, "a tie goes to the first backend");
    let (second, c2) = edge.login_lands("s.example.com", "two", &[&a, &b]).await;
    assert_eq!(second, 1, "one player on a: b is emptier");
    let (third, _c3) = edge.login_lands("s.example.com", "three", &[&a, &b]).await;
    assert_eq!(third, 0, "a tie again");
    drop((c1, c2));
}

fn png_hex() -> String {
    hex(&png_64())
}

#[tokio::test]
async fn a_sleeping_server_answers_status_with_its_own_motd_favicon_and_player_limit() {
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state)
           VALUES ('s', 's.example.com', '127.0.0.1:1', 'stopped');
         INSERT INTO server_options (server, asleep_motd, favicon, max_players)
           VALUES ('s', 'Sleeping lobby: join to wake it', '\\x{}', 42);",
        png_hex()
    );
    let (_pg, _syncd, edge) = stack(&rows, |_| {}).await;
    let reply = status_ping(edge.listen_addr, "s.example.com", DEFAULT_PROTOCOL)
        .await
        .expect("status");
    assert_eq!(reply.motd(), "Sleeping lobby: join to wake it");
    let v = reply.value();
    assert_eq!(
        v["favicon"].as_str(),
        Some(format!("data:image/png;base64,{}", mcproto::base64(&png_64())).as_str())
    );
    assert_eq!(v["players"]["max"], 42);
}

#[tokio::test]
async fn past_max_players_a_login_gets_a_readable_server_is_full() {
    let a = McBackend::with_motd("a").await;
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('s', 's.example.com', '{}', 'running');
         INSERT INTO server_options (server, max_players) VALUES ('s', 1);",
        a.addr()
    );
    let (_pg, _syncd, edge) = stack(&rows, |_| {}).await;
    let (_, _first) = edge.login_lands("s.example.com", "first", &[&a]).await;
    let mut second = login(edge.listen_addr, "s.example.com", "second")
        .await
        .expect("connect");
    let text = second.read_disconnect().await.expect("disconnect");
    assert!(text.contains("full"), "{text}");
    assert_eq!(
        a.logins().len(),
        1,
        "the backend never saw the second login"
    );
}

#[tokio::test]
async fn denied_addresses_are_refused_before_any_backend_dial() {
    let a = McBackend::with_motd("a").await;
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES
           ('denied', 'd.example.com', '{0}', 'running'),
           ('allowed-elsewhere', 'o.example.com', '{0}', 'running'),
           ('open', 'open.example.com', '{0}', 'running');
         INSERT INTO server_options (server, deny_cidrs) VALUES ('denied', '{{127.0.0.0/8}}');
         INSERT INTO server_options (server, allow_cidrs) VALUES ('allowed-elsewhere', '{{10.0.0.0/8}}');",
        a.addr()
    );
    let (_pg, syncd, edge) = stack(&rows, |_| {}).await;
    for host in ["d.example.com", "o.example.com"] {
        let mut c = login(edge.listen_addr, host, "steve")
            .await
            .expect("connect");
        let text = c.read_disconnect().await.expect("disconnect");
        assert!(text.contains("cannot join"), "{host}: {text}");
    }
    assert_eq!(a.accepted(), 0, "no dial for a refused client");
    let (_, _ok) = edge.login_lands("open.example.com", "fine", &[&a]).await;

    // The global flag refuses before the handshake is even read.
    let global = start_edge(&[syncd.grpc_url()], |c| {
        c.deny_cidrs = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    global.ready().await;
    let before = a.accepted();
    let mut c = login(global.listen_addr, "open.example.com", "steve")
        .await
        .expect("connect");
    assert!(c.closed_within(DEADLINE).await, "closed without an answer");
    assert_eq!(a.accepted(), before);
    assert!(global.metric("automc_edge_refused_total{reason=\"denied_address\"}") >= 1.0);
}

#[tokio::test]
async fn rewrite_host_reaches_the_backend_with_the_forge_marker_and_every_later_byte_untouched() {
    let a = McBackend::with_motd("a").await;
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('s', 's.example.com', '{}', 'running');
         INSERT INTO server_options (server, rewrite_host) VALUES ('s', 'lobby.internal');",
        a.addr()
    );
    let (_pg, _syncd, edge) = stack(&rows, |_| {}).await;
    let mut conn = login(edge.listen_addr, "S.Example.com\0FML3\0", "forge")
        .await
        .expect("login");
    let recs = a.wait_for_logins(1, DEADLINE).await.expect("login arrives");
    let rec = recs.last().expect("record");
    let hs = rec.handshake.clone().expect("handshake");
    assert_eq!(hs.address, "lobby.internal\0FML3\0");
    assert_eq!(
        (hs.port, hs.next_state, hs.protocol),
        (25565, 2, DEFAULT_PROTOCOL)
    );
    let sent_hs = mc::handshake_packet(DEFAULT_PROTOCOL, "S.Example.com\0FML3\0", 25565, 2);
    let want_hs = mc::handshake_packet(DEFAULT_PROTOCOL, "lobby.internal\0FML3\0", 25565, 2);
    assert!(rec.received.starts_with(&want_hs));
    assert_eq!(
        rec.received[want_hs.len()..],
        conn.sent_first[sent_hs.len()..],
        "Login Start and everything after it as sent"
    );
    conn.send(b"after").await.expect("send");
    assert_eq!(conn.read_exact(5).await.expect("echo"), b"after");
}

#[tokio::test]
async fn a_wildcard_capture_dials_the_captured_label_and_refuses_anything_else() {
    let a = McBackend::with_motd("a").await;
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state)
           VALUES ('per-label', '*.mc.example.com', '{{1}}:{}', 'running');",
        a.addr().port()
    );
    let (_pg, syncd, edge) = stack(&rows, |_| {}).await;
    let (_, _c) = edge
        .login_lands("localhost.mc.example.com", "label", &[&a])
        .await;
    for bad in ["a.localhost.mc.example.com", "x_y.mc.example.com"] {
        let mut c = login(edge.listen_addr, bad, "evil").await.expect("connect");
        let text = c.read_disconnect().await.expect("disconnect");
        assert!(text.contains("no server at this address"), "{bad}: {text}");
    }
    assert_eq!(a.logins().len(), 1);

    // GetRoute on syncd and on the edge shows the expanded backend.
    let want = format!("localhost:{}", a.addr().port());
    let mut client = syncd.client().await;
    let r = client
        .get_route(GetRouteRequest {
            hostname: "localhost.mc.example.com".into(),
        })
        .await
        .expect("GetRoute")
        .into_inner();
    assert_eq!(r.would_dial, want);
    assert_eq!(r.backends.len(), 1);
    let mut admin = EdgeAdminClient::connect(format!("http://{}", edge.grpc_addr))
        .await
        .expect("edge admin");
    let r = admin
        .get_route(GetRouteRequest {
            hostname: "localhost.mc.example.com".into(),
        })
        .await
        .expect("edge GetRoute")
        .into_inner();
    assert_eq!(r.would_dial, want);
    assert_eq!(r.strategy(), BackendStrategy::Failover);
}

#[tokio::test]
async fn get_route_shows_the_backend_set_and_what_this_edge_would_dial_now() {
    let a = McBackend::with_motd("a").await;
    let b = McBackend::with_motd("b").await;
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('s', 's.example.com', '{}', 'running');
         INSERT INTO server_backends (server, address, priority) VALUES ('s', '{}', 1);",
        a.addr(),
        b.addr()
    );
    let (_pg, _syncd, edge) = stack(&rows, |_| {}).await;
    let mut admin = EdgeAdminClient::connect(format!("http://{}", edge.grpc_addr))
        .await
        .expect("edge admin");
    let ask = || GetRouteRequest {
        hostname: "s.example.com".into(),
    };
    let r = admin.get_route(ask()).await.expect("GetRoute").into_inner();
    let set: Vec<String> = r.backends.iter().map(|b| b.address.clone()).collect();
    assert_eq!(set, [a.addr().to_string(), b.addr().to_string()]);
    assert_eq!(r.would_dial, a.addr().to_string());
    a.stop();
    let (_, _c) = edge.login_lands("s.example.com", "moves", &[&b]).await;
    let r = admin.get_route(ask()).await.expect("GetRoute").into_inner();
    assert_eq!(
        r.would_dial,
        b.addr().to_string(),
        "the dead backend is backed off"
    );
}

#[tokio::test]
async fn a_status_ping_skips_a_dead_first_backend_and_shows_the_running_one() {
    let b = McBackend::with_motd("the second backend").await;
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('s', 's.example.com', '{}', 'running');
         INSERT INTO server_backends (server, address, priority) VALUES ('s', '{}', 1);",
        dead_address(),
        b.addr()
    );
    let (_pg, _syncd, edge) = stack(&rows, |_| {}).await;
    let reply = status_ping(edge.listen_addr, "s.example.com", DEFAULT_PROTOCOL)
        .await
        .expect("status");
    assert_eq!(reply.motd(), "the second backend");
    // The dead one is now backed off: the next login goes straight to b.
    let (_, _c) = edge.login_lands("s.example.com", "p", &[&b]).await;
}

#[tokio::test]
async fn proxy_protocol_per_server_overrides_the_global_flag() {
    let with = McBackend::start(BackendOptions {
        expect_proxy_header: true,
        ..BackendOptions::with_motd("with")
    })
    .await
    .expect("backend");
    let without = McBackend::with_motd("without").await;
    let rows = format!(
        "INSERT INTO servers (name, domain, address, state) VALUES
           ('with', 'with.example.com', '{}', 'running'),
           ('without', 'without.example.com', '{}', 'running');
         INSERT INTO server_options (server, proxy_protocol) VALUES ('with', true);",
        with.addr(),
        without.addr()
    );
    let (_pg, _syncd, edge) = stack(&rows, |_| {}).await;
    let (_, _a) = edge.login_lands("with.example.com", "p1", &[&with]).await;
    let (_, _b) = edge
        .login_lands("without.example.com", "p2", &[&without])
        .await;
    let rec = with.logins().pop().expect("login");
    assert!(rec.proxy.is_some(), "PROXY v2 header sent: {rec:?}");
    let rec = without.logins().pop().expect("login");
    assert!(rec.proxy.is_none(), "no header without the option");
}

#[tokio::test]
async fn a_role_granted_only_the_original_tables_keeps_syncing_without_options() {
    let pg = migrated_pg().await;
    pg.execute(
        "INSERT INTO servers (name, domain, address, state)
           VALUES ('s', 's.example.com', '10.0.0.1:25565', 'running');
         INSERT INTO server_backends (server, address) VALUES ('s', '10.0.0.2:25565');
         INSERT INTO server_options (server, max_players) VALUES ('s', 3);
         CREATE ROLE narrow LOGIN;
         GRANT SELECT ON servers, server_aliases TO narrow;",
    )
    .await;
    let dsn = format!(
        "postgres://narrow@127.0.0.1:{}/{}",
        pg.port(),
        automc_tests::pg::DATABASE
    );
    let syncd = start_syncd(&dsn, |_| {}).await;
    let mut w = syncd.watch("w").await;
    let r = w.state().table.get("s").cloned().expect("route");
    assert!(r.backends.is_empty() && r.options.is_none(), "{r:?}");
    pg.execute("UPDATE servers SET address = '10.0.0.9:25565'")
        .await;
    w.wait_until("changes still sync", DEADLINE, |s| {
        s.address_of("s").as_deref() == Some("10.0.0.9:25565")
    })
    .await;
}
