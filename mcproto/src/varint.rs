//! VarInt, String and packet framing: the primitives every Minecraft packet is built from.
//!
//! Readers come in two flavours. `read_varint` and `read_frame` look at a stream prefix and
//! answer `Ok(None)` when more bytes are needed. `Reader` walks the body of a packet that is
//! already complete, so running out of bytes there is a malformed packet, not a short read.

use crate::ProtocolError;

/// A VarInt never takes more than five bytes (32 bits in 7-bit groups).
pub const MAX_VARINT_BYTES: usize = 5;
/// Packet length prefixes are at most three bytes, as in vanilla: every frame is < 2 MiB.
pub const MAX_FRAME_PREFIX_BYTES: usize = 3;
/// The largest body length a three-byte prefix can carry.
pub const MAX_PACKET_BYTES: usize = (1 << 21) - 1;

/// Reads a VarInt from the start of `buf`: `Ok(None)` when it is cut short.
pub fn read_varint(buf: &[u8]) -> Result<Option<(i32, usize)>, ProtocolError> {
    let mut value: u32 = 0;
    for (i, &byte) in buf.iter().take(MAX_VARINT_BYTES).enumerate() {
        // Like vanilla, bits beyond 32 in the fifth byte are dropped rather than refused.
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value as i32, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT_BYTES {
        Err(ProtocolError::VarIntTooLong)
    } else {
        Ok(None)
    }
}

/// Number of bytes `write_varint` uses for `value`.
pub fn varint_len(value: i32) -> usize {
    let v = value as u32;
    match v {
        0..=0x7F => 1,
        0x80..=0x3FFF => 2,
        0x4000..=0x1F_FFFF => 3,
        0x20_0000..=0x0FFF_FFFF => 4,
        _ => 5,
    }
}

/// Appends the canonical (shortest) VarInt encoding of `value`.
pub fn write_varint(out: &mut Vec<u8>, value: i32) {
    let mut v = value as u32;
    loop {
        let byte = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends a protocol String: VarInt byte length, then UTF-8.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    write_varint(out, s.len() as i32);
    out.extend_from_slice(s.as_bytes());
}

/// Splits one length-prefixed packet off the start of `buf`.
///
/// Returns the packet body (id + fields) and the bytes consumed including the prefix.
/// `max_body` bounds the body length; the claimed length is checked before waiting for the
/// body, so a hostile length never makes the caller buffer (or allocate) more.
pub fn read_frame(buf: &[u8], max_body: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let head = &buf[..buf.len().min(MAX_FRAME_PREFIX_BYTES)];
    let (len, prefix) = match read_varint(head)? {
        Some(v) => v,
        None if head.len() >= MAX_FRAME_PREFIX_BYTES => {
            return Err(ProtocolError::PacketTooLarge { max: max_body })
        }
        None => return Ok(None),
    };
    // Three bytes cannot encode a negative i32, so `len` is in 0..2^21.
    let len = len as usize;
    if len == 0 {
        return Err(ProtocolError::Malformed("empty packet"));
    }
    if len > max_body {
        return Err(ProtocolError::PacketTooLarge { max: max_body });
    }
    let end = prefix + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((&buf[prefix..end], end)))
}

/// Prefixes `body` with its VarInt length.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + MAX_FRAME_PREFIX_BYTES);
    write_varint(&mut out, body.len() as i32);
    out.extend_from_slice(body);
    out
}

/// Cursor over the body of a complete packet.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < n {
            return Err(ProtocolError::Malformed(
                "field runs past the end of the packet",
            ));
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    pub fn varint(&mut self) -> Result<i32, ProtocolError> {
        match read_varint(&self.buf[self.pos..])? {
            Some((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            None => Err(ProtocolError::Malformed(
                "VarInt runs past the end of the packet",
            )),
        }
    }

    pub fn bool(&mut self) -> Result<bool, ProtocolError> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ProtocolError::Malformed("boolean that is neither 0 nor 1")),
        }
    }

    /// Everything left in the packet (a trailing "rest of the packet" field).
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos.min(self.buf.len())..];
        self.pos = self.buf.len();
        rest
    }

    /// `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        self.take(n)
    }

    /// A VarInt-prefixed byte array of at most `max` bytes.
    pub fn byte_array(&mut self, max: usize) -> Result<&'a [u8], ProtocolError> {
        let len = usize::try_from(self.varint()?)
            .map_err(|_| ProtocolError::Malformed("negative array length"))?;
        if len > max {
            return Err(ProtocolError::Malformed("byte array longer than allowed"));
        }
        self.take(len)
    }

    pub fn u16(&mut self) -> Result<u16, ProtocolError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i64(&mut self) -> Result<i64, ProtocolError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    /// Reads a String of at most `max_chars` UTF-16 units, the way vanilla bounds it: the
    /// byte length may not exceed `max_chars * 3`, and the decoded text not `max_chars` units.
    pub fn string(
        &mut self,
        max_chars: usize,
        too_long: ProtocolError,
    ) -> Result<&'a str, ProtocolError> {
        let len = self.varint()?;
        let len =
            usize::try_from(len).map_err(|_| ProtocolError::Malformed("negative string length"))?;
        if len > max_chars.saturating_mul(3) {
            return Err(too_long);
        }
        let bytes = self.take(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| ProtocolError::InvalidUtf8)?;
        if s.encode_utf16().count() > max_chars {
            return Err(too_long);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_the_wiki_table() {
        let cases: &[(i32, &[u8])] = &[
            (0, &[0x00]),
            (1, &[0x01]),
            (2, &[0x02]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (255, &[0xff, 0x01]),
            (25565, &[0xdd, 0xc7, 0x01]),
            (2097151, &[0xff, 0xff, 0x7f]),
            (2147483647, &[0xff, 0xff, 0xff, 0xff, 0x07]),
            (-1, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
            (-2147483648, &[0x80, 0x80, 0x80, 0x80, 0x08]),
        ];
        for &(value, bytes) in cases {
            let mut out = Vec::new();
            write_varint(&mut out, value);
            assert_eq!(out, bytes, "encode {value}");
            assert_eq!(varint_len(value), bytes.len());
            assert_eq!(
                read_varint(bytes),
                Ok(Some((value, bytes.len()))),
                "decode {value}"
            );
            for cut in 0..bytes.len() {
                assert_eq!(read_varint(&bytes[..cut]), Ok(None));
            }
        }
    }

    #[test]
    fn six_byte_varint_is_refused_after_five() {
        assert_eq!(read_varint(&[0x80; 5]), Err(ProtocolError::VarIntTooLong));
        assert_eq!(read_varint(&[0x80; 4]), Ok(None));
    }

    #[test]
    fn frame_length_over_three_bytes_is_too_large() {
        assert_eq!(
            read_frame(&[0x80, 0x80, 0x80], 1024),
            Err(ProtocolError::PacketTooLarge { max: 1024 })
        );
        assert_eq!(
            read_frame(&[0x81, 0x08], 1024),
            Err(ProtocolError::PacketTooLarge { max: 1024 })
        );
        assert_eq!(
            read_frame(&[0x00], 1024),
            Err(ProtocolError::Malformed("empty packet"))
        );
        assert_eq!(read_frame(&[0x02, 0x00], 1024), Ok(None));
        assert_eq!(
            read_frame(&[0x02, 0x00, 0x01, 0x09], 1024),
            Ok(Some((&[0x00, 0x01][..], 3)))
        );
    }
}
