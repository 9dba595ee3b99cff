//! Login Plugin Request and Response: the one exchange a server may start with a client
//! before Login Success (and before encryption and compression), since 1.13 (protocol 393).
//!
//! | packet                    | state, direction   | id   | fields                                        |
//! |---------------------------|--------------------|------|-----------------------------------------------|
//! | Login Plugin Request      | login, clientbound | 0x04 | message id VarInt, channel Identifier, data (rest of the packet) |
//! | Login Plugin Response     | login, serverbound | 0x02 | message id VarInt, understood bool, data (rest, only when understood) |
//!
//! The ids are the same in every version from 1.13 to today (1.20.2 added Login
//! Acknowledged as serverbound 0x03 and 1.20.5 the cookie packets, after these). A client
//! must answer every request; vanilla answers "not understood" with no data for a channel it
//! does not know. The edge uses this to keep a held login's connection busy while its server
//! wakes (the client drops a connection after ~30 s without a byte), and swallows the answers.

use crate::varint::{frame, read_frame, write_string, write_varint, Reader};
use crate::ProtocolError;

const LOGIN_PLUGIN_REQUEST_ID: i32 = 0x04;
const LOGIN_PLUGIN_RESPONSE_ID: i32 = 0x02;

/// First protocol version (1.13) whose clients answer Login Plugin Requests.
pub const LOGIN_PLUGIN_FROM_PROTOCOL: i32 = 393;
/// A response to a request for a channel nobody knows is 3–7 bytes; this leaves room for a
/// client that claims to understand one and sends a little data, and no more.
pub const MAX_LOGIN_PLUGIN_RESPONSE_BYTES: usize = 256;
/// Identifiers are at most 32767 characters in vanilla; ours are short.
const MAX_CHANNEL_CHARS: usize = 32767;

/// True when a client of `protocol_version` answers Login Plugin Requests. Snapshot
/// numbering (`0x4000_0000 | n`, from 1.16.4 on) is above the threshold as well.
pub fn answers_login_plugin_requests(protocol_version: i32) -> bool {
    protocol_version >= LOGIN_PLUGIN_FROM_PROTOCOL
}

/// A Login Plugin Request, framed and ready to write.
pub fn encode_login_plugin_request(message_id: i32, channel: &str, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(channel.len() + data.len() + 8);
    write_varint(&mut body, LOGIN_PLUGIN_REQUEST_ID);
    write_varint(&mut body, message_id);
    write_string(&mut body, channel);
    body.extend_from_slice(data);
    frame(&body)
}

/// Client side of the same packet (test clients, fuzz targets): message id, channel, data.
pub fn parse_login_plugin_request(
    buf: &[u8],
) -> Result<Option<(LoginPluginRequest<'_>, usize)>, ProtocolError> {
    let Some((body, len)) = read_frame(buf, crate::MAX_PACKET_BYTES)? else {
        return Ok(None);
    };
    let mut r = Reader::new(body);
    let id = r.varint()?;
    if id != LOGIN_PLUGIN_REQUEST_ID {
        return Err(ProtocolError::BadPacketId(id));
    }
    let message_id = r.varint()?;
    let channel = r.string(
        MAX_CHANNEL_CHARS,
        ProtocolError::Malformed("channel longer than 32767 characters"),
    )?;
    let data = r.rest();
    Ok(Some((
        LoginPluginRequest {
            message_id,
            channel,
            data,
        },
        len,
    )))
}

/// A Login Plugin Request as a client reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginPluginRequest<'a> {
    pub message_id: i32,
    pub channel: &'a str,
    pub data: &'a [u8],
}

/// A client's answer to a Login Plugin Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginPluginResponse<'a> {
    pub message_id: i32,
    pub understood: bool,
    /// Empty unless `understood`.
    pub data: &'a [u8],
}

/// Reads one Login Plugin Response from the start of `buf`. `Ok(None)`: more bytes are
/// needed. Anything else a client could send in the login state (another packet id, a
/// packet longer than [`MAX_LOGIN_PLUGIN_RESPONSE_BYTES`], data after "not understood") is
/// an error, decided as soon as the bytes that show it are present.
pub fn parse_login_plugin_response(
    buf: &[u8],
) -> Result<Option<(LoginPluginResponse<'_>, usize)>, ProtocolError> {
    let Some((body, len)) = read_frame(buf, MAX_LOGIN_PLUGIN_RESPONSE_BYTES)? else {
        // The packet id is the first body byte: refuse another packet without waiting for
        // the rest of it.
        if let Some(id) = peek_packet_id(buf) {
            if id != LOGIN_PLUGIN_RESPONSE_ID {
                return Err(ProtocolError::BadPacketId(id));
            }
        }
        return Ok(None);
    };
    let mut r = Reader::new(body);
    let id = r.varint()?;
    if id != LOGIN_PLUGIN_RESPONSE_ID {
        return Err(ProtocolError::BadPacketId(id));
    }
    let message_id = r.varint()?;
    let understood = r.bool()?;
    let data = r.rest();
    if !understood && !data.is_empty() {
        return Err(ProtocolError::Malformed(
            "data after a \"not understood\" plugin response",
        ));
    }
    Ok(Some((
        LoginPluginResponse {
            message_id,
            understood,
            data,
        },
        len,
    )))
}

/// The id of a packet whose length prefix and first body byte are present (ids are small).
fn peek_packet_id(buf: &[u8]) -> Option<i32> {
    let (_, prefix) = crate::read_varint(buf).ok()??;
    let (id, _) = crate::read_varint(buf.get(prefix..)?).ok()??;
    Some(id)
}

/// A Login Plugin Response as a client sends it (test clients, fuzz seeds).
pub fn encode_login_plugin_response(message_id: i32, data: Option<&[u8]>) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + data.map_or(0, <[u8]>::len));
    write_varint(&mut body, LOGIN_PLUGIN_RESPONSE_ID);
    write_varint(&mut body, message_id);
    match data {
        Some(d) => {
            body.push(1);
            body.extend_from_slice(d);
        }
        None => body.push(0),
    }
    frame(&body)
}
