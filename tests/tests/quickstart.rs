//! The README's first command, `bash deploy/quickstart.sh`, runs the product
//! for real: a throwaway Postgres, syncd, one edge, the demo backend and its
//! route. A status ping through the edge answers with the demo MOTD, and
//! Ctrl-C (SIGINT) stops everything cleanly.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use automc_tests::mc::status_ping;
use automc_tests::pg::free_port;
use automc_tests::stack::eventually;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Directory holding syncd, edge and automc-demo-backend from this build.
async fn bin_dir() -> PathBuf {
    let backend = PathBuf::from(env!("CARGO_BIN_EXE_automc-demo-backend"));
    let dir = backend
        .parent()
        .expect("binary has a directory")
        .to_path_buf();
    // `cargo test --workspace` builds syncd and edge for their own CLI tests
    // (syncd/tests/cli.rs, edge/tests/cli.rs); build them when this test
    // runs alone.
    if !dir.join("syncd").exists() || !dir.join("edge").exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "syncd", "-p", "edge"])
            .current_dir(repo())
            .status()
            .await
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p syncd -p edge failed");
    }
    for b in ["syncd", "edge", "automc-demo-backend"] {
        assert!(dir.join(b).exists(), "{} missing", dir.join(b).display());
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_serves_the_demo_route_and_stops_on_ctrl_c() {
    let bin = bin_dir().await;
    let edge_port = free_port();
    let mut child = Command::new("bash")
        .arg(repo().join("deploy/quickstart.sh"))
        .env("AUTOMC_BIN_DIR", &bin)
        .env("EDGE_PORT", edge_port.to_string())
        .env("SYNCD_GRPC_PORT", free_port().to_string())
        .env("SYNCD_HTTP_PORT", free_port().to_string())
        .env("EDGE_HTTP_PORT", free_port().to_string())
        .env("EDGE_GRPC_PORT", free_port().to_string())
        .env("PG_PORT", free_port().to_string())
        .env("BACKEND_PORT", free_port().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start deploy/quickstart.sh");
    let pid = child.id().expect("quickstart has a pid");
    // Read stdout as it comes: Ctrl-C must wait until the script has said it
    // is running (the edge can answer before the script's own readiness poll).
    let stdout = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let stdout = stdout.clone();
        let mut pipe = child.stdout.take().expect("stdout piped");
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                stdout
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&text);
            }
        })
    };

    let edge: std::net::SocketAddr = ([127, 0, 0, 1], edge_port).into();
    eventually("the demo MOTD through the edge", Duration::from_secs(90), || async {
        matches!(status_ping(edge, "localhost", 765).await, Ok(r) if r.motd().contains("automc demo backend"))
    })
    .await;
    // The alias row routes too.
    let reply = status_ping(edge, "127.0.0.1", 767)
        .await
        .expect("status via alias");
    assert!(
        reply.motd().contains("automc demo backend"),
        "{}",
        reply.motd()
    );

    let said = stdout.clone();
    eventually(
        "the script says it is running",
        Duration::from_secs(60),
        || {
            let said = said.clone();
            async move {
                said.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains("automc is running")
            }
        },
    )
    .await;
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("send SIGINT");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("quickstart stops within 60 s of Ctrl-C")
        .expect("wait for quickstart");
    let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    let out = stdout.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut err = String::new();
    if let Some(mut s) = child.stderr.take() {
        s.read_to_string(&mut err).await.ok();
    }
    assert!(
        status.success(),
        "quickstart exited with {status}\n{out}\n{err}"
    );
    assert!(out.contains("automc is running"), "{out}");
    assert!(out.contains("stopped"), "{out}");
    assert!(
        tokio::net::TcpStream::connect(edge).await.is_err(),
        "the edge still accepts players after Ctrl-C"
    );
}
