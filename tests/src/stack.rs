//! syncd and edge started in-process on port 0, plus gRPC helpers for tests.
//!
//! Layout: one section per process. Keep each process's helpers inside its
//! section so engineers can add to them without stepping on each other.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use automc_proto::v1::route_sync_client::RouteSyncClient;
use automc_proto::v1::{watch_request, Route, WakePhase, WatchAck, WatchHello, WatchRequest};
use automc_proto::RouteTable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::pg::TestPg;

/// Default bound for "eventually" conditions in tests.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// GET `path` on `addr` over plain HTTP/1.0; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `msg` with `authorization: Bearer <token>`, as grpcurl's `-H` sends it.
pub fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    match format!("Bearer {token}").parse() {
        Ok(v) => {
            req.metadata_mut().insert("authorization", v);
        }
        Err(e) => panic!("token {token:?} is not a header value: {e}"),
    }
    req
}

/// Poll `cond` until it holds or `deadline` passes (then panic naming `what`).
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

// ===================================================================== syncd

/// Raise the soft RLIMIT_NOFILE to the hard limit, or fail saying why.
pub fn ensure_fd_limit(need: u64) {
    let raised = rlimit::increase_nofile_limit(need.max(20_000)).unwrap_or(0);
    assert!(
        raised >= need,
        "this test needs {need} file descriptors but RLIMIT_NOFILE allows {raised}: \
         run `ulimit -n 20000` (or higher) before `cargo test`"
    );
}

/// A Postgres cluster with `syncd migrate` applied.
pub async fn migrated_pg() -> TestPg {
    let pg = TestPg::start().await;
    if let Err(e) = syncd::migrate(&pg.dsn()).await {
        panic!("syncd migrate failed: {e}");
    }
    pg
}

/// Create a non-superuser login role `syncd` that can read the routing
/// tables, and return a DSN for it. A test can then lock syncd out
/// (`ALTER ROLE syncd NOLOGIN`) while it keeps changing data as `postgres`.
pub async fn syncd_role_dsn(pg: &TestPg) -> String {
    pg.execute(
        "CREATE ROLE syncd LOGIN;
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO syncd;",
    )
    .await;
    format!(
        "postgres://syncd@127.0.0.1:{}/{}",
        pg.port(),
        crate::pg::DATABASE
    )
}

/// Terminate every backend of role `syncd` (its LISTEN connection).
pub async fn terminate_syncd_backends(pg: &TestPg) -> u64 {
    let c = pg.client().await;
    match c
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'syncd'",
            &[],
        )
        .await
    {
        Ok(row) => row.get::<_, i64>(0) as u64,
        Err(e) => panic!("pg_terminate_backend failed: {e}"),
    }
}

/// Value of a metric line `name ` (or `name{labels} `) in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A loopback address nothing listens on, and nothing can start listening
/// on while this test process runs: the port stays bound to a socket that
/// never listens (a connection to it is refused), so the OS cannot hand it
/// to another test's `bind(0)`. Released, a port could come back as some
/// other test's HTTP server, and a "dead" backend would answer.
pub fn dead_address() -> String {
    static HELD: std::sync::Mutex<Vec<tokio::net::TcpSocket>> = std::sync::Mutex::new(Vec::new());
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let addr = socket.local_addr().expect("addr").to_string();
    HELD.lock().unwrap_or_else(|p| p.into_inner()).push(socket);
    addr
}

/// A syncd running in-process.
pub struct SyncdHandle {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub epoch: String,
    pub metrics: syncd::Metrics,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), syncd::Error>>>,
}

