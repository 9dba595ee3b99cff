//! A minimal Minecraft status ping, for the opt-in readiness check of a
//! wake: handshake with next_state = 1, status request, and a well-formed
//! status response. A modded server that accepts TCP while still loading
//! does not answer this, so "running" is not taken for "ready".
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest status response accepted (the protocol allows 32767 chars × 3).
const MAX_RESPONSE: usize = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PingError {
    #[error("invalid address {0:?}")]
    BadAddress(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no status answer within {0:?}")]
    Timeout(Duration),
    #[error("malformed status response: {0}")]
    Malformed(&'static str),
}

/// Ping `address` (`host:port`); `Ok` with the status JSON when it answers.
pub async fn status_ping(address: &str, timeout: Duration) -> Result<String, PingError> {
    tokio::time::timeout(timeout, ping(address))
        .await
        .map_err(|_| PingError::Timeout(timeout))?
}

async fn ping(address: &str) -> Result<String, PingError> {
    let (host, port) = address
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>().ok()?,
            ))
        })
        .ok_or_else(|| PingError::BadAddress(address.to_owned()))?;
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let mut out = Vec::with_capacity(64);
    out.extend(frame(&handshake(host, port)));
    out.extend(frame(&[0x00])); // status request
    stream.write_all(&out).await?;
    let len = read_varint(&mut stream).await?;
    let len = usize::try_from(len).map_err(|_| PingError::Malformed("negative length"))?;
    if len == 0 || len > MAX_RESPONSE {
        return Err(PingError::Malformed("packet length out of range"));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    parse_status_response(&body)
}

fn handshake(host: &str, port: u16) -> Vec<u8> {
    let mut p = vec![0x00]; // packet id
    put_varint(&mut p, -1); // protocol version: "any", as pingers do
    put_varint(&mut p, host.len() as i32);
    p.extend_from_slice(host.as_bytes());
    p.extend_from_slice(&port.to_be_bytes());
    put_varint(&mut p, 1); // next state: status
    p
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 5);
    put_varint(&mut f, payload.len() as i32);
    f.extend_from_slice(payload);
    f
}

fn put_varint(out: &mut Vec<u8>, v: i32) {
    let mut v = v as u32;
    loop {
        if v & !0x7f == 0 {
            out.push(v as u8);
            return;
        }
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
}

async fn read_varint(s: &mut TcpStream) -> Result<i32, PingError> {
    let mut v: u32 = 0;
    for i in 0..5 {
        let b = s.read_u8().await?;
        v |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v as i32);
        }
    }
    Err(PingError::Malformed("varint too long"))
}

/// Packet id 0x00 followed by a length-prefixed JSON string.
fn parse_status_response(body: &[u8]) -> Result<String, PingError> {
    let (id, rest) = split_varint(body).ok_or(PingError::Malformed("no packet id"))?;
    if id != 0 {
        return Err(PingError::Malformed("not a status response"));
    }
    let (len, rest) = split_varint(rest).ok_or(PingError::Malformed("no string length"))?;
    let len = usize::try_from(len).map_err(|_| PingError::Malformed("negative string length"))?;
    let json = rest
        .get(..len)
        .ok_or(PingError::Malformed("truncated status JSON"))?;
    String::from_utf8(json.to_vec()).map_err(|_| PingError::Malformed("status JSON is not UTF-8"))
}

fn split_varint(b: &[u8]) -> Option<(i32, &[u8])> {
    let mut v: u32 = 0;
    for (i, byte) in b.iter().enumerate().take(5) {
        v |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v as i32, &b[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 255, 25565, 2_097_151, i32::MAX, -1] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(split_varint(&b), Some((v, &[][..])), "{v}");
        }
        assert_eq!(split_varint(&[0x80, 0x80]), None);
    }

    #[test]
    fn status_responses_are_parsed_or_refused() {
        let json = br#"{"version":{"name":"1.21","protocol":767}}"#;
        let mut ok = vec![0x00];
        put_varint(&mut ok, json.len() as i32);
        ok.extend_from_slice(json);
        assert!(parse_status_response(&ok).is_ok());
        assert!(parse_status_response(&[0x01, 0x00]).is_err());
        assert!(parse_status_response(&[0x00, 0x05, b'{']).is_err());
        assert!(parse_status_response(&[]).is_err());
    }
}
