//! The watch stream's framing, both ends of it: how syncd cuts a snapshot or
//! a big change set into pieces that each stay under [`CHUNK_BYTES`], and how
//! an edge puts them back together and applies a whole version at once. Pure
//! functions, no I/O: syncd's publisher, the edge's sync client and the test
//! harness all go through this module.

use prost::Message;

use crate::table::{route_entry_len, BucketSet, RouteTable};
use crate::v1::{
    watch_response, Delta, Heartbeat, PlayerCounts, Route, ServerCount, Snapshot, SnapshotChunk,
    StoredRoute, WakeSet, WakeUpdate,
};

/// The most one watch message should take encoded. A route larger than the
/// budget on its own still goes out, alone in its piece. What syncd keeps
/// per stream is about one piece (tonic's encode buffer grows to the
/// largest message): 64 KiB pieces took syncd from 305–388 to 59 KiB per
/// connected edge at 100k routes (docs/benchmarks.md, run 5), for ~90
/// pieces per 100k-route snapshot instead of ~22.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// The decode limit an edge sets on its syncd client: far above any piece
/// syncd sends ([`CHUNK_BYTES`]), so only a broken or hostile server hits
/// it. This is tonic's default, set explicitly so it is documented and
/// tested rather than assumed.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The longest `WatchHello.edge_id` syncd takes: the id is kept per stream,
/// logged and copied into every `ListEdges` entry and every player of
/// `ListPlayers`, so it is a name, not a payload.
pub const MAX_EDGE_ID_BYTES: usize = 255;

/// Room kept for everything in a piece besides its routes or names (the
/// oneof tag, epoch, versions, flags).
fn overhead(epoch: &str) -> usize {
    64 + epoch.len()
}

fn wakes_len(wakes: &[WakeUpdate]) -> usize {
    wakes
        .iter()
        .map(|w| {
            let n = w.encoded_len();
            1 + prost::length_delimiter_len(n) + n
        })
        .sum()
}

/// Encoded size of a server name as one element of `Delta.removed`.
fn name_entry_len(name: &str) -> usize {
    1 + prost::length_delimiter_len(name.len()) + name.len()
}

/// The snapshot piece of `table` that starts after server `after` (`""` for
/// the first), and where the next piece starts (`None`: this is the last,
/// and it carries `wakes`, the table hash and, for a partial snapshot of
/// the buckets `only`, their list).
pub fn snapshot_chunk(
    table: &RouteTable,
    after: &str,
    head: (&str, u64),
    wakes: &[WakeUpdate],
    only: Option<&BucketSet>,
) -> (watch_response::Msg, Option<String>) {
    let (epoch, version) = head;
    let list_len = only.map_or(0, |b| 4 + b.list().len() * 5);
    let budget = CHUNK_BYTES.saturating_sub(overhead(epoch) + wakes_len(wakes) + list_len);
    let (routes, next) = match only {
        Some(set) => table.page_where(after, usize::MAX, budget, |r| {
            set.contains_server(&r.server)
        }),
        None => table.page(after, usize::MAX, budget),
    };
    let last = next.is_none();
    let chunk = SnapshotChunk {
        epoch: epoch.to_owned(),
        version,
        routes: routes.into_iter().map(StoredRoute::from).collect(),
        wakes: if last { wakes.to_vec() } else { Vec::new() },
        last,
        partial: last && only.is_some(),
        buckets: match only {
            Some(set) if last => set.list().to_vec(),
            _ => Vec::new(),
        },
        table_hash: if last { table.table_hash() } else { 0 },
    };
    (watch_response::Msg::SnapshotChunk(chunk), next)
}

/// The piece of a change set (`upserts`, then `removed`) that starts at
/// `*pos` (an index into both lists, upserts first), advancing `*pos`. The
/// piece has `more` set unless it reaches the end.
pub fn delta_piece(
    upserts: &[Route],
    removed: &[String],
    pos: &mut usize,
    head: (&str, u64, u64),
) -> watch_response::Msg {
    let (epoch, from_version, version) = head;
    let budget = CHUNK_BYTES.saturating_sub(overhead(epoch));
    let mut bytes = 0usize;
    let mut piece = Delta {
        epoch: epoch.to_owned(),
        from_version,
        version,
        ..Delta::default()
    };
    let total = upserts.len() + removed.len();
    while *pos < total {
        let len = match upserts.get(*pos) {
            Some(r) => route_entry_len(r),
            None => name_entry_len(&removed[*pos - upserts.len()]),
        };
        let taken = piece.upserts.len() + piece.removed.len();
        if taken > 0 && bytes + len > budget {
            break;
        }
        bytes += len;
        match upserts.get(*pos) {
            Some(r) => piece.upserts.push(r.clone()),
            None => piece.removed.push(removed[*pos - upserts.len()].clone()),
        }
        *pos += 1;
    }
    piece.more = *pos < total;
    watch_response::Msg::Delta(piece)
}

