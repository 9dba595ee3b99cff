//! The route table and its matching rules, shared by syncd (`GetRoute`) and
//! every edge (the connection path), so both always agree.
//!
//! Rules: matching is on the normalised hostname; an exact name wins over a
//! wildcard, a longer wildcard suffix over a shorter one, and `*` is the
//! catch-all default. `*.example.com` matches any name ending in
//! `.example.com` but not `example.com` itself. When two routes claim the same
//! hostname, a server's own `domain` beats another's alias, then the smaller
//! server name wins, so every process resolves a conflict the same way.
//!
//! A table is a base built in one pass from a whole set of routes plus a
//! persistent overlay (`imbl`) of the changes since: cloning a table is O(1)
//! and shares structure, and an upsert or removal on a clone costs O(log n)
//! (amortized: a large overlay is folded into a new base). That is what lets
//! an edge load a snapshot in one pass, apply a one-row delta to a copy of a
//! 1M-route table and swap it in whole, and syncd hand every watcher the
//! version it started from without copying it.
use std::borrow::Borrow;
use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::{Arc, OnceLock};

use imbl::{OrdMap, OrdSet};
use prost::Message;

use crate::chunk::StoredRoute;
use crate::hostname::normalize_player_hostname;
use crate::v1::{GetRouteResponse, ListRoutesRequest, ListRoutesResponse, Route};

/// The longest hostname a lookup accepts, in UTF-16 units: the limit of the
/// Minecraft handshake's server address field.
pub const MAX_HOSTNAME_CHARS: usize = 255;
/// The most a whole server address may take, suffixes included (a
/// TCPShield `///ip:port///timestamp///signature` alone is ~400 bytes): the
/// handshake field's own bound, `mcproto::MAX_HANDSHAKE_BYTES`.
pub const MAX_SERVER_ADDRESS_BYTES: usize = 1024;

/// A hostname longer than [`MAX_HOSTNAME_CHARS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "hostname is longer than {MAX_HOSTNAME_CHARS} characters, or the whole server address longer than {MAX_SERVER_ADDRESS_BYTES} bytes ({bytes} bytes)"
)]
pub struct HostnameTooLong {
    pub bytes: usize,
}

/// Check the Minecraft bound on a hostname ([`MAX_HOSTNAME_CHARS`] UTF-16
/// units) without walking a long string: UTF-8 never has fewer bytes than
/// UTF-16 units, and never more than three per unit. Lookups and syncd's
/// row checks share it.
pub fn check_hostname_len(s: &str) -> Result<(), HostnameTooLong> {
    let bytes = s.len();
    let ok = bytes <= MAX_HOSTNAME_CHARS
        || (bytes <= MAX_HOSTNAME_CHARS * 3 && s.encode_utf16().count() <= MAX_HOSTNAME_CHARS);
    if ok {
        Ok(())
    } else {
        Err(HostnameTooLong { bytes })
    }
}

/// `ListRoutes` page size when the request gives none, and the most it may
/// ask for.
pub const DEFAULT_PAGE_SIZE: usize = 1000;
pub const MAX_PAGE_SIZE: usize = 10_000;
/// A `ListRoutes` page also ends before it would pass this many bytes, far
/// below any client's decode limit.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// What kind of pattern matched a hostname.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    Exact,
    Wildcard,
    Default,
}

/// A successful lookup.
#[derive(Debug, Clone, Copy)]
pub struct Match<'a> {
    pub route: &'a Route,
    pub kind: MatchKind,
    /// The pattern that matched: the name itself, `*.suffix` or `*`.
    pub pattern: &'a str,
}

/// One server's claim of a hostname pattern in the overlay: rank 0 for its
/// own domain, 1 for an alias. It points at the route itself, so a lookup
/// needs no second probe and the index holds no copy of the server name
/// (the base's claims are [`At`]s).
#[derive(Debug, Clone)]
struct Claim {
    rank: u8,
    route: Arc<Route>,
}

impl Claim {
    /// What claims are ordered by: rank, then server name.
    fn key(&self) -> (u8, &str) {
        (self.rank, &self.route.server)
    }
}

/// Every server claiming one pattern in the overlay. Almost always one:
/// that case is stored inline in the index node, with no allocation of its own (memory
/// per hostname is what limits a 1M-route table).
#[derive(Debug, Clone)]
enum Claims {
    One(Claim),
    /// Two or more, best first.
    Many(Arc<Vec<Claim>>),
}

impl Claims {
    fn best(&self) -> &Claim {
        match self {
            Self::One(c) => c,
            // Never empty: `remove` turns a last pair back into `One`.
            Self::Many(v) => &v[0],
        }
    }

    /// Add `claim`, replacing the same server's claim of the same rank.
    fn add(&mut self, claim: Claim) {
        match self {
            Self::One(c) if c.key() == claim.key() => *c = claim,
            Self::One(c) => {
                let mut v = vec![c.clone(), claim];
                v.sort_by(|a, b| a.key().cmp(&b.key()));
                *self = Self::Many(Arc::new(v));
            }
            Self::Many(v) => {
                let v = Arc::make_mut(v);
                match v.binary_search_by(|c| c.key().cmp(&claim.key())) {
                    Ok(at) => v[at] = claim,
                    Err(at) => v.insert(at, claim),
                }
            }
        }
    }

    /// Drop `server`'s claim of `rank`; true when no claim is left.
    fn remove(&mut self, rank: u8, server: &str) -> bool {
        let v = match self {
            Self::One(c) => return c.key() == (rank, server),
            Self::Many(v) => v,
        };
        if let Ok(at) = v.binary_search_by(|c| c.key().cmp(&(rank, server))) {
            let v = Arc::make_mut(v);
            v.remove(at);
            if v.len() == 1 {
                let last = v.remove(0);
                *self = Self::One(last);
            }
        }
        false
    }
}

/// The claims of one `*.suffix` wildcard, and the pattern as stored, so a
/// lookup can name it without building it (an exact name is its own key).
#[derive(Debug, Clone)]
struct Wildcard {
    pattern: String,
    claims: Claims,
}

/// Buckets of a table for failover resync: a route's bucket comes from a
/// stable hash of its server name, and each bucket's hash is the wrapping
/// sum of its routes' hashes, so it is kept up to date per upsert.
pub const BUCKETS: usize = 1024;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// `FNV_PRIME_POW[k]` is the prime to the power `k` (wrapping).
const FNV_PRIME_POW: [u64; 9] = {
    let mut p = [1u64; 9];
    let mut k = 1;
    while k < 9 {
        p[k] = p[k - 1].wrapping_mul(FNV_PRIME);
        k += 1;
    }
    p
};

/// FNV-1a of `bytes`, continuing from state `h`.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The splitmix64 finaliser, so sums of hashes stay well mixed.
fn finish(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// FNV-1a over each part as its 8-byte little-endian length then its
/// bytes, then [`finish`]. Stable across processes and versions: it is
/// part of the protocol.
fn hash_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h: u64 = FNV_OFFSET;
    for part in parts {
        // A zero byte only multiplies, so the length's high zero bytes are
        // one multiplication by a power of the prime (same result, a third
        // fewer multiplications for a route).
        let len = part.len() as u64;
        let significant = 8 - (len.leading_zeros() / 8) as usize;
        h = fnv(h, &len.to_le_bytes()[..significant]);
        h = h.wrapping_mul(FNV_PRIME_POW[8 - significant]);
        h = fnv(h, part);
    }
    finish(h)
}

/// The bucket of a server name.
pub fn bucket_of(server: &str) -> usize {
    (hash_parts([server.as_bytes()]) % BUCKETS as u64) as usize
}

