//! `SnapshotChunk` as both ends hold it, and the [`StoredRoute`]s a
//! [`RouteTable`](crate::RouteTable) keeps: syncd cuts a piece without
//! cloning a route, and an edge keeps a route as it received it, decoding
//! it only when something reads it.
//!
//! This is the one message prost does not generate (`build.rs` points
//! `.automc.v1.SnapshotChunk` here, and `v1::SnapshotChunk` re-exports it).
//! Its encoding is prost's for the message in `automc.proto` (a test holds
//! it to a derived twin); only a route's decoding differs. A 100k-route
//! snapshot is 100k routes decoded by every edge that (re)connects, and a
//! crowd of edges loading one is CPU-bound, so:
//!
//! - a route with only the four plain fields (server, hostnames, address,
//!   state: what almost every route is) is checked (the UTF-8 of each
//!   field) and kept as its bytes, one allocation of its encoded size, where
//!   decoding took six and about 2.5 times the memory (fresh memory is page
//!   faults, a third of an edge's load). A table reads its name and
//!   hostnames straight from those bytes and decodes the whole route the
//!   first time a player, a page or a change needs it;
//! - any other route (backends, options, fields a newer syncd adds, bytes
//!   prost would refuse) goes through prost's generated decoding, with its
//!   errors.
use std::fmt;
use std::sync::{Arc, OnceLock};

use prost::bytes::{Buf, BufMut};
use prost::encoding::{
    bool as pbool, decode_varint, encode_key, encode_varint, encoded_len_varint, fixed64, key_len,
    message, skip_field, string, uint32, uint64, DecodeContext, WireType,
};
use prost::{DecodeError, Message};

use crate::v1::{Route, WakeUpdate};

/// One snapshot piece: see `SnapshotChunk` in `automc.proto`.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct SnapshotChunk {
    pub epoch: String,
    pub version: u64,
    pub routes: Vec<StoredRoute>,
    /// Servers currently waking (last piece only): the complete set.
    pub wakes: Vec<WakeUpdate>,
    pub last: bool,
    /// Last piece only: the pieces hold only the routes of `buckets`.
    pub partial: bool,
    pub buckets: Vec<u32>,
    /// Last piece only: the sum of all bucket hashes of the table.
    pub table_hash: u64,
}

/// Field 3, `repeated Route routes`.
const ROUTES: u32 = 3;

/// `error` located at `SnapshotChunk.<field>`, as prost's generated code
/// reports it.
fn at(mut error: DecodeError, field: &'static str) -> DecodeError {
    error.push("SnapshotChunk", field);
    error
}

