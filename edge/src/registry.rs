//! The registry of live player connections: what each is doing (phase,
//! player, backend), which `EdgeAdmin.ListConnections` and the session
//! reports read and drain waits on. A connection holds a [`ConnGuard`] for
//! its whole life; dropping it takes the entry out.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// What a connection is doing, as `ListConnections` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Handshake = 0,
    Status = 1,
    Holding = 2,
    Proxying = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Status,
            2 => Self::Holding,
            3 => Self::Proxying,
            _ => Self::Handshake,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::Status => "status",
            Self::Holding => "holding",
            Self::Proxying => "proxying",
        }
    }
}

/// Who a connection is and where it goes; filled in as it progresses.
#[derive(Debug, Clone)]
pub struct ConnDetail {
    /// Kept as an address: formatted only when someone lists it.
    pub client: SocketAddr,
    pub hostname: String,
    pub server: String,
    pub backend: String,
    /// From Login Start: at most 16 characters (empty until read, and for status pings).
    pub player: String,
    /// Hyphenated profile UUID when the protocol version carries one.
    pub player_uuid: String,
}

/// One live connection.
#[derive(Debug)]
pub struct ConnEntry {
    pub id: u64,
    pub started_ms: i64,
    detail: Mutex<ConnDetail>,
    phase: AtomicU8,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// The registry's change counter (what the session report waits on).
    changed: Arc<watch::Sender<u64>>,
}

impl ConnEntry {
    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Relaxed);
        bump(&self.changed);
    }

    /// Who is logging in (from Login Start).
    pub fn set_player(&self, name: String, uuid: String) {
        self.update(|d| {
            d.player = name;
            d.player_uuid = uuid;
        });
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    pub fn update(&self, f: impl FnOnce(&mut ConnDetail)) {
        if let Ok(mut d) = self.detail.lock() {
            f(&mut d);
        }
    }

    /// The client's address (the PROXY header's source when trusted).
    pub fn client(&self) -> SocketAddr {
        self.detail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .client
    }

    pub fn detail(&self) -> ConnDetail {
        // A panic elsewhere while holding the lock leaves the data whole.
        self.detail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Every live connection of this edge.
#[derive(Debug)]
pub struct Connections {
    next_id: AtomicU64,
    map: Mutex<HashMap<u64, Arc<ConnEntry>>>,
    /// Bumped when a connection comes, goes or changes phase; each session
    /// reporter holds its own receiver, so none misses a change.
    changed: Arc<watch::Sender<u64>>,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            next_id: AtomicU64::new(0),
            map: Mutex::default(),
            changed: Arc::new(watch::Sender::new(0)),
        }
    }
}

fn bump(changed: &watch::Sender<u64>) {
    changed.send_modify(|n| *n = n.wrapping_add(1));
}

impl Connections {
    /// Register a connection; it is forgotten when the guard drops.
    pub fn register(self: &Arc<Self>, client: SocketAddr) -> ConnGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or_default();
        let entry = Arc::new(ConnEntry {
            id,
            started_ms,
            detail: Mutex::new(ConnDetail {
                client,
                hostname: String::new(),
                server: String::new(),
                backend: String::new(),
                player: String::new(),
                player_uuid: String::new(),
            }),
            phase: AtomicU8::new(Phase::Handshake as u8),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            changed: self.changed.clone(),
        });
        if let Ok(mut m) = self.map.lock() {
            m.insert(id, entry.clone());
        }
        bump(&self.changed);
        ConnGuard {
            conns: self.clone(),
            entry,
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A receiver that sees every later change (come, go, phase).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Snapshot of every live connection, oldest first.
    pub fn list(&self) -> Vec<Arc<ConnEntry>> {
        let mut v: Vec<_> = self
            .map
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by_key(|e| e.id);
        v
    }
}

/// Keeps a connection registered while alive.
#[derive(Debug)]
pub struct ConnGuard {
    conns: Arc<Connections>,
    pub entry: Arc<ConnEntry>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.conns.map.lock() {
            m.remove(&self.entry.id);
        }
        bump(&self.conns.changed);
    }
}