/// Cut a counts set (`full`: everything; else the servers that changed)
/// into messages of at most [`CHUNK_BYTES`] each; every piece of a full set
/// but the last has `more` set. A full set is at least one message, even
/// when empty (it still clears what the edge held).
pub fn counts_pieces(full: bool, servers: Vec<ServerCount>) -> Vec<PlayerCounts> {
    let budget = CHUNK_BYTES.saturating_sub(overhead(""));
    let mut out = Vec::new();
    let mut cur = PlayerCounts {
        full,
        ..PlayerCounts::default()
    };
    let mut bytes = 0usize;
    for s in servers {
        let n = s.encoded_len();
        let len = 1 + prost::length_delimiter_len(n) + n;
        if !cur.servers.is_empty() && bytes + len > budget {
            let next = PlayerCounts {
                full,
                ..PlayerCounts::default()
            };
            let mut done = std::mem::replace(&mut cur, next);
            done.more = full;
            out.push(done);
            bytes = 0;
        }
        bytes += len;
        cur.servers.push(s);
    }
    if full || !cur.servers.is_empty() {
        out.push(cur);
    }
    out
}

/// A whole version (or a wake or heartbeat), as the edge applies it.
#[derive(Debug, Clone)]
pub enum Event {
    /// Replace everything with this table or, when `partial` is set, only
    /// those buckets of the table held when the hello was sent.
    Snapshot {
        epoch: String,
        version: u64,
        table: RouteTable,
        wakes: Vec<WakeUpdate>,
        partial: Option<BucketSet>,
        /// What the complete table's [`RouteTable::table_hash`] must be (0:
        /// not given).
        table_hash: u64,
    },
    /// Apply upserts then removals to `from_version`, giving `version`.
    Delta {
        epoch: String,
        from_version: u64,
        version: u64,
        upserts: Vec<Route>,
        removed: Vec<String>,
    },
    Heartbeat(Heartbeat),
    Wake(WakeUpdate),
    /// Replace the wake state with exactly these.
    WakeSet(Vec<WakeUpdate>),
    /// One piece of player counts (the edge puts full sets together itself).
    Counts(PlayerCounts),
}

/// A snapshot whose table does not hash to what syncd said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the table built from a snapshot does not match syncd's hash")]
pub struct TableHashMismatch;

/// The whole table a snapshot event stands for: `table` itself, or for a
/// partial one `held` (the table held when the hello went out) with those
/// buckets replaced, checked against `table_hash` when given.
pub fn whole_table(
    held: &RouteTable,
    table: RouteTable,
    partial: Option<BucketSet>,
    table_hash: u64,
) -> Result<RouteTable, TableHashMismatch> {
    match partial {
        Some(buckets) => {
            let mut whole = held.clone();
            whole.replace_buckets(&buckets, table);
            if table_hash != 0 && whole.table_hash() != table_hash {
                return Err(TableHashMismatch);
            }
            Ok(whole)
        }
        // A whole snapshot is syncd's table as sent: nothing of the edge's
        // went into it to check, and its hashes are worked out when first
        // needed (the next hello), not by every edge of a crowd at once.
        None => Ok(table),
    }
}

/// The stream broke the framing rules: the edge drops it and asks for a
/// snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("a {got} arrived while a {pending} was still incomplete")]
    Interleaved {
        pending: &'static str,
        got: &'static str,
    },
    #[error("a piece of {got_epoch}@{got_version} arrived while assembling {epoch}@{version}")]
    Mismatch {
        epoch: String,
        version: u64,
        got_epoch: String,
        got_version: u64,
    },
}

