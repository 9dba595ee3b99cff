//! Wire helpers for the test peers: packet builders and readers on top of `mcproto`, the one
//! implementation of the Minecraft wire format (VarInt, String, framing, the packets). What
//! mcproto has no use for lives here: the client-side readers of answers (status JSON text,
//! legacy `0xFF` replies) and a PROXY header record with its raw bytes.
//!
//! The independent check of the wire format is mcproto's byte vectors
//! (`mcproto/src/testdata`, written by a Python script from the protocol description);
//! `tests.rs` checks these builders against the same files.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Cap on a String a test peer reads (status JSON with a favicon fits; a broken peer fails).
const MAX_STRING_CHARS: usize = 1 << 20;

/// Appends a VarInt.
pub fn put_varint(out: &mut Vec<u8>, value: i32) {
    mcproto::write_varint(out, value);
}

/// Appends a protocol String (VarInt byte length + UTF-8).
pub fn put_string(out: &mut Vec<u8>, s: &str) {
    mcproto::write_string(out, s);
}

/// Prefixes a packet body (id + fields) with its length.
pub fn framed(body: &[u8]) -> Vec<u8> {
    mcproto::frame(body)
}

/// A framed Handshake packet. `next_state` is 1 (status), 2 (login) or 3 (transfer).
pub fn handshake_packet(protocol: i32, address: &str, port: u16, next_state: i32) -> Vec<u8> {
    let next_state = mcproto::NextState::from_wire(next_state).expect("next state 1, 2 or 3");
    mcproto::encode_handshake(&mcproto::Handshake {
        protocol_version: protocol,
        server_address: address.to_owned(),
        server_port: port,
        next_state,
    })
}

/// A framed Login Start as a client of `protocol` sends it: the name; 1.19–1.19.2 (759–760)
/// add an (empty) signature-data flag; 1.19.1–1.20.1 (760–763) a has-UUID flag and the
/// UUID; 1.20.2+ (764) the UUID alone. The UUID is [`player_uuid`] of the name.
pub fn login_start_packet(protocol: i32, username: &str) -> Vec<u8> {
    mcproto::encode_login_start(
        protocol,
        &mcproto::LoginStart {
            name: username.to_owned(),
            uuid: Some(player_uuid_bytes(username)),
        },
    )
}

fn player_uuid_bytes(username: &str) -> [u8; 16] {
    let digest = Sha256::digest(username.as_bytes());
    let mut u = [0u8; 16];
    u.copy_from_slice(&digest[..16]);
    u
}

/// The UUID [`login_start_packet`] sends for `username` (protocols ≥ 760), hyphenated.
pub fn player_uuid(username: &str) -> String {
    mcproto::format_uuid(player_uuid_bytes(username))
}

/// A framed status Ping (and, with the same layout, a Pong).
pub fn ping_packet(payload: i64) -> Vec<u8> {
    mcproto::encode_ping(payload)
}

/// A framed login-state Disconnect with a JSON text component.
pub fn login_disconnect_packet(message: &str) -> Vec<u8> {
    mcproto::encode_login_disconnect(message)
}

/// A framed Login Plugin Response (login 0x02): message id, understood, data. `None` is
/// vanilla's answer for a channel it does not know.
pub fn plugin_response_packet(message_id: i32, data: Option<&[u8]>) -> Vec<u8> {
    mcproto::encode_login_plugin_response(message_id, data)
}

/// The bytes a 1.6 client sends for a server-list ping.
pub fn legacy_1_6_bytes(hostname: &str, port: u16, protocol: u8) -> Vec<u8> {
    mcproto::encode_legacy_ping_v1_6(protocol, hostname, port)
}

/// If `buf` starts with a complete frame: (packet id, fields, frame length). An invalid
/// length prefix is an error: no more bytes can make it a packet.
pub(crate) fn split_frame(buf: &[u8]) -> Result<Option<(i32, Vec<u8>, usize)>> {
    let Some((body, len)) = mcproto::read_frame(buf, mcproto::MAX_PACKET_BYTES)? else {
        return Ok(None);
    };
    let mut fields = mcproto::Reader::new(body);
    let id = fields.varint()?;
    Ok(Some((id, fields.rest().to_vec(), len)))
}

/// Reads the fields of a complete packet body (after the id).
pub(crate) struct Fields<'a>(mcproto::Reader<'a>);

impl<'a> Fields<'a> {
    pub(crate) fn new(body: &'a [u8]) -> Self {
        Self(mcproto::Reader::new(body))
    }

    pub(crate) fn varint(&mut self, what: &str) -> Result<i32> {
        self.0.varint().with_context(|| format!("bad {what}"))
    }

    pub(crate) fn string(&mut self, what: &str) -> Result<String> {
        let too_long = mcproto::ProtocolError::Malformed("string longer than the test cap");
        Ok(self
            .0
            .string(MAX_STRING_CHARS, too_long)
            .with_context(|| format!("bad {what}"))?
            .to_owned())
    }

    pub(crate) fn u16(&mut self, what: &str) -> Result<u16> {
        self.0.u16().with_context(|| format!("bad {what}"))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        self.0.rest()
    }
}

/// Plain text of a JSON text component (string, `{"text", "extra"}` or array).
pub fn component_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items.iter().map(component_text).collect(),
        serde_json::Value::Object(o) => {
            let mut s = o
                .get("text")
                .and_then(|t| t.as_str())
                .unwrap_or_default()
                .to_owned();
            if let Some(extra) = o.get("extra") {
                s.push_str(&component_text(extra));
            }
            s
        }
        _ => String::new(),
    }
}

/// A PROXY protocol header as a test backend received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyInfo {
    pub version: u8,
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    pub raw: Vec<u8>,
}

/// Parses a PROXY v1 or v2 header at the start of `buf`: `Ok(None)` if incomplete.
/// (mcproto's parser is the `ppp` crate's, independent of mcproto's own encoders.)
pub fn parse_proxy(buf: &[u8]) -> Result<Option<ProxyInfo>> {
    let Some((header, len)) = mcproto::parse_proxy_header(buf)? else {
        return Ok(None);
    };
    Ok(Some(ProxyInfo {
        version: if buf.starts_with(mcproto::proxy_header::V1_PREFIX) {
            1
        } else {
            2
        },
        source: header.source,
        destination: header.destination,
        raw: buf[..len].to_vec(),
    }))
}

/// `s` as UTF-16BE code units (the legacy ping's string encoding).
pub(crate) fn utf16be(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// A legacy `0xFF` answer, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyReply {
    pub text: String,
    /// `[proto, version, motd, online, max]` for the `§1` form, `[motd, online, max]` otherwise.
    pub fields: Vec<String>,
}

impl LegacyReply {
    pub fn motd(&self) -> &str {
        match self.fields.len() {
            5 => &self.fields[2],
            _ => self.fields.first().map_or("", String::as_str),
        }
    }
}

/// Decodes the UTF-16BE string of a legacy answer (after `FF` and the length).
pub fn decode_legacy_reply(body: &[u8]) -> Result<LegacyReply> {
    let units = body
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]));
    let text: String = char::decode_utf16(units).collect::<Result<_, _>>()?;
    let fields = match text.strip_prefix("§1\0") {
        Some(rest) => rest.split('\0').map(str::to_owned).collect(),
        None => text.split('§').map(str::to_owned).collect(),
    };
    Ok(LegacyReply { text, fields })
}
