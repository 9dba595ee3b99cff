//! Fleet benchmark: the release `syncd` and real release `edge` processes,
//! each its own process with its shipped defaults, against a throwaway
//! Postgres. For each table size (default 100,000 and 1,000,000 routes):
//!
//! - a new edge from spawn to ready (`/readyz` 200: whole table applied);
//! - one-row commit → applied at every one of 3 edges (all three edges'
//!   acknowledged version in syncd's `ListEdges` reaches the new version;
//!   an edge acks right after it applied a version);
//! - a burst of 10,000 one-row commits (4 connections) → every edge holds
//!   all of them;
//! - syncd RSS with the table and no edge, with 3 edges, and (100k only)
//!   per edge with 50 more edges connecting at once, plus how long those
//!   50 take to all be ready; edge RSS.
//!
//! Run (from the repository root):
//! `cargo build --release -p syncd -p edge && cargo build --release -p automc-tests --bin automc-fleet-bench && target/release/automc-fleet-bench [ROUTES...]`
use std::path::PathBuf;
use std::time::{Duration, Instant};

use automc_proto::v1::route_sync_client::RouteSyncClient;
use automc_proto::v1::{GetRouteRequest, ListEdgesRequest, ListRoutesRequest};
use automc_tests::pg::TestPg;
use automc_tests::procs::{edge_args, rss_mib, syncd_args, Proc};
use automc_tests::stack::http_get;
use tonic::transport::Channel;

const CHANGES: usize = 200;
const BURST: usize = 10_000;
const BURST_CONNECTIONS: usize = 4;
const CROWD: usize = 50;

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir").to_path_buf();
    for bin in ["syncd", "edge"] {
        assert!(
            dir.join(bin).exists(),
            "{} missing: cargo build --release -p syncd -p edge",
            dir.join(bin).display()
        );
    }
    dir
}

async fn seed(pg: &TestPg, routes: usize) {
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state)
         SELECT 's' || i, 's' || i || '.example.com', '10.0.' || (i / 250 % 250) || '.' || (i % 250) || ':25565', 'running'
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

async fn spawn_edge(dir: &std::path::Path, syncd: &str, id: String) -> Proc {
    Proc::spawn_from(
        dir,
        "edge",
        &edge_args(syncd, &["--edge-id", &id]),
        &[("RUST_LOG", "warn")],
    )
    .await
}

