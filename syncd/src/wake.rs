//! One wake per server, however many edges ask.
//!
//! A map of server name → `watch::Receiver<WakeState>`: the first caller
//! spawns the wake task and later callers subscribe to the same receiver.
//! The task belongs to syncd, not to the RPC that started it, so a caller
//! that gives up (deadline, disconnect) does not cancel the wake for the
//! others. A success is reused for a short while; a `state = running` seen
//! through LISTEN ends the polling early; an opt-in status ping makes sure
//! "running" also means "answers". Every edge learns about wakes through
//! the watch stream (`WakeUpdate`), and `ListWakes` shows in-flight and
//! recent ones. Each phase is also announced on the Postgres channel
//! `automc_wakes` (through the LISTEN connection), so a hot standby relays
//! it to the edges connected to it.
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use automc_proto::v1::{WakeInfo, WakePhase, WakeResponse};
use automc_proto::WakeFailure as Failure;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;
use tracing::Instrument;

use crate::config::WakerConfig;
use crate::diff::Change;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::publisher::{now_ms, Publisher};
use crate::waker_client::{WakerClient, WakerError};
use automc_proto::v1::EventKind;

/// Why a wake failed. The text (which may name addresses) goes to logs,
/// `ListWakes` and the status message; edges act on [`WakeFailure::kind`] only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WakeFailure {
    #[error("{0}")]
    Waker(#[from] WakerError),
    #[error("server did not report running within {0:?}")]
    TimedOut(Duration),
    #[error("server reported running but {address} does not answer a status ping: {reason}")]
    NotReady { address: String, reason: String },
    #[error("syncd is shutting down")]
    Shutdown,
}

impl WakeFailure {
    /// The typed reason sent across the wire.
    pub fn kind(&self) -> Failure {
        match self {
            Self::Waker(w) => w.kind(),
            Self::TimedOut(_) => Failure::Timeout,
            Self::NotReady { .. } => Failure::NotReady,
            Self::Shutdown => Failure::ShuttingDown,
        }
    }
}

/// Where a wake stands; what callers wait on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeState {
    Waking,
    Running { address: String },
    Failed(WakeFailure),
}

struct InFlight {
    rx: watch::Receiver<WakeState>,
    callers: Arc<AtomicU64>,
    running_seen: Arc<Notify>,
    started: Instant,
    started_ms: i64,
}

struct Finished {
    server: String,
    state: WakeState,
    started_ms: i64,
    duration: Duration,
    callers: u64,
    ended: Instant,
}

#[derive(Default)]
struct Book {
    inflight: HashMap<String, InFlight>,
    recent: VecDeque<Finished>,
    /// Servers syncd stopped (or tried to), by name.
    stops: HashMap<String, StopState>,
    /// Stops in flight: a wake waits for the stop to end first.
    stopping: HashMap<String, watch::Receiver<bool>>,
    /// When edges were last told a wake of this server failed because no
    /// waker is configured (routes only; entries older than
    /// [`NOT_CONFIGURED_RETELL`] are dropped on the next insert).
    unconfigured_told: HashMap<String, Instant>,
}

/// Without a waker every login to a stopped server fails at once; edges are
/// told so (for their failed MOTD) at most this often per server, so a
/// flood of logins is not a flood of messages to every edge.
const NOT_CONFIGURED_RETELL: Duration = Duration::from_secs(10);

/// Where syncd's stop of an idle server stands (see `sleep`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopState {
    /// `POST /servers/{name}/stop` is in flight; wakes wait for it.
    Stopping { since_ms: i64 },
    /// The waker accepted the stop; the next wake clears this.
    Asleep { since_ms: i64 },
    /// The stop failed; it is tried again after another idle period.
    Failed { reason: String, at_ms: i64 },
    /// The waker has no stop endpoint (404, 405, 501): sleeping is off for
    /// this server until syncd restarts.
    Unsupported { reason: String },
}

