//! Fleet benchmark: the release `syncd` and real release `edge` processes,
//! each its own process with its shipped defaults, against a throwaway
//! Postgres. For each table size (default 100,000 and 1,000,000 routes):
//!
//! - a new edge from spawn to ready (`/readyz` 200: whole table applied);
//! - one-row commit → applied at every one of 3 edges, measured three ways:
//!   (a) from the processes' own logs, no polling at all: the instant each
//!   edge logged "applied route delta" for the new version, and the instant
//!   syncd logged publishing it, against the instant before the `UPDATE`
//!   (same clock, microsecond log timestamps), which also splits the time
//!   into commit → syncd published → edges applied; (b) each edge's
//!   applied version polled through its `EdgeAdmin.GetSyncStatus`; (c) the
//!   edges' acknowledged versions polled through syncd's `ListEdges`;
//! - a burst of 10,000 one-row commits (4 connections) → every edge holds
//!   all of them (each edge's `GetSyncStatus` version reaches syncd's);
//! - syncd RSS with the table and no edge, with 3 edges, and (100k only)
//!   per edge with 50 more edges connecting at once, plus how long those
//!   50 take to all be ready (all acknowledged the table in syncd's
//!   `ListEdges`, polled every 10 ms; each then answers `/readyz` 200);
//!   edge RSS.
//!
//! Every line carries the load average when it was measured (the machine
//! may be shared).
//!
//! Run (from the repository root):
//! `cargo build --release -p syncd -p edge && cargo build --release -p automc-tests --bin automc-fleet-bench && target/release/automc-fleet-bench [ROUTES...]`
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use automc_proto::v1::edge_admin_client::EdgeAdminClient;
use automc_proto::v1::route_sync_client::RouteSyncClient;
use automc_proto::v1::{
    GetRouteRequest, GetSyncStatusRequest, ListEdgesRequest, ListRoutesRequest,
};
use automc_tests::pg::TestPg;
use automc_tests::procs::{cpu_secs, edge_args, rss_mib, syncd_args, Output, Proc};
use automc_tests::stack::http_get;
use tonic::transport::Channel;

const CHANGES: usize = 200;
const BURST: usize = 10_000;
const BURST_CONNECTIONS: usize = 4;
const CROWD: usize = 50;
/// The three measured edges log each applied delta (debug), syncd each
/// publish; everything else at warn.
const EDGE_LOG: &str = "warn,edge::sync_client=debug";
const SYNCD_LOG: &str = "warn,syncd::pg=debug";

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

/// The 1, 5 and 15 minute load averages.
fn load() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<&str> = l.split_whitespace().take(3).collect();
    format!("load {}", v.join(" "))
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

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "p50 {}, p99 {}, max {}",
        ms(pct(&v, 0.5)),
        ms(pct(&v, 0.99)),
        ms(*v.last().expect("samples"))
    )
}

async fn spawn_edge(dir: &std::path::Path, syncd: &str, id: String, log: &str) -> Proc {
    Proc::spawn_from(
        dir,
        "edge",
        &edge_args(syncd, &["--edge-id", &id]),
        &[("RUST_LOG", log)],
    )
    .await
}

/// Poll `/readyz` every `every` until 200; the instant it first answered.
async fn ready_at(edge: &Proc, every: Duration) -> Instant {
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok((200, _)) = http_get(edge.http_addr, "/readyz").await {
            return Instant::now();
        }
        assert!(Instant::now() < end, "edge never ready");
        tokio::time::sleep(every).await;
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

/// Wait until every edge named `ids` acknowledged `version` in `ListEdges`,
/// asking every `every`.
async fn all_acked(
    c: &mut RouteSyncClient<Channel>,
    ids: &[String],
    version: u64,
    every: Duration,
    procs: &mut [Proc],
) {
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
        if let Some(why) = procs.iter_mut().find_map(Proc::exited) {
            panic!("an edge of the crowd {why}");
        }
        assert!(Instant::now() < end, "edges never acked {version}");
        tokio::time::sleep(every).await;
    }
}

async fn admin(edge: &Proc) -> EdgeAdminClient<Channel> {
    EdgeAdminClient::connect(format!("http://{}", edge.grpc_addr))
        .await
        .expect("connect EdgeAdmin")
}

