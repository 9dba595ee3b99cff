//! Fleet players benchmark (issue 15): the release `syncd` and 3 release
//! `edge` processes with their shipped defaults (admission limits off: every
//! player comes from 127.0.0.1), a throwaway Postgres with 1,000 servers,
//! real Minecraft-protocol backends and real player connections (handshake +
//! Login Start, spliced through an edge to a backend that echoes), each
//! group in processes of its own so no process needs more file descriptors
//! than the 20,000 `RLIMIT_NOFILE` allows:
//!
//! - 2 backend processes (`players-bench backend`), 500 servers each;
//! - player processes (`players-bench players`), at most 7,000 players
//!   each, spread over the 3 edges;
//! - this process: Postgres, syncd, the edges, the probes and measuring.
//!
//! Timeline: the players join evenly over a minute (ramp), then for two
//! minutes each player process replaces its players at a rate of all of
//! them once a minute (a player leaves, a new one joins another server).
//! Measured: syncd CPU (share of one core) and RSS in the ramp and in the
//! first churn minute; the bytes per second each edge's sync connection
//! carries (both directions, from the kernel's per-socket counters via
//! `ss`); in the second churn minute, probe players on 50 servers of their
//! own (no other player on them): a probe joins, then leaves, and the time
//! from its close until `ListServers` shows its server at 0 players (and
//! from its join until it shows 1). At the end every player leaves at once:
//! the time until `ListServers` counts nobody.
//!
//! Run (from the repository root):
//! `cargo build --release -p syncd -p edge && cargo build --release -p automc-tests --bin automc-players-bench && target/release/automc-players-bench [PLAYERS]`
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use automc_proto::v1::route_sync_client::RouteSyncClient;
use automc_proto::v1::ListServersRequest;
use automc_tests::mc::{login, BackendOptions, LoginMode, McBackend, McConn};
use automc_tests::pg::TestPg;
use automc_tests::procs::{cpu_secs, edge_args, rss_mib, Proc};
use automc_tests::stack::ensure_fd_limit;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tonic::transport::Channel;

const SERVERS: usize = 1000;
/// Servers of the probes alone (named to sort first in `ListServers`).
const PROBE_SERVERS: usize = 50;
const EDGES: usize = 3;
const BACKENDS: usize = 2;
const PER_PLAYER_PROCESS: usize = 7000;
const DEFAULT_PLAYERS: usize = 20_000;
const RAMP: Duration = Duration::from_secs(60);
const CHURN: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(5);

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

fn load() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<&str> = l.split_whitespace().take(3).collect();
    v.join(" ")
}

fn probe_name(i: usize) -> String {
    format!("a-probe-{i:02}")
}

fn load_name(i: usize) -> String {
    format!("s{i}")
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn summary(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    v.sort();
    format!(
        "p50 {}, p90 {}, p99 {}, max {} ({} samples)",
        ms(pct(&v, 0.5)),
        ms(pct(&v, 0.9)),
        ms(pct(&v, 0.99)),
        ms(*v.last().expect("samples")),
        v.len()
    )
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("backend") => backend().await,
        Some("players") => players(&args[1..]).await,
        _ => coordinator(args.first().map(|a| a.parse().expect("player count"))).await,
    }
}

// ============================================================== child roles

/// Until stdin closes (the coordinator went away or said so).
async fn until_stdin_closes() {
    let mut line = String::new();
    let _ = BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await;
}

/// A backend process: one echoing Minecraft backend, its address on stdout.
async fn backend() {
    ensure_fd_limit(12_000);
    let b = McBackend::start(BackendOptions {
        login: LoginMode::Echo,
        ..BackendOptions::default()
    })
    .await
    .expect("start backend");
    println!("listening {}", b.addr());
    until_stdin_closes().await;
    b.stop();
}