impl Message for SnapshotChunk {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.epoch.is_empty() {
            string::encode(1, &self.epoch, buf);
        }
        if self.version != 0 {
            uint64::encode(2, &self.version, buf);
        }
        for r in &self.routes {
            encode_key(ROUTES, WireType::LengthDelimited, buf);
            encode_varint(r.encoded_len() as u64, buf);
            r.encode_raw(buf);
        }
        message::encode_repeated(4, &self.wakes, buf);
        if self.last {
            pbool::encode(5, &self.last, buf);
        }
        if self.partial {
            pbool::encode(6, &self.partial, buf);
        }
        uint32::encode_packed(7, &self.buckets, buf);
        if self.table_hash != 0 {
            fixed64::encode(8, &self.table_hash, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => string::merge(wire_type, &mut self.epoch, buf, ctx).map_err(|e| at(e, "epoch")),
            2 => {
                uint64::merge(wire_type, &mut self.version, buf, ctx).map_err(|e| at(e, "version"))
            }
            ROUTES => {
                let route = StoredRoute::merge(wire_type, buf, ctx).map_err(|e| at(e, "routes"))?;
                self.routes.push(route);
                Ok(())
            }
            4 => message::merge_repeated(wire_type, &mut self.wakes, buf, ctx)
                .map_err(|e| at(e, "wakes")),
            5 => pbool::merge(wire_type, &mut self.last, buf, ctx).map_err(|e| at(e, "last")),
            6 => pbool::merge(wire_type, &mut self.partial, buf, ctx).map_err(|e| at(e, "partial")),
            7 => uint32::merge_repeated(wire_type, &mut self.buckets, buf, ctx)
                .map_err(|e| at(e, "buckets")),
            8 => fixed64::merge(wire_type, &mut self.table_hash, buf, ctx)
                .map_err(|e| at(e, "table_hash")),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let routes: usize = self
            .routes
            .iter()
            .map(|r| {
                let n = r.encoded_len();
                key_len(ROUTES) + encoded_len_varint(n as u64) + n
            })
            .sum();
        (if self.epoch.is_empty() {
            0
        } else {
            string::encoded_len(1, &self.epoch)
        }) + (if self.version == 0 {
            0
        } else {
            uint64::encoded_len(2, &self.version)
        }) + routes
            + message::encoded_len_repeated(4, &self.wakes)
            + (if self.last {
                pbool::encoded_len(5, &self.last)
            } else {
                0
            })
            + (if self.partial {
                pbool::encoded_len(6, &self.partial)
            } else {
                0
            })
            + uint32::encoded_len_packed(7, &self.buckets)
            + (if self.table_hash == 0 {
                0
            } else {
                fixed64::encoded_len(8, &self.table_hash)
            })
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// A route as a table holds it: decoded, or the encoding it arrived in (a
/// route with only the plain fields, checked), decoded on first use and
/// kept decoded from then on.
#[derive(Clone, Default)]
pub struct StoredRoute {
    decoded: OnceLock<Arc<Route>>,
    raw: Option<Arc<[u8]>>,
}

impl From<Arc<Route>> for StoredRoute {
    fn from(route: Arc<Route>) -> Self {
        Self {
            decoded: OnceLock::from(route),
            raw: None,
        }
    }
}

impl From<Route> for StoredRoute {
    fn from(route: Route) -> Self {
        Self::from(Arc::new(route))
    }
}

impl fmt::Debug for StoredRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.route().fmt(f)
    }
}

impl PartialEq for StoredRoute {
    fn eq(&self, other: &Self) -> bool {
        self.route() == other.route()
    }
}

/// The fields of a plain route's encoding (see [`StoredRoute`]) in order:
/// field number and value; `None` for the first field that is anything
/// else (another field or wire type, or an overrun), and nothing after it.
/// Values are bytes: [`is_plain`] checks their UTF-8 once, and names
/// compare as bytes exactly as they do as text.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Option<(u64, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let field = self.field();
        if field.is_none() {
            self.0 = &[];
        }
        Some(field)
    }
}

impl<'a> Fields<'a> {
    /// A varint; one byte (every key here, and a length under 128) without
    /// a call.
    fn varint(&mut self) -> Option<u64> {
        match self.0 {
            [b, rest @ ..] if *b < 0x80 => {
                self.0 = rest;
                Some(u64::from(*b))
            }
            _ => decode_varint(&mut self.0).ok(),
        }
    }

    fn field(&mut self) -> Option<(u64, &'a [u8])> {
        let key = self.varint()?;
        let (tag, wire) = (key >> 3, key & 7);
        if wire != WireType::LengthDelimited as u64 || !(1..=4).contains(&tag) {
            return None;
        }
        let len = usize::try_from(self.varint()?).ok()?;
        let text = self.0.get(..len)?;
        self.0 = &self.0[len..];
        Some((tag, text))
    }
}

/// A route kept as its bytes has at most this many fields: the table reads
/// a name or a hostname by walking them, once per probe of a lookup, so a
/// route listing hundreds of aliases is decoded when it arrives instead.
pub const MAX_PLAIN_FIELDS: usize = 12;

/// Whether `raw` is a plain route's encoding (at most [`MAX_PLAIN_FIELDS`]
/// fields), every value UTF-8.
fn is_plain(raw: &[u8]) -> bool {
    // When every key and length is one byte, they are ASCII bytes, which
    // no UTF-8 sequence ends with or continues into: then the values are
    // all UTF-8 exactly when the whole encoding is (one check instead of
    // one a field). Each varint is at least one byte, so they all are one
    // exactly when the fields add up to two bytes each plus their values.
    let mut one_byte = 0;
    for (n, field) in Fields(raw).enumerate() {
        let Some((_, v)) = field else {
            return false;
        };
        if n == MAX_PLAIN_FIELDS {
            return false;
        }
        one_byte += 2 + v.len();
    }
    if one_byte == raw.len() {
        return std::str::from_utf8(raw).is_ok();
    }
    Fields(raw)
        .flatten()
        .all(|(_, v)| std::str::from_utf8(v).is_ok())
}

