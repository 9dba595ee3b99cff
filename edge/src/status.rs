//! Server-list pings. By default the edge answers every status ping itself:
//! with the backend's real status when its route says it runs, with the last
//! good answer marked stale while the backend is briefly unreachable, and
//! otherwise with a local MOTD (asleep, starting, unknown host) that echoes
//! the client's protocol so the client does not flag a version mismatch.
//! Pongs are then local.
//!
//! Backend answers come through [`StatusCache`]: one entry per (backend
//! address, hostname as the backend sees it, protocol bucket) in a bounded
//! LRU, and single-flight: while a fetch for a key is in the air every ping
//! for that key waits for it and gets its answer, so even with a TTL of zero
//! a backend sees at most one status fetch per key at a time. The fetch runs
//! as a task of its own, so the player who started it may leave without
//! failing the others.
//!
//! With `--status-mode relay` a running backend's status conversation is
//! instead forwarded byte for byte ([`relay`]): the player sees the backend's
//! own answer and pong latency.
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automc_proto::v1::{Route, WakeFailure, WakePhase};
use automc_proto::RouteState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::{Shared, UnknownHost};
use mcproto::client::{fetch_status, StatusTarget, MAX_STATUS_BYTES};
use mcproto::{Handshake, LegacyPing, NextState, StatusInfo, StatusPacket};

/// Status cache entries kept by default (`--status-cache-size`).
pub const DEFAULT_CACHE_ENTRIES: usize = 4096;
/// Version name shown in local answers.
pub const LOCAL_VERSION_NAME: &str = "automc";
/// Most backends of one route asked for one status ping.
const MAX_STATUS_BACKENDS: usize = 3;
/// Protocol used to fetch a backend's status on behalf of a legacy client.
const LEGACY_FETCH_PROTOCOL: i32 = 47;
/// Protocol numbers above this (outside the snapshot range) are not a real
/// client's: they share one cache entry instead of one each.
/// Releases are at 774 in 2026 and grow by a few a year.
const MAX_PLAUSIBLE_PROTOCOL: i32 = 1024;
/// Snapshots number their protocols from here (`0x40000000 | n`).
const SNAPSHOT_PROTOCOL_BASE: i32 = 0x4000_0000;
/// Protocol sent when fetching for an implausible client protocol: "unknown".
const UNKNOWN_PROTOCOL: i32 = -1;

/// How status pings for a running backend are answered (`--status-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StatusMode {
    /// Fetch the backend's status, cache it, answer pongs locally.
    #[default]
    Cache,
    /// Forward the whole status conversation to the backend byte for byte.
    Relay,
}

/// Which client protocols share a cached answer: each real protocol number
/// its own, every implausible one (chosen at random by a scanner, say) one
/// for all, so clients cannot grow the key space at will.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolBucket {
    Plausible(i32),
    Other,
}

impl ProtocolBucket {
    pub fn of(protocol: i32) -> Self {
        let release = (0..=MAX_PLAUSIBLE_PROTOCOL).contains(&protocol);
        let snapshot = (SNAPSHOT_PROTOCOL_BASE..=SNAPSHOT_PROTOCOL_BASE + MAX_PLAUSIBLE_PROTOCOL)
            .contains(&protocol);
        if release || snapshot {
            Self::Plausible(protocol)
        } else {
            Self::Other
        }
    }

    /// The protocol a fetch for this bucket announces to the backend.
    pub fn fetch_protocol(self) -> i32 {
        match self {
            Self::Plausible(p) => p,
            Self::Other => UNKNOWN_PROTOCOL,
        }
    }
}

/// What one cached answer is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatusKey {
    pub address: String,
    /// The hostname sent to the backend (a hub or a Velocity proxy with
    /// forced hosts answers per hostname), as [`cache_hostname`] keys it.
    pub hostname: String,
    pub protocol: ProtocolBucket,
}

/// Longest Forge marker kept in a cache key (`FML3` today).
const MAX_MARKER_CHARS: usize = 8;

