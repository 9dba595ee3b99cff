//! Held logins (issue 5, edge side): a login to a stopped or unreachable
//! server wakes it through syncd, is held, then joins; every failure ends
//! with a Disconnect the player can act on.
use std::time::Duration;

use automc_tests::mc::{
    login, login_answering, status_ping, BackendOptions, McBackend, DEFAULT_PROTOCOL,
};
use automc_tests::pg::TestPg;
use automc_tests::stack::{
    dead_address, eventually, migrated_pg, stack_tweaked, start_edge, start_syncd, EdgeHandle,
    SyncdHandle, DEADLINE,
};
use automc_tests::waker::{Behaviour, FakeWaker};

const WAIT: Duration = Duration::from_secs(30);

/// A waker whose "mc" says "starting" until [`release`].
async fn starting_waker() -> FakeWaker {
    let w = FakeWaker::start().await;
    w.set("mc", Behaviour::NeverRuns);
    w
}

/// From now on "mc" is running at `address`.
fn release(waker: &FakeWaker, address: &str) {
    waker.set("mc", Behaviour::starts_at(Duration::ZERO, address));
}

async fn stack(
    waker: &FakeWaker,
    route_address: &str,
    state: &str,
    hold: Duration,
) -> (TestPg, SyncdHandle, EdgeHandle) {
    let url = waker.url();
    stack_tweaked(
        &format!(
            "INSERT INTO servers (name, domain, address, state) VALUES ('mc', 'mc.example.com', '{route_address}', '{state}')"
        ),
        move |c| c.waker.url = Some(url),
        |c| {
            c.hold_timeout = hold;
            c.long_hold_timeout = hold;
            c.asleep_motd = "Zzz asleep".into();
            c.starting_motd = "Starting up".into();
        },
    )
    .await
}

#[tokio::test]
async fn login_to_a_stopped_server_is_held_until_it_starts_then_joins_at_the_woken_address() {
    let backend = McBackend::start(BackendOptions::default())
        .await
        .expect("backend");
    let waker = starting_waker().await;
    let woken = backend.addr().to_string();
    // The route's own address is dead: only the address the wake returns works.
    let route_address = dead_address();
    let (_pg, _syncd, edge) = stack(&waker, &route_address, "stopped", WAIT).await;

    let addr = edge.listen_addr;
    // A 1.21.4 client: it answers the edge's keep-alive requests while held.
    let held = login_answering(addr, DEFAULT_PROTOCOL, "mc.example.com", "steve")
        .await
        .expect("connect");
    eventually("the login is held", DEADLINE, || async {
        edge.metric("automc_edge_held_logins") == 1.0
    })
    .await;
    // The edge shows the starting MOTD while the server wakes (once the
    // WakeUpdate arrives on its watch stream).
    eventually("the starting MOTD", DEADLINE, || async {
        status_ping(addr, "mc.example.com", DEFAULT_PROTOCOL)
            .await
            .is_ok_and(|r| r.motd() == "Starting up")
    })
    .await;
    assert_eq!(backend.accepted(), 0);

    release(&waker, &woken);
    let recs = backend
        .wait_for_logins(1, WAIT)
        .await
        .expect("the held login joins");
    let (mut conn, _) = held.into_conn().await.expect("login");
    assert!(
        recs[0].received.starts_with(&conn.sent_first),
        "bytes replayed intact"
    );
    conn.send(b"hello").await.expect("send");
    assert_eq!(conn.read_exact(5).await.expect("echo"), b"hello");
    assert_eq!(waker.posts("mc"), 1);
    // For this connection only: the table still holds the route's address.
    assert_eq!(
        edge.running()
            .table()
            .table
            .get("mc")
            .expect("route")
            .address,
        route_address
    );
    assert_eq!(edge.metric("automc_edge_wakes_total{outcome=\"ok\"}"), 1.0);
}

