//! The gRPC side: `automc.v1.RouteSync` plus `grpc.health.v1` and server
//! reflection (v1 and v1alpha, so grpcurl 1.8+ works without .proto files).
//! The bearer token guards RouteSync. Health stays open for probes, and so
//! does reflection: it serves only the API schema (public in the repo), and
//! without it `grpcurl ... grpc.health.v1.Health/Check` could not work
//! without the token.
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use automc_proto::backend::{order, BackendState};
use automc_proto::sync::MAX_EDGE_ID_BYTES;
use automc_proto::v1::route_sync_server::{RouteSync, RouteSyncServer};
use automc_proto::v1::CountSource;
use automc_proto::v1::{
    watch_request, FleetEvent, GetRouteRequest, GetRouteResponse, ListEdgesRequest,
    ListEdgesResponse, ListPlayersRequest, ListPlayersResponse, ListRoutesRequest,
    ListRoutesResponse, ListServersRequest, ListServersResponse, ListWakesRequest,
    ListWakesResponse, WakeRequest, WakeResponse, WatchEventsRequest, WatchRequest, WatchResponse,
};
use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use crate::events::Events;
use crate::fleet::Fleet;
use crate::pieces::WatchOut;
use crate::publisher::Publisher;
use crate::sleep::Sleeper;
use crate::wake::Wakes;
use automc_proto::auth::BearerAuth;

/// After shutdown starts, streams get this long to end before the server
/// stops waiting for them (a stuck client never reads its final status).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub struct RouteSyncService {
    publisher: Arc<Publisher>,
    /// How long a new watch stream may take to send its `WatchHello` (one
    /// deadline for the whole message: trickled bytes do not extend it).
    hello_timeout: Duration,
    wakes: Arc<Wakes>,
    /// False while this instance is a hot standby (see `leader`).
    active: tokio::sync::watch::Receiver<bool>,
    /// True once the `servers` table was first read: until then the
    /// table in memory is empty, not the routes.
    ready: tokio::sync::watch::Receiver<bool>,
    /// Sessions reported by the edges.
    fleet: Arc<Fleet>,
    sleeper: Arc<Sleeper>,
    events: Events,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

/// What a caller that needs the routes hears before syncd's first read.
fn not_read_yet() -> Status {
    Status::unavailable("syncd has not read the routes from Postgres yet; retry shortly")
}

impl RouteSyncService {
    /// The routes are read, or the call is refused as unavailable (an
    /// empty answer would say that no route exists).
    fn routes_read(&self) -> Result<(), Status> {
        if *self.ready.borrow() {
            Ok(())
        } else {
            Err(not_read_yet())
        }
    }

    /// Read the hello (within the hello deadline), register the watcher
    /// and start reading its acks and session reports.
    async fn open_watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<crate::publisher::WatchStream, Status> {
        let peer = req.remote_addr();
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(self.hello_timeout, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!("no WatchHello within {:?}", self.hello_timeout))
            })??;
        let hello = match first.and_then(|m| m.msg) {
            Some(watch_request::Msg::Hello(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of WatchRoutes must be a WatchHello",
                ))
            }
        };
        if hello.edge_id.len() > MAX_EDGE_ID_BYTES {
            return Err(Status::invalid_argument(format!(
                "WatchHello.edge_id is {} bytes; the most is {MAX_EDGE_ID_BYTES}",
                hello.edge_id.len()
            )));
        }
        // An edge takes its first snapshot for the routes, so none is sent
        // before the first read: the watch waits for it within the hello
        // deadline, then is refused as unavailable and the edge retries
        // (here, or at another syncd that has read them).
        let mut ready = self.ready.clone();
        match tokio::time::timeout(self.hello_timeout, ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return Err(not_read_yet()),
        }
        let stream = self.publisher.subscribe(&hello, peer)?;
        let id = stream.id();
        let publisher = self.publisher.clone();
        let fleet = self.fleet.clone();
        let edge_id = hello.edge_id;
        // Acks and session reports arrive on the inbound half; it may also
        // be closed early (a grpcurl user closes stdin) without ending the
        // watch. An edge that reported sessions and whose inbound half ends
        // is gone (or cut off): its sessions turn unknown.
        tokio::spawn(async move {
            let mut reported = false;
            while let Ok(Some(m)) = inbound.message().await {
                match m.msg {
                    Some(watch_request::Msg::Ack(a)) => publisher.ack(id, &a.epoch, a.version),
                    Some(watch_request::Msg::Report(r)) => {
                        reported = true;
                        fleet.report(id, &edge_id, r);
                    }
                    Some(watch_request::Msg::Hello(_)) | None => {}
                }
            }
            if reported {
                fleet.lost(id);
            }
        });
        Ok(stream)
    }
}