/// Config used by [`start_syncd`]: loopback port 0, fast reconnects and
/// heartbeats so tests do not wait on production timings.
pub fn test_syncd_config(dsn: &str) -> syncd::Config {
    let mut c = syncd::Config::new(dsn);
    c.reconnect_min = Duration::from_millis(50);
    c.reconnect_max = Duration::from_millis(500);
    c.heartbeat_interval = Duration::from_millis(500);
    c.pg_probe_interval = Duration::from_secs(2);
    c.pg_probe_timeout = Duration::from_secs(2);
    c.waker.poll_interval = Duration::from_millis(50);
    c.waker.request_timeout = Duration::from_secs(2);
    c.waker.timeout = Duration::from_secs(10);
    c
}

/// Start syncd on `dsn` (see [`test_syncd_config`], then `tweak`) and wait
/// until `/readyz` says ready.
pub async fn start_syncd(dsn: &str, tweak: impl FnOnce(&mut syncd::Config)) -> SyncdHandle {
    let h = spawn_syncd(dsn, tweak).await;
    h.wait_ready().await;
    h
}

/// Start syncd without waiting for readiness.
pub async fn spawn_syncd(dsn: &str, tweak: impl FnOnce(&mut syncd::Config)) -> SyncdHandle {
    let mut config = test_syncd_config(dsn);
    tweak(&mut config);
    let shutdown = CancellationToken::new();
    let running = match syncd::start(config, shutdown.clone()).await {
        Ok(r) => r,
        Err(e) => panic!("syncd failed to start: {e}"),
    };
    SyncdHandle {
        grpc_addr: running.grpc_addr,
        http_addr: running.http_addr,
        epoch: running.epoch.clone(),
        metrics: running.metrics.clone(),
        shutdown,
        task: Some(tokio::spawn(running.wait())),
    }
}

impl SyncdHandle {
    /// `http://127.0.0.1:PORT`, what edges and clients dial.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Poll `/readyz` until it answers 200.
    pub async fn wait_ready(&self) {
        let addr = self.http_addr;
        eventually("syncd /readyz to answer 200", DEADLINE, || async move {
            matches!(http_get(addr, "/readyz").await, Ok((200, _)))
        })
        .await;
    }

    /// `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        match http_get(self.http_addr, "/metrics").await {
            Ok((200, body)) => body,
            other => panic!("GET /metrics failed: {other:?}"),
        }
    }

    /// A RouteSync client on a fresh channel.
    pub async fn client(&self) -> RouteSyncClient<Channel> {
        match RouteSyncClient::connect(self.grpc_url()).await {
            Ok(c) => c,
            Err(e) => panic!("connect to syncd at {} failed: {e}", self.grpc_url()),
        }
    }

    /// Watch routes as an edge would (no token).
    pub async fn watch(&self, edge_id: &str) -> RouteWatcher {
        RouteWatcher::connect(
            &self.grpc_url(),
            WatchHello {
                edge_id: edge_id.into(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("WatchRoutes failed: {e}"))
    }

    /// Cancel and wait until every task ended.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            match tokio::time::timeout(DEADLINE, t).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("syncd stopped with an error: {e}"),
                Ok(Err(e)) => panic!("syncd task failed: {e}"),
                Err(_) => panic!("syncd did not stop within {DEADLINE:?}"),
            }
        }
    }
}

impl Drop for SyncdHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What a test watcher has seen so far.
#[derive(Debug, Clone, Default)]
pub struct WatchState {
    pub table: RouteTable,
    pub epoch: String,
    pub version: u64,
    pub snapshots: u64,
    pub heartbeats: u64,
    /// Every delta: (from_version, version, changes, encoded bytes).
    pub deltas: Vec<DeltaSeen>,
    pub wakes: HashMap<String, WakePhase>,
    /// Set when the stream ended (status message).
    pub ended: Option<String>,
    /// A delta arrived that did not follow the held version.
    pub gap: bool,
    /// Wake sets received (one after each resume).
    pub wake_sets: u64,
    /// Snapshots of only the buckets that differed (counted in `snapshots`).
    pub partial_snapshots: u64,
    /// Epoch and version named by the last heartbeat.
    pub last_heartbeat: Option<(String, u64)>,
    /// Encoded bytes of every message received.
    pub bytes: u64,
    /// The stream broke the framing rules (pieces out of order).
    pub framing: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct DeltaSeen {
    pub from_version: u64,
    pub version: u64,
    pub changes: usize,
    pub bytes: usize,
    pub received: std::time::Instant,
}

impl WatchState {
    /// Routes by server name.
    pub fn routes(&self) -> HashMap<String, Route> {
        self.table
            .routes()
            .map(|r| (r.server.clone(), r.clone()))
            .collect()
    }

