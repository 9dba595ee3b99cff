//! Legacy (pre-1.7) server-list pings and their `0xFF` kick-packet answers.
//!
//! Three forms reach a server:
//! - beta 1.8 – 1.3: `FE`; answer `motd§online§max`.
//! - 1.4 – 1.5: `FE 01`; answer `§1\0proto\0version\0motd\0online\0max`.
//! - 1.6: `FE 01 FA`, then a plugin message on channel `MC|PingHost`: a big-endian short
//!   length (11) and the UTF-16BE channel name, a short data length, the protocol byte, the
//!   hostname (short length in UTF-16 units, UTF-16BE) and the port as a big-endian int.
//!   Same answer as 1.4. It carries the hostname, so it can be routed.
//!
//! A modern frame whose length VarInt starts with byte `FE` (254, 382, … 1022 bytes) is told
//! apart by what follows, as vanilla does: only `FE`, `FE 01` and `FE 01 FA` are legacy.

use crate::status::StatusInfo;
use crate::{ProtocolError, MAX_ADDRESS_CHARS};

const LEGACY_PING: u8 = 0xFE;
const LEGACY_PAYLOAD: u8 = 0x01;
const PLUGIN_MESSAGE: u8 = 0xFA;
const KICK: u8 = 0xFF;
const PING_HOST_CHANNEL: &str = "MC|PingHost";
/// Fixed part of the 1.6 data: protocol byte, hostname length, port.
const PING_HOST_FIXED: usize = 1 + 2 + 4;
/// Header before the 1.6 data: FE 01 FA, channel length, channel, data length.
const PING_HOST_HEADER: usize = 3 + 2 + 2 * PING_HOST_CHANNEL.len() + 2;
/// The longest legacy ping we accept (a 1.6 ping with a 255-unit hostname).
pub const MAX_LEGACY_PING_BYTES: usize = PING_HOST_HEADER + PING_HOST_FIXED + 2 * MAX_ADDRESS_CHARS;
/// Old clients read the kick string with a 256-unit limit.
const MAX_KICK_UNITS: usize = 256;

/// Which legacy ping a client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyForm {
    /// `FE`: beta 1.8 to 1.3.
    Bare,
    /// `FE 01`: 1.4 and 1.5.
    V1_4,
    /// `FE 01 FA … MC|PingHost …`: 1.6.
    V1_6,
}

/// A legacy ping. Only the 1.6 form carries a protocol version, hostname and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyPing {
    pub form: LegacyForm,
    pub protocol_version: Option<u8>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
}

impl LegacyPing {
    fn without_host(form: LegacyForm) -> Self {
        Self {
            form,
            protocol_version: None,
            hostname: None,
            port: None,
        }
    }
}

/// What the first bytes say about a legacy ping.
pub(crate) enum LegacyStart {
    /// `FE` or `FE 01` so far: a legacy ping or a modern frame of 254+ bytes; wait.
    NeedMore,
    /// `FE 01 FA`: a 1.6 ping, which carries the hostname.
    PingHost,
    /// Not a legacy ping (anything not starting `FE`, and, as in vanilla, a modern frame
    /// whose length prefix happens to start FE (254, 382, … bytes), e.g. `FE 01 00`).
    NotLegacy,
}

pub(crate) fn classify_start(buf: &[u8]) -> LegacyStart {
    match buf {
        [] | [LEGACY_PING] | [LEGACY_PING, LEGACY_PAYLOAD] => LegacyStart::NeedMore,
        [LEGACY_PING, LEGACY_PAYLOAD, PLUGIN_MESSAGE, ..] => LegacyStart::PingHost,
        _ => LegacyStart::NotLegacy,
    }
}

