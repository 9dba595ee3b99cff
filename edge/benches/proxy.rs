//! Side-by-side benchmark of the player path: direct to a backend, through
//! `edge` (the release binary, fed by a tiny in-process RouteSync fake) in
//! several configurations, and through HAProxy in TCP mode, all on this
//! machine in one run.
//!
//! Run: `ulimit -n 20000; cargo bench -p edge --bench proxy` (HAProxy gets maxconn 9500, which needs 19,017 fds)
//! (env `BENCH_SECS` = seconds per ping measurement, default 3;
//! `BENCH_IDLE` = idle connections, default 8000; `BENCH_BULK_MIB`, default 2048; `BENCH_BULK_ROUNDS`, default 3;
//! `BENCH_FLOOD` = silent connections from one address, default 5000).
//!
//! Measures: status-ping connections per second, latency p50/p99 and the
//! proxy's CPU seconds per 1,000 pings (utime + stime from `/proc/PID/stat`)
//! at 1, 64 and 256 concurrent clients, with the edge's status cache on
//! (default 1 s) and off (`--status-cache-ttl 0s`), each ping a new TCP
//! connection (handshake, status request, response, ping, pong); bulk
//! throughput of one connection with splice on and off
//! (`--splice-pipes 0`), with the CPU seconds per GiB of the proxy and of
//! the bench itself (player and backend) and the ceiling those set on this
//! machine's cores; RSS per idle spliced connection; and a flood of
//! silent connections from 127.0.0.2 against an edge with its production
//! admission limits while a player on 127.0.0.1 asks for status and joins.
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use automc_proto::fake::FakeSyncd;
use automc_proto::v1::*;
use mcproto::{FirstPacket, Handshake, NextState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "bench.example.com";
const STATUS_JSON: &str = r#"{"version":{"name":"bench","protocol":767},"players":{"online":1,"max":100},"description":{"text":"bench backend"}}"#;

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------- backend

/// Connections the backend holds in login mode right now.
static BACKEND_LOGINS: AtomicUsize = AtomicUsize::new(0);

async fn backend(l: TcpListener) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = serve_backend(s).await;
        });
    }
}

