//! Full snapshots encoded once per table version and shared.
//!
//! When many edges connect at once (a fleet rollout, a syncd restart
//! without bucket hashes), every one of them is sent the same version of
//! the same table. Cutting and encoding a piece costs about as much as an
//! edge decoding it, so syncd would spend a whole edge's load on each
//! watcher. Instead, the first watcher to reach piece `i` of version `v`
//! encodes it ([`automc_proto::sync::snapshot_chunk`], the one framing) and
//! every later watcher of `v` is handed the same bytes ([`WatchOut::Encoded`]):
//! tonic copies them into the stream's buffer, nothing is cloned or encoded
//! again.
//!
//! Memory stays bounded by about one encoded table, whatever the number of
//! watchers or versions: only the latest version's [`SharedSnapshot`] is
//! filled. When the table moves on, the publisher retires it, which drops
//! its pieces at once; its watchers go on cutting the rest of their (old,
//! persistent) table themselves, one piece at a time, as before. A live
//! one is freed when its last watcher is done with it.
use std::sync::{Mutex, MutexGuard};

use automc_proto::sync::snapshot_chunk;
use automc_proto::v1::{watch_response, WakeUpdate, WatchResponse};
use automc_proto::RouteTable;
use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};

/// One message on a watch stream as syncd sends it: built for this watcher,
/// or the encoded bytes of a `WatchResponse` shared with other watchers.
/// Both reach the wire as the same `WatchResponse` encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchOut {
    Msg(WatchResponse),
    Encoded(Bytes),
}

impl WatchOut {
    pub fn msg(msg: watch_response::Msg) -> Self {
        Self::Msg(WatchResponse { msg: Some(msg) })
    }

    /// The message itself (decoding shared bytes, which syncd encoded).
    pub fn into_response(self) -> Result<WatchResponse, DecodeError> {
        match self {
            Self::Msg(m) => Ok(m),
            Self::Encoded(b) => WatchResponse::decode(b),
        }
    }
}

impl Default for WatchOut {
    fn default() -> Self {
        Self::Msg(WatchResponse::default())
    }
}

/// Encodes as the `WatchResponse` it stands for, so tonic's prost codec
/// sends it unchanged; decoding yields [`WatchOut::Msg`].
impl Message for WatchOut {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Self::Msg(m) => m.encode_raw(buf),
            Self::Encoded(b) => buf.put_slice(b),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if let Self::Encoded(b) = self {
            *self = Self::Msg(WatchResponse::decode(b.clone())?);
        }
        match self {
            Self::Msg(m) => m.merge_field(tag, wire_type, buf, ctx),
            Self::Encoded(_) => Ok(()),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Msg(m) => m.encoded_len(),
            Self::Encoded(b) => b.len(),
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// The full snapshot of one table version, its pieces encoded as the first
/// watcher needs them.
#[derive(Debug)]
pub struct SharedSnapshot {
    pub version: u64,
    pub table: RouteTable,
    /// The wake set the last piece carries.
    pub wakes: Vec<WakeUpdate>,
    pieces: Mutex<Pieces>,
}

#[derive(Debug, Default)]
struct Pieces {
    /// Piece `i` and where piece `i + 1` starts (`None`: it is the last).
    done: Vec<(Bytes, Option<String>)>,
    retired: bool,
}

impl SharedSnapshot {
    pub fn new(table: RouteTable, version: u64, wakes: Vec<WakeUpdate>) -> Self {
        Self {
            version,
            table,
            wakes,
            pieces: Mutex::new(Pieces::default()),
        }
    }

    /// Whether a watcher that must be sent `version` with `wakes` can share this one.
    pub fn fits(&self, version: u64, wakes: &[WakeUpdate]) -> bool {
        self.version == version && self.wakes == wakes && !self.lock().retired
    }

    /// Stop sharing: the pieces are dropped now, and watchers still sending
    /// this version cut their remaining pieces themselves.
    pub fn retire(&self) {
        let mut p = self.lock();
        p.retired = true;
        p.done = Vec::new();
    }

    /// Piece `index`, which starts after server `after` (where the previous
    /// piece said the next one starts), and where the next one starts;
    /// `None` once retired.
    pub fn piece(&self, index: usize, after: &str, epoch: &str) -> Option<(Bytes, Option<String>)> {
        {
            let p = self.lock();
            if p.retired {
                return None;
            }
            if let Some((bytes, next)) = p.done.get(index) {
                return Some((bytes.clone(), next.clone()));
            }
        }
        // Cut and encode outside the lock: other watchers take the pieces
        // already done meanwhile. Two that race for the same new piece both
        // build it (the same bytes); the first one stored is kept.
        let (msg, next) =
            snapshot_chunk(&self.table, after, (epoch, self.version), &self.wakes, None);
        let bytes = Bytes::from(WatchResponse { msg: Some(msg) }.encode_to_vec());
        let mut p = self.lock();
        if !p.retired && p.done.len() == index {
            p.done.push((bytes.clone(), next.clone()));
        }
        Some((bytes, next))
    }

    fn lock(&self) -> MutexGuard<'_, Pieces> {
        self.pieces.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automc_proto::v1::{Route, WakePhase};

    fn table(n: usize) -> RouteTable {
        let mut t = RouteTable::default();
        t.apply(
            (0..n).map(|i| Route {
                server: format!("s{i:05}"),
                hostnames: vec![format!("s{i:05}.example.com")],
                address: format!("10.0.{}.{}:25565", i / 250, i % 250),
                ..Route::default()
            }),
            &[],
        );
        t
    }

    fn pieces_of(s: &SharedSnapshot, epoch: &str) -> Vec<(Bytes, Option<String>)> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let (bytes, next) = s.piece(out.len(), &after, epoch).expect("not retired");
            out.push((bytes, next.clone()));
            match next {
                Some(n) => after = n,
                None => return out,
            }
        }
    }

