//! The session report: what this edge tells syncd about its live sessions
//! (players spliced to a backend, logins held while a server wakes, status
//! pings being answered), per server, on the watch stream.
//!
//! [`collect`], [`full_report`] and [`delta_report`] are pure and unit-tested;
//! [`run`] is the loop of one watch stream: a full report first, then what
//! changed (at most one report per [`DEBOUNCE`]), and a full report again
//! every report interval so syncd can always recover from anything it
//! missed or dropped.
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use automc_proto::v1::{PlayerSession, SessionReport};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::registry::{ConnEntry, Connections, Phase};

/// At most one report per this long, however fast sessions come and go.
pub const DEBOUNCE: Duration = Duration::from_millis(250);
/// Entries (servers, joined and left players) per report message: a player
/// entry is at most ~330 bytes, so a piece stays under the 64 KiB the sync
/// messages keep to (`automc_proto::sync::CHUNK_BYTES`), and so does the
/// buffer syncd keeps per stream to decode them.
pub const MAX_REPORT_ENTRIES: usize = 190;

pub use automc_proto::sessions::Counts;

/// Everything this edge has live, as reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sessions {
    pub servers: BTreeMap<String, Counts>,
    /// By connection id.
    pub players: BTreeMap<u64, PlayerSession>,
}

/// What was last reported, as [`delta_report`] needs it: the counts, and
/// per player only a fingerprint of its entry. An idle session then costs
/// the report no second copy of its strings. Two different entries of one
/// connection with the same 64-bit fingerprint would hide that change
/// until the next full report, which every report interval sends anyway.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reported {
    servers: BTreeMap<String, Counts>,
    players: BTreeMap<u64, u64>,
}

impl Reported {
    pub fn of(s: &Sessions) -> Self {
        Self {
            servers: s.servers.clone(),
            players: s
                .players
                .iter()
                .map(|(id, p)| (*id, fingerprint(p)))
                .collect(),
        }
    }
}

/// Every field of a player entry, hashed.
fn fingerprint(p: &PlayerSession) -> u64 {
    let mut h = DefaultHasher::new();
    (
        p.session, &p.server, &p.name, &p.uuid, p.since_ms, &p.backend,
    )
        .hash(&mut h);
    h.finish()
}

/// The sessions of `conns` (connections not routed to a server yet are not
/// sessions of any server).
pub fn collect(conns: &[Arc<ConnEntry>]) -> Sessions {
    let mut s = Sessions::default();
    for e in conns {
        let d = e.detail();
        if d.server.is_empty() {
            continue;
        }
        let phase = e.phase();
        if phase == Phase::Handshake {
            continue;
        }
        let c = s.servers.entry(d.server.clone()).or_default();
        match phase {
            Phase::Proxying => {
                c.players += 1;
                s.players.insert(
                    e.id,
                    PlayerSession {
                        session: e.id,
                        server: d.server,
                        name: d.player,
                        uuid: d.player_uuid,
                        since_ms: e.started_ms,
                        backend: d.backend,
                    },
                );
            }
            Phase::Holding => c.holding += 1,
            Phase::Status => c.status += 1,
            Phase::Handshake => {}
        }
    }
    s
}

/// Fills report messages of at most [`MAX_REPORT_ENTRIES`] entries.
struct Pieces {
    full: bool,
    done: Vec<SessionReport>,
    cur: SessionReport,
    entries: usize,
}

impl Pieces {
    fn new(full: bool) -> Self {
        Self {
            full,
            done: Vec::new(),
            cur: SessionReport {
                full,
                ..SessionReport::default()
            },
            entries: 0,
        }
    }

    fn room(&mut self) -> &mut SessionReport {
        if self.entries >= MAX_REPORT_ENTRIES {
            let next = SessionReport {
                full: self.full,
                ..SessionReport::default()
            };
            let mut prev = std::mem::replace(&mut self.cur, next);
            prev.more = self.full;
            self.done.push(prev);
            self.entries = 0;
        }
        self.entries += 1;
        &mut self.cur
    }