/// The wake coordinator.
pub struct Wakes {
    cfg: WakerConfig,
    waker: Option<Arc<WakerClient>>,
    publisher: Arc<Publisher>,
    metrics: Metrics,
    events: Events,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    book: Mutex<Book>,
    /// Payloads for `automc_wakes`, sent by the LISTEN connection.
    relay: mpsc::UnboundedSender<String>,
}

/// A wake phase announced on `automc_wakes` by the syncd of `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    pub epoch: String,
    pub server: String,
    pub phase: WakePhase,
    /// Why, for `Failed` (UNSPECIFIED when the payload names none).
    pub failure: Failure,
}

fn phase_word(phase: WakePhase) -> &'static str {
    match phase {
        WakePhase::Waking => "waking",
        WakePhase::Running => "running",
        WakePhase::Failed => "failed",
        WakePhase::Asleep => "asleep",
        WakePhase::Stopping => "stopping",
        WakePhase::Unspecified => "unspecified",
    }
}

/// The `automc_wakes` payload: `v1 <phase> <epoch> <server>` (the server
/// name last, so it may hold anything). Epochs have no spaces. A failure
/// with a reason is `failed:<WakeFailure proto name>` (a standby that
/// predates it ignores the payload, as it ignores any other format).
pub fn relay_payload(epoch: &str, server: &str, phase: WakePhase, failure: Failure) -> String {
    let word = phase_word(phase);
    if phase == WakePhase::Failed && failure != Failure::Unspecified {
        format!("v1 {word}:{} {epoch} {server}", failure.as_str_name())
    } else {
        format!("v1 {word} {epoch} {server}")
    }
}

/// Parse an `automc_wakes` payload; `None` for anything else (another
/// version, garbage), which is ignored.
pub fn parse_relay(payload: &str) -> Option<Relayed> {
    let mut parts = payload.splitn(4, ' ');
    if parts.next()? != "v1" {
        return None;
    }
    let token = parts.next()?;
    let (word, failure) = match token.split_once(':') {
        Some((word, name)) => (word, Some(Failure::from_str_name(name)?)),
        None => (token, None),
    };
    let phase = match word {
        "waking" => WakePhase::Waking,
        "running" => WakePhase::Running,
        "failed" => WakePhase::Failed,
        "asleep" => WakePhase::Asleep,
        "stopping" => WakePhase::Stopping,
        _ => return None,
    };
    if failure.is_some() && phase != WakePhase::Failed {
        return None;
    }
    let epoch = parts.next()?.to_owned();
    let server = parts.next().filter(|s| !s.is_empty())?.to_owned();
    Some(Relayed {
        epoch,
        server,
        phase,
        failure: failure.unwrap_or(Failure::Unspecified),
    })
}

