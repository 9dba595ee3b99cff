//! Admin surfaces: HTTP `/metrics`, `/healthz`, `/readyz` (axum) and gRPC
//! `automc.v1.EdgeAdmin` with `grpc.health.v1` and reflection v1 + v1alpha
//! (grpcurl 1.8 asks for v1alpha). With `--admin-token`, EdgeAdmin calls
//! need `authorization: Bearer <token>` (checked like syncd's token); health
//! and reflection stay open, as on syncd.
use std::sync::Arc;

use automc_proto::auth::BearerAuth;
use automc_proto::v1::edge_admin_server::{EdgeAdmin, EdgeAdminServer};
use automc_proto::v1::{
    BackendCount, Connection, GetRouteRequest, GetRouteResponse, GetSyncStatusRequest,
    ListConnectionsRequest, ListConnectionsResponse, ListRoutesRequest, ListRoutesResponse,
    SyncStatus,
};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::Shared;

/// Serve HTTP admin until `stop`.
pub async fn serve_http(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared
        .metrics
        .table_age_seconds
        .set(shared.routes.age().as_secs_f64());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !shared.routes.has_snapshot() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first route snapshot\n",
        )
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// Serve gRPC admin until `stop`.
pub async fn serve_grpc(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let auth = BearerAuth::new(shared.config.admin_token.as_deref());
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<EdgeAdminServer<AdminService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(automc_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection()
        .build_v1()
        .map_err(|e| tracing::warn!(error = %e, "reflection v1 unavailable"))
        .ok();
    let v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| tracing::warn!(error = %e, "reflection v1alpha unavailable"))
        .ok();
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_optional_service(v1)
        .add_optional_service(v1alpha)
        .add_service(InterceptedService::new(
            EdgeAdminServer::new(AdminService { shared }),
            auth,
        ))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
        .await
}

/// `automc.v1.EdgeAdmin`.
pub struct AdminService {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl EdgeAdmin for AdminService {
    async fn list_routes(
        &self,
        req: Request<ListRoutesRequest>,
    ) -> Result<Response<ListRoutesResponse>, Status> {
        let view = self.shared.routes.view();
        Ok(Response::new(view.table.list_page(
            &view.epoch,
            view.version,
            req.get_ref(),
        )))
    }

    async fn get_route(
        &self,
        req: Request<GetRouteRequest>,
    ) -> Result<Response<GetRouteResponse>, Status> {
        let mut resp = self
            .shared
            .routes
            .view()
            .table
            .resolve(&req.get_ref().hostname)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // This edge's own answer: its backoffs, turns and player counts
        // (fleet-wide while syncd's counts are live), and where they come from.
        if let Some(route) = &resp.route {
            let capture = automc_proto::backend::captured(&resp.matched, &resp.normalized);
            let plan = self.shared.balancer.plan_status(route, capture);
            resp.would_dial = plan.addresses.into_iter().next().unwrap_or_default();
            let counts = self.shared.balancer.counts_for(route, &resp.backends);
            resp.count_source = counts.source.into();
            resp.players = counts.players;
            resp.counts_unknown = counts.unknown;
            resp.backend_players = resp
                .backends
                .iter()
                .zip(counts.backends)
                .filter(|(_, n)| *n > 0)
                .map(|(b, players)| BackendCount {
                    address: b.address.clone(),
                    players,
                })
                .collect();
        }
        Ok(Response::new(resp))
    }

    async fn get_sync_status(
        &self,
        _: Request<GetSyncStatusRequest>,
    ) -> Result<Response<SyncStatus>, Status> {
        Ok(Response::new(self.shared.sync.sync_status()))
    }

    async fn list_connections(
        &self,
        _: Request<ListConnectionsRequest>,
    ) -> Result<Response<ListConnectionsResponse>, Status> {
        let list = self.shared.conns.list();
        let connections = list
            .iter()
            .map(|e| {
                let d = e.detail();
                Connection {
                    id: e.id,
                    client: d.client.to_string(),
                    hostname: d.hostname,
                    server: d.server,
                    backend: d.backend,
                    phase: e.phase().as_str().to_owned(),
                    started_ms: e.started_ms,
                    bytes_up: e.bytes_up.load(std::sync::atomic::Ordering::Relaxed),
                    bytes_down: e.bytes_down.load(std::sync::atomic::Ordering::Relaxed),
                    player: d.player,
                    player_uuid: d.player_uuid,
                }
            })
            .collect::<Vec<_>>();
        Ok(Response::new(ListConnectionsResponse {
            active: connections.len() as u64,
            connections,
        }))
    }
}
