//! PROXY protocol v1 (text) and v2 (binary) headers, as sent by HAProxy, TCPShield, cloud
//! load balancers and the like ahead of the player's bytes.
//!
//! Parsing is delegated to the `ppp` crate; this module adds the streaming contract the edge
//! needs (detect early, `Ok(None)` while incomplete, a size cap) and a dependency-free v2
//! encoder for headers we send to backends.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use ppp::{v1, v2, PartialResult};

/// The v2 binary signature.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 text prefix (with its separating space).
pub const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The longest v1 header the spec allows.
pub const MAX_V1_BYTES: usize = 107;
/// Cap on a v2 header (16-byte fixed part plus addresses and TLVs). Real ones are a few
/// hundred bytes at most; the format would allow 64 KiB, which we do not buffer.
pub const MAX_PROXY_HEADER_BYTES: usize = 4096;
const V2_FIXED: usize = 16;

/// Addresses from a PROXY header. `None` for `UNKNOWN` (v1), `LOCAL` (v2, e.g. a health
/// check) and address families other than IPv4/IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("connection does not start with a PROXY protocol header")]
    NotProxyHeader,
    #[error("PROXY protocol v2 header of {0} bytes exceeds the {MAX_PROXY_HEADER_BYTES}-byte cap")]
    TooLarge(usize),
    #[error("invalid PROXY protocol v{version} header: {detail}")]
    Invalid { version: u8, detail: String },
}

impl ProxyHeaderError {
    /// Short snake_case label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotProxyHeader => "not_proxy_header",
            Self::TooLarge(_) => "proxy_header_too_large",
            Self::Invalid { .. } => "proxy_header_invalid",
        }
    }
}

/// `Some(true)`: `buf` starts with a v1 or v2 header signature. `Some(false)`: it cannot be
/// one. `None`: too few bytes to tell (`buf` is a prefix of a signature).
///
/// A Minecraft handshake can never look like either: its second byte is packet id `0x00`
/// (or `0x01` for a legacy ping), never `R` or `\n`.
pub fn detect_proxy_header(buf: &[u8]) -> Option<bool> {
    let matches = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    let v1 = matches(V1_PREFIX);
    let v2 = matches(V2_SIGNATURE);
    if (v1 && buf.len() >= V1_PREFIX.len()) || (v2 && buf.len() >= V2_SIGNATURE.len()) {
        Some(true)
    } else if v1 || v2 {
        None
    } else {
        Some(false)
    }
}

/// Parses a v1 or v2 header from the start of `buf`: the addresses and the header length
/// (the player's bytes start right after it). `Ok(None)` while incomplete.
pub fn parse_proxy_header(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    match detect_proxy_header(buf) {
        None => Ok(None),
        Some(false) => Err(ProxyHeaderError::NotProxyHeader),
        Some(true) if buf.starts_with(V2_SIGNATURE) => parse_v2(buf),
        Some(true) => parse_v1(buf),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    if buf.len() >= V2_FIXED {
        let total = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if total > MAX_PROXY_HEADER_BYTES {
            return Err(ProxyHeaderError::TooLarge(total));
        }
    }
    let parsed = v2::Header::try_from(buf);
    if parsed.is_incomplete() {
        return Ok(None);
    }
    let header = parsed.map_err(|e| invalid(2, e))?;
    let (source, destination) = match (header.command, header.addresses) {
        (v2::Command::Local, _) => (None, None),
        (v2::Command::Proxy, v2::Addresses::IPv4(a)) => (
            Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            Some(SocketAddr::new(
                a.destination_address.into(),
                a.destination_port,
            )),
        ),
        (v2::Command::Proxy, v2::Addresses::IPv6(a)) => (
            Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            Some(SocketAddr::new(
                a.destination_address.into(),
                a.destination_port,
            )),
        ),
        (v2::Command::Proxy, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => (None, None),
    };
    Ok(Some((
        ProxyHeader {
            source,
            destination,
        },
        header.len(),
    )))
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    // ppp judges a cut-off line as invalid (e.g. a half-sent port), so wait for the line end.
    let Some(crlf) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= MAX_V1_BYTES {
            return Err(invalid(1, "no CRLF within 107 bytes"));
        }
        return Ok(None);
    };
    let line = &buf[..crlf + 2];
    if line.len() > MAX_V1_BYTES {
        return Err(invalid(1, "header line longer than 107 bytes"));
    }
    let parsed = v1::Header::try_from(line);
    if parsed.is_incomplete() {
        // ppp reports missing fields as "incomplete"; the line has ended, so they never come.
        return Err(invalid(1, "header line is missing fields"));
    }
    let header = parsed.map_err(|e| invalid(1, e))?;
    let (source, destination) = match header.addresses {
        v1::Addresses::Unknown => (None, None),
        v1::Addresses::Tcp4(a) => (
            Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            Some(SocketAddr::new(
                a.destination_address.into(),
                a.destination_port,
            )),
        ),
        v1::Addresses::Tcp6(a) => (
            Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            Some(SocketAddr::new(
                a.destination_address.into(),
                a.destination_port,
            )),
        ),
    };
    Ok(Some((
        ProxyHeader {
            source,
            destination,
        },
        header.header.len(),
    )))
}

fn invalid(version: u8, e: impl std::fmt::Display) -> ProxyHeaderError {
    ProxyHeaderError::Invalid {
        version,
        detail: e.to_string(),
    }
}

/// A v2 `PROXY` header for a TCP connection from `source` to `destination`. Mixed families
/// are sent as IPv6 with the IPv4 address mapped.
pub fn encode_proxy_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(V2_FIXED + 36);
    out.extend_from_slice(V2_SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A v1 header line (for tests and test peers).
pub fn encode_proxy_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            format!(
                "PROXY TCP4 {s} {d} {} {}\r\n",
                source.port(),
                destination.port()
            )
        }
        (s, d) => format!(
            "PROXY TCP6 {} {} {} {}\r\n",
            v6(s),
            v6(d),
            source.port(),
            destination.port()
        ),
    }
    .into_bytes()
}