/// What a route's hash is taken over, in order: every field, hostnames in
/// order. Backends and options join only when present (as their encoded
/// bytes in `extra`, behind a marker no hostname can be), so a route without
/// them hashes as it did before they existed and older edges still resume
/// by buckets.
fn route_parts<'a>(r: &'a Route, extra: &'a mut Vec<u8>) -> impl Iterator<Item = &'a [u8]> {
    extra.clear();
    if !r.backends.is_empty() || r.options.is_some() {
        extra.extend_from_slice(b"\0backends+options");
        for b in &r.backends {
            b.encode_length_delimited(&mut *extra).ok();
        }
        if let Some(o) = &r.options {
            o.encode_length_delimited(&mut *extra).ok();
        }
    }
    let extra: &'a [u8] = extra;
    [
        r.server.as_bytes(),
        r.address.as_bytes(),
        r.state.as_bytes(),
    ]
    .into_iter()
    .chain(r.hostnames.iter().map(String::as_bytes))
    .chain((!extra.is_empty()).then_some(extra))
}

/// Hash of one whole route (see [`route_parts`]).
pub fn route_hash(r: &Route) -> u64 {
    hash_parts(route_parts(r, &mut Vec::new()))
}

/// What [`route_parts`] yields for a table entry, read from its bytes
/// while it is a plain route nothing decoded yet (the same parts: such a
/// route has neither backends nor options).
fn entry_parts<'a>(e: Entry<'a>, extra: &'a mut Vec<u8>) -> impl Iterator<Item = &'a [u8]> {
    let plain = match e {
        Entry::Base(s) => s.plain_parts(),
        Entry::Over(_) => None,
    };
    let decoded = plain.is_none().then(|| route_parts(e.route(), extra));
    plain
        .into_iter()
        .flatten()
        .chain(decoded.into_iter().flatten())
}

/// [`route_hash`] of every route, in order: the same values, four routes
/// at a time, so the CPU overlaps four of FNV's serial multiply chains
/// (one route at a time, hashing was ~40 % of building a table from a
/// snapshot).
fn route_hashes(routes: &[Entry<'_>]) -> Vec<u64> {
    const LANES: usize = 4;
    let mut out = Vec::with_capacity(routes.len());
    let mut extra = Vec::new();
    // Each route's hashed bytes, lengths written out in full.
    let mut streams: [Vec<u8>; LANES] = Default::default();
    for group in routes.chunks(LANES) {
        for (stream, r) in streams.iter_mut().zip(group) {
            stream.clear();
            for part in entry_parts(*r, &mut extra) {
                stream.extend_from_slice(&(part.len() as u64).to_le_bytes());
                stream.extend_from_slice(part);
            }
        }
        let mut h = [FNV_OFFSET; LANES];
        let mut common = 0;
        if group.len() == LANES {
            let [a, b, c, d] = &streams;
            common = a.len().min(b.len()).min(c.len()).min(d.len());
            let lanes = a[..common]
                .iter()
                .zip(&b[..common])
                .zip(&c[..common])
                .zip(&d[..common]);
            for (((a, b), c), d) in lanes {
                h[0] = (h[0] ^ u64::from(*a)).wrapping_mul(FNV_PRIME);
                h[1] = (h[1] ^ u64::from(*b)).wrapping_mul(FNV_PRIME);
                h[2] = (h[2] ^ u64::from(*c)).wrapping_mul(FNV_PRIME);
                h[3] = (h[3] ^ u64::from(*d)).wrapping_mul(FNV_PRIME);
            }
        }
        for (stream, h) in streams.iter().zip(h).take(group.len()) {
            out.push(finish(fnv(h, &stream[common..])));
        }
    }
    out
}

/// A set of buckets (what a partial snapshot carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSet {
    member: Vec<bool>,
    list: Vec<u32>,
}

impl BucketSet {
    /// From bucket numbers; out-of-range numbers are ignored.
    pub fn new(list: &[u32]) -> Self {
        let mut member = vec![false; BUCKETS];
        let mut kept = Vec::with_capacity(list.len());
        for &b in list {
            if let Some(m) = member.get_mut(b as usize) {
                if !*m {
                    *m = true;
                    kept.push(b);
                }
            }
        }
        Self { member, list: kept }
    }

    pub fn contains_server(&self, server: &str) -> bool {
        self.member[bucket_of(server)]
    }

    pub fn list(&self) -> &[u32] {
        &self.list
    }
}

/// Routes keyed by server name plus a hostname index.
///
/// Two layers: a `base` built in one pass from a whole set of routes (a
/// snapshot, syncd's first read) into sorted vectors, never changed after;
/// and an `over`lay of persistent maps holding every change since, where a
/// server's entry (its new route, or that it is gone) hides its base route.
/// Building the base costs a sort of data that arrives sorted, where
/// inserting into persistent maps one route at a time cost ~8x more (an
/// edge loading 100k routes spent most of its start there). A change costs
/// O(log n) in the overlay; once the overlay holds half as many servers as
/// the base (and at least [`COMPACT_MIN`]), the table is re-based in one
/// O(n) pass, so the overlay, and the lookup's second probe, stay small.
#[derive(Debug, Clone)]
pub struct RouteTable {
    base: Arc<Base>,
    over: Overlay,
    /// Routes in the table (base routes not hidden, plus live overlay ones).
    len: usize,
    /// Per-bucket wrapping sums of route hashes (8 KiB, copied on the first
    /// write after a clone). Worked out from the routes when first asked
    /// for, then kept up to date by every change: an edge loading a
    /// snapshot needs them only at its next hello, and a crowd of edges
    /// loading one is CPU-bound.
    buckets: Arc<OnceLock<Vec<u64>>>,
}

/// The overlay is folded into a new base once it holds this many servers
/// and half as many as the base.
pub const COMPACT_MIN: usize = 4096;

/// The one-pass layer, never changed after it is built.
#[derive(Debug, Default)]
struct Base {
    /// Routes by server name, names unique. An edge's are mostly still the
    /// bytes they came in (see [`StoredRoute`]): names and hostnames are
    /// read from those, and a route is decoded the first time it is used.
    routes: Vec<StoredRoute>,
    /// Claims of exact names and the `*` default.
    exact: Vec<At>,
    /// Claims of `*.suffix` wildcards, keyed by `suffix`.
    wild: Vec<At>,
}

/// One claim in the base's index: hostname `host` of route `route`. The
/// key and the pattern are read from the route itself, so the index holds
/// no copy of a hostname and no pointer of its own: 8 bytes a claim, where
/// a key and a claim of their own took ~64 and one allocation (memory is
/// what a new edge's load of a big table is made of). An index is sorted
/// by (key, rank, server), so a pattern's claims are adjacent, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct At {
    route: u32,
    host: u32,
}

impl At {
    /// Rank 0 for a server's own domain (its first hostname), 1 for an alias.
    fn rank(self) -> u8 {
        u8::from(self.host > 0)
    }
}

/// The changes since the base was built. B-trees, not hash tries: imbl's
/// HAMT took ~180 bytes an entry here, its B-tree ~55 (heaptrack,
/// `examples/table_heap.rs`), for a few string compares more a lookup.
#[derive(Debug, Clone, Default)]
struct Overlay {
    /// One entry per server changed since the base: ordered and found by
    /// server name, so the name is stored once.
    routes: OrdSet<Changed>,
    /// The claims of the live overlay routes only.
    exact: OrdMap<String, Claims>,
    wild: OrdMap<String, Wildcard>,
}