/// The path tonic serves `WatchRoutes` at.
const WATCH_ROUTES: &str = "/automc.v1.RouteSync/WatchRoutes";

/// `RouteSync` as served: the generated server for every method but
/// `WatchRoutes`, which goes through the same prost codec with
/// [`WatchOut`] as its message, so a snapshot piece encoded once
/// ([`crate::pieces`]) reaches every watcher as the same bytes.
#[derive(Clone)]
struct Served {
    svc: Arc<RouteSyncService>,
    rest: RouteSyncServer<RouteSyncService>,
}

impl Served {
    fn new(svc: RouteSyncService) -> Self {
        let svc = Arc::new(svc);
        Self {
            rest: RouteSyncServer::from_arc(svc.clone()),
            svc,
        }
    }
}

impl NamedService for Served {
    const NAME: &'static str = <RouteSyncServer<RouteSyncService> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for Served
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != WATCH_ROUTES {
            return self.rest.call(req);
        }
        let watch = Watch(self.svc.clone());
        Box::pin(async move {
            // The generated server's settings: no compression, tonic's
            // default message limits.
            let codec = tonic_prost::ProstCodec::<WatchOut, WatchRequest>::default();
            Ok(tonic::server::Grpc::new(codec).streaming(watch, req).await)
        })
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<WatchOut, Status>> + Send + 'static>>;

struct Watch(Arc<RouteSyncService>);

impl tonic::server::StreamingService<WatchRequest> for Watch {
    type Response = WatchOut;
    type ResponseStream = OutStream;
    type Future = BoxFuture<Response<OutStream>, Status>;

    fn call(&mut self, req: Request<Streaming<WatchRequest>>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            let stream = svc.open_watch(req).await?.into_stream();
            Ok(Response::new(Box::pin(stream) as OutStream))
        })
    }
}

#[tonic::async_trait]
impl RouteSync for RouteSyncService {
    type WatchRoutesStream = WatchStream;
    type WatchEventsStream =
        Pin<Box<dyn Stream<Item = Result<FleetEvent, Status>> + Send + 'static>>;

    async fn watch_events(
        &self,
        _req: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        use futures::StreamExt;
        Ok(Response::new(Box::pin(self.events.stream().map(Ok))))
    }

