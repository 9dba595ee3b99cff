//! Holding a login while its server wakes.
//!
//! The vanilla client drops a connection after ~30 s without a byte from the server, and
//! most servers take longer than that to start. Clients from 1.13 (protocol 393) answer
//! Login Plugin Requests at any time before Login Success, so while such a login is held
//! the edge sends one on its own channel ([`HOLD_CHANNEL`]) every
//! `--hold-keepalive-interval` and swallows the answer ([`KeepAlive`]): the client's read
//! timer never fires and the hold can last the whole wake (`--long-hold-timeout`). Nothing
//! of that exchange reaches the backend, which later gets exactly the handshake and Login
//! Start the player sent. Older clients get a silent hold bounded by `--hold-timeout`.
//!
//! While kept alive, a client may send nothing but answers to our requests, one per
//! request, with the request's message id, each at most
//! [`mcproto::MAX_LOGIN_PLUGIN_RESPONSE_BYTES`]; anything else ends the hold with a
//! Disconnect (never a replay of bytes the backend would misread). Before the login is
//! released to the backend, the answer to the last request is waited for, so no answer can
//! arrive after the splice has begun.
//!
//! Held logins are counted per server (the starting MOTD shows how many wait) and per
//! source address group (`--max-held-logins-per-ip`): a long hold must not let one address
//! pin connections for minutes beyond its share.
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use automc_proto::v1::Route;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::info;

use crate::config::Config;
use crate::limits::AddrKey;
use crate::registry::{ConnEntry, Phase};
use crate::sync_client::WakeError;
use crate::Shared;

/// The plugin channel of the edge's keep-alive requests (clients answer "not understood").
pub const HOLD_CHANNEL: &str = "automc:hold";
/// Bytes a silently held (pre-1.13) player may send while waiting; replayed to the backend.
const MAX_HELD_BYTES: usize = 64 * 1024;
/// Longest a client may take to answer a request, when the interval is shorter: vanilla
/// answers at once, but a loaded client machine may lag a few seconds.
pub const MIN_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How one login is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldPlan {
    /// Longest the hold lasts (the wake call's budget).
    pub budget: Duration,
    /// Keep-alive request interval; `None` = a silent hold.
    pub keepalive: Option<Duration>,
}

