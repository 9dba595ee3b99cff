//! The modern (1.7+) Handshake packet: what a player sends first to pick a server and a state.

use crate::varint::{read_frame, varint_len, Reader};
use crate::{ProtocolError, MAX_ADDRESS_CHARS};

/// The most bytes a framed handshake (length prefix included) may take. A vanilla handshake is
/// under 270 bytes; this leaves room for Forge markers and proxy suffixes and is also the buffer
/// the edge fills before routing: [`crate::parse_first_packet`] never answers "need more" once
/// `buf.len() >= MAX_HANDSHAKE_BYTES`.
pub const MAX_HANDSHAKE_BYTES: usize = 1024;

/// What the player wants after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextState {
    Status,
    Login,
    /// 1.20.5+: a login that arrives via a server transfer.
    Transfer,
}

impl NextState {
    pub fn from_wire(v: i32) -> Result<Self, ProtocolError> {
        match v {
            1 => Ok(Self::Status),
            2 => Ok(Self::Login),
            3 => Ok(Self::Transfer),
            n => Err(ProtocolError::BadNextState(n)),
        }
    }

    pub fn to_wire(self) -> i32 {
        match self {
            Self::Status => 1,
            Self::Login => 2,
            Self::Transfer => 3,
        }
    }
}

/// A parsed Handshake packet (id 0x00 in the handshaking state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub protocol_version: i32,
    /// Exactly as sent, including Forge (`\0FML\0`…) or TCPShield (`///…`) suffixes.
    pub server_address: String,
    pub server_port: u16,
    pub next_state: NextState,
}

/// Parses a framed modern handshake from the start of `buf`: `Ok(None)` while more bytes are
/// needed, else the handshake and the bytes its frame took (length prefix included).
pub(crate) fn parse_framed(buf: &[u8]) -> Result<Option<(Handshake, usize)>, ProtocolError> {
    // The prefix of a ≤ 1024-byte frame is two bytes, so the body may take the rest.
    let Some((body, len)) = read_frame(buf, MAX_HANDSHAKE_BYTES - 2)? else {
        return Ok(None);
    };
    if len > MAX_HANDSHAKE_BYTES {
        return Err(ProtocolError::PacketTooLarge {
            max: MAX_HANDSHAKE_BYTES,
        });
    }
    Ok(Some((parse_handshake_body(body)?, len)))
}

fn parse_handshake_body(body: &[u8]) -> Result<Handshake, ProtocolError> {
    let mut r = Reader::new(body);
    let id = r.varint()?;
    if id != 0x00 {
        return Err(ProtocolError::BadPacketId(id));
    }
    let protocol_version = r.varint()?;
    // The whole field is bounded by the packet cap; the hostname part (before
    // a Forge `\0` marker or a TCPShield `///ip:port///timestamp///signature`
    // suffix, whose signature alone is ~350 characters) by MAX_ADDRESS_CHARS.
    let server_address = r.string(MAX_HANDSHAKE_BYTES, ProtocolError::AddressTooLong)?;
    let host_part = server_address
        .split('\0')
        .next()
        .and_then(|h| h.split("///").next())
        .unwrap_or_default();
    if host_part.encode_utf16().count() > MAX_ADDRESS_CHARS {
        return Err(ProtocolError::AddressTooLong);
    }
    let server_port = r.u16()?;
    let next_state = NextState::from_wire(r.varint()?)?;
    if !r.is_empty() {
        // Vanilla refuses a handshake "larger than expected"; so do we.
        return Err(ProtocolError::Malformed(
            "trailing bytes after the handshake fields",
        ));
    }
    Ok(Handshake {
        protocol_version,
        server_address: server_address.to_owned(),
        server_port,
        next_state,
    })
}

/// Body length of `h` once encoded (id + fields), used by the encoder to size its buffer.
pub(crate) fn handshake_body_len(h: &Handshake) -> usize {
    1 + varint_len(h.protocol_version)
        + varint_len(h.server_address.len() as i32)
        + h.server_address.len()
        + 2
        + 1
}

/// Where the hostname part of a handshake's server address ends: at the first NUL (a Forge marker
/// such as `\0FML2\0`) or the first `///` (a forwarding suffix), whichever comes first.
pub(crate) fn host_part_end(address: &str) -> usize {
    let nul = address.find('\0').unwrap_or(address.len());
    let fwd = address.find("///").unwrap_or(address.len());
    nul.min(fwd)
}

/// `h` with its hostname replaced by `host`: whatever followed the hostname (a Forge marker, a
/// forwarding suffix) is kept, and so are the protocol version, the port and the next state.
pub fn with_host(h: &Handshake, host: &str) -> Handshake {
    let rest = &h.server_address[host_part_end(&h.server_address)..];
    Handshake {
        server_address: format!("{host}{rest}"),
        ..h.clone()
    }
}
