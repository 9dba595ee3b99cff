//! Minecraft-protocol test peers: a backend server (`McBackend`) and client helpers.
//!
//! This is a second, deliberately independent implementation of the few packets involved
//! (VarInt framing, handshake, status, ping, Login Start, login Disconnect, Login Plugin
//! Request and Response, legacy pings, PROXY headers). It shares no code with `mcproto`, so a bug in one cannot hide in
//! the other. Test support: it panics on misuse, and returns `anyhow` errors for anything a
//! test may want to assert on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Bytes of a connection kept verbatim in a [`ConnRecord`] (the rest is only counted and hashed).
pub const RECORD_CAP: usize = 1 << 20;
/// The protocol number the client helpers send unless told otherwise (1.21.4).
pub const DEFAULT_PROTOCOL: i32 = 769;
/// Upper bound for every client-helper read, so a broken edge fails a test instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Wire helpers (independent of mcproto)
// ---------------------------------------------------------------------------------------

/// Appends a VarInt.
pub fn put_varint(out: &mut Vec<u8>, value: i32) {
    let mut v = value as u32;
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a protocol String (VarInt byte length + UTF-8).
pub fn put_string(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as i32);
    out.extend_from_slice(s.as_bytes());
}

/// Prefixes a packet body (id + fields) with its length.
pub fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, body.len() as i32);
    out.extend_from_slice(body);
    out
}

/// A framed Handshake packet.
pub fn handshake_packet(protocol: i32, address: &str, port: u16, next_state: i32) -> Vec<u8> {
    let mut body = vec![0x00];
    put_varint(&mut body, protocol);
    put_string(&mut body, address);
    body.extend_from_slice(&port.to_be_bytes());
    put_varint(&mut body, next_state);
    framed(&body)
}

/// A framed Login Start as a client of `protocol` sends it: the name; 1.19–1.19.2 (759–760)
/// add an (empty) signature-data flag; 1.19.1–1.20.1 (760–763) a has-UUID flag and the
/// UUID; 1.20.2+ (764) the UUID alone. The UUID is [`player_uuid`] of the name.
pub fn login_start_packet(protocol: i32, username: &str) -> Vec<u8> {
    let mut body = vec![0x00];
    put_string(&mut body, username);
    if (759..=760).contains(&protocol) {
        body.push(0x00);
    }
    if (760..=763).contains(&protocol) {
        body.push(0x01);
    }
    if protocol >= 760 {
        body.extend_from_slice(&player_uuid_bytes(username));
    }
    framed(&body)
}

fn player_uuid_bytes(username: &str) -> [u8; 16] {
    let digest = Sha256::digest(username.as_bytes());
    let mut u = [0u8; 16];
    u.copy_from_slice(&digest[..16]);
    u
}

/// The UUID [`login_start_packet`] sends for `username` (protocols ≥ 760), hyphenated.
pub fn player_uuid(username: &str) -> String {
    let hex: String = player_uuid_bytes(username)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Reads a VarInt from `buf` at `*pos`, `None` if cut short.
fn get_varint(buf: &[u8], pos: &mut usize) -> Option<i32> {
    let mut value: u32 = 0;
    for i in 0..5 {
        let b = *buf.get(*pos + i)?;
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *pos += i + 1;
            return Some(value as i32);
        }
    }
    None
}

fn get_string(buf: &[u8], pos: &mut usize) -> Option<String> {
    let len = usize::try_from(get_varint(buf, pos)?).ok()?;
    let bytes = buf.get(*pos..*pos + len)?;
    *pos += len;
    String::from_utf8(bytes.to_vec()).ok()
}

/// If `buf` starts with a complete frame: (packet id, fields, frame length).
fn split_frame(buf: &[u8]) -> Option<(i32, Vec<u8>, usize)> {
    let mut pos = 0;
    let len = usize::try_from(get_varint(buf, &mut pos)?).ok()?;
    let end = pos + len;
    let body = buf.get(pos..end)?;
    let mut p = 0;
    let id = get_varint(body, &mut p)?;
    Some((id, body[p..].to_vec(), end))
}

fn utf16be(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

/// A PROXY protocol header as the test code parses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyInfo {
    pub version: u8,
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    pub raw: Vec<u8>,
}