/// The last value of singular field `tag` of checked plain bytes, as proto3
/// decodes it (a later one replaces an earlier one); empty when absent.
fn last_of(raw: &[u8], tag: u64) -> &[u8] {
    Fields(raw)
        .flatten()
        .filter(|(t, _)| *t == tag)
        .last()
        .map_or(&[], |(_, v)| v)
}

/// The hostnames of checked plain bytes, in order.
fn hosts_of(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    Fields(raw)
        .flatten()
        .filter(|(t, _)| *t == 2)
        .map(|(_, h)| h)
}

/// Checked bytes as text (never empty for want of UTF-8: [`is_plain`]
/// checked it).
fn text(v: &[u8]) -> &str {
    std::str::from_utf8(v).unwrap_or_default()
}

/// The route a checked plain encoding stands for.
fn decode_plain(raw: &[u8]) -> Route {
    let mut route = Route {
        hostnames: Vec::with_capacity(hosts_of(raw).count()),
        ..Route::default()
    };
    for (tag, v) in Fields(raw).flatten() {
        let v = text(v).to_owned();
        match tag {
            1 => route.server = v,
            2 => route.hostnames.push(v),
            3 => route.address = v,
            _ => route.state = v,
        }
    }
    route
}

impl StoredRoute {
    /// The route, decoded now if it never was.
    pub fn route(&self) -> &Arc<Route> {
        self.decoded
            .get_or_init(|| Arc::new(self.raw.as_deref().map(decode_plain).unwrap_or_default()))
    }

    /// The encoded bytes it still is (nothing read it yet).
    fn undecoded(&self) -> Option<&[u8]> {
        match self.decoded.get() {
            Some(_) => None,
            None => self.raw.as_deref(),
        }
    }

    /// The server name, without decoding.
    pub fn server(&self) -> &str {
        text(self.server_bytes())
    }

    /// The server name's bytes (names order as their bytes do).
    pub fn server_bytes(&self) -> &[u8] {
        match (self.decoded.get(), &self.raw) {
            (Some(r), _) => r.server.as_bytes(),
            (None, Some(raw)) => last_of(raw, 1),
            (None, None) => &[],
        }
    }

    /// Hostname `i` (in order; empty past the last), without decoding.
    pub fn hostname(&self, i: usize) -> &str {
        text(self.hostname_bytes(i))
    }

    /// [`StoredRoute::hostname`] as bytes.
    pub fn hostname_bytes(&self, i: usize) -> &[u8] {
        match (self.decoded.get(), &self.raw) {
            (Some(r), _) => r.hostnames.get(i).map_or(&[], |h| h.as_bytes()),
            (None, Some(raw)) => hosts_of(raw).nth(i).unwrap_or_default(),
            (None, None) => &[],
        }
    }

    /// Every hostname in order, as bytes, without decoding.
    pub fn hostnames(&self) -> impl Iterator<Item = &[u8]> {
        let (raw, decoded) = match self.undecoded() {
            Some(raw) => (Some(raw), None),
            None => (None, Some(self.route())),
        };
        let raw = raw.into_iter().flat_map(hosts_of);
        let decoded = decoded
            .into_iter()
            .flat_map(|r| r.hostnames.iter().map(String::as_bytes));
        raw.chain(decoded)
    }

    /// Server, address, state, then each hostname, read from the bytes
    /// while it is undecoded: what a route's hash is taken over when it has
    /// nothing but those ([`crate::table`]).
    pub(crate) fn plain_parts(&self) -> Option<impl Iterator<Item = &[u8]>> {
        let raw = self.undecoded()?;
        let fields = [last_of(raw, 1), last_of(raw, 3), last_of(raw, 4)];
        Some(fields.into_iter().chain(hosts_of(raw)))
    }

    /// A route from its encoding, as a snapshot piece would carry it.
    pub fn from_encoding(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut field = Vec::with_capacity(bytes.len() + 10);
        encode_varint(bytes.len() as u64, &mut field);
        field.extend_from_slice(bytes);
        Self::merge(
            WireType::LengthDelimited,
            &mut &field[..],
            DecodeContext::default(),
        )
    }