enum Pending {
    /// The routes so far, as the table keeps them; the table is built in
    /// one pass when the last piece arrives.
    Snapshot {
        epoch: String,
        version: u64,
        routes: Vec<StoredRoute>,
    },
    Delta {
        epoch: String,
        from_version: u64,
        version: u64,
        upserts: Vec<Route>,
        removed: Vec<String>,
    },
}

impl Pending {
    fn what(&self) -> &'static str {
        match self {
            Self::Snapshot { .. } => "snapshot",
            Self::Delta { .. } => "delta",
        }
    }
}

fn kind(msg: &watch_response::Msg) -> &'static str {
    match msg {
        watch_response::Msg::Snapshot(_) => "snapshot",
        watch_response::Msg::SnapshotChunk(_) => "snapshot piece",
        watch_response::Msg::Delta(_) => "delta",
        watch_response::Msg::Heartbeat(_) => "heartbeat",
        watch_response::Msg::Wake(_) => "wake update",
        watch_response::Msg::WakeSet(_) => "wake set",
        watch_response::Msg::Counts(_) => "player counts",
    }
}

/// Reassembles pieces into [`Event`]s. A new table is built aside while its
/// pieces arrive; nothing of it is visible until the last one.
#[derive(Default)]
pub struct Assembler {
    pending: Option<Pending>,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// True while a snapshot or delta is partly received.
    pub fn in_progress(&self) -> bool {
        self.pending.is_some()
    }

    /// Feed one message; returns an event when it completed one.
    pub fn push(&mut self, msg: watch_response::Msg) -> Result<Option<Event>, FramingError> {
        match (self.pending.take(), msg) {
            (None, watch_response::Msg::SnapshotChunk(mut c)) => {
                // The routes move out; the piece keeps the rest.
                let routes = std::mem::take(&mut c.routes);
                self.snapshot_piece(c.epoch.clone(), c.version, routes, c)
            }
            (
                Some(Pending::Snapshot {
                    epoch,
                    version,
                    mut routes,
                }),
                watch_response::Msg::SnapshotChunk(mut c),
            ) => {
                if c.epoch != epoch || c.version != version {
                    return Err(FramingError::Mismatch {
                        epoch,
                        version,
                        got_epoch: c.epoch,
                        got_version: c.version,
                    });
                }
                routes.extend(std::mem::take(&mut c.routes));
                self.snapshot_piece(epoch, version, routes, c)
            }
            (None, watch_response::Msg::Delta(d)) => self.delta_piece(
                d.epoch,
                d.from_version,
                d.version,
                d.upserts,
                d.removed,
                d.more,
            ),
            (
                Some(Pending::Delta {
                    epoch,
                    from_version,
                    version,
                    mut upserts,
                    mut removed,
                }),
                watch_response::Msg::Delta(d),
            ) => {
                if d.epoch != epoch || d.from_version != from_version || d.version != version {
                    return Err(FramingError::Mismatch {
                        epoch,
                        version,
                        got_epoch: d.epoch,
                        got_version: d.version,
                    });
                }
                upserts.extend(d.upserts);
                removed.extend(d.removed);
                self.delta_piece(epoch, from_version, version, upserts, removed, d.more)
            }
            (Some(p), other) => Err(FramingError::Interleaved {
                pending: p.what(),
                got: kind(&other),
            }),
            (
                None,
                watch_response::Msg::Snapshot(Snapshot {
                    epoch,
                    version,
                    routes,
                    wakes,
                }),
            ) => Ok(Some(Event::Snapshot {
                epoch,
                version,
                table: RouteTable::from_routes(routes),
                wakes,
                partial: None,
                table_hash: 0,
            })),
            (None, watch_response::Msg::Heartbeat(h)) => Ok(Some(Event::Heartbeat(h))),
            (None, watch_response::Msg::Wake(w)) => Ok(Some(Event::Wake(w))),
            (None, watch_response::Msg::WakeSet(WakeSet { wakes })) => {
                Ok(Some(Event::WakeSet(wakes)))
            }
            (None, watch_response::Msg::Counts(c)) => Ok(Some(Event::Counts(c))),
        }
    }

    fn snapshot_piece(
        &mut self,
        epoch: String,
        version: u64,
        routes: Vec<StoredRoute>,
        piece: SnapshotChunk,
    ) -> Result<Option<Event>, FramingError> {
        if piece.last {
            return Ok(Some(Event::Snapshot {
                epoch,
                version,
                table: RouteTable::from_stored(routes),
                wakes: piece.wakes,
                partial: piece.partial.then(|| BucketSet::new(&piece.buckets)),
                table_hash: piece.table_hash,
            }));
        }
        self.pending = Some(Pending::Snapshot {
            epoch,
            version,
            routes,
        });
        Ok(None)
    }