/// A player process: `players TAG SEED COUNT EDGE,EDGE,EDGE FIRST..LAST`.
/// Joins COUNT players evenly over [`RAMP`] to servers `s{FIRST..=LAST}`
/// through the edges in turn, prints `ramped`, replaces players at COUNT
/// a minute for [`CHURN`], prints `churned`, and holds the rest until stdin
/// closes.
async fn players(args: &[String]) {
    let [tag, seed, count, edges, range] = args else {
        panic!("players TAG SEED COUNT EDGES FIRST..LAST");
    };
    let count: usize = count.parse().expect("count");
    let edges: Vec<SocketAddr> = edges
        .split(',')
        .map(|e| e.parse().expect("edge address"))
        .collect();
    let (first, last) = range.split_once("..").expect("FIRST..LAST");
    let (first, last): (usize, usize) =
        (first.parse().expect("first"), last.parse().expect("last"));
    ensure_fd_limit(count as u64 + 1000);
    let mut rng = StdRng::seed_from_u64(seed.parse().expect("seed"));
    let mut serial = 0usize;
    let mut failed = 0usize;
    let join = |rng: &mut StdRng, serial: &mut usize| {
        *serial += 1;
        let server = load_name(rng.random_range(first..=last));
        let edge = edges[*serial % edges.len()];
        let name = format!("{tag}{serial}");
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                login(edge, &format!("{server}.example.com"), &name),
            )
            .await
            .ok()
            .and_then(Result::ok)
        }
    };
    let mut slots: Vec<Option<McConn>> = Vec::with_capacity(count);
    let start = tokio::time::Instant::now();
    for i in 0..count {
        tokio::time::sleep_until(start + RAMP.mul_f64(i as f64 / count as f64)).await;
        let conn = join(&mut rng, &mut serial).await;
        failed += usize::from(conn.is_none());
        slots.push(conn);
    }
    println!("ramped joined={} failed={failed}", count - failed);
    let every = Duration::from_secs(60).div_f64(count as f64);
    let start = tokio::time::Instant::now();
    let mut replaced = 0usize;
    let mut failed = 0usize;
    while start.elapsed() < CHURN {
        tokio::time::sleep_until(start + every.mul_f64(replaced as f64)).await;
        let i = rng.random_range(0..count);
        drop(slots[i].take());
        let conn = join(&mut rng, &mut serial).await;
        failed += usize::from(conn.is_none());
        slots[i] = conn;
        replaced += 1;
    }
    println!("churned replaced={replaced} failed={failed}");
    until_stdin_closes().await;
    drop(slots);
}

// ============================================================== coordinator

struct ChildProc {
    child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl ChildProc {
    fn spawn(args: &[String]) -> Self {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn child");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self { child, lines }
    }

    /// The next line the child printed that starts with `prefix`.
    async fn expect(&mut self, prefix: &str) -> String {
        loop {
            match self.lines.next_line().await.expect("child stdout") {
                Some(l) if l.starts_with(prefix) => return l,
                Some(_) => {}
                None => panic!("child exited before printing {prefix:?}"),
            }
        }
    }

    /// Close its stdin: it drops everything and exits.
    async fn quit(&mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.shutdown().await;
        }
    }
}

/// Bytes sent and received on the sync connection of each process in
/// `pids` to syncd's `port`, from the kernel's per-socket counters.
async fn sync_bytes(pids: &[u32], port: u16) -> Vec<(u64, u64)> {
    let out = Command::new("ss")
        .args([
            "-tinpH",
            "state",
            "established",
            "dport",
            &format!("= :{port}"),
        ])
        .output()
        .await
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut per = vec![(0u64, 0u64); pids.len()];
    let mut owner: Option<usize> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            owner = pids
                .iter()
                .position(|p| line.contains(&format!("pid={p},")));
            continue;
        }
        let Some(i) = owner else { continue };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|t| t.strip_prefix(name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        per[i].0 += field("bytes_sent:");
        per[i].1 += field("bytes_received:");
    }
    per
}

/// `ListServers`, every page: (total players, players per probe server).
async fn fleet_players(c: &mut RouteSyncClient<Channel>) -> (u64, Vec<u32>) {
    let mut total = 0u64;
    let mut probes = vec![0u32; PROBE_SERVERS];
    let mut token = String::new();
    loop {
        let page = c
            .list_servers(ListServersRequest {
                page_size: 10_000,
                page_token: token,
            })
            .await
            .expect("ListServers")
            .into_inner();
        for s in &page.servers {
            total += u64::from(s.players);
            if let Some(i) = (0..PROBE_SERVERS).find(|i| probe_name(*i) == s.server) {
                probes[i] = s.players;
            }
        }
        if page.next_page_token.is_empty() {
            return (total, probes);
        }
        token = page.next_page_token;
    }
}

