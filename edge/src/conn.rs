//! One player connection: PROXY header (trusted peers only) → handshake
//! (under `--handshake-timeout`, at most [`mcproto::MAX_HANDSHAKE_BYTES`]
//! buffered) → route lookup → status answer, or login: dial (waking the
//! server through syncd and holding the player when needed) → replay every
//! byte read so far → splice.
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use automc_proto::normalize_player_hostname;
use automc_proto::v1::{Route, WakePhase};
use automc_proto::WakeFailure;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, field, info, info_span, Instrument, Level, Span};

use crate::balance::{self, Seat};
use crate::hold::{self, Held};
use crate::limits::{ConnectionPermit, IpPermit, Refusal};
use crate::registry::{ConnDetail, ConnEntry, ConnGuard, Phase};
use crate::splice::{splice, Pumping, Tally};
use crate::status::{self, ConverseEnd, RelayEnd, StatusMode};
use crate::sync_client::WakeError;
use crate::{Shared, UnknownHost};
use mcproto::{FirstPacket, Handshake, NextState};

/// After a lone `FE` (or `FE 01`), how long to wait for the rest of a 1.6 ping.
const LEGACY_GRACE: Duration = Duration::from_millis(300);

/// How a connection ended: the `outcome` label and span field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Proxied,
    Status,
    Legacy,
    UnknownHost,
    /// No table from syncd yet: every hostname would look unknown.
    NoTable,
    Offline,
    WakeFailed,
    /// A held client broke the keep-alive exchange (the label says how).
    HoldBroken(&'static str),
    HandshakeError(&'static str),
    Refused(&'static str),
    ClientGone,
    Cut,
    /// A spliced side took no bytes for `--stall-timeout`.
    Stalled,
}

impl Outcome {
    /// A connection whose hostname matched no route: unknown, or not
    /// known yet because the edge has no table.
    fn unrouted(shared: &Shared) -> Self {
        if shared.routes.has_snapshot() {
            Self::UnknownHost
        } else {
            Self::NoTable
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Proxied => "proxied",
            Self::Status => "status",
            Self::Legacy => "legacy_status",
            Self::UnknownHost => "unknown_host",
            Self::NoTable => "no_table",
            Self::Offline => "backend_unreachable",
            Self::WakeFailed => "wake_failed",
            Self::HoldBroken(_) => "hold_broken",
            Self::HandshakeError(_) => "handshake_error",
            Self::Refused(_) => "refused",
            Self::ClientGone => "client_gone",
            Self::Cut => "cut",
            Self::Stalled => "stalled",
        }
    }
}

/// What an accepted connection holds for its whole life: a global slot and,
/// for a direct peer, its per-address slot (a trusted load balancer's players
/// take theirs once the PROXY header names them).
pub struct Admitted {
    _conn: ConnectionPermit,
    ip: Option<IpPermit>,
}

fn is_trusted_proxy(shared: &Shared, ip: IpAddr) -> bool {
    let canonical = ip.to_canonical();
    shared
        .config
        .proxy_protocol_trusted
        .iter()
        .any(|net| net.contains(&ip) || net.contains(&canonical))
}

/// Admission at accept, before any byte is read: a silent connection counts
/// against its address from the first instant.
pub fn admit(shared: &Shared, peer: SocketAddr) -> Result<Admitted, Refusal> {
    let ip = if is_trusted_proxy(shared, peer.ip()) {
        None
    } else {
        Some(
            shared
                .admission
                .admit_ip(peer.ip(), std::time::Instant::now())?,
        )
    };
    let conn = shared.admission.admit_connection()?;
    Ok(Admitted { _conn: conn, ip })
}

/// Count and (throttled) log a refused connection.
pub fn refused(shared: &Shared, peer: SocketAddr, reason: &'static str) {
    shared.metrics.refused(reason);
    shared.metrics.connection_ended("refused");
    if let Some(suppressed) = shared.refusal_log.check(std::time::Instant::now()) {
        info!(client.addr = %peer, reason, suppressed, "connection refused");
    }
}

/// How [`serve`] left a connection: ended, or joined to its backend with
/// only the splice left to run.
pub enum Served {
    Ended(Outcome),
    Joined(Box<Joined>),
}

impl From<Outcome> for Served {
    fn from(o: Outcome) -> Self {
        Self::Ended(o)
    }
}

/// A player joined to a backend, the handshake replayed: what the splice
/// needs and the slots the session holds until it ends.
pub struct Joined {
    stream: TcpStream,
    upstream: TcpStream,
    _seat: Seat,
    admitted: Option<Admitted>,
}

/// Serve one admitted connection. A joined player's splice goes on in a
/// task of its own on `tracker`, so an idle session keeps only that small
/// task, not the state of the whole handshake, wake and hold path.
pub async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    shared: Arc<Shared>,
    cut: CancellationToken,
    tracker: TaskTracker,
) {
    let guard = shared.conns.register(peer);
    shared.metrics.connections_active.inc();
    // The span opens once the first packet says what the connection is.
    let mut span = Span::none();
    let served = tokio::select! {
        s = serve(stream, peer, admitted, &shared, &guard.entry, &mut span) => s,
        () = cut.cancelled() => Served::Ended(Outcome::Cut),
    };
    match served {
        Served::Ended(outcome) => finish(&shared, &guard, &span, outcome),
        Served::Joined(joined) => {
            // An idle session costs mostly what it holds, and a span is a
            // registry slot plus its formatted fields: it stays only for
            // what reads it (an exporter, or debug lines). At info a
            // spliced session logs nothing until its end, and that line
            // names the connection itself when the span is gone.
            let span = if splice_span_read() {
                span
            } else {
                Span::none()
            };
            // The span wraps the task rather than living in it twice.
            tracker.spawn(spliced(joined, shared, guard, cut).instrument(span));
        }
    }
}

/// Whether anything reads a spliced session's span: an exporter, or the
/// debug lines of the splice (this module's or the pumps').
fn splice_span_read() -> bool {
    automc_telemetry::exporting_spans()
        || tracing::enabled!(Level::DEBUG)
        || tracing::enabled!(target: "edge::splice", Level::DEBUG)
}

/// Splice a joined player until either side ends or the edge cuts it; runs
/// inside the connection's span. What this future holds is what every idle
/// session costs, so the box is emptied and freed before the first await.
async fn spliced(
    joined: Box<Joined>,
    shared: Arc<Shared>,
    guard: ConnGuard,
    cut: CancellationToken,
) {
    let Joined {
        stream,
        upstream,
        _seat: seat,
        admitted,
    } = unbox(joined);
    let up = Tally {
        live: &guard.entry.bytes_up,
        metric: shared.metrics.bytes_counter("upstream"),
    };
    let down = Tally {
        live: &guard.entry.bytes_down,
        metric: shared.metrics.bytes_counter("downstream"),
    };
    let how = Pumping {
        pipes: &shared.pipes,
        stall: shared.config.stall_timeout,
    };
    let outcome = tokio::select! {
        r = splice(stream, upstream, how, up, down) => match r {
            Ok(()) => Outcome::Proxied,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                debug!(error = %e, "session cut: a side stopped taking bytes");
                Outcome::Stalled
            }
            Err(e) => {
                debug!(error = %e, "splice ended with an error");
                Outcome::Proxied
            }
        },
        () = cut.cancelled() => Outcome::Cut,
    };
    // The slots go before the end is counted, as they do for any other end.
    drop((seat, admitted));
    // The task's span, or none (a worker polls it with no other span entered).
    finish(&shared, &guard, &Span::current(), outcome);
}

