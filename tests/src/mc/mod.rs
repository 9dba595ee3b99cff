//! Minecraft-protocol test peers: a backend server ([`McBackend`]) and a player's client.
//!
//! - [`wire`]: packet builders and readers, on `mcproto` (the one wire-format implementation);
//! - [`backend`]: `McBackend`, a recording server on 127.0.0.1:0;
//! - [`client`]: logins, status and legacy pings, `McConn`;
//! - [`bulk`]: seeded bulk transfers compared by SHA-256.
//!
//! Everything is re-exported here, so tests name `automc_tests::mc::login` and the like.
//! Test support: it panics on misuse, and returns `anyhow` errors for anything a test may
//! want to assert on.

pub mod backend;
pub mod bulk;
pub mod client;
pub mod wire;

#[cfg(test)]
mod tests;

pub use backend::*;
pub use bulk::*;
pub use client::*;
pub use wire::*;