/// Players on probe server `i`, from the first `ListServers` page (the
/// probe servers sort first).
async fn probe_players(c: &mut RouteSyncClient<Channel>, i: usize) -> u32 {
    let page = c
        .list_servers(ListServersRequest {
            page_size: PROBE_SERVERS as u32,
            page_token: String::new(),
        })
        .await
        .expect("ListServers")
        .into_inner();
    let name = probe_name(i);
    page.servers
        .iter()
        .find(|s| s.server == name)
        .map_or(0, |s| s.players)
}

/// Poll until probe server `i` shows `want` players; how long it took.
async fn probe_shows(c: &mut RouteSyncClient<Channel>, i: usize, want: u32) -> Duration {
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(30);
    while probe_players(c, i).await != want {
        assert!(
            Instant::now() < end,
            "{} never showed {want} players",
            probe_name(i)
        );
        tokio::time::sleep(POLL).await;
    }
    t0.elapsed()
}

/// syncd CPU (share of one core), per-edge bytes/s up and down, over `f`.
struct Window {
    at: Instant,
    cpu: f64,
    bytes: Vec<(u64, u64)>,
}

impl Window {
    async fn open(syncd: u32, edges: &[u32], port: u16) -> Self {
        Self {
            at: Instant::now(),
            cpu: cpu_secs(syncd),
            bytes: sync_bytes(edges, port).await,
        }
    }

    async fn close(self, syncd: u32, edges: &[u32], port: u16) -> String {
        let secs = self.at.elapsed().as_secs_f64();
        let cpu = (cpu_secs(syncd) - self.cpu) / secs * 100.0;
        let now = sync_bytes(edges, port).await;
        let per: Vec<String> = now
            .iter()
            .zip(&self.bytes)
            .map(|(n, b)| {
                format!(
                    "{:.0} / {:.0}",
                    (n.0 - b.0) as f64 / secs,
                    (n.1 - b.1) as f64 / secs
                )
            })
            .collect();
        format!(
            "syncd CPU {cpu:.1} % of one core, RSS {:.0} MiB | edge → syncd / syncd → edge, bytes/s: {} | load {}",
            rss_mib(syncd),
            per.join("; "),
            load()
        )
    }
}