/// The value out of its box, the box freed now: moving out of `*b` in an
/// async fn would keep the allocation until the future ends.
#[allow(clippy::boxed_local)] // taking the box by value is the point
fn unbox<T>(b: Box<T>) -> T {
    *b
}

/// The connection's span, opened once its first packet says what it is:
/// at info for a login (its lines say who goes where), at debug for a
/// status ping, which server lists send by the hundred (off at the default
/// level, so a ping pays for no span).
fn conn_span(status: bool, client: SocketAddr, hostname: &str, route: Option<&Route>) -> Span {
    let route = route.map(|r| r.server.as_str());
    if status {
        tracing::debug_span!(
            "conn",
            client.addr = %client,
            hostname,
            route,
            outcome = field::Empty,
            bytes.up = field::Empty,
            bytes.down = field::Empty,
        )
    } else {
        info_span!(
            "conn",
            client.addr = %client,
            hostname,
            route,
            player.name = field::Empty,
            player.uuid = field::Empty,
            server.addr = field::Empty,
            outcome = field::Empty,
            bytes.up = field::Empty,
            bytes.down = field::Empty,
        )
    }
}

/// Record how a connection ended: span fields, metrics and its log line
/// (which names the client itself when no span of the connection is on).
fn finish(shared: &Shared, guard: &ConnGuard, span: &Span, outcome: Outcome) {
    let m = &shared.metrics;
    let up = guard
        .entry
        .bytes_up
        .load(std::sync::atomic::Ordering::Relaxed);
    let down = guard
        .entry
        .bytes_down
        .load(std::sync::atomic::Ordering::Relaxed);
    let label = outcome.label();
    // For an exporter the span carries the end; a log line carries it
    // itself (recording into the span costs every connection a formatting
    // of these fields, logged or not).
    if automc_telemetry::exporting_spans() {
        span.record("outcome", label);
        span.record("bytes.up", up);
        span.record("bytes.down", down);
    }
    m.connection_ended(label);
    m.connections_active.dec();
    let _e = span.enter();
    // For the info lines: the client, when no span of this connection says it.
    let client = || {
        span.is_disabled()
            .then(|| field::display(guard.entry.client()))
    };
    match outcome {
        Outcome::HandshakeError(reason) => {
            m.handshake_error(reason);
            debug!(
                reason,
                outcome = label,
                bytes.up = up,
                bytes.down = down,
                "handshake failed"
            );
        }
        Outcome::Refused(reason) => {
            m.refused(reason);
            if let Some(suppressed) = shared.refusal_log.check(std::time::Instant::now()) {
                info!(
                    client.addr = client(),
                    reason,
                    suppressed,
                    outcome = label,
                    "connection refused"
                );
            }
        }
        Outcome::Offline | Outcome::WakeFailed | Outcome::HoldBroken(_) | Outcome::Cut => {
            // Rare ends, each worth a line that says whose connection it
            // was: from the registry when no span of the connection is on.
            let who = span.is_disabled().then(|| guard.entry.detail());
            let who = who.as_ref();
            let named = |f: fn(&ConnDetail) -> &str| who.map(f).filter(|v| !v.is_empty());
            info!(
                client.addr = who.map(|d| field::display(d.client)),
                hostname = named(|d| &d.hostname),
                route = named(|d| &d.server),
                player.name = named(|d| &d.player),
                server.addr = named(|d| &d.backend),
                outcome = label,
                bytes.up = up,
                bytes.down = down,
                "connection ended"
            )
        }
        _ => debug!(
            outcome = label,
            bytes.up = up,
            bytes.down = down,
            "connection ended"
        ),
    }
}

