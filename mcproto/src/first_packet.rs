//! The first bytes of a connection: a modern Handshake or one of the legacy (pre-1.7) pings.
//! This module only tells them apart; [`crate::handshake`] and [`crate::legacy`] parse each.

use crate::handshake::{self, Handshake};
use crate::legacy::{self, LegacyPing, LegacyStart};
use crate::ProtocolError;

/// The first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPacket {
    /// `len`: bytes of the framed handshake including its length prefix; whatever follows in
    /// the buffer (often the status request or Login Start) belongs to the next packet.
    Modern { handshake: Handshake, len: usize },
    /// `len`: bytes of the legacy ping that were recognised.
    Legacy { ping: LegacyPing, len: usize },
}

/// Recognises the first packet in `buf` (everything read so far).
///
/// `Ok(None)` means more bytes are needed. `[0xFE]` and `[0xFE, 0x01]` are answered `Ok(None)`
/// because they may be the start of a longer legacy ping; when nothing more arrives within a
/// short wait the caller uses [`crate::parse_legacy_bare_timeout`].
pub fn parse_first_packet(buf: &[u8]) -> Result<Option<FirstPacket>, ProtocolError> {
    match legacy::classify_start(buf) {
        LegacyStart::NeedMore => Ok(None),
        LegacyStart::PingHost => {
            Ok(legacy::parse_ping_host(buf)?.map(|(ping, len)| FirstPacket::Legacy { ping, len }))
        }
        LegacyStart::NotLegacy => Ok(handshake::parse_framed(buf)?
            .map(|(handshake, len)| FirstPacket::Modern { handshake, len })),
    }
}
