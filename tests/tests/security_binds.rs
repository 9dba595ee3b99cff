//! Safe binds: nothing listens open that a player or a pod could abuse.
//!
//! - syncd refuses to serve gRPC on a reachable address without a token or
//!   mutual TLS (exit 64, saying what to set), unless told to with
//!   `--allow-unauthenticated`, which it then exports as a metric.
//! - With nothing configured, the admin ports of both processes listen on
//!   loopback only. Those defaults name fixed ports (9090, 8080, 50052), so
//!   the binaries run in a network namespace of their own (`unshare --net`)
//!   where nothing else holds them; the addresses are the ones each process
//!   logs after binding.
//! - The edge's EdgeAdmin requires its token when one is set.
use std::process::Stdio;

use automc_proto::v1::edge_admin_client::EdgeAdminClient;
use automc_proto::v1::route_sync_client::RouteSyncClient;
use automc_proto::v1::{GetSyncStatusRequest, ListConnectionsRequest, ListRoutesRequest};
use automc_tests::pg::free_port;
use automc_tests::procs::{bin_dir, syncd_args, Proc};
use automc_tests::stack::{migrated_pg, start_edge, start_syncd, with_token, DEADLINE};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

/// A DSN nothing answers on: syncd binds its ports before it connects.
const NO_DATABASE: &str = "postgres://automc@127.0.0.1:1/automc";
const ADMIN_TOKEN: &str = "admin-secret-3c91e7";

