//! The watch protocol: resume by epoch+version, acks seen in ListEdges,
//! heartbeats, no-op notifications, a stuck watcher cut off while the
//! others keep receiving, and hellos that are late or too big refused.
use std::time::Duration;

use futures::StreamExt as _;

use automc_proto::v1::route_sync_client::RouteSyncClient;
use automc_proto::v1::{watch_request, ListEdgesRequest, WatchHello, WatchRequest};
use automc_tests::stack::{
    eventually, metric_value, migrated_pg, start_syncd, RouteWatcher, DEADLINE,
};

const SEED: &str = "INSERT INTO servers (name, domain, address) VALUES
    ('a', 'a.example.com', '10.0.0.1:25565'),
    ('b', 'b.example.com', '10.0.0.2:25565')";

#[tokio::test]
async fn resume_by_epoch_and_version_sends_only_what_was_missed() {
    let pg = migrated_pg().await;
    pg.execute(SEED).await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let w = syncd.watch("edge").await;
    let held = w.state();
    drop(w);

    pg.execute(
        "INSERT INTO servers (name, domain, address) VALUES ('c', 'c.example.com', '10.0.0.3:1')",
    )
    .await;
    pg.execute("UPDATE servers SET address = '10.0.0.9:1' WHERE name = 'a'")
        .await;
    pg.execute("DELETE FROM servers WHERE name = 'b'").await;
    let client = syncd.client().await;
    eventually("the delete is applied", DEADLINE, || {
        let mut client = client.clone();
        async move {
            !client
                .list_routes(automc_proto::v1::ListRoutesRequest::default())
                .await
                .expect("ListRoutes")
                .into_inner()
                .routes
                .iter()
                .any(|r| r.server == "b")
        }
    })
    .await;

    let w = RouteWatcher::resume(&syncd.grpc_url(), "edge", &held)
        .await
        .expect("resume");
    let st = w.state();
    assert_eq!(st.snapshots, 0, "no snapshot when resuming");
    assert_eq!(st.deltas.len(), 1, "one delta with everything missed");
    let d = st.deltas[0];
    assert_eq!(d.from_version, held.version);
    assert_eq!(d.changes, 3, "c added, a changed, b removed");
    assert!(!st.gap);
    let names: Vec<_> = st.table.routes().map(|r| r.server.clone()).collect();
    assert_eq!(names, vec!["a", "c"]);
    assert_eq!(st.address_of("a").as_deref(), Some("10.0.0.9:1"));
}

#[tokio::test]
async fn resume_after_syncd_restart_gets_a_fresh_snapshot() {
    let pg = migrated_pg().await;
    pg.execute(SEED).await;
    let first = start_syncd(&pg.dsn(), |_| {}).await;
    let held = first.watch("edge").await.state();
    first.stop().await;
    let second = start_syncd(&pg.dsn(), |_| {}).await;
    assert_ne!(second.epoch, held.epoch);
    let w = RouteWatcher::resume(&second.grpc_url(), "edge", &held)
        .await
        .expect("resume");
    let st = w.state();
    assert_eq!(st.snapshots, 1, "another epoch means a snapshot");
    assert_eq!(st.epoch, second.epoch);
    assert_eq!(st.table.len(), 2);
}

#[tokio::test]
async fn up_to_date_edge_gets_a_heartbeat_and_idle_streams_keep_getting_them() {
    let pg = migrated_pg().await;
    pg.execute(SEED).await;
    let syncd = start_syncd(&pg.dsn(), |c| {
        c.heartbeat_interval = Duration::from_millis(100)
    })
    .await;
    let held = syncd.watch("edge").await.state();
    let mut w = RouteWatcher::resume(&syncd.grpc_url(), "edge", &held)
        .await
        .expect("resume");
    let st = w.state();
    assert_eq!((st.snapshots, st.deltas.len(), st.heartbeats), (0, 0, 1));
    w.wait_until("heartbeats on an idle stream", DEADLINE, |s| {
        s.heartbeats >= 3
    })
    .await;
}