    fn finish(mut self) -> Vec<SessionReport> {
        if self.entries > 0 || self.full {
            self.done.push(self.cur);
        }
        self.done
    }
}

/// Everything, in pieces (at least one, even when nothing is live).
pub fn full_report(cur: &Sessions) -> Vec<SessionReport> {
    let mut p = Pieces::new(true);
    for (server, c) in &cur.servers {
        p.room().servers.push(c.to_proto(server));
    }
    for player in cur.players.values() {
        p.room().joined.push(player.clone());
    }
    p.finish()
}

/// What changed from `prev` to `cur`; empty when nothing did.
pub fn delta_report(prev: &Reported, cur: &Sessions) -> Vec<SessionReport> {
    let mut p = Pieces::new(false);
    for (server, c) in &cur.servers {
        if prev.servers.get(server) != Some(c) {
            p.room().servers.push(c.to_proto(server));
        }
    }
    for server in prev.servers.keys() {
        if !cur.servers.contains_key(server) {
            p.room().servers.push(Counts::default().to_proto(server));
        }
    }
    for id in prev.players.keys() {
        if !cur.players.contains_key(id) {
            p.room().left.push(*id);
        }
    }
    for (id, player) in &cur.players {
        match prev.players.get(id) {
            Some(old) if *old == fingerprint(player) => {}
            Some(_) => {
                // Same connection, other details: leave and join again.
                p.room().left.push(*id);
                p.room().joined.push(player.clone());
            }
            None => p.room().joined.push(player.clone()),
        }
    }
    p.finish()
}

