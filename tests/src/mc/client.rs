//! Client helpers: a player's side of the protocol against an edge (or a backend), with every
//! read bounded by [`IO_TIMEOUT`] so a broken edge fails a test instead of hanging it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::bulk::{self, BulkReport};
use super::wire::{
    component_text, decode_legacy_reply, handshake_packet, legacy_1_6_bytes, login_start_packet,
    ping_packet, plugin_response_packet, split_frame, Fields, LegacyReply,
};

/// The protocol number the client helpers send unless told otherwise (1.21.4).
pub const DEFAULT_PROTOCOL: i32 = 769;
/// Upper bound for every client-helper read, so a broken edge fails a test instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A status answer and the ping round-trip time.
#[derive(Debug, Clone)]
pub struct StatusReply {
    pub json: String,
    pub latency: Duration,
}

impl StatusReply {
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.json).unwrap_or(serde_json::Value::Null)
    }

    /// Plain text of the description.
    pub fn motd(&self) -> String {
        component_text(&self.value()["description"])
    }

    pub fn protocol(&self) -> Option<i64> {
        self.value()["version"]["protocol"].as_i64()
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Full server-list ping: handshake + status request in one write, then ping/pong.
pub async fn status_ping(addr: SocketAddr, hostname: &str, protocol: i32) -> Result<StatusReply> {
    status_ping_after(addr, &[], hostname, protocol).await
}

/// [`status_ping`] with `prefix` (a PROXY header, as a load balancer sends) first, in the same
/// write as the handshake.
pub async fn status_ping_after(
    addr: SocketAddr,
    prefix: &[u8],
    hostname: &str,
    protocol: i32,
) -> Result<StatusReply> {
    let mut conn = McConn::connect(addr).await?;
    let mut first = prefix.to_vec();
    first.extend(handshake_packet(protocol, hostname, 25565, 1));
    first.extend_from_slice(&mcproto::encode_status_request());
    conn.send(&first).await?;
    let (id, body) = conn.read_packet().await?;
    ensure!(id == 0x00, "status response id {id}");
    let json = Fields::new(&body).string("status response")?;
    let payload: i64 = 0x0123_4567_89ab_cdef;
    let started = Instant::now();
    conn.send(&ping_packet(payload)).await?;
    let pong = conn.read_pong().await?;
    let latency = started.elapsed();
    ensure!(pong == payload, "pong {pong:#x} != ping {payload:#x}");
    Ok(StatusReply { json, latency })
}

/// A ping without a status request first (allowed by the protocol): returns the pong payload.
pub async fn ping_only(
    addr: SocketAddr,
    hostname: &str,
    protocol: i32,
    payload: i64,
) -> Result<i64> {
    let mut conn = McConn::connect(addr).await?;
    let mut first = handshake_packet(protocol, hostname, 25565, 1);
    first.extend_from_slice(&ping_packet(payload));
    conn.send(&first).await?;
    conn.read_pong().await
}

/// Logs in with `hostname` (sent verbatim: Forge markers and all) as `username`, with the
/// handshake and Login Start in one write. The edge then either splices (talk to the
/// backend through the returned connection) or sends a Disconnect (`read_disconnect`).
pub async fn login(addr: SocketAddr, hostname: &str, username: &str) -> Result<McConn> {
    login_with(addr, DEFAULT_PROTOCOL, hostname, username, &[]).await
}

/// `login` with a chosen protocol and extra bytes appended to the same first write.
pub async fn login_with(
    addr: SocketAddr,
    protocol: i32,
    hostname: &str,
    username: &str,
    extra: &[u8],
) -> Result<McConn> {
    let mut conn = McConn::connect(addr).await?;
    let mut first = handshake_packet(protocol, hostname, 25565, 2);
    first.extend_from_slice(&login_start_packet(protocol, username));
    first.extend_from_slice(extra);
    conn.sent_first = first.clone();
    conn.send(&first).await?;
    Ok(conn)
}

/// A login whose client answers the edge's Login Plugin Requests in the background while
/// it is held (what a 1.13+ client does), until [`AnsweringLogin::into_conn`].
pub struct AnsweringLogin {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(McConn, usize)>>,
    /// The first write (handshake + Login Start), as in [`McConn::sent_first`].
    pub sent_first: Vec<u8>,
}

/// `login_with`, then answer plugin requests in the background (see [`AnsweringLogin`]).
pub async fn login_answering(
    addr: SocketAddr,
    protocol: i32,
    hostname: &str,
    username: &str,
) -> Result<AnsweringLogin> {
    let mut conn = login_with(addr, protocol, hostname, username, &[]).await?;
    let sent_first = conn.sent_first.clone();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut answered = 0;
        loop {
            tokio::select! {
                biased;
                _ = &mut stopped => break,
                r = conn.answer_next_plugin_request() => {
                    if !r? {
                        break;
                    }
                    answered += 1;
                }
            }
        }
        Ok((conn, answered))
    });
    Ok(AnsweringLogin {
        stop,
        task,
        sent_first,
    })
}

