//! automc edge: the player-facing Minecraft hostname proxy.
#![forbid(unsafe_code)]

pub mod limits;
pub mod protocol;
