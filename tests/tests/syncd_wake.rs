//! syncd's side of waking stopped servers: one wake per server however many
//! callers, each waker failure with its own reason, callers leaving early,
//! reuse, LISTEN ending the wait, the readiness ping, wake state for every
//! edge, and the waker token.
use std::time::Duration;

use automc_proto::v1::route_sync_client::RouteSyncClient;
use automc_proto::v1::{ListWakesRequest, WakePhase, WakeRequest, WakeResponse};
use automc_proto::WakeFailure;
use automc_tests::mc::{BackendOptions, McBackend};
use automc_tests::pg::{free_port, TestPg};
use automc_tests::stack::{
    eventually, metric_value, migrated_pg, start_syncd, SyncdHandle, DEADLINE,
};
use automc_tests::waker::{Behaviour, FakeWaker};
use tonic::transport::Channel;

const SEED: &str = "INSERT INTO servers (name, domain, address, state) VALUES
    ('survival', 'survival.example.com', '10.0.0.2:25565', 'stopped'),
    ('creative', 'creative.example.com', '10.0.0.3:25565', 'stopped')";

async fn setup(waker: &FakeWaker, tweak: impl FnOnce(&mut syncd::Config)) -> (TestPg, SyncdHandle) {
    let pg = migrated_pg().await;
    pg.execute(SEED).await;
    let url = waker.url();
    let syncd = start_syncd(&pg.dsn(), |c| {
        c.waker.url = Some(url);
        tweak(c);
    })
    .await;
    (pg, syncd)
}