/// A server's state in the overlay.
#[derive(Debug, Clone)]
enum Changed {
    Live(Arc<Route>),
    /// Removed; only kept while the base still has a route for it.
    Gone(Box<str>),
}

impl Changed {
    fn server(&self) -> &str {
        match self {
            Self::Live(r) => &r.server,
            Self::Gone(s) => s,
        }
    }

    fn live(&self) -> Option<&Arc<Route>> {
        match self {
            Self::Live(r) => Some(r),
            Self::Gone(_) => None,
        }
    }
}

impl PartialEq for Changed {
    fn eq(&self, other: &Self) -> bool {
        self.server() == other.server()
    }
}

impl Eq for Changed {}

impl PartialOrd for Changed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Changed {
    fn cmp(&self, other: &Self) -> Ordering {
        self.server().cmp(other.server())
    }
}

/// Consistent with the order above: both compare the server name.
impl Borrow<str> for Changed {
    fn borrow(&self) -> &str {
        self.server()
    }
}

impl Default for RouteTable {
    fn default() -> Self {
        Self {
            base: Arc::new(Base::default()),
            over: Overlay::default(),
            len: 0,
            buckets: Arc::new(OnceLock::from(vec![0; BUCKETS])),
        }
    }
}

/// Which index a stored hostname pattern lives in, and under which key
/// (read from a received route's bytes, or text as in [`index_key`]).
fn index_key_bytes(pattern: &[u8]) -> (bool, &[u8]) {
    match pattern.strip_prefix(b"*.") {
        Some(suffix) if !suffix.is_empty() => (true, suffix),
        _ => (false, pattern),
    }
}

/// [`index_key_bytes`] of a text pattern: the key is its tail, cut after
/// the ASCII `*.`, so on a character boundary.
fn index_key(pattern: &str) -> (bool, &str) {
    let (wild, key) = index_key_bytes(pattern.as_bytes());
    (wild, &pattern[pattern.len() - key.len()..])
}

/// Encoded size of `route` as one element of a `repeated Route` field.
pub fn route_entry_len(route: &Route) -> usize {
    let n = route.encoded_len();
    1 + prost::length_delimiter_len(n) + n
}

impl Base {
    /// Index `routes` (sorted by server name, names unique) in one pass.
    fn build(routes: Vec<StoredRoute>) -> Self {
        // (pattern key, rank, route, hostname): routes are in name order,
        // so equal ranks sort by server name. Keys are bytes (they order
        // as the text does), read from a received route's encoding.
        type Entry<'a> = (&'a [u8], u8, u32, u32);
        let mut exact: Vec<Entry> = Vec::with_capacity(routes.len());
        let mut wild: Vec<Entry> = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            for (j, host) in r.hostnames().enumerate() {
                let rank = u8::from(j > 0);
                match index_key_bytes(host) {
                    (true, suffix) => wild.push((suffix, rank, i as u32, j as u32)),
                    (false, name) => exact.push((name, rank, i as u32, j as u32)),
                }
            }
        }
        // One claim per (pattern, rank, server): a hostname listed twice
        // counts once.
        let index = |mut v: Vec<Entry>| -> Vec<At> {
            v.sort_unstable();
            v.dedup_by(|a, b| (a.0, a.1, a.2) == (b.0, b.1, b.2));
            v.into_iter()
                .map(|(_, _, route, host)| At { route, host })
                .collect()
        };
        let exact = index(exact);
        let wild = index(wild);
        Self {
            routes,
            exact,
            wild,
        }
    }

    fn stored(&self, at: At) -> &StoredRoute {
        &self.routes[at.route as usize]
    }

    /// The hostname pattern a claim stands for, as stored.
    fn pattern(&self, at: At) -> &str {
        self.stored(at).hostname(at.host as usize)
    }

    /// The claims of `key` in `index` (`exact` or `wild`), best first.
    fn claims<'a>(&self, index: &'a [At], key: &str) -> &'a [At] {
        let key_of = |at: &At| index_key_bytes(self.stored(*at).hostname_bytes(at.host as usize)).1;
        let key = key.as_bytes();
        let start = index.partition_point(|at| key_of(at) < key);
        let len = index[start..]
            .iter()
            .take_while(|at| key_of(at) == key)
            .count();
        &index[start..start + len]
    }

    fn find(&self, server: &str) -> Option<&StoredRoute> {
        self.routes
            .binary_search_by(|r| r.server_bytes().cmp(server.as_bytes()))
            .ok()
            .map(|i| &self.routes[i])
    }

    fn get(&self, server: &str) -> Option<&Arc<Route>> {
        self.find(server).map(StoredRoute::route)
    }
}

/// A route of either layer, as a walk over the table meets it.
#[derive(Debug, Clone, Copy)]
enum Entry<'a> {
    Base(&'a StoredRoute),
    Over(&'a Arc<Route>),
}

impl<'a> Entry<'a> {
    /// Read without decoding a base route.
    fn server(self) -> &'a str {
        match self {
            Self::Base(s) => s.server(),
            Self::Over(r) => &r.server,
        }
    }

    fn route(self) -> &'a Arc<Route> {
        match self {
            Self::Base(s) => s.route(),
            Self::Over(r) => r,
        }
    }

    /// For a new base: a base route moves over as it is, decoded or not.
    fn stored(self) -> StoredRoute {
        match self {
            Self::Base(s) => s.clone(),
            Self::Over(r) => StoredRoute::from(Arc::clone(r)),
        }
    }
}

/// Routes of both layers in server-name order, from a starting point.
struct Merged<'a> {
    base: std::iter::Peekable<std::slice::Iter<'a, StoredRoute>>,
    over: std::iter::Peekable<
        imbl::ordset::RangedIter<'a, Changed, imbl::shared_ptr::DefaultSharedPtr>,
    >,
}

