//! Wake benchmark (issue 5 "measure"): N concurrent logins to one stopped
//! server through two edges, then the waker starts reporting "running".
//! Reports waker POSTs per N logins and the time from "running" to every held
//! player's first bytes at the backend, once through the waker poll only and
//! once with the `state` column flipping to `running` at the same moment.
//!
//! A third scenario is the long hold (issue 17): 1.13+ clients that answer the edge's
//! Login Plugin Requests, the edge and syncd at their defaults, held longer than the
//! vanilla client's 30 s read timeout before `state` flips to `running`.
//!
//! Run: `ulimit -n 20000; cargo run -p automc-tests --bin automc-wake-bench`
//! (env `WAKE_BENCH_LOGINS`, default 1000; `WAKE_BENCH_POLL_MS`, default 2000;
//! `WAKE_BENCH_LONG_HOLD_SECS`, default 40).
use std::time::{Duration, Instant};

use automc_tests::mc::{login, login_answering, BackendOptions, McBackend, DEFAULT_PROTOCOL};
use automc_tests::stack::{migrated_pg, start_edge, start_syncd};
use automc_tests::waker::{Behaviour, FakeWaker};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let n = env_num("WAKE_BENCH_LOGINS", 1000) as usize;
    let poll = Duration::from_millis(env_num("WAKE_BENCH_POLL_MS", 2000));
    let long_hold = Duration::from_secs(env_num("WAKE_BENCH_LONG_HOLD_SECS", 40));
    println!(
        "| scenario | logins | waker POSTs | running → first login's bytes at the backend | running → all |"
    );
    println!("|---|---|---|---|---|");
    // (state flips, long hold)
    for (flip_state, long) in [(false, false), (true, false), (true, true)] {
        let pg = migrated_pg().await;
        let backend = McBackend::start(BackendOptions::default()).await?;
        let server = "mc";
        pg.execute(&format!(
            "INSERT INTO servers (name, domain, address, state) VALUES ('{server}', 'mc.example.com', '{}', 'stopped')",
            backend.addr()
        ))
        .await;
        let waker = FakeWaker::start().await;
        waker.set(server, Behaviour::NeverRuns);
        let url = waker.url();
        let syncd = start_syncd(&pg.dsn(), move |c| {
            if long {
                // syncd's own waker defaults (poll 2 s, wake timeout 90 s).
                c.waker = syncd::WakerConfig::default();
            } else {
                c.waker.poll_interval = poll;
                c.waker.timeout = Duration::from_secs(60);
            }
            c.waker.url = Some(url);
        })
        .await;
        let mut edges = Vec::new();
        for _ in 0..2 {
            let e = start_edge(&[syncd.grpc_url()], |c| {
                if long {
                    // The edge's own timeouts; only the per-address limits stay
                    // off (every login here comes from 127.0.0.1).
                    let d = edge::Config::default();
                    c.handshake_timeout = d.handshake_timeout;
                    c.connect_timeout = d.connect_timeout;
                    c.hold_timeout = d.hold_timeout;
                    c.long_hold_timeout = d.long_hold_timeout;
                    c.hold_keepalive_interval = d.hold_keepalive_interval;
                    c.heartbeat_timeout = d.heartbeat_timeout;
                } else {
                    c.hold_timeout = Duration::from_secs(25);
                    c.connect_timeout = Duration::from_secs(3);
                }
            })
            .await;
            e.ready().await;
            edges.push(e);
        }
        let mut silent = Vec::new();
        let mut answering = Vec::new();
        for i in 0..n {
            let addr = edges[i % edges.len()].listen_addr;
            let name = format!("p{i}");
            if long {
                answering.push(tokio::spawn(async move {
                    login_answering(addr, DEFAULT_PROTOCOL, "mc.example.com", &name).await
                }));
            } else {
                silent.push(tokio::spawn(async move {
                    login(addr, "mc.example.com", &name).await
                }));
            }
        }
        // Wait until every login is held.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let held: f64 = edges
                .iter()
                .map(|e| e.metric("automc_edge_held_logins"))
                .sum();
            if held as usize >= n || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let held: f64 = edges
            .iter()
            .map(|e| e.metric("automc_edge_held_logins"))
            .sum();
        eprintln!("held before release: {held}");
        if long {
            // Past the vanilla client's read timeout: only the keep-alive holds them.
            tokio::time::sleep(long_hold).await;
            let still: f64 = edges
                .iter()
                .map(|e| e.metric("automc_edge_held_logins"))
                .sum();
            eprintln!("held after {} s: {still}", long_hold.as_secs());
        }
        let start = Instant::now();
        waker.set(
            server,
            Behaviour::starts_at(Duration::ZERO, &backend.addr().to_string()),
        );
        if flip_state {
            pg.execute(&format!(
                "UPDATE servers SET state = 'running' WHERE name = '{server}'"
            ))
            .await;
        }
        let first = backend
            .wait_for_logins(1, Duration::from_secs(60))
            .await
            .map(|_| start.elapsed());
        let all = backend
            .wait_for_logins(n, Duration::from_secs(60))
            .await
            .map(|_| start.elapsed());
        let fmt = |r: anyhow::Result<Duration>| match r {
            Ok(d) => format!("{:.0} ms", d.as_secs_f64() * 1000.0),
            Err(_) => "did not finish".into(),
        };
        let scenario = match (flip_state, long) {
            (_, true) => format!(
                "long hold {} s, then state flips to running (defaults)",
                long_hold.as_secs()
            ),
            (true, false) => format!(
                "state column flips to running (poll {} ms)",
                poll.as_millis()
            ),
            (false, false) => format!("waker poll only (poll {} ms)", poll.as_millis()),
        };
        println!(
            "| {scenario} | {n} | {} | {} | {} |",
            waker.posts(server),
            fmt(first),
            fmt(all)
        );
        eprintln!(
            "logins at the backend: {}, wakes ok: {}, other outcomes: {}",
            backend.logins().len(),
            edges
                .iter()
                .map(|e| e.metric("automc_edge_wakes_total{outcome=\"ok\"}"))
                .sum::<f64>(),
            edges
                .iter()
                .map(|e| e
                    .metrics()
                    .lines()
                    .filter(|l| l.starts_with("automc_edge_wakes_total")
                        || l.starts_with("automc_edge_connections_total"))
                    .collect::<Vec<_>>()
                    .join(" "))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        for t in silent {
            let _ = t.await;
        }
        let mut answered = Vec::new();
        for t in answering {
            if let Ok(Ok(held)) = t.await {
                if let Ok((_, n)) = held.into_conn().await {
                    answered.push(n);
                }
            }
        }
        if long {
            // Each answered request is traffic that kept a vanilla client's read timer alive.
            eprintln!(
                "keep-alive requests answered per held client: min {}, max {} ({} clients)",
                answered.iter().min().unwrap_or(&0),
                answered.iter().max().unwrap_or(&0),
                answered.len()
            );
        }
    }
    Ok(())
}