/// The part of a server address that a backend's status answer depends on:
/// the hostname as routing reads it (case, a trailing dot and a
/// per-connection suffix such as TCPShield's signed `///ip///time///sig` do
/// not make another answer, and would otherwise make every ping a miss and
/// let a client push real entries out of the cache), plus a Forge marker,
/// for which a Forge server lists its mods.
pub fn cache_hostname(server_address: &str) -> String {
    let host = automc_proto::normalize_player_hostname(server_address);
    let marker = server_address
        .split('\0')
        .nth(1)
        .filter(|m| (m.starts_with("FML") || *m == "FORGE") && m.len() <= MAX_MARKER_CHARS);
    match marker {
        Some(m) => format!("{host}\0{m}"),
        None => host,
    }
}

/// What a finished fetch hands its waiters.
type FetchResult = Option<Result<Arc<str>, ()>>;

#[derive(Debug, Default)]
struct Entry {
    /// Last good answer and when it was fetched.
    good: Option<(Arc<str>, Instant)>,
    /// Last failed fetch, so pings right behind it do not retry at once.
    failed_at: Option<Instant>,
    /// The fetch in the air, if any: every ping for this key waits on it.
    in_flight: Option<watch::Receiver<FetchResult>>,
}

impl Entry {
    /// The last good answer marked stale, while it is recent enough.
    fn stale(&self, now: Instant, stale_for: Duration) -> Fetched {
        match &self.good {
            Some((json, at)) if now.duration_since(*at) < stale_for => {
                match mcproto::mark_status_stale(json, "(cached)") {
                    Some(s) => Fetched::Stale(s),
                    None => Fetched::Unavailable,
                }
            }
            _ => Fetched::Unavailable,
        }
    }
}

type Lru = lru::LruCache<StatusKey, Entry>;

/// Backend status answers, shared by every connection of the edge.
#[derive(Debug, Clone)]
pub struct StatusCache {
    entries: Arc<Mutex<Lru>>,
}

/// What a status lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    Fresh(Arc<str>),
    /// The backend did not answer; this is its last good answer, marked.
    Stale(String),
    Unavailable,
}

/// How a cache lookup proceeds once the lock is released.
enum Step {
    Done(Fetched),
    Wait(watch::Receiver<FetchResult>),
}

impl StatusCache {
    /// A cache of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: Arc::new(Mutex::new(Lru::new(cap))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The backend's status for `target`: cached when fresh, else from the
    /// fetch in the air for its key, else from a new fetch that every ping
    /// arriving meanwhile shares. The protocol announced is the bucket's.
    pub async fn get(
        &self,
        mut target: StatusTarget,
        ttl: Duration,
        stale_for: Duration,
        timeout: Duration,
    ) -> Fetched {
        let bucket = ProtocolBucket::of(target.handshake.protocol_version);
        target.handshake.protocol_version = bucket.fetch_protocol();
        let key = StatusKey {
            address: target.address.clone(),
            hostname: cache_hostname(&target.handshake.server_address),
            protocol: bucket,
        };
        let step = {
            let mut lru = self.lock();
            let entry = lru.get_or_insert_mut(key.clone(), Entry::default);
            let now = Instant::now();
            match (&entry.good, &entry.in_flight) {
                (Some((json, at)), _) if now.duration_since(*at) < ttl => {
                    Step::Done(Fetched::Fresh(json.clone()))
                }
                // A fetch task that ended without clearing its mark (it
                // panicked) dropped its sender: fetch again, never wait on it.
                (_, Some(rx)) if rx.has_changed().is_ok() => Step::Wait(rx.clone()),
                _ if entry.failed_at.is_some_and(|t| now.duration_since(t) < ttl) => {
                    Step::Done(entry.stale(now, stale_for))
                }
                _ => {
                    let (tx, rx) = watch::channel(None);
                    entry.in_flight = Some(rx.clone());
                    tokio::spawn(self.clone().fetch_for(key.clone(), target, timeout, tx));
                    Step::Wait(rx)
                }
            }
        };
        let mut rx = match step {
            Step::Done(f) => return f,
            Step::Wait(rx) => rx,
        };
        let result = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|r| r.clone());
        match result {
            Some(Ok(json)) => Fetched::Fresh(json),
            _ => self
                .lock()
                .peek(&key)
                .map_or(Fetched::Unavailable, |e| e.stale(Instant::now(), stale_for)),
        }
    }

    /// The single fetch for `key`: record its outcome, then wake its waiters.
    async fn fetch_for(
        self,
        key: StatusKey,
        target: StatusTarget,
        timeout: Duration,
        tx: watch::Sender<FetchResult>,
    ) {
        let result = fetch_status(&target, timeout).await;
        let shared = match result {
            Ok(json) => Ok(Arc::<str>::from(json)),
            Err(e) => {
                tracing::debug!(backend = %target.address, error = %e, "status fetch failed");
                Err(())
            }
        };
        {
            let mut lru = self.lock();
            // Evicted meanwhile: a good answer is still worth keeping.
            let entry = lru.get_or_insert_mut(key, Entry::default);
            // Only this fetch's own mark: after an eviction another may be up.
            let mine = tx.subscribe();
            if entry
                .in_flight
                .as_ref()
                .is_some_and(|rx| rx.same_channel(&mine))
            {
                entry.in_flight = None;
            }
            match &shared {
                Ok(json) => {
                    entry.good = Some((json.clone(), Instant::now()));
                    entry.failed_at = None;
                }
                Err(()) => entry.failed_at = Some(Instant::now()),
            }
        }
        tx.send_replace(Some(shared));
    }
}