/// Report the sessions of `conns` into `tx` until `stop`, or until the
/// stream behind `tx` is gone.
pub async fn run(
    conns: Arc<Connections>,
    tx: mpsc::Sender<SessionReport>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut changes = conns.subscribe();
    let mut sent = Reported::default();
    let mut full_due = Instant::now();
    loop {
        let cur = collect(&conns.list());
        let pieces = if Instant::now() >= full_due {
            full_due = Instant::now() + interval;
            full_report(&cur)
        } else {
            delta_report(&sent, &cur)
        };
        for piece in pieces {
            tokio::select! {
                () = stop.cancelled() => return,
                r = tx.send(piece) => if r.is_err() { return },
            }
        }
        sent = Reported::of(&cur);
        drop(cur);
        let last = Instant::now();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tx.closed() => return,
            r = changes.changed() => if r.is_err() { return },
            () = tokio::time::sleep_until(full_due) => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(last + DEBOUNCE) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn player(id: u64, server: &str, name: &str) -> PlayerSession {
        automc_proto::fake::player(id, server, name, 1)
    }

    fn sessions(players: &[PlayerSession], extra: &[(&str, Counts)]) -> Sessions {
        let mut s = Sessions::default();
        for p in players {
            s.servers.entry(p.server.clone()).or_default().players += 1;
            s.players.insert(p.session, p.clone());
        }
        for (server, c) in extra {
            let e = s.servers.entry((*server).to_owned()).or_default();
            e.holding += c.holding;
            e.status += c.status;
        }
        s
    }

    /// Apply reports the way syncd does, to check they carry everything.
    fn apply(held: &mut Sessions, reports: &[SessionReport]) {
        let mut fresh = Sessions::default();
        for r in reports {
            let target = if r.full { &mut fresh } else { &mut *held };
            for c in &r.servers {
                let counts = Counts {
                    players: c.players,
                    holding: c.holding,
                    status: c.status,
                };
                if counts == Counts::default() {
                    target.servers.remove(&c.server);
                } else {
                    target.servers.insert(c.server.clone(), counts);
                }
            }
            for id in &r.left {
                target.players.remove(id);
            }
            for p in &r.joined {
                target.players.insert(p.session, p.clone());
            }
            if r.full && !r.more {
                *held = std::mem::take(&mut fresh);
            }
        }
    }

    #[test]
    fn deltas_carry_exactly_what_changed() {
        let a = player(1, "lobby", "Alex");
        let b = player(2, "lobby", "Steve");
        let c = player(3, "survival", "Notch");
        let held = Counts {
            holding: 1,
            ..Counts::default()
        };
        let cases: Vec<(&str, Sessions, Sessions, usize, usize, usize)> = vec![
            // (what, before, after, servers, joined, left)
            ("nothing", sessions(&[], &[]), sessions(&[], &[]), 0, 0, 0),
            (
                "unchanged",
                sessions(std::slice::from_ref(&a), &[]),
                sessions(std::slice::from_ref(&a), &[]),
                0,
                0,
                0,
            ),
            (
                "one joins",
                sessions(std::slice::from_ref(&a), &[]),
                sessions(&[a.clone(), b.clone()], &[]),
                1,
                1,
                0,
            ),
            (
                "last leaves: zero counts",
                sessions(std::slice::from_ref(&a), &[]),
                sessions(&[], &[]),
                1,
                0,
                1,
            ),
            (
                "moves to another server",
                sessions(std::slice::from_ref(&a), &[]),
                sessions(std::slice::from_ref(&c), &[]),
                2,
                1,
                1,
            ),
            (
                "same connection, other backend: leaves and joins again",
                sessions(std::slice::from_ref(&a), &[]),
                sessions(
                    &[PlayerSession {
                        backend: "10.0.0.9:25565".into(),
                        ..a.clone()
                    }],
                    &[],
                ),
                0,
                1,
                1,
            ),
            (
                "a held login only",
                sessions(&[], &[]),
                sessions(&[], &[("survival", held)]),
                1,
                0,
                0,
            ),
        ];
        for (what, before, after, servers, joined, left) in cases {
            let reports = delta_report(&Reported::of(&before), &after);
            let count = |f: fn(&SessionReport) -> usize| reports.iter().map(f).sum::<usize>();
            assert_eq!(count(|r| r.servers.len()), servers, "{what}");
            assert_eq!(count(|r| r.joined.len()), joined, "{what}");
            assert_eq!(count(|r| r.left.len()), left, "{what}");
            assert!(reports.iter().all(|r| !r.full), "{what}");
            let mut applied = before.clone();
            apply(&mut applied, &reports);
            assert_eq!(applied, after, "{what}");
        }
    }

    #[test]
    fn big_reports_come_in_bounded_pieces_that_add_up() {
        let players: Vec<_> = (0..1234)
            .map(|i| player(i, &format!("s{}", i % 7), "p"))
            .collect();
        let cur = sessions(
            &players,
            &[(
                "idle",
                Counts {
                    status: 2,
                    ..Counts::default()
                },
            )],
        );
        let full = full_report(&cur);
        assert!(full.len() >= 3);
        assert!(full
            .iter()
            .all(|r| r.full && r.servers.len() + r.joined.len() <= MAX_REPORT_ENTRIES));
        assert!(full[..full.len() - 1].iter().all(|r| r.more));
        assert!(!full[full.len() - 1].more);
        let mut held = sessions(&[player(99_999, "gone", "x")], &[]);
        apply(&mut held, &full);
        assert_eq!(held, cur);

        let delta = delta_report(&Reported::default(), &cur);
        assert!(delta.iter().all(|r| !r.more && !r.full));
        let mut held = Sessions::default();
        apply(&mut held, &delta);
        assert_eq!(held, cur);
    }

    #[test]
    fn an_empty_edge_still_sends_one_full_report() {
        let full = full_report(&Sessions::default());
        assert_eq!(full.len(), 1);
        assert!(full[0].full && !full[0].more && full[0].servers.is_empty());
        assert!(delta_report(&Reported::default(), &Sessions::default()).is_empty());
    }
}