/// Parses a PROXY v1 or v2 header at the start of `buf`: `Ok(None)` if incomplete.
pub fn parse_proxy(buf: &[u8]) -> Result<Option<ProxyInfo>> {
    const SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    if buf.len() < SIG.len().min(6) {
        return Ok(None);
    }
    if buf.starts_with(b"PROXY ") {
        let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
            ensure!(buf.len() < 108, "v1 header without CRLF");
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[..end])?;
        let parts: Vec<&str> = line.split(' ').collect();
        let (source, destination) = match parts.as_slice() {
            ["PROXY", "UNKNOWN", ..] => (None, None),
            ["PROXY", "TCP4" | "TCP6", s, d, sp, dp] => (
                Some(SocketAddr::new(s.parse()?, sp.parse()?)),
                Some(SocketAddr::new(d.parse()?, dp.parse()?)),
            ),
            _ => bail!("bad v1 header {line:?}"),
        };
        return Ok(Some(ProxyInfo {
            version: 1,
            source,
            destination,
            raw: buf[..end + 2].to_vec(),
        }));
    }
    if buf.len() < 16 {
        ensure!(
            SIG.starts_with(buf) || buf.starts_with(SIG),
            "not a PROXY header"
        );
        return Ok(None);
    }
    ensure!(buf.starts_with(SIG), "not a PROXY header");
    ensure!(buf[12] >> 4 == 2, "bad v2 version");
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if buf.len() < len {
        return Ok(None);
    }
    let a = &buf[16..len];
    let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
    let (source, destination) = match (buf[12] & 0x0f, buf[13] >> 4) {
        (0, _) => (None, None),
        (1, 1) if a.len() >= 12 => {
            let s: [u8; 4] = a[0..4].try_into()?;
            let d: [u8; 4] = a[4..8].try_into()?;
            (
                Some(SocketAddr::from((s, port(8)))),
                Some(SocketAddr::from((d, port(10)))),
            )
        }
        (1, 2) if a.len() >= 36 => {
            let s: [u8; 16] = a[0..16].try_into()?;
            let d: [u8; 16] = a[16..32].try_into()?;
            (
                Some(SocketAddr::from((s, port(32)))),
                Some(SocketAddr::from((d, port(34)))),
            )
        }
        (1, _) => (None, None),
        (c, _) => bail!("bad v2 command {c}"),
    };
    Ok(Some(ProxyInfo {
        version: 2,
        source,
        destination,
        raw: buf[..len].to_vec(),
    }))
}

// ---------------------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------------------

/// What the backend does after a Login Start.
#[derive(Debug, Clone)]
pub enum LoginMode {
    /// Echo every byte after the Login Start back, until the client half-closes.
    Echo,
    /// Send `send` pseudo-random bytes (from `seed`) then half-close, while reading and hashing
    /// everything the client sends until EOF. Reported in [`ConnRecord::bulk`].
    Bulk { send: u64, seed: u64 },
    /// Answer with a login Disconnect carrying this text, then close.
    Disconnect(String),
}

/// How a [`McBackend`] behaves.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Shown in the status description (and the legacy answer) unless `status_json` is set.
    pub motd: String,
    /// Sent verbatim as the status response instead of the generated one.
    pub status_json: Option<String>,
    pub version_name: String,
    pub online: i64,
    pub max: i64,
    pub login: LoginMode,
    /// Expect a PROXY (v1 or v2) header before the Minecraft bytes on every connection.
    pub expect_proxy_header: bool,
    /// Append " @ <hostname from the handshake>" to the MOTD (a hub answering per forced host).
    pub motd_per_hostname: bool,
    /// Hold every status answer until this turns true.
    pub status_gate: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            motd: "automc test backend".into(),
            status_json: None,
            version_name: "automc-test".into(),
            online: 0,
            max: 20,
            login: LoginMode::Echo,
            expect_proxy_header: false,
            motd_per_hostname: false,
            status_gate: None,
        }
    }
}

impl BackendOptions {
    pub fn with_motd(motd: &str) -> Self {
        Self {
            motd: motd.into(),
            ..Self::default()
        }
    }
}