/// A syncd command with no inherited secret or listen address.
async fn syncd_command() -> Command {
    let mut cmd = Command::new(bin_dir().await.join("syncd"));
    for var in [
        "SYNCD_GRPC_TOKEN",
        "SYNCD_GRPC_TOKEN_FILE",
        "SYNCD_GRPC_LISTEN",
        "SYNCD_HTTP_LISTEN",
        "SYNCD_ALLOW_UNAUTHENTICATED",
        "SYNCD_TLS_CLIENT_CA",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncd_refuses_grpc_on_a_reachable_address_without_a_token() {
    let mut cmd = syncd_command().await;
    cmd.args([
        "serve",
        "--database-url",
        NO_DATABASE,
        "--grpc-listen",
        &format!("0.0.0.0:{}", free_port()),
        "--http-listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("syncd exits on its own")
        .expect("run syncd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(64),
        "a configuration error: {stderr}"
    );
    for needle in [
        "refusing to serve gRPC on 0.0.0.0:",
        "without authentication",
        "--grpc-token",
        "--tls-client-ca",
        "--allow-unauthenticated",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing in:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncd_serves_open_only_when_told_to_and_exports_that_it_does() {
    let pg = migrated_pg().await;
    let dsn = pg.dsn();
    // The harness's own arguments, with gRPC on every interface.
    let args = |extra: &[&str]| -> Vec<String> {
        syncd_args(&dsn, extra)
            .into_iter()
            .map(|a| {
                if a == "{main}" {
                    "0.0.0.0:{main_port}".into()
                } else {
                    a
                }
            })
            .collect()
    };

    let open = Proc::spawn("syncd", &args(&["--allow-unauthenticated"]), &[]).await;
    open.wait_ready().await;
    assert_eq!(open.metric("automc_syncd_grpc_unauthenticated").await, 1.0);
    let log = open.output.text();
    assert!(
        log.contains("WITHOUT authentication"),
        "no warning in:\n{log}"
    );
    let mut client = RouteSyncClient::connect(format!("http://{}", open.main_addr))
        .await
        .expect("connect");
    client
        .list_routes(ListRoutesRequest::default())
        .await
        .expect("served without a token, as asked");

    let guarded = Proc::spawn("syncd", &args(&["--grpc-token", "t0ken-1b2c"]), &[]).await;
    guarded.wait_ready().await;
    assert_eq!(
        guarded.metric("automc_syncd_grpc_unauthenticated").await,
        0.0
    );
    let mut client = RouteSyncClient::connect(format!("http://{}", guarded.main_addr))
        .await
        .expect("connect");
    let refused = client
        .list_routes(ListRoutesRequest::default())
        .await
        .expect_err("a token is required");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
}

/// Run `bin args` alone in a new network namespace (loopback up) until it
/// logs a line containing `marker`; that line.
async fn first_line_in_own_netns(bin: &str, args: &[&str], marker: &str) -> String {
    let path = bin_dir().await.join(bin);
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
        "--",
        "sh",
        "-c",
        "ip link set lo up && exec \"$@\"",
        "sh",
    ])
    .arg(&path)
    .args(args)
    .env_remove("SYNCD_HTTP_LISTEN")
    .env_remove("SYNCD_GRPC_LISTEN")
    .env_remove("EDGE_HTTP_LISTEN")
    .env_remove("EDGE_GRPC_LISTEN")
    .env_remove("EDGE_LISTEN")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run unshare (util-linux; needs root or user namespaces): {e}")
    });
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    for pipe in [
        Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(stderr),
    ] {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(pipe).lines();
            while let Ok(Some(l)) = r.next_line().await {
                let _ = tx.send(l);
            }
        });
    }
    drop(tx);
    let mut seen = Vec::new();
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.recv().await {
            if line.contains(marker) {
                return Some(line);
            }
            seen.push(line);
        }
        None
    })
    .await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    match found {
        Ok(Some(line)) => line,
        _ => panic!(
            "{bin} never logged {marker:?} in its own network namespace:\n{}",
            seen.join("\n")
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_ports_listen_on_loopback_unless_told_otherwise() {
    let syncd = first_line_in_own_netns(
        "syncd",
        &[
            "serve",
            "--database-url",
            NO_DATABASE,
            "--grpc-token",
            "t0ken-for-the-default-bind",
        ],
        "syncd starting",
    )
    .await;
    assert!(syncd.contains("http_addr=127.0.0.1:9090"), "{syncd}");
    // The gRPC port stays reachable for edges (it needs a token for that).
    assert!(syncd.contains("grpc_addr=0.0.0.0:50051"), "{syncd}");

    let edge = first_line_in_own_netns(
        "edge",
        &["--syncd", "http://127.0.0.1:50051"],
        "edge listening",
    )
    .await;
    assert!(edge.contains("http_addr=127.0.0.1:8080"), "{edge}");
    assert!(edge.contains("grpc_addr=127.0.0.1:50052"), "{edge}");
    // The player port is the product: open.
    assert!(edge.contains("listen_addr=0.0.0.0:25565"), "{edge}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_admin_calls_need_the_admin_token_once_one_is_set() {
    let pg = migrated_pg().await;
    pg.execute(
        "INSERT INTO servers (name, domain, address, state)
         VALUES ('lobby', 'lobby.example.com', '10.0.0.7:25565', 'running')",
    )
    .await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let edge = start_edge(&[syncd.grpc_url()], |c| {
        c.admin_token = Some(ADMIN_TOKEN.into())
    })
    .await;
    edge.wait_route("lobby.example.com", Some("lobby")).await;
    let url = format!("http://{}", edge.grpc_addr);
    let mut admin = EdgeAdminClient::connect(url.clone())
        .await
        .expect("connect");

    for (what, req) in [
        (
            "no token",
            tonic::Request::new(ListRoutesRequest::default()),
        ),
        (
            "a wrong token",
            with_token(ListRoutesRequest::default(), "guess"),
        ),
        (
            "a token that is one byte short",
            with_token(
                ListRoutesRequest::default(),
                &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1],
            ),
        ),
    ] {
        let e = admin.list_routes(req).await.expect_err(what);
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{what}");
        assert!(!e.message().contains(ADMIN_TOKEN), "{}", e.message());
    }
    let e = admin
        .list_connections(ListConnectionsRequest::default())
        .await
        .expect_err("players' addresses need the token too");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    let routes = admin
        .list_routes(with_token(ListRoutesRequest::default(), ADMIN_TOKEN))
        .await
        .expect("the token is accepted")
        .into_inner();
    assert!(routes.routes.iter().any(|r| r.server == "lobby"));
    admin
        .get_sync_status(with_token(GetSyncStatusRequest::default(), ADMIN_TOKEN))
        .await
        .expect("every EdgeAdmin call takes the token");

    // Probes need no secret.
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .expect("health needs no token")
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
}

/// Both binaries treat an address they cannot bind as configuration that
/// cannot run: exit 64 with the address in the message, like a bad flag.
#[tokio::test]
async fn a_taken_port_is_a_configuration_error_in_both_binaries() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut syncd = syncd_command().await;
    syncd.args([
        "serve",
        "--database-url",
        NO_DATABASE,
        "--grpc-listen",
        &addr,
        "--http-listen",
        "127.0.0.1:0",
    ]);
    let mut edge = Command::new(bin_dir().await.join("edge"));
    edge.args([
        "--syncd",
        "http://127.0.0.1:1",
        "--listen",
        &addr,
        "--http-listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
    ]);
    for (name, mut cmd) in [("syncd", syncd), ("edge", edge)] {
        cmd.env_remove("EDGE_LISTEN").env_remove("EDGE_SYNCD");
        let out = tokio::time::timeout(DEADLINE, cmd.output())
            .await
            .expect("exits on its own")
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot listen on {addr}")),
            "{name} names the address: {stderr}"
        );
    }
}
