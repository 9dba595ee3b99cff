//! Fleet player counts as this edge holds them: what syncd says the *other*
//! edges have (`automc.v1.PlayerCounts`), behind an [`ArcSwap`] like the
//! route table, so `least-players` picks and `max_players` checks read them
//! without locks. The sync client is the only writer.
//!
//! The counts are *live* only while the watch stream is up and its first
//! full set has arrived; otherwise (no syncd, a new stream whose full set is
//! still on its way) there are none, and the edge counts its own sessions
//! only ([`CountSource::Edge`]). The edge always adds its own sessions
//! itself (see `balance`), so its own logins count at once.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use automc_proto::v1::{CountSource, PlayerCounts, ServerCount};

/// Servers held at most (a full set past this is cut; syncd sends counts
/// only for routes that use them, far fewer).
pub const MAX_SERVERS: usize = 1_000_000;
/// Backends kept per server.
pub const MAX_BACKENDS: usize = 128;

/// The other edges' sessions of one server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Others {
    /// Players plus held logins.
    pub players: u32,
    /// Players per backend address.
    pub backends: HashMap<String, u32>,
    /// Some come from an edge whose stream dropped (its last counts).
    pub unknown: bool,
}

impl Others {
    fn from_wire(c: ServerCount) -> Self {
        Self {
            players: c.players,
            backends: c
                .backends
                .into_iter()
                .take(MAX_BACKENDS)
                .map(|b| (b.address, b.players))
                .collect(),
            unknown: c.unknown,
        }
    }

    pub fn on_backend(&self, address: &str) -> u32 {
        self.backends.get(address).copied().unwrap_or(0)
    }
}

/// One applied state of the counts.
#[derive(Debug, Clone, Default)]
pub struct CountsView {
    /// syncd's counts are in use (stream up, full set applied).
    pub live: bool,
    pub servers: imbl::HashMap<String, Arc<Others>>,
}

impl CountsView {
    /// Where counts for any server come from now.
    pub fn source(&self) -> CountSource {
        if self.live {
            CountSource::Fleet
        } else {
            CountSource::Edge
        }
    }

    /// The other edges' sessions of `server`: `None` when not live (count
    /// this edge only); nothing on other edges is a default [`Others`].
    pub fn others(&self, server: &str) -> Option<Arc<Others>> {
        if !self.live {
            return None;
        }
        Some(self.servers.get(server).cloned().unwrap_or_default())
    }
}

/// The counts, shared by every connection.
#[derive(Debug, Default)]
pub struct FleetCounts {
    view: ArcSwap<CountsView>,
    /// A full set whose last piece has not arrived.
    pending: Mutex<Option<imbl::HashMap<String, Arc<Others>>>>,
}

impl FleetCounts {
    /// The counts as of now; cheap, lock-free.
    pub fn view(&self) -> Arc<CountsView> {
        self.view.load_full()
    }

    /// A stream started or ended: syncd's counts are unknown until the
    /// stream's first full set.
    pub fn reset(&self) {
        if let Ok(mut p) = self.pending.lock() {
            *p = None;
        }
        self.view.store(Arc::new(CountsView::default()));
    }

    /// Apply one piece from syncd.
    pub fn apply(&self, c: PlayerCounts) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        if c.full {
            let set = pending.get_or_insert_with(imbl::HashMap::new);
            put(set, c.servers);
            if !c.more {
                let servers = pending.take().unwrap_or_default();
                self.view.store(Arc::new(CountsView {
                    live: true,
                    servers,
                }));
            }
            return;
        }
        drop(pending);
        let cur = self.view();
        if !cur.live {
            // Changes before the first full set are already in it.
            return;
        }
        let mut servers = cur.servers.clone();
        put(&mut servers, c.servers);
        self.view.store(Arc::new(CountsView {
            live: true,
            servers,
        }));
    }
}

fn put(set: &mut imbl::HashMap<String, Arc<Others>>, servers: Vec<ServerCount>) {
    for c in servers {
        if c.players == 0 && c.backends.is_empty() {
            set.remove(&c.server);
        } else if set.len() < MAX_SERVERS || set.contains_key(&c.server) {
            set.insert(c.server.clone(), Arc::new(Others::from_wire(c)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automc_proto::v1::BackendCount;

    fn count(server: &str, players: u32, on: &[(&str, u32)]) -> ServerCount {
        ServerCount {
            server: server.into(),
            players,
            backends: on
                .iter()
                .map(|(a, n)| BackendCount {
                    address: (*a).into(),
                    players: *n,
                })
                .collect(),
            unknown: false,
        }
    }

    #[test]
    fn counts_go_live_at_the_last_piece_of_a_full_set_and_changes_apply_after() {
        let c = FleetCounts::default();
        assert_eq!(c.view().source(), CountSource::Edge);
        assert!(c.view().others("s").is_none());
        c.apply(PlayerCounts {
            full: false,
            more: false,
            servers: vec![count("s", 9, &[])],
        });
        assert!(c.view().others("s").is_none(), "a change before a full set");
        c.apply(PlayerCounts {
            full: true,
            more: true,
            servers: vec![count("s", 2, &[("a:1", 2)])],
        });
        assert_eq!(c.view().source(), CountSource::Edge, "not yet");
        c.apply(PlayerCounts {
            full: true,
            more: false,
            servers: vec![count("t", 1, &[])],
        });
        let v = c.view();
        assert_eq!(v.source(), CountSource::Fleet);
        let s = v.others("s").expect("live");
        assert_eq!((s.players, s.on_backend("a:1")), (2, 2));
        assert_eq!(v.others("none").map(|o| o.players), Some(0));
        c.apply(PlayerCounts {
            full: false,
            more: false,
            servers: vec![count("s", 0, &[]), count("t", 3, &[])],
        });
        let v = c.view();
        assert_eq!(v.others("s").map(|o| o.players), Some(0), "cleared");
        assert_eq!(v.others("t").map(|o| o.players), Some(3));
        c.reset();
        assert!(c.view().others("t").is_none());
    }
}
