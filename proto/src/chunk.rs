//! `SnapshotChunk` as both ends hold it: its routes are the `Arc`s a
//! [`RouteTable`](crate::RouteTable) keeps, so syncd cuts a piece without
//! cloning a route and an edge keeps what it decoded as it is.
//!
//! This is the one message prost does not generate (`build.rs` points
//! `.automc.v1.SnapshotChunk` here, and `v1::SnapshotChunk` re-exports it).
//! Its fields are prost's own, derived exactly as prost-build writes them;
//! only a route's decoding differs, in how it allocates. A 100k-route
//! snapshot is 100k routes decoded by every edge that (re)connects, so:
//!
//! - a string field is copied straight out of the received buffer into a
//!   `String` of its length (prost goes through a growable byte buffer);
//! - the hostname list grows one at a time while short, so a route's one
//!   hostname takes room for one, not four (decoding would otherwise
//!   reserve four: 72 bytes a route, 7 MB of a 100k-route table).
//!
//! Anything else (backends, options, fields a newer syncd adds, a string
//! split across buffer chunks, bytes that are not UTF-8) goes to prost's
//! generated decoding, with its errors. The bytes on the wire are the
//! `Route` encoding, unchanged.
use std::fmt;
use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{decode_varint, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::v1::{Route, WakeUpdate};

/// One snapshot piece: see `SnapshotChunk` in `automc.proto`.
#[derive(Clone, PartialEq, Message)]
pub struct SnapshotChunk {
    #[prost(string, tag = "1")]
    pub epoch: String,
    #[prost(uint64, tag = "2")]
    pub version: u64,
    #[prost(message, repeated, tag = "3")]
    pub routes: Vec<SharedRoute>,
    /// Servers currently waking (last piece only): the complete set.
    #[prost(message, repeated, tag = "4")]
    pub wakes: Vec<WakeUpdate>,
    #[prost(bool, tag = "5")]
    pub last: bool,
    /// Last piece only: the pieces hold only the routes of `buckets`.
    #[prost(bool, tag = "6")]
    pub partial: bool,
    #[prost(uint32, repeated, tag = "7")]
    pub buckets: Vec<u32>,
    /// Last piece only: the sum of all bucket hashes of the table.
    #[prost(fixed64, tag = "8")]
    pub table_hash: u64,
}

/// A `Route` behind the `Arc` a table shares: encodes as the route itself.
#[derive(Clone, PartialEq, Default)]
pub struct SharedRoute(pub Arc<Route>);

impl fmt::Debug for SharedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Route> for SharedRoute {
    fn from(route: Route) -> Self {
        Self(Arc::new(route))
    }
}

impl Message for SharedRoute {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.0.encode_raw(buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Unshared while it is being decoded: no copy is made.
        let route = Arc::make_mut(&mut self.0);
        let (field, name) = match (tag, wire_type) {
            (1, WireType::LengthDelimited) => (&mut route.server, "server"),
            (3, WireType::LengthDelimited) => (&mut route.address, "address"),
            (4, WireType::LengthDelimited) => (&mut route.state, "state"),
            (2, WireType::LengthDelimited) => {
                let mut host = String::new();
                merge_string(&mut host, buf, ctx).map_err(|e| at(e, "hostnames"))?;
                push_tight(&mut route.hostnames, host);
                return Ok(());
            }
            _ => return route.merge_field(tag, wire_type, buf, ctx),
        };
        merge_string(field, buf, ctx).map_err(|e| at(e, name))
    }

    fn encoded_len(&self) -> usize {
        self.0.encoded_len()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// `error` located at `Route.<field>`, as prost's generated code reports it.
fn at(mut error: DecodeError, field: &'static str) -> DecodeError {
    error.push("Route", field);
    error
}

/// A length-delimited string field into `dst` (replacing it, as proto3
/// does): straight from the buffer when the whole field is in its current
/// chunk and valid UTF-8, else through prost's own decoding, which also
/// reports the errors.
fn merge_string(
    dst: &mut String,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    let mut rest = buf.chunk();
    let whole = rest.len();
    if let Ok(len) = decode_varint(&mut rest) {
        let text = usize::try_from(len)
            .ok()
            .and_then(|n| rest.get(..n))
            .and_then(|b| std::str::from_utf8(b).ok());
        if let Some(text) = text {
            let used = whole - rest.len() + text.len();
            *dst = text.to_owned();
            buf.advance(used);
            return Ok(());
        }
    }
    prost::encoding::string::merge(WireType::LengthDelimited, dst, buf, ctx)
}

/// Push a hostname, with room for exactly the ones seen while the list is
/// short (a route has one to three); a longer list grows as usual.
fn push_tight(list: &mut Vec<String>, host: String) {
    if list.len() == list.capacity() && list.len() < 4 {
        list.reserve_exact(1);
    }
    list.push(host);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Backend, RouteOptions};
    use proptest::prelude::*;

    fn route(server: &str, hosts: &[&str]) -> Route {
        Route {
            server: server.into(),
            hostnames: hosts.iter().map(|h| (*h).into()).collect(),
            address: "10.0.0.7:25565".into(),
            state: "running".into(),
            ..Route::default()
        }
    }

    /// Decode `bytes` handed over in pieces cut at `cuts`, as a network
    /// buffer may hold them (the slow path for a field across a cut).
    fn decode_split(bytes: &[u8], cuts: &[usize]) -> Result<SharedRoute, DecodeError> {
        let mut pieces: Vec<&[u8]> = Vec::new();
        let mut at = 0;
        for &c in cuts {
            let c = c.min(bytes.len()).max(at);
            pieces.push(&bytes[at..c]);
            at = c;
        }
        pieces.push(&bytes[at..]);
        let mut buf: Box<dyn Buf> = Box::new(&[][..]);
        for p in pieces {
            buf = Box::new(buf.chain(p));
        }
        SharedRoute::decode(&mut buf)
    }

    #[test]
    fn a_route_decodes_as_prost_decodes_it_with_tight_lists() {
        let mut r = route("lobby", &["lobby.example.com"]);
        r.backends = vec![Backend {
            address: "10.0.0.8:25565".into(),
            priority: 1,
            weight: 3,
        }];
        r.options = Some(Box::new(RouteOptions {
            ..RouteOptions::default()
        }));
        let bytes = r.encode_to_vec();
        let got = SharedRoute::decode(&bytes[..]).expect("decodes");
        assert_eq!(*got.0, r);
        assert_eq!(got.0.hostnames.capacity(), 1);
        assert_eq!(got.0.server.capacity(), "lobby".len());
        assert_eq!(got.encode_to_vec(), bytes, "encodes as the route itself");
    }

    #[test]
    fn a_later_string_field_replaces_an_earlier_one() {
        let mut bytes = route("a", &[]).encode_to_vec();
        bytes.extend(
            Route {
                server: "b".into(),
                ..Route::default()
            }
            .encode_to_vec(),
        );
        let got = SharedRoute::decode(&bytes[..]).expect("decodes");
        assert_eq!(got.0.server, "b");
        assert_eq!(got.0.address, "10.0.0.7:25565");
    }

    #[test]
    fn bad_bytes_get_prosts_errors() {
        // server = "\xff": not UTF-8.
        let bad = [0x0a, 0x01, 0xff];
        assert_eq!(
            SharedRoute::decode(&bad[..]).map_err(|e| e.to_string()),
            Err("failed to decode Protobuf message: Route.server: \
                 invalid string value: data is not UTF-8 encoded"
                .to_owned())
        );
        // A string longer than what follows.
        let short = [0x0a, 0x09, b'a'];
        assert!(SharedRoute::decode(&short[..]).is_err());
        // A string field sent as a varint.
        let wrong = [0x08, 0x01];
        assert!(SharedRoute::decode(&wrong[..]).is_err());
        assert!(Route::decode(&wrong[..]).is_err());
    }

    #[test]
    fn a_chunk_encodes_as_the_proto_says() {
        // Field by field: epoch 1, version 2, one route 3, last 5, table_hash 8.
        let chunk = SnapshotChunk {
            epoch: "e".into(),
            version: 7,
            routes: vec![route("s", &["s.example"]).into()],
            last: true,
            table_hash: 1,
            ..SnapshotChunk::default()
        };
        let r = route("s", &["s.example"]).encode_to_vec();
        let mut want = vec![0x0a, 0x01, b'e', 0x10, 0x07, 0x1a, r.len() as u8];
        want.extend(&r);
        want.extend([0x28, 0x01, 0x41, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(chunk.encode_to_vec(), want);
        assert_eq!(SnapshotChunk::decode(&want[..]).expect("decodes"), chunk);
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9.*-]{0,40}",
            "\\PC{0,12}",
            Just(String::new()),
            "[a-z]{130,300}",
        ]
    }

    proptest! {
        #[test]
        fn any_route_in_any_pieces_decodes_as_prost_decodes_it(
            server in text(),
            hosts in prop::collection::vec(text(), 0..7),
            address in text(),
            state in text(),
            backends in prop::collection::vec((text(), -1i32..3, 0u32..5), 0..3),
            options in any::<bool>(),
            cuts in prop::collection::vec(0usize..400, 0..4),
        ) {
            let r = Route {
                server,
                hostnames: hosts,
                address,
                state,
                backends: backends
                    .into_iter()
                    .map(|(address, priority, weight)| Backend { address, priority, weight })
                    .collect(),
                options: options.then(|| Box::new(RouteOptions::default())),
            };
            let bytes = r.encode_to_vec();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let got = decode_split(&bytes, &cuts).expect("decodes");
            prop_assert_eq!(&*got.0, &r);
            prop_assert!(r.hostnames.len() >= 4 || got.0.hostnames.capacity() == r.hostnames.len());
        }

        #[test]
        fn any_bytes_decode_as_prost_decodes_them(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let ours = SharedRoute::decode(&bytes[..])
                .map(|r| Route::clone(&r.0))
                .map_err(|e| e.to_string());
            let theirs = Route::decode(&bytes[..]).map_err(|e| e.to_string());
            prop_assert_eq!(ours, theirs);
        }
    }
}