/// Why reading more handshake bytes stopped.
enum ReadEnd {
    Eof,
    Timeout,
    Io,
}

/// Read more bytes into `buf` (never past `cap`) before `deadline`.
async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    cap: usize,
    deadline: Instant,
) -> Result<(), ReadEnd> {
    let room = cap.saturating_sub(buf.len());
    if room == 0 {
        return Err(ReadEnd::Io);
    }
    let mut limited = (&mut *stream).take(room as u64);
    match tokio::time::timeout_at(deadline, limited.read_buf(buf)).await {
        Err(_) => Err(ReadEnd::Timeout),
        Ok(Err(_)) => Err(ReadEnd::Io),
        Ok(Ok(0)) => Err(ReadEnd::Eof),
        Ok(Ok(_)) => Ok(()),
    }
}

fn read_end_outcome(e: ReadEnd, buf: &[u8]) -> Outcome {
    match e {
        ReadEnd::Timeout => Outcome::HandshakeError("timeout"),
        ReadEnd::Eof if buf.is_empty() => Outcome::ClientGone,
        ReadEnd::Eof => Outcome::HandshakeError("truncated"),
        ReadEnd::Io => Outcome::HandshakeError("io"),
    }
}

/// The player's real address, once any PROXY header is consumed.
struct Peer {
    client: SocketAddr,
    /// Destination named by the PROXY header, if one was sent.
    destination: Option<SocketAddr>,
}

async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    mut admitted: Admitted,
    shared: &Shared,
    entry: &ConnEntry,
    span: &mut Span,
) -> Served {
    let _ = stream.set_nodelay(true);
    let cfg = &shared.config;
    let deadline = Instant::now() + cfg.handshake_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(512);

    let who = match read_proxy_header(&mut stream, peer, shared, &mut buf, deadline).await {
        Ok(w) => w,
        Err(o) => return o.into(),
    };
    if who.client != peer {
        entry.update(|d| d.client = who.client);
    }
    if admitted.ip.is_none() {
        // A trusted load balancer: its player is known only now.
        match shared
            .admission
            .admit_ip(who.client.ip(), std::time::Instant::now())
        {
            Ok(p) => admitted.ip = Some(p),
            Err(r) => return Outcome::Refused(r.reason()).into(),
        }
    }

    // Before any backend is dialled, and before the handshake is even read.
    if !balance::admitted(who.client.ip(), &cfg.allow_cidrs, &cfg.deny_cidrs) {
        return Outcome::Refused("denied_address").into();
    }

    let first = match read_first_packet(&mut stream, &mut buf, deadline).await {
        Ok(f) => f,
        Err(o) => return o.into(),
    };
    match first {
        FirstPacket::Legacy { ping, .. } => {
            entry.set_phase(Phase::Status);
            let raw = ping.hostname.clone().unwrap_or_default();
            let (route, capture) = lookup(shared, entry, &raw, true, who.client, span);
            let rest = async move {
                if !route_admits(route.as_ref(), &who) {
                    return Outcome::Refused("denied_address").into();
                }
                let proxy = proxy_pair(shared, route.as_ref(), &who, &stream);
                let to = status::Target {
                    route: route.as_ref(),
                    capture: capture.as_deref(),
                };
                if let Some(answer) = status::legacy_answer(shared, to, &ping, proxy).await {
                    let _ = stream.write_all(&answer).await;
                    let _ = stream.shutdown().await;
                    Outcome::Legacy.into()
                } else {
                    Outcome::unrouted(shared).into()
                }
            };
            rest.instrument(span.clone()).await
        }
        FirstPacket::Modern { handshake, len } => {
            let status = handshake.next_state == NextState::Status;
            let address = &handshake.server_address;
            let (route, capture) = lookup(shared, entry, address, status, who.client, span);
            let rest = async move {
                match handshake.next_state {
                    NextState::Status => {
                        if !route_admits(route.as_ref(), &who) {
                            return Outcome::Refused("denied_address").into();
                        }
                        entry.set_phase(Phase::Status);
                        let rest = buf.split_off(len.min(buf.len()));
                        let raw = StatusRaw {
                            handshake: buf,
                            rest,
                        };
                        let to = status::Target {
                            route: route.as_ref(),
                            capture: capture.as_deref(),
                        };
                        serve_status(&mut stream, shared, to, &handshake, &who, raw)
                            .await
                            .into()
                    }
                    NextState::Login | NextState::Transfer => {
                        let version = handshake.protocol_version;
                        if let Err(o) =
                            read_login_start(&mut stream, &mut buf, len, version, entry, deadline)
                                .await
                        {
                            return o.into();
                        }
                        let first = FirstBytes {
                            handshake: &handshake,
                            len,
                        };
                        match login(stream, shared, entry, route, capture, &who, buf, first).await {
                            Served::Joined(mut joined) => {
                                joined.admitted = Some(admitted);
                                Served::Joined(joined)
                            }
                            ended => ended,
                        }
                    }
                }
            };
            rest.instrument(span.clone()).await
        }
    }
}

