//! syncd benchmark: propagation latency (commit of a single-row change →
//! delta received by a watcher) at 10k and 100k routes, snapshot time and
//! delta size at 100k routes, and syncd's RSS with 100k routes and 50
//! watchers. syncd runs as its own process (the release binary next to this
//! one), Postgres is a throwaway cluster.
//!
//! Run: `cargo build --release -p syncd -p automc-tests --bin syncd_bench && target/release/syncd_bench`
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use automc_proto::v1::route_sync_client::RouteSyncClient;
use automc_proto::v1::{watch_request, watch_response, WatchHello, WatchRequest, WatchResponse};
use automc_tests::pg::{free_port, TestPg};
use automc_tests::procs::rss_mib;
use futures::StreamExt;
use prost::Message;
use tokio::sync::mpsc;

const CHANGES: usize = 1000;
const WATCHERS: usize = 50;
const ORIGINAL_CHANGES: usize = 100;

/// The original automc schema: no `enabled`, empty NOTIFY payload.
const ORIGINAL_SCHEMA: &str = r#"
CREATE TABLE servers (
    name TEXT PRIMARY KEY, domain TEXT NOT NULL UNIQUE, address TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'stopped');
CREATE FUNCTION automc_notify_routes_changed() RETURNS trigger AS $$
BEGIN PERFORM pg_notify('automc_routes_changed', ''); RETURN NULL; END; $$ LANGUAGE plpgsql;
CREATE TRIGGER automc_servers_route_notify
    AFTER INSERT OR UPDATE OF domain, address, state OR DELETE ON servers
    FOR EACH ROW EXECUTE FUNCTION automc_notify_routes_changed();
"#;

struct Syncd {
    child: Child,
    grpc: String,
    http: std::net::SocketAddr,
}