    fn delta_piece(
        &mut self,
        epoch: String,
        from_version: u64,
        version: u64,
        upserts: Vec<Route>,
        removed: Vec<String>,
        more: bool,
    ) -> Result<Option<Event>, FramingError> {
        if !more {
            return Ok(Some(Event::Delta {
                epoch,
                from_version,
                version,
                upserts,
                removed,
            }));
        }
        self.pending = Some(Pending::Delta {
            epoch,
            from_version,
            version,
            upserts,
            removed,
        });
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{WakePhase, WatchResponse};

    fn route(i: usize) -> Route {
        Route {
            server: format!("server-{i:06}"),
            hostnames: vec![
                format!("server-{i}.play.example.com"),
                format!("alias-{i}.example.net"),
            ],
            address: format!("10.0.{}.{}:25565", i / 256 % 256, i % 256),
            state: "running".into(),
            ..Route::default()
        }
    }

    fn encoded(msg: &watch_response::Msg) -> usize {
        WatchResponse {
            msg: Some(msg.clone()),
        }
        .encoded_len()
    }

    fn waking(server: &str) -> WakeUpdate {
        WakeUpdate {
            server: server.into(),
            phase: WakePhase::Waking as i32,
            ..WakeUpdate::default()
        }
    }

    #[test]
    fn counts_come_in_bounded_pieces_and_a_full_set_is_never_empty() {
        use crate::v1::{BackendCount, ServerCount};
        let servers: Vec<ServerCount> = (0..10_000)
            .map(|i| ServerCount {
                server: format!("server-{i:05}"),
                players: i,
                backends: (0..3)
                    .map(|b| BackendCount {
                        address: format!("10.0.{b}.{}:25565", i % 250),
                        players: 1,
                    })
                    .collect(),
                unknown: false,
            })
            .collect();
        let full = counts_pieces(true, servers.clone());
        assert!(full.len() > 1);
        assert!(full
            .iter()
            .all(|p| p.full && p.encoded_len() <= CHUNK_BYTES));
        assert!(full[..full.len() - 1].iter().all(|p| p.more));
        assert!(!full[full.len() - 1].more);
        let back: Vec<ServerCount> = full.into_iter().flat_map(|p| p.servers).collect();
        assert_eq!(back, servers);
        let changes = counts_pieces(false, servers);
        assert!(changes.iter().all(|p| !p.full && !p.more));
        assert_eq!(counts_pieces(true, Vec::new()).len(), 1);
        assert!(counts_pieces(false, Vec::new()).is_empty());
    }

    #[test]
    fn a_big_snapshot_goes_in_bounded_pieces_and_arrives_whole() {
        let table = RouteTable::from_routes((0..20_000).map(route));
        let wakes = vec![waking("server-000007")];
        let mut asm = Assembler::new();
        let mut after = String::new();
        let mut pieces = 0;
        let event = loop {
            let (msg, next) = snapshot_chunk(&table, &after, ("e1", 42), &wakes, None);
            assert!(
                encoded(&msg) <= CHUNK_BYTES,
                "piece of {} bytes",
                encoded(&msg)
            );
            pieces += 1;
            let event = asm.push(msg).expect("well framed");
            match next {
                Some(n) => {
                    assert!(event.is_none(), "nothing applies before the last piece");
                    assert!(asm.in_progress());
                    after = n;
                }
                None => break event,
            }
        };
        assert!(pieces > 4, "{pieces} pieces");
        match event {
            Some(Event::Snapshot {
                epoch,
                version,
                table: got,
                wakes: got_wakes,
                partial,
                table_hash,
            }) => {
                assert_eq!((epoch.as_str(), version), ("e1", 42));
                assert!(partial.is_none());
                assert_eq!(table_hash, got.table_hash());
                assert!(got.routes().eq(table.routes()));
                assert_eq!(got_wakes, wakes);
            }
            other => panic!("expected a snapshot, got {other:?}"),
        }
        assert!(!asm.in_progress());
    }

    #[test]
    fn an_empty_table_is_one_last_piece() {
        let (msg, next) = snapshot_chunk(&RouteTable::new(), "", ("e1", 0), &[], None);
        assert!(next.is_none());
        match Assembler::new().push(msg) {
            Ok(Some(Event::Snapshot { table, .. })) => assert!(table.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_big_change_set_goes_in_pieces_of_one_delta() {
        let upserts: Vec<Route> = (0..5_000).map(route).collect();
        let removed: Vec<String> = (0..20_000).map(|i| format!("gone-{i:08}")).collect();
        let mut pos = 0;
        let mut asm = Assembler::new();
        let mut pieces = 0;
        let event = loop {
            let msg = delta_piece(&upserts, &removed, &mut pos, ("e1", 7, 9));
            assert!(encoded(&msg) <= CHUNK_BYTES);
            pieces += 1;
            if let Some(e) = asm.push(msg).expect("well framed") {
                break e;
            }
        };
        assert!(pieces > 2, "{pieces} pieces");
        assert_eq!(pos, upserts.len() + removed.len());
        match event {
            Event::Delta {
                from_version,
                version,
                upserts: u,
                removed: r,
                ..
            } => {
                assert_eq!((from_version, version), (7, 9));
                assert_eq!((u, r), (upserts, removed));
            }
            other => panic!("expected a delta, got {other:?}"),
        }
    }

    #[test]
    fn a_small_delta_is_one_piece_without_more() {
        let mut pos = 0;
        match delta_piece(&[route(1)], &["x".into()], &mut pos, ("e", 1, 2)) {
            watch_response::Msg::Delta(d) => {
                assert!(!d.more);
                assert_eq!((d.upserts.len(), d.removed.len()), (1, 1));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn broken_framing_is_an_error_not_a_half_table() {
        let table = RouteTable::from_routes((0..20_000).map(route));
        let (first, next) = snapshot_chunk(&table, "", ("e1", 3), &[], None);
        let next = next.expect("more than one piece");
        let (second_other_version, _) = snapshot_chunk(&table, &next, ("e1", 4), &[], None);
        let mut asm = Assembler::new();
        assert!(asm.push(first.clone()).expect("first").is_none());
        assert!(matches!(
            asm.push(second_other_version),
            Err(FramingError::Mismatch { .. })
        ));
        let mut asm = Assembler::new();
        asm.push(first).expect("first");
        assert_eq!(
            asm.push(watch_response::Msg::Heartbeat(Heartbeat::default()))
                .err(),
            Some(FramingError::Interleaved {
                pending: "snapshot",
                got: "heartbeat"
            })
        );
    }

    #[test]
    fn a_one_message_snapshot_from_an_older_syncd_still_applies() {
        let msg = watch_response::Msg::Snapshot(Snapshot {
            epoch: "old".into(),
            version: 5,
            routes: vec![route(1)],
            wakes: vec![],
        });
        match Assembler::new().push(msg) {
            Ok(Some(Event::Snapshot { table, version, .. })) => {
                assert_eq!((table.len(), version), (1, 5));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_partial_snapshot_carries_only_the_differing_buckets() {
        let held = RouteTable::from_routes((0..20_000).map(route));
        let mut current = held.clone();
        current.upsert(Route {
            address: "10.9.9.9:25565".into(),
            ..route(77)
        });
        let differ = current
            .differing_buckets(held.bucket_hashes())
            .expect("whole set");
        let set = BucketSet::new(&differ);
        let (msg, next) = snapshot_chunk(&current, "", ("e2", 1), &[], Some(&set));
        assert!(next.is_none(), "one small piece");
        let routes_sent = match &msg {
            watch_response::Msg::SnapshotChunk(c) => c.routes.len(),
            _ => 0,
        };
        assert!(
            routes_sent < 100,
            "{routes_sent} routes for one changed bucket"
        );
        match Assembler::new().push(msg) {
            Ok(Some(Event::Snapshot {
                table,
                partial: Some(set),
                table_hash,
                ..
            })) => {
                let rebuilt = whole_table(&held, table.clone(), Some(set.clone()), table_hash)
                    .expect("hash matches");
                assert!(rebuilt.routes().eq(current.routes()));
                assert_eq!(
                    whole_table(&RouteTable::new(), table, Some(set), table_hash).err(),
                    Some(TableHashMismatch),
                    "applied to another table it does not match"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