/// A backend status fetch that failed.
/// The answer a status ping gets, decided from the route and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Fetch the backend's status (it runs).
    Backend,
    /// A local MOTD.
    Local(String),
    /// No answer: close.
    Close,
}

/// What a status ping is for: the route its hostname matched, and what a
/// wildcard captured (for `{1}` in backend addresses).
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    pub route: Option<&'a Route>,
    pub capture: Option<&'a str>,
}

/// The MOTDs an edge answers itself, each a flag a server's options row can replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalMotd {
    /// `asleep_motd`, else `--asleep-motd`.
    Asleep,
    /// `starting_motd`, else `--starting-motd`.
    Starting,
    /// `stopping_motd`, else `--stopping-motd`.
    Stopping,
    /// `failed_motd`, else `--failed-motd`.
    Failed,
}

/// `which` MOTD of `route`: its own option, else the flag.
pub fn local_motd<'a>(shared: &'a Shared, route: &'a Route, which: LocalMotd) -> &'a str {
    let c = &shared.config;
    let o = route.options.as_ref();
    let (own, flag) = match which {
        LocalMotd::Asleep => (o.and_then(|o| o.asleep_motd.as_deref()), &c.asleep_motd),
        LocalMotd::Starting => (o.and_then(|o| o.starting_motd.as_deref()), &c.starting_motd),
        LocalMotd::Stopping => (o.and_then(|o| o.stopping_motd.as_deref()), &c.stopping_motd),
        LocalMotd::Failed => (o.and_then(|o| o.failed_motd.as_deref()), &c.failed_motd),
    };
    own.unwrap_or(flag)
}

/// The `{reason}` of the failed MOTD: a category a player can read, never
/// syncd's detail (which may name addresses).
pub fn failure_words(failure: WakeFailure) -> &'static str {
    match failure {
        WakeFailure::NotConfigured => "not configured",
        WakeFailure::WakerRefused => "waker refused",
        WakeFailure::WakerUnreachable => "waker unreachable",
        WakeFailure::WakerBadResponse => "waker answered garbage",
        WakeFailure::Timeout => "timed out",
        WakeFailure::NotReady => "not ready",
        WakeFailure::ShuttingDown | WakeFailure::Standby => "router restarting",
        WakeFailure::UnknownServer => "unknown server",
        WakeFailure::Unspecified => "unknown reason",
    }
}

/// The failed MOTD with `{reason}` filled in.
pub fn render_failed_motd(template: &str, failure: WakeFailure) -> String {
    template.replace("{reason}", failure_words(failure))
}

/// What a server that is not up shows: the failed MOTD for
/// `--failed-motd-for` after a failed wake, else the asleep MOTD.
pub fn resting_motd(shared: &Shared, route: &Route) -> String {
    match shared
        .routes
        .failed_within(&route.server, shared.config.failed_motd_for)
    {
        Some(f) => render_failed_motd(local_motd(shared, route, LocalMotd::Failed), f),
        None => local_motd(shared, route, LocalMotd::Asleep).to_owned(),
    }
}