/// Poll `/readyz` until 200; the instant it first answered.
async fn ready_at(edge: &Proc) -> Instant {
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok((200, _)) = http_get(edge.http_addr, "/readyz").await {
            return Instant::now();
        }
        assert!(Instant::now() < end, "edge never ready");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn table_version(c: &mut RouteSyncClient<Channel>) -> u64 {
    c.list_routes(ListRoutesRequest {
        page_size: 1,
        ..Default::default()
    })
    .await
    .expect("list")
    .into_inner()
    .version
}

/// Wait until every edge named `ids` acknowledged `version`.
async fn all_acked(c: &mut RouteSyncClient<Channel>, ids: &[String], version: u64) {
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        let edges = c
            .list_edges(ListEdgesRequest {})
            .await
            .expect("list edges")
            .into_inner()
            .edges;
        let done = ids.iter().all(|id| {
            edges
                .iter()
                .any(|e| &e.edge_id == id && e.acked_version >= version)
        });
        if done {
            return;
        }
        assert!(Instant::now() < end, "edges never acked {version}");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Wait until syncd's table has `address` for server `name`.
async fn syncd_has(c: &mut RouteSyncClient<Channel>, name: &str, address: &str) {
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        let r = c
            .get_route(GetRouteRequest {
                hostname: format!("{name}.example.com"),
            })
            .await
            .expect("get route")
            .into_inner();
        if r.route.is_some_and(|r| r.address == address) {
            return;
        }
        assert!(Instant::now() < end, "syncd never saw {name} at {address}");
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

async fn run(dir: &std::path::Path, routes: usize, report: &mut String) {
    let pg = TestPg::start().await;
    syncd::migrate(&pg.dsn()).await.expect("migrate");
    seed(&pg, routes).await;
    let syncd = Proc::spawn_from(
        dir,
        "syncd",
        &syncd_args(&pg.dsn(), &[]),
        &[("RUST_LOG", "warn")],
    )
    .await;
    syncd.wait_ready().await;
    let spid = syncd.pid().expect("syncd pid");
    let url = format!("http://{}", syncd.main_addr);
    let mut c = RouteSyncClient::connect(url.clone())
        .await
        .expect("connect");
    let syncd_idle = rss_mib(spid);

    // Three edges, one after the other: connect → ready.
    let mut edges = Vec::new();
    let mut ready_times = Vec::new();
    let ids: Vec<String> = (0..3).map(|i| format!("edge-{i}")).collect();
    for id in &ids {
        let t0 = Instant::now();
        let e = spawn_edge(dir, &url, id.clone()).await;
        ready_times.push(ready_at(&e).await - t0);
        edges.push(e);
    }
    let v = table_version(&mut c).await;
    all_acked(&mut c, &ids, v).await;
    let syncd_3 = rss_mib(spid);
    let edge_rss: Vec<f64> = edges
        .iter()
        .map(|e| rss_mib(e.pid().expect("pid")))
        .collect();
    report.push_str(&format!(
        "| {routes} routes | new edge spawn → ready: {} | {} | {} |\n",
        ms(ready_times[0]),
        ms(ready_times[1]),
        ms(ready_times[2])
    ));

    // One-row commits, one at a time, each until all 3 edges applied it.
    let pgc = pg.client().await;
    let stmt = pgc
        .prepare("UPDATE servers SET address = $1 WHERE name = $2")
        .await
        .expect("prepare");
    let mut lat = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let name = format!("s{}", 1 + (i * 7919) % routes);
        let addr = format!("10.9.{}.{}:{}", i / 250, i % 250, 20000 + i);
        let before = table_version(&mut c).await;
        let t0 = Instant::now();
        pgc.execute(&stmt, &[&addr, &name]).await.expect("update");
        all_acked(&mut c, &ids, before + 1).await;
        lat.push(t0.elapsed());
    }
    lat.sort();
    report.push_str(&format!(
        "| {routes} routes | one-row commit → applied at all 3 edges ({CHANGES} commits) | p50 {} | p99 {} | max {} |\n",
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(*lat.last().expect("samples"))
    ));
    eprint!("{report}");

    // Burst: 10,000 one-row commits from 4 connections.
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..BURST_CONNECTIONS {
        let client = pg.client().await;
        tasks.push(tokio::spawn(async move {
            let stmt = client
                .prepare("UPDATE servers SET address = $1 WHERE name = $2")
                .await
                .expect("prepare");
            let mut last = (String::new(), String::new());
            for j in 0..BURST / BURST_CONNECTIONS {
                let i = k * (BURST / BURST_CONNECTIONS) + j;
                let name = format!("s{}", 1 + (i * 104_729) % routes);
                let addr = format!("10.8.{}.{}:{}", k, j % 250, 30000 + j);
                client
                    .execute(&stmt, &[&addr, &name])
                    .await
                    .expect("update");
                last = (name, addr);
            }
            last
        }));
    }
    let mut lasts = Vec::new();
    for t in tasks {
        lasts.push(t.await.expect("burst task"));
    }
    let committed = t0.elapsed();
    for (name, addr) in &lasts {
        syncd_has(&mut c, name, addr).await;
    }
    let v = table_version(&mut c).await;
    all_acked(&mut c, &ids, v).await;
    let all = t0.elapsed();
    report.push_str(&format!(
        "| {routes} routes | burst of {BURST} one-row commits ({BURST_CONNECTIONS} connections) | committed in {} | every edge holds all of them after {} |\n",
        ms(committed),
        ms(all)
    ));

    // 50 more edges at once (100k only: 50 processes × a 1M table is more
    // memory than this machine has to spare).
    let mut crowd_line = String::new();
    if routes <= 100_000 {
        let t0 = Instant::now();
        let spawned = futures::future::join_all(
            (0..CROWD).map(|i| spawn_edge(dir, &url, format!("crowd-{i}"))),
        )
        .await;
        futures::future::join_all(spawned.iter().map(ready_at)).await;
        let crowd_ready = t0.elapsed();
        let crowd_ids: Vec<String> = (0..CROWD).map(|i| format!("crowd-{i}")).collect();
        let v = table_version(&mut c).await;
        all_acked(&mut c, &crowd_ids, v).await;
        let syncd_crowd = rss_mib(spid);
        crowd_line = format!(
            "| {routes} routes | {CROWD} edges spawned at once, all ready | {} | syncd RSS {syncd_crowd:.0} MiB: {:.0} KiB per edge over the 3-edge figure |\n",
            ms(crowd_ready),
            (syncd_crowd - syncd_3) * 1024.0 / CROWD as f64
        );
        drop(spawned);
    }
    report.push_str(&format!(
        "| {routes} routes | RSS | syncd {syncd_idle:.0} MiB with no edge, {syncd_3:.0} MiB with 3 | edges {:.0} / {:.0} / {:.0} MiB |\n",
        edge_rss[0], edge_rss[1], edge_rss[2]
    ));
    report.push_str(&crowd_line);
    eprint!("{report}");
    drop(edges);
    drop(syncd);
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let dir = bin_dir();
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("route counts"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        sizes
    };
    let mut report = String::new();
    for routes in sizes {
        run(&dir, routes, &mut report).await;
    }
    println!("{report}");
    println!("total bench time: {:.1} s", started.elapsed().as_secs_f64());
}