/// Consume a PROXY header when the peer is trusted; refuse one from anyone else.
async fn read_proxy_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Peer, Outcome> {
    let trusted = is_trusted_proxy(shared, peer.ip());
    let mut who = Peer {
        client: peer,
        destination: None,
    };
    loop {
        match mcproto::detect_proxy_header(buf) {
            Some(false) => return Ok(who),
            Some(true) if !trusted => return Err(Outcome::Refused("untrusted_proxy_header")),
            Some(true) => match mcproto::parse_proxy_header(buf) {
                Ok(Some((header, n))) => {
                    buf.drain(..n);
                    if let Some(src) = header.source {
                        who.client = src;
                    }
                    who.destination = header.destination;
                    return Ok(who);
                }
                Ok(None) => {}
                Err(_) => return Err(Outcome::HandshakeError("bad_proxy_header")),
            },
            None => {}
        }
        read_more(stream, buf, mcproto::MAX_PROXY_HEADER_BYTES, deadline)
            .await
            .map_err(|e| read_end_outcome(e, buf))?;
    }
}

async fn read_first_packet(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<FirstPacket, Outcome> {
    loop {
        match mcproto::parse_first_packet(buf) {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => return Err(Outcome::HandshakeError(e.reason())),
        }
        if buf.len() >= mcproto::MAX_HANDSHAKE_BYTES {
            return Err(Outcome::HandshakeError("too_large"));
        }
        // A bare `FE` (or `FE 01`) may be all a legacy client sends: answer
        // after a short grace instead of waiting for bytes that never come.
        let legacy = buf.first() == Some(&0xFE);
        let until = if legacy {
            deadline.min(Instant::now() + LEGACY_GRACE)
        } else {
            deadline
        };
        match read_more(stream, buf, mcproto::MAX_HANDSHAKE_BYTES, until).await {
            Ok(()) => {}
            Err(ReadEnd::Timeout | ReadEnd::Eof) if legacy => {
                return mcproto::parse_legacy_bare_timeout(buf)
                    .map(|ping| FirstPacket::Legacy {
                        ping,
                        len: buf.len(),
                    })
                    .ok_or(Outcome::HandshakeError("bad_legacy_ping"));
            }
            Err(e) => return Err(read_end_outcome(e, buf)),
        }
    }
}

/// Read the Login Start that follows the handshake (under the same deadline)
/// and note who is logging in. The packet is only observed: one the parser
/// does not understand (a mod's layout) is forwarded all the same, and the
/// backend judges it.
async fn read_login_start(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    handshake_len: usize,
    protocol_version: i32,
    entry: &ConnEntry,
    deadline: Instant,
) -> Result<(), Outcome> {
    let cap = handshake_len + mcproto::MAX_LOGIN_START_BYTES;
    loop {
        let rest = buf.get(handshake_len..).unwrap_or_default();
        match mcproto::parse_login_start(rest, protocol_version) {
            Ok(Some((login, _))) => {
                let span = Span::current();
                span.record("player.name", login.name.as_str());
                let uuid = login.uuid_string();
                if !uuid.is_empty() {
                    span.record("player.uuid", uuid.as_str());
                }
                entry.set_player(login.name, uuid);
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => {
                debug!(reason = e.reason(), error = %e, "Login Start not understood; forwarding it as sent");
                return Ok(());
            }
        }
        read_more(stream, buf, cap, deadline)
            .await
            .map_err(|e| read_end_outcome(e, buf))?;
    }
}

/// Resolve the player's hostname against the current table; also what a
/// `*.suffix` pattern captured (for `{1}` in the backend address).
/// The route for `raw` (a player's hostname), and what a wildcard captured;
/// opens the connection's span (see [`conn_span`]) into `span`.
fn lookup(
    shared: &Shared,
    entry: &ConnEntry,
    raw: &str,
    status: bool,
    client: SocketAddr,
    span: &mut Span,
) -> (Option<Route>, Option<String>) {
    let hostname = normalize_player_hostname(raw);
    let view = shared.routes.view();
    // The handshake already bounds the address to 255 characters.
    let (route, capture) = match view.table.lookup(&hostname).ok().flatten() {
        Some(m) => (
            Some(m.route.clone()),
            automc_proto::backend::captured(m.pattern, &hostname).map(str::to_owned),
        ),
        None => (None, None),
    };
    shared.metrics.route_lookup(route.is_some());
    *span = conn_span(status, client, &hostname, route.as_ref());
    entry.update(|d| {
        d.hostname = hostname;
        if let Some(r) = &route {
            d.server.clone_from(&r.server);
        }
    });
    (route, capture)
}

/// The route's own allow/deny lists, on the real client address.
fn route_admits(route: Option<&Route>, who: &Peer) -> bool {
    match route {
        Some(r) if r.options.is_some() => {
            let (allow, deny) = balance::route_cidrs(r);
            balance::admitted(who.client.ip(), &allow, &deny)
        }
        _ => true,
    }
}

/// PROXY v2 source and destination, when this route's backends get one
/// (its `proxy_protocol` option, else `--send-proxy-protocol`).
fn proxy_pair(
    shared: &Shared,
    route: Option<&Route>,
    who: &Peer,
    stream: &TcpStream,
) -> Option<(SocketAddr, SocketAddr)> {
    let send = route
        .and_then(|r| r.options.as_ref())
        .and_then(|o| o.proxy_protocol)
        .unwrap_or(shared.config.send_proxy_protocol);
    if !send {
        return None;
    }
    let dst = who
        .destination
        .or_else(|| stream.local_addr().ok())
        .unwrap_or(who.client);
    Some((who.client, dst))
}

/// The bytes of a status connection so far: the handshake as received and
/// whatever followed it.
struct StatusRaw {
    handshake: Vec<u8>,
    rest: Vec<u8>,
}

async fn serve_status(
    stream: &mut TcpStream,
    shared: &Shared,
    to: status::Target<'_>,
    handshake: &Handshake,
    who: &Peer,
    raw: StatusRaw,
) -> Outcome {
    let route = to.route;
    let proxy = proxy_pair(shared, route, who, stream);
    if shared.config.status_mode == StatusMode::Relay
        && status::decide(shared, route) == status::Answer::Backend
    {
        let address = route.and_then(|r| {
            shared
                .balancer
                .plan_status(r, to.capture)
                .addresses
                .into_iter()
                .next()
        });
        if let (Some(route), Some(address)) = (route, address) {
            let mut head = Vec::with_capacity(raw.handshake.len() + raw.rest.len() + 64);
            if let Some((src, dst)) = proxy {
                head.extend(mcproto::encode_proxy_v2(src, dst));
            }
            match rewrite_host(route) {
                Some(host) => head.extend(mcproto::encode_rewritten_handshake(handshake, host)),
                None => head.extend_from_slice(&raw.handshake),
            }
            head.extend_from_slice(&raw.rest);
            let deadline = Instant::now() + shared.config.handshake_timeout;
            let timeout = shared.config.connect_timeout;
            let end = status::relay(stream, &address, &head, timeout, deadline).await;
            // Like a login's dial: a dead first backend is tried last for a
            // while, so the next relayed pings do not each wait it out.
            if end == RelayEnd::Unreachable {
                shared.balancer.dial_failed(&address);
            } else {
                shared.balancer.dial_worked(&address);
            }
            match end {
                RelayEnd::Done => return Outcome::Status,
                RelayEnd::Timeout => return Outcome::HandshakeError("timeout"),
                RelayEnd::Io => return Outcome::ClientGone,
                // Nothing sent yet: answer like the cache does (stale or asleep).
                RelayEnd::Unreachable => {}
            }
        }
    }
    let rest = raw.rest;
    let Some(json) = status::status_json_for(shared, to, handshake, proxy).await else {
        return Outcome::unrouted(shared);
    };
    // One deadline for the whole conversation: trickled bytes do not extend it.
    let deadline = Instant::now() + shared.config.handshake_timeout;
    match status::converse(stream, rest, &json, deadline).await {
        Ok(()) => {
            if route.is_none() {
                Outcome::unrouted(shared)
            } else {
                Outcome::Status
            }
        }
        Err(ConverseEnd::ClientGone) => Outcome::ClientGone,
        Err(ConverseEnd::Timeout) => Outcome::HandshakeError("timeout"),
        Err(ConverseEnd::Protocol(r)) => Outcome::HandshakeError(r),
    }
}

async fn dial(address: &str, timeout: Duration) -> io::Result<TcpStream> {
    let s = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Pause between dials to a server that just woke.
const REDIAL_PAUSE: Duration = Duration::from_millis(250);

/// Dial a server that just woke, retrying until `deadline`: "running" is not
/// always "accepting" (a modded server may still be loading, or a burst of
/// held players may overflow a fresh accept queue).
async fn dial_until(address: &str, timeout: Duration, deadline: Instant) -> io::Result<TcpStream> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match dial(address, timeout.min(left.max(REDIAL_PAUSE))).await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() + REDIAL_PAUSE >= deadline => return Err(e),
            Err(e) => {
                debug!(backend = %address, error = %e, "woken backend not accepting yet; retrying");
                tokio::time::sleep(REDIAL_PAUSE).await;
            }
        }
    }
}

