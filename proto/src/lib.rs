//! The contract between `syncd` and `edge`: the generated gRPC code for
//! `automc.v1`, and the routing rules both sides must agree on (hostname
//! normalisation and route matching), so `GetRoute` on syncd answers exactly
//! what an edge would do with the same hostname; and the typed meaning of
//! what crosses the wire (route states, wake failures).
#![forbid(unsafe_code)]

pub mod auth;
pub mod backend;
pub mod chunk;
#[cfg(feature = "fake")]
pub mod fake;
pub mod hostname;
pub mod sessions;
pub mod state;
pub mod sync;
pub mod table;
pub mod wake;

/// Generated messages and services of package `automc.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("automc.v1");
    pub use crate::chunk::{SnapshotChunk, StoredRoute};
}

/// Encoded `FileDescriptorSet` of every automc `.proto`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/automc_descriptor.bin"));

pub use hostname::{normalize_domain, normalize_player_hostname};
pub use state::RouteState;
pub use table::{
    bucket_of, check_hostname_len, route_entry_len, BucketSet, HostnameTooLong, Match, MatchKind,
    RouteTable, BUCKETS, COMPACT_MIN, MAX_HOSTNAME_CHARS, MAX_SERVER_ADDRESS_BYTES,
};
pub use wake::{WakeFailure, ERROR_DOMAIN};