    /// One route field's value (the length comes first, as in any
    /// length-delimited field): kept as its bytes when plain, else decoded
    /// by prost, which also reports the errors.
    fn merge(
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<Self, DecodeError> {
        if wire_type == WireType::LengthDelimited {
            let mut rest = buf.chunk();
            let whole = rest.len();
            if let Ok(len) = decode_varint(&mut rest) {
                let raw = usize::try_from(len).ok().and_then(|n| rest.get(..n));
                if let Some(raw) = raw.filter(|raw| is_plain(raw)) {
                    let used = whole - rest.len() + raw.len();
                    let route = Self {
                        decoded: OnceLock::new(),
                        raw: Some(Arc::from(raw)),
                    };
                    buf.advance(used);
                    return Ok(route);
                }
            }
        }
        let mut route = Route::default();
        message::merge(wire_type, &mut route, buf, ctx)?;
        Ok(Self::from(route))
    }

    fn encoded_len(&self) -> usize {
        match self.undecoded() {
            Some(raw) => raw.len(),
            None => self.route().encoded_len(),
        }
    }

    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self.undecoded() {
            Some(raw) => buf.put_slice(raw),
            None => self.route().encode_raw(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Backend, RouteOptions, WakePhase};
    use proptest::prelude::*;

    /// What prost derives for the message in `automc.proto`, to hold ours to.
    mod twin {
        use crate::v1::{Route, WakeUpdate};

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct SnapshotChunk {
            #[prost(string, tag = "1")]
            pub epoch: String,
            #[prost(uint64, tag = "2")]
            pub version: u64,
            #[prost(message, repeated, tag = "3")]
            pub routes: Vec<Route>,
            #[prost(message, repeated, tag = "4")]
            pub wakes: Vec<WakeUpdate>,
            #[prost(bool, tag = "5")]
            pub last: bool,
            #[prost(bool, tag = "6")]
            pub partial: bool,
            #[prost(uint32, repeated, tag = "7")]
            pub buckets: Vec<u32>,
            #[prost(fixed64, tag = "8")]
            pub table_hash: u64,
        }
    }

    impl From<twin::SnapshotChunk> for SnapshotChunk {
        fn from(t: twin::SnapshotChunk) -> Self {
            Self {
                epoch: t.epoch,
                version: t.version,
                routes: t.routes.into_iter().map(StoredRoute::from).collect(),
                wakes: t.wakes,
                last: t.last,
                partial: t.partial,
                buckets: t.buckets,
                table_hash: t.table_hash,
            }
        }
    }

    fn route(server: &str, hosts: &[&str]) -> Route {
        Route {
            server: server.into(),
            hostnames: hosts.iter().map(|h| (*h).into()).collect(),
            address: "10.0.0.7:25565".into(),
            state: "running".into(),
            ..Route::default()
        }
    }

    /// `bytes` handed over in pieces cut at `cuts`, as a network buffer
    /// may hold them (a route across a cut takes prost's decoding).
    fn split<'a>(bytes: &'a [u8], cuts: &[usize]) -> Box<dyn Buf + 'a> {
        let mut buf: Box<dyn Buf> = Box::new(&[][..]);
        let mut at = 0;
        for &c in cuts {
            let c = c.min(bytes.len()).max(at);
            buf = Box::new(buf.chain(&bytes[at..c]));
            at = c;
        }
        Box::new(buf.chain(&bytes[at..]))
    }

    /// A piece holding the route encoded as `route`, decoded by ours.
    fn stored(route: &[u8]) -> Result<StoredRoute, DecodeError> {
        let mut bytes = vec![0x1a];
        encode_varint(route.len() as u64, &mut bytes);
        bytes.extend(route);
        let mut chunk = SnapshotChunk::decode(&bytes[..])?;
        Ok(chunk.routes.remove(0))
    }

