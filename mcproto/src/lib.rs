//! The Minecraft Java Edition wire protocol, as far as a hostname router needs it: the one
//! implementation the edge, syncd's readiness ping, the test support code and the fuzz
//! targets all use.
//!
//! Everything outside [`client`] is pure: functions over byte slices and plain values, no I/O,
//! no async. [`client`] (feature `client`, on tokio) is the one async status-ping client.
//! Parsers look at "everything read so far" and answer `Ok(None)` when more bytes are needed,
//! so the connection code can read under a timeout into a capped buffer and replay the exact
//! bytes to the backend afterwards (the linkerd `parse_sni` shape).
//!
//! Hard caps: VarInts ≤ 5 bytes, packet length prefixes ≤ 3 bytes, the framed handshake
//! ≤ [`MAX_HANDSHAKE_BYTES`], the server address ≤ [`MAX_ADDRESS_CHARS`]. No length read from
//! the wire is ever used to allocate before the bytes it describes are present.

#[cfg(feature = "client")]
pub mod client;
mod first_packet;
mod handshake;
mod legacy;
mod login;
mod login_plugin;
mod packets;
pub mod proxy_header;
mod status;
mod varint;

#[cfg(test)]
mod tests;

pub use first_packet::{parse_first_packet, FirstPacket};
pub use handshake::{with_host, Handshake, NextState, MAX_HANDSHAKE_BYTES};
pub use legacy::{
    encode_legacy_ping_v1_6, encode_legacy_response, parse_legacy_bare_timeout, LegacyForm,
    LegacyPing, MAX_LEGACY_PING_BYTES,
};
pub use login::{
    encode_login_start, format_uuid, is_listable_username, parse_login_start, LoginStart,
    MAX_LOGIN_START_BYTES, MAX_USERNAME_CHARS,
};
pub use login_plugin::{
    answers_login_plugin_requests, encode_login_plugin_request, encode_login_plugin_response,
    parse_login_plugin_request, parse_login_plugin_response, LoginPluginRequest,
    LoginPluginResponse, LOGIN_PLUGIN_FROM_PROTOCOL, MAX_LOGIN_PLUGIN_RESPONSE_BYTES,
};
pub use packets::{
    encode_handshake, encode_login_disconnect, encode_ping, encode_pong,
    encode_rewritten_handshake, encode_status_request, encode_status_response, parse_pong,
    parse_status_packet, parse_status_response, StatusPacket,
};
pub use proxy_header::{
    detect_proxy_header, encode_proxy_v1, encode_proxy_v2, parse_proxy_header, ProxyHeader,
    ProxyHeaderError, MAX_PROXY_HEADER_BYTES,
};
pub use status::{
    base64, mark_status_stale, status_json, status_json_with_favicon, with_player_counts,
    StatusInfo,
};

pub use varint::{
    frame, read_frame, read_varint, varint_len, write_string, write_varint, Reader,
    MAX_PACKET_BYTES, MAX_VARINT_BYTES,
};

/// The server address may hold at most this many UTF-16 units (vanilla's limit), in a modern
/// handshake and in a 1.6 legacy ping alike.
pub const MAX_ADDRESS_CHARS: usize = 255;

/// Why bytes from a peer are not a packet we accept. `reason()` is the metrics label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("VarInt longer than 5 bytes")]
    VarIntTooLong,
    #[error("packet longer than {max} bytes")]
    PacketTooLarge { max: usize },
    #[error("unexpected packet id {0:#04x}")]
    BadPacketId(i32),
    #[error("server address longer than {MAX_ADDRESS_CHARS} characters")]
    AddressTooLong,
    #[error("string is not valid UTF-8 (or UTF-16)")]
    InvalidUtf8,
    #[error("handshake next state {0} is not status (1), login (2) or transfer (3)")]
    BadNextState(i32),
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

impl ProtocolError {
    /// Short snake_case label for `automc_edge_handshake_errors_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::VarIntTooLong => "varint_too_long",
            Self::PacketTooLarge { .. } => "packet_too_large",
            Self::BadPacketId(_) => "bad_packet_id",
            Self::AddressTooLong => "address_too_long",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::BadNextState(_) => "bad_next_state",
            Self::Malformed(_) => "malformed",
        }
    }
}
