//! Route changes in Postgres reach watchers: snapshot, then deltas.
use automc_tests::pg::TestPg;
use automc_tests::stack::{eventually, migrated_pg, start_syncd, DEADLINE};

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

#[tokio::test]
async fn alias_rows_add_hostnames_to_their_server() {
    let pg = seeded().await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let mut w = syncd.watch("edge-1").await;

    pg.execute("INSERT INTO server_aliases (domain, server) VALUES ('SMP.example.com', 'survival'), ('*.smp.example.com', 'survival')")
        .await;
    let st = w
        .wait_until("aliases arrive", DEADLINE, |s| {
            s.table.get("survival").map(|r| r.hostnames.len()) == Some(3)
        })
        .await;
    assert_eq!(
        st.table.get("survival").map(|r| r.hostnames.clone()),
        Some(vec![
            "survival.example.com".to_owned(),
            "*.smp.example.com".to_owned(),
            "smp.example.com".to_owned()
        ])
    );
    let hit = st
        .table
        .lookup("x.smp.example.com")
        .expect("short hostname")
        .map(|m| m.route.server.clone());
    assert_eq!(hit.as_deref(), Some("survival"));

    pg.execute("DELETE FROM server_aliases WHERE domain = '*.smp.example.com'")
        .await;
    w.wait_until("alias removal arrives", DEADLINE, |s| {
        s.table.get("survival").map(|r| r.hostnames.len()) == Some(2)
    })
    .await;

    // A server with only an alias is still a route; deleting the server
    // cascades to its aliases.
    pg.execute("UPDATE servers SET domain = NULL WHERE name = 'survival'")
        .await;
    w.wait_until("alias-only route", DEADLINE, |s| {
        s.table.get("survival").map(|r| r.hostnames.clone())
            == Some(vec!["smp.example.com".to_owned()])
    })
    .await;
    pg.execute("DELETE FROM servers WHERE name = 'survival'")
        .await;
    w.wait_until("server and aliases gone", DEADLINE, |s| {
        s.table.get("survival").is_none()
    })
    .await;
}

#[tokio::test]
async fn get_route_resolves_exact_wildcard_and_default_like_an_edge() {
    let pg = seeded().await;
    pg.execute(
        "INSERT INTO servers (name, domain, address) VALUES
           ('games', '*.games.example.com', '10.0.1.1:25565'),
           ('fallback', '*', '10.0.1.2:25565');
         INSERT INTO server_aliases (domain, server) VALUES ('play.example.com', 'lobby');",
    )
    .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let mut client = syncd.client().await;
    let cases = [
        ("lobby.example.com", "lobby", "lobby.example.com"),
        ("LOBBY.Example.com.", "lobby", "lobby.example.com"),
        ("lobby.example.com\0FML2\0", "lobby", "lobby.example.com"),
        (
            "lobby.example.com///10.0.0.5:1234///x",
            "lobby",
            "lobby.example.com",
        ),
        ("play.example.com", "lobby", "play.example.com"),
        ("pvp.games.example.com", "games", "*.games.example.com"),
        ("a.b.games.example.com", "games", "*.games.example.com"),
        ("games.example.com", "fallback", "*"),
        ("unknown.net", "fallback", "*"),
    ];
    for (host, server, matched) in cases {
        let r = client
            .get_route(automc_proto::v1::GetRouteRequest {
                hostname: host.into(),
            })
            .await
            .expect("GetRoute")
            .into_inner();
        assert!(r.found, "{host:?} not found");
        assert_eq!(
            r.route.map(|r| r.server).as_deref(),
            Some(server),
            "{host:?}"
        );
        assert_eq!(r.matched, matched, "{host:?}");
    }
    pg.execute("DELETE FROM servers WHERE name = 'fallback'")
        .await;
    eventually_not_found(&mut client, "unknown.net").await;
}

async fn eventually_not_found(
    client: &mut automc_proto::v1::route_sync_client::RouteSyncClient<tonic::transport::Channel>,
    host: &str,
) {
    let get = || {
        let mut client = client.clone();
        async move {
            client
                .get_route(automc_proto::v1::GetRouteRequest {
                    hostname: host.into(),
                })
                .await
                .expect("GetRoute")
                .into_inner()
        }
    };
    eventually(&format!("{host} no longer resolves"), DEADLINE, || async {
        !get().await.found
    })
    .await;
    assert_eq!(get().await.normalized, host);
}

#[tokio::test]
async fn list_routes_returns_the_table_with_epoch_and_version() {
    let pg = seeded().await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let mut client = syncd.client().await;
    let r = client
        .list_routes(automc_proto::v1::ListRoutesRequest::default())
        .await
        .expect("ListRoutes")
        .into_inner();
    assert_eq!(r.epoch, syncd.epoch);
    assert_eq!(r.version, 1);
    let names: Vec<_> = r.routes.iter().map(|r| r.server.as_str()).collect();
    assert_eq!(names, vec!["lobby", "survival"]);
}
