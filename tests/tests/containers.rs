//! The container images, built and run for real with Podman: what an operator
//! checks after `docker build` / `docker compose up` (issue 18).
//!
//! - `images_migrate_serve_and_drain`: the `-prebuilt` images of syncd, edge
//!   and the demo backend against a throwaway Postgres: `syncd migrate` from
//!   the image, both HEALTHCHECKs pass, a status ping and a login through the
//!   containerized edge reach the containerized backend, every process runs as
//!   uid 10001 on a read-only root file system (as compose.yaml and the
//!   Kubernetes manifests ask), SIGTERM drains the edge and everything exits 0.
//! - `manifests_match_the_images`: the Kubernetes manifests and compose.yaml
//!   use the names, ports, user and entrypoints the built images have.
//! - `compose_stack_preserves_the_client_address`: compose.yaml brought up by
//!   podman-compose (Postgres and HAProxy from stand-in images made of
//!   Debian's packages), a player joins through HAProxy (PROXY v2) -> edge ->
//!   demo backend, and the edge's ListConnections shows the player's address.
//!
//! How the images are made and cleaned up: tests/src/containers.rs. The tools
//! (podman, runc, debootstrap, podman-compose) come from tests/run.sh; a
//! missing one fails the test, it never skips.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use automc_proto::v1::edge_admin_client::EdgeAdminClient;
use automc_proto::v1::ListConnectionsRequest;
use automc_tests::containers::{
    self, build_product_images, inspect_container, inspect_image, main_process_uids, podman_ok,
    podman_try, unique, wait_exit, wait_healthy, Cleanup, Images,
};
use automc_tests::mc::{self, DEFAULT_PROTOCOL};
use automc_tests::pg::{free_port, TestPg};
use automc_tests::stack::{eventually, with_token, DEADLINE};

const DEMO_BACKEND: &str = env!("CARGO_BIN_EXE_automc-demo-backend");
/// The demo backend's default answer to a login (tests/src/bin/demo-backend.rs).
const DEMO_LOGIN_MESSAGE: &str = "automc demo backend: routing works";

/// The hardening compose.yaml and the Kubernetes manifests ask for.
const HARDENED: &[&str] = &[
    "--read-only",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
];

async fn images(run: &str, cleanup: &Cleanup) -> Images {
    build_product_images(run, Path::new(DEMO_BACKEND), cleanup).await
}

