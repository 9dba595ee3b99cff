//! Wake benchmark (issue 5 "measure"): N concurrent logins to one stopped
//! server through two edges, then the waker starts reporting "running".
//! Reports waker POSTs per N logins and the time from "running" to every held
//! player's first bytes at the backend, once through the waker poll only and
//! once with the `state` column flipping to `running` at the same moment.
//!
//! Run: `ulimit -n 20000; cargo run -p automc-tests --bin automc-wake-bench`
//! (env `WAKE_BENCH_LOGINS`, default 1000; `WAKE_BENCH_POLL_MS`, default 2000).
use std::time::{Duration, Instant};

use automc_tests::mc::{login, BackendOptions, McBackend};
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
    println!(
        "| scenario | logins | waker POSTs | running → all first bytes | running → first login |"
    );
    println!("|---|---|---|---|---|");
    for flip_state in [false, true] {
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
            c.waker.url = Some(url);
            c.waker.poll_interval = poll;
            c.waker.timeout = Duration::from_secs(60);
        })
        .await;
        let mut edges = Vec::new();
        for _ in 0..2 {
            let e = start_edge(&[syncd.grpc_url()], |c| {
                c.hold_timeout = Duration::from_secs(25);
                c.connect_timeout = Duration::from_secs(3);
            })
            .await;
            e.ready().await;
            edges.push(e);
        }
        let mut tasks = Vec::new();
        for i in 0..n {
            let addr = edges[i % edges.len()].listen_addr;
            tasks.push(tokio::spawn(async move {
                login(addr, "mc.example.com", &format!("p{i}")).await
            }));
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
        let scenario = if flip_state {
            "state column flips to running"
        } else {
            "waker poll only"
        };
        println!(
            "| {scenario} (poll {} ms) | {n} | {} | {} | {} |",
            poll.as_millis(),
            waker.posts(server),
            fmt(all),
            fmt(first)
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
        for t in tasks {
            let _ = t.await;
        }
    }
    Ok(())
}