impl<'a> Iterator for Merged<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.base.peek(), self.over.peek()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(b), Some(o)) => b.server_bytes().cmp(o.server().as_bytes()),
            };
            match order {
                Ordering::Less => return self.base.next().map(Entry::Base),
                // The overlay's entry hides the base's route.
                Ordering::Equal => {
                    self.base.next();
                }
                Ordering::Greater => {}
            }
            if let Some(r) = self.over.next().and_then(Changed::live) {
                return Some(Entry::Over(r));
            }
        }
    }
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Build a table from whole routes (a later route of the same server
    /// replaces an earlier one), in one pass.
    pub fn from_routes(routes: impl IntoIterator<Item = Route>) -> Self {
        Self::from_stored(routes.into_iter().map(StoredRoute::from).collect())
    }

    /// [`RouteTable::from_routes`] of stored routes (a snapshot's).
    pub(crate) fn from_stored(mut routes: Vec<StoredRoute>) -> Self {
        // syncd sends routes in name order, names unique: one pass checks
        // that, and only other input is sorted and deduplicated.
        if !routes.is_sorted_by(|a, b| a.server_bytes() < b.server_bytes()) {
            routes.sort_by(|a, b| a.server_bytes().cmp(b.server_bytes()));
            // Keep the last of each name: `dedup_by` drops the later of two
            // equal neighbours, so move the later into the kept slot first.
            routes.dedup_by(|later, kept| {
                let same = later.server_bytes() == kept.server_bytes();
                if same {
                    std::mem::swap(later, kept);
                }
                same
            });
        }
        Self {
            len: routes.len(),
            base: Arc::new(Base::build(routes)),
            over: Overlay::default(),
            buckets: Arc::new(OnceLock::new()),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Routes in server-name order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.merged("").map(|e| &**e.route())
    }

    /// Routes after server `after` (from the first for `""`), in name order.
    fn merged(&self, after: &str) -> Merged<'_> {
        let (start, lower) = if after.is_empty() {
            (0, Bound::Unbounded)
        } else {
            let start = self
                .base
                .routes
                .partition_point(|r| r.server_bytes() <= after.as_bytes());
            (start, Bound::Excluded(after))
        };
        Merged {
            base: self.base.routes[start..].iter().peekable(),
            over: self
                .over
                .routes
                .range::<_, str>((lower, Bound::Unbounded))
                .peekable(),
        }
    }

    pub fn get(&self, server: &str) -> Option<&Route> {
        self.get_arc(server).map(|r| &**r)
    }

    fn get_arc(&self, server: &str) -> Option<&Arc<Route>> {
        match self.over.routes.get(server) {
            Some(c) => c.live(),
            None => self.base.get(server),
        }
    }

    /// Whether the overlay has an entry for `e`'s server, hiding its base
    /// route.
    fn hidden(&self, e: Entry<'_>) -> bool {
        // Its name is read only when the overlay has anything.
        !self.over.routes.is_empty() && self.over.routes.contains(e.server())
    }

    /// Add or replace the route of `route.server`.
    pub fn upsert(&mut self, route: Route) {
        self.insert(Arc::new(route));
    }

    /// [`RouteTable::upsert`] of a shared route, into the overlay.
    fn insert(&mut self, route: Arc<Route>) {
        let old = self.get_arc(&route.server).cloned();
        if old.is_none() {
            self.len += 1;
        }
        self.rehash(&route.server, old.as_deref(), Some(&route));
        if let Some(Changed::Live(old)) = self.over.routes.insert(Changed::Live(Arc::clone(&route)))
        {
            self.over.unindex(&old);
        }
        self.over.index(&route);
    }

    /// Remove the route of `server`; returns it when it existed.
    pub fn remove(&mut self, server: &str) -> Option<Arc<Route>> {
        let old = Arc::clone(self.get_arc(server)?);
        let replaced = if self.base.find(server).is_some() {
            self.over.routes.insert(Changed::Gone(server.into()))
        } else {
            self.over.routes.remove(server)
        };
        if let Some(Changed::Live(prev)) = replaced {
            self.over.unindex(&prev);
        }
        self.len -= 1;
        self.rehash(server, Some(&old), None);
        Some(old)
    }

    /// Move `server`'s bucket sum from route `old` to `new`, when the sums
    /// are worked out (else they will be, from the routes, when asked for).
    /// Always unshares them first: a clone taken before this change must
    /// not see, or work out, this table's sums.
    fn rehash(&mut self, server: &str, old: Option<&Route>, new: Option<&Route>) {
        let Some(buckets) = Arc::make_mut(&mut self.buckets).get_mut() else {
            return;
        };
        let b = bucket_of(server);
        let mut sum = buckets[b];
        if let Some(old) = old {
            sum = sum.wrapping_sub(route_hash(old));
        }
        if let Some(new) = new {
            sum = sum.wrapping_add(route_hash(new));
        }
        buckets[b] = sum;
    }

    /// Apply a delta: upserts, then removals. A table with nothing in it
    /// is built in one pass; a large overlay is folded into a new base.
    pub fn apply(&mut self, upserts: impl IntoIterator<Item = Route>, removed: &[String]) {
        self.apply_changes(upserts, removed);
        if self.wants_compaction() {
            self.compact();
        }
    }

    /// [`RouteTable::apply`] without the fold: O(log n) a change, always.
    /// For a writer that folds a clone elsewhere when
    /// [`RouteTable::wants_compaction`] says so: the fold is O(n), ~0.1 s
    /// at a million routes and ~0.2 s more to free the old table, too long
    /// to hold a lock or a runtime thread.
    pub fn apply_changes(&mut self, upserts: impl IntoIterator<Item = Route>, removed: &[String]) {
        if self.len == 0 && self.over.routes.is_empty() {
            *self = Self::from_routes(upserts);
        } else {
            for r in upserts {
                self.upsert(r);
            }
        }
        for s in removed {
            self.remove(s);
        }
    }

    /// Whether the overlay has grown enough to be folded into a new base:
    /// at least [`COMPACT_MIN`] servers, and half as many as the base.
    pub fn wants_compaction(&self) -> bool {
        let over = self.over.routes.len();
        over >= COMPACT_MIN && over >= self.base.routes.len() / 2
    }

    /// This table folded ([`RouteTable::compact`]): for a writer that folds
    /// a clone on another thread and swaps it in.
    pub fn folded(mut self) -> Self {
        self.compact();
        self
    }

    /// Fold the overlay into a new base (O(n)).
    pub fn compact(&mut self) {
        if self.over.routes.is_empty() {
            return;
        }
        let routes: Vec<StoredRoute> = self.merged("").map(Entry::stored).collect();
        self.base = Arc::new(Base::build(routes));
        self.over = Overlay::default();
    }

    /// The best of the base's claims `base` whose server the overlay does
    /// not hide, and the best in `over`: whichever ranks first.
    fn best<'a>(&'a self, base: &[At], over: Option<&'a Claims>) -> Option<&'a Route> {
        let base = base
            .iter()
            .map(|&at| (at.rank(), Entry::Base(self.base.stored(at))))
            .find(|(_, r)| !self.hidden(*r));
        let over = over
            .map(Claims::best)
            .map(|c| (c.rank, Entry::Over(&c.route)));
        let best = match (base, over) {
            (Some(b), Some(o)) => {
                if (o.0, o.1.server()) < (b.0, b.1.server()) {
                    o
                } else {
                    b
                }
            }
            (b, o) => b.or(o)?,
        };
        Some(best.1.route())
    }

    /// The route owning exact name `name`, and the name as stored.
    fn exact_owner(&self, name: &str) -> Option<(&Route, &str)> {
        let base = self.base.claims(&self.base.exact, name);
        let over = self.over.exact.get_key_value(name);
        let best = self.best(base, over.map(|(_, c)| c))?;
        let stored = match base.first() {
            Some(&at) => self.base.pattern(at),
            None => over.map(|(k, _)| k.as_str())?,
        };
        Some((best, stored))
    }

    /// The route owning wildcard `*.suffix`, and the pattern as stored.
    fn wildcard_owner(&self, suffix: &str) -> Option<(&Route, &str)> {
        let base = self.base.claims(&self.base.wild, suffix);
        let over = self.over.wild.get(suffix);
        let best = self.best(base, over.map(|w| &w.claims))?;
        let pattern = match base.first() {
            Some(&at) => self.base.pattern(at),
            None => over.map(|w| w.pattern.as_str())?,
        };
        Some((best, pattern))
    }

    /// Resolve an already normalised hostname (see
    /// [`crate::normalize_player_hostname`]). Costs one index probe per label,
    /// allocates nothing; longer than [`MAX_HOSTNAME_CHARS`] is refused.
    pub fn lookup(&self, host: &str) -> Result<Option<Match<'_>>, HostnameTooLong> {
        check_hostname_len(host)?;
        if !host.is_empty() {
            if let Some((route, pattern)) = self.exact_owner(host) {
                return Ok(Some(Match {
                    route,
                    kind: MatchKind::Exact,
                    pattern,
                }));
            }
            // Longest suffix first: for a.b.c try *.b.c, then *.c.
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if rest.is_empty() {
                    break;
                }
                if let Some((route, pattern)) = self.wildcard_owner(rest) {
                    return Ok(Some(Match {
                        route,
                        kind: MatchKind::Wildcard,
                        pattern,
                    }));
                }
            }
        }
        Ok(self.exact_owner("*").map(|(route, pattern)| Match {
            route,
            kind: MatchKind::Default,
            pattern,
        }))
    }

    /// Whether the bucket hashes are worked out (else the next
    /// [`RouteTable::bucket_hashes`] hashes every route).
    pub fn hashes_worked_out(&self) -> bool {
        self.buckets.get().is_some()
    }

    /// Hash of each bucket ([`BUCKETS`] of them): worked out from every
    /// route on the first call after a one-pass build, O(1) from then on.
    pub fn bucket_hashes(&self) -> &[u64] {
        self.buckets.get_or_init(|| {
            let routes: Vec<Entry> = self.merged("").collect();
            let mut sums = vec![0u64; BUCKETS];
            for (r, h) in routes.iter().zip(route_hashes(&routes)) {
                let b = bucket_of(r.server());
                sums[b] = sums[b].wrapping_add(h);
            }
            sums
        })
    }

    /// Sum of every bucket hash: equal tables have equal sums.
    pub fn table_hash(&self) -> u64 {
        self.bucket_hashes()
            .iter()
            .fold(0u64, |a, b| a.wrapping_add(*b))
    }

    /// Buckets whose hash differs from `theirs`; `None` when `theirs` is not
    /// a whole set of bucket hashes.
    pub fn differing_buckets(&self, theirs: &[u64]) -> Option<Vec<u32>> {
        if theirs.len() != BUCKETS {
            return None;
        }
        Some(
            self.bucket_hashes()
                .iter()
                .zip(theirs)
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .map(|(i, _)| i as u32)
                .collect(),
        )
    }

    /// Replace the routes of `buckets` by those of `with` (a partial
    /// snapshot), keeping every other bucket: one pass into a new base.
    pub fn replace_buckets(&mut self, buckets: &BucketSet, with: RouteTable) {
        let kept = self
            .merged("")
            .filter(|r| !buckets.contains_server(r.server()));
        let routes = kept.chain(with.merged("")).map(Entry::stored).collect();
        *self = Self::from_stored(routes);
    }

    /// Routes after server `after` (from the first for `""`) in name order,
    /// as many as fit in `max_routes` and `max_bytes` encoded (at least one,
    /// so a page always makes progress), and the name to continue after when
    /// more remain. One walk for `ListRoutes` pages and snapshot chunks.
    pub fn page(
        &self,
        after: &str,
        max_routes: usize,
        max_bytes: usize,
    ) -> (Vec<Arc<Route>>, Option<String>) {
        self.page_where(after, max_routes, max_bytes, |_| true)
    }

    /// [`RouteTable::page`] over the routes `keep` accepts (a partial
    /// snapshot's buckets); the walk resumes after the last route taken.
    pub fn page_where(
        &self,
        after: &str,
        max_routes: usize,
        max_bytes: usize,
        keep: impl Fn(&Route) -> bool,
    ) -> (Vec<Arc<Route>>, Option<String>) {
        let mut out: Vec<Arc<Route>> = Vec::new();
        let mut bytes = 0usize;
        for r in self.merged(after).map(Entry::route) {
            if !keep(r) {
                continue;
            }
            let len = route_entry_len(r);
            if !out.is_empty() && (out.len() >= max_routes || bytes + len > max_bytes) {
                let next = out.last().map(|r| r.server.clone());
                return (out, next);
            }
            bytes += len;
            out.push(Arc::clone(r));
        }
        (out, None)
    }
}

