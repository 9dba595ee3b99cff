//! The long hold (issue 17): a 1.13+ login to a sleeping server is kept alive with Login
//! Plugin Requests for the whole wake, so a client with a strict read timeout joins a
//! server that takes several times that timeout to start, without a retry, and the backend
//! gets exactly the bytes the player sent. Older clients keep the bounded silent hold, and
//! a client that answers anything but the requests is let go with a Disconnect.
use std::time::Duration;

use automc_tests::mc::{
    login_answering, login_with, plugin_response_packet, BackendOptions, McBackend, McConn,
    DEFAULT_PROTOCOL,
};
use automc_tests::pg::TestPg;
use automc_tests::stack::{
    dead_address, eventually, migrated_pg, stack_tweaked, start_edge, start_syncd, EdgeHandle,
    SyncdHandle, DEADLINE,
};
use automc_tests::waker::{Behaviour, FakeWaker, StopBehaviour};
use tokio_util::sync::CancellationToken;

/// The vanilla client's network read timeout (30 s), scaled down.
const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The keep-alive interval, scaled down the same way (default 5 s against 30 s).
const KEEPALIVE: Duration = Duration::from_millis(300);
/// The server takes three client timeouts to start.
const START_DELAY: Duration = Duration::from_secs(6);
const WAIT: Duration = Duration::from_secs(60);
/// 1.12.2: the last version whose client does not answer Login Plugin Requests.
const PRE_1_13: i32 = 340;

/// A backend, and a waker that starts "mc" at it `delay` after the first POST.
async fn backend_waking_after(delay: Duration) -> (McBackend, FakeWaker) {
    let backend = McBackend::start(BackendOptions::default())
        .await
        .expect("backend");
    let waker = FakeWaker::start().await;
    waker.set(
        "mc",
        Behaviour::starts_at(delay, &backend.addr().to_string()),
    );
    (backend, waker)
}

async fn stack(
    waker: &FakeWaker,
    tweak: impl FnOnce(&mut edge::Config),
) -> (TestPg, SyncdHandle, EdgeHandle) {
    stack_with(waker, "", tweak).await
}

/// [`stack`] with more SQL run before syncd starts (so its first snapshot has it).
async fn stack_with(
    waker: &FakeWaker,
    sql: &str,
    tweak: impl FnOnce(&mut edge::Config),
) -> (TestPg, SyncdHandle, EdgeHandle) {
    let url = waker.url();
    // The route's own address is dead: only the woken address works.
    stack_tweaked(
        &format!(
            "INSERT INTO servers (name, domain, address, state) VALUES ('mc', 'mc.example.com', '{}', 'stopped'); {sql}",
            dead_address()
        ),
        move |c| {
            c.waker.url = Some(url);
            c.waker.timeout = WAIT;
        },
        |c| {
            c.hold_keepalive_interval = KEEPALIVE;
            tweak(c);
        },
    )
    .await
}

#[tokio::test]
async fn a_client_with_a_strict_read_timeout_joins_a_server_that_takes_three_timeouts_to_start() {
    let (backend, waker) = backend_waking_after(START_DELAY).await;
    let (_pg, _syncd, edge) = stack(&waker, |_| {}).await;

    let mut conn = login_with(
        edge.listen_addr,
        DEFAULT_PROTOCOL,
        "mc.example.com",
        "steve",
        &[],
    )
    .await
    .expect("connect");
    // Like vanilla: every packet within the read timeout, every request answered.
    let answered = conn
        .answer_plugin_requests_until(CLIENT_READ_TIMEOUT, backend.wait_for_logins(1, WAIT))
        .await
        .expect("the client never waited longer than its read timeout");
    assert!(!answered.is_empty());
    let mut ids: Vec<i32> = answered.iter().map(|r| r.message_id).collect();
    ids.dedup();
    assert_eq!(ids.len(), answered.len(), "message ids are unique");
    assert!(answered.iter().all(|r| r.channel == "automc:hold"));

    let recs = backend.logins();
    assert_eq!(recs.len(), 1, "joined on the first try");
    assert_eq!(
        recs[0].received, conn.sent_first,
        "the backend got exactly the handshake and Login Start, no plugin answer"
    );
    conn.send(b"hello").await.expect("send");
    assert_eq!(conn.read_exact(5).await.expect("echo"), b"hello");
    assert_eq!(waker.posts("mc"), 1);
    assert_eq!(edge.metric("automc_edge_wakes_total{outcome=\"ok\"}"), 1.0);
}

