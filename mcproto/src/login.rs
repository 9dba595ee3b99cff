//! Login Start (login state, packet 0x00, serverbound): who is logging in.
//!
//! Its layout depends on the protocol version of the handshake:
//!
//! | versions            | protocol   | fields after the name                                  |
//! |---------------------|------------|--------------------------------------------------------|
//! | 1.7 – 1.18.2        | ≤ 758      | none                                                   |
//! | 1.19                | 759        | has-sig-data bool, [expiry i64, key, signature]        |
//! | 1.19.1 – 1.19.2     | 760        | has-sig-data bool, [expiry, key, signature], has-uuid bool, [uuid] |
//! | 1.19.3 – 1.20.1     | 761 – 763  | has-uuid bool, [uuid]                                  |
//! | 1.20.2 and later    | ≥ 764      | uuid                                                   |
//!
//! The edge only observes this packet (names and UUIDs go to logs, the admin API and the
//! fleet report); the bytes go to the backend unchanged, and the backend is the one that
//! accepts or refuses the login.

use crate::varint::{frame, read_frame, write_string, write_varint, Reader};
use crate::ProtocolError;

const LOGIN_START_ID: i32 = 0x00;

/// Login Start is a name plus a UUID today; 1.19.0–1.19.2 also carried a signed public key
/// (key ≤ 512 bytes, signature ≤ 4096), hence the room.
pub const MAX_LOGIN_START_BYTES: usize = 8192;
/// Usernames are at most 16 characters (vanilla reads them with that limit).
pub const MAX_USERNAME_CHARS: usize = 16;

/// Whether `name` can be a player's name in an operator's list (an allow
/// list, say): 1 to [`MAX_USERNAME_CHARS`] characters, no whitespace, no
/// control character, no comma (the lists' separator). Looser than Mojang's
/// `[A-Za-z0-9_]{3,16}` on purpose: offline-mode servers accept other names.
pub fn is_listable_username(name: &str) -> bool {
    let n = name.chars().count();
    (1..=MAX_USERNAME_CHARS).contains(&n)
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
}
/// Bounds vanilla 1.19 puts on the profile key fields.
const MAX_PUBLIC_KEY_BYTES: usize = 512;
const MAX_KEY_SIGNATURE_BYTES: usize = 4096;

/// First protocol version whose Login Start carries signature data (1.19).
const SIG_DATA_FROM: i32 = 759;
/// First version with the optional UUID (1.19.1).
const OPTIONAL_UUID_FROM: i32 = 760;
/// First version without signature data (1.19.3).
const SIG_DATA_UNTIL: i32 = 761;
/// First version where the UUID is always present (1.20.2).
const UUID_ALWAYS_FROM: i32 = 764;

/// The player a Login Start names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginStart {
    /// At most [`MAX_USERNAME_CHARS`] characters.
    pub name: String,
    /// The profile UUID, when the protocol version carries one and the client sent it.
    pub uuid: Option<[u8; 16]>,
}

impl LoginStart {
    /// The UUID in its usual hyphenated form, or an empty string.
    pub fn uuid_string(&self) -> String {
        self.uuid.map(format_uuid).unwrap_or_default()
    }
}

/// `069a79f4-44e9-4726-a5be-fca90e38aaf5`.
pub fn format_uuid(u: [u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Reads a Login Start from the start of `buf` with the layout of `protocol_version`.
/// `Ok(None)`: more bytes are needed. The consumed length covers the whole frame; bytes a
/// mod appends after the known fields are skipped (the backend judges them).
pub fn parse_login_start(
    buf: &[u8],
    protocol_version: i32,
) -> Result<Option<(LoginStart, usize)>, ProtocolError> {
    let Some((body, len)) = read_frame(buf, MAX_LOGIN_START_BYTES)? else {
        return Ok(None);
    };
    let mut r = Reader::new(body);
    let id = r.varint()?;
    if id != LOGIN_START_ID {
        return Err(ProtocolError::BadPacketId(id));
    }
    let name = r
        .string(
            MAX_USERNAME_CHARS,
            ProtocolError::Malformed("username longer than 16 characters"),
        )?
        .to_owned();
    if (SIG_DATA_FROM..SIG_DATA_UNTIL).contains(&protocol_version) && r.bool()? {
        let _expires = r.i64()?;
        r.byte_array(MAX_PUBLIC_KEY_BYTES)?;
        r.byte_array(MAX_KEY_SIGNATURE_BYTES)?;
    }
    let has_uuid = protocol_version >= UUID_ALWAYS_FROM
        || (protocol_version >= OPTIONAL_UUID_FROM && r.bool()?);
    let uuid = if has_uuid {
        Some(read_uuid(&mut r)?)
    } else {
        None
    };
    Ok(Some((LoginStart { name, uuid }, len)))
}

fn read_uuid(r: &mut Reader<'_>) -> Result<[u8; 16], ProtocolError> {
    let mut u = [0u8; 16];
    u.copy_from_slice(r.bytes(16)?);
    Ok(u)
}

/// Login Start as a client of `protocol_version` sends it (no signature data: 1.19–1.19.2
/// clients may omit it too). For tests and fuzz seeds.
pub fn encode_login_start(protocol_version: i32, login: &LoginStart) -> Vec<u8> {
    let mut body = Vec::with_capacity(login.name.len() + 20);
    write_varint(&mut body, LOGIN_START_ID);
    write_string(&mut body, &login.name);
    if (SIG_DATA_FROM..SIG_DATA_UNTIL).contains(&protocol_version) {
        body.push(0);
    }
    if protocol_version >= UUID_ALWAYS_FROM {
        body.extend_from_slice(&login.uuid.unwrap_or_default());
    } else if protocol_version >= OPTIONAL_UUID_FROM {
        match login.uuid {
            Some(u) => {
                body.push(1);
                body.extend_from_slice(&u);
            }
            None => body.push(0),
        }
    }
    frame(&body)
}