/// The long, kept-alive hold for clients that answer Login Plugin Requests (unless the
/// keep-alive is switched off); the bounded silent hold for everyone else. A server's own
/// hold timeout (`server_options.hold_timeout`), when set, is the budget of both.
pub fn plan(cfg: &Config, protocol_version: i32, server_hold: Option<Duration>) -> HoldPlan {
    let interval = cfg.hold_keepalive_interval;
    if !interval.is_zero() && mcproto::answers_login_plugin_requests(protocol_version) {
        HoldPlan {
            budget: server_hold.unwrap_or(cfg.long_hold_timeout),
            keepalive: Some(interval),
        }
    } else {
        HoldPlan {
            budget: server_hold.unwrap_or(cfg.hold_timeout),
            keepalive: None,
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    by_server: HashMap<String, usize>,
    by_addr: HashMap<AddrKey, usize>,
}

/// Logins held on this edge now, per server and per source address group. Entries exist
/// only while a hold does, so the maps are bounded by the connections themselves.
#[derive(Debug, Default)]
pub struct HeldLogins {
    counts: Mutex<Counts>,
}

/// One held login; counted until dropped.
#[derive(Debug)]
pub struct HeldSlot {
    registry: Arc<HeldLogins>,
    server: String,
    addr: AddrKey,
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl HeldLogins {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Count a held login of `server` from `addr`, unless that group already holds
    /// `max_per_addr` (0 = no limit).
    pub fn try_hold(
        self: &Arc<Self>,
        server: &str,
        addr: AddrKey,
        max_per_addr: usize,
    ) -> Option<HeldSlot> {
        let mut c = self.lock();
        let from_addr = c.by_addr.entry(addr).or_default();
        if max_per_addr != 0 && *from_addr >= max_per_addr {
            return None;
        }
        *from_addr += 1;
        *c.by_server.entry(server.to_owned()).or_default() += 1;
        Some(HeldSlot {
            registry: self.clone(),
            server: server.to_owned(),
            addr,
        })
    }

    /// Logins of `server` held on this edge now.
    pub fn waiting(&self, server: &str) -> usize {
        self.lock().by_server.get(server).copied().unwrap_or(0)
    }

    /// Source address groups with a held login now.
    pub fn tracked_addrs(&self) -> usize {
        self.lock().by_addr.len()
    }
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        let mut c = self.registry.lock();
        decrement(&mut c.by_server, &self.server);
        decrement(&mut c.by_addr, &self.addr);
    }
}

/// Why a kept-alive hold ended before its wake did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Break {
    /// The client closed the connection (or it failed).
    ClientGone,
    /// The client sent something other than the answer we wait for; the label says what.
    Protocol(&'static str),
}

impl Break {
    fn from_parse(e: &mcproto::ProtocolError) -> Self {
        use mcproto::ProtocolError as E;
        Self::Protocol(match e {
            E::BadPacketId(_) => "not_a_plugin_response",
            E::PacketTooLarge { .. } | E::VarIntTooLong => "response_too_large",
            _ => "malformed_response",
        })
    }
}

/// The edge's side of the keep-alive exchange with one held client: at most one request
/// outstanding (a tick that finds one is skipped), each answered within the answer timeout.
#[derive(Debug)]
pub struct KeepAlive {
    interval: Duration,
    answer_timeout: Duration,
    next_id: i32,
    /// Message id of the request not answered yet, and when it was sent.
    outstanding: Option<(i32, Instant)>,
    /// Bytes of an answer read so far (never more than one answer's cap).
    inbuf: Vec<u8>,
}

impl KeepAlive {
    /// Requests every `interval`; each must be answered within `answer_timeout`.
    pub fn new(interval: Duration, answer_timeout: Duration) -> Self {
        Self {
            interval,
            answer_timeout,
            next_id: 0,
            outstanding: None,
            inbuf: Vec::with_capacity(16),
        }
    }

    /// Requests sent so far.
    pub fn sent(&self) -> i32 {
        self.next_id
    }

    /// Keep `stream` alive until `wake` resolves: a request every interval (the first one
    /// interval in: a quick wake needs none), the answers read and checked. The wake's output comes back as it is; a client that
    /// leaves or breaks the protocol ends it first.
    pub async fn run<S, F>(&mut self, stream: &mut S, wake: F) -> Result<F::Output, Break>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: Future,
    {
        tokio::pin!(wake);
        let mut tick = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                out = &mut wake => return Ok(out),
                _ = tick.tick() => match self.outstanding {
                    Some((_, sent)) if sent.elapsed() >= self.answer_timeout => {
                        return Err(Break::Protocol("no_answer"));
                    }
                    Some(_) => {}
                    None => self.send_request(stream).await?,
                },
                r = read_some(stream, &mut self.inbuf) => {
                    r?;
                    self.take_answers()?;
                }
            }
        }
    }

    /// Before the login is released: wait (within the answer timeout) for the answer to
    /// the last request, so nothing of the exchange can reach the backend.
    pub async fn settle<S>(&mut self, stream: &mut S) -> Result<(), Break>
    where
        S: AsyncRead + Unpin,
    {
        let Some((_, sent)) = self.outstanding else {
            return self.nothing_left();
        };
        let deadline = sent + self.answer_timeout;
        while self.outstanding.is_some() {
            match tokio::time::timeout_at(deadline, read_some(stream, &mut self.inbuf)).await {
                Err(_) => return Err(Break::Protocol("no_answer")),
                Ok(r) => r?,
            }
            self.take_answers()?;
        }
        self.nothing_left()
    }

    fn nothing_left(&self) -> Result<(), Break> {
        if self.inbuf.is_empty() {
            Ok(())
        } else {
            Err(Break::Protocol("unexpected_bytes"))
        }
    }

    async fn send_request<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> Result<(), Break> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let packet = mcproto::encode_login_plugin_request(id, HOLD_CHANNEL, &[]);
        // A client that stops reading must not stall the hold past one interval.
        match tokio::time::timeout(self.interval, stream.write_all(&packet)).await {
            Ok(Ok(())) => {
                self.outstanding = Some((id, Instant::now()));
                Ok(())
            }
            Ok(Err(_)) => Err(Break::ClientGone),
            Err(_) => Err(Break::Protocol("not_reading")),
        }
    }

    /// Consume every complete answer in the buffer, checking each against the request.
    fn take_answers(&mut self) -> Result<(), Break> {
        loop {
            let (id, n) = match mcproto::parse_login_plugin_response(&self.inbuf) {
                Ok(Some((r, n))) => (r.message_id, n),
                Ok(None) => return Ok(()),
                Err(e) => return Err(Break::from_parse(&e)),
            };
            if self.outstanding.map(|(want, _)| want) != Some(id) {
                return Err(Break::Protocol("wrong_message_id"));
            }
            self.outstanding = None;
            self.inbuf.drain(..n);
        }
    }
}