/// When no more bytes come after `FE` or `FE 01` (or a 1.6 ping stalls mid-way), answer with
/// what is there. 1.6 clients understand the 1.4 answer, so a stalled 1.6 ping gets that.
/// `None` when `buf` is not the start of a legacy ping.
pub fn parse_legacy_bare_timeout(buf: &[u8]) -> Option<LegacyPing> {
    match buf {
        [LEGACY_PING] => Some(LegacyPing::without_host(LegacyForm::Bare)),
        [LEGACY_PING, LEGACY_PAYLOAD] | [LEGACY_PING, LEGACY_PAYLOAD, PLUGIN_MESSAGE, ..] => {
            Some(LegacyPing::without_host(LegacyForm::V1_4))
        }
        _ => None,
    }
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// A 1.6 ping (`buf` starts `FE 01 FA`) and the bytes it took.
pub(crate) fn parse_ping_host(buf: &[u8]) -> Result<Option<(LegacyPing, usize)>, ProtocolError> {
    // Check each field as soon as it is present, so garbage is refused without waiting.
    let Some(channel_units) = be_u16(buf, 3) else {
        return Ok(None);
    };
    if usize::from(channel_units) != PING_HOST_CHANNEL.len() {
        return Err(ProtocolError::Malformed(
            "1.6 ping plugin channel is not MC|PingHost",
        ));
    }
    let channel_end = 5 + 2 * PING_HOST_CHANNEL.len();
    let channel = &buf[5..buf.len().min(channel_end)];
    let expected: Vec<u8> = utf16be(PING_HOST_CHANNEL);
    if !expected.starts_with(channel) {
        return Err(ProtocolError::Malformed(
            "1.6 ping plugin channel is not MC|PingHost",
        ));
    }
    let Some(data_len) = be_u16(buf, channel_end) else {
        return Ok(None);
    };
    let data_len = usize::from(data_len);
    if data_len < PING_HOST_FIXED {
        return Err(ProtocolError::Malformed(
            "1.6 ping data shorter than its fixed fields",
        ));
    }
    if data_len > PING_HOST_FIXED + 2 * MAX_ADDRESS_CHARS {
        return Err(ProtocolError::AddressTooLong);
    }
    let data_start = channel_end + 2;
    let protocol_version = buf.get(data_start).copied();
    let Some(host_units) = be_u16(buf, data_start + 1) else {
        return Ok(None);
    };
    let host_units = usize::from(host_units);
    if host_units > MAX_ADDRESS_CHARS {
        return Err(ProtocolError::AddressTooLong);
    }
    if data_len != PING_HOST_FIXED + 2 * host_units {
        return Err(ProtocolError::Malformed(
            "1.6 ping data length disagrees with the hostname length",
        ));
    }
    let end = data_start + data_len;
    if buf.len() < end {
        return Ok(None);
    }
    let host_start = data_start + 3;
    let host_end = host_start + 2 * host_units;
    let hostname = decode_utf16be(&buf[host_start..host_end])?;
    let port = i32::from_be_bytes([
        buf[host_end],
        buf[host_end + 1],
        buf[host_end + 2],
        buf[host_end + 3],
    ]);
    let port =
        u16::try_from(port).map_err(|_| ProtocolError::Malformed("1.6 ping port out of range"))?;
    let ping = LegacyPing {
        form: LegacyForm::V1_6,
        protocol_version,
        hostname: Some(hostname),
        port: Some(port),
    };
    Ok(Some((ping, end)))
}

fn utf16be(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

fn decode_utf16be(b: &[u8]) -> Result<String, ProtocolError> {
    let units = b.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
    char::decode_utf16(units)
        .collect::<Result<String, _>>()
        .map_err(|_| ProtocolError::InvalidUtf8)
}

/// Encodes a 1.6 ping the way a 1.6.4 client does (for tests, fuzz seeds and test peers).
pub fn encode_legacy_ping_v1_6(protocol_version: u8, hostname: &str, port: u16) -> Vec<u8> {
    let host = utf16be(hostname);
    let mut out = vec![LEGACY_PING, LEGACY_PAYLOAD, PLUGIN_MESSAGE];
    out.extend_from_slice(&(PING_HOST_CHANNEL.len() as u16).to_be_bytes());
    out.extend_from_slice(&utf16be(PING_HOST_CHANNEL));
    out.extend_from_slice(&((PING_HOST_FIXED + host.len()) as u16).to_be_bytes());
    out.push(protocol_version);
    out.extend_from_slice(&((host.len() / 2) as u16).to_be_bytes());
    out.extend_from_slice(&host);
    out.extend_from_slice(&i32::from(port).to_be_bytes());
    out
}

/// The `0xFF` answer to a legacy ping: the 1.4+ `§1` form, or `motd§online§max` for a bare `FE`.
/// 1.6 pings get their own protocol number back, like modern status answers.
pub fn encode_legacy_response(ping: &LegacyPing, info: &StatusInfo) -> Vec<u8> {
    let online = info.online.clamp(0, i64::from(i32::MAX));
    let max = info.max.clamp(0, i64::from(i32::MAX));
    let (before, motd_src, after) = match ping.form {
        LegacyForm::Bare => (String::new(), info.motd, format!("§{online}§{max}")),
        LegacyForm::V1_4 | LegacyForm::V1_6 => {
            let protocol = ping.protocol_version.map_or(info.protocol, i32::from);
            let version: String = clean(info.version_name, false).chars().take(64).collect();
            (
                format!("§1\0{protocol}\0{version}\0"),
                info.motd,
                format!("\0{online}\0{max}"),
            )
        }
    };
    let budget =
        MAX_KICK_UNITS.saturating_sub(before.encode_utf16().count() + after.encode_utf16().count());
    let mut motd = String::new();
    let mut used = 0;
    for c in clean(motd_src, ping.form == LegacyForm::Bare).chars() {
        if used + c.len_utf16() > budget {
            break;
        }
        used += c.len_utf16();
        motd.push(c);
    }
    let text = format!("{before}{motd}{after}");
    let units: Vec<u16> = text.encode_utf16().collect();
    let mut out = Vec::with_capacity(3 + 2 * units.len());
    out.push(KICK);
    out.extend_from_slice(&(units.len() as u16).to_be_bytes());
    out.extend(units.iter().flat_map(|u| u.to_be_bytes()));
    out
}

/// Legacy answers are one line with `\0` (and for the bare form `§`) as separators.
fn clean(s: &str, bare: bool) -> String {
    s.chars()
        .filter(|&c| c != '\0' && !(bare && c == '§'))
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect()
}