impl Overlay {
    /// Put `route`'s claims into the overlay's index.
    fn index(&mut self, route: &Arc<Route>) {
        for (i, host) in route.hostnames.iter().enumerate() {
            let claim = Claim {
                rank: u8::from(i > 0),
                route: Arc::clone(route),
            };
            match index_key(host) {
                (true, suffix) => match self.wild.get_mut(suffix) {
                    Some(w) => w.claims.add(claim),
                    None => {
                        let w = Wildcard {
                            pattern: host.clone(),
                            claims: Claims::One(claim),
                        };
                        self.wild.insert(suffix.to_owned(), w);
                    }
                },
                (false, name) => match self.exact.get_mut(name) {
                    Some(c) => c.add(claim),
                    None => {
                        self.exact.insert(name.to_owned(), Claims::One(claim));
                    }
                },
            }
        }
    }

    /// Take `old`'s claims out of the overlay's index.
    fn unindex(&mut self, old: &Route) {
        let server = old.server.as_str();
        for (i, host) in old.hostnames.iter().enumerate() {
            let rank = u8::from(i > 0);
            match index_key(host) {
                (true, suffix) => {
                    if let Some(w) = self.wild.get_mut(suffix) {
                        if w.claims.remove(rank, server) {
                            self.wild.remove(suffix);
                        }
                    }
                }
                (false, name) => {
                    if let Some(c) = self.exact.get_mut(name) {
                        if c.remove(rank, server) {
                            self.exact.remove(name);
                        }
                    }
                }
            }
        }
    }
}

impl RouteTable {
    /// Answer one `ListRoutes` page (syncd and the edge admin alike). The
    /// page token is the last server name of the previous page.
    pub fn list_page(
        &self,
        epoch: &str,
        version: u64,
        req: &ListRoutesRequest,
    ) -> ListRoutesResponse {
        let size = match req.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let (routes, next) = self.page(&req.page_token, size, MAX_PAGE_BYTES);
        ListRoutesResponse {
            epoch: epoch.to_owned(),
            version,
            routes: routes.iter().map(|r| Route::clone(r)).collect(),
            next_page_token: next.unwrap_or_default(),
        }
    }