    #[test]
    fn a_plain_route_is_read_from_its_bytes_then_decoded_once() {
        let r = route("lobby", &["lobby.example.com", "*.hub.example.com"]);
        let bytes = r.encode_to_vec();
        let got = stored(&bytes).expect("decodes");
        assert_eq!(got.undecoded(), Some(&bytes[..]), "kept as it came");
        assert_eq!(got.server(), "lobby");
        assert_eq!(got.hostname(1), "*.hub.example.com");
        assert_eq!(got.hostname(2), "");
        let hosts = [&b"lobby.example.com"[..], b"*.hub.example.com"];
        assert!(got.hostnames().eq(hosts));
        assert!(got.undecoded().is_some(), "reading names decodes nothing");
        assert_eq!(**got.route(), r);
        assert_eq!(got.route().hostnames.capacity(), 2);
        assert!(got.undecoded().is_none());
        assert!(Arc::ptr_eq(got.route(), got.route()), "decoded once");
        assert_eq!(got.server(), "lobby");
        assert!(got.hostnames().eq(hosts));
    }

    #[test]
    fn a_route_with_many_hostnames_is_decoded_when_it_arrives() {
        let hosts: Vec<String> = (0..MAX_PLAIN_FIELDS)
            .map(|i| format!("h{i}.example"))
            .collect();
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        // Server, address and state plus as many hostnames as fit.
        let fits = route("hub", &hosts[..MAX_PLAIN_FIELDS - 3]);
        assert!(stored(&fits.encode_to_vec())
            .expect("decodes")
            .undecoded()
            .is_some());
        let many = route("hub", &hosts);
        let got = stored(&many.encode_to_vec()).expect("decodes");
        assert!(got.undecoded().is_none());
        assert_eq!(**got.route(), many);
    }

    #[test]
    fn a_route_with_more_than_the_plain_fields_is_decoded_by_prost() {
        let mut r = route("lobby", &["lobby.example.com"]);
        r.backends = vec![Backend {
            address: "10.0.0.8:25565".into(),
            priority: 1,
            weight: 3,
        }];
        r.options = Some(Box::new(RouteOptions {
            max_players: Some(20),
            ..RouteOptions::default()
        }));
        let bytes = r.encode_to_vec();
        let got = stored(&bytes).expect("decodes");
        assert!(got.undecoded().is_none());
        assert_eq!(**got.route(), r);
        assert!(got.plain_parts().is_none());
    }

    #[test]
    fn a_later_string_field_replaces_an_earlier_one() {
        let mut bytes = route("a", &["a.example"]).encode_to_vec();
        bytes.extend(
            Route {
                server: "b".into(),
                hostnames: vec!["b.example".into()],
                ..Route::default()
            }
            .encode_to_vec(),
        );
        let got = stored(&bytes).expect("decodes");
        assert!(got.undecoded().is_some());
        assert_eq!(got.server(), "b");
        assert!(got.hostnames().eq([&b"a.example"[..], b"b.example"]));
        let parts: Vec<&[u8]> = got.plain_parts().expect("plain").collect();
        assert_eq!(
            parts,
            [
                &b"b"[..],
                b"10.0.0.7:25565",
                b"running",
                b"a.example",
                b"b.example"
            ]
        );
        assert_eq!(**got.route(), Route::decode(&bytes[..]).expect("prost"));
    }