    pub fn address_of(&self, server: &str) -> Option<String> {
        self.table.get(server).map(|r| r.address.clone())
    }
}

/// A WatchRoutes stream kept applied into a [`RouteTable`], acking every
/// version it applies, like an edge.
pub struct RouteWatcher {
    state: Arc<Mutex<WatchState>>,
    changed: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl RouteWatcher {
    /// Open a watch with `hello`, optionally presenting a bearer token.
    pub async fn connect(
        url: &str,
        hello: WatchHello,
        token: Option<&str>,
    ) -> Result<RouteWatcher, tonic::Status> {
        Self::open(url, hello, token, WatchState::default()).await
    }

    /// Reconnect holding `held` (an earlier watcher's state): the hello
    /// carries its epoch, version and bucket hashes, as the edge's does, so
    /// syncd may answer with only what was missed. Counters (snapshots, deltas, ...) start from zero.
    pub async fn resume(
        url: &str,
        edge_id: &str,
        held: &WatchState,
    ) -> Result<RouteWatcher, tonic::Status> {
        let hello = WatchHello {
            edge_id: edge_id.into(),
            epoch: held.epoch.clone(),
            version: held.version,
            bucket_hashes: held.table.bucket_hashes().to_vec(),
        };
        let state = WatchState {
            table: held.table.clone(),
            epoch: held.epoch.clone(),
            version: held.version,
            wakes: held.wakes.clone(),
            ..WatchState::default()
        };
        Self::open(url, hello, None, state).await
    }

    async fn open(
        url: &str,
        hello: WatchHello,
        token: Option<&str>,
        initial: WatchState,
    ) -> Result<RouteWatcher, tonic::Status> {
        let mut client = RouteSyncClient::connect(url.to_owned())
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?
            // The edge's own setting, not a raised one.
            .max_decoding_message_size(automc_proto::sync::MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel::<WatchRequest>(1024);
        let _ = tx
            .send(WatchRequest {
                msg: Some(watch_request::Msg::Hello(hello)),
            })
            .await;
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(t) = token {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| tonic::Status::invalid_argument("token not ASCII"))?;
            req.metadata_mut().insert("authorization", v);
        }
        let mut inbound = client.watch_routes(req).await?.into_inner();
        // The first message tells whether the watch really started (auth
        // errors can arrive here).
        let state = Arc::new(Mutex::new(initial));
        let (changed_tx, changed) = watch::channel(0u64);
        let first = match inbound.next().await {
            Some(Ok(m)) => m,
            Some(Err(s)) => return Err(s),
            None => {
                return Err(tonic::Status::aborted(
                    "stream ended before its first message",
                ))
            }
        };
        let mut pieces = automc_proto::sync::Assembler::new();
        apply(&state, &tx, &mut pieces, first).await;
        changed_tx.send_modify(|n| *n += 1);
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                match inbound.next().await {
                    Some(Ok(m)) => apply(&st, &tx, &mut pieces, m).await,
                    Some(Err(s)) => {
                        lock(&st).ended = Some(format!("{:?}: {}", s.code(), s.message()));
                        changed_tx.send_modify(|n| *n += 1);
                        return;
                    }
                    None => {
                        lock(&st).ended = Some("stream closed".into());
                        changed_tx.send_modify(|n| *n += 1);
                        return;
                    }
                }
                changed_tx.send_modify(|n| *n += 1);
            }
        });
        Ok(RouteWatcher {
            state,
            changed,
            task,
        })
    }

    /// A copy of what the watcher holds now.
    pub fn state(&self) -> WatchState {
        lock(&self.state).clone()
    }

    /// Wait until `cond` holds on the watcher's state (or panic after
    /// `deadline`, naming `what`).
    pub async fn wait_until(
        &mut self,
        what: &str,
        deadline: Duration,
        cond: impl Fn(&WatchState) -> bool,
    ) -> WatchState {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            {
                let st = lock(&self.state);
                if cond(&st) {
                    return st.clone();
                }
            }
            match tokio::time::timeout_at(end, self.changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    let st = lock(&self.state);
                    if cond(&st) {
                        return st.clone();
                    }
                    panic!(
                        "watch task ended before: {what} (state: ended={:?})",
                        st.ended
                    );
                }
                Err(_) => {
                    let st = lock(&self.state);
                    panic!(
                        "timed out after {deadline:?} waiting for: {what} (version {}, {} routes, ended {:?})",
                        st.version,
                        st.table.len(),
                        st.ended
                    );
                }
            }
        }
    }
}