#[tokio::test]
async fn a_notification_that_changes_nothing_sends_nothing() {
    let pg = migrated_pg().await;
    pg.execute(SEED).await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let mut w = syncd.watch("edge").await;
    let v = w.state().version;
    // Same value written, and an empty-payload NOTIFY: both re-read, neither changes.
    pg.execute("UPDATE servers SET address = address WHERE name = 'a'")
        .await;
    pg.execute("NOTIFY automc_routes_changed, ''").await;
    let http = syncd.http_addr;
    eventually("both notifications processed", DEADLINE, || async move {
        let text = automc_tests::stack::http_get(http, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        metric_value(&text, "automc_syncd_notifications_total").unwrap_or(0.0) >= 2.0
    })
    .await;
    pg.execute("UPDATE servers SET address = '10.0.0.5:1' WHERE name = 'b'")
        .await;
    let st = w
        .wait_until("the real change", DEADLINE, |s| {
            s.address_of("b").as_deref() == Some("10.0.0.5:1")
        })
        .await;
    assert_eq!(st.version, v + 1, "only the real change bumped the version");
    assert_eq!(st.deltas.len(), 1);
}

#[tokio::test]
async fn list_edges_shows_each_watcher_and_the_version_it_acknowledged() {
    let pg = migrated_pg().await;
    pg.execute(SEED).await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let _w1 = syncd.watch("edge-one").await;
    let mut w2 = syncd.watch("edge-two").await;
    pg.execute("UPDATE servers SET address = '10.0.0.7:1' WHERE name = 'a'")
        .await;
    let version = w2
        .wait_until("delta", DEADLINE, |s| {
            s.address_of("a").as_deref() == Some("10.0.0.7:1")
        })
        .await
        .version;
    let client = syncd.client().await;
    let list = || {
        let mut client = client.clone();
        async move {
            client
                .list_edges(ListEdgesRequest {})
                .await
                .expect("ListEdges")
                .into_inner()
        }
    };
    eventually("both edges acked the delta", DEADLINE, || async {
        let r = list().await;
        let mut ids: Vec<_> = r.edges.iter().map(|e| e.edge_id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec!["edge-one", "edge-two"]);
        r.edges
            .iter()
            .all(|e| e.acked_version == version && e.lag == 0)
    })
    .await;
    let r = list().await;
    assert!(
        r.edges.iter().all(|e| e.acked_epoch == syncd.epoch
            && e.peer.starts_with("127.0.0.1:")
            && e.connected_since_ms > 0),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_stuck_watcher_is_cut_off_while_the_others_keep_receiving() {
    let pg = migrated_pg().await;
    pg.execute(SEED).await;
    let syncd = start_syncd(&pg.dsn(), |c| c.watcher_queue = 64).await;
    let mut live = syncd.watch("live").await;

    // The stuck edge opens a stream with a tiny HTTP/2 window and never reads.
    let channel = tonic::transport::Endpoint::from_shared(syncd.grpc_url())
        .expect("endpoint")
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await
        .expect("connect");
    let mut stuck_client = RouteSyncClient::new(channel);
    let hello = WatchRequest {
        msg: Some(watch_request::Msg::Hello(WatchHello {
            edge_id: "stuck".into(),
            ..Default::default()
        })),
    };
    let _stuck = stuck_client
        .watch_routes(futures::stream::iter(vec![hello]).chain(futures::stream::pending()))
        .await
        .expect("stuck watch opened");

    // One 8 KiB row change at a time, each seen by the live watcher before
    // the next commit, so every commit is its own delta whatever Postgres and
    // syncd coalesce. The stuck watcher reads none of them: its HTTP/2 window
    // fills after a couple, then its bounded queue (64) fills and it is cut.
    // The bound on rounds is generous; the loop ends as soon as the cut shows.
    let c = pg.client().await;
    let mut cut = false;
    for round in 1..=2_000u32 {
        c.batch_execute(&format!(
            "UPDATE servers SET address = '10.0.0.2:' || repeat('9', 8192) || '{round}' WHERE name = 'a'"
        ))
        .await
        .expect("update");
        let want = format!("{round}");
        let st = live
            .wait_until("live watcher gets the update", DEADLINE, |s| {
                s.table.routes().any(|r| {
                    r.server == "a"
                        && r.address.len() > 8000
                        && r.address.ends_with(&format!("9{want}"))
                })
            })
            .await;
        assert!(
            st.ended.is_none(),
            "live watcher must not be cut: {:?}",
            st.ended
        );
        assert!(!st.gap);
        let text = syncd.metrics_text().await;
        if metric_value(&text, "automc_syncd_watchers_cut_total") == Some(1.0) {
            cut = true;
            break;
        }
    }
    assert!(cut, "the stuck watcher was never cut");
    // The live watcher keeps receiving after the cut.
    pg.execute("UPDATE servers SET address = '10.0.0.3:1' WHERE name = 'b'")
        .await;
    let st = live
        .wait_until("live watcher gets a change after the cut", DEADLINE, |s| {
            s.table
                .routes()
                .any(|r| r.server == "b" && r.address == "10.0.0.3:1")
        })
        .await;
    assert!(st.ended.is_none(), "live watcher cut: {:?}", st.ended);
    let text = syncd.metrics_text().await;
    assert_eq!(
        metric_value(&text, "automc_syncd_watchers_cut_total"),
        Some(1.0),
        "only the stuck watcher is cut: {text}"
    );
    let edges = syncd
        .client()
        .await
        .list_edges(ListEdgesRequest {})
        .await
        .expect("ListEdges")
        .into_inner()
        .edges;
    let ids: Vec<_> = edges.iter().map(|e| e.edge_id.as_str()).collect();
    assert_eq!(ids, vec!["live"], "the stuck watcher is gone");
}

/// A watch whose hello never comes is ended at the hello deadline, and one
/// whose edge id is longer than a name is refused; a proper edge still gets
/// its table meanwhile.
#[tokio::test]
async fn a_late_hello_and_an_oversized_edge_id_are_refused() {
    let pg = migrated_pg().await;
    pg.execute(SEED).await;
    let syncd = start_syncd(&pg.dsn(), |c| c.hello_timeout = Duration::from_millis(300)).await;
    let mut client = syncd.client().await;

    let silent = client
        .watch_routes(futures::stream::pending::<WatchRequest>())
        .await
        .expect_err("no hello: refused");
    assert_eq!(silent.code(), tonic::Code::DeadlineExceeded, "{silent:?}");

    let long_id = "e".repeat(automc_proto::sync::MAX_EDGE_ID_BYTES + 1);
    let err = RouteWatcher::connect(
        &syncd.grpc_url(),
        WatchHello {
            edge_id: long_id,
            ..Default::default()
        },
        None,
    )
    .await
    .err()
    .expect("an edge id over the limit is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("edge_id"), "{err:?}");

    let mut ok = syncd
        .watch(&"e".repeat(automc_proto::sync::MAX_EDGE_ID_BYTES))
        .await;
    ok.wait_until("the table arrives", DEADLINE, |s| s.table.len() == 2)
        .await;
}