/// The host a route writes into the backend's handshake, if it rewrites.
pub(crate) fn rewrite_host(route: &Route) -> Option<&str> {
    route
        .options
        .as_ref()
        .and_then(|o| o.rewrite_host.as_deref())
}

/// The handshake as parsed and the bytes its frame took at the start of
/// the buffer (what a host rewrite replaces).
struct FirstBytes<'a> {
    handshake: &'a Handshake,
    len: usize,
}

/// Dial the backends of `plan` in order within one connect budget (each
/// attempt gets an equal share of what is left), noting failures for the
/// backoff. The address dialled and its stream, or the last error.
async fn dial_plan(
    shared: &Shared,
    addresses: &[String],
    budget: Duration,
) -> Result<(String, TcpStream), Option<io::Error>> {
    let deadline = Instant::now() + budget;
    let mut last = None;
    for (i, address) in addresses.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let share = left / u32::try_from(addresses.len() - i).unwrap_or(u32::MAX);
        match dial(address, share).await {
            Ok(s) => {
                shared.balancer.dial_worked(address);
                return Ok((address.clone(), s));
            }
            Err(e) => {
                shared.balancer.dial_failed(address);
                if addresses.len() > 1 {
                    info!(backend = %address, error = %e, "backend unreachable; trying the next");
                }
                last = Some(e);
            }
        }
    }
    Err(last)
}