#[tokio::test]
async fn a_client_before_1_13_keeps_the_bounded_silent_hold() {
    let waker = FakeWaker::start().await;
    waker.set("mc", Behaviour::NeverRuns);
    let (_pg, _syncd, edge) = stack(&waker, |c| c.hold_timeout = Duration::from_secs(2)).await;
    let mut conn = login_with(edge.listen_addr, PRE_1_13, "mc.example.com", "old", &[])
        .await
        .expect("connect");
    // Nothing at all before the Disconnect: no plugin request for a client that would not
    // understand it.
    let (id, _) = conn.read_packet().await.expect("an answer within the hold");
    assert_eq!(id, 0x00, "the first packet is the login Disconnect");
    assert_eq!(
        edge.metric("automc_edge_wakes_total{outcome=\"timeout\"}"),
        1.0
    );
}

/// What a test client answers to the request with this message id.
type AnswerTo = dyn FnOnce(i32) -> Vec<u8>;

/// Log in, answer the first request with `answer`, and return the Disconnect text.
async fn break_the_hold(
    edge: &EdgeHandle,
    name: &str,
    answer: impl FnOnce(i32) -> Vec<u8>,
) -> String {
    let mut conn: McConn = login_with(
        edge.listen_addr,
        DEFAULT_PROTOCOL,
        "mc.example.com",
        name,
        &[],
    )
    .await
    .expect("connect");
    let req = conn
        .read_plugin_request(Duration::from_secs(30))
        .await
        .expect("a keep-alive request");
    conn.send(&answer(req.message_id)).await.expect("send");
    conn.read_disconnect().await.expect("a Disconnect")
}

#[tokio::test]
async fn a_held_client_that_answers_wrongly_gets_a_disconnect_and_the_backend_never_sees_it() {
    let (backend, waker) = backend_waking_after(START_DELAY).await;
    let (_pg, _syncd, edge) = stack(&waker, |_| {}).await;

    let cases: [(&str, Box<AnswerTo>); 4] = [
        ("garbage", Box::new(|_| b"GET / HTTP/1.1\r\n\r\n".to_vec())),
        (
            "wrong_id",
            Box::new(|id| plugin_response_packet(id.wrapping_add(7), None)),
        ),
        (
            "oversized",
            Box::new(|id| plugin_response_packet(id, Some(&[0u8; 4096]))),
        ),
        // A second Login Start: a real packet, but not the one waited for.
        (
            "login_again",
            Box::new(|_| automc_tests::mc::login_start_packet(DEFAULT_PROTOCOL, "again")),
        ),
    ];
    for (name, answer) in cases {
        let text = break_the_hold(&edge, name, answer).await;
        assert!(text.contains("unexpected data"), "{name}: {text}");
    }
    assert_eq!(
        edge.metric("automc_edge_connections_total{outcome=\"hold_broken\"}"),
        4.0
    );
    // A well-behaved player joins once the server is up: the only login the backend ever
    // gets, byte for byte.
    let good = login_answering(edge.listen_addr, DEFAULT_PROTOCOL, "mc.example.com", "good")
        .await
        .expect("connect");
    let sent_first = good.sent_first.clone();
    let recs = backend.wait_for_logins(1, WAIT).await.expect("joins");
    let (_conn, answered) = good.into_conn().await.expect("conn");
    assert!(answered > 0);
    assert_eq!(backend.accepted(), 1, "no connection for the broken holds");
    assert_eq!(recs[0].received, sent_first);
    assert_eq!(recs[0].username.as_deref(), Some("good"));
}

#[tokio::test]
async fn held_logins_from_one_address_beyond_its_share_are_refused_readably() {
    let (backend, waker) = backend_waking_after(START_DELAY).await;
    let (_pg, _syncd, edge) = stack(&waker, |c| c.limits.max_held_logins_per_ip = 2).await;
    let mut held = Vec::new();
    for i in 0..2 {
        held.push(
            login_answering(
                edge.listen_addr,
                DEFAULT_PROTOCOL,
                "mc.example.com",
                &format!("p{i}"),
            )
            .await
            .expect("connect"),
        );
    }
    eventually("two logins held", DEADLINE, || async {
        edge.metric("automc_edge_held_logins") == 2.0
    })
    .await;
    let mut third = login_with(
        edge.listen_addr,
        DEFAULT_PROTOCOL,
        "mc.example.com",
        "p2",
        &[],
    )
    .await
    .expect("connect");
    let text = third.read_disconnect().await.expect("a Disconnect");
    assert!(text.contains("already waiting"), "{text}");
    // The two held ones still join.
    backend.wait_for_logins(2, WAIT).await.expect("both join");
    for h in held {
        h.into_conn().await.expect("conn");
    }
}