impl Drop for RouteWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(s: &Mutex<WatchState>) -> MutexGuard<'_, WatchState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

async fn apply(
    state: &Mutex<WatchState>,
    acks: &mpsc::Sender<WatchRequest>,
    pieces: &mut automc_proto::sync::Assembler,
    m: automc_proto::v1::WatchResponse,
) {
    use automc_proto::sync::Event;
    use prost::Message;
    let bytes = m.encoded_len();
    let ack = {
        let mut st = lock(state);
        st.bytes += bytes as u64;
        let Some(msg) = m.msg else { return };
        let event = match pieces.push(msg) {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                st.framing = Some(e.to_string());
                return;
            }
        };
        match event {
            Event::Snapshot {
                epoch,
                version,
                table,
                wakes,
                partial,
                table_hash,
            } => {
                if partial.is_some() {
                    st.partial_snapshots += 1;
                }
                let table =
                    match automc_proto::sync::whole_table(&st.table, table, partial, table_hash) {
                        Ok(t) => t,
                        Err(e) => {
                            st.framing = Some(e.to_string());
                            return;
                        }
                    };
                st.table = table;
                st.epoch = epoch;
                st.version = version;
                st.snapshots += 1;
                st.wakes = wakes
                    .into_iter()
                    .map(|w| (w.server.clone(), w.phase()))
                    .collect();
                Some((st.epoch.clone(), st.version))
            }
            Event::Delta {
                epoch,
                from_version,
                version,
                upserts,
                removed,
            } => {
                if epoch != st.epoch || from_version != st.version {
                    st.gap = true;
                }
                let changes = upserts.len() + removed.len();
                st.table.apply(upserts, &removed);
                st.version = version;
                st.deltas.push(DeltaSeen {
                    from_version,
                    version,
                    changes,
                    bytes,
                    received: std::time::Instant::now(),
                });
                Some((st.epoch.clone(), st.version))
            }
            Event::Heartbeat(h) => {
                st.heartbeats += 1;
                st.last_heartbeat = Some((h.epoch, h.version));
                None
            }
            Event::Wake(w) => {
                let phase = w.phase();
                st.wakes.insert(w.server, phase);
                None
            }
            Event::WakeSet(wakes) => {
                st.wake_sets += 1;
                st.wakes = wakes
                    .into_iter()
                    .map(|w| (w.server.clone(), w.phase()))
                    .collect();
                None
            }
            // Player counts are for edges that balance on them.
            Event::Counts(_) => None,
        }
    };
    if let Some((epoch, version)) = ack {
        // Never block the reader on acks; a dropped ack is caught up by the next.
        let _ = acks.try_send(WatchRequest {
            msg: Some(watch_request::Msg::Ack(WatchAck { epoch, version })),
        });
    }
}

