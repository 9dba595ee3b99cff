//! Status- and login-phase packets the edge reads or writes, and the builders for all
//! packets it sends. Builders return framed bytes, ready to write.

use crate::handshake::{handshake_body_len, Handshake};
use crate::varint::{frame, read_frame, write_string, write_varint, Reader, MAX_PACKET_BYTES};
use crate::ProtocolError;

const STATUS_REQUEST_ID: i32 = 0x00;
const PING_ID: i32 = 0x01;
const STATUS_RESPONSE_ID: i32 = 0x00;
const LOGIN_DISCONNECT_ID: i32 = 0x00;

/// Status-phase packets from a player are tiny (a request is 1 byte, a ping 9).
const MAX_STATUS_PACKET_BYTES: usize = 64;

/// A packet from a player in the status state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusPacket {
    Request,
    Ping(i64),
}

/// Parses one status-phase packet from the start of `buf`.
pub fn parse_status_packet(buf: &[u8]) -> Result<Option<(StatusPacket, usize)>, ProtocolError> {
    let Some((body, len)) = read_frame(buf, MAX_STATUS_PACKET_BYTES)? else {
        return Ok(None);
    };
    let mut r = Reader::new(body);
    let packet = match r.varint()? {
        STATUS_REQUEST_ID => StatusPacket::Request,
        PING_ID => StatusPacket::Ping(r.i64()?),
        id => return Err(ProtocolError::BadPacketId(id)),
    };
    if !r.is_empty() {
        return Err(ProtocolError::Malformed(
            "trailing bytes in a status packet",
        ));
    }
    Ok(Some((packet, len)))
}

/// Client side: a Status Response (JSON) from a backend. Packets longer than `max` bytes are
/// refused before their body is waited for.
pub fn parse_status_response(
    buf: &[u8],
    max: usize,
) -> Result<Option<(String, usize)>, ProtocolError> {
    let Some((body, len)) = read_frame(buf, max.min(MAX_PACKET_BYTES))? else {
        return Ok(None);
    };
    let mut r = Reader::new(body);
    let id = r.varint()?;
    if id != STATUS_RESPONSE_ID {
        return Err(ProtocolError::BadPacketId(id));
    }
    // Vanilla's limit for this string is 32767 units; the frame cap already bounds it.
    let json = r.string(MAX_PACKET_BYTES, ProtocolError::PacketTooLarge { max })?;
    if !r.is_empty() {
        return Err(ProtocolError::Malformed(
            "trailing bytes after the status JSON",
        ));
    }
    Ok(Some((json.to_owned(), len)))
}

/// Client side: a Pong (0x01, i64) from a backend.
pub fn parse_pong(buf: &[u8]) -> Result<Option<(i64, usize)>, ProtocolError> {
    match parse_status_packet(buf)? {
        None => Ok(None),
        Some((StatusPacket::Ping(payload), len)) => Ok(Some((payload, len))),
        Some((StatusPacket::Request, _)) => Err(ProtocolError::BadPacketId(STATUS_REQUEST_ID)),
    }
}

pub fn encode_handshake(h: &Handshake) -> Vec<u8> {
    let mut body = Vec::with_capacity(handshake_body_len(h));
    write_varint(&mut body, 0x00);
    write_varint(&mut body, h.protocol_version);
    write_string(&mut body, &h.server_address);
    body.extend_from_slice(&h.server_port.to_be_bytes());
    write_varint(&mut body, h.next_state.to_wire());
    frame(&body)
}

/// The framed handshake a backend gets when its route rewrites the host: `h` re-encoded with
/// `host` in place of the hostname (see [`crate::handshake::with_host`]). Only the handshake
/// changes; the caller sends every later byte as the player sent it.
pub fn encode_rewritten_handshake(h: &Handshake, host: &str) -> Vec<u8> {
    encode_handshake(&crate::handshake::with_host(h, host))
}

pub fn encode_status_request() -> Vec<u8> {
    vec![0x01, STATUS_REQUEST_ID as u8]
}

pub fn encode_ping(payload: i64) -> Vec<u8> {
    let mut body = Vec::with_capacity(9);
    write_varint(&mut body, PING_ID);
    body.extend_from_slice(&payload.to_be_bytes());
    frame(&body)
}

/// The pong has the same id and layout as the ping.
pub fn encode_pong(payload: i64) -> Vec<u8> {
    encode_ping(payload)
}

pub fn encode_status_response(json: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(json.len() + 4);
    write_varint(&mut body, STATUS_RESPONSE_ID);
    write_string(&mut body, json);
    frame(&body)
}

/// Login-state Disconnect: a JSON text component `{"text": message}`. The login state still
/// uses JSON text in every version (NBT components start in configuration/play).
pub fn encode_login_disconnect(message: &str) -> Vec<u8> {
    let json = serde_json::json!({ "text": message }).to_string();
    let mut body = Vec::with_capacity(json.len() + 4);
    write_varint(&mut body, LOGIN_DISCONNECT_ID);
    write_string(&mut body, &json);
    frame(&body)
}