/// What a status ping for `route` gets, before any fetch.
pub fn decide(shared: &Shared, route: Option<&Route>) -> Answer {
    let cfg = &shared.config;
    let Some(route) = route else {
        return match &cfg.unknown_host {
            // No table yet: not "unknown", only not known yet.
            _ if !shared.routes.has_snapshot() => {
                Answer::Local(crate::conn::messages::NO_TABLE.to_owned())
            }
            UnknownHost::Motd(m) => Answer::Local(m.clone()),
            UnknownHost::Close => Answer::Close,
        };
    };
    let asleep = || Answer::Local(resting_motd(shared, route));
    let starting = || {
        Answer::Local(render_starting_motd(
            local_motd(shared, route, LocalMotd::Starting),
            shared.routes.waking_for(&route.server),
            shared.held.waiting(&route.server),
        ))
    };
    let phase = shared.routes.wake_phase(&route.server);
    if phase == Some(WakePhase::Waking) {
        return starting();
    }
    if phase == Some(WakePhase::Stopping) {
        return Answer::Local(local_motd(shared, route, LocalMotd::Stopping).to_owned());
    }
    if phase == Some(WakePhase::Asleep) {
        // Stopped by syncd: the state column may still say running.
        return asleep();
    }
    match route.run_state() {
        RouteState::Running => Answer::Backend,
        // Woken by syncd while the state column was not (yet) updated.
        _ if phase == Some(WakePhase::Running) => Answer::Backend,
        RouteState::Starting => starting(),
        RouteState::Stopped | RouteState::Other => asleep(),
    }
}

/// The starting MOTD with its placeholders filled in: `{elapsed}` = whole seconds since
/// this edge learned of the wake (0 when it knows of none), `{waiting}` = logins of the
/// server held on this edge now.
pub fn render_starting_motd(template: &str, elapsed: Option<Duration>, waiting: usize) -> String {
    let secs = elapsed.map_or(0, |d| d.as_secs());
    template
        .replace("{elapsed}", &secs.to_string())
        .replace("{waiting}", &waiting.to_string())
}

/// Local status JSON for `motd`, echoing the client's protocol.
pub fn local_json(motd: &str, protocol: i32) -> String {
    mcproto::status_json(&StatusInfo {
        motd,
        version_name: LOCAL_VERSION_NAME,
        protocol,
        online: 0,
        max: 0,
    })
}

/// Local status JSON for a route: its favicon, its player limit as the
/// maximum and this edge's players of it as online.
pub fn local_json_for(shared: &Shared, route: Option<&Route>, motd: &str, protocol: i32) -> String {
    let Some(route) = route else {
        return local_json(motd, protocol);
    };
    let options = route.options.as_ref();
    let info = StatusInfo {
        motd,
        version_name: LOCAL_VERSION_NAME,
        protocol,
        online: i64::from(shared.balancer.players_of(&route.server)),
        max: options.and_then(|o| o.max_players).map_or(0, i64::from),
    };
    let favicon = options.map_or(&[][..], |o| o.favicon.as_slice());
    mcproto::status_json_with_favicon(&info, favicon)
}

/// A backend's status for a server with `max_players`: the limit as the
/// maximum and the players it is enforced on (fleet-wide while syncd's
/// counts are live) as online, so the server list shows what a login
/// meets. Others keep the backend's own answer.
fn with_limit(shared: &Shared, route: &Route, json: String) -> String {
    let Some(max) = route.options.as_ref().and_then(|o| o.max_players) else {
        return json;
    };
    let online = shared.balancer.players_of(&route.server);
    mcproto::with_player_counts(&json, i64::from(online), i64::from(max)).unwrap_or(json)
}

/// The status JSON a modern client gets for `route`; `None` means close.
pub async fn status_json_for(
    shared: &Shared,
    to: Target<'_>,
    handshake: &Handshake,
    proxy: Option<(SocketAddr, SocketAddr)>,
) -> Option<String> {
    let route = to.route;
    let protocol = handshake.protocol_version;
    match decide(shared, route) {
        Answer::Close => None,
        Answer::Local(m) => Some(local_json_for(shared, route, &m, protocol)),
        Answer::Backend => {
            let route = route?;
            let json = backend_status(
                shared,
                to,
                route,
                protocol,
                handshake.server_address.clone(),
                handshake.server_port,
                proxy,
            )
            .await;
            Some(match json {
                Some(j) => with_limit(shared, route, j),
                None => local_json_for(shared, Some(route), &resting_motd(shared, route), protocol),
            })
        }
    }
}