    /// Answer a `GetRoute` for what a player typed: normalise it exactly as
    /// the edge's connection path does, then look it up. syncd and every
    /// edge's admin API answer through this one function. The raw input is
    /// bounded like the handshake field it stands for: the whole address by
    /// [`MAX_SERVER_ADDRESS_BYTES`], the hostname part (what `lookup` gets)
    /// by [`MAX_HOSTNAME_CHARS`].
    pub fn resolve(&self, hostname: &str) -> Result<GetRouteResponse, HostnameTooLong> {
        if hostname.len() > MAX_SERVER_ADDRESS_BYTES {
            return Err(HostnameTooLong {
                bytes: hostname.len(),
            });
        }
        let normalized = normalize_player_hostname(hostname);
        Ok(match self.lookup(&normalized)? {
            Some(m) => {
                let capture = crate::backend::captured(m.pattern, &normalized);
                let backends = m.route.dial_set(capture);
                let strategy = m.route.strategy();
                let state = vec![crate::backend::BackendState::default(); backends.len()];
                let would_dial = crate::backend::order(strategy, &backends, &state, 0, 0)
                    .first()
                    .and_then(|&i| backends.get(i))
                    .map(|b| b.address.clone())
                    .unwrap_or_default();
                GetRouteResponse {
                    found: true,
                    route: Some(m.route.clone()),
                    matched: m.pattern.to_owned(),
                    normalized,
                    backends,
                    strategy: strategy.into(),
                    would_dial,
                    ..GetRouteResponse::default()
                }
            }
            None => GetRouteResponse {
                found: false,
                normalized,
                ..GetRouteResponse::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(server: &str, hosts: &[&str], address: &str) -> Route {
        Route {
            server: server.into(),
            hostnames: hosts.iter().map(|h| (*h).to_owned()).collect(),
            address: address.into(),
            state: "running".into(),
            ..Route::default()
        }
    }

    fn find<'a>(t: &'a RouteTable, host: &str) -> Option<Match<'a>> {
        t.lookup(host).expect("short host")
    }

    fn resolve(t: &RouteTable, host: &str) -> Option<(String, MatchKind)> {
        find(t, host).map(|m| (m.route.server.clone(), m.kind))
    }

    #[test]
    fn exact_beats_wildcard_beats_default() {
        let t = RouteTable::from_routes([
            route("lobby", &["lobby.example.com"], "10.0.0.1:25565"),
            route("any", &["*.example.com"], "10.0.0.2:25565"),
            route("deep", &["*.eu.example.com"], "10.0.0.3:25565"),
            route("fallback", &["*"], "10.0.0.4:25565"),
        ]);
        let cases = [
            ("lobby.example.com", Some(("lobby", MatchKind::Exact))),
            ("x.example.com", Some(("any", MatchKind::Wildcard))),
            ("a.b.example.com", Some(("any", MatchKind::Wildcard))),
            ("x.eu.example.com", Some(("deep", MatchKind::Wildcard))),
            ("eu.example.com", Some(("any", MatchKind::Wildcard))),
            ("example.com", Some(("fallback", MatchKind::Default))),
            ("other.net", Some(("fallback", MatchKind::Default))),
            ("", Some(("fallback", MatchKind::Default))),
        ];
        for (host, want) in cases {
            let got = resolve(&t, host);
            let want = want.map(|(s, k)| (s.to_owned(), k));
            assert_eq!(got, want, "host {host}");
        }
    }

    #[test]
    fn no_default_means_no_match() {
        let t = RouteTable::from_routes([route("a", &["*.example.com"], "x:1")]);
        assert!(find(&t, "example.com").is_none());
        assert!(find(&t, "example.org").is_none());
        assert!(find(&t, "").is_none());
    }

    #[test]
    fn aliases_route_to_their_server() {
        let t = RouteTable::from_routes([route(
            "survival",
            &[
                "survival.example.com",
                "smp.example.com",
                "*.smp.example.com",
            ],
            "10.0.0.9:25565",
        )]);
        for host in [
            "survival.example.com",
            "smp.example.com",
            "x.smp.example.com",
        ] {
            assert_eq!(
                find(&t, host).map(|m| m.route.server.as_str()),
                Some("survival")
            );
        }
    }

    #[test]
    fn own_domain_beats_alias_and_conflicts_resolve_by_name() {
        let mut t = RouteTable::from_routes([
            route("b", &["b.example.com", "shared.example.com"], "b:1"),
            route("a", &["a.example.com", "shared.example.com"], "a:1"),
        ]);
        assert_eq!(
            find(&t, "shared.example.com").map(|m| m.route.server.as_str()),
            Some("a")
        );
        t.upsert(route("z", &["shared.example.com"], "z:1"));
        assert_eq!(
            find(&t, "shared.example.com").map(|m| m.route.server.as_str()),
            Some("z")
        );
        t.remove("z");
        assert_eq!(
            find(&t, "shared.example.com").map(|m| m.route.server.as_str()),
            Some("a")
        );
        t.remove("a");
        assert_eq!(
            find(&t, "shared.example.com").map(|m| m.route.server.as_str()),
            Some("b")
        );
    }

    #[test]
    fn a_lookup_sees_the_newest_version_of_a_route_in_every_claim() {
        let hosts = ["a.example.com", "*.a.example.com", "shared.example.com"];
        let mut t = RouteTable::from_routes([
            route("a", &hosts, "a:1"),
            route("b", &["b.example.com", "shared.example.com"], "b:1"),
        ]);
        let before = t.clone();
        t.upsert(route("a", &hosts, "a:2"));
        for host in ["a.example.com", "x.a.example.com", "shared.example.com"] {
            let hit = find(&t, host).map(|m| (m.route.server.as_str(), m.route.address.as_str()));
            assert_eq!(hit, Some(("a", "a:2")), "host {host}");
            let old = find(&before, host).map(|m| m.route.address.as_str());
            assert_eq!(old, Some("a:1"), "host {host} in the older version");
        }
        t.remove("a");
        assert_eq!(
            find(&t, "shared.example.com").map(|m| m.route.address.as_str()),
            Some("b:1")
        );
        assert!(find(&t, "x.a.example.com").is_none());
    }

    #[test]
    fn upsert_replaces_hostnames_and_remove_forgets_them() {
        let mut t = RouteTable::from_routes([route("s", &["old.example.com"], "s:1")]);
        t.upsert(route("s", &["new.example.com"], "s:2"));
        assert!(find(&t, "old.example.com").is_none());
        assert_eq!(
            find(&t, "new.example.com").map(|m| m.route.address.as_str()),
            Some("s:2")
        );
        assert_eq!(t.len(), 1);
        t.apply([], &["s".to_owned()]);
        assert!(t.is_empty());
        assert!(find(&t, "new.example.com").is_none());
    }

    #[test]
    fn resolve_normalises_like_the_edge_and_names_the_pattern() {
        let t = RouteTable::from_routes([route("any", &["*.example.com"], "a:1")]);
        let hit = t.resolve("Play.Example.com.\0FML2\0").expect("short");
        assert!(hit.found);
        assert_eq!(hit.normalized, "play.example.com");
        assert_eq!(hit.matched, "*.example.com");
        assert_eq!(hit.route.map(|r| r.server), Some("any".to_owned()));
        let miss = t.resolve("example.org").expect("short");
        assert!(!miss.found && miss.route.is_none() && miss.matched.is_empty());
        assert_eq!(miss.normalized, "example.org");
    }

    #[test]
    fn hostnames_longer_than_the_handshake_field_are_refused() {
        let t = RouteTable::from_routes([route("any", &["*"], "a:1")]);
        let ok = "a".repeat(MAX_HOSTNAME_CHARS);
        assert!(find(&t, &ok).is_some());
        let long = format!("{}.example.com", "a.".repeat(500_000));
        assert_eq!(
            t.lookup(&long).err(),
            Some(HostnameTooLong { bytes: long.len() })
        );
        assert!(t.resolve(&long).is_err());
        // 255 three-byte characters are 255 UTF-16 units: accepted.
        assert!(t.resolve(&"é".repeat(MAX_HOSTNAME_CHARS)).is_ok());
        assert!(t.resolve(&"é".repeat(MAX_HOSTNAME_CHARS + 1)).is_err());
        // The bound is the hostname part's, as in a handshake: a TCPShield
        // suffix comes on top of a hostname of the longest length.
        let shielded = format!("{ok}///1.2.3.4:25565///1700000000///{}", "s".repeat(400));
        let hit = t
            .resolve(&shielded)
            .expect("hostname part within the bound");
        assert_eq!(hit.normalized, ok);
        let too_long = format!("a.example.com\0{}", "x".repeat(MAX_SERVER_ADDRESS_BYTES));
        assert!(
            t.resolve(&too_long).is_err(),
            "the whole address is bounded"
        );
    }

    #[test]
    fn a_clone_is_an_independent_version() {
        let before = RouteTable::from_routes(
            (0..1000).map(|i| route(&format!("s{i:04}"), &[&format!("s{i}.example.com")], "a:1")),
        );
        let mut after = before.clone();
        after.apply(
            [route("new", &["*.example.com"], "n:1")],
            &["s0001".to_owned()],
        );
        assert!(find(&before, "s1.example.com").is_some());
        assert!(find(&before, "zz.example.com").is_none());
        assert_eq!(
            find(&after, "s1.example.com").map(|m| (m.route.server.as_str(), m.kind)),
            Some(("new", MatchKind::Wildcard))
        );
        assert_eq!((before.len(), after.len()), (1000, 1000));
    }

    #[test]
    fn pages_walk_the_table_in_name_order_within_both_bounds() {
        let t = RouteTable::from_routes(
            (0..250).map(|i| route(&format!("s{i:03}"), &[&format!("s{i}.example.com")], "a:1")),
        );
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let (page, next) = t.page(&after, 100, 4096);
            let bytes: usize = page.iter().map(|r| route_entry_len(r)).sum();
            assert!(!page.is_empty() && page.len() <= 100 && bytes <= 4096);
            seen.extend(page.iter().map(|r| r.server.clone()));
            match next {
                Some(n) => after = n,
                None => break,
            }
        }
        let want: Vec<String> = t.routes().map(|r| r.server.clone()).collect();
        assert_eq!(seen, want);
        // One route larger than the byte bound still makes a page.
        let (page, next) = t.page("", 10, 1);
        assert_eq!((page.len(), next.as_deref()), (1, Some("s000")));
        assert_eq!(t.page("s249", 10, 4096), (vec![], None));
    }

    #[test]
    fn bucket_sums_worked_out_late_equal_sums_kept_up_to_date() {
        let make = |i: usize| route(&format!("s{i:05}"), &[&format!("s{i}.example.com")], "a:1");
        let change = |t: &mut RouteTable| {
            t.upsert(route("s00007", &["s7.example.com"], "b:2"));
            t.remove("s00100");
            t.upsert(make(999));
        };
        let sums = |t: &RouteTable| {
            RouteTable::from_routes(t.routes().cloned())
                .bucket_hashes()
                .to_vec()
        };
        // Worked out before the changes, then kept up to date by them.
        let mut early = RouteTable::from_routes((0..300).map(make));
        assert!(!early.hashes_worked_out());
        early.bucket_hashes();
        assert!(early.hashes_worked_out());
        change(&mut early);
        assert!(early.hashes_worked_out(), "changes keep them");
        // Worked out only after them.
        let mut late = RouteTable::from_routes((0..300).map(make));
        change(&mut late);
        assert_eq!(early.bucket_hashes(), late.bucket_hashes());
        assert_eq!(late.bucket_hashes(), sums(&late));
        // A clone taken before a change shares nothing worked out after it,
        // whichever side asks first.
        for before_first in [true, false] {
            let before = RouteTable::from_routes((0..300).map(make));
            let mut after = before.clone();
            change(&mut after);
            let (b, a) = if before_first {
                let b = before.bucket_hashes().to_vec();
                (b, after.bucket_hashes().to_vec())
            } else {
                let a = after.bucket_hashes().to_vec();
                (before.bucket_hashes().to_vec(), a)
            };
            assert_eq!(b, sums(&before));
            assert_eq!(a, sums(&after));
            assert_ne!(a, b);
        }
    }

    #[test]
    fn bucket_hashes_follow_every_change_and_replacing_differing_buckets_converges() {
        let make = |i: usize| route(&format!("s{i:05}"), &[&format!("s{i}.example.com")], "a:1");
        let theirs = RouteTable::from_routes((0..5000).map(make));
        let mut ours = theirs.clone();
        assert_eq!(ours.differing_buckets(theirs.bucket_hashes()), Some(vec![]));
        ours.upsert(route("s00007", &["s7.example.com"], "b:2"));
        ours.remove("s00100");
        ours.upsert(make(9999));
        let differ = ours
            .differing_buckets(theirs.bucket_hashes())
            .expect("whole set");
        assert!(!differ.is_empty() && differ.len() <= 3, "{differ:?}");
        // Send only the routes of those buckets; the other side converges.
        let set = BucketSet::new(&differ);
        let (part, _) = ours.page_where("", usize::MAX, usize::MAX, |r| {
            set.contains_server(&r.server)
        });
        let mut rebuilt = theirs.clone();
        rebuilt.replace_buckets(
            &set,
            RouteTable::from_stored(part.into_iter().map(StoredRoute::from).collect()),
        );
        assert!(rebuilt.routes().eq(ours.routes()));
        assert_eq!(rebuilt.table_hash(), ours.table_hash());
        assert_ne!(theirs.table_hash(), ours.table_hash());
        // Removing what was added restores the hashes exactly.
        ours.remove("s09999");
        ours.upsert(make(100));
        ours.upsert(make(7));
        assert_eq!(ours.bucket_hashes(), theirs.bucket_hashes());
        assert_eq!(ours.differing_buckets(&[1, 2, 3]), None);
    }

    /// What the rules in the module doc say, computed the slow way.
    fn model_lookup(
        model: &std::collections::BTreeMap<String, Route>,
        host: &str,
    ) -> Option<(String, MatchKind, String)> {
        let best = |pattern: &str| {
            model
                .values()
                .flat_map(|r| {
                    r.hostnames
                        .iter()
                        .enumerate()
                        .filter(|(_, h)| h.as_str() == pattern)
                        .map(|(i, _)| (u8::from(i > 0), r.server.clone()))
                })
                .min()
                .map(|(_, server)| server)
        };
        if !host.is_empty() {
            if let Some(s) = best(host) {
                return Some((s, MatchKind::Exact, host.to_owned()));
            }
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if rest.is_empty() {
                    break;
                }
                let pattern = format!("*.{rest}");
                if let Some(s) = best(&pattern) {
                    return Some((s, MatchKind::Wildcard, pattern));
                }
            }
        }
        best("*").map(|s| (s, MatchKind::Default, "*".to_owned()))
    }

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(usize, Vec<usize>, u8),
        Remove(usize),
        Compact,
    }

    const POOL: [&str; 10] = [
        "a.x", "b.x", "*.x", "*", "c.a.x", "*.a.x", "x", "*.c.a.x", "shared", "*.",
    ];
    const QUERIES: [&str; 12] = [
        "a.x", "b.x", "z.x", "c.a.x", "d.c.a.x", "q.a.x", "x", "shared", "*", "", "other", "y.",
    ];

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0..8usize, proptest::collection::vec(0..POOL.len(), 0..4), any::<u8>())
                .prop_map(|(s, h, a)| Op::Upsert(s, h, a)),
            3 => (0..8usize).prop_map(Op::Remove),
            1 => Just(Op::Compact),
        ]
    }

    fn op_route(s: usize, hosts: &[usize], a: u8) -> Route {
        let hosts: Vec<&str> = hosts.iter().map(|&h| POOL[h]).collect();
        route(&format!("s{s}"), &hosts, &format!("10.0.0.{a}:25565"))
    }

    /// A table as an edge builds it from a snapshot: routes kept as the
    /// bytes they came in.
    fn received<'a>(routes: impl IntoIterator<Item = &'a Route>) -> RouteTable {
        RouteTable::from_stored(
            routes
                .into_iter()
                .map(|r| StoredRoute::from_encoding(&r.encode_to_vec()).expect("decodes"))
                .collect(),
        )
    }

    proptest::proptest! {
        /// Any mix of a one-pass base (decoded, or kept as received),
        /// overlay changes and re-basing answers every lookup, listing and
        /// hash exactly as the rules say, and an earlier clone keeps
        /// answering for its own version.
        #[test]
        fn base_and_overlay_answer_like_the_rules(
            initial in proptest::collection::vec((0..8usize, proptest::collection::vec(0..POOL.len(), 0..4), proptest::prelude::any::<u8>()), 0..8),
            encoded in proptest::prelude::any::<bool>(),
            ops in proptest::collection::vec(op(), 0..40),
        ) {
            let mut model = std::collections::BTreeMap::new();
            let first: Vec<Route> = initial.iter().map(|(s, h, a)| op_route(*s, h, *a)).collect();
            for r in &first {
                model.insert(r.server.clone(), r.clone());
            }
            let mut t = if encoded {
                received(&first)
            } else {
                RouteTable::from_routes(first)
            };
            let (before, before_model) = (t.clone(), model.clone());
            for op in ops {
                match op {
                    Op::Upsert(s, h, a) => {
                        let r = op_route(s, &h, a);
                        model.insert(r.server.clone(), r.clone());
                        t.apply([r], &[]);
                    }
                    Op::Remove(s) => {
                        let name = format!("s{s}");
                        let had = model.remove(&name).is_some();
                        proptest::prop_assert_eq!(t.remove(&name).is_some(), had);
                    }
                    Op::Compact => t.compact(),
                }
                for (table, m) in [(&t, &model), (&before, &before_model)] {
                    for q in QUERIES {
                        let got = table.lookup(q).expect("short").map(|m| {
                            (m.route.server.clone(), m.kind, m.pattern.to_owned())
                        });
                        proptest::prop_assert_eq!(got, model_lookup(m, q), "host {:?}", q);
                    }
                    let listed: Vec<&Route> = table.routes().collect();
                    let want: Vec<&Route> = m.values().collect();
                    proptest::prop_assert_eq!(listed, want);
                    proptest::prop_assert_eq!(table.len(), m.len());
                    let fresh = RouteTable::from_routes(m.values().cloned());
                    proptest::prop_assert_eq!(table.bucket_hashes(), fresh.bucket_hashes());
                    let fresh_received = received(m.values());
                    proptest::prop_assert_eq!(fresh_received.bucket_hashes(), fresh.bucket_hashes());
                    for s in 0..8 {
                        let name = format!("s{s}");
                        proptest::prop_assert_eq!(table.get(&name), m.get(&name));
                        let (after, _) = table.page(&name, usize::MAX, usize::MAX);
                        let want: Vec<Arc<Route>> = m
                            .range::<str, _>((Bound::Excluded(name.as_str()), Bound::Unbounded))
                            .map(|(_, r)| Arc::new(r.clone()))
                            .collect();
                        proptest::prop_assert_eq!(after, want);
                    }
                }
            }
        }
    }

    #[test]
    fn a_large_overlay_is_folded_into_a_new_base() {
        let make =
            |i: usize, a: &str| route(&format!("s{i:05}"), &[&format!("s{i}.example.com")], a);
        let mut t = RouteTable::from_routes((0..COMPACT_MIN).map(|i| make(i, "a:1")));
        for i in 0..COMPACT_MIN - 1 {
            t.apply([make(i, "b:2")], &[]);
        }
        assert_eq!(t.over.routes.len(), COMPACT_MIN - 1);
        t.apply([make(COMPACT_MIN - 1, "b:2")], &[]);
        assert!(t.over.routes.is_empty(), "re-based");
        assert_eq!(t.len(), COMPACT_MIN);
        assert!(t.routes().all(|r| r.address == "b:2"));
        assert_eq!(
            find(&t, "s7.example.com").map(|m| m.route.address.as_str()),
            Some("b:2")
        );
    }

    #[test]
    fn apply_changes_leaves_the_fold_to_its_caller_and_a_folded_clone_is_the_same_table() {
        let make =
            |i: usize, a: &str| route(&format!("s{i:05}"), &[&format!("s{i}.example.com")], a);
        let mut t = RouteTable::from_routes((0..COMPACT_MIN).map(|i| make(i, "a:1")));
        for i in 0..COMPACT_MIN {
            assert!(!t.wants_compaction());
            t.apply_changes([make(i, "b:2")], &[]);
        }
        t.apply_changes([], &["s00001".to_string()]);
        assert!(t.wants_compaction());
        assert_eq!(t.over.routes.len(), COMPACT_MIN, "not folded");
        let hashes = t.bucket_hashes().to_vec();

        let mut folded = t.clone();
        folded.compact();
        assert!(folded.over.routes.is_empty() && !folded.wants_compaction());
        assert_eq!(folded.len(), t.len());
        assert_eq!(folded.bucket_hashes(), &hashes[..]);
        assert!(folded.routes().eq(t.routes()), "the same routes, in order");
        assert_eq!(
            find(&folded, "s7.example.com").map(|m| m.route.address.as_str()),
            Some("b:2")
        );
        assert!(
            find(&folded, "s1.example.com").is_none(),
            "removed stays removed"
        );
        assert_eq!(
            t.over.routes.len(),
            COMPACT_MIN,
            "the original is untouched"
        );
    }

    /// The hash is part of the protocol: the fast form gives exactly what
    /// FNV-1a over every byte (lengths included) does.
    #[test]
    fn the_route_hash_is_fnv_over_every_byte() {
        fn slow(parts: &[&[u8]]) -> u64 {
            let mut h = FNV_OFFSET;
            for part in parts {
                for b in (part.len() as u64).to_le_bytes().iter().chain(part.iter()) {
                    h ^= u64::from(*b);
                    h = h.wrapping_mul(FNV_PRIME);
                }
            }
            h ^= h >> 30;
            h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            h ^= h >> 27;
            h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
            h ^ (h >> 31)
        }
        let long = vec![7u8; 70_000];
        let mid = vec![b'x'; 300];
        let cases: [&[&[u8]]; 5] = [
            &[],
            &[b""],
            &[b"s1", b"10.0.0.1:25565", b"running", b"s1.example.com"],
            &[&mid, b"", &long],
            &[&long[..256], &long[..255], &long[..65_536]],
        ];
        for parts in cases {
            assert_eq!(hash_parts(parts.iter().copied()), slow(parts));
        }
        // Four at a time gives the same values, whatever the lengths, the
        // group's size and the backends and options.
        let mut routes: Vec<Arc<Route>> = (0..11)
            .map(|i| {
                let hosts: Vec<String> = (0..i % 3)
                    .map(|j| format!("h{j}.{}", "x".repeat(i)))
                    .collect();
                let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
                Arc::new(route(
                    &format!("s{}", "n".repeat(i * 7)),
                    &hosts,
                    "10.0.0.1:25565",
                ))
            })
            .collect();
        Arc::make_mut(&mut routes[5])
            .backends
            .push(crate::v1::Backend {
                address: "10.0.0.9:25565".into(),
                weight: 3,
                priority: 1,
            });
        Arc::make_mut(&mut routes[6]).options = Some(Box::default());
        Arc::make_mut(&mut routes[7]).address = "a".repeat(300);
        // Routes as a snapshot brings them (read from their bytes when
        // plain) hash as the decoded ones do.
        let encoded: Vec<StoredRoute> = routes
            .iter()
            .map(|r| StoredRoute::from_encoding(&r.encode_to_vec()).expect("decodes"))
            .collect();
        assert!(encoded[4].plain_parts().is_some() && encoded[5].plain_parts().is_none());
        for n in 0..=routes.len() {
            let one_by_one: Vec<u64> = routes[..n].iter().map(|r| route_hash(r)).collect();
            let group: Vec<Entry> = routes[..n].iter().map(Entry::Over).collect();
            assert_eq!(route_hashes(&group), one_by_one, "{n} routes");
            let group: Vec<Entry> = encoded[..n].iter().map(Entry::Base).collect();
            assert_eq!(route_hashes(&group), one_by_one, "{n} encoded routes");
        }
        // Recorded: what every edge and syncd computes for this route.
        assert_eq!(
            route_hash(&route("s1", &["s1.example.com"], "10.0.0.1:25565")),
            0x43c1_4adb_7023_5af5
        );
    }
}