impl Wakes {
    #[allow(clippy::too_many_arguments)] // one call site (lib.rs), each a distinct concern
    pub fn new(
        cfg: WakerConfig,
        waker: Option<WakerClient>,
        publisher: Arc<Publisher>,
        metrics: Metrics,
        events: Events,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        relay: mpsc::UnboundedSender<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            relay,
            cfg,
            waker: waker.map(Arc::new),
            publisher,
            metrics,
            events,
            shutdown,
            tasks,
            book: Mutex::new(Book::default()),
        })
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tell this syncd's watchers, and (through Postgres) the standbys'.
    fn announce(&self, server: &str, phase: WakePhase) {
        self.announce_with(server, phase, Failure::Unspecified);
    }

    /// [`Self::announce`] with the failure of a `Failed` phase, so edges can
    /// say why in their status answers.
    fn announce_with(&self, server: &str, phase: WakePhase, failure: Failure) {
        self.publisher.set_wake(server, phase, failure);
        // The receiver lives as long as the LISTEN task; after shutdown
        // there is nobody to relay to.
        let _ = self.relay.send(relay_payload(
            self.publisher.epoch(),
            server,
            phase,
            failure,
        ));
    }

    /// Where syncd's stop of `server` stands, if it ever stopped it.
    pub fn stop_state(&self, server: &str) -> Option<StopState> {
        self.book().stops.get(server).cloned()
    }

    /// A wake of `server` is in flight.
    pub fn is_waking(&self, server: &str) -> bool {
        self.book().inflight.contains_key(server)
    }

    /// Unix ms at which the last successful wake of `server` ended, if it is
    /// still in the recent history.
    pub fn woke_ms(&self, server: &str) -> Option<i64> {
        self.book().recent.iter().rev().find_map(|f| match f.state {
            WakeState::Running { .. } if f.server == server => {
                Some(f.started_ms + i64::try_from(f.duration.as_millis()).unwrap_or(i64::MAX))
            }
            _ => None,
        })
    }

    /// Ask the waker to stop `server` (the sleep planner decided it is
    /// idle). Returns false when no stop was started: no waker, a wake or
    /// stop in flight, or a waker that cannot stop servers. Edges are told
    /// at once (`WAKE_PHASE_STOPPING`, then `ASLEEP` once the waker accepted
    /// it), so a login from now on is held and wakes the server again once
    /// the stop is done.
    pub fn stop(self: &Arc<Self>, server: &str) -> bool {
        let Some(waker) = self.waker.clone() else {
            return false;
        };
        let (tx, rx) = watch::channel(false);
        {
            let mut book = self.book();
            if book.inflight.contains_key(server)
                || matches!(
                    book.stops.get(server),
                    Some(StopState::Stopping { .. } | StopState::Unsupported { .. })
                )
            {
                return false;
            }
            book.stops.insert(
                server.to_owned(),
                StopState::Stopping { since_ms: now_ms() },
            );
            book.stopping.insert(server.to_owned(), rx);
        }
        self.metrics.sleep_outcome("requested");
        self.events
            .server(EventKind::SleepRequested, server, "", "");
        tracing::info!(
            server,
            "nobody played for the sleep period; asking the waker to stop it"
        );
        self.announce(server, WakePhase::Stopping);
        let this = self.clone();
        let server = server.to_owned();
        let span = tracing::info_span!("stop", server = %server);
        self.tasks.spawn(
            async move {
                let r = tokio::select! {
                    _ = this.shutdown.cancelled() => Err(None),
                    r = waker.stop(&server) => r.map_err(Some),
                };
                let kind = if r.is_ok() {
                    EventKind::SleepDone
                } else {
                    EventKind::SleepFailed
                };
                let (state, phase) = match r {
                    Ok(()) => {
                        this.metrics.sleep_outcome("stopped");
                        tracing::info!(server = %server, "waker accepted the stop; the next login wakes it");
                        (StopState::Asleep { since_ms: now_ms() }, WakePhase::Asleep)
                    }
                    Err(Some(e @ WakerError::StopUnsupported(_))) => {
                        this.metrics.sleep_outcome("unsupported");
                        tracing::warn!(server = %server, reason = %e, "sleeping disabled for this server");
                        (StopState::Unsupported { reason: e.to_string() }, WakePhase::Running)
                    }
                    Err(e) => {
                        let reason = e.map_or_else(|| "syncd is shutting down".to_owned(), |e| e.to_string());
                        this.metrics.sleep_outcome("failed");
                        tracing::warn!(server = %server, reason = %reason, "stop failed; the server keeps running");
                        (StopState::Failed { reason, at_ms: now_ms() }, WakePhase::Running)
                    }
                };
                let reason = match &state {
                    StopState::Unsupported { reason } | StopState::Failed { reason, .. } => {
                        reason.clone()
                    }
                    _ => String::new(),
                };
                {
                    let mut book = this.book();
                    book.stops.insert(server.clone(), state);
                    book.stopping.remove(&server);
                }
                this.events.server(kind, &server, "", &reason);
                this.announce(&server, phase);
                tx.send_replace(true);
            }
            .instrument(span),
        );
        true
    }

    /// Wake `server` (or join the wake in flight) and wait for the outcome.
    pub async fn wake(
        self: &Arc<Self>,
        server: &str,
        caller: &str,
    ) -> Result<WakeResponse, Status> {
        // A login that arrives while syncd stops the server waits for the
        // stop to end, then wakes it like any other.
        let stopping = self.book().stopping.get(server).cloned();
        if let Some(mut done) = stopping {
            tracing::info!(server, caller, "wake waits for the stop in flight");
            let _ = done.wait_for(|d| *d).await;
        }
        let Some(waker) = self.waker.clone() else {
            self.metrics.wake_outcome(Failure::NotConfigured.label());
            self.tell_not_configured(server);
            return Err(Failure::NotConfigured.to_status("waker not configured"));
        };
        let Some(route) = self.publisher.route(server) else {
            return Err(Failure::UnknownServer.to_status(format!("no route for server {server:?}")));
        };
        let (mut rx, started) = {
            let mut book = self.book();
            if let Some(reused) = self.recent_success(&book, server) {
                self.metrics.wake_outcome("reused");
                tracing::debug!(server, caller, "reusing a recent successful wake");
                return Ok(WakeResponse {
                    address: reused,
                    reused: true,
                    duration_ms: 0,
                });
            }
            match book.inflight.get(server) {
                Some(f) => {
                    f.callers.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(server, caller, "joining the wake in flight");
                    (f.rx.clone(), f.started)
                }
                None => {
                    if !matches!(book.stops.get(server), Some(StopState::Unsupported { .. })) {
                        book.stops.remove(server);
                    }
                    let (tx, rx) = watch::channel(WakeState::Waking);
                    let running_seen = Arc::new(Notify::new());
                    let started = Instant::now();
                    book.inflight.insert(
                        server.to_owned(),
                        InFlight {
                            rx: rx.clone(),
                            callers: Arc::new(AtomicU64::new(1)),
                            running_seen: running_seen.clone(),
                            started,
                            started_ms: now_ms(),
                        },
                    );
                    drop(book);
                    tracing::info!(server, caller, "wake started");
                    self.announce(server, WakePhase::Waking);
                    self.events
                        .server(EventKind::WakeStarted, server, "", caller);
                    let this = self.clone();
                    let span = tracing::info_span!("wake", server = %server);
                    let server = server.to_owned();
                    self.tasks.spawn(
                        async move {
                            this.run(waker, server, route.address, tx, running_seen)
                                .await;
                        }
                        .instrument(span),
                    );
                    (rx, started)
                }
            }
        };
        let state = match rx.wait_for(|s| *s != WakeState::Waking).await {
            Ok(s) => s.clone(),
            Err(_) => WakeState::Failed(WakeFailure::Shutdown),
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match state {
            WakeState::Running { address } => Ok(WakeResponse {
                address,
                reused: false,
                duration_ms,
            }),
            WakeState::Failed(f) => {
                Err(f.kind().to_status(format!("wake of {server} failed: {f}")))
            }
            WakeState::Waking => Err(Status::internal("wake ended without an outcome")),
        }
    }

    /// Announce a `NotConfigured` failure of a routed server, throttled.
    fn tell_not_configured(&self, server: &str) {
        if self.publisher.route(server).is_none() {
            return;
        }
        {
            let mut book = self.book();
            let now = Instant::now();
            if book
                .unconfigured_told
                .get(server)
                .is_some_and(|t| now.duration_since(*t) < NOT_CONFIGURED_RETELL)
            {
                return;
            }
            book.unconfigured_told
                .retain(|_, t| now.duration_since(*t) < NOT_CONFIGURED_RETELL);
            book.unconfigured_told.insert(server.to_owned(), now);
        }
        self.announce_with(server, WakePhase::Failed, Failure::NotConfigured);
    }

    fn recent_success(&self, book: &Book, server: &str) -> Option<String> {
        if matches!(
            book.stops.get(server),
            Some(StopState::Stopping { .. } | StopState::Asleep { .. })
        ) {
            // Stopped since: that address is not up any more.
            return None;
        }
        book.recent.iter().rev().find_map(|f| match &f.state {
            WakeState::Running { address }
                if f.server == server && f.ended.elapsed() < self.cfg.reuse_for =>
            {
                Some(address.clone())
            }
            _ => None,
        })
    }

    /// The wake task: outlives every caller.
    async fn run(
        self: Arc<Self>,
        waker: Arc<WakerClient>,
        server: String,
        fallback: String,
        tx: watch::Sender<WakeState>,
        running_seen: Arc<Notify>,
    ) {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        let outcome = tokio::select! {
            _ = self.shutdown.cancelled() => Err(WakeFailure::Shutdown),
            r = self.drive(&waker, &server, &fallback, &running_seen, deadline) => r,
        };
        let duration = started.elapsed();
        self.metrics.wake_duration.observe(duration.as_secs_f64());
        let state = match outcome {
            Ok(address) => {
                self.metrics.wake_outcome("success");
                tracing::info!(server = %server, address = %address, ?duration, "wake succeeded");
                WakeState::Running { address }
            }
            Err(f) => {
                let kind = f.kind();
                self.metrics.wake_outcome(kind.label());
                tracing::warn!(server = %server, failure = kind.label(), reason = %f, ?duration, "wake failed");
                WakeState::Failed(f)
            }
        };
        {
            let mut book = self.book();
            let callers = book
                .inflight
                .remove(&server)
                .map(|f| f.callers.load(Ordering::Relaxed))
                .unwrap_or(0);
            book.recent.push_back(Finished {
                server: server.clone(),
                state: state.clone(),
                started_ms: now_ms() - i64::try_from(duration.as_millis()).unwrap_or(0),
                duration,
                callers,
                ended: Instant::now(),
            });
            while book.recent.len() > self.cfg.history.max(1) {
                book.recent.pop_front();
            }
        }
        let phase = match &state {
            WakeState::Running { address } => {
                self.events
                    .server(EventKind::WakeFinished, &server, address, "");
                (WakePhase::Running, Failure::Unspecified)
            }
            WakeState::Failed(f) => {
                self.events
                    .server(EventKind::WakeFailed, &server, "", &f.to_string());
                (WakePhase::Failed, f.kind())
            }
            WakeState::Waking => (WakePhase::Failed, Failure::Unspecified),
        };
        self.announce_with(&server, phase.0, phase.1);
        tx.send_replace(state);
    }

    /// Start, poll until running (or LISTEN says so), optionally ping.
    async fn drive(
        &self,
        waker: &WakerClient,
        server: &str,
        fallback: &str,
        running_seen: &Notify,
        deadline: tokio::time::Instant,
    ) -> Result<String, WakeFailure> {
        let address = tokio::time::timeout_at(
            deadline,
            self.until_running(waker, server, fallback, running_seen),
        )
        .await
        .unwrap_or(Err(WakeFailure::TimedOut(self.cfg.timeout)))?;
        if self.cfg.ready_check {
            self.wait_ready(server, &address, deadline).await?;
        }
        Ok(address)
    }

    async fn until_running(
        &self,
        waker: &WakerClient,
        server: &str,
        fallback: &str,
        running_seen: &Notify,
    ) -> Result<String, WakeFailure> {
        waker.start(server).await?;
        let address = loop {
            tokio::select! {
                biased;
                _ = running_seen.notified() => {
                    tracing::debug!(server, "state=running seen through LISTEN");
                    break self.route_address(server).unwrap_or_else(|| fallback.to_owned());
                }
                st = waker.status(server) => {
                    let st = st?;
                    if st.is_running() {
                        break st
                            .address
                            .filter(|a| !a.is_empty())
                            .unwrap_or_else(|| fallback.to_owned());
                    }
                    tracing::debug!(server, state = %st.state, "waiting for the server to run");
                }
            }
            tokio::select! {
                _ = running_seen.notified() => {
                    break self.route_address(server).unwrap_or_else(|| fallback.to_owned());
                }
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
            }
        };
        Ok(address)
    }

    fn route_address(&self, server: &str) -> Option<String> {
        self.publisher.route(server).map(|r| r.address)
    }

    /// Ping until the address answers, up to the wake's deadline.
    async fn wait_ready(
        &self,
        server: &str,
        address: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), WakeFailure> {
        let pause = self.cfg.poll_interval.min(Duration::from_millis(500));
        let mut last = String::from("no ping attempted before the wake timeout");
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(WakeFailure::NotReady {
                    address: address.to_owned(),
                    reason: last,
                });
            }
            match mcproto::client::ping(address, self.cfg.ready_check_timeout.min(left)).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let reason = e.to_string();
                    if reason != last {
                        tracing::debug!(server, address, reason = %reason, "not ready yet");
                        last = reason;
                    }
                }
            }
            tokio::time::sleep_until((tokio::time::Instant::now() + pause).min(deadline)).await;
        }
    }

    /// Hook for applied change sets: a wake in flight for a server whose
    /// row now says `state = running` ends without waiting for the next poll.
    pub fn routes_changed(&self, change: &Change) {
        let book = self.book();
        if book.inflight.is_empty() {
            return;
        }
        for r in &change.upserts {
            if r.is_running() {
                if let Some(f) = book.inflight.get(&r.server) {
                    f.running_seen.notify_one();
                }
            }
        }
    }

    /// In-flight wakes first (oldest first), then recent ones (newest first).
    pub fn list(&self) -> Vec<WakeInfo> {
        let book = self.book();
        let mut out: Vec<WakeInfo> = book
            .inflight
            .iter()
            .map(|(server, f)| WakeInfo {
                server: server.clone(),
                outcome: "waking".into(),
                reason: String::new(),
                address: String::new(),
                started_ms: f.started_ms,
                duration_ms: u64::try_from(f.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                callers: f.callers.load(Ordering::Relaxed),
                failure: Failure::Unspecified as i32,
            })
            .collect();
        out.sort_by_key(|w| w.started_ms);
        out.extend(book.recent.iter().rev().map(|f| {
            let (outcome, reason, address, failure) = match &f.state {
                WakeState::Running { address } => (
                    "running",
                    String::new(),
                    address.clone(),
                    Failure::Unspecified,
                ),
                WakeState::Failed(r) => ("failed", r.to_string(), String::new(), r.kind()),
                WakeState::Waking => ("waking", String::new(), String::new(), Failure::Unspecified),
            };
            WakeInfo {
                server: f.server.clone(),
                outcome: outcome.into(),
                reason,
                address,
                started_ms: f.started_ms,
                duration_ms: u64::try_from(f.duration.as_millis()).unwrap_or(u64::MAX),
                callers: f.callers,
                failure: failure as i32,
            }
        }));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_payloads_round_trip_and_garbage_is_ignored() {
        for phase in [
            WakePhase::Waking,
            WakePhase::Running,
            WakePhase::Failed,
            WakePhase::Asleep,
            WakePhase::Stopping,
        ] {
            let p = relay_payload("18c-0a1b", "my server", phase, Failure::Unspecified);
            assert_eq!(
                parse_relay(&p),
                Some(Relayed {
                    epoch: "18c-0a1b".into(),
                    server: "my server".into(),
                    phase,
                    failure: Failure::Unspecified,
                })
            );
        }
        let p = relay_payload("e", "s", WakePhase::Failed, Failure::WakerRefused);
        assert_eq!(p, "v1 failed:WAKE_FAILURE_WAKER_REFUSED e s");
        assert_eq!(
            parse_relay(&p).map(|r| (r.phase, r.failure)),
            Some((WakePhase::Failed, Failure::WakerRefused))
        );
        for bad in [
            "",
            "v1",
            "v2 waking e s",
            "v1 dozing e s",
            "v1 waking e",
            "v1 waking e ",
            "v1 failed:WAKE_FAILURE_NOPE e s",
            "v1 waking:WAKE_FAILURE_TIMEOUT e s",
        ] {
            assert_eq!(parse_relay(bad), None, "{bad:?}");
        }
    }
}