/// The handshake a backend received, parsed by the test code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenHandshake {
    pub protocol: i32,
    pub address: String,
    pub port: u16,
    pub next_state: i32,
}

/// What a bulk connection sent and received (see [`LoginMode::Bulk`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkReport {
    pub sent: u64,
    pub sent_sha256: String,
    pub received: u64,
    pub received_sha256: String,
}

/// Everything a backend saw on one connection.
#[derive(Debug, Clone, Default)]
pub struct ConnRecord {
    pub peer: Option<SocketAddr>,
    pub proxy: Option<ProxyInfo>,
    pub legacy: bool,
    pub handshake: Option<SeenHandshake>,
    pub username: Option<String>,
    /// The Minecraft bytes received from the first one on (after any PROXY header), handshake
    /// and Login Start included, up to [`RECORD_CAP`].
    pub received: Vec<u8>,
    pub received_total: u64,
    pub bulk: Option<BulkReport>,
    pub closed: bool,
    pub error: Option<String>,
}

struct BackendState {
    opts: BackendOptions,
    accepted: AtomicUsize,
    status_answers: AtomicUsize,
    /// Status requests received and not answered yet, and the most ever at once.
    status_in_flight: AtomicUsize,
    status_in_flight_max: AtomicUsize,
    status_requests: AtomicUsize,
    conns: Mutex<Vec<Arc<Mutex<ConnRecord>>>>,
    changed: tokio::sync::Notify,
}

/// A small Minecraft server on 127.0.0.1:0 that records what it receives.
pub struct McBackend {
    addr: SocketAddr,
    state: Arc<BackendState>,
    shutdown: CancellationToken,
}

impl McBackend {
    pub async fn start(opts: BackendOptions) -> Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?, opts).await
    }

    pub async fn start_on(listen: SocketAddr, opts: BackendOptions) -> Result<Self> {
        let listener = TcpListener::bind(listen).await.context("bind backend")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(BackendState {
            opts,
            accepted: AtomicUsize::new(0),
            status_answers: AtomicUsize::new(0),
            status_in_flight: AtomicUsize::new(0),
            status_in_flight_max: AtomicUsize::new(0),
            status_requests: AtomicUsize::new(0),
            conns: Mutex::new(Vec::new()),
            changed: tokio::sync::Notify::new(),
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(accept_loop(listener, state.clone(), shutdown.clone()));
        Ok(Self {
            addr,
            state,
            shutdown,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Status responses sent so far.
    pub fn status_answers(&self) -> usize {
        self.state.status_answers.load(Ordering::SeqCst)
    }

    /// Status requests received so far (answered or held at the gate).
    pub fn status_requests(&self) -> usize {
        self.state.status_requests.load(Ordering::SeqCst)
    }

    /// The most status requests this backend was ever answering at once.
    pub fn most_concurrent_status_requests(&self) -> usize {
        self.state.status_in_flight_max.load(Ordering::SeqCst)
    }

    /// Snapshots of every connection's record, in accept order.
    pub fn connections(&self) -> Vec<ConnRecord> {
        let conns = self.state.conns.lock().expect("lock");
        conns
            .iter()
            .map(|c| c.lock().expect("lock").clone())
            .collect()
    }

    /// Records of connections that sent a Login Start.
    pub fn logins(&self) -> Vec<ConnRecord> {
        self.connections()
            .into_iter()
            .filter(|c| c.username.is_some())
            .collect()
    }

    /// Waits until `pred` holds for the connection records, or fails after `timeout`.
    pub async fn wait_for<F>(&self, timeout: Duration, mut pred: F) -> Result<Vec<ConnRecord>>
    where
        F: FnMut(&[ConnRecord]) -> bool,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.state.changed.notified();
            let conns = self.connections();
            if pred(&conns) {
                return Ok(conns);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(
                !left.is_zero(),
                "backend condition not met within {timeout:?}: {conns:#?}"
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }

    /// Waits for `n` logins and returns their records.
    pub async fn wait_for_logins(&self, n: usize, timeout: Duration) -> Result<Vec<ConnRecord>> {
        let conns = self
            .wait_for(timeout, |c| {
                c.iter().filter(|r| r.username.is_some()).count() >= n
            })
            .await?;
        Ok(conns.into_iter().filter(|c| c.username.is_some()).collect())
    }

    /// Waits for `n` finished bulk exchanges and returns their reports.
    pub async fn wait_for_bulk(&self, n: usize, timeout: Duration) -> Result<Vec<BulkReport>> {
        let conns = self
            .wait_for(timeout, |c| {
                c.iter().filter(|r| r.bulk.is_some()).count() >= n
            })
            .await?;
        Ok(conns.into_iter().filter_map(|c| c.bulk).collect())
    }

    /// Stops accepting and ends every connection.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for McBackend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<BackendState>, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(v) => v,
                // EMFILE and friends under load tests: back off briefly, keep serving.
                Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue; }
            },
        };
        state.accepted.fetch_add(1, Ordering::SeqCst);
        let record = Arc::new(Mutex::new(ConnRecord {
            peer: Some(peer),
            ..ConnRecord::default()
        }));
        state.conns.lock().expect("lock").push(record.clone());
        state.changed.notify_waiters();
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let result = tokio::select! {
                _ = shutdown.cancelled() => Ok(()),
                r = serve(stream, &state, &record) => r,
            };
            {
                let mut rec = record.lock().expect("lock");
                rec.closed = true;
                if let Err(e) = result {
                    rec.error = Some(format!("{e:#}"));
                }
            }
            state.changed.notify_waiters();
        });
    }
}

