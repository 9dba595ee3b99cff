//! Accept-layer benchmark (issue 14): how long a fresh client from 127.0.0.1
//! takes to connect to syncd and answer one `ListRoutes` (the path an edge
//! takes when it reconnects), quiet and while other addresses flood the gRPC
//! port with sockets that never say a byte. syncd runs with its shipped
//! defaults, in-process, on a throwaway Postgres.
//!
//! Scenarios: quiet; one address (127.0.0.2) reopening silent sockets as
//! fast as syncd closes them; 64 addresses (127.0.0.2-65) each holding as
//! many silent sockets as they are allowed handshakes. Reports latency
//! percentiles of the probe client and what syncd refused meanwhile.
//!
//! Run: `ulimit -n 20000; cargo run --release -p automc-tests --bin automc-accept-bench`
//! (env `ACCEPT_BENCH_PROBES`, default 300).
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use automc_proto::v1::route_sync_client::RouteSyncClient;
use automc_proto::v1::ListRoutesRequest;
use automc_tests::stack::{ensure_fd_limit, metric_sample, migrated_pg, start_syncd};
use tokio::net::TcpSocket;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One fresh connection and one call, timed.
async fn probe(url: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(15))
        .connect()
        .await?;
    RouteSyncClient::new(channel)
        .list_routes(ListRoutesRequest::default())
        .await?;
    Ok(t.elapsed())
}

/// Keep reopening a silent socket from `ip` until `stop`; counts attempts.
async fn silent_peer(ip: IpAddr, to: SocketAddr, stop: Arc<AtomicBool>, attempts: Arc<AtomicU64>) {
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        let Ok(socket) = TcpSocket::new_v4() else {
            return;
        };
        if socket.bind(SocketAddr::new(ip, 0)).is_err() {
            return;
        }
        attempts.fetch_add(1, Ordering::Relaxed);
        let Ok(mut s) = socket.connect(to).await else {
            continue;
        };
        // Hold it without a byte until syncd closes it (refusal or deadline).
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::io::AsyncReadExt::read(&mut s, &mut buf),
        )
        .await;
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ensure_fd_limit(20_000);
    let probes = env_num("ACCEPT_BENCH_PROBES", 300) as usize;
    let pg = migrated_pg().await;
    pg.execute(
        "INSERT INTO servers (name, domain, address, state)
         VALUES ('lobby', 'lobby.example.com', '10.0.0.7:25565', 'running')",
    )
    .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let url = syncd.grpc_url();
    let limits = syncd::accept::Limits::default();
    println!(
        "syncd defaults: handshake timeout {:?}, {} handshakes / {} connections per address, {} in total",
        limits.handshake_timeout,
        limits.max_handshakes_per_peer,
        limits.max_connections_per_peer,
        limits.max_connections
    );
    println!("| scenario | probes | failed | p50 | p90 | p99 | max | flood connects/s | refused (by reason) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let scenarios: [(&str, usize, usize); 3] = [
        ("quiet", 0, 0),
        ("1 address reopening silent sockets (64 at once)", 1, 64),
        (
            "64 addresses, each holding its handshake share",
            64,
            limits.max_handshakes_per_peer,
        ),
    ];
    for (name, addresses, per_address) in scenarios {
        let before = syncd.metrics_text().await;
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicU64::new(0));
        let mut flood = Vec::new();
        for a in 0..addresses {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + a as u8));
            for _ in 0..per_address {
                flood.push(tokio::spawn(silent_peer(
                    ip,
                    syncd.grpc_addr,
                    stop.clone(),
                    attempts.clone(),
                )));
            }
        }
        if addresses > 0 {
            // Let the flood fill its slots before probing.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let started = Instant::now();
        let at_start = attempts.load(Ordering::Relaxed);
        let mut times = Vec::with_capacity(probes);
        let mut failed = 0;
        for _ in 0..probes {
            match probe(&url).await {
                Ok(d) => times.push(d),
                Err(_) => failed += 1,
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let rate = (attempts.load(Ordering::Relaxed) - at_start) as f64 / elapsed;
        stop.store(true, Ordering::Relaxed);
        for f in flood {
            let _ = f.await;
        }
        let after = syncd.metrics_text().await;
        let refused: Vec<String> = syncd::accept::Refusal::ALL
            .iter()
            .filter_map(|r| {
                let sample = format!(
                    "automc_syncd_grpc_connections_refused_total{{reason=\"{}\"}}",
                    r.as_label()
                );
                let n = metric_sample(&after, &sample) - metric_sample(&before, &sample);
                (n > 0.0).then(|| format!("{} {n}", r.as_label()))
            })
            .collect();
        times.sort();
        println!(
            "| {name} | {probes} | {failed} | {:.2?} | {:.2?} | {:.2?} | {:.2?} | {rate:.0} | {} |",
            pct(&times, 0.5),
            pct(&times, 0.9),
            pct(&times, 0.99),
            times.last().copied().unwrap_or_default(),
            if refused.is_empty() {
                "none".to_owned()
            } else {
                refused.join(", ")
            }
        );
    }
    syncd.stop().await;
    Ok(())
}