    #[test]
    fn shared_pieces_are_the_framings_own_pieces_encoded_once() {
        let wakes = vec![WakeUpdate {
            server: "s00001".into(),
            phase: WakePhase::Waking as i32,
            ..WakeUpdate::default()
        }];
        let t = table(5_000);
        let s = SharedSnapshot::new(t.clone(), 7, wakes.clone());
        let first = pieces_of(&s, "ep");
        assert!(first.len() > 1, "a 5,000-route table takes several pieces");
        // What one watcher would have built alone, piece by piece.
        let mut after = String::new();
        for (bytes, next) in &first {
            let (msg, own_next) = snapshot_chunk(&t, &after, ("ep", 7), &wakes, None);
            assert_eq!(
                WatchOut::Encoded(bytes.clone()).into_response(),
                Ok(WatchResponse { msg: Some(msg) })
            );
            assert_eq!(next, &own_next);
            after = own_next.unwrap_or_default();
        }
        // A second watcher is handed the very same bytes, not a new encoding.
        let second = pieces_of(&s, "ep");
        for ((a, _), (b, _)) in first.iter().zip(&second) {
            assert_eq!(a.as_ptr(), b.as_ptr());
        }
    }

    #[test]
    fn a_retired_snapshot_drops_its_pieces_and_shares_nothing_more() {
        let s = SharedSnapshot::new(table(3_000), 1, Vec::new());
        let (_, next) = s.piece(0, "", "ep").expect("live");
        assert!(next.is_some());
        assert!(s.fits(1, &[]));
        s.retire();
        assert!(!s.fits(1, &[]));
        assert_eq!(s.piece(0, "", "ep"), None);
        assert!(s.lock().done.is_empty());
    }

    #[test]
    fn encoded_and_built_messages_are_the_same_bytes_on_the_wire() {
        let (msg, _) = snapshot_chunk(&table(10), "", ("ep", 3), &[], None);
        let built = WatchOut::msg(msg);
        let bytes = built.encode_to_vec();
        let shared = WatchOut::Encoded(Bytes::from(bytes.clone()));
        assert_eq!(shared.encoded_len(), built.encoded_len());
        assert_eq!(shared.encode_to_vec(), bytes);
        // And decoding the wire form gives the message back.
        assert_eq!(WatchOut::decode(bytes.as_slice()), Ok(built));
    }
}