impl AnsweringLogin {
    /// Stop answering (call once the backend got the login, or to read a Disconnect) and
    /// return the connection and how many requests were answered. Bytes that were not a
    /// plugin request stay unread in the connection.
    pub async fn into_conn(self) -> Result<(McConn, usize)> {
        let _ = self.stop.send(());
        self.task.await.context("answering task")?
    }
}

/// Opens a connection and sends `bytes` as they are (hostile input, PROXY headers…).
pub async fn send_bytes(addr: SocketAddr, bytes: &[u8]) -> Result<McConn> {
    let mut conn = McConn::connect(addr).await?;
    conn.send(bytes).await?;
    Ok(conn)
}

/// A Login Plugin Request as the client read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRequest {
    pub message_id: i32,
    pub channel: String,
    pub data: Vec<u8>,
}

/// A client connection with a read buffer.
pub struct McConn {
    stream: TcpStream,
    pending: Vec<u8>,
    /// The first write of `login`/`login_with` (what the backend must see byte for byte).
    pub sent_first: Vec<u8>,
}

impl McConn {
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        Ok(Self {
            stream: connect(addr).await?,
            pending: Vec::new(),
            sent_first: Vec::new(),
        })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Sends `bytes` one at a time with `gap` between them (slow-loris handshakes).
    pub async fn send_slowly(&mut self, bytes: &[u8], gap: Duration) -> Result<()> {
        for b in bytes {
            self.stream.write_all(&[*b]).await?;
            tokio::time::sleep(gap).await;
        }
        Ok(())
    }