/// Wait until every edge's own applied version (`GetSyncStatus`) is at
/// least `version`, polling all of them at once.
async fn all_applied(admins: &mut [EdgeAdminClient<Channel>], version: u64) {
    let end = Instant::now() + Duration::from_secs(300);
    let mut done = vec![false; admins.len()];
    loop {
        let polls = admins
            .iter_mut()
            .zip(done.iter())
            .filter(|(_, d)| !**d)
            .map(|(a, _)| async move {
                a.get_sync_status(GetSyncStatusRequest {})
                    .await
                    .expect("GetSyncStatus")
                    .into_inner()
                    .version
            });
        let versions = futures::future::join_all(polls).await;
        let mut v = versions.into_iter();
        for d in done.iter_mut().filter(|d| !**d) {
            *d = v.next().is_some_and(|got| got >= version);
        }
        if done.iter().all(|d| *d) {
            return;
        }
        assert!(Instant::now() < end, "edges never applied {version}");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// The timestamp a log line starts with (the default text format).
fn log_time(line: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(line.split_whitespace().next()?).ok()
}

/// `version=N` in a log line.
fn log_version(line: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix("version="))
        .and_then(|v| v.parse().ok())
}

/// Follows one process's log for a line with `what` and `version=N`.
struct LogWatch {
    output: Output,
    from: usize,
}

impl LogWatch {
    fn new(output: &Output) -> Self {
        Self {
            output: output.clone(),
            from: output.lines_from(0).len(),
        }
    }

    /// The timestamp of the first new line saying `what` for `version`.
    fn find(&mut self, what: &str, version: u64) -> Option<SystemTime> {
        let lines = self.output.lines_from(self.from);
        for (i, l) in lines.iter().enumerate() {
            if l.contains(what) && log_version(l) == Some(version) {
                self.from += i + 1;
                return log_time(l);
            }
        }
        self.from += lines.len();
        None
    }
}

/// RSS (MiB) of each of `pids` once it has stopped falling: the binaries'
/// allocator (jemalloc) hands freed pages back after a decay of ~10 s, so
/// a reading right after a burst of work is not the idle figure. Samples
/// every second until no process moved by more than 0.5 MiB for 15
/// samples in a row, longer than that decay (at most 90 s); returns the
/// readings and the wait.
async fn settled_rss(pids: &[u32]) -> (Vec<f64>, Duration) {
    let t0 = Instant::now();
    let mut last: Vec<f64> = pids.iter().map(|p| rss_mib(*p)).collect();
    let mut still = 0;
    while still < 15 && t0.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now: Vec<f64> = pids.iter().map(|p| rss_mib(*p)).collect();
        let moved = now.iter().zip(&last).any(|(a, b)| (a - b).abs() > 0.5);
        still = if moved { 0 } else { still + 1 };
        last = now;
    }
    (last, t0.elapsed())
}

fn since(t0: SystemTime, t: SystemTime) -> Duration {
    t.duration_since(t0).unwrap_or(Duration::ZERO)
}