async fn serve_backend(mut s: TcpStream) -> Result<(), BoxErr> {
    s.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(512);
    let (hs, len) = loop {
        if let Some(FirstPacket::Modern { handshake, len }) =
            mcproto::parse_first_packet(&buf).map_err(|e| e.reason())?
        {
            break (handshake, len);
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    };
    let mut rest = buf.split_off(len);
    match hs.next_state {
        NextState::Status => loop {
            match mcproto::parse_status_packet(&rest).map_err(|e| e.reason())? {
                Some((mcproto::StatusPacket::Request, n)) => {
                    rest.drain(..n);
                    s.write_all(&mcproto::encode_status_response(STATUS_JSON))
                        .await?;
                }
                Some((mcproto::StatusPacket::Ping(p), _)) => {
                    s.write_all(&mcproto::encode_pong(p)).await?;
                    return Ok(());
                }
                None => {
                    if s.read_buf(&mut rest).await? == 0 {
                        return Ok(());
                    }
                }
            }
        },
        _ => {
            // Login: count every byte until EOF, then report the count.
            BACKEND_LOGINS.fetch_add(1, Ordering::Relaxed);
            let mut total = rest.len() as u64;
            let mut chunk = vec![0u8; 64 * 1024];
            let r = async {
                loop {
                    let n = s.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                s.write_all(&total.to_be_bytes()).await?;
                Ok::<_, std::io::Error>(())
            }
            .await;
            BACKEND_LOGINS.fetch_sub(1, Ordering::Relaxed);
            r?;
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- fake syncd

/// A syncd that serves one route to every edge and then only heartbeats.
async fn fake_syncd(backend: SocketAddr) -> Result<SocketAddr, BoxErr> {
    let mut fake = FakeSyncd::start(automc_proto::fake::no_wakes()).await?;
    let addr = fake.addr;
    tokio::spawn(async move {
        while let Some(watch) = fake.watches.recv().await {
            let snapshot = Snapshot {
                epoch: "bench".into(),
                version: 1,
                routes: vec![Route {
                    server: "bench".into(),
                    hostnames: vec![HOST.into()],
                    address: backend.to_string(),
                    state: "running".into(),
                    ..Route::default()
                }],
                wakes: vec![],
            };
            watch.serve_quietly(
                watch_response::Msg::Snapshot(snapshot),
                "bench".into(),
                1,
                Duration::from_secs(5),
            );
        }
    });
    Ok(addr)
}

// ---------------------------------------------------------------- clients

fn handshake(next: NextState) -> Vec<u8> {
    mcproto::encode_handshake(&Handshake {
        protocol_version: 767,
        server_address: HOST.into(),
        server_port: 25565,
        next_state: next,
    })
}

async fn status_ping(addr: SocketAddr) -> Result<Duration, BoxErr> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut out = handshake(NextState::Status);
    out.extend(mcproto::encode_status_request());
    s.write_all(&out).await?;
    let mut buf = Vec::with_capacity(512);
    let used = loop {
        if let Some((_, n)) =
            mcproto::parse_status_response(&buf, 1 << 20).map_err(|e| e.reason())?
        {
            break n;
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Err("closed before status".into());
        }
    };
    buf.drain(..used);
    s.write_all(&mcproto::encode_ping(7)).await?;
    loop {
        if let Some((7, _)) = mcproto::parse_pong(&buf).map_err(|e| e.reason())? {
            break;
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Err("closed before pong".into());
        }
    }
    Ok(start.elapsed())
}

struct PingResult {
    count: usize,
    rate: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

async fn ping_load(addr: SocketAddr, concurrency: usize, secs: f64) -> PingResult {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            while Instant::now() < until {
                match status_ping(addr).await {
                    Ok(d) => lat.push(d),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    PingResult {
        count: all.len(),
        rate: all.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
    }
}

async fn bulk(addr: SocketAddr, mib: usize) -> Result<f64, BoxErr> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let hs = handshake(NextState::Login);
    s.write_all(&hs).await?;
    let chunk = vec![0x5au8; 1024 * 1024];
    let start = Instant::now();
    for _ in 0..mib {
        s.write_all(&chunk).await?;
    }
    s.shutdown().await?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await?;
    let secs = start.elapsed().as_secs_f64();
    if u64::from_be_bytes(count) != (mib * 1024 * 1024) as u64 {
        return Err("byte count mismatch".into());
    }
    Ok(mib as f64 / 1024.0 / secs)
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The most MiB/s a transfer costing `cpu_per_gib` CPU seconds per GiB
/// (every process it runs through, kernel time included) can reach on
/// `cores` cores, were all of them busy with it and nothing else.
fn ceiling(cores: usize, cpu_per_gib: f64) -> f64 {
    if cpu_per_gib <= 0.0 {
        return f64::INFINITY;
    }
    cores as f64 / cpu_per_gib * 1024.0
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// RSS once it stops moving: read every second until three reads in a row
/// are within 64 KiB of each other (at most 30 s). Freed memory leaves a
/// process on its allocator's schedule (jemalloc's decay is 10 s), so a read
/// right after a burst of work counts garbage as if it were live.
async fn settled_kib(pid: u32) -> Option<u64> {
    let t0 = Instant::now();
    let mut last = rss_kib(pid)?;
    let mut still = 0;
    while still < 3 && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rss_kib(pid)?;
        still = if now.abs_diff(last) > 64 {
            0
        } else {
            still + 1
        };
        last = now;
    }
    Some(last)
}

/// Settled RSS before and while `n` sessions sit idle after their login,
/// and what that is per session.
async fn idle_rss(addr: SocketAddr, pid: u32, n: usize) -> Result<(u64, f64), BoxErr> {
    let before = settled_kib(pid).await.ok_or("no rss")?;
    let base = BACKEND_LOGINS.load(Ordering::Relaxed);
    let mut conns = Vec::with_capacity(n);
    let hs = handshake(NextState::Login);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&hs).await?;
        s.write_all(b"\x05\x00\x03abc").await?;
        conns.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while BACKEND_LOGINS.load(Ordering::Relaxed) < base + n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = settled_kib(pid).await.ok_or("no rss")?;
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(30);
    while BACKEND_LOGINS.load(Ordering::Relaxed) > base && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((
        before,
        after.saturating_sub(before) as f64 * 1024.0 / n as f64,
    ))
}

/// Connect from a chosen loopback address (Linux routes all of 127/8 to lo).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((from, 0)))?;
    s.connect(to).await
}

struct FloodResult {
    opened: usize,
    status: Result<Duration, String>,
    joined: Result<Duration, String>,
}

/// Hold `n` silent connections from 127.0.0.2, then ping and log in from 127.0.0.1.
async fn silent_flood(addr: SocketAddr, n: usize) -> FloodResult {
    use futures::StreamExt;
    let flood: Vec<TcpStream> = futures::stream::iter(0..n)
        .map(|_| connect_from([127, 0, 0, 2], addr))
        .buffer_unordered(128)
        .filter_map(|r| async move { r.ok() })
        .collect()
        .await;
    let status = tokio::time::timeout(Duration::from_secs(10), status_ping(addr))
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let joined = async {
        let start = Instant::now();
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&handshake(NextState::Login)).await?;
        s.write_all(b"\x05\x00\x03abc").await?;
        s.shutdown().await?;
        let mut count = [0u8; 8];
        s.read_exact(&mut count).await?;
        Ok::<_, BoxErr>(start.elapsed())
    };
    let joined = tokio::time::timeout(Duration::from_secs(10), joined)
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let opened = flood.len();
    drop(flood);
    FloodResult {
        opened,
        status,
        joined,
    }
}

// ---------------------------------------------------------------- processes

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<SocketAddr, BoxErr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

async fn wait_serving(addr: SocketAddr) -> Result<(), BoxErr> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), status_ping(addr)).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{addr} never served a status ping").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Start a release `edge` on a free port against the fake syncd.
async fn spawn_edge(syncd: SocketAddr, extra: &[&str]) -> Result<(Proc, SocketAddr), BoxErr> {
    let addr = free_port()?;
    let child = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args([
            "--listen",
            &addr.to_string(),
            "--syncd",
            &format!("http://{syncd}"),
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let proc = Proc(child);
    wait_serving(addr).await?;
    Ok((proc, addr))
}

/// Admission limits off: the bench opens everything from 127.0.0.1.
const NO_LIMITS: [&str; 6] = [
    "--max-connections",
    "0",
    "--max-connections-per-ip",
    "0",
    "--rate-per-ip",
    "0",
];

#[tokio::main]
async fn main() -> Result<(), BoxErr> {
    // `cargo bench` passes `--bench`; nothing to parse.
    let secs = env_num("BENCH_SECS", 3.0);
    let idle_n = env_num("BENCH_IDLE", 8000.0) as usize;
    let bulk_mib = env_num("BENCH_BULK_MIB", 2048.0) as usize;
    let flood_n = env_num("BENCH_FLOOD", 5000.0) as usize;

    let bl = TcpListener::bind("127.0.0.1:0").await?;
    let backend_addr = bl.local_addr()?;
    tokio::spawn(backend(bl));

    let syncd_addr = fake_syncd(backend_addr).await?;
    wait_serving(backend_addr).await?;

    let (edge, edge_addr) = spawn_edge(syncd_addr, &NO_LIMITS).await?;
    let mut args = NO_LIMITS.to_vec();
    args.extend(["--status-cache-ttl", "0s"]);
    let (edge_nocache, nocache_addr) = spawn_edge(syncd_addr, &args).await?;
    let mut args = NO_LIMITS.to_vec();
    args.extend(["--splice-pipes", "0"]);
    let (edge_copy, copy_addr) = spawn_edge(syncd_addr, &args).await?;

    let haproxy_addr = free_port()?;
    let dir = std::env::temp_dir().join(format!("edge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 9500\n\ndefaults\n  mode tcp\n  timeout connect 3s\n  timeout client 1h\n  timeout server 1h\n\n\
             listen mc\n  bind {haproxy_addr}\n  server b1 {backend_addr}\n"
        ),
    )?;
    let haproxy = Proc(
        Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            // Its alerts (e.g. "cannot raise FD limit") say why it would not serve.
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    wait_serving(haproxy_addr).await?;

    let ping_targets = [
        ("direct", backend_addr, None),
        ("edge, status cache 1 s", edge_addr, Some(edge.0.id())),
        (
            "edge, --status-cache-ttl 0s",
            nocache_addr,
            Some(edge_nocache.0.id()),
        ),
        ("haproxy", haproxy_addr, Some(haproxy.0.id())),
    ];

    println!("## status pings ({secs} s per cell, new connection per ping)\n");
    println!(
        "| target | concurrency | pings/s | p50 | p99 | proxy CPU s per 1,000 pings | errors |"
    );
    println!("|---|---|---|---|---|---|---|");
    for c in [1usize, 64, 256] {
        for (name, addr, pid) in &ping_targets {
            let cpu0 = pid.and_then(cpu_secs);
            let r = ping_load(*addr, c, secs).await;
            let cpu = match (pid.and_then(cpu_secs), cpu0) {
                (Some(b), Some(a)) if r.count > 0 => {
                    format!("{:.3}", (b - a) * 1000.0 / r.count as f64)
                }
                _ => "–".into(),
            };
            println!(
                "| {name} | {c} | {:.0} | {:.2} ms | {:.2} ms | {cpu} | {} |",
                r.rate,
                r.p50.as_secs_f64() * 1000.0,
                r.p99.as_secs_f64() * 1000.0,
                r.errors
            );
        }
    }
    drop(edge_nocache);

    // Bulk rounds are interleaved (every target once per round) and each
    // target's median is reported: a single transfer's rate moves by 2x on
    // this shared machine depending on where the scheduler puts the client,
    // the backend and the proxy, more than the targets differ.
    let rounds = env_num("BENCH_BULK_ROUNDS", 3.0).max(1.0) as usize;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("\n## bulk, one connection, {bulk_mib} MiB player → backend, {rounds} rounds\n");
    println!(
        "| target | MiB/s, median | each round | proxy CPU s per GiB, median | \
         bench CPU s per GiB, median | ceiling on {cores} cores, MiB/s |"
    );
    println!("|---|---|---|---|---|---|");
    let bulk_targets = [
        ("direct", backend_addr, None),
        ("edge, splice", edge_addr, Some(edge.0.id())),
        (
            "edge, --splice-pipes 0 (copy)",
            copy_addr,
            Some(edge_copy.0.id()),
        ),
        ("haproxy", haproxy_addr, Some(haproxy.0.id())),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); bulk_targets.len()];
    let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); bulk_targets.len()];
    // The bench's own CPU (the player's writes and the backend's reads) per
    // GiB too: with the proxy's, it bounds what any target can reach when
    // all of them share this machine's cores.
    let mut own: Vec<Vec<f64>> = vec![Vec::new(); bulk_targets.len()];
    let me = std::process::id();
    let mut failed: Vec<Option<String>> = vec![None; bulk_targets.len()];
    for _ in 0..rounds {
        for (i, (_, addr, pid)) in bulk_targets.iter().enumerate() {
            let cpu0 = pid.and_then(cpu_secs);
            let own0 = cpu_secs(me);
            match bulk(*addr, bulk_mib).await {
                Ok(g) => {
                    rates[i].push(g * 1024.0);
                    if let (Some(b), Some(a)) = (pid.and_then(cpu_secs), cpu0) {
                        cpus[i].push((b - a) * 1024.0 / bulk_mib as f64);
                    }
                    if let (Some(b), Some(a)) = (cpu_secs(me), own0) {
                        own[i].push((b - a) * 1024.0 / bulk_mib as f64);
                    }
                }
                Err(e) => failed[i] = Some(e.to_string()),
            }
        }
    }
    for (i, (name, _, _)) in bulk_targets.iter().enumerate() {
        if let Some(e) = &failed[i] {
            println!("| {name} | error: {e} | | | | |");
            continue;
        }
        let each: Vec<String> = rates[i].iter().map(|r| format!("{r:.0}")).collect();
        let proxy = median(&mut cpus[i]);
        let bench = median(&mut own[i]);
        let show = |c: Option<f64>| c.map_or("–".into(), |c| format!("{c:.2}"));
        println!(
            "| {name} | {:.0} | {} | {} | {} | {} |",
            median(&mut rates[i]).unwrap_or_default(),
            each.join(" / "),
            show(proxy),
            show(bench),
            bench.map_or("–".into(), |b| {
                format!("{:.0}", ceiling(cores, b + proxy.unwrap_or_default()))
            }),
        );
    }
    drop(edge_copy);

    println!("\n## RSS per idle spliced connection ({idle_n} connections)\n");
    println!("| target | RSS before (settled) | bytes per connection (settled) |");
    println!("|---|---|---|");
    for (name, addr, pid) in [
        ("edge", edge_addr, edge.0.id()),
        ("haproxy", haproxy_addr, haproxy.0.id()),
    ] {
        match idle_rss(addr, pid, idle_n).await {
            Ok((before, b)) => println!("| {name} | {before} KiB | {b:.0} |"),
            Err(e) => println!("| {name} | – | error: {e} |"),
        }
    }
    drop(edge);
    drop(haproxy);

    // Production admission limits (the defaults).
    let (edge_limits, limits_addr) = spawn_edge(syncd_addr, &[]).await?;
    println!("\n## silent flood from 127.0.0.2 against an edge with its default limits\n");
    let f = silent_flood(limits_addr, flood_n).await;
    let show = |r: &Result<Duration, String>| match r {
        Ok(d) => format!("yes, {:.1} ms", d.as_secs_f64() * 1000.0),
        Err(e) => format!("no: {e}"),
    };
    println!("| silent connections held | 127.0.0.1 gets status | 127.0.0.1 joins |");
    println!("|---|---|---|");
    println!(
        "| {} | {} | {} |",
        f.opened,
        show(&f.status),
        show(&f.joined)
    );
    drop(edge_limits);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