/// Reads from a socket, recording every Minecraft byte into the connection record.
struct Recorder<'a> {
    stream: tokio::net::tcp::OwnedReadHalf,
    pending: Vec<u8>,
    record: &'a Mutex<ConnRecord>,
    state: &'a BackendState,
    recording: bool,
}

impl Recorder<'_> {
    /// Reads once more; false on EOF.
    async fn more(&mut self) -> Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.pending.extend_from_slice(&chunk[..n]);
        if self.recording {
            self.note(&chunk[..n]);
        }
        Ok(n > 0)
    }

    fn note(&self, bytes: &[u8]) {
        let mut rec = self.record.lock().expect("lock");
        let room = RECORD_CAP.saturating_sub(rec.received.len());
        rec.received
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        rec.received_total += bytes.len() as u64;
    }

    /// Waits for a complete frame: (id, fields).
    async fn frame(&mut self) -> Result<(i32, Vec<u8>)> {
        loop {
            if let Some((id, body, len)) = split_frame(&self.pending) {
                self.pending.drain(..len);
                return Ok((id, body));
            }
            ensure!(self.pending.len() < 1 << 22, "frame too large");
            ensure!(self.more().await?, "eof before a complete packet");
        }
    }
}

async fn serve(stream: TcpStream, state: &BackendState, record: &Mutex<ConnRecord>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut r = Recorder {
        stream: read,
        pending: Vec::new(),
        record,
        state,
        recording: false,
    };
    if state.opts.expect_proxy_header {
        let info = loop {
            if let Some(info) = parse_proxy(&r.pending)? {
                break info;
            }
            ensure!(r.more().await?, "eof inside the PROXY header");
        };
        r.pending.drain(..info.raw.len());
        record.lock().expect("lock").proxy = Some(info);
        state.changed.notify_waiters();
    }
    r.recording = true;
    let already = r.pending.clone();
    r.note(&already);
    while r.pending.is_empty() {
        if !r.more().await? {
            return Ok(());
        }
    }
    if r.pending[0] == 0xfe {
        return serve_legacy(&mut r, &mut write).await;
    }
    let (id, body) = r.frame().await?;
    ensure!(id == 0, "first packet id {id}");
    let mut p = 0;
    let hs = (|| {
        Some(SeenHandshake {
            protocol: get_varint(&body, &mut p)?,
            address: get_string(&body, &mut p)?,
            port: u16::from_be_bytes([*body.get(p)?, *body.get(p + 1)?]),
            next_state: {
                p += 2;
                get_varint(&body, &mut p)?
            },
        })
    })()
    .ok_or_else(|| anyhow!("bad handshake {body:02x?}"))?;
    record.lock().expect("lock").handshake = Some(hs.clone());
    state.changed.notify_waiters();
    match hs.next_state {
        1 => serve_status(&mut r, &mut write, &hs).await,
        2 | 3 => serve_login(r, write).await,
        n => bail!("next state {n}"),
    }
}