#[tokio::test]
async fn only_listed_players_may_wake_a_sleeping_server_and_others_read_that_it_is_asleep() {
    let (backend, waker) = backend_waking_after(Duration::ZERO).await;
    let (_pg, _syncd, edge) = stack(&waker, |c| {
        c.wake_allow_players = vec!["Alex".into(), "Notch".into()];
    })
    .await;
    let mut steve = login_with(
        edge.listen_addr,
        DEFAULT_PROTOCOL,
        "mc.example.com",
        "steve",
        &[],
    )
    .await
    .expect("connect");
    let text = steve.read_disconnect().await.expect("a Disconnect");
    assert!(text.contains("asleep"), "{text}");
    assert_eq!(waker.posts("mc"), 0, "steve woke nothing");
    // Names compare case-insensitively.
    let alex = login_answering(edge.listen_addr, DEFAULT_PROTOCOL, "mc.example.com", "alex")
        .await
        .expect("connect");
    backend.wait_for_logins(1, WAIT).await.expect("alex joins");
    alex.into_conn().await.expect("conn");
    assert_eq!(waker.posts("mc"), 1);
    assert_eq!(
        edge.metric("automc_edge_refused_total{reason=\"wake_not_allowed\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_servers_own_wake_allow_list_replaces_the_flag_and_an_empty_one_lets_anyone_wake() {
    let (backend, waker) = backend_waking_after(Duration::ZERO).await;
    waker.set(
        "open",
        Behaviour::starts_at(Duration::ZERO, &backend.addr().to_string()),
    );
    let (_pg, _syncd, edge) = stack_with(
        &waker,
        &format!(
            "INSERT INTO servers (name, domain, address, state)
               VALUES ('open', 'open.example.com', '{}', 'stopped');
             INSERT INTO server_options (server, wake_allow_players)
               VALUES ('mc', '{{Alex}}'), ('open', '{{}}')",
            dead_address()
        ),
        |c| c.wake_allow_players = vec!["Notch".into()],
    )
    .await;
    // Notch is on the flag's list, not on the server's: the server's list wins.
    let mut notch = login_with(
        edge.listen_addr,
        DEFAULT_PROTOCOL,
        "mc.example.com",
        "Notch",
        &[],
    )
    .await
    .expect("connect");
    let text = notch.read_disconnect().await.expect("a Disconnect");
    assert!(text.contains("asleep"), "{text}");
    assert_eq!(waker.posts("mc"), 0, "Notch woke nothing");
    let alex = login_answering(edge.listen_addr, DEFAULT_PROTOCOL, "mc.example.com", "ALEX")
        .await
        .expect("connect");
    backend.wait_for_logins(1, WAIT).await.expect("alex joins");
    alex.into_conn().await.expect("conn");
    assert_eq!(waker.posts("mc"), 1);
    // An empty list: anyone wakes "open", though steve is on neither list.
    let steve = login_answering(
        edge.listen_addr,
        DEFAULT_PROTOCOL,
        "open.example.com",
        "steve",
    )
    .await
    .expect("connect");
    backend.wait_for_logins(2, WAIT).await.expect("steve joins");
    steve.into_conn().await.expect("conn");
    assert_eq!(waker.posts("open"), 1);
}

#[tokio::test]
async fn the_starting_motd_shows_how_long_the_wake_runs_and_how_many_wait() {
    let waker = FakeWaker::start().await;
    waker.set("mc", Behaviour::NeverRuns);
    let (_pg, _syncd, edge) = stack(&waker, |c| {
        c.starting_motd = "Starting for {elapsed}s, {waiting} waiting".into();
    })
    .await;
    let held = login_answering(
        edge.listen_addr,
        DEFAULT_PROTOCOL,
        "mc.example.com",
        "first",
    )
    .await
    .expect("connect");
    eventually(
        "the progress MOTD with one player waiting",
        DEADLINE,
        || async {
            automc_tests::mc::status_ping(edge.listen_addr, "mc.example.com", DEFAULT_PROTOCOL)
                .await
                .is_ok_and(|r| {
                    let m = r.motd();
                    let secs = m
                        .strip_prefix("Starting for ")
                        .and_then(|rest| rest.strip_suffix("s, 1 waiting"));
                    secs.is_some_and(|s| s.parse::<u64>().is_ok())
                })
        },
    )
    .await;
    drop(held);
}

#[tokio::test]
async fn after_a_failed_wake_status_pings_show_the_failed_motd_with_the_reason() {
    let waker = FakeWaker::start().await;
    waker.set("mc", Behaviour::StartFails(503));
    let (pg, _syncd, edge) = stack(&waker, |c| {
        c.failed_motd = "Failed: {reason}".into();
    })
    .await;
    let motd = || async {
        automc_tests::mc::status_ping(edge.listen_addr, "mc.example.com", DEFAULT_PROTOCOL)
            .await
            .map(|r| r.motd())
            .unwrap_or_default()
    };
    assert!(!motd().await.starts_with("Failed"), "no wake failed yet");
    let mut conn = login_with(
        edge.listen_addr,
        DEFAULT_PROTOCOL,
        "mc.example.com",
        "steve",
        &[],
    )
    .await
    .expect("connect");
    let text = conn.read_disconnect().await.expect("a Disconnect");
    assert!(text.contains("could not be started"), "{text}");
    eventually("the failed MOTD with its reason", DEADLINE, || async {
        motd().await == "Failed: waker refused"
    })
    .await;
    // The server's own text wins over the flag.
    pg.execute(
        "INSERT INTO server_options (server, failed_motd) VALUES ('mc', 'mc is broken ({reason})')",
    )
    .await;
    eventually("the server's failed MOTD", DEADLINE, || async {
        motd().await == "mc is broken (waker refused)"
    })
    .await;
}

#[tokio::test]
async fn while_a_stop_is_in_flight_status_shows_stopping_and_a_login_is_held_then_wakes_it() {
    let backend = McBackend::start(BackendOptions::default())
        .await
        .expect("backend");
    let pg = migrated_pg().await;
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES ('mc', 'mc.example.com', '{}', 'running')",
        backend.addr()
    ))
    .await;
    let waker = FakeWaker::start().await;
    let release = CancellationToken::new();
    waker.set_stop("mc", StopBehaviour::UntilReleased(release.clone()));
    waker.set(
        "mc",
        Behaviour::starts_at(Duration::ZERO, &backend.addr().to_string()),
    );
    let url = waker.url();
    let syncd = start_syncd(&pg.dsn(), move |c| {
        c.waker.url = Some(url);
        c.waker.timeout = WAIT;
        // The stop request stays in flight until the test releases it.
        c.waker.request_timeout = WAIT;
        c.sleep.sleep_after = Some(Duration::from_millis(300));
        c.sleep.min_uptime = Duration::ZERO;
    })
    .await;
    let edge = start_edge(&[syncd.grpc_url()], |c| {
        c.hold_keepalive_interval = KEEPALIVE;
        c.stopping_motd = "Going to sleep".into();
    })
    .await;
    edge.ready().await;
    eventually(
        "the stopping MOTD while the stop is in flight",
        DEADLINE,
        || async {
            automc_tests::mc::status_ping(edge.listen_addr, "mc.example.com", DEFAULT_PROTOCOL)
                .await
                .is_ok_and(|r| r.motd() == "Going to sleep")
        },
    )
    .await;
    assert_eq!(waker.stops("mc"), 1);
    let held = login_answering(edge.listen_addr, DEFAULT_PROTOCOL, "mc.example.com", "late")
        .await
        .expect("connect");
    eventually("the login is held", DEADLINE, || async {
        edge.metric("automc_edge_held_logins") == 1.0
    })
    .await;
    assert!(
        backend.logins().is_empty(),
        "no login reaches a stopping server"
    );
    assert_eq!(waker.posts("mc"), 0, "the wake waits for the stop to end");
    release.cancel();
    let recs = backend
        .wait_for_logins(1, WAIT)
        .await
        .expect("joins once the stop ended and the wake succeeded");
    held.into_conn().await.expect("conn");
    assert_eq!(recs[0].username.as_deref(), Some("late"));
    assert_eq!(waker.posts("mc"), 1);
}