async fn run(dir: &std::path::Path, routes: usize, report: &mut String) {
    let pg = TestPg::start().await;
    syncd::migrate(&pg.dsn()).await.expect("migrate");
    seed(&pg, routes).await;
    let syncd = Proc::spawn_from(
        dir,
        "syncd",
        &syncd_args(&pg.dsn(), &[]),
        &[("RUST_LOG", SYNCD_LOG)],
    )
    .await;
    let t0 = Instant::now();
    syncd.wait_ready_within(Duration::from_secs(600)).await;
    let loaded = t0.elapsed();
    let spid = syncd.pid().expect("syncd pid");
    let url = format!("http://{}", syncd.main_addr);
    let mut c = RouteSyncClient::connect(url.clone())
        .await
        .expect("connect");
    let syncd_ready = rss_mib(spid);
    let (idle, waited) = settled_rss(&[spid]).await;
    report.push_str(&format!(
        "| {routes} routes | syncd start → ready (first read of the table) | {} | {} |\n\
         | {routes} routes | syncd RSS, table loaded, no edge | {:.0} MiB settled ({:.0} s after ready; {syncd_ready:.0} MiB at ready) | |\n",
        ms(loaded),
        load(),
        idle[0],
        waited.as_secs_f64(),
    ));

    // Three edges, one after the other: connect → ready.
    let mut edges = Vec::new();
    let mut ready_times = Vec::new();
    let ids: Vec<String> = (0..3).map(|i| format!("edge-{i}")).collect();
    for id in &ids {
        let t0 = Instant::now();
        let e = spawn_edge(dir, &url, id.clone(), EDGE_LOG).await;
        ready_times.push(ready_at(&e, Duration::from_millis(2)).await - t0);
        edges.push(e);
    }
    let v = table_version(&mut c).await;
    all_acked(&mut c, &ids, v, Duration::from_micros(200), &mut edges).await;
    let mut pids = vec![spid];
    pids.extend(edges.iter().map(|e| e.pid().expect("pid")));
    let (settled, _) = settled_rss(&pids).await;
    let (syncd_3, edge_rss) = (settled[0], &settled[1..]);
    report.push_str(&format!(
        "| {routes} routes | new edge spawn → ready (3 edges one after the other) | {} / {} / {} | {} |\n",
        ms(ready_times[0]),
        ms(ready_times[1]),
        ms(ready_times[2]),
        load()
    ));
    report.push_str(&format!(
        "| {routes} routes | RSS with 3 edges connected | syncd {syncd_3:.0} MiB; edges {:.0} / {:.0} / {:.0} MiB | {} |\n",
        edge_rss[0],
        edge_rss[1],
        edge_rss[2],
        load()
    ));
    eprint!("{report}");

    let pgc = pg.client().await;
    let stmt = pgc
        .prepare("UPDATE servers SET address = $1 WHERE name = $2")
        .await
        .expect("prepare");
    let mut admins = Vec::new();
    for e in &edges {
        admins.push(admin(e).await);
    }
    let mut n = 0usize;
    let mut next_change = || {
        n += 1;
        let name = format!("s{}", 1 + (n * 7919) % routes);
        let addr = format!("10.9.{}.{}:{}", n / 250 % 250, n % 250, 20000 + n % 40000);
        (name, addr)
    };

    // (a) From the logs: nothing polls the processes.
    let mut commit = Vec::with_capacity(CHANGES);
    let mut published = Vec::with_capacity(CHANGES);
    let mut applied_all = Vec::with_capacity(CHANGES);
    let mut fan_out = Vec::with_capacity(CHANGES);
    let mut syncd_log = LogWatch::new(&syncd.output);
    let mut edge_logs: Vec<LogWatch> = edges.iter().map(|e| LogWatch::new(&e.output)).collect();
    for _ in 0..CHANGES {
        let (name, addr) = next_change();
        let want = table_version(&mut c).await + 1;
        let t0 = SystemTime::now();
        let i0 = Instant::now();
        pgc.execute(&stmt, &[&addr, &name]).await.expect("update");
        commit.push(i0.elapsed());
        let end = Instant::now() + Duration::from_secs(60);
        let mut pub_at = None;
        let mut at: Vec<Option<SystemTime>> = vec![None; edges.len()];
        while pub_at.is_none() || at.iter().any(Option::is_none) {
            if pub_at.is_none() {
                pub_at = syncd_log.find("routes changed", want);
            }
            for (slot, log) in at.iter_mut().zip(edge_logs.iter_mut()) {
                if slot.is_none() {
                    *slot = log.find("applied route delta", want);
                }
            }
            assert!(
                Instant::now() < end,
                "version {want} not in every log within 60 s (published: {pub_at:?}, edges: {at:?})"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let pub_at = pub_at.expect("published");
        let last = at.iter().flatten().max().copied().expect("edges");
        published.push(since(t0, pub_at));
        applied_all.push(since(t0, last));
        fan_out.push(since(pub_at, last));
    }
    report.push_str(&format!(
        "| {routes} routes | one-row commit → applied at all 3 edges, from the logs ({CHANGES} commits) | {} | {} |\n",
        summary(applied_all),
        load()
    ));
    report.push_str(&format!(
        "| {routes} routes | … of which `UPDATE` round trip (autocommit) | {} | |\n\
         | {routes} routes | … commit → syncd published (LISTEN, re-read, diff) | {} | |\n\
         | {routes} routes | … syncd published → last of 3 edges applied | {} | |\n",
        summary(commit),
        summary(published),
        summary(fan_out),
    ));

    // (b) Each edge's applied version, polled through EdgeAdmin.
    let mut lat = Vec::with_capacity(CHANGES);
    for _ in 0..CHANGES {
        let (name, addr) = next_change();
        let want = table_version(&mut c).await + 1;
        let t0 = Instant::now();
        pgc.execute(&stmt, &[&addr, &name]).await.expect("update");
        all_applied(&mut admins, want).await;
        lat.push(t0.elapsed());
    }
    report.push_str(&format!(
        "| {routes} routes | one-row commit → applied at all 3 edges, polling each edge's GetSyncStatus ({CHANGES} commits) | {} | {} |\n",
        summary(lat),
        load()
    ));

    // (c) The edges' acks, polled through syncd's ListEdges.
    let mut lat = Vec::with_capacity(CHANGES);
    for _ in 0..CHANGES {
        let (name, addr) = next_change();
        let want = table_version(&mut c).await + 1;
        let t0 = Instant::now();
        pgc.execute(&stmt, &[&addr, &name]).await.expect("update");
        all_acked(&mut c, &ids, want, Duration::from_micros(200), &mut edges).await;
        lat.push(t0.elapsed());
    }
    report.push_str(&format!(
        "| {routes} routes | one-row commit → acked by all 3 edges, polling syncd's ListEdges ({CHANGES} commits) | {} | {} |\n",
        summary(lat),
        load()
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
                // Each connection has its own rows (so its last write to
                // a row is the row's last), spread over the table.
                let per = routes / BURST_CONNECTIONS;
                let name = format!("s{}", 1 + k + BURST_CONNECTIONS * ((j * 104_729) % per));
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
    all_applied(&mut admins, v).await;
    let all = t0.elapsed();
    report.push_str(&format!(
        "| {routes} routes | burst of {BURST} one-row commits ({BURST_CONNECTIONS} connections) | committed in {}; every edge holds all of them after {} | {} |\n",
        ms(committed),
        ms(all),
        load()
    ));
    let edge_rss: Vec<f64> = edges
        .iter()
        .map(|e| rss_mib(e.pid().expect("pid")))
        .collect();
    report.push_str(&format!(
        "| {routes} routes | RSS after the burst | syncd {:.0} MiB; edges {:.0} / {:.0} / {:.0} MiB | |\n",
        rss_mib(spid),
        edge_rss[0],
        edge_rss[1],
        edge_rss[2],
    ));
    eprint!("{report}");

    // 50 more edges at once (100k only: 50 processes × a 1M table is more
    // memory than this machine has to spare).
    if routes <= 100_000 {
        // Twice: a VM's guest memory that no process touched lately is
        // slow to touch again (the host backs it on first use), and 50
        // edges take ~2.5 GiB of it, so the first crowd also measures the
        // machine; the second starts on memory the first just gave back.
        for round in ["first", "second"] {
            crowd(&mut c, dir, &url, spid, routes, round, report).await;
        }
    }
    eprint!("{report}");
    drop(edges);
    drop(syncd);
}

/// [`CROWD`] edges spawned at once: time until all applied the table, CPU,
/// syncd memory per edge; then they are stopped.
async fn crowd(
    c: &mut RouteSyncClient<Channel>,
    dir: &std::path::Path,
    url: &str,
    spid: u32,
    routes: usize,
    round: &str,
    report: &mut String,
) {
    let before = settled_rss(&[spid]).await.0[0];
    let v = table_version(c).await;
    let ids: Vec<String> = (0..CROWD).map(|i| format!("crowd-{round}-{i}")).collect();
    let syncd_cpu0 = cpu_secs(spid);
    let t0 = Instant::now();
    // Not one `/healthz` poll each every 20 ms while they start, as
    // `spawn_edge` does (runs 1-13: 2,500 HTTP requests a second on the
    // two cores being measured); an edge that did not come up is reported.
    let mut spawned: Vec<Proc> = ids
        .iter()
        .map(|id| {
            Proc::spawn_unwatched(
                dir,
                "edge",
                &edge_args(url, &["--edge-id", id]),
                &[("RUST_LOG", "warn")],
            )
        })
        .collect();
    let spawned_in = t0.elapsed();
    // Ready = acknowledged the table's version, which an edge sends right
    // after applying the whole table (when `/readyz` turns 200), seen
    // through one `ListEdges` call every 10 ms. Polling each of the 50
    // edges' `/readyz` every 10 ms instead was itself 5,000 HTTP requests a
    // second on the two cores being measured (runs 1-8).
    all_acked(c, &ids, v, Duration::from_millis(10), &mut spawned).await;
    let ready = t0.elapsed();
    let syncd_cpu = cpu_secs(spid) - syncd_cpu0;
    for e in &spawned {
        assert_eq!(
            http_get(e.http_addr, "/readyz").await.ok().map(|r| r.0),
            Some(200),
            "an edge acknowledged the table but is not ready"
        );
    }
    let edge_cpu: Vec<f64> = spawned
        .iter()
        .filter_map(|e| e.pid())
        .map(cpu_secs)
        .collect();
    let edge_cpu_sum: f64 = edge_cpu.iter().sum();
    let syncd_crowd = settled_rss(&[spid]).await.0[0];
    report.push_str(&format!(
        "| {routes} routes | {CROWD} edges spawned at once, all ready ({round} crowd) | {} (all {CROWD} spawned after {}) | {} |\n\
         | {routes} routes | CPU until all {CROWD} ready ({round} crowd) | syncd {syncd_cpu:.2} s; edges {edge_cpu_sum:.2} s in all ({:.0} ms each) | |\n\
         | {routes} routes | syncd RSS with {} edges connected ({round} crowd) | {syncd_crowd:.0} MiB: {:.0} KiB per edge over the figure before | |\n",
        ms(ready),
        ms(spawned_in),
        load(),
        edge_cpu_sum * 1000.0 / edge_cpu.len().max(1) as f64,
        CROWD + 3,
        (syncd_crowd - before) * 1024.0 / CROWD as f64
    ));
    for e in &mut spawned {
        e.kill().await;
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
    let mut report =
        String::from("| table | measure | result | load average |\n|---|---|---|---|\n");
    for routes in sizes {
        run(&dir, routes, &mut report).await;
    }
    println!("{report}");
    println!("total bench time: {:.1} s", started.elapsed().as_secs_f64());
}
