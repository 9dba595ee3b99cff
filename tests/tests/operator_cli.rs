//! `syncd routes | edges | wakes`: an operator asks a running syncd what it
//! serves, who watches it and what it woke, and reads the answer as a table
//! or as JSON. The real `syncd` binary against a real syncd.
use std::time::Duration;

use automc_proto::v1::WakeRequest;
use automc_tests::procs::bin_dir;
use automc_tests::stack::{eventually, migrated_pg, start_syncd, DEADLINE};
use automc_tests::waker::{Behaviour, FakeWaker};

async fn syncd_cli(args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(bin_dir().await.join("syncd"))
            .args(args)
            .output(),
    )
    .await
    .expect("syncd CLI answers in time")
    .expect("run syncd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn routes_edges_and_wakes_print_as_tables_and_json() {
    let pg = migrated_pg().await;
    pg.execute(
        "INSERT INTO servers (name, domain, address, state) VALUES
            ('lobby', 'play.example.com', '10.0.0.1:25565', 'running'),
            ('sleepy', 'sleepy.example.com', '10.0.0.2:25565', 'stopped');
         INSERT INTO server_aliases (domain, server) VALUES ('hub.example.com', 'lobby');",
    )
    .await;
    let waker = FakeWaker::start().await;
    waker.set("sleepy", Behaviour::starts_after(Duration::ZERO));
    let syncd = start_syncd(&pg.dsn(), |c| c.waker.url = Some(waker.url())).await;
    let url = syncd.grpc_url();
    let mut edge = syncd.watch("edge-7").await;
    edge.wait_until("snapshot", DEADLINE, |s| s.table.len() == 2)
        .await;

    let (ok, out, err) = syncd_cli(&["routes", "--syncd", &url]).await;
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap_or_default();
    for col in ["SERVER", "HOSTNAMES", "ADDRESS", "STATE"] {
        assert!(header.contains(col), "{out}");
    }
    let lobby = out
        .lines()
        .find(|l| l.starts_with("lobby "))
        .unwrap_or_else(|| panic!("no lobby row:\n{out}"));
    assert!(lobby.contains("hub.example.com"), "{out}");
    assert!(lobby.contains("play.example.com"), "{out}");
    assert!(lobby.contains("10.0.0.1:25565"), "{out}");
    assert!(out.contains("2 routes"), "{out}");

    let (ok, out, err) = syncd_cli(&["routes", "--syncd", &url, "--json"]).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("routes --json is JSON");
    assert_eq!(v["routes"].as_array().map(Vec::len), Some(2), "{out}");
    assert_eq!(v["epoch"], syncd.epoch.as_str());

    // The edge has acked the snapshot: it shows as synced.
    eventually("the edge shows as synced", DEADLINE, || {
        let url = url.clone();
        async move {
            let (ok, out, _) = syncd_cli(&["edges", "--syncd", &url]).await;
            ok && out
                .lines()
                .any(|l| l.starts_with("edge-7 ") && l.contains("synced"))
        }
    })
    .await;
    let (ok, out, err) = syncd_cli(&["edges", "--syncd", &url, "--json"]).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("edges --json is JSON");
    assert_eq!(v["edges"][0]["edge_id"], "edge-7", "{out}");

    syncd
        .client()
        .await
        .wake(WakeRequest {
            server: "sleepy".into(),
            caller: "operator-test".into(),
        })
        .await
        .expect("wake");
    let (ok, out, err) = syncd_cli(&["wakes", "--syncd", &url]).await;
    assert!(ok, "{err}");
    assert!(
        out.lines().any(|l| l.starts_with("sleepy ")),
        "the wake is listed:\n{out}"
    );
    let (ok, out, err) = syncd_cli(&["wakes", "--syncd", &url, "--json"]).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("wakes --json is JSON");
    assert_eq!(v["wakes"][0]["server"], "sleepy", "{out}");
}

#[tokio::test]
async fn a_syncd_with_a_token_needs_it_and_an_unreachable_one_fails_clearly() {
    let pg = migrated_pg().await;
    let syncd = start_syncd(&pg.dsn(), |c| c.grpc_token = Some("s3cret-token".into())).await;
    let url = syncd.grpc_url();

    let (ok, _, err) = syncd_cli(&["routes", "--syncd", &url]).await;
    assert!(!ok, "no token must fail");
    assert!(
        err.contains("Unauthenticated") || err.contains("unauthenticated"),
        "{err}"
    );

    let (ok, out, err) =
        syncd_cli(&["routes", "--syncd", &url, "--grpc-token", "s3cret-token"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("0 routes"), "{out}");

    let dead = format!("http://{}", automc_tests::stack::dead_address());
    let (ok, _, err) = syncd_cli(&["edges", "--syncd", &dead]).await;
    assert!(!ok);
    assert!(err.contains("cannot connect to syncd"), "{err}");
}

#[tokio::test]
async fn routes_lists_every_page_of_a_table_larger_than_one_page() {
    let pg = migrated_pg().await;
    pg.execute(
        "INSERT INTO servers (name, domain, address, state)
         SELECT 's' || i, 's' || i || '.example.com', '10.0.0.1:25565', 'running'
         FROM generate_series(1, 12000) i",
    )
    .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let (ok, out, err) = syncd_cli(&["routes", "--syncd", &syncd.grpc_url(), "--json"]).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("routes --json is JSON");
    let routes = v["routes"].as_array().expect("routes array");
    assert_eq!(routes.len(), 12000);
    assert!(routes.iter().any(|r| r["server"] == "s12000"));
}