/// The backend's status JSON through the cache (fresh, or the last good one
/// marked stale); `None` when the backend cannot be asked and nothing good is
/// cached.
async fn backend_status(
    shared: &Shared,
    to: Target<'_>,
    route: &Route,
    protocol_version: i32,
    server_address: String,
    server_port: u16,
    proxy: Option<(SocketAddr, SocketAddr)>,
) -> Option<String> {
    let cfg = &shared.config;
    let mut handshake = Handshake {
        protocol_version,
        server_address,
        server_port,
        next_state: NextState::Status,
    };
    if let Some(host) = crate::conn::rewrite_host(route) {
        handshake = mcproto::with_host(&handshake, host);
    }
    // The backends in the order a login would try them now (without taking
    // its turn): a backend that cannot answer is backed off like a failed
    // dial, and the next one asked, so a dead first backend does not make a
    // running server look asleep.
    let plan = shared.balancer.plan_status(route, to.capture);
    let mut stale = None;
    for address in plan.addresses.into_iter().take(MAX_STATUS_BACKENDS) {
        let target = StatusTarget {
            address: address.clone(),
            handshake: handshake.clone(),
            proxy,
        };
        let got = shared
            .status_cache
            .get(
                target,
                cfg.status_cache_ttl,
                cfg.status_stale_for,
                cfg.connect_timeout,
            )
            .await;
        match got {
            // Only a working login dial ends a backoff: a cached answer
            // says nothing about now.
            Fetched::Fresh(j) => return Some(j.to_string()),
            Fetched::Stale(j) => {
                shared.balancer.dial_failed(&address);
                stale.get_or_insert(j);
            }
            Fetched::Unavailable => shared.balancer.dial_failed(&address),
        }
    }
    stale
}

/// The legacy (pre-1.7) answer for `route`; `None` means close.
pub async fn legacy_answer(
    shared: &Shared,
    to: Target<'_>,
    ping: &LegacyPing,
    proxy: Option<(SocketAddr, SocketAddr)>,
) -> Option<Vec<u8>> {
    let route = to.route;
    let client_protocol = ping.protocol_version.map_or(127, i32::from);
    let local = |motd: &str| {
        mcproto::encode_legacy_response(
            ping,
            &StatusInfo {
                motd,
                version_name: LOCAL_VERSION_NAME,
                protocol: client_protocol,
                online: route.map_or(0, |r| i64::from(shared.balancer.players_of(&r.server))),
                max: route
                    .and_then(|r| r.options.as_ref())
                    .and_then(|o| o.max_players)
                    .map_or(0, i64::from),
            },
        )
    };
    match decide(shared, route) {
        Answer::Close => None,
        Answer::Local(m) => Some(local(&m)),
        Answer::Backend => {
            let route = route?;
            let fetched = backend_status(
                shared,
                to,
                route,
                LEGACY_FETCH_PROTOCOL,
                ping.hostname.clone().unwrap_or_default(),
                ping.port.unwrap_or(25565),
                proxy,
            )
            .await;
            let Some(json) = fetched else {
                return Some(local(&resting_motd(shared, route)));
            };
            let s = summarize(&json);
            Some(mcproto::encode_legacy_response(
                ping,
                &StatusInfo {
                    motd: &s.motd,
                    version_name: &s.version_name,
                    protocol: s.protocol.unwrap_or(client_protocol),
                    online: s.online,
                    max: s.max,
                },
            ))
        }
    }
}

/// The parts of a modern status JSON a legacy answer can carry.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub motd: String,
    pub version_name: String,
    pub protocol: Option<i32>,
    pub online: i64,
    pub max: i64,
}

/// Flatten a modern status JSON for a legacy answer (best effort).
pub fn summarize(json: &str) -> Summary {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Summary::default();
    };
    let mut motd = String::new();
    flatten_text(&v["description"], &mut motd);
    Summary {
        motd,
        version_name: v["version"]["name"].as_str().unwrap_or_default().to_owned(),
        protocol: v["version"]["protocol"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok()),
        online: v["players"]["online"].as_i64().unwrap_or_default(),
        max: v["players"]["max"].as_i64().unwrap_or_default(),
    }
}