async fn serve_status(
    r: &mut Recorder<'_>,
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    hs: &SeenHandshake,
) -> Result<()> {
    let opts = &r.state.opts;
    loop {
        let (id, body) = match r.frame().await {
            Ok(f) => f,
            Err(_) if r.pending.is_empty() => return Ok(()),
            Err(e) => return Err(e),
        };
        match id {
            0x00 => {
                let st = r.state;
                st.status_requests.fetch_add(1, Ordering::SeqCst);
                let now = st.status_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                st.status_in_flight_max.fetch_max(now, Ordering::SeqCst);
                st.changed.notify_waiters();
                if let Some(gate) = &opts.status_gate {
                    let mut gate = gate.clone();
                    let _ = gate.wait_for(|open| *open).await;
                }
                let motd = if opts.motd_per_hostname {
                    format!("{} @ {}", opts.motd, hs.address)
                } else {
                    opts.motd.clone()
                };
                let json = opts.status_json.clone().unwrap_or_else(|| {
                    serde_json::json!({
                        "version": {"name": opts.version_name, "protocol": hs.protocol},
                        "players": {"max": opts.max, "online": opts.online},
                        "description": {"text": motd},
                    })
                    .to_string()
                });
                let mut out = vec![0x00];
                put_string(&mut out, &json);
                // Out of flight before the answer leaves: the edge cannot
                // start its next fetch before it has this one.
                st.status_in_flight.fetch_sub(1, Ordering::SeqCst);
                write.write_all(&framed(&out)).await?;
                r.state.status_answers.fetch_add(1, Ordering::SeqCst);
                r.state.changed.notify_waiters();
            }
            0x01 => {
                let mut out = vec![0x01];
                out.extend_from_slice(&body);
                write.write_all(&framed(&out)).await?;
                write.shutdown().await?;
                return Ok(());
            }
            id => bail!("status packet id {id}"),
        }
    }
}

async fn serve_legacy(
    r: &mut Recorder<'_>,
    write: &mut tokio::net::tcp::OwnedWriteHalf,
) -> Result<()> {
    r.record.lock().expect("lock").legacy = true;
    // Give a 1.4/1.6 client's remaining bytes a moment to arrive; the answer is the same.
    let _ = tokio::time::timeout(Duration::from_millis(100), r.more()).await;
    let opts = &r.state.opts;
    let text = format!(
        "§1\0127\0{}\0{}\0{}\0{}",
        opts.version_name, opts.motd, opts.online, opts.max
    );
    let mut out = vec![0xff];
    out.extend_from_slice(&(text.encode_utf16().count() as u16).to_be_bytes());
    out.extend_from_slice(&utf16be(&text));
    write.write_all(&out).await?;
    write.shutdown().await?;
    r.state.changed.notify_waiters();
    Ok(())
}

async fn serve_login(
    mut r: Recorder<'_>,
    mut write: tokio::net::tcp::OwnedWriteHalf,
) -> Result<()> {
    let (id, body) = r.frame().await?;
    ensure!(id == 0, "login start id {id}");
    let mut p = 0;
    let name = get_string(&body, &mut p).ok_or_else(|| anyhow!("bad login start"))?;
    r.record.lock().expect("lock").username = Some(name);
    r.state.changed.notify_waiters();
    match r.state.opts.login.clone() {
        LoginMode::Disconnect(msg) => {
            write.write_all(&login_disconnect_packet(&msg)).await?;
            write.shutdown().await?;
            Ok(())
        }
        LoginMode::Echo => {
            let first = std::mem::take(&mut r.pending);
            write.write_all(&first).await?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = r.stream.read(&mut buf).await?;
                if n == 0 {
                    write.shutdown().await?;
                    return Ok(());
                }
                r.note(&buf[..n]);
                write.write_all(&buf[..n]).await?;
            }
        }
        LoginMode::Bulk { send, seed } => {
            let first = std::mem::take(&mut r.pending);
            let record = r.record;
            let sender = async {
                let sha = write_random(&mut write, send, seed).await?;
                write.shutdown().await?;
                anyhow::Ok(sha)
            };
            let receiver = async {
                let mut hasher = Sha256::new();
                hasher.update(&first);
                let mut total = first.len() as u64;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = r.stream.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    total += n as u64;
                }
                anyhow::Ok((total, hex(&hasher.finalize())))
            };
            let (sent_sha256, (received, received_sha256)) = tokio::try_join!(sender, receiver)?;
            record.lock().expect("lock").bulk = Some(BulkReport {
                sent: send,
                sent_sha256,
                received,
                received_sha256,
            });
            r.state.changed.notify_waiters();
            Ok(())
        }
    }
}