    /// What a caller of the generated server gets. syncd serves this method
    /// through [`Served`] instead, which hands shared snapshot pieces to
    /// tonic as they are; here they are decoded back into messages.
    async fn watch_routes(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        use futures::StreamExt;
        let stream = self.open_watch(req).await?.into_stream().map(|item| {
            item.and_then(|out| {
                out.into_response()
                    .map_err(|e| Status::internal(format!("a shared snapshot piece: {e}")))
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_routes(
        &self,
        req: Request<ListRoutesRequest>,
    ) -> Result<Response<ListRoutesResponse>, Status> {
        self.routes_read()?;
        let cur = self.publisher.current();
        Ok(Response::new(cur.table.list_page(
            self.publisher.epoch(),
            cur.version,
            req.get_ref(),
        )))
    }

    async fn get_route(
        &self,
        req: Request<GetRouteRequest>,
    ) -> Result<Response<GetRouteResponse>, Status> {
        self.routes_read()?;
        let mut resp = self
            .publisher
            .resolve(&req.get_ref().hostname)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // The whole fleet's counts, and the pick an edge holding them (and
        // no backoffs, no players of its own) would make.
        if let Some(route) = &resp.route {
            let count = {
                let st = self.fleet.lock();
                crate::counts::total(&route.server, &st.contributions(&route.server))
            }
            .unwrap_or_default();
            let on = |address: &str| {
                count
                    .backends
                    .iter()
                    .find(|b| b.address == address)
                    .map_or(0, |b| b.players)
            };
            let state: Vec<BackendState> = resp
                .backends
                .iter()
                .map(|b| BackendState {
                    backed_off: false,
                    players: on(&b.address),
                })
                .collect();
            resp.would_dial = order(route.strategy(), &resp.backends, &state, 0, 0)
                .first()
                .and_then(|&i| resp.backends.get(i))
                .map(|b| b.address.clone())
                .unwrap_or_default();
            resp.count_source = CountSource::Fleet.into();
            resp.players = count.players;
            resp.counts_unknown = count.unknown;
            resp.backend_players = count.backends;
        }
        Ok(Response::new(resp))
    }

    async fn wake(&self, req: Request<WakeRequest>) -> Result<Response<WakeResponse>, Status> {
        let r = req.into_inner();
        if r.server.is_empty() {
            return Err(Status::invalid_argument("server is required"));
        }
        if !*self.active.borrow() {
            return Err(automc_proto::WakeFailure::Standby
                .to_status("this syncd is a standby: wakes are served by the active instance"));
        }
        self.routes_read()?;
        self.wakes
            .wake(&r.server, &r.caller)
            .await
            .map(Response::new)
    }

    async fn list_edges(
        &self,
        _req: Request<ListEdgesRequest>,
    ) -> Result<Response<ListEdgesResponse>, Status> {
        let (version, edges) = self.publisher.edges();
        Ok(Response::new(ListEdgesResponse {
            epoch: self.publisher.epoch().to_owned(),
            version,
            edges,
        }))
    }

    async fn list_wakes(
        &self,
        _req: Request<ListWakesRequest>,
    ) -> Result<Response<ListWakesResponse>, Status> {
        Ok(Response::new(ListWakesResponse {
            wakes: self.wakes.list(),
        }))
    }

    async fn list_servers(
        &self,
        req: Request<ListServersRequest>,
    ) -> Result<Response<ListServersResponse>, Status> {
        self.routes_read()?;
        let req = req.into_inner();
        let cur = self.publisher.current();
        let st = self.fleet.lock();
        let sessions = st.servers();
        let (names, next) =
            crate::servers::page_names(&cur.table, &sessions, &req.page_token, req.page_size);
        let last_seen: Vec<Option<i64>> = names.iter().map(|n| st.last_seen(n)).collect();
        let unknown = st.unknown_edges().len();
        // The sleep view reads the fleet too.
        drop(st);
        let sleep = self.sleeper.views(&names);
        let servers = names
            .iter()
            .zip(last_seen)
            .zip(sleep)
            .map(|((name, seen), sleep)| {
                crate::servers::server_info(
                    name,
                    cur.table.get(name),
                    sessions.get(name),
                    seen,
                    self.publisher.wake_phase(name),
                    sleep,
                )
            })
            .collect();
        Ok(Response::new(ListServersResponse {
            servers,
            next_page_token: next.unwrap_or_default(),
            unknown_edges: u32::try_from(unknown).unwrap_or(u32::MAX),
        }))
    }

    async fn list_players(
        &self,
        req: Request<ListPlayersRequest>,
    ) -> Result<Response<ListPlayersResponse>, Status> {
        let players = self.fleet.lock().players();
        Ok(Response::new(crate::servers::players_page(
            players,
            req.get_ref(),
        )))
    }
}

/// Serve until `shutdown`; health turns SERVING once `ready` is true.
#[allow(clippy::too_many_arguments)] // one call site (lib.rs), each a distinct concern
pub async fn serve(
    incoming: impl Stream<Item = Result<crate::accept::Connection, std::io::Error>>,
    limits: crate::accept::Limits,
    publisher: Arc<Publisher>,
    wakes: Arc<Wakes>,
    token: Option<&str>,
    mut ready: tokio::sync::watch::Receiver<bool>,
    active: tokio::sync::watch::Receiver<bool>,
    hello_timeout: Duration,
    fleet: Arc<Fleet>,
    sleeper: Arc<Sleeper>,
    events: Events,
    shutdown: CancellationToken,
) -> Result<(), crate::Error> {
    let auth = BearerAuth::new(token);
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_not_serving::<RouteSyncServer<RouteSyncService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(automc_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection().build_v1().map_err(crate::Error::Reflection)?;
    let v1alpha = reflection()
        .build_v1alpha()
        .map_err(crate::Error::Reflection)?;
    let svc = Served::new(RouteSyncService {
        publisher,
        hello_timeout,
        wakes,
        active,
        ready: ready.clone(),
        fleet,
        sleeper,
        events,
    });
    let health_task = {
        let health = health.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if ready.wait_for(|r| *r).await.is_ok() {
                health
                    .set_serving::<RouteSyncServer<RouteSyncService>>()
                    .await;
            }
            shutdown.cancelled().await;
            health
                .set_not_serving::<RouteSyncServer<RouteSyncService>>()
                .await;
        })
    };
    let router = builder(limits)
        .add_service(health_svc)
        .add_service(InterceptedService::new(svc, auth))
        .add_service(v1)
        .add_service(v1alpha);
    let stop = shutdown.clone().cancelled_owned();
    let r = with_grace(
        router.serve_with_incoming_shutdown(incoming, stop),
        &shutdown,
    )
    .await;
    health_task.abort();
    r.map_err(crate::Error::Grpc)
}

fn builder(limits: crate::accept::Limits) -> tonic::transport::Server {
    // TCP_NODELAY is set by the accept layer, which owns the sockets.
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
}

/// Run the server; once shutdown starts, wait at most [`SHUTDOWN_GRACE`].
async fn with_grace(
    server: impl std::future::Future<Output = Result<(), tonic::transport::Error>>,
    shutdown: &CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r,
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("gRPC streams did not end within {SHUTDOWN_GRACE:?} of shutdown; closing");
            Ok(())
        }
    }
}
