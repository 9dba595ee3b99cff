//! Secrets (DSN password, gRPC token, waker token) never show up where an
//! operator or an attacker can read: logs (at debug level), `/metrics`,
//! `--help` (even when set through the environment) or Debug output.
//! syncd and edge run as real processes; their output is captured.
use std::time::Duration;

use automc_proto::v1::route_sync_client::RouteSyncClient;
use automc_proto::v1::{ListRoutesRequest, WakeRequest};
use automc_tests::mc::login;
use automc_tests::pg::free_port;
use automc_tests::procs::{bin_dir, edge_args, syncd_args, Proc};
use automc_tests::stack::{eventually, migrated_pg, with_token, DEADLINE};

const PG_PASSWORD: &str = "pg-secret-7f3a9c";
const GRPC_TOKEN: &str = "grpc-secret-91bd0e";
const WAKER_TOKEN: &str = "waker-secret-55c2aa";
const SECRETS: [&str; 3] = [PG_PASSWORD, GRPC_TOKEN, WAKER_TOKEN];

fn assert_no_secret(place: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{s} leaked into {place}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_logs_metrics_and_help() {
    let pg = migrated_pg().await;
    // Trust auth accepts any password, so the DSN can carry one.
    pg.execute(
        "INSERT INTO servers (name, domain, address, state)
         VALUES ('sleepy', 'sleepy.example.com', '127.0.0.1:1', 'stopped')",
    )
    .await;
    let dsn = format!(
        "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/automc",
        pg.port()
    );
    let waker_url = format!("http://127.0.0.1:{}", free_port());
    let debug = [("RUST_LOG", "debug")];
    let syncd = Proc::spawn(
        "syncd",
        &syncd_args(
            &dsn,
            &[
                "--grpc-token",
                GRPC_TOKEN,
                "--waker-url",
                &waker_url,
                "--waker-token",
                WAKER_TOKEN,
                "--waker-timeout",
                "2s",
            ],
        ),
        &debug,
    )
    .await;
    syncd.wait_ready().await;
    let url = format!("http://{}", syncd.main_addr);
    let edge = Proc::spawn(
        "edge",
        &edge_args(&url, &["--grpc-token", GRPC_TOKEN, "--hold-timeout", "5s"]),
        &debug,
    )
    .await;
    edge.wait_ready().await;

    // Exercise every path that handles a secret: RPCs with the right and a
    // wrong token, a wake (waker token; the waker is unreachable), a player
    // login that asks for that wake through the edge.
    let mut client = RouteSyncClient::connect(url.clone())
        .await
        .expect("connect");
    client
        .list_routes(with_token(ListRoutesRequest::default(), GRPC_TOKEN))
        .await
        .expect("the right token is accepted");
    let refused = client
        .list_routes(with_token(ListRoutesRequest::default(), "not-the-token"))
        .await
        .expect_err("a wrong token is refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_no_secret("the UNAUTHENTICATED status", refused.message());
    let wake = client
        .wake(with_token(
            WakeRequest {
                server: "sleepy".into(),
                caller: "test".into(),
            },
            GRPC_TOKEN,
        ))
        .await
        .expect_err("the waker is unreachable");
    assert_no_secret("the wake failure", wake.message());
    let mut player = login(edge.main_addr, "sleepy.example.com", "steve")
        .await
        .expect("login");
    let reason = player.read_disconnect().await.expect("a Disconnect");
    assert_no_secret("the player's Disconnect", &reason);

    let s = &syncd;
    eventually("syncd logged the failed wake", DEADLINE, || async move {
        s.output.text().contains("sleepy")
    })
    .await;
    assert_no_secret("syncd /metrics", &syncd.metrics().await);
    assert_no_secret("edge /metrics", &edge.metrics().await);
    let syncd_log = syncd.output.text();
    let edge_log = edge.output.text();
    assert!(
        edge_log.contains("starting edge"),
        "edge logs its config: {edge_log}"
    );
    assert_no_secret("syncd logs", &syncd_log);
    assert_no_secret("edge logs", &edge_log);

    // --help with every secret set through the environment.
    let dir = bin_dir().await;
    for (bin, env) in [
        (
            "syncd",
            vec![
                ("SYNCD_DATABASE_URL", dsn.as_str()),
                ("SYNCD_GRPC_TOKEN", GRPC_TOKEN),
                ("SYNCD_WAKER_TOKEN", WAKER_TOKEN),
                ("AUTOMC_WAKER_TOKEN", WAKER_TOKEN),
                ("AUTOMC_DSN", dsn.as_str()),
            ],
        ),
        ("edge", vec![("EDGE_GRPC_TOKEN", GRPC_TOKEN)]),
    ] {
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::process::Command::new(dir.join(bin))
                .arg("--help")
                .envs(env)
                .output(),
        )
        .await
        .expect("--help in time")
        .expect("run --help");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("--grpc-token"), "{bin} --help: {text}");
        assert_no_secret(&format!("{bin} --help"), &text);
    }

    // Debug output of both configs.
    let mut sc = syncd::Config::new(dsn.clone());
    sc.grpc_token = Some(GRPC_TOKEN.into());
    sc.waker.token = Some(WAKER_TOKEN.into());
    assert_no_secret("syncd::Config Debug", &format!("{sc:?}"));
    let ec = edge::Config {
        grpc_token: Some(GRPC_TOKEN.into()),
        ..edge::Config::default()
    };
    assert_no_secret("edge::Config Debug", &format!("{ec:?}"));
}

/// A key=value DSN whose password has spaces (a double one too) and a quote.
/// (Its pieces must not be words --help uses: "cret" was, once --webhook-secret came.)
const KV_PASSWORD: &str = r"kv qo  zvux pw's";
/// Pieces a whitespace split would let through.
const KV_PIECES: [&str; 4] = ["qo  zvux", "qo zvux", "zvux", "pw's"];

fn assert_no_kv_password(place: &str, text: &str) {
    for s in KV_PIECES {
        assert!(!text.contains(s), "{s:?} leaked into {place}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_value_dsn_with_spaces_and_quotes_never_shows_its_password() {
    let pg = migrated_pg().await;
    let escaped = KV_PASSWORD.replace('\'', "\\'");
    let dsn = format!(
        "host=127.0.0.1  port = {} user=postgres password = '{escaped}' dbname=automc sslmode=disable",
        pg.port()
    );
    let syncd = Proc::spawn("syncd", &syncd_args(&dsn, &[]), &[("RUST_LOG", "debug")]).await;
    syncd.wait_ready().await;
    assert_no_kv_password("syncd /metrics", &syncd.metrics().await);
    let log = syncd.output.text();
    assert!(
        log.contains("postgres://postgres:***@127.0.0.1:"),
        "the redacted target is logged: {log}"
    );
    assert_no_kv_password("syncd serve logs", &log);

    let dir = bin_dir().await;
    for args in [vec!["check"], vec!["migrate"], vec!["--help"]] {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(dir.join("syncd"))
                .args(&args)
                .env("SYNCD_DATABASE_URL", &dsn)
                .env("AUTOMC_DSN", &dsn)
                .output(),
        )
        .await
        .expect("in time")
        .expect("run syncd");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.is_empty(), "syncd {args:?} says something");
        assert_no_kv_password(&format!("syncd {args:?}"), &text);
    }
    let config = syncd::Config::new(dsn.clone());
    assert_no_kv_password("syncd::Config Debug", &format!("{config:?}"));
}