/// A framed login-state Disconnect with a JSON text component.
pub fn login_disconnect_packet(message: &str) -> Vec<u8> {
    let mut out = vec![0x00];
    put_string(
        &mut out,
        &serde_json::json!({ "text": message }).to_string(),
    );
    framed(&out)
}

/// Writes `len` pseudo-random bytes from `seed`; returns their SHA-256 (hex).
pub async fn write_random<W: AsyncWrite + Unpin>(w: &mut W, len: u64, seed: u64) -> Result<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    Ok(hex(&hasher.finalize()))
}

/// Reads until EOF: (bytes, SHA-256 hex).
pub async fn read_to_end_hashed<R: AsyncRead + Unpin>(r: &mut R) -> Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, hex(&hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

// ---------------------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------------------

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
    let mut conn = McConn::connect(addr).await?;
    let mut first = handshake_packet(protocol, hostname, 25565, 1);
    first.extend_from_slice(&framed(&[0x00]));
    conn.send(&first).await?;
    let (id, body) = conn.read_packet().await?;
    ensure!(id == 0x00, "status response id {id}");
    let mut p = 0;
    let json = get_string(&body, &mut p).ok_or_else(|| anyhow!("bad status response"))?;
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

pub fn ping_packet(payload: i64) -> Vec<u8> {
    let mut body = vec![0x01];
    body.extend_from_slice(&payload.to_be_bytes());
    framed(&body)
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

/// A framed Login Plugin Response (login 0x02): message id, understood, data. `None` is
/// vanilla's answer for a channel it does not know.
pub fn plugin_response_packet(message_id: i32, data: Option<&[u8]>) -> Vec<u8> {
    let mut body = vec![0x02];
    put_varint(&mut body, message_id);
    match data {
        None => body.push(0x00),
        Some(d) => {
            body.push(0x01);
            body.extend_from_slice(d);
        }
    }
    framed(&body)
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
            if let Some((id, body, len)) = split_frame(&self.pending) {
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
            let mut p = 0;
            let message_id = get_varint(&body, &mut p).ok_or_else(|| anyhow!("bad message id"))?;
            self.send(&plugin_response_packet(message_id, None)).await?;
        };
        ensure!(id == 0x00, "not a login disconnect: id {id}");
        let mut p = 0;
        let json = get_string(&body, &mut p).ok_or_else(|| anyhow!("bad disconnect string"))?;
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
            if let Some((id, body, len)) = split_frame(&self.pending) {
                if id != 0x04 {
                    return Ok(false);
                }
                self.pending.drain(..len);
                let mut p = 0;
                let message_id =
                    get_varint(&body, &mut p).ok_or_else(|| anyhow!("bad message id"))?;
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
        let mut p = 0;
        let message_id = get_varint(&body, &mut p).ok_or_else(|| anyhow!("bad message id"))?;
        let channel = get_string(&body, &mut p).ok_or_else(|| anyhow!("bad channel"))?;
        Ok(PluginRequest {
            message_id,
            channel,
            data: body[p..].to_vec(),
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
        let already = self.pending;
        let sender = async {
            let sha = write_random(&mut write, send, seed).await?;
            write.shutdown().await?;
            anyhow::Ok(sha)
        };
        let receiver = async {
            let mut hasher = Sha256::new();
            hasher.update(&already);
            let mut total = already.len() as u64;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = read.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            anyhow::Ok((total, hex(&hasher.finalize())))
        };
        let (sent_sha256, (received, received_sha256)) = tokio::try_join!(sender, receiver)?;
        Ok(BulkReport {
            sent: send,
            sent_sha256,
            received,
            received_sha256,
        })
    }

    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.stream.local_addr()?)
    }
}

/// SHA-256 (hex) of the `len` bytes `write_random(…, len, seed)` produces.
pub fn random_sha256(len: u64, seed: u64) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    hex(&hasher.finalize())
}

// ---------------------------------------------------------------------------------------
// Legacy pings
// ---------------------------------------------------------------------------------------

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

/// The bytes a 1.6 client sends for a server-list ping.
pub fn legacy_1_6_bytes(hostname: &str, port: u16, protocol: u8) -> Vec<u8> {
    let host = utf16be(hostname);
    let mut out = vec![0xfe, 0x01, 0xfa];
    out.extend_from_slice(&11u16.to_be_bytes());
    out.extend_from_slice(&utf16be("MC|PingHost"));
    out.extend_from_slice(&((7 + host.len()) as u16).to_be_bytes());
    out.push(protocol);
    out.extend_from_slice(&(hostname.encode_utf16().count() as u16).to_be_bytes());
    out.extend_from_slice(&host);
    out.extend_from_slice(&i32::from(port).to_be_bytes());
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backend_answers_status_with_the_client_protocol() {
        let backend = McBackend::start(BackendOptions::with_motd("hello"))
            .await
            .expect("start");
        let reply = status_ping(backend.addr(), "mc.example.com", 47)
            .await
            .expect("ping");
        assert_eq!(reply.motd(), "hello");
        assert_eq!(reply.protocol(), Some(47));
        assert_eq!(
            ping_only(backend.addr(), "x", 769, -5).await.expect("pong"),
            -5
        );
        assert_eq!(backend.status_answers(), 1);
    }

    #[tokio::test]
    async fn backend_records_login_bytes_and_echoes() {
        let backend = McBackend::start(BackendOptions::default())
            .await
            .expect("start");
        let mut conn = login_with(
            backend.addr(),
            765,
            "mc.example.com\0FML3\0",
            "Alex",
            b"tail",
        )
        .await
        .expect("login");
        assert_eq!(conn.read_exact(4).await.expect("echo"), b"tail");
        conn.send(b"more").await.expect("send");
        assert_eq!(conn.read_exact(4).await.expect("echo"), b"more");
        let logins = backend
            .wait_for_logins(1, IO_TIMEOUT)
            .await
            .expect("login seen");
        let hs = logins[0].handshake.clone().expect("handshake");
        assert_eq!(hs.address, "mc.example.com\0FML3\0");
        assert_eq!(logins[0].username.as_deref(), Some("Alex"));
        let mut want = conn.sent_first.clone();
        want.extend_from_slice(b"more");
        backend
            .wait_for(IO_TIMEOUT, |c| c[0].received == want)
            .await
            .expect("byte exact");
    }

    #[tokio::test]
    async fn bulk_mode_checksums_both_ways_with_half_close() {
        let opts = BackendOptions {
            login: LoginMode::Bulk {
                send: 3 << 20,
                seed: 7,
            },
            ..Default::default()
        };
        let backend = McBackend::start(opts).await.expect("start");
        let conn = login(backend.addr(), "h", "Bob").await.expect("login");
        let client = conn.bulk_exchange(5 << 20, 9).await.expect("bulk");
        let server = backend
            .wait_for_bulk(1, IO_TIMEOUT)
            .await
            .expect("report")
            .remove(0);
        assert_eq!(client.received, 3 << 20);
        assert_eq!(client.received_sha256, server.sent_sha256);
        assert_eq!(server.received, 5 << 20);
        assert_eq!(server.received_sha256, client.sent_sha256);
        assert_eq!(server.sent_sha256, random_sha256(3 << 20, 7));
    }

    #[tokio::test]
    async fn backend_parses_proxy_v2_and_answers_disconnect_and_legacy() {
        let opts = BackendOptions {
            expect_proxy_header: true,
            login: LoginMode::Disconnect("go \"away\"".into()),
            ..Default::default()
        };
        let backend = McBackend::start(opts).await.expect("start");
        let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        header.extend_from_slice(&[203, 0, 113, 7, 127, 0, 0, 1, 0xc8, 0x22, 0x63, 0xdd]);
        let mut first = header.clone();
        first.extend_from_slice(&handshake_packet(769, "h", 25565, 2));
        first.extend_from_slice(&login_start_packet(769, "Eve"));
        let mut conn = send_bytes(backend.addr(), &first).await.expect("send");
        assert_eq!(
            conn.read_disconnect().await.expect("disconnect"),
            "go \"away\""
        );
        let rec = backend
            .wait_for_logins(1, IO_TIMEOUT)
            .await
            .expect("login")
            .remove(0);
        let proxy = rec.proxy.expect("proxy header");
        assert_eq!(
            proxy.source,
            Some("203.0.113.7:51234".parse().expect("addr"))
        );
        assert_eq!(rec.received, first[header.len()..]);

        let plain = McBackend::start(BackendOptions::with_motd("old"))
            .await
            .expect("start");
        for reply in [
            legacy_ping_bare(plain.addr()).await.expect("bare"),
            legacy_ping_1_4(plain.addr()).await.expect("1.4"),
            legacy_ping_1_6(plain.addr(), "h", 25565, 78)
                .await
                .expect("1.6"),
        ] {
            assert_eq!(reply.motd(), "old");
        }
    }

    /// The two implementations are independent; here they must agree on the wire bytes.
    #[test]
    fn test_peers_and_mcproto_agree_on_the_wire() {
        use mcproto as p;
        for (proto, host, state) in [
            (47, "a.example", 1),
            (769, "mc.example.com\0FML3\0", 2),
            (769, "x", 3),
        ] {
            let ours = handshake_packet(proto, host, 25565, state);
            let Ok(Some(p::FirstPacket::Modern { handshake, len })) = p::parse_first_packet(&ours)
            else {
                panic!("edge does not parse {ours:02x?}");
            };
            assert_eq!(
                (
                    handshake.protocol_version,
                    handshake.server_address.as_str(),
                    len
                ),
                (proto, host, ours.len())
            );
            assert_eq!(p::encode_handshake(&handshake), ours);
        }
        for proto in [47, 759, 760, 762, 769] {
            let ls = login_start_packet(proto, "Alex");
            let (got, n) = p::parse_login_start(&ls, proto)
                .expect("parses")
                .expect("complete");
            assert_eq!((got.name.as_str(), n), ("Alex", ls.len()), "{proto}");
            let want = (proto >= 760).then(|| player_uuid("Alex"));
            assert_eq!(got.uuid.map(p::format_uuid), want, "{proto}");
        }
        assert_eq!(p::encode_ping(-9), ping_packet(-9));
        assert_eq!(
            p::encode_login_disconnect("a \"b\""),
            login_disconnect_packet("a \"b\"")
        );
        let v16 = legacy_1_6_bytes("mc.example.com", 25565, 78);
        assert_eq!(p::encode_legacy_ping_v1_6(78, "mc.example.com", 25565), v16);
        let src: SocketAddr = "[2001:db8::7]:51234".parse().expect("addr");
        let dst: SocketAddr = "[2001:db8::1]:25565".parse().expect("addr");
        let info = parse_proxy(&p::encode_proxy_v2(src, dst))
            .expect("parse")
            .expect("complete");
        assert_eq!((info.source, info.destination), (Some(src), Some(dst)));
        let info = parse_proxy(&p::encode_proxy_v1(src, dst))
            .expect("parse")
            .expect("complete");
        assert_eq!((info.source, info.destination), (Some(src), Some(dst)));
        let answer = p::encode_legacy_response(
            &p::LegacyPing {
                form: p::LegacyForm::V1_6,
                protocol_version: Some(78),
                hostname: None,
                port: None,
            },
            &p::StatusInfo {
                motd: "hi",
                version_name: "1.21.4",
                protocol: 769,
                online: 1,
                max: 2,
            },
        );
        let reply = decode_legacy_reply(&answer[3..]).expect("decode");
        assert_eq!(reply.fields, ["78", "1.21.4", "hi", "1", "2"]);
    }

    #[test]
    fn proxy_v1_parses() {
        let info = parse_proxy(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nxx")
            .expect("ok")
            .expect("complete");
        assert_eq!(info.raw.len(), 32);
        assert_eq!(info.destination, Some("5.6.7.8:2".parse().expect("addr")));
        assert_eq!(parse_proxy(b"PROXY TCP4 1.2").expect("ok"), None);
    }
}
