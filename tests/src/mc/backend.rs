//! `McBackend`: a small Minecraft server on 127.0.0.1:0 that records everything it receives
//! (PROXY header, handshake, Login Start, every byte after) and answers status pings, legacy
//! pings and logins the way a test asks (echo, bulk, Disconnect).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::bulk::{self, BulkReport};
use super::framed;
use super::wire::{login_disconnect_packet, parse_proxy, split_frame, utf16be, Fields, ProxyInfo};

/// Bytes of a connection kept verbatim in a [`ConnRecord`] (the rest is only counted and hashed).
pub const RECORD_CAP: usize = 1 << 20;

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
    /// A backend with default options answering status with `motd`; panics
    /// when it cannot bind (test setup, not the thing under test).
    pub async fn with_motd(motd: &str) -> Self {
        Self::start(BackendOptions::with_motd(motd))
            .await
            .expect("backend")
    }

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
            if let Some((id, body, len)) = split_frame(&self.pending)? {
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
    let hs = (|| {
        let mut f = Fields::new(&body);
        anyhow::Ok(SeenHandshake {
            protocol: f.varint("protocol")?,
            address: f.string("address")?,
            port: f.u16("port")?,
            next_state: f.varint("next state")?,
        })
    })()
    .with_context(|| format!("bad handshake {body:02x?}"))?;
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
                // Out of flight before the answer leaves: the edge cannot
                // start its next fetch before it has this one.
                st.status_in_flight.fetch_sub(1, Ordering::SeqCst);
                write
                    .write_all(&mcproto::encode_status_response(&json))
                    .await?;
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
    let name = Fields::new(&body).string("login start")?;
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
            let report = bulk::exchange(&mut r.stream, &mut write, &first, send, seed).await?;
            r.record.lock().expect("lock").bulk = Some(report);
            r.state.changed.notify_waiters();
            Ok(())
        }
    }
}
