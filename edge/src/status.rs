//! Server-list pings. The edge answers every status ping itself: with the
//! backend's real status when its route says it runs (fetched over a short
//! connection of the edge's own and cached per backend address and protocol,
//! one fetch at a time), with the last good answer marked stale while the
//! backend is briefly unreachable, and otherwise with a local MOTD (asleep,
//! starting, unknown host) that echoes the client's protocol so the client
//! does not flag a version mismatch. Pongs are always local.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automc_proto::v1::{Route, WakePhase};
use automc_proto::RouteState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::{self, Handshake, LegacyPing, NextState, StatusInfo, StatusPacket};
use crate::{Shared, UnknownHost};

/// Largest status JSON accepted from a backend (favicons are big).
pub const MAX_STATUS_BYTES: usize = 256 * 1024;
/// Cached entries kept before the cache is reset (protocol numbers are
/// chosen by clients, so the key space is not ours to bound).
const MAX_CACHE_ENTRIES: usize = 4096;
/// Version name shown in local answers.
pub const LOCAL_VERSION_NAME: &str = "automc";
/// Protocol used to fetch a backend's status on behalf of a legacy client.
const LEGACY_FETCH_PROTOCOL: i32 = 47;

#[derive(Debug, Default)]
struct Slot {
    /// Last good answer and when it was fetched.
    good: Option<(Arc<str>, Instant)>,
    /// Last failed fetch, so waiters behind it do not retry at once.
    failed_at: Option<Instant>,
}

/// One cache key's slot; its async lock is what makes fetches single-flight.
type SharedSlot = Arc<tokio::sync::Mutex<Slot>>;

/// Backend status answers per (backend address, protocol).
#[derive(Debug, Default)]
pub struct StatusCache {
    slots: Mutex<HashMap<(String, i32), SharedSlot>>,
}

/// What a status lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    Fresh(Arc<str>),
    /// The backend did not answer; this is its last good answer, marked.
    Stale(String),
    Unavailable,
}

/// Where and how to fetch a backend's status.
pub struct FetchTarget<'a> {
    pub address: &'a str,
    pub handshake: Handshake,
    /// PROXY v2 (source, destination) to send first, when configured.
    pub proxy: Option<(SocketAddr, SocketAddr)>,
}

impl StatusCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self, address: &str, protocol: i32) -> SharedSlot {
        let Ok(mut slots) = self.slots.lock() else {
            return Arc::default();
        };
        if slots.len() >= MAX_CACHE_ENTRIES && !slots.contains_key(&(address.to_owned(), protocol))
        {
            slots.clear();
        }
        slots
            .entry((address.to_owned(), protocol))
            .or_default()
            .clone()
    }

    /// The backend's status: cached when fresh, else fetched (one fetch per
    /// key at a time; concurrent callers wait for it and share the answer).
    pub async fn get(
        &self,
        target: FetchTarget<'_>,
        ttl: Duration,
        stale_for: Duration,
        timeout: Duration,
    ) -> Fetched {
        let slot = self.slot(target.address, target.handshake.protocol_version);
        let mut slot = slot.lock().await;
        let now = Instant::now();
        if let Some((json, at)) = &slot.good {
            if now.duration_since(*at) < ttl {
                return Fetched::Fresh(json.clone());
            }
        }
        let recently_failed = slot.failed_at.is_some_and(|t| now.duration_since(t) < ttl);
        if !recently_failed {
            match fetch(&target, timeout).await {
                Ok(json) => {
                    let json: Arc<str> = json.into();
                    slot.good = Some((json.clone(), Instant::now()));
                    slot.failed_at = None;
                    return Fetched::Fresh(json);
                }
                Err(e) => {
                    tracing::debug!(backend = target.address, error = %e, "status fetch failed");
                    slot.failed_at = Some(Instant::now());
                }
            }
        }
        match &slot.good {
            Some((json, at)) if now.duration_since(*at) < stale_for => {
                match protocol::mark_status_stale(json, "(cached)") {
                    Some(s) => Fetched::Stale(s),
                    None => Fetched::Unavailable,
                }
            }
            _ => Fetched::Unavailable,
        }
    }
}

/// A backend status fetch that failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("backend closed before answering")]
    Closed,
    #[error("bad answer: {0}")]
    Protocol(&'static str),
}

/// One status exchange with a backend, bounded by `timeout` overall.
pub async fn fetch(target: &FetchTarget<'_>, timeout: Duration) -> Result<String, FetchError> {
    tokio::time::timeout(timeout, fetch_inner(target))
        .await
        .map_err(|_| FetchError::Timeout)?
}

async fn fetch_inner(target: &FetchTarget<'_>) -> Result<String, FetchError> {
    let mut s = TcpStream::connect(target.address)
        .await
        .map_err(FetchError::Connect)?;
    let _ = s.set_nodelay(true);
    let mut out = Vec::with_capacity(300);
    if let Some((src, dst)) = target.proxy {
        out.extend(protocol::encode_proxy_v2(src, dst));
    }
    out.extend(protocol::encode_handshake(&target.handshake));
    out.extend(protocol::encode_status_request());
    s.write_all(&out).await?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        match protocol::parse_status_response(&buf, MAX_STATUS_BYTES) {
            Ok(Some((json, _))) => return Ok(json),
            Ok(None) => {}
            Err(e) => return Err(FetchError::Protocol(e.reason())),
        }
        if buf.len() > MAX_STATUS_BYTES + 16 {
            return Err(FetchError::Protocol("status too large"));
        }
        let n = s.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(FetchError::Closed);
        }
    }
}

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