    #[test]
    fn bad_route_bytes_get_prosts_errors() {
        let twin = |route: &[u8]| {
            let mut bytes = vec![0x1a, route.len() as u8];
            bytes.extend(route);
            twin::SnapshotChunk::decode(&bytes[..]).map_err(|e| e.to_string())
        };
        // server = "\xff": not UTF-8; a string longer than what follows; a
        // string field sent as a varint.
        for bad in [&[0x0a, 0x01, 0xff][..], &[0x0a, 0x09, b'a'], &[0x08, 0x01]] {
            let ours = stored(bad).map(|_| ()).map_err(|e| e.to_string());
            assert!(ours.is_err(), "{bad:?}");
            assert_eq!(ours, twin(bad).map(|_| ()), "{bad:?}");
        }
        // Not UTF-8, though the whole is: the next key, sent in two bytes
        // (0x8a 0x00 is field 1 too), completes the value's 0xc3.
        let sly = [0x0a, 0x01, 0xc3, 0x8a, 0x00, 0x01, b'a'];
        assert!(std::str::from_utf8(&sly).is_ok());
        let ours = stored(&sly).map(|_| ()).map_err(|e| e.to_string());
        assert!(ours.is_err());
        assert_eq!(ours, twin(&sly).map(|_| ()));
        let err = stored(&[0x0a, 0x01, 0xff])
            .expect_err("not UTF-8")
            .to_string();
        assert!(
            err.contains("Route.server") && err.contains("SnapshotChunk.routes"),
            "{err}"
        );
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
        let back = SnapshotChunk::decode(&want[..]).expect("decodes");
        assert_eq!(back, chunk);
        assert_eq!(
            back.encode_to_vec(),
            want,
            "a kept route encodes as it came"
        );
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9.*-]{0,40}",
            "\\PC{0,12}",
            Just(String::new()),
            "[a-z]{130,300}",
        ]
    }

    fn any_route() -> impl Strategy<Value = Route> {
        (
            text(),
            prop::collection::vec(text(), 0..7),
            text(),
            text(),
            prop::collection::vec((text(), -1i32..3, 0u32..5), 0..3),
            any::<bool>(),
        )
            .prop_map(
                |(server, hostnames, address, state, backends, options)| Route {
                    server,
                    hostnames,
                    address,
                    state,
                    backends: backends
                        .into_iter()
                        .map(|(address, priority, weight)| Backend {
                            address,
                            priority,
                            weight,
                        })
                        .collect(),
                    options: options.then(|| Box::new(RouteOptions::default())),
                },
            )
    }

    fn any_chunk() -> impl Strategy<Value = twin::SnapshotChunk> {
        (
            text(),
            any::<u64>(),
            prop::collection::vec(any_route(), 0..4),
            prop::collection::vec((text(), 0i32..5), 0..3),
            any::<(bool, bool)>(),
            prop::collection::vec(any::<u32>(), 0..5),
            prop_oneof![Just(0u64), any::<u64>()],
        )
            .prop_map(
                |(epoch, version, routes, wakes, (last, partial), buckets, table_hash)| {
                    twin::SnapshotChunk {
                        epoch,
                        version,
                        routes,
                        wakes: wakes
                            .into_iter()
                            .map(|(server, phase)| WakeUpdate {
                                server,
                                phase,
                                ..WakeUpdate::default()
                            })
                            .collect(),
                        last,
                        partial,
                        buckets,
                        table_hash,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn any_chunk_in_any_pieces_codes_as_prosts_derived_twin(
            twin in any_chunk(),
            cuts in prop::collection::vec(0usize..600, 0..4),
        ) {
            let bytes = twin.encode_to_vec();
            let ours = SnapshotChunk::from(twin.clone());
            prop_assert_eq!(ours.encoded_len(), bytes.len());
            prop_assert_eq!(&ours.encode_to_vec(), &bytes);
            let mut cuts = cuts;
            cuts.sort_unstable();
            let back = SnapshotChunk::decode(split(&bytes, &cuts)).expect("decodes");
            prop_assert_eq!(&back, &ours);
            prop_assert_eq!(back.encoded_len(), bytes.len());
            prop_assert_eq!(back.encode_to_vec(), bytes);
            for (got, want) in back.routes.iter().zip(&twin.routes) {
                prop_assert_eq!(got.server(), want.server.as_str());
                prop_assert!(got.hostnames().eq(want.hostnames.iter().map(String::as_bytes)));
                for (i, h) in want.hostnames.iter().enumerate() {
                    prop_assert_eq!(got.hostname(i), h.as_str());
                }
            }
        }

        #[test]
        fn any_bytes_decode_as_prosts_derived_twin_decodes_them(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
            route_bytes in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            // Random bytes, and random bytes as a route's.
            let mut as_route = vec![0x1a, route_bytes.len() as u8];
            as_route.extend(&route_bytes);
            for bytes in [bytes, as_route] {
                let ours = SnapshotChunk::decode(&bytes[..]).map_err(|e| e.to_string());
                let theirs = twin::SnapshotChunk::decode(&bytes[..])
                    .map(SnapshotChunk::from)
                    .map_err(|e| e.to_string());
                prop_assert_eq!(ours, theirs);
            }
        }
    }

    #[test]
    fn wake_updates_ride_along() {
        let chunk = SnapshotChunk {
            wakes: vec![WakeUpdate {
                server: "a".into(),
                phase: WakePhase::Waking.into(),
                ..WakeUpdate::default()
            }],
            last: true,
            ..SnapshotChunk::default()
        };
        let back = SnapshotChunk::decode(&chunk.encode_to_vec()[..]).expect("decodes");
        assert_eq!(back, chunk);
    }
}