async fn disconnect(stream: &mut TcpStream, message: &str) {
    let _ = stream
        .write_all(&mcproto::encode_login_disconnect(message))
        .await;
    let _ = stream.shutdown().await;
}

/// Player-facing texts for each way a login can fail.
pub mod messages {
    pub const OFFLINE: &str = "§cThis server is offline right now.\n§7Please try again later.";
    pub const STARTING: &str = "§eThe server is starting.\n§7Please try again in a moment.";
    pub const NOT_ACCEPTING: &str =
        "§eThe server has started but is not accepting players yet.\n§7Please try again in a moment.";
    pub const UNREACHABLE_SYNCD: &str =
        "§cThe server cannot be started right now (the router's control plane is unreachable).\n§7Please try again in a moment.";
    pub const UNKNOWN_HOST: &str = "§cThere is no server at this address.";
    /// Before the edge's first table from syncd (a load balancer that checks
    /// `/readyz` sends no player here until then).
    pub const NO_TABLE: &str =
        "§eThis router is starting and has not loaded its servers yet.\n§7Please try again in a moment.";
    pub const COULD_NOT_START: &str =
        "§cThe server could not be started right now.\n§7Please try again later.";
    pub const HOLD_BROKEN: &str =
        "§cYour client sent unexpected data while the server was starting.\n§7Please try again.";
    pub const TOO_MANY_WAITING: &str =
        "§eToo many players from your address are already waiting for this server to start.\n§7Please try again in a moment.";
    pub const ASLEEP: &str =
        "§7This server is asleep.\n§7Only some players may wake it; please try again later.";
    pub const FULL: &str = "§cThis server is full.\n§7Please try again later.";
    pub const DENIED: &str = "§cYou cannot join this server from your network.";
}

