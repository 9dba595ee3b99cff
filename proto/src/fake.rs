//! `FakeSyncd`: a real tonic `RouteSync` server on 127.0.0.1:0 that a test
//! (or a benchmark) drives by hand, so edge behaviour can be exercised
//! without Postgres or a real syncd. Behind the `fake` feature; the one fake
//! of syncd in the workspace.
//!
//! Every `WatchRoutes` stream is handed to the test as a [`Watch`] once its
//! `WatchHello` arrived: the test sends snapshots, deltas, wakes and
//! heartbeats on it and reads the acks and session reports the edge sends
//! back. `Wake` answers come from the closure given to [`FakeSyncd::start`];
//! every other RPC answers `UNIMPLEMENTED`.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::v1::route_sync_server::{RouteSync, RouteSyncServer};
use crate::v1::*;

/// How the fake answers `Wake`.
pub type WakeAnswer = Arc<dyn Fn(WakeRequest) -> Result<WakeResponse, Status> + Send + Sync>;

/// One watch stream as the fake sees it.
pub struct Watch {
    pub hello: WatchHello,
    /// The `authorization` header the edge sent, if any.
    pub token: Option<String>,
    /// What the edge sends after its hello: acks and session reports.
    pub requests: Streaming<WatchRequest>,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
}

impl Watch {
    /// Queue one message to the edge; false once the edge hung up.
    pub async fn send(&self, msg: watch_response::Msg) -> bool {
        self.tx
            .send(Ok(WatchResponse { msg: Some(msg) }))
            .await
            .is_ok()
    }

    /// End the stream with an error status.
    pub async fn fail(&self, status: Status) {
        let _ = self.tx.send(Err(status)).await;
    }