impl Drop for Syncd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn syncd_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe.with_file_name("syncd");
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build --release -p syncd`",
        bin.display()
    );
    bin
}

async fn start_syncd(dsn: &str) -> Syncd {
    let grpc_port = free_port();
    let http_port = free_port();
    let child = Command::new(syncd_binary())
        .args(["serve", "--database-url", dsn])
        .args(["--grpc-listen", &format!("127.0.0.1:{grpc_port}")])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn syncd");
    let s = Syncd {
        child,
        grpc: format!("http://127.0.0.1:{grpc_port}"),
        http: ([127, 0, 0, 1], http_port).into(),
    };
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _)) = automc_tests::stack::http_get(s.http, "/readyz").await {
            return s;
        }
        assert!(Instant::now() < end, "syncd never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Open a watch; every message is forwarded with its arrival time and size.
async fn watch(url: &str, out: mpsc::UnboundedSender<(Instant, usize, WatchResponse)>) {
    let mut client = RouteSyncClient::connect(url.to_owned())
        .await
        .expect("connect")
        // The edge's own setting, not a raised one.
        .max_decoding_message_size(automc_proto::sync::MAX_MESSAGE_BYTES);
    let hello = WatchRequest {
        msg: Some(watch_request::Msg::Hello(WatchHello {
            edge_id: "bench".into(),
            ..Default::default()
        })),
    };
    let req = futures::stream::iter(vec![hello]).chain(futures::stream::pending());
    let mut stream = client.watch_routes(req).await.expect("watch").into_inner();
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            let at = Instant::now();
            let size = m.encoded_len();
            if out.send((at, size, m)).is_err() {
                return;
            }
        }
    });
}

/// Read one whole snapshot (its pieces): arrival of the last, total
/// encoded bytes, routes.
async fn snapshot(
    rx: &mut mpsc::UnboundedReceiver<(Instant, usize, WatchResponse)>,
) -> (Instant, usize, usize) {
    let (mut bytes, mut routes) = (0, 0);
    loop {
        let (at, size, m) = rx.recv().await.expect("snapshot piece");
        if let Some(watch_response::Msg::SnapshotChunk(c)) = m.msg {
            bytes += size;
            routes += c.routes.len();
            if c.last {
                return (at, bytes, routes);
            }
        }
    }
}

async fn seed(pg: &TestPg, routes: usize) {
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state)
         SELECT 's' || i, 's' || i || '.example.com', '10.0.' || (i / 250) || '.' || (i % 250) || ':25565', 'running'
         FROM generate_series(1, {routes}) i"
    ))
    .await;
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Single-row commits, one at a time; each waits for its delta.
async fn propagation(
    pg: &TestPg,
    url: &str,
    routes: usize,
    changes: usize,
) -> (Vec<Duration>, usize) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    watch(url, tx).await;
    snapshot(&mut rx).await;
    let client = pg.client().await;
    let stmt = client
        .prepare("UPDATE servers SET address = $1 WHERE name = $2")
        .await
        .expect("prepare");
    let mut lat = Vec::with_capacity(changes);
    let mut delta_bytes = 0;
    for i in 0..changes {
        let name = format!("s{}", 1 + (i * 7919) % routes);
        let addr = format!("10.9.{}.{}:{}", i / 250, i % 250, 20000 + i);
        let t0 = Instant::now();
        client
            .execute(&stmt, &[&addr, &name])
            .await
            .expect("update");
        loop {
            let (at, size, m) = rx.recv().await.expect("delta");
            if let Some(watch_response::Msg::Delta(d)) = m.msg {
                if d.upserts.iter().any(|r| r.address == addr) {
                    lat.push(at - t0);
                    delta_bytes = size;
                    break;
                }
            }
        }
    }
    lat.sort();
    (lat, delta_bytes)
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let mut report = String::new();
    for routes in [10_000usize, 100_000] {
        let pg = TestPg::start().await;
        syncd::migrate(&pg.dsn()).await.expect("migrate");
        seed(&pg, routes).await;
        let syncd = start_syncd(&pg.dsn()).await;
        let rss_ready = rss_mib(syncd.child.id());

        let (lat, delta_bytes) = propagation(&pg, &syncd.grpc, routes, CHANGES).await;
        report.push_str(&format!(
            "| {routes} routes | propagation p50 {} | p99 {} | max {} | single-row delta {} bytes |\n",
            ms(pct(&lat, 0.5)),
            ms(pct(&lat, 0.99)),
            ms(*lat.last().expect("samples")),
            delta_bytes
        ));
        eprint!("{report}");

        if routes == 100_000 {
            // Snapshot: open the watch → full snapshot received.
            let mut snaps = Vec::new();
            for _ in 0..5 {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let t0 = Instant::now();
                watch(&syncd.grpc, tx).await;
                let (at, size, n) = snapshot(&mut rx).await;
                assert_eq!(n, routes);
                snaps.push((at - t0, size));
            }
            snaps.sort();
            report.push_str(&format!(
                "| {routes} routes | snapshot to a new watcher: median {} (min {}, max {}) | {:.1} MiB encoded |\n",
                ms(snaps[2].0),
                ms(snaps[0].0),
                ms(snaps[4].0),
                snaps[0].1 as f64 / 1048576.0
            ));

            let pid = syncd.child.id();
            let idle = rss_mib(pid);
            let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, usize, WatchResponse)>();
            let t0 = Instant::now();
            for _ in 0..WATCHERS {
                watch(&syncd.grpc, tx.clone()).await;
            }
            let mut snapshots = 0;
            while snapshots < WATCHERS {
                let (_, _, m) = rx.recv().await.expect("snapshot");
                if matches!(m.msg, Some(watch_response::Msg::SnapshotChunk(c)) if c.last) {
                    snapshots += 1;
                }
            }
            let all_snapshots = t0.elapsed();
            // Then one change to every watcher.
            let c = pg.client().await;
            c.batch_execute("UPDATE servers SET state = 'stopped' WHERE name = 's1'")
                .await
                .expect("update");
            let mut deltas = 0;
            while deltas < WATCHERS {
                let (_, _, m) = rx.recv().await.expect("delta");
                if matches!(m.msg, Some(watch_response::Msg::Delta(_))) {
                    deltas += 1;
                }
            }
            let with_watchers = rss_mib(pid);
            report.push_str(&format!(
                "| {routes} routes | syncd RSS: {rss_ready:.0} MiB with no watcher, {idle:.0} MiB with 6 watchers, {with_watchers:.0} MiB with {WATCHERS} more | {WATCHERS} snapshots served in {} |\n",
                ms(all_snapshots)
            ));
        }
        drop(syncd);
    }

    // The original automc trigger (empty payload): every change re-reads
    // the whole table. Fewer samples: each one scans 100k rows.
    {
        let routes = 100_000;
        let pg = TestPg::start().await;
        pg.execute(ORIGINAL_SCHEMA).await;
        seed(&pg, routes).await;
        let syncd = start_syncd(&pg.dsn()).await;
        let (lat, _) = propagation(&pg, &syncd.grpc, routes, ORIGINAL_CHANGES).await;
        report.push_str(&format!(
            "| {routes} routes, original automc trigger (empty payload, full re-read) | propagation p50 {} | p99 {} | max {} | {ORIGINAL_CHANGES} changes |\n",
            ms(pct(&lat, 0.5)),
            ms(pct(&lat, 0.99)),
            ms(*lat.last().expect("samples")),
        ));
        eprint!("{report}");
    }
    println!("{report}");
    println!("total bench time: {:.1} s", started.elapsed().as_secs_f64());
}