/// `podman run -d --name NAME --network host HARDENED... args`, registered for cleanup.
async fn run_hardened(cleanup: &Cleanup, name: &str, env: &[String], args: &[&str]) {
    cleanup.container(name);
    let mut a: Vec<String> = ["run", "-d", "--name", name, "--network", "host"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(HARDENED.iter().map(|s| s.to_string()));
    for e in env {
        a.push("-e".into());
        a.push(e.clone());
    }
    a.extend(args.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    podman_ok(&a).await;
}

async fn logs(name: &str) -> String {
    podman_try(&["logs", name]).await.1
}

/// Runs as uid 10001 (all four ids of the main process, from the host's
/// /proc), with a read-only root file system even for root inside.
async fn assert_unprivileged_read_only(name: &str) {
    assert_eq!(
        main_process_uids(name).await,
        vec![10001; 4],
        "{name}: main process uids"
    );
    let inspect = inspect_container(name).await;
    assert_eq!(
        inspect["HostConfig"]["ReadonlyRootfs"],
        serde_json::Value::Bool(true),
        "{name}: read-only root"
    );
    let (wrote, out) =
        podman_try(&["exec", "--user", "0", name, "touch", "/written-by-test"]).await;
    assert!(
        !wrote && out.contains("Read-only file system"),
        "{name}: root could write to / ({out})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_migrate_serve_and_drain() {
    let cleanup = Cleanup::default();
    let run = unique("t");
    let images = images(&run, &cleanup).await;
    let pg = TestPg::start().await;
    let dsn = format!("SYNCD_DATABASE_URL={}", pg.dsn());

    // `syncd migrate` from the image, as compose's `migrate` service and the
    // Kubernetes init container run it.
    let migrate = format!("automc-migrate-{run}");
    cleanup.container(&migrate);
    let mut args: Vec<&str> = vec!["run", "--name", &migrate, "--network", "host"];
    args.extend(HARDENED);
    args.extend(["-e", &dsn, &images.syncd, "migrate"]);
    let out = podman_ok(&args).await;
    assert!(out.contains("migrated"), "syncd migrate said: {out}");

    let demo_port = free_port();
    let motd = format!("containerized demo {run}");
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) \
         VALUES ('demo', 'demo.example.com', '127.0.0.1:{demo_port}', 'running')"
    ))
    .await;

    let demo = format!("automc-demo-{run}");
    let demo_listen = format!("127.0.0.1:{demo_port}");
    run_hardened(
        &cleanup,
        &demo,
        &[],
        &[
            &images.demo_backend,
            "--listen",
            &demo_listen,
            "--motd",
            &motd,
        ],
    )
    .await;

    // syncd and edge on free loopback ports of the host's network (the test's
    // Postgres listens on 127.0.0.1); the images' HEALTHCHECK reads the port
    // from the same variables.
    let (grpc, http) = (free_port(), free_port());
    let syncd = format!("automc-syncd-{run}");
    run_hardened(
        &cleanup,
        &syncd,
        &[
            dsn.clone(),
            format!("SYNCD_GRPC_LISTEN=127.0.0.1:{grpc}"),
            format!("SYNCD_HTTP_LISTEN=127.0.0.1:{http}"),
        ],
        &[&images.syncd],
    )
    .await;
    wait_healthy(&syncd).await;

    let (player, edge_http, edge_grpc) = (free_port(), free_port(), free_port());
    let edge = format!("automc-edge-{run}");
    run_hardened(
        &cleanup,
        &edge,
        &[
            format!("EDGE_LISTEN=127.0.0.1:{player}"),
            format!("EDGE_HTTP_LISTEN=127.0.0.1:{edge_http}"),
            format!("EDGE_GRPC_LISTEN=127.0.0.1:{edge_grpc}"),
            format!("EDGE_SYNCD=http://127.0.0.1:{grpc}"),
            // Longer than the test: the edge exits because the player left.
            "EDGE_DRAIN_TIMEOUT=120s".into(),
        ],
        &[&images.edge],
    )
    .await;
    wait_healthy(&edge).await;

    let edge_addr: SocketAddr = format!("127.0.0.1:{player}").parse().expect("addr");
    let status = match mc::status_ping(edge_addr, "demo.example.com", DEFAULT_PROTOCOL).await {
        Ok(s) => s,
        Err(e) => panic!("status ping through the edge: {e}\n{}", logs(&edge).await),
    };
    assert_eq!(status.motd(), motd);
    let mut joined = mc::login(edge_addr, "demo.example.com", "Steve")
        .await
        .expect("login through the edge");
    assert_eq!(
        joined
            .read_disconnect()
            .await
            .expect("the backend's answer"),
        DEMO_LOGIN_MESSAGE
    );

    for name in [&syncd, &edge, &demo] {
        assert_unprivileged_read_only(name).await;
    }

    // SIGTERM: the edge drains (not ready, so its HEALTHCHECK fails and a
    // load balancer moves away) while the player is still connected, and
    // exits 0 once the player leaves.
    podman_ok(&["kill", "--signal", "TERM", &edge]).await;
    let edge_name = edge.clone();
    eventually("the draining edge's HEALTHCHECK to fail", DEADLINE, || {
        let edge = edge_name.clone();
        async move { !podman_try(&["healthcheck", "run", &edge]).await.0 }
    })
    .await;
    let (running, _) = podman_try(&["container", "exists", &edge]).await;
    assert!(running);
    assert_eq!(
        inspect_container(&edge).await["State"]["Running"],
        serde_json::Value::Bool(true),
        "the edge must wait for its player, not exit at once"
    );
    drop(joined);
    assert_eq!(
        wait_exit(&edge, Duration::from_secs(60)).await,
        0,
        "edge exit\n{}",
        logs(&edge).await
    );
    let edge_logs = logs(&edge).await;
    assert!(
        edge_logs.contains("draining") && edge_logs.contains("edge stopped"),
        "{edge_logs}"
    );
    for name in [&syncd, &demo] {
        podman_ok(&["kill", "--signal", "TERM", name]).await;
        assert_eq!(
            wait_exit(name, Duration::from_secs(60)).await,
            0,
            "{name} exit after SIGTERM\n{}",
            logs(name).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_match_the_images() {
    let cleanup = Cleanup::default();
    let run = unique("m");
    let images = images(&run, &cleanup).await;
    let mut inspect = serde_json::Map::new();
    for (name, image) in [
        ("automc-syncd", &images.syncd),
        ("automc-edge", &images.edge),
        ("automc-demo-backend", &images.demo_backend),
    ] {
        inspect.insert(name.into(), inspect_image(image).await);
    }
    let file = containers::cache_dir().join(format!("inspect-{run}.json"));
    cleanup.dir(&file);
    std::fs::write(&file, serde_json::Value::Object(inspect).to_string()).expect("write inspect");
    let out = tokio::process::Command::new("python3")
        .arg(containers::repo().join("deploy/check.py"))
        .arg("images")
        .arg(&file)
        .output()
        .await
        .expect("run python3 deploy/check.py images");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "deploy/check.py images: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A /24 for the compose network that no podman network uses yet.
async fn free_subnet() -> (String, String) {
    let used = podman_ok(&[
        "network",
        "ls",
        "--format",
        "{{range .Subnets}}{{.Subnet}} {{end}}",
    ])
    .await;
    let start = (std::process::id() % 200) as u16;
    for i in 0..200u16 {
        let octet = 20 + (start + i) % 200;
        let subnet = format!("10.213.{octet}.0/24");
        if !used.contains(&subnet) {
            return (subnet, format!("10.213.{octet}.10"));
        }
    }
    panic!("no free 10.213.x.0/24 among the podman networks: {used}");
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `podman-compose -p project -f files... args` (bounded), which must exit 0.
async fn compose_ok(project: &str, files: &[PathBuf], env: &[(&str, &str)], args: &[&str]) {
    let mut c = containers::podman_compose();
    c.args(["-p", project]);
    for f in files {
        c.arg("-f").arg(f);
    }
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let what = format!("podman-compose {}", args.join(" "));
    let out = containers::output_within(c, Duration::from_secs(300), &what).await;
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_stack_preserves_the_client_address() {
    let cleanup = Cleanup::default();
    let run = unique("c");
    let images = images(&run, &cleanup).await;
    let postgres = containers::fixture_image("postgres").await;
    let haproxy = containers::fixture_image("haproxy").await;
    let (subnet, haproxy_ip) = free_subnet().await;
    let project = format!("automc-{run}");

    // compose.yaml as shipped, plus what this machine needs: the local images
    // instead of registry ones, no host ports (parallel runs, and the test
    // dials container addresses), the file limit the host allows (explicit
    // ulimits replace the engine's defaults, so nproc too) and HAProxy's
    // maxconn within it (`-n` wins over haproxy.cfg's `maxconn 20000`, which
    // needs two descriptors per connection).
    let nofile = containers::container_nofile();
    let maxconn = ((nofile.saturating_sub(100)) / 2).clamp(100, 20_000);
    let dir = containers::cache_dir().join(format!("compose-{run}"));
    std::fs::create_dir_all(&dir).expect("compose dir");
    cleanup.dir(&dir);
    let override_file = dir.join("compose.test.yaml");
    write(
        &override_file,
        &format!(
            "services:
  postgres: {{image: {postgres}, ports: !reset []}}
  seed: {{image: {postgres}}}
  migrate: {{image: {syncd}}}
  syncd: {{image: {syncd}, ports: !reset []}}
  edge1: {{image: {edge}, ports: !reset [], ulimits: !override {{nofile: {nofile}, nproc: 4096}}}}
  edge2: {{image: {edge}, ports: !reset [], ulimits: !override {{nofile: {nofile}, nproc: 4096}}}}
  haproxy:
    image: {haproxy}
    ports: !reset []
    ulimits: !override {{nofile: {nofile}, nproc: 4096}}
    command: [-f, /usr/local/etc/haproxy/haproxy.cfg, -n, '{maxconn}']
  demo-backend: {{image: {demo}}}
",
            syncd = images.syncd,
            edge = images.edge,
            demo = images.demo_backend,
        ),
    );
    let files = vec![
        containers::repo().join("deploy/docker/compose.yaml"),
        override_file,
    ];
    cleanup.compose(&project, &files);
    let env = [
        ("AUTOMC_SUBNET", subnet.as_str()),
        ("AUTOMC_HAPROXY_ADDRESS", haproxy_ip.as_str()),
    ];
    let admin_token = "demo-admin-token-change-me";

    // compose.yaml's depends_on, one step at a time: podman 4.3 (Debian
    // bookworm) ignores `condition: service_healthy`, runs no health checks
    // without systemd, and fails to start a container whose dependency has
    // dependencies of its own ("not found in input list"). So each step is
    // `up --no-deps` of the services whose conditions the previous steps met,
    // as docs/deploy.md tells Podman users to do.
    let name = |service: &str| format!("{project}_{service}_1");
    let up = |services: &'static [&'static str]| {
        let mut args = vec!["up", "-d", "--no-build", "--no-deps"];
        args.extend(services);
        args
    };
    compose_ok(&project, &files, &env, &up(&["postgres"])).await;
    wait_healthy(&name("postgres")).await;
    for one_shot in [&["migrate"], &["seed"]] {
        compose_ok(&project, &files, &env, &up(one_shot)).await;
        let one_shot = one_shot[0];
        assert_eq!(
            wait_exit(&name(one_shot), Duration::from_secs(120)).await,
            0,
            "{one_shot}\n{}",
            logs(&name(one_shot)).await
        );
    }
    compose_ok(&project, &files, &env, &up(&["syncd", "demo-backend"])).await;
    wait_healthy(&name("syncd")).await;
    compose_ok(&project, &files, &env, &up(&["edge1", "edge2"])).await;
    wait_healthy(&name("edge1")).await;
    wait_healthy(&name("edge2")).await;
    compose_ok(&project, &files, &env, &up(&["haproxy"])).await;

    let ip_of = |inspect: serde_json::Value| -> String {
        let nets = inspect["NetworkSettings"]["Networks"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        nets.values()
            .find_map(|n| n["IPAddress"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("no IP address in {nets:?}"))
    };
    let haproxy_addr: SocketAddr = format!("{haproxy_ip}:25565").parse().expect("addr");
    assert_eq!(
        ip_of(inspect_container(&format!("{project}_haproxy_1")).await),
        haproxy_ip
    );

    // HAProxy sends players only to edges its /readyz checks found up.
    let status = {
        let end = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match mc::status_ping(haproxy_addr, "localhost", DEFAULT_PROTOCOL).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() > end => panic!(
                    "status ping through HAProxy: {e}\n{}",
                    logs(&format!("{project}_haproxy_1")).await
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    };
    assert_eq!(status.motd(), "Hello from the automc demo backend");

    // A player joins and stays connected; the edge that took it must see the
    // player's own address and port (from the PROXY v2 header), not HAProxy's.
    let mut joined = mc::login(haproxy_addr, "localhost", "Alex")
        .await
        .expect("login through HAProxy");
    assert_eq!(
        joined
            .read_disconnect()
            .await
            .expect("the backend's answer"),
        DEMO_LOGIN_MESSAGE
    );
    let me = joined.local_addr().expect("local addr");
    let end = tokio::time::Instant::now() + DEADLINE;
    let seen = 'found: loop {
        for edge in ["edge1", "edge2"] {
            let ip = ip_of(inspect_container(&format!("{project}_{edge}_1")).await);
            let mut admin = EdgeAdminClient::connect(format!("http://{ip}:50052"))
                .await
                .unwrap_or_else(|e| panic!("EdgeAdmin of {edge} at {ip}: {e}"));
            let conns = admin
                .list_connections(with_token(ListConnectionsRequest {}, admin_token))
                .await
                .expect("ListConnections")
                .into_inner();
            let seen: Vec<_> = conns
                .connections
                .iter()
                .map(|c| (edge, c.client.clone(), c.hostname.clone(), c.player.clone()))
                .collect();
            if seen.iter().any(|(_, _, host, _)| host == "localhost") {
                break 'found seen;
            }
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no edge lists the player's connection"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (edge, client, _, player) = seen
        .iter()
        .find(|(_, _, host, _)| host == "localhost")
        .expect("the player's connection")
        .clone();
    assert_eq!(
        client,
        me.to_string(),
        "{edge} saw the player as {client}; HAProxy is {haproxy_ip}"
    );
    assert_eq!(player, "Alex");
    println!("{edge} saw the player as {client} (HAProxy is {haproxy_ip})");
    drop(joined);

    // `down` stops the edges with SIGTERM within stop_grace_period: each
    // drains and exits 0.
    compose_ok(&project, &files, &env, &["stop"]).await;
    for edge in ["edge1", "edge2"] {
        let name = format!("{project}_{edge}_1");
        let state = inspect_container(&name).await;
        assert_eq!(
            state["State"]["ExitCode"],
            serde_json::json!(0),
            "{edge} after compose stop\n{}",
            logs(&name).await
        );
    }
}