    /// The next ack, skipping session reports; `None` when the stream ended
    /// or nothing came within `within`.
    pub async fn next_ack(&mut self, within: Duration) -> Option<WatchAck> {
        tokio::time::timeout(within, async {
            while let Some(Ok(m)) = self.requests.next().await {
                if let Some(watch_request::Msg::Ack(a)) = m.msg {
                    return Some(a);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    /// A task that sends `first`, then a heartbeat at `version` every
    /// `every` until the edge hangs up (what a quiet syncd does).
    pub fn serve_quietly(
        self,
        first: watch_response::Msg,
        epoch: String,
        version: u64,
        every: Duration,
    ) {
        tokio::spawn(async move {
            let mut requests = self.requests;
            // Acks and reports are read and dropped, so the edge never blocks.
            tokio::spawn(async move { while let Some(Ok(_)) = requests.next().await {} });
            let mut msg = first;
            loop {
                if self
                    .tx
                    .send(Ok(WatchResponse { msg: Some(msg) }))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(every).await;
                msg = watch_response::Msg::Heartbeat(Heartbeat {
                    epoch: epoch.clone(),
                    version,
                });
            }
        });
    }
}

/// A running fake: its address and the watch streams edges open on it.
pub struct FakeSyncd {
    pub addr: SocketAddr,
    pub watches: mpsc::Receiver<Watch>,
}

impl FakeSyncd {
    /// Serve on 127.0.0.1:0 until the runtime ends.
    pub async fn start(wake: WakeAnswer) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (watches_tx, watches) = mpsc::channel(16);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RouteSyncServer::new(Service {
                    watches: watches_tx,
                    wake,
                }))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Ok(Self { addr, watches })
    }

    /// `http://127.0.0.1:port`, for the edge's `--syncd`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next watch stream, or `None` if none opened within `within`.
    pub async fn next_watch(&mut self, within: Duration) -> Option<Watch> {
        tokio::time::timeout(within, self.watches.recv())
            .await
            .ok()
            .flatten()
    }
}

/// A running route of `server` at `address`, reached by `hostname` (a test
/// fixture for tables on both sides of the sync stream).
pub fn route(server: &str, hostname: &str, address: &str) -> crate::v1::Route {
    crate::v1::Route {
        server: server.into(),
        hostnames: vec![hostname.into()],
        address: address.into(),
        state: "running".into(),
        ..crate::v1::Route::default()
    }
}

/// Route number `i` of the fleet benchmark's table (`s{i}`, reached at
/// `s{i}.example.com`), which the examples that size tables build too.
pub fn fleet_route(i: usize) -> crate::v1::Route {
    route(
        &format!("s{i}"),
        &format!("s{i}.example.com"),
        &format!("10.0.{}.{}:25565", i / 250 % 250, i % 250),
    )
}

/// The first argument as a count of routes, 100,000 when absent or not a
/// number (the examples that size tables).
pub fn routes_arg() -> usize {
    std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000)
}

/// [`route`] with `state` "stopped": asleep until something wakes it.
pub fn stopped_route(server: &str, hostname: &str, address: &str) -> crate::v1::Route {
    crate::v1::Route {
        state: "stopped".into(),
        ..route(server, hostname, address)
    }
}

/// A player as an edge reports it: on `server`, joined at `since_ms`, no
/// UUID or backend (a test fixture for both sides of the report stream).
pub fn player(session: u64, server: &str, name: &str, since_ms: i64) -> crate::v1::PlayerSession {
    crate::v1::PlayerSession {
        session,
        server: server.into(),
        name: name.into(),
        uuid: String::new(),
        since_ms,
        backend: String::new(),
    }
}

/// What a syncd without a waker answers every `Wake`.
pub fn no_waker() -> WakeAnswer {
    Arc::new(|_| Err(crate::v1::WakeFailure::NotConfigured.to_status("waker not configured")))
}

/// A `Wake` answer for fakes that never expect one.
pub fn no_wakes() -> WakeAnswer {
    Arc::new(|_| Err(Status::unimplemented("this fake serves no wakes")))
}

struct Service {
    watches: mpsc::Sender<Watch>,
    wake: WakeAnswer,
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not served by FakeSyncd"))
}

#[tonic::async_trait]
impl RouteSync for Service {
    type WatchRoutesStream = ReceiverStream<Result<WatchResponse, Status>>;
    async fn watch_routes(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut requests = req.into_inner();
        let Some(Ok(WatchRequest {
            msg: Some(watch_request::Msg::Hello(hello)),
        })) = requests.next().await
        else {
            return Err(Status::invalid_argument("WatchHello first"));
        };
        let (tx, rx) = mpsc::channel(16);
        let watch = Watch {
            hello,
            token,
            requests,
            tx,
        };
        if self.watches.send(watch).await.is_err() {
            return Err(Status::unavailable("the test stopped listening"));
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }
    async fn list_routes(
        &self,
        _: Request<ListRoutesRequest>,
    ) -> Result<Response<ListRoutesResponse>, Status> {
        unimplemented()
    }
    async fn get_route(
        &self,
        _: Request<GetRouteRequest>,
    ) -> Result<Response<GetRouteResponse>, Status> {
        unimplemented()
    }
    async fn wake(&self, req: Request<WakeRequest>) -> Result<Response<WakeResponse>, Status> {
        (self.wake)(req.into_inner()).map(Response::new)
    }
    async fn list_edges(
        &self,
        _: Request<ListEdgesRequest>,
    ) -> Result<Response<ListEdgesResponse>, Status> {
        unimplemented()
    }
    async fn list_wakes(
        &self,
        _: Request<ListWakesRequest>,
    ) -> Result<Response<ListWakesResponse>, Status> {
        unimplemented()
    }
    async fn list_servers(
        &self,
        _: Request<ListServersRequest>,
    ) -> Result<Response<ListServersResponse>, Status> {
        unimplemented()
    }
    async fn list_players(
        &self,
        _: Request<ListPlayersRequest>,
    ) -> Result<Response<ListPlayersResponse>, Status> {
        unimplemented()
    }
    type WatchEventsStream = ReceiverStream<Result<FleetEvent, Status>>;
    async fn watch_events(
        &self,
        _: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        unimplemented()
    }
}
