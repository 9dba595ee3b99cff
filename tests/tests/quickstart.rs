//! The README's first command, `bash deploy/quickstart.sh`, runs the product
//! for real: it builds the binaries with its own build line (the dev profile,
//! into a target directory of its own, as from a fresh clone), then a throwaway Postgres, syncd, one edge,
//! the demo waker and two demo servers. A status ping through the edge answers
//! with the demo MOTD, a login to the sleeping server wakes it and joins, and
//! Ctrl-C (SIGINT) stops everything cleanly.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use automc_tests::mc::{login, status_ping};
use automc_tests::pg::free_port;
use automc_tests::stack::eventually;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_serves_the_demo_route_and_stops_on_ctrl_c() {
    let edge_port = free_port();
    // As from a terminal: SIGINT at its default disposition. A suite started
    // in the background of a non-interactive shell (nohup, `&` in a CI
    // script) inherits SIGINT ignored, and bash cannot trap a signal ignored
    // on entry, so Ctrl-C would never reach the script's cleanup.
    let mut child = Command::new("env")
        .arg("--default-signal=INT")
        .arg("bash")
        .arg(repo().join("deploy/quickstart.sh"))
        .env_remove("AUTOMC_BIN_DIR")
        .env("AUTOMC_PROFILE", "dev")
        // Its own target directory: the script's build resolves features
        // without dev-dependencies, so in the shared one it would relink
        // target/debug/syncd and edge while other tests start them.
        .env("CARGO_TARGET_DIR", repo().join("target/quickstart"))
        .env("EDGE_PORT", edge_port.to_string())
        .env("SYNCD_GRPC_PORT", free_port().to_string())
        .env("SYNCD_HTTP_PORT", free_port().to_string())
        .env("EDGE_HTTP_PORT", free_port().to_string())
        .env("EDGE_GRPC_PORT", free_port().to_string())
        .env("PG_PORT", free_port().to_string())
        .env("BACKEND_PORT", free_port().to_string())
        .env("SLEEPY_PORT", free_port().to_string())
        .env("WAKER_PORT", free_port().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start deploy/quickstart.sh");
    let pid = child.id().expect("quickstart has a pid");
    // Drain stderr as it comes too (cargo's build progress goes there), so a
    // full pipe never blocks the script.
    let err_reader = {
        let mut pipe = child.stderr.take().expect("stderr piped");
        tokio::spawn(async move {
            let mut err = String::new();
            let _ = pipe.read_to_string(&mut err).await;
            err
        })
    };
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
    // The script's own build is a cold build of the whole dependency tree
    // (minutes on a loaded 2-core machine): the bound covers that build.
    eventually("the demo MOTD through the edge", Duration::from_secs(1800), || async {
        matches!(status_ping(edge, "localhost", 765).await, Ok(r) if r.motd().contains("automc demo backend"))
    })
    .await;
    // The alias row routes too (its row is a change of its own to syncd,
    // which may reach the edge a version after the route's).
    eventually("the demo MOTD through the alias", Duration::from_secs(60), || async {
        matches!(status_ping(edge, "127.0.0.1", 767).await, Ok(r) if r.motd().contains("automc demo backend"))
    })
    .await;

    // The sleeping demo server: asleep in the server list, then a login wakes
    // it through the demo waker and joins.
    let asleep = status_ping(edge, "sleepy.localhost", 767)
        .await
        .expect("status of the sleeping server");
    assert!(asleep.motd().contains("asleep"), "{}", asleep.motd());
    let mut player = login(edge, "127.0.0.2", "first_player")
        .await
        .expect("login to the sleeping server");
    let joined = player
        .read_disconnect_within(Duration::from_secs(60))
        .await
        .expect("the woken server answers the held login");
    assert!(joined.contains("You joined sleepy"), "{joined}");
    // The demo waker marks the row running; the edge then shows the
    // server's own MOTD.
    eventually("the woken server's own MOTD", Duration::from_secs(60), || async {
        matches!(status_ping(edge, "sleepy.localhost", 767).await, Ok(r) if r.motd().contains("woken up"))
    })
    .await;

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
    let err = tokio::time::timeout(Duration::from_secs(10), err_reader)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
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