// ====================================================================== edge
// (edge helpers go below this line)

/// The usual three: a migrated Postgres holding `rows` (SQL, may be
/// empty), an in-process syncd on it, and a ready edge fed by that syncd.
pub async fn stack(
    rows: &str,
    tweak: impl FnOnce(&mut edge::Config),
) -> (TestPg, SyncdHandle, EdgeHandle) {
    stack_tweaked(rows, |_| {}, tweak).await
}

/// [`stack`] with syncd's config tweaked too (a waker URL, say).
pub async fn stack_tweaked(
    rows: &str,
    syncd_tweak: impl FnOnce(&mut syncd::Config),
    edge_tweak: impl FnOnce(&mut edge::Config),
) -> (TestPg, SyncdHandle, EdgeHandle) {
    let pg = migrated_pg().await;
    if !rows.is_empty() {
        pg.execute(rows).await;
    }
    let syncd = start_syncd(&pg.dsn(), syncd_tweak).await;
    let edge = start_edge(&[syncd.grpc_url()], edge_tweak).await;
    edge.ready().await;
    (pg, syncd, edge)
}

pub use automc_proto::fake::{route, stopped_route};

/// An edge fed by [`automc_proto::fake::FakeSyncd`] instead of Postgres and
/// syncd, for tests of the edge's own behaviour: it holds `routes` from its
/// first snapshot on, and nothing changes after (heartbeats keep the stream
/// alive); `Wake` answers as a syncd without a waker does. Keep the returned
/// fake alive as long as the edge.
pub async fn fake_stack(
    routes: Vec<Route>,
    tweak: impl FnOnce(&mut edge::Config),
) -> (automc_proto::fake::FakeSyncd, EdgeHandle) {
    let mut syncd = automc_proto::fake::FakeSyncd::start(automc_proto::fake::no_waker())
        .await
        .expect("fake syncd starts");
    let edge = start_edge(&[syncd.url()], tweak).await;
    serve_routes(&mut syncd, routes).await;
    edge.ready().await;
    (syncd, edge)
}

/// Answer the next watch stream an edge opens at the fake with a snapshot
/// of `routes`, then heartbeats (the edge may be in-process or a child).
pub async fn serve_routes(syncd: &mut automc_proto::fake::FakeSyncd, routes: Vec<Route>) {
    use automc_proto::v1::{watch_response, SnapshotChunk};
    let watch = syncd
        .next_watch(DEADLINE)
        .await
        .expect("the edge opens a watch stream");
    let epoch = "fake".to_owned();
    let snapshot = watch_response::Msg::SnapshotChunk(SnapshotChunk {
        epoch: epoch.clone(),
        version: 1,
        routes: routes.into_iter().map(Into::into).collect(),
        last: true,
        ..SnapshotChunk::default()
    });
    watch.serve_quietly(snapshot, epoch, 1, Duration::from_secs(1));
}

/// An edge running in-process on 127.0.0.1 port 0; drained when dropped.
pub struct EdgeHandle {
    pub listen_addr: std::net::SocketAddr,
    pub http_addr: std::net::SocketAddr,
    pub grpc_addr: std::net::SocketAddr,
    pub shutdown: tokio_util::sync::CancellationToken,
    running: Option<edge::Running>,
}