/// Read what the client sent into `buf`, never past one answer's cap (the parser refuses a
/// longer one before that).
async fn read_some<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Result<(), Break> {
    // Cap + the longest length prefix: room enough for one whole answer.
    let room = (mcproto::MAX_LOGIN_PLUGIN_RESPONSE_BYTES + 3).saturating_sub(buf.len());
    if room == 0 {
        return Err(Break::Protocol("response_too_large"));
    }
    match (&mut *stream).take(room as u64).read_buf(buf).await {
        Ok(0) | Err(_) => Err(Break::ClientGone),
        Ok(_) => Ok(()),
    }
}

/// How a hold ended.
pub enum Held {
    /// The server woke and accepted the connection to `address`.
    Ready {
        upstream: TcpStream,
        address: String,
    },
    /// The server woke but `address` did not accept before the hold's deadline.
    NotAccepting {
        address: String,
        error: std::io::Error,
    },
    Failed(WakeError),
    ClientGone,
    /// The client broke the keep-alive exchange; the label says how.
    Broken(&'static str),
    /// This address already holds as many logins as it may.
    TooMany,
}

/// What `dial` gives back: the address it dialed and the connection (or why not).
pub type Dialed = (String, std::io::Result<TcpStream>);

/// Ask syncd to wake `route`'s server and hold the player meanwhile, as `plan` says; once
/// it woke, `dial` the address the wake returned (empty: the route's own), still holding:
/// "running" is not always "accepting". During a silent hold, bytes the player sends are
/// kept in `buf` for the replay; during a kept-alive hold `buf` is never touched.
#[allow(clippy::too_many_arguments)] // one call site (conn.rs), each a distinct input
pub async fn hold_for_wake<D, DF>(
    stream: &mut TcpStream,
    shared: &Shared,
    entry: &ConnEntry,
    route: &Route,
    client: IpAddr,
    buf: &mut Vec<u8>,
    plan: HoldPlan,
    dial: D,
) -> Held
where
    D: FnOnce(String) -> DF,
    DF: Future<Output = Dialed>,
{
    let limits = shared.config.limits;
    let key = AddrKey::new(client, limits.ipv4_prefix, limits.ipv6_prefix);
    let Some(_slot) = shared
        .held
        .try_hold(&route.server, key, limits.max_held_logins_per_ip)
    else {
        return Held::TooMany;
    };
    entry.set_phase(Phase::Holding);
    let m = &shared.metrics;
    m.held_logins.inc();
    let started = Instant::now();
    let wake = async {
        let woke = shared.sync.wake(&route.server, plan.budget).await?;
        let held_ms = started.elapsed().as_millis() as u64;
        info!(server = %route.server, held_ms, address = %woke.address, "server woke; releasing the held login");
        Ok::<_, WakeError>(dial(woke.address).await)
    };
    let result = match plan.keepalive {
        Some(every) => {
            let mut ka = KeepAlive::new(every, every.max(MIN_ANSWER_TIMEOUT));
            // Settled either way: after a failed wake the edge may still dial the
            // route's own address, and an answer must never follow the replay.
            let r = match ka.run(stream, wake).await {
                Ok(out) => ka.settle(stream).await.map(|()| out),
                Err(b) => Err(b),
            };
            match r {
                Ok(r) => r,
                Err(b) => {
                    m.held_logins.dec();
                    return broke(shared, route, b, ka.sent());
                }
            }
        }
        None => match silent_hold(stream, buf, wake).await {
            Some(r) => r,
            None => {
                m.held_logins.dec();
                m.wake("abandoned");
                return Held::ClientGone;
            }
        },
    };
    m.held_logins.dec();
    match result {
        Ok((address, Ok(upstream))) => {
            m.wake("ok");
            Held::Ready { upstream, address }
        }
        Ok((address, Err(error))) => {
            m.wake("ok");
            Held::NotAccepting { address, error }
        }
        Err(e) => {
            m.wake(e.outcome());
            Held::Failed(e)
        }
    }
}

fn broke(shared: &Shared, route: &Route, b: Break, requests: i32) -> Held {
    match b {
        Break::ClientGone => {
            shared.metrics.wake("abandoned");
            Held::ClientGone
        }
        Break::Protocol(reason) => {
            shared.metrics.wake("hold_broken");
            info!(
                server = %route.server,
                reason,
                requests,
                "held login ended: the client did not answer the keep-alive as expected"
            );
            Held::Broken(reason)
        }
    }
}

/// The pre-1.13 hold: wait for the wake, keeping what the player sends (bounded) for the
/// replay. `None`: the player left.
async fn silent_hold<F: Future>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    wake: F,
) -> Option<F::Output> {
    tokio::pin!(wake);
    let mut client_open = true;
    loop {
        tokio::select! {
            r = &mut wake => return Some(r),
            n = async {
                let room = MAX_HELD_BYTES.saturating_sub(buf.len()) as u64;
                (&mut *stream).take(room).read_buf(buf).await
            }, if client_open => {
                match n {
                    Ok(0) if buf.len() >= MAX_HELD_BYTES => client_open = false,
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;
    use tokio::sync::oneshot;

    const EVERY: Duration = Duration::from_millis(20);
    /// Long enough that no answer in these tests is late, however loaded the machine.
    const PATIENT: Duration = Duration::from_secs(60);

    /// Read one request off the client end; return its message id.
    async fn next_request(client: &mut DuplexStream, buf: &mut Vec<u8>) -> i32 {
        loop {
            if let Some((req, n)) = mcproto::parse_login_plugin_request(buf).expect("a request") {
                assert_eq!(req.channel, HOLD_CHANNEL);
                assert!(req.data.is_empty());
                let id = req.message_id;
                buf.drain(..n);
                return id;
            }
            assert_ne!(client.read_buf(buf).await.expect("read"), 0, "edge closed");
        }
    }

    #[tokio::test]
    async fn answered_requests_keep_the_hold_until_the_wake_ends_and_nothing_is_left_over() {
        let (mut edge, mut client) = tokio::io::duplex(4096);
        let (done, wake) = oneshot::channel::<&str>();
        let player = tokio::spawn(async move {
            let mut buf = Vec::new();
            for want in 0..5 {
                let id = next_request(&mut client, &mut buf).await;
                assert_eq!(id, want);
                let answer = mcproto::encode_login_plugin_response(id, None);
                // Byte by byte: split answers are put back together.
                for b in answer {
                    client.write_all(&[b]).await.expect("write");
                }
            }
            let _ = done.send("up");
            client
        });
        let mut ka = KeepAlive::new(EVERY, PATIENT);
        let out = ka.run(&mut edge, wake).await.expect("kept alive");
        assert_eq!(out, Ok("up"));
        // A sixth request may have gone out before the wake ended: the player has not
        // seen it yet. (The fifth answer may also still be in the pipe: settle reads it.)
        let mut client = player.await.expect("player");
        if ka.outstanding.is_some_and(|(id, _)| id >= 5) {
            let mut buf = Vec::new();
            let id = next_request(&mut client, &mut buf).await;
            client
                .write_all(&mcproto::encode_login_plugin_response(id, None))
                .await
                .expect("write");
        }
        ka.settle(&mut edge).await.expect("settled");
        assert!(ka.sent() >= 5);
    }

    async fn break_with(answer: impl FnOnce(i32) -> Vec<u8> + Send + 'static) -> Break {
        let (mut edge, mut client) = tokio::io::duplex(4096);
        let player = tokio::spawn(async move {
            let mut buf = Vec::new();
            let id = next_request(&mut client, &mut buf).await;
            client.write_all(&answer(id)).await.expect("write");
            // Keep the connection open: the edge decides on the bytes alone.
            let _ = client.read_buf(&mut buf).await;
        });
        let mut ka = KeepAlive::new(EVERY, PATIENT);
        let r = ka.run(&mut edge, std::future::pending::<()>()).await;
        player.abort();
        r.expect_err("the hold breaks")
    }

    #[tokio::test]
    async fn a_wrong_message_id_breaks_the_hold() {
        let b = break_with(|id| mcproto::encode_login_plugin_response(id + 1, None)).await;
        assert_eq!(b, Break::Protocol("wrong_message_id"));
    }

    #[tokio::test]
    async fn any_other_packet_breaks_the_hold() {
        // Login Start again.
        let b = break_with(|_| vec![0x06, 0x00, 0x04, b'N', b'o', b't', b'c']).await;
        assert_eq!(b, Break::Protocol("not_a_plugin_response"));
        let b = break_with(|_| b"GET / HTTP/1.1\r\n".to_vec()).await;
        assert!(matches!(b, Break::Protocol(_)), "{b:?}");
    }

    #[tokio::test]
    async fn an_oversized_answer_breaks_the_hold_before_it_is_read() {
        let b = break_with(|id| {
            let data = vec![7u8; mcproto::MAX_LOGIN_PLUGIN_RESPONSE_BYTES];
            mcproto::encode_login_plugin_response(id, Some(&data))
        })
        .await;
        assert_eq!(b, Break::Protocol("response_too_large"));
    }

    #[tokio::test]
    async fn a_client_that_does_not_answer_is_let_go_at_the_next_request() {
        let (mut edge, mut client) = tokio::io::duplex(4096);
        let player = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = next_request(&mut client, &mut buf).await;
            let _ = client.read_buf(&mut buf).await;
            client
        });
        let mut ka = KeepAlive::new(EVERY, EVERY * 3);
        let r = ka.run(&mut edge, std::future::pending::<()>()).await;
        assert_eq!(r.expect_err("breaks"), Break::Protocol("no_answer"));
        drop(edge);
        drop(player.await);
    }

    #[tokio::test]
    async fn a_client_that_leaves_ends_the_hold() {
        let (mut edge, client) = tokio::io::duplex(4096);
        drop(client);
        let mut ka = KeepAlive::new(EVERY, PATIENT);
        let r = ka.run(&mut edge, std::future::pending::<()>()).await;
        assert_eq!(r.expect_err("breaks"), Break::ClientGone);
    }

    #[test]
    fn clients_from_1_13_get_the_long_kept_alive_hold_and_older_ones_the_bounded_one() {
        let cfg = Config::default();
        let long = plan(&cfg, 393, None);
        assert_eq!(long.budget, cfg.long_hold_timeout);
        assert_eq!(long.keepalive, Some(cfg.hold_keepalive_interval));
        let short = plan(&cfg, 340, None);
        assert_eq!(short.budget, cfg.hold_timeout);
        assert_eq!(short.keepalive, None);
        let off = Config {
            hold_keepalive_interval: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(plan(&off, 769, None).keepalive, None);
        assert_eq!(plan(&off, 769, None).budget, off.hold_timeout);
        // A server's own hold timeout wins for both kinds.
        let own = Some(Duration::from_secs(40));
        assert_eq!(plan(&cfg, 769, own).budget, Duration::from_secs(40));
        assert_eq!(plan(&cfg, 340, own).budget, Duration::from_secs(40));
    }

    #[test]
    fn held_logins_are_counted_per_server_and_capped_per_address() {
        let held = Arc::new(HeldLogins::default());
        let a = AddrKey::new(IpAddr::from([192, 0, 2, 1]), 32, 64);
        let b = AddrKey::new(IpAddr::from([192, 0, 2, 2]), 32, 64);
        let s1 = held.try_hold("mc", a, 2).expect("first");
        let s2 = held.try_hold("other", a, 2).expect("second");
        assert!(held.try_hold("mc", a, 2).is_none(), "a third from a");
        let s3 = held.try_hold("mc", b, 2).expect("b has its own share");
        assert_eq!(held.waiting("mc"), 2);
        assert_eq!(held.waiting("other"), 1);
        drop(s1);
        assert_eq!(held.waiting("mc"), 1);
        assert!(held.try_hold("mc", a, 0).is_some(), "0 = no limit");
        drop((s2, s3));
        assert_eq!(held.waiting("other"), 0);
        assert_eq!(held.tracked_addrs(), 0, "nothing kept once holds end");
    }
}