/// What a status ping for `route` gets, before any fetch.
pub fn decide(shared: &Shared, route: Option<&Route>) -> Answer {
    let cfg = &shared.config;
    let Some(route) = route else {
        return match &cfg.unknown_host {
            UnknownHost::Motd(m) => Answer::Local(m.clone()),
            UnknownHost::Close => Answer::Close,
        };
    };
    let phase = shared.routes.wake_phase(&route.server);
    if phase == Some(WakePhase::Waking) {
        return Answer::Local(cfg.starting_motd.clone());
    }
    match route.run_state() {
        RouteState::Running => Answer::Backend,
        // Woken by syncd while the state column was not (yet) updated.
        _ if phase == Some(WakePhase::Running) => Answer::Backend,
        RouteState::Starting => Answer::Local(cfg.starting_motd.clone()),
        RouteState::Stopped | RouteState::Other => Answer::Local(cfg.asleep_motd.clone()),
    }
}

/// Local status JSON for `motd`, echoing the client's protocol.
pub fn local_json(motd: &str, protocol: i32) -> String {
    protocol::status_json(&StatusInfo {
        motd,
        version_name: LOCAL_VERSION_NAME,
        protocol,
        online: 0,
        max: 0,
    })
}

/// The status JSON a modern client gets for `route`; `None` means close.
pub async fn status_json_for(
    shared: &Shared,
    route: Option<&Route>,
    handshake: &Handshake,
    proxy: Option<(SocketAddr, SocketAddr)>,
) -> Option<String> {
    let cfg = &shared.config;
    match decide(shared, route) {
        Answer::Close => None,
        Answer::Local(m) => Some(local_json(&m, handshake.protocol_version)),
        Answer::Backend => {
            let json = backend_status(
                shared,
                route?,
                handshake.protocol_version,
                handshake.server_address.clone(),
                handshake.server_port,
                proxy,
            )
            .await;
            Some(json.unwrap_or_else(|| local_json(&cfg.asleep_motd, handshake.protocol_version)))
        }
    }
}

/// The backend's status JSON through the cache (fresh, or the last good one
/// marked stale); `None` when the backend cannot be asked and nothing good is
/// cached.
async fn backend_status(
    shared: &Shared,
    route: &Route,
    protocol_version: i32,
    server_address: String,
    server_port: u16,
    proxy: Option<(SocketAddr, SocketAddr)>,
) -> Option<String> {
    let cfg = &shared.config;
    let target = FetchTarget {
        address: &route.address,
        handshake: Handshake {
            protocol_version,
            server_address,
            server_port,
            next_state: NextState::Status,
        },
        proxy,
    };
    match shared
        .status_cache
        .get(
            target,
            cfg.status_cache_ttl,
            cfg.status_stale_for,
            cfg.connect_timeout,
        )
        .await
    {
        Fetched::Fresh(j) => Some(j.to_string()),
        Fetched::Stale(j) => Some(j),
        Fetched::Unavailable => None,
    }
}

/// The legacy (pre-1.7) answer for `route`; `None` means close.
pub async fn legacy_answer(
    shared: &Shared,
    route: Option<&Route>,
    ping: &LegacyPing,
    proxy: Option<(SocketAddr, SocketAddr)>,
) -> Option<Vec<u8>> {
    let cfg = &shared.config;
    let client_protocol = ping.protocol_version.map_or(127, i32::from);
    let local = |motd: &str| {
        protocol::encode_legacy_response(
            ping,
            &StatusInfo {
                motd,
                version_name: LOCAL_VERSION_NAME,
                protocol: client_protocol,
                online: 0,
                max: 0,
            },
        )
    };
    match decide(shared, route) {
        Answer::Close => None,
        Answer::Local(m) => Some(local(&m)),
        Answer::Backend => {
            let fetched = backend_status(
                shared,
                route?,
                LEGACY_FETCH_PROTOCOL,
                ping.hostname.clone().unwrap_or_default(),
                ping.port.unwrap_or(25565),
                proxy,
            )
            .await;
            let Some(json) = fetched else {
                return Some(local(&cfg.asleep_motd));
            };
            let s = summarize(&json);
            Some(protocol::encode_legacy_response(
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
/// Status Request and the Ping, then close. `rest` holds bytes already read
/// past the handshake.
pub async fn converse(
    stream: &mut TcpStream,
    mut rest: Vec<u8>,
    json: &str,
    read_timeout: Duration,
) -> Result<(), ConverseEnd> {
    let mut answered = false;
    loop {
        match protocol::parse_status_packet(&rest) {
            Ok(Some((StatusPacket::Request, n))) => {
                rest.drain(..n);
                if answered {
                    // One answer per connection, as vanilla does.
                    return Err(ConverseEnd::Protocol("second status request"));
                }
                answered = true;
                stream
                    .write_all(&protocol::encode_status_response(json))
                    .await
                    .map_err(|_| ConverseEnd::ClientGone)?;
            }
            Ok(Some((StatusPacket::Ping(p), _))) => {
                let _ = stream.write_all(&protocol::encode_pong(p)).await;
                return Ok(());
            }
            Ok(None) => {
                if rest.len() >= protocol::MAX_HANDSHAKE_BYTES {
                    return Err(ConverseEnd::Protocol("status packet too large"));
                }
                let n = tokio::time::timeout(read_timeout, stream.read_buf(&mut rest))
                    .await
                    .map_err(|_| ConverseEnd::Timeout)?
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