    async fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut chunk))
            .await
            .context("read timed out")??;
        ensure!(
            n > 0,
            "connection closed (got {} unread bytes)",
            self.pending.len()
        );
        self.pending.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Reads one packet: (id, fields).
    pub async fn read_packet(&mut self) -> Result<(i32, Vec<u8>)> {
        loop {
            if let Some((id, body, len)) = split_frame(&self.pending)? {
                self.pending.drain(..len);
                return Ok((id, body));
            }
            self.fill().await?;
        }
    }

    pub async fn read_pong(&mut self) -> Result<i64> {
        let (id, body) = self.read_packet().await?;
        ensure!(
            id == 0x01 && body.len() == 8,
            "not a pong: id {id}, {} bytes",
            body.len()
        );
        Ok(i64::from_be_bytes(body[..8].try_into()?))
    }

    /// Reads a login Disconnect and returns the plain text of its message. Login Plugin
    /// Requests before it (a held login kept alive) are answered "not understood", as a
    /// vanilla client does.
    pub async fn read_disconnect(&mut self) -> Result<String> {
        let (id, body) = loop {
            let (id, body) = self.read_packet().await?;
            if id != 0x04 {
                break (id, body);
            }
            let message_id = Fields::new(&body).varint("message id")?;
            self.send(&plugin_response_packet(message_id, None)).await?;
        };
        ensure!(id == 0x00, "not a login disconnect: id {id}");
        let json = Fields::new(&body).string("disconnect string")?;
        let v: serde_json::Value = serde_json::from_str(&json).context("disconnect is not JSON")?;
        Ok(component_text(&v))
    }

    /// `read_disconnect` for an answer that may take longer than one read's
    /// timeout to start (a login held while its server wakes): waits up to
    /// `timeout` for the first byte.
    pub async fn read_disconnect_within(&mut self, timeout: Duration) -> Result<String> {
        if self.pending.is_empty() {
            tokio::time::timeout(timeout, self.stream.readable())
                .await
                .context("no answer in time")??;
        }
        self.read_disconnect().await
    }

    /// Waits for the next complete packet and, when it is a Login Plugin Request, answers it
    /// "not understood" and returns true. Anything else stays unread (false). No timeout: the
    /// caller bounds it.
    pub async fn answer_next_plugin_request(&mut self) -> Result<bool> {
        loop {
            if let Some((id, body, len)) = split_frame(&self.pending)? {
                if id != 0x04 {
                    return Ok(false);
                }
                self.pending.drain(..len);
                let message_id = Fields::new(&body).varint("message id")?;
                self.send(&plugin_response_packet(message_id, None)).await?;
                return Ok(true);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            ensure!(n > 0, "connection closed while held");
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads one Login Plugin Request (login 0x04: message id, channel, data) within
    /// `timeout`; any other packet is an error.
    pub async fn read_plugin_request(&mut self, timeout: Duration) -> Result<PluginRequest> {
        let (id, body) = tokio::time::timeout(timeout, self.read_packet())
            .await
            .context("no packet within the read timeout")??;
        ensure!(id == 0x04, "not a login plugin request: id {id:#04x}");
        let mut f = Fields::new(&body);
        Ok(PluginRequest {
            message_id: f.varint("message id")?,
            channel: f.string("channel")?,
            data: f.rest().to_vec(),
        })
    }

    /// Plays a vanilla 1.13+ client waiting in the login state whose network read timeout
    /// is `read_timeout` (vanilla: 30 s): every packet must come within it, every Login
    /// Plugin Request is answered "not understood", anything else fails. Returns the
    /// requests answered once `until` resolves (e.g. the backend got the login).
    pub async fn answer_plugin_requests_until<F: std::future::Future>(
        &mut self,
        read_timeout: Duration,
        until: F,
    ) -> Result<Vec<PluginRequest>> {
        tokio::pin!(until);
        let mut answered = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = &mut until => return Ok(answered),
                r = self.read_plugin_request(read_timeout) => {
                    let req = r.with_context(|| format!("after {} answered requests", answered.len()))?;
                    self.send(&plugin_response_packet(req.message_id, None)).await?;
                    answered.push(req);
                }
            }
        }
    }

    /// Reads exactly `n` bytes.
    pub async fn read_exact(&mut self, n: usize) -> Result<Vec<u8>> {
        while self.pending.len() < n {
            self.fill().await?;
        }
        Ok(self.pending.drain(..n).collect())
    }

    /// Reads until the peer closes (bounded by `timeout`); returns everything read.
    pub async fn read_until_close(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        let mut out = std::mem::take(&mut self.pending);
        tokio::time::timeout(timeout, self.stream.read_to_end(&mut out))
            .await
            .context("peer did not close in time")??;
        Ok(out)
    }

    /// True if the peer closes (EOF or reset) within `timeout`, discarding any bytes.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let mut sink = Vec::new();
        tokio::time::timeout(timeout, self.stream.read_to_end(&mut sink))
            .await
            .is_ok()
    }

    pub async fn shutdown_write(&mut self) -> Result<()> {
        self.stream.shutdown().await?;
        Ok(())
    }

    /// Bulk exchange against a [`LoginMode::Bulk`] backend: sends `send` random bytes from
    /// `seed` and half-closes, while reading until EOF. Returns what it sent and received.
    pub async fn bulk_exchange(self, send: u64, seed: u64) -> Result<BulkReport> {
        let (mut read, mut write) = self.stream.into_split();
        bulk::exchange(&mut read, &mut write, &self.pending, send, seed).await
    }

    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.stream.local_addr()?)
    }
}

/// Beta 1.8 – 1.3: `FE`.
pub async fn legacy_ping_bare(addr: SocketAddr) -> Result<LegacyReply> {
    legacy_exchange(addr, &[0xfe]).await
}

/// 1.4 – 1.5: `FE 01`.
pub async fn legacy_ping_1_4(addr: SocketAddr) -> Result<LegacyReply> {
    legacy_exchange(addr, &[0xfe, 0x01]).await
}

/// 1.6: `FE 01 FA` + `MC|PingHost` carrying the hostname and port.
pub async fn legacy_ping_1_6(
    addr: SocketAddr,
    hostname: &str,
    port: u16,
    protocol: u8,
) -> Result<LegacyReply> {
    legacy_exchange(addr, &legacy_1_6_bytes(hostname, port, protocol)).await
}

async fn legacy_exchange(addr: SocketAddr, bytes: &[u8]) -> Result<LegacyReply> {
    let mut conn = send_bytes(addr, bytes).await?;
    let head = conn.read_exact(3).await?;
    ensure!(
        head[0] == 0xff,
        "legacy answer starts with {:#04x}",
        head[0]
    );
    let units = usize::from(u16::from_be_bytes([head[1], head[2]]));
    let body = conn.read_exact(units * 2).await?;
    decode_legacy_reply(&body)
}
