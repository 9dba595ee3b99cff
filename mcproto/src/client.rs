//! The one async status-ping client: the edge fetching a backend's status for its cache, and
//! syncd's readiness check of a woken server, both go through [`fetch_status`].
//!
//! One exchange: (optionally a PROXY v2 header), Handshake with next state Status, Status
//! Request, then the Status Response read into a buffer capped at [`MAX_STATUS_BYTES`], all
//! under one overall deadline that trickled bytes do not extend.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{encode_handshake, encode_proxy_v2, encode_status_request, parse_status_response};
use crate::{Handshake, NextState};

/// Largest status JSON accepted from a server (favicons are big).
pub const MAX_STATUS_BYTES: usize = 256 * 1024;

/// Where and how to ask a server for its status.
#[derive(Debug, Clone)]
pub struct StatusTarget {
    /// `host:port` to connect to.
    pub address: String,
    /// The handshake to send (its next state should be [`NextState::Status`]).
    pub handshake: Handshake,
    /// PROXY v2 (source, destination) to send first, when the server expects one.
    pub proxy: Option<(SocketAddr, SocketAddr)>,
}

impl StatusTarget {
    /// A plain ping of `address` (`host:port`, IPv6 hosts in brackets) as a server-list
    /// pinger sends it: protocol version -1, the host and port of the address itself.
    pub fn ping(address: &str) -> Result<Self, StatusError> {
        let (host, port) = address
            .rsplit_once(':')
            .and_then(|(h, p)| {
                Some((
                    h.trim_start_matches('[').trim_end_matches(']'),
                    p.parse::<u16>().ok()?,
                ))
            })
            .ok_or_else(|| StatusError::BadAddress(address.to_owned()))?;
        Ok(Self {
            address: address.to_owned(),
            handshake: Handshake {
                protocol_version: -1,
                server_address: host.to_owned(),
                server_port: port,
                next_state: NextState::Status,
            },
            proxy: None,
        })
    }
}

/// Why a status exchange gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("invalid address {0:?} (want host:port)")]
    BadAddress(String),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("no status answer within {0:?}")]
    Timeout(Duration),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("server closed before answering")]
    Closed,
    #[error("bad answer: {0}")]
    Protocol(&'static str),
}

/// One status exchange with `target`, bounded by `timeout` overall; the status JSON.
pub async fn fetch_status(target: &StatusTarget, timeout: Duration) -> Result<String, StatusError> {
    tokio::time::timeout(timeout, exchange(target))
        .await
        .map_err(|_| StatusError::Timeout(timeout))?
}

/// A plain server-list ping of `address` (see [`StatusTarget::ping`]): syncd's readiness check.
/// A modded server that accepts TCP while still loading does not answer it.
pub async fn ping(address: &str, timeout: Duration) -> Result<String, StatusError> {
    fetch_status(&StatusTarget::ping(address)?, timeout).await
}

async fn exchange(target: &StatusTarget) -> Result<String, StatusError> {
    let mut s = TcpStream::connect(&target.address)
        .await
        .map_err(StatusError::Connect)?;
    let _ = s.set_nodelay(true);
    let mut out = Vec::with_capacity(300);
    if let Some((src, dst)) = target.proxy {
        out.extend(encode_proxy_v2(src, dst));
    }
    out.extend(encode_handshake(&target.handshake));
    out.extend(encode_status_request());
    s.write_all(&out).await?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        match parse_status_response(&buf, MAX_STATUS_BYTES) {
            Ok(Some((json, _))) => return Ok(json),
            Ok(None) => {}
            Err(e) => return Err(StatusError::Protocol(e.reason())),
        }
        if buf.len() > MAX_STATUS_BYTES + 16 {
            return Err(StatusError::Protocol("status too large"));
        }
        let n = s.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(StatusError::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_target_takes_host_and_port_from_the_address() {
        let t = StatusTarget::ping("[::1]:25566").expect("valid");
        assert_eq!(t.handshake.server_address, "::1");
        assert_eq!(t.handshake.server_port, 25566);
        assert_eq!(t.handshake.protocol_version, -1);
        assert_eq!(t.handshake.next_state, NextState::Status);
        for bad in ["mc.example.com", "host:port", "host:70000", ""] {
            assert!(
                matches!(StatusTarget::ping(bad), Err(StatusError::BadAddress(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_server_that_answers_garbage_or_closes_is_an_error_not_a_hang() {
        for answer in [
            &b""[..],
            &[0x02, 0x01, 0x00][..],
            &[0xff, 0xff, 0xff, 0xff, 0xff][..],
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut first = [0u8; 64];
                let _ = s.read(&mut first).await;
                let _ = s.write_all(answer).await;
            });
            let target = StatusTarget::ping(&addr).expect("valid");
            let got = fetch_status(&target, Duration::from_secs(30)).await;
            assert!(
                matches!(got, Err(StatusError::Closed | StatusError::Protocol(_))),
                "{answer:?}: {got:?}"
            );
            server.await.expect("server task");
        }
    }
}