async fn coordinator(players: Option<usize>) {
    let started = Instant::now();
    let players = players.unwrap_or(DEFAULT_PLAYERS);
    ensure_fd_limit(20_000);
    let dir = bin_dir();
    let mut report = format!(
        "players-bench: {SERVERS} servers ({PROBE_SERVERS} for probes), {EDGES} edges, {players} players; load at start {}\n",
        load()
    );

    let mut backends = Vec::new();
    let mut backend_addrs = Vec::new();
    for _ in 0..BACKENDS {
        let mut b = ChildProc::spawn(&["backend".into()]);
        let line = b.expect("listening ").await;
        backend_addrs.push(line.trim_start_matches("listening ").to_owned());
        backends.push(b);
    }

    let pg = TestPg::start().await;
    syncd::migrate(&pg.dsn()).await.expect("migrate");
    let client = pg.client().await;
    let insert = client
        .prepare(
            "INSERT INTO servers (name, domain, address, state) VALUES ($1, $2, $3, 'running')",
        )
        .await
        .expect("prepare");
    let names: Vec<String> = (0..PROBE_SERVERS)
        .map(probe_name)
        .chain((1..=SERVERS - PROBE_SERVERS).map(load_name))
        .collect();
    for (i, name) in names.iter().enumerate() {
        let domain = format!("{name}.example.com");
        let address = &backend_addrs[i % BACKENDS];
        client
            .execute(&insert, &[name, &domain, address])
            .await
            .expect("insert server");
    }

    // syncd with its shipped defaults (heartbeats and all).
    let syncd_args: Vec<String> = [
        "serve",
        "--database-url",
        &pg.dsn(),
        "--grpc-listen",
        "{main}",
        "--http-listen",
        "{http}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let syncd = Proc::spawn_from(&dir, "syncd", &syncd_args, &[("RUST_LOG", "warn")]).await;
    syncd.wait_ready().await;
    let spid = syncd.pid().expect("syncd pid");
    let port = syncd.main_addr.port();
    let url = format!("http://{}", syncd.main_addr);
    let mut c = RouteSyncClient::connect(url.clone())
        .await
        .expect("connect syncd");
    let mut edges = Vec::new();
    for i in 0..EDGES {
        let e = Proc::spawn_from(
            &dir,
            "edge",
            &edge_args(&url, &["--edge-id", &format!("edge-{i}")]),
            &[("RUST_LOG", "warn")],
        )
        .await;
        e.wait_ready().await;
        edges.push(e);
    }
    let epids: Vec<u32> = edges.iter().map(|e| e.pid().expect("edge pid")).collect();
    let edge_list = edges
        .iter()
        .map(|e| e.main_addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    report.push_str(&format!(
        "syncd idle (1,000 routes, 3 edges, no player): RSS {:.0} MiB\n",
        rss_mib(spid)
    ));

    // Player processes, ramp.
    let procs = players.div_ceil(PER_PLAYER_PROCESS).max(1);
    let mut player_procs = Vec::new();
    let win = Window::open(spid, &epids, port).await;
    for p in 0..procs {
        let n = players / procs + usize::from(p < players % procs);
        player_procs.push(ChildProc::spawn(&[
            "players".into(),
            format!("p{p}_"),
            (p as u64 + 1).to_string(),
            n.to_string(),
            edge_list.clone(),
            format!("1..{}", SERVERS - PROBE_SERVERS),
        ]));
    }
    let mut ramp_lines = Vec::new();
    for p in &mut player_procs {
        ramp_lines.push(p.expect("ramped").await);
    }
    let ramp = win.close(spid, &epids, port).await;
    report.push_str(&format!(
        "ramp ({players} players joining over {RAMP:?} in {procs} processes: {}): {ramp}\n",
        ramp_lines.join(", ")
    ));
    let (seen, _) = fleet_players(&mut c).await;
    report.push_str(&format!(
        "ListServers right after the ramp: {seen} players across the fleet\n"
    ));
    eprint!("{report}");

    // Churn, first minute: measure only.
    let win = Window::open(spid, &epids, port).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let churn = win.close(spid, &epids, port).await;
    report.push_str(&format!(
        "churn minute 1 (every player replaced once a minute, no probes): {churn}\n"
    ));
    let (seen, _) = fleet_players(&mut c).await;
    report.push_str(&format!(
        "ListServers after churn minute 1: {seen} players\n"
    ));
    eprint!("{report}");

    // Churn, second minute: probes.
    let mut leave = Vec::new();
    let mut join = Vec::new();
    let mut failed = 0usize;
    let win = Window::open(spid, &epids, port).await;
    let probe_end = Instant::now() + Duration::from_secs(55);
    let mut i = 0usize;
    while Instant::now() < probe_end {
        let server = i % PROBE_SERVERS;
        let edge = edges[i % EDGES].main_addr;
        let t0 = Instant::now();
        let Ok(conn) = login(
            edge,
            &format!("{}.example.com", probe_name(server)),
            &format!("probe{i}"),
        )
        .await
        else {
            failed += 1;
            i += 1;
            continue;
        };
        probe_shows(&mut c, server, 1).await;
        join.push(t0.elapsed());
        let t0 = Instant::now();
        drop(conn);
        probe_shows(&mut c, server, 0).await;
        leave.push(t0.elapsed());
        i += 1;
    }
    let probe_win = win.close(spid, &epids, port).await;
    report.push_str(&format!(
        "churn minute 2, with probes polling ListServers every {POLL:?}: {probe_win}\n\
         probe leaves → ListServers shows it: {}\n\
         probe joins → ListServers shows it: {}; failed probe logins: {failed}\n",
        summary(leave),
        summary(join)
    ));
    let mut churn_lines = Vec::new();
    for p in &mut player_procs {
        churn_lines.push(p.expect("churned").await);
    }
    report.push_str(&format!("player processes: {}\n", churn_lines.join(", ")));
    let (seen, _) = fleet_players(&mut c).await;

    // Everyone leaves at once.
    let t0 = Instant::now();
    for p in &mut player_procs {
        p.quit().await;
    }
    let end = t0 + Duration::from_secs(120);
    let mut total;
    loop {
        (total, _) = fleet_players(&mut c).await;
        if total == 0 || Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.push_str(&format!(
        "all {seen} players leave at once → ListServers shows {total} after {} (load {})\n",
        ms(t0.elapsed()),
        load()
    ));
    for b in &mut backends {
        b.quit().await;
    }
    drop(edges);
    drop(syncd);
    println!("{report}");
    println!("total bench time: {:.1} s", started.elapsed().as_secs_f64());
}