/// Test defaults: every port 0, short timeouts, no admission limits (tests
/// open many connections from 127.0.0.1), fast sync backoff.
pub fn edge_test_config(syncd_urls: &[String]) -> edge::Config {
    edge::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        grpc_listen: "127.0.0.1:0".parse().expect("addr"),
        syncd: syncd_urls.to_vec(),
        edge_id: "test-edge".into(),
        handshake_timeout: std::time::Duration::from_secs(2),
        connect_timeout: std::time::Duration::from_secs(1),
        hold_timeout: std::time::Duration::from_secs(10),
        drain_timeout: std::time::Duration::from_secs(10),
        sync_backoff_min: std::time::Duration::from_millis(50),
        sync_backoff_max: std::time::Duration::from_millis(500),
        heartbeat_timeout: std::time::Duration::from_secs(5),
        status_cache_ttl: std::time::Duration::from_millis(200),
        limits: edge::limits::LimitsConfig {
            max_connections: 0,
            max_connections_per_ip: 0,
            max_held_logins_per_ip: 0,
            rate_per_ip: 0.0,
            rate_burst: 0.0,
            ..edge::limits::LimitsConfig::default()
        },
        ..edge::Config::default()
    }
}

/// Start an edge against `syncd_urls`; `tweak` adjusts the test config.
pub async fn start_edge(
    syncd_urls: &[String],
    tweak: impl FnOnce(&mut edge::Config),
) -> EdgeHandle {
    let mut config = edge_test_config(syncd_urls);
    tweak(&mut config);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = edge::start(config, shutdown.clone())
        .await
        .expect("edge starts");
    EdgeHandle {
        listen_addr: running.listen_addr,
        http_addr: running.http_addr,
        grpc_addr: running.grpc_addr,
        shutdown,
        running: Some(running),
    }
}

impl EdgeHandle {
    pub fn running(&self) -> &edge::Running {
        self.running.as_ref().expect("edge running")
    }

    /// Wait until the first snapshot is applied.
    pub async fn ready(&self) {
        let r = self.running();
        eventually(
            "edge ready (first snapshot applied)",
            DEADLINE,
            || async move { r.is_ready() },
        )
        .await;
    }

    /// Wait until the table resolves `hostname` to `server` (`None` = no match).
    pub async fn wait_route(&self, hostname: &str, server: Option<&str>) {
        let host = automc_proto::normalize_player_hostname(hostname);
        let r = self.running();
        let host = &host;
        eventually(
            &format!("{hostname} → {server:?} on the edge"),
            DEADLINE,
            || async move {
                let t = r.table();
                t.table
                    .lookup(host)
                    .ok()
                    .flatten()
                    .map(|m| m.route.server.as_str())
                    == server
            },
        )
        .await;
    }

    /// Wait until `server`'s route has `address` and `state`.
    pub async fn wait_route_state(&self, server: &str, address: &str, state: &str) {
        let r = self.running();
        eventually(
            &format!("{server} at {address} in state {state}"),
            DEADLINE,
            || async move {
                let t = r.table();
                t.table
                    .get(server)
                    .is_some_and(|r| r.address == address && r.state == state)
            },
        )
        .await;
    }

    /// Log `name` in through this edge at `host` and wait until one of
    /// `backends` has it: the index of that backend, and the open connection.
    pub async fn login_lands(
        &self,
        host: &str,
        name: &str,
        backends: &[&crate::mc::McBackend],
    ) -> (usize, crate::mc::McConn) {
        let conn = crate::mc::login(self.listen_addr, host, name)
            .await
            .expect("login");
        let mut at = None;
        eventually(&format!("{name} reaches a backend"), DEADLINE, || {
            let found = backends.iter().position(|b| {
                b.logins()
                    .iter()
                    .any(|c| c.username.as_deref() == Some(name))
            });
            at = found;
            async move { found.is_some() }
        })
        .await;
        (at.unwrap_or(usize::MAX), conn)
    }

    /// Drain (as on SIGTERM) and wait until stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            let _ = r.wait().await;
        }
    }

    /// `/metrics` text.
    pub fn metrics(&self) -> String {
        self.running().metrics_text()
    }

    /// Value of one sample line of `/metrics` (`name{labels}`), 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_sample(&self.metrics(), sample)
    }
}

impl Drop for EdgeHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Value of the exact sample `name{labels}` in Prometheus text, 0 when absent.
pub fn metric_sample(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}