async fn wake(
    client: &mut RouteSyncClient<Channel>,
    server: &str,
) -> Result<WakeResponse, tonic::Status> {
    client
        .wake(WakeRequest {
            server: server.into(),
            caller: "test".into(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn many_concurrent_wakes_for_one_server_cause_exactly_one_post() {
    let waker = FakeWaker::start().await;
    waker.set(
        "survival",
        Behaviour::starts_at(Duration::from_millis(300), "10.9.9.9:25565"),
    );
    let (_pg, syncd) = setup(&waker, |_| {}).await;
    let mut calls = Vec::new();
    for _edge in 0..3 {
        // One channel per "edge", 20 callers on each.
        let client = syncd.client().await;
        for _ in 0..20 {
            let mut c = client.clone();
            calls.push(tokio::spawn(async move { wake(&mut c, "survival").await }));
        }
    }
    for call in calls {
        let r = call.await.expect("task").expect("wake succeeds");
        assert_eq!(r.address, "10.9.9.9:25565", "the waker's address wins");
    }
    assert_eq!(waker.posts("survival"), 1, "one POST for 60 callers");
    let wakes = syncd
        .client()
        .await
        .list_wakes(ListWakesRequest {})
        .await
        .expect("ListWakes")
        .into_inner()
        .wakes;
    let total_callers: u64 = wakes
        .iter()
        .filter(|w| w.server == "survival")
        .map(|w| w.callers)
        .sum();
    assert_eq!(
        wakes
            .iter()
            .filter(|w| w.server == "survival" && w.outcome == "running")
            .count(),
        1
    );
    let text = syncd.metrics_text().await;
    let reused = metric_value(&text, "automc_syncd_wakes_total{outcome=\"reused\"}").unwrap_or(0.0);
    assert_eq!(
        total_callers + reused as u64,
        60,
        "every caller joined the wake or reused it"
    );
    assert_eq!(
        metric_value(&text, "automc_syncd_wakes_total{outcome=\"success\"}"),
        Some(1.0)
    );
    assert!(metric_value(
        &text,
        "automc_syncd_waker_http_responses_total{status=\"202\"}"
    )
    .is_some());
    assert_eq!(
        metric_value(&text, "automc_syncd_wake_duration_seconds_count"),
        Some(1.0)
    );
}

#[tokio::test]
async fn the_route_address_is_used_when_the_waker_gives_none_and_409_counts_as_started() {
    let waker = FakeWaker::start().await;
    waker.set(
        "survival",
        Behaviour::Starts {
            delay: Duration::from_millis(50),
            address: None,
            conflict: true,
        },
    );
    let (_pg, syncd) = setup(&waker, |_| {}).await;
    let r = wake(&mut syncd.client().await, "survival")
        .await
        .expect("wake");
    assert_eq!(r.address, "10.0.0.2:25565");
    assert!(!r.reused);
    assert_eq!(waker.posts("survival"), 1);
}

#[tokio::test]
async fn a_recent_success_is_reused_without_calling_the_waker() {
    let waker = FakeWaker::start().await;
    let (_pg, syncd) = setup(&waker, |c| c.waker.reuse_for = Duration::from_secs(60)).await;
    let mut client = syncd.client().await;
    let first = wake(&mut client, "survival").await.expect("wake");
    assert!(!first.reused);
    let second = wake(&mut client, "survival").await.expect("reuse");
    assert!(second.reused);
    assert_eq!(second.address, first.address);
    assert_eq!(waker.posts("survival"), 1);
}

#[tokio::test]
async fn each_waker_failure_has_its_own_reason() {
    let waker = FakeWaker::start().await;
    waker.set("s503", Behaviour::StartFails(503));
    waker.set("garbage", Behaviour::GarbageStatus);
    waker.set("hangs", Behaviour::Hangs);
    waker.set("never", Behaviour::NeverRuns);
    let pg = migrated_pg().await;
    pg.execute(
        "INSERT INTO servers (name, domain, address) VALUES
           ('s503', 's503.example.com', '10.0.0.1:1'), ('garbage', 'garbage.example.com', '10.0.0.1:2'),
           ('hangs', 'hangs.example.com', '10.0.0.1:3'), ('never', 'never.example.com', '10.0.0.1:4')",
    )
    .await;
    let url = waker.url();
    let syncd = start_syncd(&pg.dsn(), |c| {
        c.waker.url = Some(url);
        c.waker.request_timeout = Duration::from_millis(300);
        c.waker.timeout = Duration::from_secs(2);
    })
    .await;
    let cases = [
        (
            "s503",
            tonic::Code::Unavailable,
            WakeFailure::WakerRefused,
            "HTTP 503 to the start request",
        ),
        (
            "garbage",
            tonic::Code::Unavailable,
            WakeFailure::WakerBadResponse,
            "not the expected JSON",
        ),
        (
            "hangs",
            tonic::Code::Unavailable,
            WakeFailure::WakerUnreachable,
            "did not answer within 300ms",
        ),
        (
            "never",
            tonic::Code::DeadlineExceeded,
            WakeFailure::Timeout,
            "did not report running within 2s",
        ),
        (
            "nosuch",
            tonic::Code::NotFound,
            WakeFailure::UnknownServer,
            "no route for server",
        ),
    ];
    let mut calls = Vec::new();
    for (server, code, failure, reason) in cases {
        let mut c = syncd.client().await;
        calls.push(tokio::spawn(async move {
            let err = wake(&mut c, server).await.expect_err("wake must fail");
            assert_eq!(err.code(), code, "{server}: {err:?}");
            assert_eq!(WakeFailure::from_status(&err), Some(failure), "{server}");
            assert!(
                err.message().contains(reason),
                "{server}: {:?}",
                err.message()
            );
        }));
    }
    for c in calls {
        c.await.expect("case");
    }
    let wakes = syncd
        .client()
        .await
        .list_wakes(ListWakesRequest {})
        .await
        .expect("ListWakes")
        .into_inner()
        .wakes;
    for (server, failure) in [
        ("s503", WakeFailure::WakerRefused),
        ("garbage", WakeFailure::WakerBadResponse),
        ("hangs", WakeFailure::WakerUnreachable),
        ("never", WakeFailure::Timeout),
    ] {
        let w = wakes.iter().find(|w| w.server == server).expect("listed");
        assert_eq!(w.outcome, "failed");
        assert_eq!(w.failure(), failure, "{server}");
        assert!(!w.reason.is_empty());
    }
    // A failed wake is not reused: the next caller tries again.
    let _ = wake(&mut syncd.client().await, "s503").await;
    assert_eq!(waker.posts("s503"), 2);
}

#[tokio::test]
async fn an_unreachable_waker_is_reported_as_such() {
    let pg = migrated_pg().await;
    pg.execute(SEED).await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let syncd = start_syncd(&pg.dsn(), |c| c.waker.url = Some(closed)).await;
    let err = wake(&mut syncd.client().await, "survival")
        .await
        .expect_err("fails");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        err.message().contains("waker unreachable"),
        "{}",
        err.message()
    );
    assert!(
        err.message().to_lowercase().contains("refused"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn without_a_waker_wake_fails_fast_with_a_clear_reason() {
    let pg = migrated_pg().await;
    pg.execute(SEED).await;
    let syncd = start_syncd(&pg.dsn(), |_| {}).await;
    let err = wake(&mut syncd.client().await, "survival")
        .await
        .expect_err("fails");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        WakeFailure::from_status(&err),
        Some(WakeFailure::NotConfigured)
    );
    assert_eq!(err.message(), "waker not configured");
}

#[tokio::test]
async fn a_caller_leaving_early_does_not_cancel_the_wake() {
    let waker = FakeWaker::start().await;
    waker.set(
        "survival",
        Behaviour::starts_at(Duration::from_millis(800), "10.7.7.7:1"),
    );
    let (_pg, syncd) = setup(&waker, |c| c.waker.reuse_for = Duration::from_secs(60)).await;
    let mut impatient = syncd.client().await;
    let mut req = tonic::Request::new(WakeRequest {
        server: "survival".into(),
        caller: "impatient".into(),
    });
    req.set_timeout(Duration::from_millis(100));
    let err = impatient.wake(req).await.expect_err("gives up");
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
    // The wake goes on without anyone waiting and finishes.
    let mut client = syncd.client().await;
    eventually("the abandoned wake finishes", DEADLINE, || {
        let mut client = client.clone();
        async move {
            let wakes = client
                .list_wakes(ListWakesRequest {})
                .await
                .expect("ListWakes")
                .into_inner()
                .wakes;
            wakes
                .iter()
                .any(|w| w.server == "survival" && w.outcome == "running")
        }
    })
    .await;
    let r = wake(&mut client, "survival").await.expect("later caller");
    assert_eq!(r.address, "10.7.7.7:1");
    assert_eq!(
        waker.posts("survival"),
        1,
        "the wake was neither cancelled nor repeated"
    );
}

#[tokio::test]
async fn state_running_seen_through_listen_ends_the_wait_early() {
    let waker = FakeWaker::start().await;
    waker.set("survival", Behaviour::NeverRuns);
    let (pg, syncd) = setup(&waker, |c| {
        c.waker.poll_interval = Duration::from_secs(3600);
        c.waker.timeout = Duration::from_secs(3600);
    })
    .await;
    let mut client = syncd.client().await;
    let call = tokio::spawn(async move { wake(&mut client, "survival").await });
    eventually("the waker got the start request", DEADLINE, || async {
        waker.posts("survival") == 1 && waker.gets("survival") == 1
    })
    .await;
    pg.execute(
        "UPDATE servers SET state = 'running', address = '10.0.0.42:25565' WHERE name = 'survival'",
    )
    .await;
    let r = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("wake ended by LISTEN")
        .expect("task")
        .expect("wake succeeds");
    assert_eq!(r.address, "10.0.0.42:25565");
    assert_eq!(waker.gets("survival"), 1, "no second poll was needed");
}

#[tokio::test]
async fn readiness_check_waits_until_the_server_answers_a_status_ping() {
    let waker = FakeWaker::start().await;
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    waker.set("survival", Behaviour::starts_at(Duration::ZERO, &address));
    let (_pg, syncd) = setup(&waker, |c| c.waker.ready_check = true).await;
    let mut client = syncd.client().await;
    let call = tokio::spawn(async move { wake(&mut client, "survival").await });
    // "Running" says the waker, but nothing listens yet: the wake must hold.
    eventually("the waker reported running", DEADLINE, || async {
        waker.gets("survival") >= 1
    })
    .await;
    assert!(
        !call.is_finished(),
        "wake finished before the server answered a ping"
    );
    let backend = McBackend::start_on(
        format!("127.0.0.1:{port}").parse().expect("addr"),
        BackendOptions::with_motd("ready"),
    )
    .await
    .expect("backend");
    let r = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("wake finishes once pinged")
        .expect("task")
        .expect("wake succeeds");
    assert_eq!(r.address, address);
    assert!(backend.status_answers() >= 1, "the wake pinged the server");
}

#[tokio::test]
async fn every_watcher_learns_which_servers_are_waking() {
    let waker = FakeWaker::start().await;
    waker.set("survival", Behaviour::NeverRuns);
    let (pg, syncd) = setup(&waker, |c| {
        c.waker.poll_interval = Duration::from_millis(20)
    })
    .await;
    let mut early = syncd.watch("early").await;
    let mut client = syncd.client().await;
    let call = tokio::spawn(async move { wake(&mut client, "survival").await });
    early
        .wait_until("WakeUpdate waking", DEADLINE, |s| {
            s.wakes.get("survival") == Some(&WakePhase::Waking)
        })
        .await;
    let late = syncd.watch("late").await;
    assert_eq!(
        late.state().wakes.get("survival"),
        Some(&WakePhase::Waking),
        "a new edge sees the wake in its snapshot"
    );
    pg.execute("UPDATE servers SET state = 'running' WHERE name = 'survival'")
        .await;
    call.await.expect("task").expect("wake");
    early
        .wait_until("WakeUpdate running", DEADLINE, |s| {
            s.wakes.get("survival") == Some(&WakePhase::Running)
        })
        .await;
}

#[tokio::test]
async fn a_server_that_never_answers_the_readiness_ping_fails_the_wake() {
    let waker = FakeWaker::start().await;
    // Accepts TCP but never answers, like a modded server still loading.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = silent.local_addr().expect("addr").to_string();
    let _hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    waker.set("survival", Behaviour::starts_at(Duration::ZERO, &address));
    let (_pg, syncd) = setup(&waker, |c| {
        c.waker.ready_check = true;
        c.waker.ready_check_timeout = Duration::from_millis(200);
        c.waker.timeout = Duration::from_secs(1);
    })
    .await;
    let err = wake(&mut syncd.client().await, "survival")
        .await
        .expect_err("not ready");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        err.message().contains("does not answer a status ping"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("no status answer within"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_redirecting_waker_is_a_failed_wake_and_the_token_never_reaches_the_other_host() {
    let elsewhere = FakeWaker::start().await;
    let waker = FakeWaker::start().await;
    waker.set(
        "survival",
        Behaviour::Redirects {
            to: elsewhere.url(),
        },
    );
    let (_pg, syncd) = setup(&waker, |c| c.waker.token = Some("wake-secret".into())).await;
    let err = wake(&mut syncd.client().await, "survival")
        .await
        .expect_err("a redirect is a failed wake");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(
        WakeFailure::from_status(&err),
        Some(WakeFailure::WakerRefused)
    );
    assert!(
        err.message().contains("307") && err.message().contains("redirects are not followed"),
        "{}",
        err.message()
    );
    assert_eq!(waker.api_keys(), vec![Some("wake-secret".to_owned())]);
    assert!(
        elsewhere.api_keys().is_empty(),
        "the redirect target was sent {:?}",
        elsewhere.api_keys()
    );
    assert_eq!(elsewhere.posts("survival"), 0);
}

#[tokio::test]
async fn an_oversized_waker_answer_is_refused() {
    let waker = FakeWaker::start().await;
    waker.set(
        "survival",
        Behaviour::HugeStatus {
            bytes: 2 * syncd::waker_client::MAX_BODY_BYTES,
        },
    );
    let (_pg, syncd) = setup(&waker, |_| {}).await;
    let err = wake(&mut syncd.client().await, "survival")
        .await
        .expect_err("an oversized status answer fails the wake");
    assert_eq!(
        WakeFailure::from_status(&err),
        Some(WakeFailure::WakerBadResponse)
    );
    assert!(
        err.message().contains("over 65536 bytes"),
        "{}",
        err.message()
    );
    // Just under the cap, the same answer is a success.
    waker.set(
        "survival",
        Behaviour::HugeStatus {
            bytes: syncd::waker_client::MAX_BODY_BYTES - 1,
        },
    );
    wake(&mut syncd.client().await, "survival")
        .await
        .expect("a status answer under the cap is read");
}

#[tokio::test]
async fn an_edge_that_resumes_after_a_wake_ended_no_longer_shows_it_waking() {
    let waker = FakeWaker::start().await;
    waker.set("survival", Behaviour::NeverRuns);
    let (pg, syncd) = setup(&waker, |c| {
        c.waker.poll_interval = Duration::from_millis(20)
    })
    .await;
    let mut away = syncd.watch("away").await;
    let mut client = syncd.client().await;
    let call = tokio::spawn(async move { wake(&mut client, "survival").await });
    let held = away
        .wait_until("WakeUpdate waking", DEADLINE, |s| {
            s.wakes.get("survival") == Some(&WakePhase::Waking)
        })
        .await;
    drop(away);
    // The wake ends while the edge is away.
    pg.execute("UPDATE servers SET state = 'running' WHERE name = 'survival'")
        .await;
    call.await.expect("task").expect("wake");
    let mut back = automc_tests::stack::RouteWatcher::resume(&syncd.grpc_url(), "away", &held)
        .await
        .expect("resume");
    let st = back
        .wait_until("the resume's wake set", DEADLINE, |s| s.wake_sets == 1)
        .await;
    assert_eq!(st.snapshots, 0, "resumed, not a snapshot");
    assert_eq!(
        st.wakes.get("survival"),
        None,
        "the finished wake is cleared, not shown as starting forever"
    );
}
