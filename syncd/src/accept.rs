//! The accept layer of syncd's gRPC port: everything a peer can make syncd
//! do before it has spoken valid HTTP/2 (and, with TLS, finished the TLS
//! handshake) is bounded here, before tonic sees the connection.
//!
//! - A cap on connections open at once, in total and per peer IP address
//!   (IPv4-mapped IPv6 counts as IPv4, like the watcher cap).
//! - A cap on connections per peer still in their handshake, so a slow or
//!   silent peer cannot hold more than a few handshake slots.
//! - One deadline for the whole handshake (TLS, then the 24-byte HTTP/2
//!   client preface), taken from the accept time: trickled bytes do not
//!   extend it. The preface bytes are read here and replayed to tonic.
//!
//! Refusals are decided by [`Gate`], plain bookkeeping without I/O; the
//! accept loop ([`incoming`]) only applies them. Each refusal is counted in
//! `automc_syncd_grpc_connections_refused_total{reason}` and logged at most
//! once a second. The cap on streams per connection is the HTTP/2 setting
//! (`SETTINGS_MAX_CONCURRENT_STREAMS`), applied where the tonic server is
//! built (`grpc::serve`).
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use automc_telemetry::LogThrottle;
use futures::Stream;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config;
use crate::metrics::Metrics;
use crate::tls::ServerTls;

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
pub const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The bounds on pre-authentication work; defaults in [`crate::config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From accept to the last byte of the HTTP/2 preface (TLS included).
    pub handshake_timeout: Duration,
    /// Connections open at once, in any phase.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_peer: usize,
    /// Connections from one IP address still in their handshake.
    pub max_handshakes_per_peer: usize,
    /// Concurrent HTTP/2 streams (RPCs) on one connection.
    pub max_streams_per_connection: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: config::DEFAULT_GRPC_HANDSHAKE_TIMEOUT,
            max_connections: config::DEFAULT_GRPC_MAX_CONNECTIONS,
            max_connections_per_peer: config::DEFAULT_GRPC_MAX_CONNECTIONS_PER_PEER,
            max_handshakes_per_peer: config::DEFAULT_GRPC_MAX_HANDSHAKES_PER_PEER,
            max_streams_per_connection: config::DEFAULT_GRPC_MAX_STREAMS_PER_CONNECTION,
        }
    }
}

/// Why a connection was refused at accept or cut during its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    MaxConnectionsPerPeer,
    MaxHandshakesPerPeer,
    HandshakeTimeout,
    TlsHandshakeFailed,
    NotHttp2,
    /// The peer closed (or reset) before finishing its handshake.
    HandshakeClosed,
}

impl Refusal {
    /// The `reason` label of the refusal counter.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxConnectionsPerPeer => "max_connections_per_peer",
            Self::MaxHandshakesPerPeer => "max_handshakes_per_peer",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::TlsHandshakeFailed => "tls_handshake_failed",
            Self::NotHttp2 => "not_http2",
            Self::HandshakeClosed => "handshake_closed",
        }
    }

    /// Every reason, so dashboards see zeros before the first refusal.
    pub const ALL: [Refusal; 7] = [
        Self::MaxConnections,
        Self::MaxConnectionsPerPeer,
        Self::MaxHandshakesPerPeer,
        Self::HandshakeTimeout,
        Self::TlsHandshakeFailed,
        Self::NotHttp2,
        Self::HandshakeClosed,
    ];

    fn hint(self) -> &'static str {
        match self {
            Self::MaxConnections => "syncd --grpc-max-connections",
            Self::MaxConnectionsPerPeer => "syncd --grpc-max-connections-per-peer",
            Self::MaxHandshakesPerPeer => "syncd --grpc-max-handshakes-per-peer",
            Self::HandshakeTimeout => "syncd --grpc-handshake-timeout",
            Self::TlsHandshakeFailed => "wrong CA or no client certificate?",
            Self::NotHttp2 => "not a gRPC client (plaintext to a TLS port or the reverse?)",
            Self::HandshakeClosed => "the peer went away",
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct PeerCount {
    connections: usize,
    handshakes: usize,
}

#[derive(Debug, Default)]
struct GateState {
    connections: usize,
    handshakes: usize,
    peers: HashMap<IpAddr, PeerCount>,
}

/// Connections and handshakes in flight, in total and per peer address.
#[derive(Debug)]
pub struct Gate {
    limits: Limits,
    state: Mutex<GateState>,
    /// `automc_syncd_grpc_connections` and `automc_syncd_grpc_handshakes`.
    gauges: (Gauge, Gauge),
}

impl Gate {
    pub fn new(limits: Limits, metrics: &Metrics) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::new(GateState::default()),
            gauges: (
                metrics.grpc_connections.clone(),
                metrics.grpc_handshakes.clone(),
            ),
        })
    }

    fn publish(&self, st: &GateState) {
        self.gauges.0.set(st.connections as i64);
        self.gauges.1.set(st.handshakes as i64);
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn state(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection from `ip`: it holds a connection slot for its whole
    /// life and a handshake slot until [`ConnectionSlot::handshake_done`].
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refusal> {
        let ip = ip.to_canonical();
        let mut st = self.state();
        let peer = st.peers.get(&ip).copied().unwrap_or_default();
        if st.connections >= self.limits.max_connections {
            return Err(Refusal::MaxConnections);
        }
        if peer.connections >= self.limits.max_connections_per_peer {
            return Err(Refusal::MaxConnectionsPerPeer);
        }
        if peer.handshakes >= self.limits.max_handshakes_per_peer {
            return Err(Refusal::MaxHandshakesPerPeer);
        }
        st.connections += 1;
        st.handshakes += 1;
        let p = st.peers.entry(ip).or_default();
        p.connections += 1;
        p.handshakes += 1;
        self.publish(&st);
        Ok(ConnectionSlot {
            gate: self.clone(),
            ip,
            handshaking: true,
        })
    }

    /// (connections, handshakes) open now.
    pub fn open(&self) -> (usize, usize) {
        let st = self.state();
        (st.connections, st.handshakes)
    }

    /// Peer addresses tracked (only those with an open connection).
    pub fn tracked_peers(&self) -> usize {
        self.state().peers.len()
    }

    fn release(&self, ip: IpAddr, handshaking: bool) {
        let mut st = self.state();
        st.connections = st.connections.saturating_sub(1);
        if handshaking {
            st.handshakes = st.handshakes.saturating_sub(1);
        }
        if let Some(p) = st.peers.get_mut(&ip) {
            p.connections = p.connections.saturating_sub(1);
            if handshaking {
                p.handshakes = p.handshakes.saturating_sub(1);
            }
            if p.connections == 0 {
                st.peers.remove(&ip);
            }
        }
        self.publish(&st);
    }

    fn end_handshake(&self, ip: IpAddr) {
        let mut st = self.state();
        st.handshakes = st.handshakes.saturating_sub(1);
        if let Some(p) = st.peers.get_mut(&ip) {
            p.handshakes = p.handshakes.saturating_sub(1);
        }
        self.publish(&st);
    }
}

/// One admitted connection's place in the [`Gate`]; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    gate: Arc<Gate>,
    ip: IpAddr,
    handshaking: bool,
}

impl ConnectionSlot {
    /// The handshake finished: give back the handshake slot, keep the
    /// connection slot.
    pub fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.gate.end_handshake(self.ip);
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.gate.release(self.ip, self.handshaking);
    }
}

/// The transport under an admitted connection.
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection that passed the gate and its handshake, handed to tonic: the
/// preface read during the handshake is replayed first, and the connection
/// slot is held until tonic drops the connection.
pub struct Connection {
    io: Transport,
    preface_sent: usize,
    info: TcpConnectInfo,
    _slot: ConnectionSlot,
}

impl Connected for Connection {
    // The TCP addresses, for TLS too: `Request::remote_addr` reads them, and
    // nothing in syncd looks at client certificates past the handshake.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rest) = HTTP2_PREFACE
            .get(this.preface_sent..)
            .filter(|r| !r.is_empty())
        {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.preface_sent += n;
            return Poll::Ready(Ok(()));
        }
        match &mut this.io {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Read the HTTP/2 client preface and check it.
async fn read_preface<S: AsyncRead + Unpin>(io: &mut S) -> Result<(), Refusal> {
    let mut got = [0u8; HTTP2_PREFACE.len()];
    io.read_exact(&mut got)
        .await
        .map_err(|_| Refusal::HandshakeClosed)?;
    if &got == HTTP2_PREFACE {
        Ok(())
    } else {
        Err(Refusal::NotHttp2)
    }
}

/// TLS (when configured) and the preface, each from the same deadline.
async fn handshake(tcp: TcpStream, tls: Option<TlsAcceptor>) -> Result<Transport, Refusal> {
    match tls {
        None => {
            let mut tcp = tcp;
            read_preface(&mut tcp).await?;
            Ok(Transport::Plain(tcp))
        }
        Some(acceptor) => {
            let mut stream = acceptor
                .accept(tcp)
                .await
                .map_err(|_| Refusal::TlsHandshakeFailed)?;
            read_preface(&mut stream).await?;
            Ok(Transport::Tls(Box::new(stream)))
        }
    }
}

/// Counts and logs refusals (the log at most once a second).
#[derive(Clone)]
struct Refusals {
    metrics: Metrics,
    log: Arc<LogThrottle>,
}

impl Refusals {
    fn record(&self, reason: Refusal, peer: std::net::SocketAddr) {
        self.metrics.grpc_refused(reason.as_label());
        if reason == Refusal::HandshakeClosed {
            tracing::debug!(client.addr = %peer, "gRPC peer closed during its handshake");
            return;
        }
        if let Some(suppressed) = self.log.check(Instant::now()) {
            tracing::warn!(
                client.addr = %peer,
                reason = reason.as_label(),
                suppressed,
                "gRPC connection refused before its handshake finished ({})",
                reason.hint()
            );
        }
    }
}

/// Accept connections on `listener` through `gate`, run each handshake in
/// its own task under the deadline, and hand finished connections to tonic.
/// The accept loop itself never waits on a peer.
pub fn incoming(
    listener: TcpListener,
    gate: Arc<Gate>,
    tls: Option<Arc<ServerTls>>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<Connection, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    for reason in Refusal::ALL {
        metrics.grpc_refused_reason(reason.as_label());
    }
    let refusals = Refusals {
        metrics,
        log: Arc::new(LogThrottle::new(Duration::from_secs(1))),
    };
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: back off, keep going.
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let mut slot = match gate.admit(peer.ip()) {
                Ok(s) => s,
                Err(reason) => {
                    drop(tcp);
                    refusals.record(reason, peer);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let info = tcp.connect_info();
            let acceptor = tls.as_ref().map(|t| TlsAcceptor::from(t.current()));
            let deadline = tokio::time::Instant::now() + gate.limits().handshake_timeout;
            let (tx, refusals, shutdown) = (tx.clone(), refusals.clone(), shutdown.clone());
            tokio::spawn(async move {
                let r = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = tokio::time::timeout_at(deadline, handshake(tcp, acceptor)) => r,
                };
                match r.unwrap_or(Err(Refusal::HandshakeTimeout)) {
                    Ok(io) => {
                        slot.handshake_done();
                        let conn = Connection {
                            io,
                            preface_sent: 0,
                            info,
                            _slot: slot,
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(reason) => refusals.record(reason, peer),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_peer: usize, handshakes: usize) -> Limits {
        Limits {
            max_connections: total,
            max_connections_per_peer: per_peer,
            max_handshakes_per_peer: handshakes,
            ..Limits::default()
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_peer_cannot_hold_more_handshakes_than_its_share() {
        let gate = Gate::new(limits(100, 100, 2), &Metrics::new());
        let a = gate.admit(ip(1)).expect("first");
        let _b = gate.admit(ip(1)).expect("second");
        assert_eq!(gate.admit(ip(1)).err(), Some(Refusal::MaxHandshakesPerPeer));
        // Another peer is unaffected.
        let _c = gate.admit(ip(2)).expect("other peer");
        // A finished handshake frees its handshake slot, not its connection.
        let mut a = a;
        a.handshake_done();
        let _d = gate
            .admit(ip(1))
            .expect("slot freed by a finished handshake");
        assert_eq!(gate.open(), (4, 3));
    }

    #[test]
    fn connections_per_peer_and_in_total_are_capped() {
        let gate = Gate::new(limits(3, 2, 10), &Metrics::new());
        let _a = gate.admit(ip(1)).expect("1");
        let b = gate.admit(ip(1)).expect("2");
        assert_eq!(
            gate.admit(ip(1)).err(),
            Some(Refusal::MaxConnectionsPerPeer)
        );
        let _c = gate.admit(ip(2)).expect("3");
        assert_eq!(gate.admit(ip(3)).err(), Some(Refusal::MaxConnections));
        drop(b);
        let _d = gate
            .admit(ip(3))
            .expect("a closed connection frees its slot");
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_the_ipv4_address() {
        let gate = Gate::new(limits(10, 1, 10), &Metrics::new());
        let _a = gate.admit(ip(1)).expect("v4");
        let mapped = match ip(1) {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            v6 => v6,
        };
        assert_eq!(
            gate.admit(mapped).err(),
            Some(Refusal::MaxConnectionsPerPeer)
        );
    }

    #[test]
    fn a_peer_is_forgotten_when_its_last_connection_closes() {
        let gate = Gate::new(limits(10, 10, 10), &Metrics::new());
        let mut a = gate.admit(ip(1)).expect("a");
        let b = gate.admit(ip(1)).expect("b");
        a.handshake_done();
        drop(a);
        assert_eq!(gate.tracked_peers(), 1);
        drop(b);
        assert_eq!(gate.tracked_peers(), 0);
        assert_eq!(gate.open(), (0, 0));
    }

    #[test]
    fn every_refusal_has_its_own_label() {
        let labels: std::collections::HashSet<_> =
            Refusal::ALL.iter().map(|r| r.as_label()).collect();
        assert_eq!(labels.len(), Refusal::ALL.len());
    }

    #[tokio::test]
    async fn only_the_http2_preface_passes_the_handshake() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, HTTP2_PREFACE)
            .await
            .expect("write");
        assert_eq!(read_preface(&mut server).await, Ok(()));
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(read_preface(&mut server).await, Err(Refusal::NotHttp2));
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert_eq!(
            read_preface(&mut server).await,
            Err(Refusal::HandshakeClosed)
        );
    }
}