#[tokio::test]
async fn many_logins_on_several_edges_cause_one_wake_and_all_join() {
    let backend = McBackend::start(BackendOptions::default())
        .await
        .expect("backend");
    let waker = starting_waker().await;
    let woken = backend.addr().to_string();
    let (_pg, syncd, edge1) = stack(&waker, &backend.addr().to_string(), "stopped", WAIT).await;
    let mut edges = vec![edge1];
    for _ in 0..2 {
        let e = start_edge(&[syncd.grpc_url()], |c| {
            c.hold_timeout = WAIT;
            c.starting_motd = "Starting up".into();
        })
        .await;
        e.ready().await;
        edges.push(e);
    }
    let mut logins = Vec::new();
    for e in &edges {
        for i in 0..20 {
            let addr = e.listen_addr;
            logins.push(
                login_answering(addr, DEFAULT_PROTOCOL, "mc.example.com", &format!("p{i}"))
                    .await
                    .expect("connect"),
            );
        }
    }
    eventually("all 60 logins held", DEADLINE, || async {
        edges
            .iter()
            .map(|e| e.metric("automc_edge_held_logins"))
            .sum::<f64>()
            == 60.0
    })
    .await;
    // Every edge shows the starting MOTD, not just the ones holding players.
    // The WakeUpdate reaches each edge on its watch stream, a moment after
    // the Wake calls that started it.
    for e in &edges {
        eventually("the starting MOTD on every edge", DEADLINE, || async {
            status_ping(e.listen_addr, "mc.example.com", DEFAULT_PROTOCOL)
                .await
                .is_ok_and(|r| r.motd() == "Starting up")
        })
        .await;
    }
    release(&waker, &woken);
    let recs = backend
        .wait_for_logins(60, WAIT)
        .await
        .expect("all 60 join");
    let mut conns = Vec::new();
    for l in logins {
        conns.push(l.into_conn().await.expect("login").0);
    }
    for c in &conns {
        assert!(
            recs.iter().any(|r| r.received.starts_with(&c.sent_first)),
            "every login's bytes arrive intact"
        );
    }
    assert_eq!(waker.posts("mc"), 1, "one wake for 60 logins on 3 edges");
}

#[tokio::test]
async fn a_failed_wake_ends_the_held_login_with_a_readable_reason_and_others_are_served() {
    let waker = FakeWaker::start().await;
    waker.set("mc", Behaviour::StartFails(500));
    let (_pg, _syncd, edge) = stack(&waker, &dead_address(), "stopped", WAIT).await;
    let mut conn = login(edge.listen_addr, "mc.example.com", "steve")
        .await
        .expect("connect");
    let text = conn.read_disconnect().await.expect("disconnect");
    assert!(text.contains("could not be started"), "{text}");
    assert!(
        !text.contains("HTTP") && !text.contains("127.0.0.1"),
        "{text}"
    );
    assert!(waker.posts("mc") >= 1);
    // The edge keeps answering, no longer "starting" once the failed wake is known: the
    // failed MOTD (--failed-motd) with the reason's category.
    eventually(
        "the failed MOTD after the failed wake",
        DEADLINE,
        || async {
            status_ping(edge.listen_addr, "mc.example.com", DEFAULT_PROTOCOL)
                .await
                .is_ok_and(|r| r.motd().contains("could not be started (waker refused)"))
        },
    )
    .await;
    assert_eq!(edge.metric("automc_edge_held_logins"), 0.0);
}

#[tokio::test]
async fn a_wake_longer_than_the_hold_timeout_tells_the_player_to_retry() {
    let waker = starting_waker().await;
    let (_pg, _syncd, edge) =
        stack(&waker, &dead_address(), "stopped", Duration::from_secs(1)).await;
    let mut conn = login(edge.listen_addr, "mc.example.com", "steve")
        .await
        .expect("connect");
    let text = conn.read_disconnect().await.expect("disconnect");
    assert!(
        text.contains("starting") && text.contains("try again"),
        "{text}"
    );
    assert_eq!(
        edge.metric("automc_edge_wakes_total{outcome=\"timeout\"}"),
        1.0
    );
}

