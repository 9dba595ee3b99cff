//! `--otlp-endpoint`: the spans both binaries already log (one per player
//! connection on the edge, one per wake in syncd) reach an OTLP/gRPC
//! collector. The binaries run as real processes with the flag, the
//! collector is a real tonic server.
use std::time::Duration;

use automc_tests::mc::{login, BackendOptions, LoginMode, McBackend};
use automc_tests::otlp::FakeCollector;
use automc_tests::procs::{edge_args, syncd_args, Proc};
use automc_tests::stack::{eventually, migrated_pg, DEADLINE};
use automc_tests::waker::{Behaviour, FakeWaker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_wake_spans_reach_the_otlp_collector() {
    let collector = FakeCollector::start().await;
    let backend = McBackend::start(BackendOptions {
        login: LoginMode::Disconnect("welcome".into()),
        ..BackendOptions::with_motd("awake")
    })
    .await
    .expect("backend");
    let waker = FakeWaker::start().await;
    waker.set(
        "sleepy",
        Behaviour::starts_at(Duration::from_millis(50), &backend.addr().to_string()),
    );
    let pg = migrated_pg().await;
    // The route's address has nothing listening: the login needs the wake.
    pg.execute(
        "INSERT INTO servers (name, domain, address, state)
         VALUES ('sleepy', 'sleepy.example.com', '127.0.0.1:9', 'stopped')",
    )
    .await;
    let endpoint = collector.endpoint();
    let syncd = Proc::spawn(
        "syncd",
        &syncd_args(
            &pg.dsn(),
            &[
                "--waker-url",
                &waker.url(),
                "--waker-poll-interval",
                "50ms",
                "--otlp-endpoint",
                &endpoint,
            ],
        ),
        &[],
    )
    .await;
    let syncd_url = format!("http://{}", syncd.main_addr);
    let edge = Proc::spawn(
        "edge",
        &edge_args(&syncd_url, &["--otlp-endpoint", &endpoint]),
        &[],
    )
    .await;
    edge.wait_ready().await;

    let mut player = login(edge.main_addr, "sleepy.example.com", "Steve")
        .await
        .expect("connect to the edge");
    let said = player
        .read_disconnect_within(DEADLINE)
        .await
        .expect("the woken backend answers the login");
    assert_eq!(said, "welcome");
    assert_eq!(waker.posts("sleepy"), 1);
    drop(player);

    // Spans leave in batches; wait for them rather than for a fixed delay.
    // The connection's span carries how it ended, as an operator reads it
    // in a trace.
    eventually(
        "an edge `conn` span with its outcome and a syncd `wake` span at the collector",
        Duration::from_secs(60),
        || async {
            let conn = [
                "client.addr",
                "hostname",
                "route",
                "outcome",
                "bytes.up",
                "bytes.down",
            ];
            collector.has_span_with("edge", "conn", &conn) && collector.count("syncd", "wake") >= 1
        },
    )
    .await;
}