fn flatten_text(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::String(s) => out.push_str(s),
        serde_json::Value::Object(o) => {
            if let Some(t) = o.get("text").and_then(|t| t.as_str()) {
                out.push_str(t);
            }
            if let Some(serde_json::Value::Array(extra)) = o.get("extra") {
                for e in extra {
                    flatten_text(e, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|e| flatten_text(e, out)),
        _ => {}
    }
}

/// Serve the status conversation after a status handshake: answer each
/// Status Request and the Ping, then close, all before `deadline`. `rest`
/// holds bytes already read past the handshake.
pub async fn converse(
    stream: &mut TcpStream,
    rest: Vec<u8>,
    json: &str,
    deadline: tokio::time::Instant,
) -> Result<(), ConverseEnd> {
    // Writes are bounded too: a client that never reads must not hold the
    // connection past the deadline either.
    tokio::time::timeout_at(deadline, converse_inner(stream, rest, json))
        .await
        .map_err(|_| ConverseEnd::Timeout)?
}

async fn converse_inner(
    stream: &mut TcpStream,
    mut rest: Vec<u8>,
    json: &str,
) -> Result<(), ConverseEnd> {
    let mut answered = false;
    loop {
        match mcproto::parse_status_packet(&rest) {
            Ok(Some((StatusPacket::Request, n))) => {
                rest.drain(..n);
                if answered {
                    // One answer per connection, as vanilla does.
                    return Err(ConverseEnd::Protocol("second status request"));
                }
                answered = true;
                stream
                    .write_all(&mcproto::encode_status_response(json))
                    .await
                    .map_err(|_| ConverseEnd::ClientGone)?;
            }
            Ok(Some((StatusPacket::Ping(p), _))) => {
                let _ = stream.write_all(&mcproto::encode_pong(p)).await;
                return Ok(());
            }
            Ok(None) => {
                if rest.len() >= mcproto::MAX_HANDSHAKE_BYTES {
                    return Err(ConverseEnd::Protocol("status packet too large"));
                }
                // `rest` may have no spare room left (it was split off the
                // handshake read, and its request drained): without this,
                // the 10-byte ping would take two reads, the first one
                // sized to what was left.
                rest.reserve(STATUS_READ_ROOM);
                let n = stream
                    .read_buf(&mut rest)
                    .await
                    .map_err(|_| ConverseEnd::ClientGone)?;
                if n == 0 {
                    return if answered {
                        Ok(())
                    } else {
                        Err(ConverseEnd::ClientGone)
                    };
                }
            }
            Err(e) => return Err(ConverseEnd::Protocol(e.reason())),
        }
    }
}

/// Room for one read of the status conversation: a ping (10 bytes), or a
/// status request with it, in one system call.
const STATUS_READ_ROOM: usize = 64;

/// Bytes a relayed client may send (a status request and a ping are 12).
const RELAY_UP_CAP: u64 = 4 * 1024;
/// Bytes a relayed backend may send (its status, a favicon included, and a pong).
const RELAY_DOWN_CAP: u64 = MAX_STATUS_BYTES as u64 + 1024;

/// How a relayed status conversation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// The backend answered and closed (or the client left after its answer).
    Done,
    /// The backend could not be reached: nothing was sent to the client yet.
    Unreachable,
    Timeout,
    Io,
}

/// Forward a status conversation to the backend at `address` byte for byte:
/// `head` (any PROXY header, the handshake and whatever the client sent
/// after it) first, then both ways until the backend closes, all before
/// `deadline` and within small byte caps.
pub async fn relay(
    client: &mut TcpStream,
    address: &str,
    head: &[u8],
    connect_timeout: Duration,
    deadline: tokio::time::Instant,
) -> RelayEnd {
    let connect = tokio::time::timeout(connect_timeout, TcpStream::connect(address));
    let mut backend = match connect.await {
        Ok(Ok(s)) => s,
        _ => return RelayEnd::Unreachable,
    };
    let _ = backend.set_nodelay(true);
    if backend.write_all(head).await.is_err() {
        return RelayEnd::Unreachable;
    }
    let (mut cr, mut cw) = client.split();
    let (mut br, mut bw) = backend.split();
    let up = async {
        let _ = tokio::io::copy(&mut (&mut cr).take(RELAY_UP_CAP), &mut bw).await;
        let _ = bw.shutdown().await;
    };
    let down = async {
        let r = tokio::io::copy(&mut (&mut br).take(RELAY_DOWN_CAP), &mut cw).await;
        let _ = cw.shutdown().await;
        r
    };
    let both = async {
        tokio::pin!(up, down);
        // The conversation is over when the backend is done; a client that
        // half-closes early still gets the rest of the answer.
        tokio::select! {
            r = &mut down => r,
            () = &mut up => down.await,
        }
    };
    match tokio::time::timeout_at(deadline, both).await {
        Err(_) => RelayEnd::Timeout,
        Ok(Err(_)) => RelayEnd::Io,
        Ok(Ok(_)) => RelayEnd::Done,
    }
}

/// How a status conversation ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConverseEnd {
    ClientGone,
    Timeout,
    Protocol(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_protocol_numbers_have_their_own_bucket_and_random_ones_share_one() {
        assert_eq!(ProtocolBucket::of(769), ProtocolBucket::Plausible(769));
        assert_eq!(ProtocolBucket::of(0), ProtocolBucket::Plausible(0));
        assert_eq!(
            ProtocolBucket::of(0x4000_00f0),
            ProtocolBucket::Plausible(0x4000_00f0)
        );
        for random in [
            -5,
            1025,
            4097,
            123_456_789,
            i32::MAX,
            i32::MIN,
            0x4000_0000 + 5000,
        ] {
            assert_eq!(
                ProtocolBucket::of(random),
                ProtocolBucket::Other,
                "{random}"
            );
        }
        assert_eq!(ProtocolBucket::Other.fetch_protocol(), -1);
        assert_eq!(ProtocolBucket::of(47).fetch_protocol(), 47);
    }

    #[test]
    fn the_cache_keys_a_hostname_as_routing_reads_it_and_keeps_a_forge_marker() {
        let cases = [
            ("play.example.com", "play.example.com"),
            ("Play.Example.COM.", "play.example.com"),
            (
                "play.example.com///1.2.3.4:5555///1700000000///sigA",
                "play.example.com",
            ),
            ("play.example.com\0FML2\0", "play.example.com\0FML2"),
            ("PLAY.example.com.\0FML3\0", "play.example.com\0FML3"),
            ("play.example.com\0FORGE", "play.example.com\0FORGE"),
            ("play.example.com\0noise-123", "play.example.com"),
            ("play.example.com\0FMLFMLFMLFML\0", "play.example.com"),
        ];
        for (raw, key) in cases {
            assert_eq!(cache_hostname(raw), key, "{raw:?}");
        }
    }

    #[test]
    fn the_starting_motd_shows_elapsed_seconds_and_players_waiting() {
        let t = "Starting ({elapsed}s, {waiting} waiting) {elapsed}";
        assert_eq!(
            render_starting_motd(t, Some(Duration::from_millis(12_900)), 3),
            "Starting (12s, 3 waiting) 12"
        );
        assert_eq!(
            render_starting_motd(t, None, 0),
            "Starting (0s, 0 waiting) 0"
        );
        assert_eq!(render_starting_motd("plain", None, 2), "plain");
    }

    #[test]
    fn the_failed_motd_names_the_reason_category() {
        let t = "Could not start: {reason}";
        assert_eq!(
            render_failed_motd(t, WakeFailure::WakerRefused),
            "Could not start: waker refused"
        );
        assert_eq!(
            render_failed_motd(t, WakeFailure::Timeout),
            "Could not start: timed out"
        );
        assert_eq!(render_failed_motd("plain", WakeFailure::NotReady), "plain");
    }

    #[test]
    fn summary_flattens_text_components() {
        let s = summarize(
            r#"{"version":{"name":"1.20.4","protocol":765},"players":{"online":3,"max":20},
                "description":{"text":"Hello ","extra":[{"text":"world"},"!"]}}"#,
        );
        assert_eq!(s.motd, "Hello world!");
        assert_eq!(s.version_name, "1.20.4");
        assert_eq!(s.protocol, Some(765));
        assert_eq!((s.online, s.max), (3, 20));
        assert_eq!(summarize("not json"), Summary::default());
        assert_eq!(summarize(r#"{"description":"plain"}"#).motd, "plain");
    }
}