#[allow(clippy::too_many_arguments)]
async fn login(
    mut stream: TcpStream,
    shared: &Shared,
    entry: &ConnEntry,
    route: Option<Route>,
    capture: Option<String>,
    who: &Peer,
    mut buf: Vec<u8>,
    first: FirstBytes<'_>,
) -> Served {
    let cfg = &shared.config;
    let Some(route) = route else {
        let msg = match &cfg.unknown_host {
            _ if !shared.routes.has_snapshot() => messages::NO_TABLE,
            UnknownHost::Motd(m) => m.as_str(),
            UnknownHost::Close => messages::UNKNOWN_HOST,
        };
        disconnect(&mut stream, msg).await;
        return Outcome::unrouted(shared).into();
    };
    // Allow/deny and the player limit come before any backend is dialled.
    if !route_admits(Some(&route), who) {
        disconnect(&mut stream, messages::DENIED).await;
        return Outcome::Refused("denied_address").into();
    }
    let options = route.options.clone().unwrap_or_default();
    let Some(mut seat) = shared
        .balancer
        .take_seat(&route.server, options.max_players)
    else {
        disconnect(&mut stream, messages::FULL).await;
        return Outcome::Refused("server_full").into();
    };
    let plan = shared.balancer.plan_login(&route, capture.as_deref());
    let Some(first_choice) = plan.addresses.first().cloned() else {
        // A wildcard route whose address needs a label the hostname lacks.
        disconnect(&mut stream, messages::UNKNOWN_HOST).await;
        return Outcome::UnknownHost.into();
    };
    if let Some(host) = rewrite_host(&route) {
        let mut head = mcproto::encode_rewritten_handshake(first.handshake, host);
        head.extend_from_slice(buf.get(first.len..).unwrap_or_default());
        buf = head;
    }
    // A server's own hold timeout bounds every hold of it, kept alive or not.
    let hold = options.hold_timeout_ms.map(Duration::from_millis);
    let asleep = route.is_stopped()
        || matches!(
            shared.routes.wake_phase(&route.server),
            Some(WakePhase::Waking | WakePhase::Stopping | WakePhase::Asleep)
        );
    let mut address = first_choice;
    let mut dialed = None;
    let mut dial_error = None;
    if !asleep {
        match dial_plan(shared, &plan.addresses, cfg.connect_timeout).await {
            Ok((a, s)) => {
                address = a;
                dialed = Some(s);
            }
            Err(e) => dial_error = e,
        }
    }
    let upstream = match dialed {
        Some(s) => s,
        None => {
            if !may_wake(shared, entry, &route) {
                info!(server = %route.server, "login refused: this player may not wake the server");
                disconnect(&mut stream, messages::ASLEEP).await;
                return Outcome::Refused("wake_not_allowed").into();
            }
            if let Some(e) = &dial_error {
                info!(backend = %address, error = %e, "backend unreachable; waking");
            }
            let plan = hold::plan(cfg, first.handshake.protocol_version, hold);
            let hold_deadline = Instant::now() + plan.budget;
            let route_address = address.clone();
            let connect_timeout = cfg.connect_timeout;
            let capture = capture.clone();
            let dial_woken = |woke: String| async move {
                // The waker's address, else the route's (expanded for a
                // wildcard capture); else the first choice.
                let to = automc_proto::backend::expand_address(&woke, capture.as_deref())
                    .filter(|a| !a.is_empty())
                    .unwrap_or(route_address);
                let r = dial_until(&to, connect_timeout, hold_deadline).await;
                (to, r)
            };
            let held = hold::hold_for_wake(
                &mut stream,
                shared,
                entry,
                &route,
                who.client.ip(),
                &mut buf,
                plan,
                dial_woken,
            )
            .await;
            match held {
                Held::Ready {
                    upstream,
                    address: woken,
                } => {
                    address = woken;
                    upstream
                }
                Held::NotAccepting {
                    address: woken,
                    error,
                } => {
                    info!(backend = %woken, error = %error, "woken backend unreachable");
                    disconnect(&mut stream, messages::NOT_ACCEPTING).await;
                    return Outcome::Offline.into();
                }
                Held::ClientGone => return Outcome::ClientGone.into(),
                Held::Broken(reason) => {
                    disconnect(&mut stream, messages::HOLD_BROKEN).await;
                    return Outcome::HoldBroken(reason).into();
                }
                Held::TooMany => {
                    disconnect(&mut stream, messages::TOO_MANY_WAITING).await;
                    return Outcome::Refused("max_held_logins_per_ip").into();
                }
                Held::Failed(e) => {
                    // Without a usable waker a "stopped" route may still be up:
                    // try it once before giving up.
                    if asleep {
                        if let Ok(s) = dial(&address, cfg.connect_timeout).await {
                            seat.on_backend(&address);
                            let to = (Some(&route), who);
                            return proxy(stream, s, shared, entry, to, &address, buf, seat).await;
                        }
                    }
                    let (msg, outcome) = wake_failure_message(&e);
                    info!(server = %route.server, error = %e, "login ended: wake failed");
                    disconnect(&mut stream, msg).await;
                    return outcome.into();
                }
            }
        }
    };
    seat.on_backend(&address);
    proxy(
        stream,
        upstream,
        shared,
        entry,
        (Some(&route), who),
        &address,
        buf,
        seat,
    )
    .await
}

/// The server's `wake_allow_players` option, else `--wake-allow-players`: anyone when
/// empty; else only the names listed may start a wake (anyone may join one already in
/// flight). The name is Login Start's, unverified.
fn may_wake(shared: &Shared, entry: &ConnEntry, route: &Route) -> bool {
    let allowed = route
        .options
        .as_ref()
        .and_then(|o| o.wake_allow_players.as_ref())
        .map_or(&shared.config.wake_allow_players, |p| &p.names);
    if allowed.is_empty() || shared.routes.wake_phase(&route.server) == Some(WakePhase::Waking) {
        return true;
    }
    let name = entry.detail().player;
    allowed.iter().any(|a| a.eq_ignore_ascii_case(&name))
}