#[tokio::test]
async fn with_syncd_unreachable_a_login_to_a_down_server_ends_quickly_with_a_clear_message() {
    let waker = FakeWaker::start().await;
    waker.set("mc", Behaviour::StartFails(500));
    let (_pg, syncd, edge) = stack(&waker, &dead_address(), "running", WAIT).await;
    syncd.stop().await;
    let mut conn = login(edge.listen_addr, "mc.example.com", "steve")
        .await
        .expect("connect");
    let text = conn
        .read_disconnect()
        .await
        .expect("disconnect well before the hold timeout");
    assert!(text.contains("unreachable"), "{text}");
}

#[tokio::test]
async fn a_player_leaving_while_held_does_not_cancel_the_wake_for_the_next() {
    let backend = McBackend::start(BackendOptions::default())
        .await
        .expect("backend");
    let waker = starting_waker().await;
    let woken = backend.addr().to_string();
    let (_pg, _syncd, edge) = stack(&waker, &dead_address(), "stopped", WAIT).await;
    let quitter = login(edge.listen_addr, "mc.example.com", "quitter")
        .await
        .expect("connect");
    eventually("the first login is held", DEADLINE, || async {
        edge.metric("automc_edge_held_logins") == 1.0
    })
    .await;
    drop(quitter);
    eventually("the quitter is no longer held", DEADLINE, || async {
        edge.metric("automc_edge_held_logins") == 0.0
    })
    .await;
    assert_eq!(
        edge.metric("automc_edge_wakes_total{outcome=\"abandoned\"}"),
        1.0
    );
    let addr = edge.listen_addr;
    let next = login_answering(addr, DEFAULT_PROTOCOL, "mc.example.com", "next")
        .await
        .expect("connect");
    eventually("the next login is held", DEADLINE, || async {
        edge.metric("automc_edge_held_logins") == 1.0
    })
    .await;
    release(&waker, &woken);
    let recs = backend
        .wait_for_logins(1, WAIT)
        .await
        .expect("the next player joins");
    let (conn, _) = next.into_conn().await.expect("login");
    assert!(recs[0].received.starts_with(&conn.sent_first));
    assert_eq!(
        waker.posts("mc"),
        1,
        "the wake in flight was joined, not restarted"
    );
}

#[tokio::test]
async fn player_messages_after_failed_wakes_carry_no_address() {
    let waker = FakeWaker::start().await;
    let elsewhere = FakeWaker::start().await;
    let woken = dead_address();
    let route_address = dead_address();
    waker.set("refused", Behaviour::StartFails(503));
    waker.set("notready", Behaviour::starts_at(Duration::ZERO, &woken));
    waker.set(
        "redirect",
        Behaviour::Redirects {
            to: elsewhere.url(),
        },
    );
    let pg = migrated_pg().await;
    pg.execute(&format!(
        "INSERT INTO servers (name, domain, address, state) VALUES
           ('refused', 'refused.example.com', '{route_address}', 'stopped'),
           ('notready', 'notready.example.com', '{route_address}', 'stopped'),
           ('redirect', 'redirect.example.com', '{route_address}', 'stopped')"
    ))
    .await;
    let url = waker.url();
    let syncd = start_syncd(&pg.dsn(), move |c| {
        c.waker.url = Some(url);
        c.waker.ready_check = true;
        c.waker.timeout = Duration::from_secs(2);
    })
    .await;
    let edge = start_edge(&[syncd.grpc_url()], |_| {}).await;
    edge.ready().await;
    let secrets = [
        woken.as_str(),
        route_address.as_str(),
        &waker.url(),
        &elsewhere.url(),
        "127.0.0.1",
        "HTTP",
    ];
    for (host, expect) in [
        ("refused.example.com", "could not be started"),
        ("notready.example.com", "not accepting players yet"),
        ("redirect.example.com", "could not be started"),
    ] {
        let mut conn = login(edge.listen_addr, host, "steve")
            .await
            .expect("connect");
        let text = conn.read_disconnect().await.expect("disconnect");
        assert!(text.contains(expect), "{host}: {text}");
        for s in secrets {
            assert!(!text.contains(s), "{host}: the player sees {s:?}: {text}");
        }
    }
}