/// What the player reads after a failed wake: a fixed text per reason, never
/// syncd's detail (which names addresses; it goes to the log line instead).
fn wake_failure_message(e: &WakeError) -> (&'static str, Outcome) {
    match e {
        WakeError::Timeout => (messages::STARTING, Outcome::WakeFailed),
        WakeError::Unreachable(_) => (messages::UNREACHABLE_SYNCD, Outcome::WakeFailed),
        WakeError::Failed { failure, .. } => match failure {
            WakeFailure::NotConfigured | WakeFailure::UnknownServer => {
                (messages::OFFLINE, Outcome::Offline)
            }
            WakeFailure::Timeout => (messages::STARTING, Outcome::WakeFailed),
            WakeFailure::NotReady => (messages::NOT_ACCEPTING, Outcome::WakeFailed),
            WakeFailure::Standby | WakeFailure::ShuttingDown => {
                (messages::UNREACHABLE_SYNCD, Outcome::WakeFailed)
            }
            WakeFailure::WakerRefused
            | WakeFailure::WakerUnreachable
            | WakeFailure::WakerBadResponse
            | WakeFailure::Unspecified => (messages::COULD_NOT_START, Outcome::WakeFailed),
        },
    }
}

/// Connect the player to `upstream`: optional PROXY v2 and every buffered
/// byte; the splice is left to the caller.
#[allow(clippy::too_many_arguments)]
async fn proxy(
    mut stream: TcpStream,
    mut upstream: TcpStream,
    shared: &Shared,
    entry: &ConnEntry,
    (route, who): (Option<&Route>, &Peer),
    address: &str,
    buf: Vec<u8>,
    seat: Seat,
) -> Served {
    Span::current().record("server.addr", address);
    entry.update(|d| d.backend = address.to_owned());
    entry.set_phase(Phase::Proxying);
    let mut head = Vec::with_capacity(buf.len() + 64);
    if let Some((src, dst)) = proxy_pair(shared, route, who, &stream) {
        head.extend(mcproto::encode_proxy_v2(src, dst));
    }
    head.extend_from_slice(&buf);
    drop(buf);
    if let Err(e) = upstream.write_all(&head).await {
        info!(backend = %address, error = %e, "backend closed before the handshake was written");
        disconnect(&mut stream, messages::OFFLINE).await;
        return Outcome::Offline.into();
    }
    entry
        .bytes_up
        .fetch_add(head.len() as u64, std::sync::atomic::Ordering::Relaxed);
    shared
        .metrics
        .bytes_counter("upstream")
        .inc_by(head.len() as u64);
    Served::Joined(Box::new(Joined {
        stream,
        upstream,
        _seat: seat,
        admitted: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What syncd's detail may hold and a player must never see.
    const DETAIL: &str =
        "wake of lobby failed: waker unreachable: http://10.1.2.3:8080 refused; 10.0.0.7:25565";

    fn failed(failure: WakeFailure) -> WakeError {
        WakeError::Failed {
            failure,
            detail: DETAIL.into(),
        }
    }

    /// Every way a wake can fail, with what the player's text must say and
    /// the connection's outcome label.
    fn every_wake_error() -> Vec<(WakeError, &'static str, &'static str)> {
        let stuck = "control plane is unreachable";
        let could_not = "could not be started";
        vec![
            (WakeError::Timeout, "try again in a moment", "wake_failed"),
            (WakeError::Unreachable(DETAIL.into()), stuck, "wake_failed"),
            (
                failed(WakeFailure::NotConfigured),
                "offline",
                "backend_unreachable",
            ),
            (
                failed(WakeFailure::UnknownServer),
                "offline",
                "backend_unreachable",
            ),
            (failed(WakeFailure::Timeout), "starting", "wake_failed"),
            (
                failed(WakeFailure::NotReady),
                "not accepting players yet",
                "wake_failed",
            ),
            (failed(WakeFailure::Standby), stuck, "wake_failed"),
            (failed(WakeFailure::ShuttingDown), stuck, "wake_failed"),
            (failed(WakeFailure::WakerRefused), could_not, "wake_failed"),
            (
                failed(WakeFailure::WakerUnreachable),
                could_not,
                "wake_failed",
            ),
            (
                failed(WakeFailure::WakerBadResponse),
                could_not,
                "wake_failed",
            ),
            (failed(WakeFailure::Unspecified), could_not, "wake_failed"),
        ]
    }

    #[test]
    fn every_wake_failure_has_a_message_the_player_can_act_on() {
        for (err, needle, outcome) in every_wake_error() {
            let (msg, o) = wake_failure_message(&err);
            assert!(msg.contains(needle), "{err:?}: {msg}");
            assert_eq!(o.label(), outcome, "{err:?}");
        }
    }

    #[test]
    fn player_messages_after_a_failed_wake_carry_no_address_or_detail() {
        for (err, _, _) in every_wake_error() {
            let (msg, _) = wake_failure_message(&err);
            for leak in ["10.", "http", ":25565", ":8080", "refused", "lobby"] {
                assert!(!msg.contains(leak), "{err:?} shows {leak:?}: {msg}");
            }
        }
    }
}
